#include "inbound.h"

#include "log.h"
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <openssl/rand.h>

#define RETRY_MS 1000
#define MAX_CONSUMERS 4

struct item {
    struct item *next;
    char *provider;
    char *instance;
    json_t *events;    /* [{"type", "payload"}] */
    json_t *envelopes; /* filled by the worker: the new (not duplicate) ones */
    void (*done)(void *arg, int ok);
    void *arg;
};

struct flush {
    struct sbh_inbound *ib;
    struct item *head;
};

struct sbh_inbound {
    struct event_base *base;
    struct sbh_db *db;
    struct item *pending, **tail;
    size_t n_pending;
    size_t in_flight;
    struct event *flush_ev;
    struct {
        sbh_event_fn fn;
        void *arg;
    } consumers[MAX_CONSUMERS];
    int n_consumers;
};

static void item_free(struct item *it)
{
    free(it->provider);
    free(it->instance);
    json_decref(it->events);
    json_decref(it->envelopes);
    free(it);
}

/* ---- the worker's side ---- */

static void event_id(char *out, size_t len)
{
    unsigned char raw[12];
    RAND_bytes(raw, sizeof(raw));
    size_t off = (size_t)snprintf(out, len, "evt_");
    for (size_t i = 0; i < sizeof(raw) && off + 2 < len; i++)
        off += (size_t)snprintf(out + off, len - off, "%02x", raw[i]);
}

static void now_iso(char *out, size_t len)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, len - n, ".%06ldZ", (long)tv.tv_usec);
}

static const char *str_of(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* The messages table mirrors message events: received ones, and states. */
static int record_message(MYSQL *conn, const struct item *it, const char *type,
                          const json_t *payload)
{
    if (!strcmp(type, "message.received")) {
        char id[40], *body = json_dumps(payload, JSON_COMPACT);
        event_id(id, sizeof(id));
        memcpy(id, "msg", 3);
        int rc = body ? sbh_db_exec(conn, NULL,
                                    "INSERT INTO messages (id, instance_id, direction, state, "
                                    "sender, body, provider_message_id, created_at, updated_at) "
                                    "VALUES (?, ?, 'in', 'received', ?, ?, ?, UTC_TIMESTAMP(6), "
                                    "UTC_TIMESTAMP(6))",
                                    "sssss", id, it->instance, str_of(payload, "from"), body,
                                    str_of(payload, "message_id"))
                      : SBH_DB_ERROR;
        free(body);
        return rc;
    }
    const char *state = str_of(payload, "state"), *pmid = str_of(payload, "message_id");
    if (strcmp(type, "message.status") != 0 || !state || !pmid)
        return SBH_DB_OK;
    if (strcmp(state, "sent") && strcmp(state, "delivered") && strcmp(state, "read") &&
        strcmp(state, "failed"))
        return SBH_DB_OK;
    /* States only move forward: a late "delivered" does not undo "read". */
    return sbh_db_exec(conn, NULL,
                       "UPDATE messages SET state = ?, updated_at = UTC_TIMESTAMP(6) "
                       "WHERE instance_id = ? AND provider_message_id = ? AND direction = 'out' "
                       "AND FIELD(state, 'queued', 'sending', 'sent', 'delivered', 'read') "
                       "< FIELD(?, 'queued', 'sending', 'sent', 'delivered', 'read')",
                       "ssss", state, it->instance, pmid, state);
}

static int store_event(MYSQL *conn, struct item *it, const json_t *ev)
{
    const char *type = str_of(ev, "type");
    const json_t *payload = json_object_get(ev, "payload");
    char id[40], at[40];
    event_id(id, sizeof(id));
    now_iso(at, sizeof(at));
    json_t *env = json_pack("{s:s, s:s, s:s, s:s, s:s, s:O}", "id", id, "type", type, "provider",
                            it->provider, "instance", it->instance, "created_at", at, "data",
                            payload);
    char *text = env ? json_dumps(env, JSON_COMPACT) : NULL;
    int rc = text ? sbh_db_exec(conn, NULL,
                                "INSERT INTO webhook_events (instance_id, provider, "
                                "provider_event_id, payload, received_at) "
                                "VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6))",
                                "ssss", it->instance, it->provider, str_of(payload, "event_id"),
                                text)
                  : SBH_DB_ERROR;
    free(text);
    if (rc == SBH_DB_CONFLICT) {
        json_decref(env); /* the provider sent this event before */
        return SBH_DB_OK;
    }
    if (rc == SBH_DB_OK)
        rc = record_message(conn, it, type, payload);
    if (rc == SBH_DB_OK)
        json_array_append(it->envelopes, env);
    json_decref(env);
    return rc;
}

static int write_flush(MYSQL *conn, void *arg)
{
    struct flush *f = arg;
    for (struct item *it = f->head; it; it = it->next) {
        size_t i;
        json_t *ev;
        json_array_clear(it->envelopes);
        json_array_foreach (it->events, i, ev) {
            int rc = store_event(conn, it, ev);
            if (rc != SBH_DB_OK)
                return rc;
        }
    }
    return SBH_DB_OK;
}

static int work_flush(MYSQL *conn, void *arg)
{
    return sbh_db_transaction(conn, write_flush, arg);
}

/* ---- the loop's side ---- */

static void queue(struct sbh_inbound *ib, struct item *it, unsigned delay_ms)
{
    it->next = NULL;
    *ib->tail = it;
    ib->tail = &it->next;
    ib->n_pending++;
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    if (!evtimer_pending(ib->flush_ev, NULL) || delay_ms == 0)
        evtimer_add(ib->flush_ev, &tv);
}

static void deliver(struct sbh_inbound *ib, const struct item *it)
{
    size_t i;
    json_t *env;
    json_array_foreach (it->envelopes, i, env) {
        sbh_metrics_add("switchboard_events_stored_total", "Inbound events stored", 1, "provider",
                        it->provider, "type", str_of(env, "type"), SBH_END);
        for (int c = 0; c < ib->n_consumers; c++)
            ib->consumers[c].fn(ib->consumers[c].arg, env);
    }
}

static void done_flush(void *arg, int rc)
{
    struct flush *f = arg;
    struct sbh_inbound *ib = f->ib;
    struct item *it = f->head;
    ib->in_flight--;
    if (rc != SBH_DB_OK)
        sbh_log(SB_LOG_WARN, "inbound", NULL, NULL, "events not stored (database result %d)", rc);
    while (it) {
        struct item *next = it->next;
        if (it->done)
            it->done(it->arg, rc == SBH_DB_OK);
        if (rc == SBH_DB_OK) {
            deliver(ib, it);
            item_free(it);
        } else if (it->done) {
            item_free(it); /* the provider got a 503 and sends it again */
        } else {
            queue(ib, it, RETRY_MS); /* nobody else holds it: keep trying */
        }
        it = next;
    }
    free(f);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_inbound *ib = arg;
    struct flush *f = calloc(1, sizeof(*f));
    if (!f || !ib->pending) {
        free(f);
        return;
    }
    f->ib = ib;
    f->head = ib->pending;
    ib->pending = NULL;
    ib->tail = &ib->pending;
    ib->n_pending = 0;
    ib->in_flight++;
    if (sbh_db_submit(ib->db, work_flush, done_flush, f) < 0)
        done_flush(f, SBH_DB_UNAVAILABLE);
}

void sbh_inbound_store(struct sbh_inbound *ib, const char *provider, const char *instance,
                       json_t *events, void (*done)(void *arg, int ok), void *arg)
{
    struct item *it = calloc(1, sizeof(*it));
    if (!it || !(it->provider = strdup(provider)) || !(it->instance = strdup(instance))) {
        if (it)
            free(it->provider);
        free(it);
        json_decref(events);
        if (done)
            done(arg, 0);
        return;
    }
    it->events = events;
    it->envelopes = json_array();
    it->done = done;
    it->arg = arg;
    queue(ib, it, 0);
}

size_t sbh_inbound_unsaved(const struct sbh_inbound *ib)
{
    return ib->n_pending + ib->in_flight;
}

void sbh_inbound_on_event(struct sbh_inbound *ib, sbh_event_fn fn, void *arg)
{
    if (ib->n_consumers == MAX_CONSUMERS)
        return;
    ib->consumers[ib->n_consumers].fn = fn;
    ib->consumers[ib->n_consumers].arg = arg;
    ib->n_consumers++;
}

struct sbh_inbound *sbh_inbound_new(struct event_base *base, struct sbh_db *db)
{
    struct sbh_inbound *ib = calloc(1, sizeof(*ib));
    if (!ib)
        return NULL;
    ib->base = base;
    ib->db = db;
    ib->tail = &ib->pending;
    ib->flush_ev = evtimer_new(base, on_flush, ib);
    if (!ib->flush_ev) {
        free(ib);
        return NULL;
    }
    return ib;
}

void sbh_inbound_free(struct sbh_inbound *ib)
{
    if (!ib)
        return;
    struct item *it = ib->pending;
    while (it) {
        struct item *next = it->next;
        if (it->done)
            it->done(it->arg, 0);
        item_free(it);
        it = next;
    }
    event_free(ib->flush_ev);
    free(ib);
}
