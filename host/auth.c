#include "auth.h"

#include "secrets.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct sbh_auth {
    json_t *by_prefix; /* prefix -> row */
};

struct sbh_auth *sbh_auth_new(void)
{
    struct sbh_auth *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->by_prefix = json_object();
    if (!a->by_prefix) {
        free(a);
        return NULL;
    }
    return a;
}

void sbh_auth_free(struct sbh_auth *a)
{
    if (!a)
        return;
    json_decref(a->by_prefix);
    free(a);
}

void sbh_auth_put(struct sbh_auth *a, const json_t *row)
{
    const char *prefix = json_string_value(json_object_get(row, "prefix"));
    if (prefix)
        json_object_set_new(a->by_prefix, prefix, json_deep_copy(row));
}

void sbh_auth_load(struct sbh_auth *a, const json_t *rows)
{
    size_t i;
    json_t *row;
    json_object_clear(a->by_prefix);
    json_array_foreach (rows, i, row)
        sbh_auth_put(a, row);
}

void sbh_auth_revoke(struct sbh_auth *a, const char *id)
{
    const char *prefix;
    json_t *row;
    json_object_foreach (a->by_prefix, prefix, row)
        if (!strcmp(json_string_value(json_object_get(row, "id")), id))
            json_object_set_new(row, "revoked_at", json_string("now"));
}

size_t sbh_auth_count(const struct sbh_auth *a)
{
    return json_object_size(a->by_prefix);
}

/* instance_ids arrives as JSON text from the database, or as an array. */
static json_t *scoped_ids(const json_t *row)
{
    json_t *v = json_object_get(row, "instance_ids");
    if (json_is_array(v))
        return json_incref(v);
    if (json_is_string(v)) {
        json_t *parsed = json_loads(json_string_value(v), 0, NULL);
        if (json_is_array(parsed))
            return parsed;
        json_decref(parsed);
    }
    return json_array();
}

int sbh_auth_check(const struct sbh_auth *a, const char *authorization, struct sbh_principal *who,
                   const char **why)
{
    char prefix[32], hash[65];
    memset(who, 0, sizeof(*who));
    if (!authorization || !*authorization) {
        *why = "missing";
        return -1;
    }
    if (strncasecmp(authorization, "Bearer ", 7) != 0) {
        *why = "malformed";
        return -1;
    }
    const char *key = authorization + 7;
    while (*key == ' ')
        key++;
    if (sbh_apikey_prefix(key, prefix, sizeof(prefix)) < 0) {
        *why = "malformed";
        return -1;
    }
    const json_t *row = json_object_get(a->by_prefix, prefix);
    const char *stored = json_string_value(json_object_get(row, "hash"));
    sbh_apikey_hash(key, hash);
    if (!stored || !sbh_apikey_hash_equal(stored, hash)) {
        *why = "unknown";
        return -1;
    }
    if (!json_is_null(json_object_get(row, "revoked_at")) && json_object_get(row, "revoked_at")) {
        *why = "revoked";
        return -1;
    }
    const char *role = json_string_value(json_object_get(row, "role"));
    who->admin = role && !strcmp(role, "admin");
    snprintf(who->key_id, sizeof(who->key_id), "%s", json_string_value(json_object_get(row, "id")));
    who->instance_ids = who->admin ? NULL : scoped_ids(row);
    return 0;
}

void sbh_principal_clear(struct sbh_principal *who)
{
    json_decref(who->instance_ids);
    who->instance_ids = NULL;
}

int sbh_principal_allows(const struct sbh_principal *who, const char *instance_id)
{
    size_t i;
    json_t *v;
    if (who->admin)
        return 1;
    json_array_foreach (who->instance_ids, i, v)
        if (json_is_string(v) && !strcmp(json_string_value(v), instance_id))
            return 1;
    return 0;
}
