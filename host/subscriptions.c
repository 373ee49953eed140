#include "subscriptions.h"

#include "httpc.h"
#include "clock.h"
#include "log.h"
#include "map.h"
#include "metrics.h"
#include "secrets.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define MAX_IN_FLIGHT 64
#define RETRY_WRITE_MS 1000

static const unsigned delay_factor[] = {1, 5, 30, 120, 600, 1800, 3600, 7200};

struct sub {
    char *id;
    char *url;
    char *secret;
    json_t *events;    /* ["*"] or types */
    json_t *instances; /* NULL: all */
};

struct dlv {
    TAILQ_ENTRY(dlv) link;
    struct sbh_subs *subs;
    char *sub_id;
    char *event_id;
    char *payload;
    unsigned attempts;
    uint64_t due_ms;
};
TAILQ_HEAD(dlv_list, dlv);

struct job {
    struct sbh_subs *subs;
    json_t *rows; /* updates: [{sub, event, state, attempts, status, delay_us}] */
};

struct sbh_subs {
    struct event_base *base;
    struct sbh_db *db;
    struct sbh_httpc *httpc;
    struct sbh_subs_conf conf;
    struct sbh_map *subs;
    struct dlv_list due;     /* sorted by due_ms */
    struct dlv_list sending; /* in flight */
    size_t n_sending;
    json_t *updates;
    json_t *filters; /* [{id, events, instances}] for the database workers; NULL: rebuild */
    int writing;
    struct event *wake, *write_ev;
};

/* ---- signing ---- */

int sbh_subs_sign(const char *secret, const char *id, long long timestamp, const char *body,
                  size_t body_len, char *out, size_t out_len)
{
    if (strncmp(secret, "whsec_", 6) != 0)
        return -1;
    const char *b64 = secret + 6;
    size_t n = strlen(b64);
    unsigned char key[256], mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    if (n == 0 || n % 4 || n / 4 * 3 > sizeof(key))
        return -1;
    int key_len = EVP_DecodeBlock(key, (const unsigned char *)b64, (int)n);
    if (key_len < 0)
        return -1;
    key_len -= (b64[n - 1] == '=') + (b64[n - 2] == '=');
    char prefix[160];
    int plen = snprintf(prefix, sizeof(prefix), "%s.%lld.", id, timestamp);
    EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    size_t got = 0;
    int ok = ctx && EVP_MAC_init(ctx, key, (size_t)key_len, params) &&
             EVP_MAC_update(ctx, (const unsigned char *)prefix, (size_t)plen) &&
             EVP_MAC_update(ctx, (const unsigned char *)body, body_len) &&
             EVP_MAC_final(ctx, mac, &got, sizeof(mac));
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(hmac);
    OPENSSL_cleanse(key, sizeof(key));
    mac_len = (unsigned)got;
    if (!ok || out_len < 4 + 4 * ((mac_len + 2) / 3) + 1)
        return -1;
    memcpy(out, "v1,", 3);
    EVP_EncodeBlock((unsigned char *)out + 3, mac, (int)mac_len);
    return 0;
}

/* ---- subscriptions in memory ---- */

static void sub_free(struct sub *s)
{
    if (!s)
        return;
    free(s->id);
    free(s->url);
    if (s->secret)
        OPENSSL_cleanse(s->secret, strlen(s->secret));
    free(s->secret);
    json_decref(s->events);
    json_decref(s->instances);
    free(s);
}

/* instance_filter arrives as JSON text from the table, or as an array. */
static json_t *as_json(const json_t *v)
{
    if (json_is_string(v))
        return json_loads(json_string_value(v), 0, NULL);
    return v && !json_is_null(v) ? json_incref((json_t *)v) : NULL;
}

void sbh_subs_added(struct sbh_subs *subs, const json_t *row)
{
    struct sub *s = calloc(1, sizeof(*s));
    const char *id = json_string_value(json_object_get(row, "id"));
    if (!s || !id) {
        free(s);
        return;
    }
    s->id = strdup(id);
    s->url = strdup(json_string_value(json_object_get(row, "url")));
    s->secret = strdup(json_string_value(json_object_get(row, "secret")));
    s->events = as_json(json_object_get(row, "events"));
    s->instances = as_json(json_object_get(row, "instances"));
    if (!json_is_array(s->instances)) {
        json_decref(s->instances);
        s->instances = NULL;
    }
    sub_free(sbh_map_del(subs->subs, id));
    if (sbh_map_put(subs->subs, id, s) < 0)
        sub_free(s);
    json_decref(subs->filters);
    subs->filters = NULL;
}

void sbh_subs_removed(struct sbh_subs *subs, const char *id)
{
    sub_free(sbh_map_del(subs->subs, id));
    json_decref(subs->filters);
    subs->filters = NULL;
}

static void add_filter(const char *id, void *value, void *arg)
{
    const struct sub *s = value;
    json_array_append_new(arg, json_pack("{s:s, s:O, s:O?}", "id", id, "events", s->events,
                                         "instances", s->instances));
}

json_t *sbh_subs_filters(void *arg)
{
    struct sbh_subs *subs = arg;
    if (sbh_map_size(subs->subs) == 0)
        return NULL;
    if (!subs->filters) {
        subs->filters = json_array();
        sbh_map_each(subs->subs, add_filter, subs->filters);
    }
    return json_incref(subs->filters);
}

static int contains(const json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach (arr, i, v)
        if (json_is_string(v) &&
            (!strcmp(json_string_value(v), s) || !strcmp(json_string_value(v), "*")))
            return 1;
    return 0;
}

/* ---- writing delivery rows ---- */

static void write_soon(struct sbh_subs *subs)
{
    if (!subs->writing && !evtimer_pending(subs->write_ev, NULL))
        sbh_timer_arm_ms(subs->write_ev, 0);
}

/* The attempts' outcomes, one bulk UPDATE for the batch. */
static int write_rows(MYSQL *conn, void *arg)
{
    static const char *const keys[] = {"state", "attempts", "status", "delay_us", "sub", "event"};
    struct job *j = arg;
    json_t *values = json_array(), *r;
    size_t i;
    json_array_foreach (j->rows, i, r)
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
            json_array_append(values, json_object_get(r, keys[k]));
    int rc = sbh_db_exec_rows(conn, NULL,
                              "UPDATE subscription_deliveries SET state = ?, attempts = ?, "
                              "last_status = ?, next_attempt_at = DATE_ADD(UTC_TIMESTAMP(6), "
                              "INTERVAL ? MICROSECOND) WHERE subscription_id = ? AND event_id = ?",
                              json_array_size(j->rows), values);
    json_decref(values);
    return rc;
}

static int work_rows(MYSQL *conn, void *arg)
{
    return sbh_db_transaction(conn, write_rows, arg);
}

static void pump(struct sbh_subs *subs);
static void queue_due(struct sbh_subs *subs, struct dlv *d, uint64_t delay_ms);

static void done_rows(void *arg, int rc)
{
    struct job *j = arg;
    struct sbh_subs *subs = j->subs;
    subs->writing = 0;
    if (rc != SBH_DB_OK) {
        /* Put them back in front and try again. */
        json_array_extend(j->rows, subs->updates);
        json_decref(subs->updates);
        subs->updates = json_incref(j->rows);
        json_decref(j->rows);
        free(j);
        sbh_timer_arm_ms(subs->write_ev, RETRY_WRITE_MS);
        return;
    }
    json_decref(j->rows);
    free(j);
    if (json_array_size(subs->updates))
        write_soon(subs);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_subs *subs = arg;
    if (subs->writing || !json_array_size(subs->updates))
        return;
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return;
    j->subs = subs;
    j->rows = subs->updates;
    subs->updates = json_array();
    subs->writing = 1;
    if (sbh_db_submit(subs->db, work_rows, done_rows, j) < 0)
        done_rows(j, SBH_DB_UNAVAILABLE);
}

/* ---- delivering ---- */

static void dlv_free(struct dlv *d)
{
    free(d->sub_id);
    free(d->event_id);
    free(d->payload);
    free(d);
}

static void queue_due(struct sbh_subs *subs, struct dlv *d, uint64_t delay_ms)
{
    d->due_ms = sbh_now_ms() + delay_ms;
    struct dlv *after = TAILQ_LAST(&subs->due, dlv_list);
    while (after && after->due_ms > d->due_ms)
        after = TAILQ_PREV(after, dlv_list, link);
    if (after)
        TAILQ_INSERT_AFTER(&subs->due, after, d, link);
    else
        TAILQ_INSERT_HEAD(&subs->due, d, link);
}

static void record(struct sbh_subs *subs, const struct dlv *d, const char *state, int status,
                   uint64_t delay_ms)
{
    json_array_append_new(subs->updates,
                          json_pack("{s:s, s:s, s:s, s:i, s:i, s:I}", "sub", d->sub_id, "event",
                                    d->event_id, "state", state, "attempts", (int)d->attempts,
                                    "status", status, "delay_us", (json_int_t)delay_ms * 1000));
    write_soon(subs);
}

static void on_answer(void *arg, const sb_http_response *resp)
{
    struct dlv *d = arg;
    struct sbh_subs *subs = d->subs;
    TAILQ_REMOVE(&subs->sending, d, link);
    subs->n_sending--;
    int ok = resp->status >= 200 && resp->status < 300;
    sbh_metrics_add("switchboard_subscription_deliveries_total", "Customer webhook attempts", 1,
                    "result", ok ? "delivered" : "failed_attempt", SBH_END);
    if (ok || d->attempts >= subs->conf.max_attempts || !sbh_map_get(subs->subs, d->sub_id)) {
        record(subs, d, ok ? "delivered" : "failed", resp->status, 0);
        dlv_free(d);
    } else {
        unsigned i = d->attempts - 1 < 8 ? d->attempts - 1 : 7;
        uint64_t wait = (uint64_t)subs->conf.retry_base_ms * delay_factor[i];
        record(subs, d, "pending", resp->status, wait);
        queue_due(subs, d, wait);
    }
    pump(subs);
}

static void send_one(struct sbh_subs *subs, struct dlv *d, const struct sub *s)
{
    char ts[32], sig[128];
    long long now = (long long)time(NULL);
    snprintf(ts, sizeof(ts), "%lld", now);
    size_t len = strlen(d->payload);
    if (sbh_subs_sign(s->secret, d->event_id, now, d->payload, len, sig, sizeof(sig)) < 0)
        sig[0] = '\0';
    sb_header h[] = {{"Content-Type", "application/json"},
                     {"User-Agent", "switchboard"},
                     {"webhook-id", d->event_id},
                     {"webhook-timestamp", ts},
                     {"webhook-signature", sig}};
    sb_http_request req = {.method = "POST",
                           .url = s->url,
                           .headers = h,
                           .n_headers = sizeof(h) / sizeof(h[0]),
                           .body = (const unsigned char *)d->payload,
                           .body_len = len,
                           .timeout_ms = subs->conf.timeout_ms};
    d->attempts++;
    TAILQ_INSERT_TAIL(&subs->sending, d, link);
    subs->n_sending++;
    if (!sbh_httpc_request(subs->httpc, NULL, NULL, &req, on_answer, d)) {
        sb_http_response none = {.status = 0, .error = "request refused"};
        on_answer(d, &none);
    }
}

static void pump(struct sbh_subs *subs)
{
    uint64_t now = sbh_now_ms();
    struct dlv *d;
    while (subs->n_sending < MAX_IN_FLIGHT && (d = TAILQ_FIRST(&subs->due)) && d->due_ms <= now) {
        TAILQ_REMOVE(&subs->due, d, link);
        const struct sub *s = sbh_map_get(subs->subs, d->sub_id);
        if (!s) {
            dlv_free(d); /* the subscription was deleted; its rows went with it */
            continue;
        }
        send_one(subs, d, s);
    }
    d = TAILQ_FIRST(&subs->due);
    if (d)
        sbh_timer_arm_ms(subs->wake, d->due_ms > now ? d->due_ms - now : 0);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    pump(arg);
}

/* ---- new deliveries, written with their events ---- */

void sbh_subs_match(const json_t *filters, const json_t *envelope, const char *text, json_t *rows)
{
    const char *type = json_string_value(json_object_get(envelope, "type"));
    const char *inst = json_string_value(json_object_get(envelope, "instance"));
    size_t i;
    json_t *f;
    if (!type || !inst)
        return;
    json_array_foreach (filters, i, f) {
        const json_t *instances = json_object_get(f, "instances");
        if (!contains(json_object_get(f, "events"), type) ||
            (json_is_array(instances) && !contains(instances, inst)))
            continue;
        /* Copies, not references: the filters are shared with other workers. */
        json_array_append(rows, json_object_get(envelope, "id"));
        json_array_append_new(rows, json_string(text));
        json_array_append_new(rows, json_string(json_string_value(json_object_get(f, "id"))));
    }
}

/* Drop the rows of subscriptions deleted since the snapshot; the rest are
 * locked against deletion until the commit (the foreign key would refuse them). */
static int keep_live(MYSQL *conn, json_t *rows)
{
    json_t *ids = json_array(), *live_rows = NULL, *live = json_object();
    for (size_t i = 2; i < json_array_size(rows); i += 3)
        if (!json_object_get(live, json_string_value(json_array_get(rows, i)))) {
            json_object_set_new(live, json_string_value(json_array_get(rows, i)), json_false());
            json_array_append(ids, json_array_get(rows, i));
        }
    char *sql = sbh_db_rows_sql("SELECT id FROM subscriptions WHERE id IN (", "?",
                                json_array_size(ids), ") LOCK IN SHARE MODE");
    int rc = sql ? sbh_db_query_json(conn, &live_rows, sql, ids) : SBH_DB_ERROR;
    size_t i;
    json_t *row;
    json_array_foreach (live_rows, i, row)
        json_object_set_new(live, json_string_value(json_object_get(row, "id")), json_true());
    for (i = json_array_size(rows); rc == SBH_DB_OK && i >= 3; i -= 3)
        if (!json_is_true(json_object_get(live, json_string_value(json_array_get(rows, i - 1)))))
            for (int k = 0; k < 3; k++)
                json_array_remove(rows, i - 3);
    free(sql);
    json_decref(ids);
    json_decref(live_rows);
    json_decref(live);
    return rc;
}

int sbh_subs_write(MYSQL *conn, json_t *rows)
{
    int rc = keep_live(conn, rows);
    if (rc != SBH_DB_OK)
        return rc;
    return sbh_db_exec_rows(conn, NULL,
                            "INSERT INTO subscription_deliveries (event_id, payload, "
                            "subscription_id, state, next_attempt_at) VALUES (?, ?, ?, "
                            "'pending', UTC_TIMESTAMP(6))",
                            json_array_size(rows) / 3, rows);
}

void sbh_subs_stored(void *arg, const json_t *rows)
{
    struct sbh_subs *subs = arg;
    for (size_t i = 0; i + 2 < json_array_size(rows); i += 3) {
        struct dlv *d = calloc(1, sizeof(*d));
        if (!d)
            break;
        d->subs = subs;
        d->event_id = strdup(json_string_value(json_array_get(rows, i)));
        d->payload = strdup(json_string_value(json_array_get(rows, i + 1)));
        d->sub_id = strdup(json_string_value(json_array_get(rows, i + 2)));
        queue_due(subs, d, 0);
    }
    pump(subs);
}

/* ---- life cycle ---- */

static int load_subs(struct sbh_subs *subs, MYSQL *conn, const struct sbh_keyring *ring, char *why,
                     size_t why_len)
{
    json_t *rows = NULL, *row;
    size_t i;
    if (sbh_db_query(conn, &rows,
                     "SELECT id, url, secret, events, instance_filter AS instances FROM "
                     "subscriptions WHERE enabled = 1",
                     "") != SBH_DB_OK) {
        snprintf(why, why_len, "cannot read subscriptions: %s", mysql_error(conn));
        return -1;
    }
    json_array_foreach (rows, i, row) {
        const char *id = json_string_value(json_object_get(row, "id"));
        size_t len;
        char err[200];
        unsigned char *secret = sbh_secret_open(
            ring, id, json_string_value(json_object_get(row, "secret")), &len, err, sizeof(err));
        if (!secret) {
            sbh_log(SB_LOG_ERROR, "subscriptions", NULL, NULL,
                    "subscription %s: cannot open its secret: %s", id, err);
            continue;
        }
        json_object_set_new(row, "secret", json_stringn((const char *)secret, len));
        OPENSSL_cleanse(secret, len);
        free(secret);
        sbh_subs_added(subs, row);
    }
    json_decref(rows);
    return 0;
}

int sbh_subs_load(struct sbh_subs *subs, MYSQL *conn, const struct sbh_keyring *ring, char *why,
                  size_t why_len)
{
    json_t *rows = NULL, *row;
    size_t i;
    if (load_subs(subs, conn, ring, why, why_len) < 0)
        return -1;
    if (sbh_db_query(conn, &rows,
                     "SELECT subscription_id, event_id, payload, attempts, GREATEST(0, "
                     "TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), next_attempt_at)) AS delay_us "
                     "FROM subscription_deliveries WHERE state = 'pending'",
                     "") != SBH_DB_OK) {
        snprintf(why, why_len, "cannot read subscription deliveries: %s", mysql_error(conn));
        return -1;
    }
    json_array_foreach (rows, i, row) {
        struct dlv *d = calloc(1, sizeof(*d));
        if (!d)
            break;
        d->subs = subs;
        d->sub_id = strdup(json_string_value(json_object_get(row, "subscription_id")));
        d->event_id = strdup(json_string_value(json_object_get(row, "event_id")));
        d->payload = strdup(json_string_value(json_object_get(row, "payload")));
        d->attempts = (unsigned)json_integer_value(json_object_get(row, "attempts"));
        queue_due(subs, d, (uint64_t)json_integer_value(json_object_get(row, "delay_us")) / 1000);
    }
    json_decref(rows);
    pump(subs);
    return 0;
}

size_t sbh_subs_unsaved(const struct sbh_subs *subs)
{
    return json_array_size(subs->updates) + subs->writing;
}

struct sbh_subs *sbh_subs_new(struct event_base *base, struct sbh_db *db, struct sbh_httpc *httpc,
                              const struct sbh_subs_conf *conf)
{
    struct sbh_subs *subs = calloc(1, sizeof(*subs));
    if (!subs)
        return NULL;
    subs->base = base;
    subs->db = db;
    subs->httpc = httpc;
    subs->conf = *conf;
    subs->subs = sbh_map_new();
    TAILQ_INIT(&subs->due);
    TAILQ_INIT(&subs->sending);
    subs->updates = json_array();
    subs->wake = evtimer_new(base, on_wake, subs);
    subs->write_ev = evtimer_new(base, on_write, subs);
    if (!subs->subs || !subs->updates || !subs->wake || !subs->write_ev) {
        sbh_subs_free(subs);
        return NULL;
    }
    return subs;
}

static void sub_free_cb(const char *key, void *value, void *arg)
{
    sub_free(value);
}

void sbh_subs_free(struct sbh_subs *subs)
{
    if (!subs)
        return;
    struct dlv *d;
    while ((d = TAILQ_FIRST(&subs->due)) != NULL) {
        TAILQ_REMOVE(&subs->due, d, link);
        dlv_free(d);
    }
    while ((d = TAILQ_FIRST(&subs->sending)) != NULL) {
        TAILQ_REMOVE(&subs->sending, d, link);
        dlv_free(d);
    }
    if (subs->subs)
        sbh_map_each(subs->subs, sub_free_cb, NULL);
    sbh_map_free(subs->subs);
    json_decref(subs->updates);
    json_decref(subs->filters);
    if (subs->wake)
        event_free(subs->wake);
    if (subs->write_ev)
        event_free(subs->write_ev);
    free(subs);
}
