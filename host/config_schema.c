#include "config_schema.h"

#include <stdio.h>
#include <string.h>

enum ftype { F_STRING, F_INT, F_BOOL, F_OBJECT, F_STRUCT, F_MAP, F_STRLIST };

/* A field of an object. F_STRUCT: fixed keys in sub. F_MAP: any key, each
 * value an F_STRUCT described by sub. F_OBJECT: free-form object. */
struct field {
    const char *key;
    enum ftype type;
    const struct field *sub;
    long long min, max;        /* F_INT bounds */
    const char *const *values; /* F_STRING allowed values, NULL-terminated */
};

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const isolations[] = {"inproc", "process", NULL};

static const struct field listen_fields[] = {
    {"address", F_STRING, NULL, 0, 0, NULL},
    {"port", F_INT, NULL, 1, 65535, NULL},
    {NULL, 0, NULL, 0, 0, NULL},
};
static const struct field process_fields[] = {
    {"heartbeat_ms", F_INT, NULL, 10, 3600000, NULL},
    {"heartbeat_timeout_ms", F_INT, NULL, 10, 3600000, NULL},
    {"restart_min_ms", F_INT, NULL, 1, 3600000, NULL},
    {"restart_max_ms", F_INT, NULL, 1, 86400000, NULL},
    {"max_restarts", F_INT, NULL, 0, 1000000, NULL},
    {"healthy_after_ms", F_INT, NULL, 0, 86400000, NULL},
    {"stop_grace_ms", F_INT, NULL, 0, 3600000, NULL},
    {"max_processes", F_INT, NULL, 0, 1000000, NULL},
    {"memory_max_mib", F_INT, NULL, 0, 16777216, NULL},
    {NULL, 0, NULL, 0, 0, NULL},
};
static const struct field plugin_fields[] = {
    {"enabled", F_BOOL, NULL, 0, 0, NULL},
    {"file", F_STRING, NULL, 0, 0, NULL},
    {"webhook_path", F_STRING, NULL, 0, 0, NULL},
    {"isolation", F_STRING, NULL, 0, 0, isolations},
    {"process", F_STRUCT, process_fields, 0, 0, NULL},
    {"config", F_OBJECT, NULL, 0, 0, NULL},
    {"allow_from", F_STRLIST, NULL, 0, 0, NULL},
    {NULL, 0, NULL, 0, 0, NULL},
};
static const struct field instance_fields[] = {
    {"provider", F_STRING, NULL, 0, 0, NULL},
    {"enabled", F_BOOL, NULL, 0, 0, NULL},
    {"settings", F_OBJECT, NULL, 0, 0, NULL},
    {NULL, 0, NULL, 0, 0, NULL},
};
static const struct field outbox_fields[] = {
    {"max_attempts", F_INT, NULL, 1, 1000, NULL},
    {"backoff_base_ms", F_INT, NULL, 1, 3600000, NULL},
    {"backoff_max_ms", F_INT, NULL, 1, 86400000, NULL},
    {"breaker_failures", F_INT, NULL, 1, 100000, NULL},
    {"breaker_cooldown_ms", F_INT, NULL, 1, 86400000, NULL},
    {"max_in_flight", F_INT, NULL, 1, 100000, NULL},
    {"batch_max", F_INT, NULL, 1, 10000, NULL},
    {NULL, 0, NULL, 0, 0, NULL},
};
static const struct field subscription_fields[] = {
    {"retry_base_ms", F_INT, NULL, 1, 3600000, NULL},
    {"max_attempts", F_INT, NULL, 1, 100, NULL},
    {"timeout_ms", F_INT, NULL, 100, 600000, NULL},
    {NULL, 0, NULL, 0, 0, NULL},
};
static const struct field limit_fields[] = {
    {"api_per_key_rps", F_INT, NULL, 0, 10000000, NULL},
    {"api_burst", F_INT, NULL, 0, 10000000, NULL},
    {"webhook_per_ip_rps", F_INT, NULL, 0, 10000000, NULL},
    {"webhook_burst", F_INT, NULL, 0, 10000000, NULL},
    {"max_body_bytes", F_INT, NULL, 1024, 1073741824, NULL},
    {NULL, 0, NULL, 0, 0, NULL},
};

static const struct field top_fields[] = {
    {"listen", F_STRUCT, listen_fields, 0, 0, NULL},
    {"state_dir", F_STRING, NULL, 0, 0, NULL},
    {"plugin_dir", F_STRING, NULL, 0, 0, NULL},
    {"plugin_host", F_STRING, NULL, 0, 0, NULL},
    {"log_level", F_STRING, NULL, 0, 0, log_levels},
    {"shutdown_timeout_ms", F_INT, NULL, 0, 3600000, NULL},
    {"swap_timeout_ms", F_INT, NULL, 0, 3600000, NULL},
    {"database_url", F_STRING, NULL, 0, 0, NULL},
    {"migrations_dir", F_STRING, NULL, 0, 0, NULL},
    {"master_key_file", F_STRING, NULL, 0, 0, NULL},
    {"outbox", F_STRUCT, outbox_fields, 0, 0, NULL},
    {"subscriptions", F_STRUCT, subscription_fields, 0, 0, NULL},
    {"limits", F_STRUCT, limit_fields, 0, 0, NULL},
    {"plugins", F_MAP, plugin_fields, 0, 0, NULL},
    {"instances", F_MAP, instance_fields, 0, 0, NULL},
    {NULL, 0, NULL, 0, 0, NULL},
};

static const char *const type_names[] = {"a string",           "an integer", "true or false",
                                         "an object",          "an object",  "an object",
                                         "an array of strings"};

static int fail(struct sbh_schema_error *err, const char *fmt, const char *arg)
{
    size_t off = 0;
    err->key[0] = '\0';
    for (size_t i = 0; i < err->depth && off < sizeof(err->key); i++)
        off += (size_t)snprintf(err->key + off, sizeof(err->key) - off, "%s%s", i ? "." : "",
                                err->path[i]);
    snprintf(err->reason, sizeof(err->reason), fmt, arg);
    return -1;
}

static int check_struct(json_t *obj, const struct field *fields, struct sbh_schema_error *err);

static int check_value(json_t *v, const struct field *f, struct sbh_schema_error *err)
{
    int ok;
    switch (f->type) {
    case F_STRING:
        ok = json_is_string(v);
        break;
    case F_INT:
        ok = json_is_integer(v);
        break;
    case F_BOOL:
        ok = json_is_boolean(v);
        break;
    case F_STRLIST: {
        size_t i;
        json_t *item;
        ok = json_is_array(v);
        json_array_foreach (v, i, item)
            ok = ok && json_is_string(item);
        break;
    }
    default:
        ok = json_is_object(v);
    }
    if (!ok)
        return fail(err, "must be %s", type_names[f->type]);
    if (f->type == F_INT && (json_integer_value(v) < f->min || json_integer_value(v) > f->max)) {
        char range[64];
        snprintf(range, sizeof(range), "%lld..%lld", f->min, f->max);
        return fail(err, "must be in the range %s", range);
    }
    if (f->type == F_STRING && f->values) {
        for (const char *const *a = f->values; *a; a++)
            if (!strcmp(*a, json_string_value(v)))
                return 0;
        return fail(err, "has an unknown value \"%s\"", json_string_value(v));
    }
    if (f->type == F_STRUCT)
        return check_struct(v, f->sub, err);
    if (f->type == F_MAP) {
        const char *key;
        json_t *item;
        json_object_foreach (v, key, item) {
            if (err->depth >= SBH_SCHEMA_MAX_DEPTH)
                return fail(err, "%s", "nested too deep");
            err->path[err->depth++] = (char *)key;
            if (!json_is_object(item))
                return fail(err, "must be %s", "an object");
            if (check_struct(item, f->sub, err) < 0)
                return -1;
            err->depth--;
        }
    }
    return 0;
}

static int check_struct(json_t *obj, const struct field *fields, struct sbh_schema_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach (obj, key, v) {
        const struct field *f = fields;
        while (f->key && strcmp(f->key, key) != 0)
            f++;
        if (err->depth >= SBH_SCHEMA_MAX_DEPTH)
            return fail(err, "%s", "nested too deep");
        err->path[err->depth++] = (char *)key;
        if (!f->key)
            return fail(err, "unknown key \"%s\"", key);
        if (check_value(v, f, err) < 0)
            return -1;
        err->depth--;
    }
    return 0;
}

int sbh_config_schema_check(json_t *doc, struct sbh_schema_error *err)
{
    memset(err, 0, sizeof(*err));
    return check_struct(doc, top_fields, err);
}
