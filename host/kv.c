#include "kv.h"

#include "db.h"
#include "log.h"
#include "map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <jansson.h>
#include <switchboard/services.h>

#define MAX_KEY 128
#define MAX_VALUE (64 * 1024)
#define RETRY_MS 1000

/*
 * An instance's pairs in one block, "key\0value\0key\0value\0": a Discord
 * session's four pairs take ~0.2 KiB this way, ~0.75 KiB as a JSON object.
 */
struct pairs {
    size_t len; /* bytes used in data */
    char data[];
};

struct sbh_kv {
    struct event_base *base;
    struct sbh_db *db;
    struct sbh_map *values; /* instance -> struct pairs */
    json_t *unsaved;        /* "instance\nkey" -> {instance, key, value, seq} awaiting a write */
    struct event *retry;
    long long last_seq;
    size_t in_flight;
};

struct write_job {
    struct sbh_kv *kv;
    char *instance, *key, *value;
    long long seq;
};

static void on_retry(evutil_socket_t fd, short what, void *arg);

struct sbh_kv *sbh_kv_new(struct event_base *base)
{
    struct sbh_kv *kv = calloc(1, sizeof(*kv));
    if (!kv)
        return NULL;
    kv->base = base;
    kv->values = sbh_map_new();
    kv->unsaved = json_object();
    if (!kv->values) {
        json_decref(kv->unsaved);
        free(kv);
        return NULL;
    }
    kv->retry = base ? evtimer_new(base, on_retry, kv) : NULL;
    return kv;
}

static void free_pairs(const char *instance, void *value, void *arg)
{
    free(value);
}

void sbh_kv_free(struct sbh_kv *kv)
{
    if (!kv)
        return;
    if (kv->retry)
        event_free(kv->retry);
    sbh_map_each(kv->values, free_pairs, NULL);
    sbh_map_free(kv->values);
    json_decref(kv->unsaved);
    free(kv);
}

/* The value stored for key in p, or NULL. */
static const char *pairs_get(const struct pairs *p, const char *key)
{
    for (size_t at = 0; p && at < p->len;) {
        const char *k = p->data + at, *v = k + strlen(k) + 1;
        if (!strcmp(k, key))
            return v;
        at = (size_t)(v - p->data) + strlen(v) + 1;
    }
    return NULL;
}

/* Set key to value in instance's block (a new block replaces the old one). */
static int pairs_set(struct sbh_kv *kv, const char *instance, const char *key, const char *value)
{
    struct pairs *old = sbh_map_get(kv->values, instance);
    size_t kl = strlen(key) + 1, vl = strlen(value) + 1, keep = 0;
    const char *cur = pairs_get(old, key);
    size_t drop_at = 0, drop_len = 0;
    if (cur) {
        drop_at = (size_t)(cur - old->data) - kl;
        drop_len = kl + strlen(cur) + 1;
    }
    if (old)
        keep = old->len - drop_len;
    struct pairs *p = malloc(sizeof(*p) + keep + kl + vl);
    if (!p)
        return SB_ENOMEM;
    if (old) {
        memcpy(p->data, old->data, drop_at);
        memcpy(p->data + drop_at, old->data + drop_at + drop_len, old->len - drop_at - drop_len);
    }
    memcpy(p->data + keep, key, kl);
    memcpy(p->data + keep + kl, value, vl);
    p->len = keep + kl + vl;
    if (sbh_map_put(kv->values, instance, p) < 0) {
        free(p);
        return SB_ENOMEM;
    }
    free(old);
    return SB_OK;
}

int sbh_kv_load(struct sbh_kv *kv, MYSQL *conn)
{
    json_t *rows = NULL, *row;
    size_t i;
    if (sbh_db_query(conn, &rows, "SELECT instance_id, k, v, seq FROM instance_kv", "") !=
        SBH_DB_OK)
        return -1;
    json_array_foreach (rows, i, row) {
        const char *inst = json_string_value(json_object_get(row, "instance_id"));
        const char *k = json_string_value(json_object_get(row, "k"));
        const char *v = json_string_value(json_object_get(row, "v"));
        if (inst && k && v)
            pairs_set(kv, inst, k, v);
        long long seq = json_integer_value(json_object_get(row, "seq"));
        if (seq > kv->last_seq)
            kv->last_seq = seq;
    }
    json_decref(rows);
    return 0;
}

int sbh_kv_get(const struct sbh_kv *kv, const char *instance, const char *key, char **value)
{
    const char *v = pairs_get(sbh_map_get(kv->values, instance), key);
    if (!v)
        return SB_ENOTFOUND;
    *value = strdup(v);
    return *value ? SB_OK : SB_ENOMEM;
}

json_t *sbh_kv_dump(const struct sbh_kv *kv, const char *instance)
{
    const struct pairs *p = sbh_map_get(kv->values, instance);
    json_t *out = json_object();
    for (size_t at = 0; p && out && at < p->len;) {
        const char *k = p->data + at, *v = k + strlen(k) + 1;
        json_object_set_new(out, k, json_string(v));
        at = (size_t)(v - p->data) + strlen(v) + 1;
    }
    return out;
}

/* Strictly increasing across restarts too: microseconds, bumped on ties. */
static long long next_seq(struct sbh_kv *kv)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    long long now = (long long)tv.tv_sec * 1000000 + tv.tv_usec;
    kv->last_seq = now > kv->last_seq ? now : kv->last_seq + 1;
    return kv->last_seq;
}

static int work_write(MYSQL *conn, void *arg)
{
    struct write_job *j = arg;
    /* A write that lost a race to a newer one must not undo it; assignments
     * run left to right, so v is decided before seq moves. */
    return sbh_db_exec(conn, NULL,
                       "INSERT INTO instance_kv (instance_id, k, v, seq, updated_at) "
                       "VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE "
                       "v = IF(VALUES(seq) > seq, VALUES(v), v), "
                       "updated_at = IF(VALUES(seq) > seq, VALUES(updated_at), updated_at), "
                       "seq = GREATEST(seq, VALUES(seq))",
                       "sssi", j->instance, j->key, j->value, j->seq);
}

static void flush(struct sbh_kv *kv);

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    flush(arg);
}

static void done_write(void *arg, int rc)
{
    struct write_job *j = arg;
    struct sbh_kv *kv = j->kv;
    kv->in_flight--;
    if (rc != SBH_DB_OK) {
        /* Keep the newest value for this key and try again later. */
        char slot[MAX_KEY * 2 + 2];
        snprintf(slot, sizeof(slot), "%s\n%s", j->instance, j->key);
        json_t *cur = json_object_get(kv->unsaved, slot);
        if (!cur || json_integer_value(json_object_get(cur, "seq")) < j->seq)
            json_object_set_new(kv->unsaved, slot,
                                json_pack("{s:s, s:s, s:s, s:I}", "instance", j->instance, "key",
                                          j->key, "value", j->value, "seq", (json_int_t)j->seq));
        struct timeval tv = {RETRY_MS / 1000, (RETRY_MS % 1000) * 1000};
        if (kv->retry && !evtimer_pending(kv->retry, NULL))
            evtimer_add(kv->retry, &tv);
    }
    free(j->instance);
    free(j->key);
    free(j->value);
    free(j);
}

static void submit(struct sbh_kv *kv, const char *instance, const char *key, const char *value,
                   long long seq)
{
    struct write_job *j = calloc(1, sizeof(*j));
    if (!j)
        return;
    *j = (struct write_job){kv, strdup(instance), strdup(key), strdup(value), seq};
    kv->in_flight++;
    if (!j->instance || !j->key || !j->value ||
        sbh_db_submit(kv->db, work_write, done_write, j) < 0)
        done_write(j, SBH_DB_UNAVAILABLE);
}

static void flush(struct sbh_kv *kv)
{
    json_t *batch = kv->unsaved;
    const char *slot;
    json_t *w;
    kv->unsaved = json_object();
    json_object_foreach (batch, slot, w)
        submit(kv, json_string_value(json_object_get(w, "instance")),
               json_string_value(json_object_get(w, "key")),
               json_string_value(json_object_get(w, "value")),
               json_integer_value(json_object_get(w, "seq")));
    json_decref(batch);
}

void sbh_kv_attach(struct sbh_kv *kv, struct sbh_db *db)
{
    kv->db = db;
}

int sbh_kv_set(struct sbh_kv *kv, const char *instance, const char *key, const char *value)
{
    if (!instance || !key || !value || !*key || strlen(key) > MAX_KEY || strlen(value) > MAX_VALUE)
        return SB_EINVAL;
    json_t *v = json_string(value);
    if (!v)
        return SB_EINVAL; /* not UTF-8 */
    json_decref(v);
    int rc = pairs_set(kv, instance, key, value);
    if (rc != SB_OK)
        return rc;
    if (kv->db)
        submit(kv, instance, key, value, next_seq(kv));
    return SB_OK;
}

size_t sbh_kv_unsaved(const struct sbh_kv *kv)
{
    return json_object_size(kv->unsaved) + kv->in_flight;
}

void sbh_kv_forget(struct sbh_kv *kv, const char *instance)
{
    free(sbh_map_del(kv->values, instance));
}
