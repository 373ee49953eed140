/*
 * /v1/instances: API-managed instances, stored in the instances table with
 * their secrets sealed, mirrored into the registry which runs them. Config
 * file instances are visible here (read, start, stop) but owned by the file.
 */
#include "api.h"

#include "jsonschema.h"
#include "kv.h"
#include "outbox.h"
#include "log.h"
#include "secrets.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/queue.h>

#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#define COLUMNS                                                                                    \
    "id, provider, name, settings, secrets, enabled, "                                             \
    "DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS created_at, "                             \
    "DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS updated_at, "                             \
    "CAST(updated_at AS CHAR) AS version"

/* ---- secrets and settings ---- */

static int json_array_contains_string(const json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach (arr, i, v)
        if (json_is_string(v) && !strcmp(json_string_value(v), s))
            return 1;
    return 0;
}

/* Open a row's sealed secrets into a JSON object (new reference). */
static json_t *open_secrets(const struct sbh_keyring *ring, const char *id, const char *sealed)
{
    char why[256];
    size_t len;
    if (!sealed || !*sealed)
        return json_object();
    unsigned char *plain = sbh_secret_open(ring, id, sealed, &len, why, sizeof(why));
    if (!plain) {
        sbh_log(SB_LOG_ERROR, "api", NULL, id, "cannot open the instance's secrets: %s", why);
        return NULL;
    }
    json_t *obj = json_loadb((const char *)plain, len, 0, NULL);
    OPENSSL_cleanse(plain, len);
    free(plain);
    return obj;
}

static char *seal_secrets(const struct sbh_keyring *ring, const char *id, const json_t *secrets)
{
    if (json_object_size(secrets) == 0)
        return NULL;
    char *text = json_dumps(secrets, JSON_COMPACT);
    if (!text)
        return NULL;
    char *sealed = sbh_secret_seal(ring, id, text, strlen(text));
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    return sealed;
}

/* What the plugin gets: settings with the opened secrets laid over them. */
static json_t *merged_settings(const json_t *settings, const json_t *secrets)
{
    json_t *m = json_deep_copy(settings);
    json_object_update(m, (json_t *)secrets);
    return m;
}

static json_t *provider_schema(const sb_plugin_desc *desc)
{
    json_t *schema = desc->settings_schema ? json_loads(desc->settings_schema, 0, NULL) : NULL;
    return schema ? schema : json_object();
}

/*
 * Settings and secrets against the provider's schema: secret fields
 * (writeOnly) only in secrets, the rest only in settings, the union valid.
 * Answers the call and returns -1 when not.
 */
static int check_settings(struct sbh_call *call, const char *provider, const json_t *settings,
                          const json_t *secrets)
{
    const sb_plugin_desc *desc = sbh_registry_provider(call->d->reg, provider);
    if (!desc) {
        sbh_call_error(call, 422, "provider_not_loaded", "provider",
                       "provider \"%s\" is not loaded", provider);
        return -1;
    }
    json_t *schema = provider_schema(desc), *secret_names = sbh_jsonschema_secret_fields(schema);
    const char *key;
    json_t *v;
    int rc = -1;
    json_object_foreach ((json_t *)settings, key, v) {
        if (!json_array_contains_string(secret_names, key))
            continue;
        char field[160];
        snprintf(field, sizeof(field), "settings.%s", key);
        sbh_call_error(call, 400, "secret_in_settings", field,
                       "%s is a secret: send it in \"secrets\"", key);
        goto out;
    }
    json_object_foreach ((json_t *)secrets, key, v) {
        if (json_array_contains_string(secret_names, key))
            continue;
        char field[160];
        snprintf(field, sizeof(field), "secrets.%s", key);
        sbh_call_error(call, 400, "not_a_secret", field, "%s is not a secret field of provider %s",
                       key, provider);
        goto out;
    }
    json_t *merged = merged_settings(settings, secrets);
    struct sbh_schema_violation viol;
    int vrc = sbh_jsonschema_validate(schema, merged, &viol);
    json_decref(merged);
    if (vrc != 0) {
        char top[128], field[300];
        snprintf(top, sizeof(top), "%.*s", (int)strcspn(viol.path, ".["), viol.path);
        snprintf(field, sizeof(field), "%s%s%s",
                 json_array_contains_string(secret_names, top) ? "secrets" : "settings",
                 viol.path[0] ? "." : "", viol.path);
        sbh_call_error(call, 422, "invalid_settings", field, "%s %s", field, viol.message);
        goto out;
    }
    rc = 0;
out:
    json_decref(schema);
    json_decref(secret_names);
    return rc;
}

static int valid_name(const json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 128)
        return 0;
    for (; *s; s++)
        if (iscntrl((unsigned char)*s))
            return 0;
    return 1;
}

/* ---- rows to answers ---- */

static json_t *secret_names_of(const struct sbh_keyring *ring, const json_t *row)
{
    json_t *names = json_array();
    json_t *secrets = open_secrets(ring, json_string_value(json_object_get(row, "id")),
                                   json_string_value(json_object_get(row, "secrets")));
    const char *key;
    json_t *v;
    json_object_foreach (secrets, key, v)
        json_array_append_new(names, json_string(key));
    json_decref(secrets);
    return names;
}

/* Runtime status with sending health (breaker, counts), or NULL when not known. */
static json_t *runtime_status(const struct sbh_daemon *d, const char *id)
{
    json_t *status = sbh_registry_instance_status(d->reg, id);
    if (status && d->outbox)
        json_object_set_new(status, "delivery", sbh_outbox_instance_health(d->outbox, id));
    return status;
}

static json_t *instance_doc(struct sbh_daemon *d, const json_t *row)
{
    const char *id = json_string_value(json_object_get(row, "id"));
    json_t *settings = json_loads(json_string_value(json_object_get(row, "settings")), 0, NULL);
    json_t *status = runtime_status(d, id);
    if (!status)
        status = json_pack("{s:b, s:s}", "running", 0, "state", "stopped");
    return json_pack("{s:O, s:O, s:O, s:o, s:o, s:b, s:O, s:O, s:o}", "id",
                     json_object_get(row, "id"), "provider", json_object_get(row, "provider"),
                     "name", json_object_get(row, "name"), "settings",
                     settings ? settings : json_object(), "secrets", secret_names_of(d->ring, row),
                     "enabled", json_integer_value(json_object_get(row, "enabled")) != 0,
                     "created_at", json_object_get(row, "created_at"), "updated_at",
                     json_object_get(row, "updated_at"), "status", status);
}

/* 1 when id is an instance of the config file (known to the registry, not the table). */
static int config_instance(const struct sbh_daemon *d, const char *id)
{
    json_t *status = sbh_registry_instance_status(d->reg, id);
    int yes = json_is_true(json_object_get(status, "config_managed"));
    json_decref(status);
    return yes;
}

/* A config file instance, seen only in the registry. */
static int reply_config_instance(struct sbh_call *call)
{
    json_t *status = runtime_status(call->d, call->id);
    if (!status)
        return -1;
    if (!json_is_true(json_object_get(status, "config_managed"))) {
        json_decref(status);
        return -1;
    }
    sbh_call_reply(call, 200,
                   json_pack("{s:s, s:O, s:b, s:o}", "id", call->id, "provider",
                             json_object_get(status, "provider"), "config_managed", 1, "status",
                             status));
    return 0;
}

/* ---- database work (worker threads: only call->in and call->out) ---- */

static const char *in_str(const struct sbh_call *call, const char *key)
{
    return json_string_value(json_object_get(call->in, key));
}

static int work_get(MYSQL *conn, struct sbh_call *call)
{
    json_t *rows = NULL;
    int rc = sbh_db_query(conn, &rows, "SELECT " COLUMNS " FROM instances WHERE id = ?", "s",
                          in_str(call, "id"));
    if (rc == SBH_DB_OK && json_array_size(rows) == 0)
        rc = SBH_DB_NOTFOUND;
    if (rc == SBH_DB_OK)
        call->out = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    return rc;
}

static int work_insert(MYSQL *conn, struct sbh_call *call)
{
    int rc = sbh_db_exec(conn, NULL,
                         "INSERT INTO instances (id, provider, name, settings, secrets, enabled, "
                         "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6), "
                         "UTC_TIMESTAMP(6))",
                         "sssssi", in_str(call, "id"), in_str(call, "provider"),
                         in_str(call, "name"), in_str(call, "settings"), in_str(call, "secrets"),
                         (long long)json_is_true(json_object_get(call->in, "enabled")));
    return rc == SBH_DB_OK ? work_get(conn, call) : rc;
}

static int work_update(MYSQL *conn, struct sbh_call *call)
{
    unsigned long long n = 0;
    int rc = sbh_db_exec(conn, &n,
                         "UPDATE instances SET name = ?, settings = ?, secrets = ?, enabled = ?, "
                         "updated_at = UTC_TIMESTAMP(6) WHERE id = ? AND updated_at = ?",
                         "sssiss", in_str(call, "name"), in_str(call, "settings"),
                         in_str(call, "secrets"),
                         (long long)json_is_true(json_object_get(call->in, "enabled")),
                         in_str(call, "id"), in_str(call, "version"));
    if (rc == SBH_DB_OK && n == 0)
        rc = SBH_DB_CONFLICT; /* changed since we read it */
    return rc == SBH_DB_OK ? work_get(conn, call) : rc;
}

static int work_delete(MYSQL *conn, struct sbh_call *call)
{
    unsigned long long n = 0;
    int rc = sbh_db_exec(conn, &n, "DELETE FROM instances WHERE id = ?", "s", in_str(call, "id"));
    if (rc == SBH_DB_OK && n == 0)
        return SBH_DB_NOTFOUND;
    /* These tables hold config instances too, so they have no foreign key to
     * instances: an API instance's rows go here (outbox rows go with their
     * messages). */
    static const char *const owned[] = {
        "DELETE FROM instance_kv WHERE instance_id = ?",
        "DELETE FROM messages WHERE instance_id = ?",
        "DELETE FROM webhook_events WHERE instance_id = ?",
    };
    for (size_t i = 0; rc == SBH_DB_OK && i < sizeof(owned) / sizeof(owned[0]); i++)
        rc = sbh_db_exec(conn, NULL, owned[i], "s", in_str(call, "id"));
    return rc;
}

static int work_set_enabled(MYSQL *conn, struct sbh_call *call)
{
    unsigned long long n = 0;
    int rc = sbh_db_exec(conn, &n,
                         "UPDATE instances SET enabled = ?, updated_at = UTC_TIMESTAMP(6) "
                         "WHERE id = ?",
                         "is", (long long)json_is_true(json_object_get(call->in, "enabled")),
                         in_str(call, "id"));
    return rc == SBH_DB_OK && n == 0 ? SBH_DB_NOTFOUND : rc;
}

static int work_list(MYSQL *conn, struct sbh_call *call)
{
    json_t *rows = NULL;
    const char *provider = in_str(call, "provider"), *scope = in_str(call, "scope");
    int rc = sbh_db_query(conn, &rows,
                          "SELECT " COLUMNS " FROM instances WHERE (? IS NULL OR provider = ?) "
                          "AND id > ? AND (? IS NULL OR JSON_CONTAINS(?, JSON_QUOTE(id))) "
                          "ORDER BY id LIMIT ?",
                          "sssssi", provider, provider, in_str(call, "cursor"), scope, scope,
                          json_integer_value(json_object_get(call->in, "limit")) + 1);
    call->out = rows;
    return rc;
}

/* ---- handlers ---- */

static void then_reply_row(struct sbh_call *call, int rc, int status)
{
    if (rc != SBH_DB_OK) {
        sbh_call_db_error(call, rc);
        return;
    }
    sbh_call_reply(call, status, instance_doc(call->d, call->out));
}

/* After a write: run what the row now says, then answer. */
static void mirror_row(struct sbh_call *call)
{
    const json_t *row = call->out;
    const char *id = json_string_value(json_object_get(row, "id"));
    json_t *secrets =
        open_secrets(call->d->ring, id, json_string_value(json_object_get(row, "secrets")));
    json_t *settings = json_loads(json_string_value(json_object_get(row, "settings")), 0, NULL);
    if (secrets && settings)
        sbh_registry_instance_put(call->d->reg, id,
                                  json_string_value(json_object_get(row, "provider")),
                                  merged_settings(settings, secrets),
                                  json_integer_value(json_object_get(row, "enabled")) != 0);
    json_decref(secrets);
    json_decref(settings);
}

static void then_created(struct sbh_call *call, int rc)
{
    if (rc == SBH_DB_OK) {
        mirror_row(call);
        sbh_log(SB_LOG_INFO, "api", in_str(call, "provider"), in_str(call, "id"),
                "instance created by key %s", call->who.key_id);
    }
    if (rc == SBH_DB_CONFLICT) {
        sbh_call_error(call, 409, "name_taken", "name",
                       "an instance of this provider is already named \"%s\"",
                       in_str(call, "name"));
        return;
    }
    then_reply_row(call, rc, 201);
}

static void make_id(char *out, size_t len)
{
    unsigned char raw[10];
    RAND_bytes(raw, sizeof(raw));
    size_t off = (size_t)snprintf(out, len, "in_");
    for (size_t i = 0; i < sizeof(raw) && off + 2 < len; i++)
        off += (size_t)snprintf(out + off, len - off, "%02x", raw[i]);
}

static void create_instance(struct sbh_call *call)
{
    static const char *const allowed[] = {"provider", "name",    "settings",
                                          "secrets",  "enabled", NULL};
    if (!call->who.admin) {
        sbh_call_error(call, 403, "forbidden", NULL, "only an admin key creates instances");
        return;
    }
    if (sbh_call_body_object(call, allowed) < 0)
        return;
    json_t *b = call->body, *settings = json_object_get(b, "settings"),
           *secrets = json_object_get(b, "secrets"), *enabled = json_object_get(b, "enabled");
    const char *provider = json_string_value(json_object_get(b, "provider"));
    if (!provider)
        return sbh_call_error(call, 400, "invalid_field", "provider", "provider is required");
    if (!valid_name(json_object_get(b, "name")))
        return sbh_call_error(call, 400, "invalid_field", "name",
                              "name is required: 1 to 128 characters, no control characters");
    if ((settings && !json_is_object(settings)) || (secrets && !json_is_object(secrets)))
        return sbh_call_error(call, 400, "invalid_field",
                              settings && !json_is_object(settings) ? "settings" : "secrets",
                              "must be an object");
    if (enabled && !json_is_boolean(enabled))
        return sbh_call_error(call, 400, "invalid_field", "enabled", "must be true or false");
    json_t *empty = json_object();
    settings = settings ? settings : empty;
    secrets = secrets ? secrets : empty;
    if (check_settings(call, provider, settings, secrets) < 0) {
        json_decref(empty);
        return;
    }
    char id[32];
    make_id(id, sizeof(id));
    char *settings_text = json_dumps(settings, JSON_COMPACT);
    char *sealed = seal_secrets(call->d->ring, id, secrets);
    call->in = json_pack("{s:s, s:s, s:O, s:s, s:s?, s:b}", "id", id, "provider", provider, "name",
                         json_object_get(b, "name"), "settings", settings_text, "secrets", sealed,
                         "enabled", enabled ? json_is_true(enabled) : 1);
    free(settings_text);
    free(sealed);
    json_decref(empty);
    if (json_object_size(secrets) && !json_object_get(call->in, "secrets"))
        return sbh_call_error(call, 500, "internal", NULL, "cannot seal the secrets");
    sbh_call_db(call, work_insert, then_created);
}

static long query_long(struct evkeyvalq *q, const char *key, long dflt)
{
    const char *v = evhttp_find_header(q, key);
    char *end;
    if (!v)
        return dflt;
    long n = strtol(v, &end, 10);
    return *end || end == v ? -1 : n;
}

static void then_listed(struct sbh_call *call, int rc)
{
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    size_t limit = (size_t)json_integer_value(json_object_get(call->in, "limit")), i;
    json_t *items = json_array(), *row, *next = json_null();
    json_array_foreach (call->out, i, row) {
        if (i == limit) {
            json_decref(next);
            next = json_copy(json_object_get(json_array_get(call->out, i - 1), "id"));
            break;
        }
        json_array_append_new(items, instance_doc(call->d, row));
    }
    sbh_call_reply(call, 200, json_pack("{s:o, s:o}", "instances", items, "next_cursor", next));
}

static void list_instances(struct sbh_call *call)
{
    struct evkeyvalq q;
    const char *uri_query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(call->req));
    TAILQ_INIT(&q);
    if (uri_query && evhttp_parse_query_str(uri_query, &q) < 0)
        return sbh_call_error(call, 400, "invalid_query", NULL, "malformed query string");
    long limit = query_long(&q, "limit", 50);
    const char *provider = evhttp_find_header(&q, "provider");
    const char *cursor = evhttp_find_header(&q, "cursor");
    char *scope = call->who.admin ? NULL : json_dumps(call->who.instance_ids, JSON_COMPACT);
    if (limit < 1 || limit > 500) {
        evhttp_clear_headers(&q);
        free(scope);
        return sbh_call_error(call, 400, "invalid_field", "limit", "limit must be 1 to 500");
    }
    call->in = json_pack("{s:s?, s:s, s:s?, s:I}", "provider", provider, "cursor",
                         cursor ? cursor : "", "scope", scope, "limit", (json_int_t)limit);
    evhttp_clear_headers(&q);
    free(scope);
    sbh_call_db(call, work_list, then_listed);
}

static void then_got(struct sbh_call *call, int rc)
{
    if (rc == SBH_DB_NOTFOUND && reply_config_instance(call) == 0)
        return;
    then_reply_row(call, rc, 200);
}

static void then_updated(struct sbh_call *call, int rc)
{
    if (rc == SBH_DB_OK)
        mirror_row(call);
    then_reply_row(call, rc, 200);
}

/* JSON merge patch (RFC 7396) of one level: null deletes, anything else sets. */
static void merge_patch(json_t *target, const json_t *patch)
{
    const char *key;
    json_t *v;
    json_object_foreach ((json_t *)patch, key, v) {
        if (json_is_null(v))
            json_object_del(target, key);
        else
            json_object_set(target, key, v);
    }
}

static void then_patch_loaded(struct sbh_call *call, int rc)
{
    if (rc == SBH_DB_NOTFOUND && config_instance(call->d, call->id))
        return sbh_call_error(call, 409, "config_managed", NULL,
                              "instance %s is defined in the config file; edit it there", call->id);
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    json_t *row = call->out, *b = call->body;
    const char *provider = json_string_value(json_object_get(row, "provider"));
    json_t *settings = json_loads(json_string_value(json_object_get(row, "settings")), 0, NULL);
    json_t *secrets =
        open_secrets(call->d->ring, call->id, json_string_value(json_object_get(row, "secrets")));
    if (!settings || !secrets) {
        json_decref(settings);
        json_decref(secrets);
        return sbh_call_error(call, 500, "internal", NULL, "the stored instance is unreadable");
    }
    merge_patch(settings, json_object_get(b, "settings"));
    merge_patch(secrets, json_object_get(b, "secrets"));
    if (check_settings(call, provider, settings, secrets) < 0) {
        json_decref(settings);
        json_decref(secrets);
        return;
    }
    json_t *name = json_object_get(b, "name"), *enabled = json_object_get(b, "enabled");
    char *settings_text = json_dumps(settings, JSON_COMPACT);
    char *sealed = seal_secrets(call->d->ring, call->id, secrets);
    json_t *in = json_pack("{s:s, s:O, s:s, s:s?, s:b, s:O}", "id", call->id, "name",
                           name ? name : json_object_get(row, "name"), "settings", settings_text,
                           "secrets", sealed, "enabled",
                           enabled ? json_is_true(enabled)
                                   : json_integer_value(json_object_get(row, "enabled")) != 0,
                           "version", json_object_get(row, "version"));
    free(settings_text);
    free(sealed);
    json_decref(settings);
    json_decref(secrets);
    json_decref(call->in);
    call->in = in;
    json_decref(call->out);
    call->out = NULL;
    sbh_call_db(call, work_update, then_updated);
}

static void patch_instance(struct sbh_call *call)
{
    static const char *const allowed[] = {"name", "settings", "secrets", "enabled", NULL};
    if (sbh_call_body_object(call, allowed) < 0)
        return;
    json_t *b = call->body;
    if (json_object_get(b, "name") && !valid_name(json_object_get(b, "name")))
        return sbh_call_error(call, 400, "invalid_field", "name",
                              "name must be 1 to 128 characters, no control characters");
    if (json_object_get(b, "settings") && !json_is_object(json_object_get(b, "settings")))
        return sbh_call_error(call, 400, "invalid_field", "settings", "must be an object");
    if (json_object_get(b, "secrets") && !json_is_object(json_object_get(b, "secrets")))
        return sbh_call_error(call, 400, "invalid_field", "secrets", "must be an object");
    if (json_object_get(b, "enabled") && !json_is_boolean(json_object_get(b, "enabled")))
        return sbh_call_error(call, 400, "invalid_field", "enabled", "must be true or false");
    sbh_call_db(call, work_get, then_patch_loaded);
}

static void then_deleted(struct sbh_call *call, int rc)
{
    if (rc == SBH_DB_NOTFOUND && config_instance(call->d, call->id))
        return sbh_call_error(call, 409, "config_managed", NULL,
                              "instance %s is defined in the config file; remove it there",
                              call->id);
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    sbh_registry_instance_remove(call->d->reg, call->id);
    sbh_outbox_forget_instance(call->d->outbox, call->id);
    sbh_kv_forget(call->d->kv, call->id);
    sbh_log(SB_LOG_INFO, "api", NULL, call->id, "instance deleted by key %s", call->who.key_id);
    sbh_call_reply(call, 204, NULL);
}

static void reply_status(struct sbh_call *call)
{
    json_t *status = runtime_status(call->d, call->id);
    sbh_call_reply(call, 200,
                   json_pack("{s:s, s:o}", "id", call->id, "status",
                             status ? status : json_pack("{s:b}", "running", 0)));
}

static void then_enabled(struct sbh_call *call, int rc)
{
    int start = json_is_true(json_object_get(call->in, "enabled"));
    /* Config instances are not in the table; they start and stop in memory only. */
    if (rc == SBH_DB_NOTFOUND &&
        sbh_registry_instance_control(call->d->reg, call->id, start, !start) == 0)
        return reply_status(call);
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    sbh_registry_instance_control(call->d->reg, call->id, start, !start);
    reply_status(call);
}

static void control_instance(struct sbh_call *call, const char *action)
{
    if (!strcmp(action, "restart")) {
        int rc = sbh_registry_instance_control(call->d->reg, call->id, 1, 1);
        if (rc == -2)
            return sbh_call_error(call, 409, "instance_stopped", NULL,
                                  "instance %s is stopped; start it instead", call->id);
        if (rc < 0)
            return sbh_call_error(call, 404, "not_found", NULL, "no such instance");
        return reply_status(call);
    }
    call->in = json_pack("{s:s, s:b}", "id", call->id, "enabled", !strcmp(action, "start"));
    sbh_call_db(call, work_set_enabled, then_enabled);
}

void sbh_api_instances(struct sbh_call *call, enum evhttp_cmd_type method, const char *action)
{
    if (!*call->id) {
        if (method == EVHTTP_REQ_GET)
            return list_instances(call);
        if (method == EVHTTP_REQ_POST)
            return create_instance(call);
        return sbh_call_error(call, 405, "method_not_allowed", NULL, "GET or POST");
    }
    if (!sbh_principal_allows(&call->who, call->id))
        return sbh_call_error(call, 404, "not_found", NULL, "no such instance");
    if (!strcmp(action, "messages"))
        return sbh_api_instance_messages(call, method);
    if (!strcmp(action, "qr")) {
        if (method != EVHTTP_REQ_GET)
            return sbh_call_error(call, 405, "method_not_allowed", NULL, "GET");
        return sbh_api_instance_qr(call);
    }
    if (*action) {
        if (!strcmp(action, "logout") && method == EVHTTP_REQ_POST)
            return sbh_api_instance_logout(call);
        if (method != EVHTTP_REQ_POST)
            return sbh_call_error(call, 405, "method_not_allowed", NULL, "POST");
        if (strcmp(action, "start") && strcmp(action, "stop") && strcmp(action, "restart"))
            return sbh_call_error(call, 404, "not_found", NULL, "no such action \"%s\"", action);
        return control_instance(call, action);
    }
    call->in = json_pack("{s:s}", "id", call->id);
    switch (method) {
    case EVHTTP_REQ_GET:
        return sbh_call_db(call, work_get, then_got);
    case EVHTTP_REQ_PATCH:
        return patch_instance(call);
    case EVHTTP_REQ_DELETE:
        if (!call->who.admin)
            return sbh_call_error(call, 403, "forbidden", NULL, "only an admin key deletes");
        return sbh_call_db(call, work_delete, then_deleted);
    default:
        return sbh_call_error(call, 405, "method_not_allowed", NULL, "GET, PATCH or DELETE");
    }
}

/* ---- start-up ---- */

int sbh_api_load_instances(struct sbh_daemon *d, MYSQL *conn, char *why, size_t why_len)
{
    json_t *rows = NULL, *row;
    size_t i, loaded = 0;
    if (sbh_db_query(conn, &rows, "SELECT " COLUMNS " FROM instances", "") != SBH_DB_OK) {
        snprintf(why, why_len, "cannot read instances: %s", mysql_error(conn));
        return -1;
    }
    json_array_foreach (rows, i, row) {
        const char *id = json_string_value(json_object_get(row, "id"));
        json_t *secrets =
            open_secrets(d->ring, id, json_string_value(json_object_get(row, "secrets")));
        json_t *settings = json_loads(json_string_value(json_object_get(row, "settings")), 0, NULL);
        if (secrets && settings) {
            sbh_registry_instance_put(d->reg, id,
                                      json_string_value(json_object_get(row, "provider")),
                                      merged_settings(settings, secrets),
                                      json_integer_value(json_object_get(row, "enabled")) != 0);
            loaded++;
        }
        json_decref(secrets);
        json_decref(settings);
    }
    sbh_log(SB_LOG_INFO, "api", NULL, NULL, "%zu of %zu stored instances loaded", loaded,
            json_array_size(rows));
    json_decref(rows);
    return 0;
}
