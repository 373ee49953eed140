/*
 * /v1/keys: API keys. The key itself is shown once, when created; the table
 * keeps its prefix (to find the row) and SHA-256 (to check it).
 */
#include "api.h"

#include "log.h"
#include "secrets.h"

#include <stdio.h>
#include <string.h>

#include <openssl/rand.h>

#define KEY_COLUMNS                                                                                \
    "id, prefix, hash, label, role, instance_ids, "                                                \
    "DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS created_at, "                             \
    "DATE_FORMAT(revoked_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS revoked_at"

static const char *in_str(const struct sbh_call *call, const char *key)
{
    return json_string_value(json_object_get(call->in, key));
}

static int insert_key(MYSQL *conn, const char *id, const char *prefix, const char *hash,
                      const char *label, const char *role, const char *instance_ids)
{
    return sbh_db_exec(conn, NULL,
                       "INSERT INTO api_keys (id, prefix, hash, label, role, instance_ids, "
                       "created_at) VALUES (?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
                       "ssssss", id, prefix, hash, label, role, instance_ids);
}

static int work_create(MYSQL *conn, struct sbh_call *call)
{
    int rc = insert_key(conn, in_str(call, "id"), in_str(call, "prefix"), in_str(call, "hash"),
                        in_str(call, "label"), in_str(call, "role"), in_str(call, "instance_ids"));
    if (rc != SBH_DB_OK)
        return rc;
    json_t *rows = NULL;
    rc = sbh_db_query(conn, &rows, "SELECT " KEY_COLUMNS " FROM api_keys WHERE id = ?", "s",
                      in_str(call, "id"));
    call->out = rc == SBH_DB_OK ? json_incref(json_array_get(rows, 0)) : NULL;
    json_decref(rows);
    return call->out || rc != SBH_DB_OK ? rc : SBH_DB_ERROR;
}

static int work_list(MYSQL *conn, struct sbh_call *call)
{
    return sbh_db_query(conn, &call->out,
                        "SELECT " KEY_COLUMNS " FROM api_keys ORDER BY created_at", "");
}

static int work_revoke(MYSQL *conn, struct sbh_call *call)
{
    unsigned long long n = 0;
    int rc = sbh_db_exec(conn, &n,
                         "UPDATE api_keys SET revoked_at = UTC_TIMESTAMP(6) "
                         "WHERE id = ? AND revoked_at IS NULL",
                         "s", in_str(call, "id"));
    return rc == SBH_DB_OK && n == 0 ? SBH_DB_NOTFOUND : rc;
}

/* What the API shows of a key: never the hash. */
static json_t *key_doc(const json_t *row)
{
    json_t *ids =
        json_loads(json_string_value(json_object_get(row, "instance_ids")) ?: "null", 0, NULL);
    return json_pack(
        "{s:O, s:O, s:O, s:O, s:o, s:O, s:O}", "id", json_object_get(row, "id"), "prefix",
        json_object_get(row, "prefix"), "label", json_object_get(row, "label"), "role",
        json_object_get(row, "role"), "instance_ids", ids ? ids : json_null(), "created_at",
        json_object_get(row, "created_at"), "revoked_at", json_object_get(row, "revoked_at"));
}

static void then_created(struct sbh_call *call, int rc)
{
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    sbh_auth_put(call->d->auth, call->out);
    json_t *doc = key_doc(call->out);
    json_object_set(doc, "key", json_object_get(call->in, "key"));
    sbh_log(SB_LOG_INFO, "api", NULL, NULL, "API key %s (%s) created by key %s", in_str(call, "id"),
            in_str(call, "role"), call->who.key_id);
    sbh_call_reply(call, 201, doc);
}

static void make_key_id(char *out, size_t len)
{
    unsigned char raw[8];
    RAND_bytes(raw, sizeof(raw));
    size_t off = (size_t)snprintf(out, len, "key_");
    for (size_t i = 0; i < sizeof(raw) && off + 2 < len; i++)
        off += (size_t)snprintf(out + off, len - off, "%02x", raw[i]);
}

/* A key row ready to insert: {id, prefix, hash, key, label, role, instance_ids}. */
static json_t *new_key_row(const char *label, const char *role, const char *instance_ids)
{
    char key[128], prefix[32], hash[65], id[40];
    if (sbh_apikey_new(key, sizeof(key), prefix, sizeof(prefix), hash) < 0)
        return NULL;
    make_key_id(id, sizeof(id));
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s?}", "id", id, "prefix", prefix, "hash",
                     hash, "key", key, "label", label, "role", role, "instance_ids", instance_ids);
}

static void create_key(struct sbh_call *call)
{
    static const char *const allowed[] = {"label", "role", "instance_ids", NULL};
    if (sbh_call_body_object(call, allowed) < 0)
        return;
    json_t *b = call->body, *ids = json_object_get(b, "instance_ids"), *v;
    const char *role = json_string_value(json_object_get(b, "role"));
    const char *label = json_string_value(json_object_get(b, "label"));
    size_t i;
    if (!label || !*label || strlen(label) > 255)
        return sbh_call_error(call, 400, "invalid_field", "label",
                              "label is required (1 to 255 characters)");
    if (!role || (strcmp(role, "admin") && strcmp(role, "instance")))
        return sbh_call_error(call, 400, "invalid_field", "role",
                              "role must be \"admin\" or \"instance\"");
    if (!strcmp(role, "instance") && (!json_is_array(ids) || json_array_size(ids) == 0))
        return sbh_call_error(call, 400, "invalid_field", "instance_ids",
                              "an instance key needs a non-empty array of instance ids");
    if (!strcmp(role, "admin") && ids)
        return sbh_call_error(call, 400, "invalid_field", "instance_ids",
                              "an admin key is not scoped to instances");
    json_array_foreach (ids, i, v)
        if (!json_is_string(v))
            return sbh_call_error(call, 400, "invalid_field", "instance_ids",
                                  "instance ids must be strings");
    char *ids_text = ids ? json_dumps(ids, JSON_COMPACT) : NULL;
    call->in = new_key_row(label, role, ids_text);
    free(ids_text);
    if (!call->in)
        return sbh_call_error(call, 500, "internal", NULL, "cannot make a key");
    sbh_call_db(call, work_create, then_created);
}

static void then_listed(struct sbh_call *call, int rc)
{
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    json_t *keys = json_array(), *row;
    size_t i;
    json_array_foreach (call->out, i, row)
        json_array_append_new(keys, key_doc(row));
    sbh_call_reply(call, 200, json_pack("{s:o}", "keys", keys));
}

static void then_revoked(struct sbh_call *call, int rc)
{
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    sbh_auth_revoke(call->d->auth, call->id);
    sbh_log(SB_LOG_INFO, "api", NULL, NULL, "API key %s revoked by key %s", call->id,
            call->who.key_id);
    sbh_call_reply(call, 204, NULL);
}

void sbh_api_keys(struct sbh_call *call, enum evhttp_cmd_type method)
{
    if (!call->who.admin)
        return sbh_call_error(call, 403, "forbidden", NULL, "only an admin key manages keys");
    if (!*call->id && method == EVHTTP_REQ_GET)
        return sbh_call_db(call, work_list, then_listed);
    if (!*call->id && method == EVHTTP_REQ_POST)
        return create_key(call);
    if (*call->id && method == EVHTTP_REQ_DELETE) {
        call->in = json_pack("{s:s}", "id", call->id);
        return sbh_call_db(call, work_revoke, then_revoked);
    }
    sbh_call_error(call, 405, "method_not_allowed", NULL,
                   *call->id ? "DELETE revokes a key" : "GET or POST");
}

/* ---- start-up and refresh ---- */

static int load_keys(MYSQL *conn, json_t **rows)
{
    return sbh_db_query(conn, rows, "SELECT " KEY_COLUMNS " FROM api_keys", "");
}

/* The first admin key, made when api_keys is empty; -1 with why on failure. */
static int create_first_key(MYSQL *conn, char *why, size_t why_len)
{
    json_t *row = new_key_row("initial admin key", "admin", NULL);
    if (!row) {
        snprintf(why, why_len, "cannot make a key");
        return -1;
    }
    const char *id = json_string_value(json_object_get(row, "id"));
    int rc = insert_key(conn, id, json_string_value(json_object_get(row, "prefix")),
                        json_string_value(json_object_get(row, "hash")),
                        json_string_value(json_object_get(row, "label")), "admin", NULL);
    if (rc != SBH_DB_OK) {
        snprintf(why, why_len, "cannot create the admin key: %s", mysql_error(conn));
        json_decref(row);
        return -1;
    }
    /* The one time a key is logged: the operator has no other way to get it. */
    sbh_log_fields(SB_LOG_WARN, "api", NULL, NULL,
                   json_pack("{s:O, s:s}", "api_key", json_object_get(row, "key"), "key_id", id),
                   "admin API key created; it is shown this once, store it now");
    json_decref(row);
    return 0;
}

int sbh_api_bootstrap_admin_key(MYSQL *conn, struct sbh_auth *auth, char *why, size_t why_len)
{
    json_t *rows = NULL, *lock = NULL;
    int rc = -1;
    /* Two daemons starting on one empty database must make one key, not two. */
    if (sbh_db_query(conn, &lock, "SELECT GET_LOCK('switchboard.bootstrap', 60) AS got", "") !=
            SBH_DB_OK ||
        json_integer_value(json_object_get(json_array_get(lock, 0), "got")) != 1) {
        snprintf(why, why_len, "cannot take the bootstrap lock: %s", mysql_error(conn));
        goto out;
    }
    if (load_keys(conn, &rows) != SBH_DB_OK) {
        snprintf(why, why_len, "cannot read api_keys: %s", mysql_error(conn));
        goto unlock;
    }
    if (json_array_size(rows) == 0) {
        json_decref(rows);
        rows = NULL;
        if (create_first_key(conn, why, why_len) < 0 || load_keys(conn, &rows) != SBH_DB_OK)
            goto unlock;
    }
    sbh_auth_load(auth, rows);
    rc = 0;
unlock:
    json_decref(lock);
    lock = NULL;
    sbh_db_query(conn, &lock, "SELECT RELEASE_LOCK('switchboard.bootstrap')", "");
out:
    json_decref(rows);
    json_decref(lock);
    return rc;
}

static int work_refresh(MYSQL *conn, void *arg)
{
    json_t **out = arg;
    return load_keys(conn, out);
}

struct refresh {
    struct sbh_daemon *d;
    json_t *rows;
};

static void done_refresh(void *arg, int rc)
{
    struct refresh *r = arg;
    if (rc == SBH_DB_OK)
        sbh_auth_load(r->d->auth, r->rows);
    json_decref(r->rows);
    free(r);
}

static int work_refresh_job(MYSQL *conn, void *arg)
{
    struct refresh *r = arg;
    return work_refresh(conn, &r->rows);
}

void sbh_api_refresh_keys(struct sbh_daemon *d)
{
    struct refresh *r = calloc(1, sizeof(*r));
    if (!r)
        return;
    r->d = d;
    if (sbh_db_submit(d->db, work_refresh_job, done_refresh, r) < 0)
        free(r);
}
