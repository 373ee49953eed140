/*
 * /v1/subscriptions: customer webhooks (admin keys only). The secret is
 * returned once, at creation, and sealed at rest like instance secrets.
 */
#include "api.h"

#include "log.h"
#include "secrets.h"
#include "subscriptions.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define SUB_COLUMNS                                                                                \
    "s.id, s.url, s.events, s.instance_filter AS instances, s.enabled, "                           \
    "DATE_FORMAT(s.created_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS created_at, "                           \
    "(SELECT COUNT(*) FROM subscription_deliveries d WHERE d.subscription_id = s.id AND "          \
    "d.state = 'delivered') AS delivered, "                                                        \
    "(SELECT COUNT(*) FROM subscription_deliveries d WHERE d.subscription_id = s.id AND "          \
    "d.state = 'pending') AS pending, "                                                            \
    "(SELECT COUNT(*) FROM subscription_deliveries d WHERE d.subscription_id = s.id AND "          \
    "d.state = 'failed') AS failed"

static const char *in_str(const struct sbh_call *call, const char *key)
{
    return json_string_value(json_object_get(call->in, key));
}

static json_t *sub_doc(const json_t *row)
{
    json_t *events = json_loads(json_string_value(json_object_get(row, "events")), 0, NULL);
    const char *inst = json_string_value(json_object_get(row, "instances"));
    json_t *instances = inst ? json_loads(inst, 0, NULL) : NULL;
    return json_pack("{s:O, s:O, s:o, s:o, s:b, s:O, s:{s:O, s:O, s:O}}", "id",
                     json_object_get(row, "id"), "url", json_object_get(row, "url"), "events",
                     events ? events : json_array(), "instances",
                     instances ? instances : json_null(), "enabled",
                     json_integer_value(json_object_get(row, "enabled")) != 0, "created_at",
                     json_object_get(row, "created_at"), "deliveries", "delivered",
                     json_object_get(row, "delivered"), "pending", json_object_get(row, "pending"),
                     "failed", json_object_get(row, "failed"));
}

static int work_get(MYSQL *conn, struct sbh_call *call)
{
    json_t *rows = NULL;
    int rc = sbh_db_query(conn, &rows, "SELECT " SUB_COLUMNS " FROM subscriptions s WHERE s.id = ?",
                          "s", in_str(call, "id"));
    if (rc == SBH_DB_OK && json_array_size(rows) == 0)
        rc = SBH_DB_NOTFOUND;
    if (rc == SBH_DB_OK)
        call->out = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    return rc;
}

static int work_list(MYSQL *conn, struct sbh_call *call)
{
    return sbh_db_query(conn, &call->out,
                        "SELECT " SUB_COLUMNS " FROM subscriptions s ORDER BY s.created_at", "");
}

static int work_create(MYSQL *conn, struct sbh_call *call)
{
    int rc = sbh_db_exec(conn, NULL,
                         "INSERT INTO subscriptions (id, url, secret, events, instance_filter, "
                         "created_at) VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
                         "sssss", in_str(call, "id"), in_str(call, "url"), in_str(call, "sealed"),
                         in_str(call, "events"), in_str(call, "instances"));
    return rc == SBH_DB_OK ? work_get(conn, call) : rc;
}

static int work_delete(MYSQL *conn, struct sbh_call *call)
{
    unsigned long long n = 0;
    int rc =
        sbh_db_exec(conn, &n, "DELETE FROM subscriptions WHERE id = ?", "s", in_str(call, "id"));
    return rc == SBH_DB_OK && n == 0 ? SBH_DB_NOTFOUND : rc;
}

static void then_created(struct sbh_call *call, int rc)
{
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    json_t *row = json_deep_copy(call->out);
    json_object_set(row, "secret", json_object_get(call->in, "secret"));
    sbh_subs_added(call->d->subs, row);
    json_decref(row);
    json_t *doc = sub_doc(call->out);
    json_object_set(doc, "secret", json_object_get(call->in, "secret"));
    sbh_log(SB_LOG_INFO, "api", NULL, NULL, "subscription %s created by key %s", in_str(call, "id"),
            call->who.key_id);
    sbh_call_reply(call, 201, doc);
}

static void then_got(struct sbh_call *call, int rc)
{
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    sbh_call_reply(call, 200, sub_doc(call->out));
}

static void then_listed(struct sbh_call *call, int rc)
{
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    json_t *list = json_array(), *row;
    size_t i;
    json_array_foreach (call->out, i, row)
        json_array_append_new(list, sub_doc(row));
    sbh_call_reply(call, 200, json_pack("{s:o}", "subscriptions", list));
}

static void then_deleted(struct sbh_call *call, int rc)
{
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    sbh_subs_removed(call->d->subs, call->id);
    sbh_call_reply(call, 204, NULL);
}

static void random_b64(char *out, size_t bytes)
{
    unsigned char raw[48];
    RAND_bytes(raw, (int)bytes);
    EVP_EncodeBlock((unsigned char *)out, raw, (int)bytes);
    OPENSSL_cleanse(raw, sizeof(raw));
}

static int strings_array(const json_t *v)
{
    size_t i;
    json_t *item;
    if (!json_is_array(v) || json_array_size(v) == 0)
        return 0;
    json_array_foreach (v, i, item)
        if (!json_is_string(item))
            return 0;
    return 1;
}

static void create_sub(struct sbh_call *call)
{
    static const char *const allowed[] = {"url", "events", "instances", "secret", NULL};
    if (sbh_call_body_object(call, allowed) < 0)
        return;
    json_t *b = call->body, *instances = json_object_get(b, "instances");
    const char *url = json_string_value(json_object_get(b, "url"));
    const char *secret = json_string_value(json_object_get(b, "secret"));
    char made[80] = "whsec_", sig[128];
    if (!url || (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) || strlen(url) > 2048)
        return sbh_call_error(call, 400, "invalid_field", "url", "url must be an http(s) URL");
    if (!strings_array(json_object_get(b, "events")))
        return sbh_call_error(call, 400, "invalid_field", "events",
                              "events must be a non-empty array of event types (or [\"*\"])");
    if (instances && !json_is_null(instances) && !strings_array(instances))
        return sbh_call_error(call, 400, "invalid_field", "instances",
                              "instances must be null or a non-empty array of instance ids");
    if (json_object_get(b, "secret") &&
        (!secret || sbh_subs_sign(secret, "x", 0, "", 0, sig, sizeof(sig)) < 0))
        return sbh_call_error(call, 400, "invalid_field", "secret",
                              "secret must be \"whsec_\" followed by base64");
    if (!secret) {
        random_b64(made + 6, 24);
        secret = made;
    }
    char id[32];
    unsigned char raw[8];
    RAND_bytes(raw, sizeof(raw));
    snprintf(id, sizeof(id), "sub_%02x%02x%02x%02x%02x%02x%02x%02x", raw[0], raw[1], raw[2], raw[3],
             raw[4], raw[5], raw[6], raw[7]);
    char *sealed = sbh_secret_seal(call->d->ring, id, secret, strlen(secret));
    char *events = json_dumps(json_object_get(b, "events"), JSON_COMPACT);
    char *inst = instances && !json_is_null(instances) ? json_dumps(instances, JSON_COMPACT) : NULL;
    call->in = json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:s?}", "id", id, "url", url, "secret",
                         secret, "sealed", sealed, "events", events, "instances", inst);
    free(sealed);
    free(events);
    free(inst);
    OPENSSL_cleanse(made, sizeof(made));
    if (!in_str(call, "sealed"))
        return sbh_call_error(call, 500, "internal", NULL, "cannot seal the secret");
    sbh_call_db(call, work_create, then_created);
}

void sbh_api_subscriptions(struct sbh_call *call, enum evhttp_cmd_type method)
{
    if (!call->who.admin)
        return sbh_call_error(call, 403, "forbidden", NULL,
                              "only an admin key manages subscriptions");
    if (!*call->id) {
        if (method == EVHTTP_REQ_GET)
            return sbh_call_db(call, work_list, then_listed);
        if (method == EVHTTP_REQ_POST)
            return create_sub(call);
        return sbh_call_error(call, 405, "method_not_allowed", NULL, "GET or POST");
    }
    call->in = json_pack("{s:s}", "id", call->id);
    if (method == EVHTTP_REQ_GET)
        return sbh_call_db(call, work_get, then_got);
    if (method == EVHTTP_REQ_DELETE)
        return sbh_call_db(call, work_delete, then_deleted);
    sbh_call_error(call, 405, "method_not_allowed", NULL, "GET or DELETE");
}
