#include "inbound.h"

#include "log.h"
#include "map.h"
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <openssl/rand.h>

#define RETRY_MS 1000
#define MAX_CONSUMERS 4
/* Transactions at once: while one commits (its fsync) the next is written. */
#define FLUSHES_IN_FLIGHT 2

struct item {
    struct item *next;
    char *provider;
    char *instance;
    json_t *events;    /* [{"type", "payload"}] */
    json_t *envelopes; /* filled by the worker: the new (not duplicate) ones */
    void (*done)(void *arg, int ok);
    void *arg;
    int acked; /* done has run */
};

struct flush {
    struct sbh_inbound *ib;
    struct item *head;
    json_t *early;      /* statuses that found no message yet: [{instance, message_id, state}] */
    struct flush *next; /* in the order the flushes were taken */
    int finished, rc;
    int look;             /* look up stored event ids before inserting */
    int redelivered;      /* the look found some */
    json_t *fan_snapshot; /* the fan-out's view at the start (NULL: none) */
    json_t *fan_rows;     /* its rows, filled by the worker */
};

struct sbh_inbound {
    struct event_base *base;
    struct sbh_db *db;
    struct item *pending, **tail;
    size_t n_pending;
    size_t in_flight;
    /* Provider event ids in a flush not finished yet ("instance\nid" -> flush):
     * an item carrying one waits, so concurrent flushes never share an id. */
    struct sbh_map *busy;
    struct flush *order, **order_tail; /* taken, not yet handed on */
    /* The last flush met redeliveries: the next looks first rather than
     * fail once on the unique key (a provider's retry storm after an outage). */
    int look;
    struct event *flush_ev;
    struct {
        sbh_event_fn fn;
        void *arg;
    } consumers[MAX_CONSUMERS];
    int n_consumers;
    sbh_early_status_fn early_fn;
    void *early_arg;
    struct sbh_inbound_fanout fanout;
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

/* A status event moves its outbound message's state, forward only. */
static int record_status(MYSQL *conn, const char *instance, const json_t *payload,
                         unsigned long long *matched)
{
    *matched = 1;
    const char *state = str_of(payload, "state"), *pmid = str_of(payload, "message_id");
    if (!state || !pmid)
        return SBH_DB_OK;
    if (strcmp(state, "sent") && strcmp(state, "delivered") && strcmp(state, "read") &&
        strcmp(state, "failed"))
        return SBH_DB_OK;
    /* A failure only follows what was not yet delivered; the provider's reason is kept. */
    if (!strcmp(state, "failed"))
        return sbh_db_exec(conn, matched,
                           "UPDATE messages SET state = 'failed', last_error = COALESCE(?, "
                           "last_error), updated_at = UTC_TIMESTAMP(6) "
                           "WHERE instance_id = ? AND provider_message_id = ? AND direction = "
                           "'out' AND state IN ('queued', 'sending', 'sent')",
                           "sss", str_of(payload, "error"), instance, pmid);
    /* A late "delivered" does not undo "read". */
    return sbh_db_exec(conn, matched,
                       "UPDATE messages SET state = ?, updated_at = UTC_TIMESTAMP(6) "
                       "WHERE instance_id = ? AND provider_message_id = ? AND direction = 'out' "
                       "AND FIELD(state, 'queued', 'sending', 'sent', 'delivered', 'read') "
                       "< FIELD(?, 'queued', 'sending', 'sent', 'delivered', 'read')",
                       "ssss", state, instance, pmid, state);
}

/*
 * Provider event ids of this batch that are stored already. No other flush
 * in flight carries one of these ids (see busy), so nothing can slip in
 * between this look and the insert.
 */
static int known_events(MYSQL *conn, const struct flush *f, json_t **known)
{
    json_t *values = json_array(), *rows = NULL;
    size_t n = 0;
    *known = json_object();
    for (const struct item *it = f->head; it; it = it->next) {
        size_t i;
        json_t *ev;
        json_array_foreach (it->events, i, ev) {
            const char *pid = str_of(json_object_get(ev, "payload"), "event_id");
            if (!pid)
                continue;
            json_array_append_new(values, json_string(it->instance));
            json_array_append_new(values, json_string(pid));
            n++;
        }
    }
    int rc = SBH_DB_OK;
    if (n) {
        char *sql =
            sbh_db_rows_sql("SELECT instance_id, provider_event_id FROM webhook_events WHERE "
                            "(instance_id, provider_event_id) IN (",
                            "(?, ?)", n, ")");
        rc = sql ? sbh_db_query_json(conn, &rows, sql, values) : SBH_DB_ERROR;
        free(sql);
    }
    size_t i;
    json_t *row;
    json_array_foreach (rows, i, row) {
        char key[400];
        snprintf(key, sizeof(key), "%s\n%s", str_of(row, "instance_id"),
                 str_of(row, "provider_event_id"));
        json_object_set_new(*known, key, json_true());
    }
    json_decref(rows);
    json_decref(values);
    return rc;
}

/* Turn the batch into envelopes, skipping redeliveries; fill the row values. */
static size_t collect(struct flush *f, json_t *known, json_t *ev_values, json_t *msg_values,
                      json_t **statuses)
{
    size_t n_msgs = 0;
    *statuses = json_array();
    for (struct item *it = f->head; it; it = it->next) {
        size_t i;
        json_t *ev;
        json_array_clear(it->envelopes);
        json_array_foreach (it->events, i, ev) {
            const char *type = str_of(ev, "type");
            json_t *payload = json_object_get(ev, "payload");
            const char *pid = str_of(payload, "event_id");
            char key[400], id[40], at[40];
            if (pid) {
                snprintf(key, sizeof(key), "%s\n%s", it->instance, pid);
                if (json_object_get(known, key))
                    continue; /* the provider sent this before (or twice in this batch) */
                json_object_set_new(known, key, json_true());
            }
            event_id(id, sizeof(id));
            now_iso(at, sizeof(at));
            json_t *env = json_pack("{s:s, s:s, s:s, s:s, s:s, s:O}", "id", id, "type", type,
                                    "provider", it->provider, "instance", it->instance,
                                    "created_at", at, "data", payload);
            char *text = env ? json_dumps(env, JSON_COMPACT) : NULL;
            if (!text) {
                json_decref(env);
                continue;
            }
            json_array_append_new(ev_values, json_string(it->instance));
            json_array_append_new(ev_values, json_string(it->provider));
            json_array_append_new(ev_values, pid ? json_string(pid) : json_null());
            json_array_append_new(ev_values, json_string(text));
            if (f->fan_snapshot)
                f->ib->fanout.match(f->fan_snapshot, env, text, f->fan_rows);
            free(text);
            if (!strcmp(type, "message.received")) {
                char *body = json_dumps(payload, JSON_COMPACT);
                memcpy(id, "msg", 3);
                json_array_append_new(msg_values, json_string(id));
                json_array_append_new(msg_values, json_string(it->instance));
                const char *from = str_of(payload, "from");
                json_array_append_new(msg_values, from ? json_string(from) : json_null());
                json_array_append_new(msg_values, json_string(body ? body : "{}"));
                const char *pmid = str_of(payload, "message_id");
                json_array_append_new(msg_values, pmid ? json_string(pmid) : json_null());
                free(body);
                n_msgs++;
            } else if (!strcmp(type, "message.status")) {
                json_array_append_new(*statuses, json_pack("{s:s, s:O}", "instance", it->instance,
                                                           "payload", payload));
            }
            json_array_append_new(it->envelopes, env);
        }
    }
    return n_msgs;
}

static int write_flush(MYSQL *conn, void *arg)
{
    struct flush *f = arg;
    json_array_clear(f->early); /* a retried transaction starts over */
    json_array_clear(f->fan_rows);
    json_t *known = NULL, *ev_values = json_array(), *msg_values = json_array(), *statuses = NULL;
    /* Optimistic first: no look for redeliveries; the unique key catches one. */
    int rc = f->look ? known_events(conn, f, &known) : SBH_DB_OK;
    if (!known)
        known = json_object();
    if (rc != SBH_DB_OK)
        goto out;
    f->redelivered = json_object_size(known) > 0;
    size_t n_msgs = collect(f, known, ev_values, msg_values, &statuses);
    rc = sbh_db_exec_rows(conn, NULL,
                          "INSERT INTO webhook_events (instance_id, provider, provider_event_id, "
                          "payload, received_at) VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6))",
                          json_array_size(ev_values) / 4, ev_values);
    if (rc == SBH_DB_OK)
        rc = sbh_db_exec_rows(conn, NULL,
                              "INSERT INTO messages (id, instance_id, direction, state, sender, "
                              "body, provider_message_id, created_at, updated_at) VALUES (?, ?, "
                              "'in', 'received', ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
                              n_msgs, msg_values);
    if (rc == SBH_DB_OK && json_array_size(f->fan_rows))
        rc = f->ib->fanout.write(conn, f->fan_rows);
    size_t i;
    json_t *st;
    json_array_foreach (statuses, i, st) {
        if (rc != SBH_DB_OK)
            break;
        unsigned long long matched = 0;
        json_t *payload = json_object_get(st, "payload");
        rc = record_status(conn, str_of(st, "instance"), payload, &matched);
        /* Maybe the send's own result is not written yet: the outbox applies it later. */
        if (rc == SBH_DB_OK && matched == 0 && str_of(payload, "message_id") &&
            str_of(payload, "state"))
            json_array_append_new(f->early, json_pack("{s:O, s:O, s:O}", "instance",
                                                      json_object_get(st, "instance"), "message_id",
                                                      json_object_get(payload, "message_id"),
                                                      "state", json_object_get(payload, "state")));
    }
out:
    json_decref(known);
    json_decref(ev_values);
    json_decref(msg_values);
    json_decref(statuses);
    return rc;
}

static int work_flush(MYSQL *conn, void *arg)
{
    struct flush *f = arg;
    if (!f->look) {
        int rc = sbh_db_transaction(conn, write_flush, f);
        if (rc != SBH_DB_CONFLICT)
            return rc;
        f->look = 1; /* a redelivery: again, looking first */
    }
    return sbh_db_transaction(conn, write_flush, f);
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

/* The dedup key of event i of it, or 0 when the provider gave no event id. */
static int item_key(const struct item *it, size_t i, char *key, size_t len)
{
    const char *pid = str_of(json_object_get(json_array_get(it->events, i), "payload"), "event_id");
    if (!pid)
        return 0;
    snprintf(key, len, "%s\n%s", it->instance, pid);
    return 1;
}

/* 1 when an event id of it is in a flush other than f. */
static int item_busy(const struct sbh_inbound *ib, const struct item *it, const struct flush *f)
{
    char key[400];
    for (size_t i = 0; i < json_array_size(it->events); i++) {
        void *owner = item_key(it, i, key, sizeof(key)) ? sbh_map_get(ib->busy, key) : NULL;
        if (owner && owner != f)
            return 1;
    }
    return 0;
}

/* Mark it's event ids as held by f (claim), or let go of those f holds. */
static void item_claim(struct sbh_inbound *ib, const struct item *it, struct flush *f, int claim)
{
    char key[400];
    for (size_t i = 0; i < json_array_size(it->events); i++) {
        if (!item_key(it, i, key, sizeof(key)))
            continue;
        if (claim)
            sbh_map_put(ib->busy, key, f);
        else if (sbh_map_get(ib->busy, key) == f)
            sbh_map_del(ib->busy, key);
    }
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

/* Hand on a finished flush: its events, its early statuses, its retries. */
static void flush_settle(struct sbh_inbound *ib, struct flush *f)
{
    size_t e;
    json_t *early;
    json_array_foreach (f->early, e, early)
        if (f->rc == SBH_DB_OK && ib->early_fn)
            ib->early_fn(ib->early_arg, str_of(early, "instance"), str_of(early, "message_id"),
                         str_of(early, "state"));
    json_decref(f->early);
    if (f->rc == SBH_DB_OK && json_array_size(f->fan_rows))
        ib->fanout.stored(ib->fanout.arg, f->fan_rows);
    json_decref(f->fan_snapshot);
    json_decref(f->fan_rows);
    struct item *it = f->head;
    while (it) {
        struct item *next = it->next;
        if (f->rc == SBH_DB_OK) {
            deliver(ib, it);
            item_free(it);
        } else if (it->acked) {
            item_free(it); /* the provider got a 503 and sends it again */
        } else {
            queue(ib, it, RETRY_MS); /* nobody else holds it: keep trying */
        }
        it = next;
    }
    free(f);
}

static void done_flush(void *arg, int rc)
{
    struct flush *f = arg;
    struct sbh_inbound *ib = f->ib;
    ib->in_flight--;
    if (rc == SBH_DB_OK)
        ib->look = f->look && f->redelivered;
    for (const struct item *it = f->head; it; it = it->next)
        item_claim(ib, it, f, 0);
    f->finished = 1;
    f->rc = rc;
    if (rc != SBH_DB_OK)
        sbh_log(SB_LOG_WARN, "inbound", NULL, NULL, "events not stored (database result %d)", rc);
    /* Acknowledge at once; hand events on in the order they arrived. */
    for (struct item *it = f->head; it; it = it->next)
        if (it->done && !it->acked) {
            it->acked = 1;
            it->done(it->arg, rc == SBH_DB_OK);
        }
    while (ib->order && ib->order->finished) {
        struct flush *first = ib->order;
        ib->order = first->next;
        if (!ib->order)
            ib->order_tail = &ib->order;
        flush_settle(ib, first);
    }
    /* What arrived during this transaction goes now (a failure waits its retry). */
    if (rc == SBH_DB_OK && ib->pending && !evtimer_pending(ib->flush_ev, NULL)) {
        struct timeval now = {0, 0};
        evtimer_add(ib->flush_ev, &now);
    }
}

/* Move the pending items whose event ids are free into a new flush. */
static struct flush *flush_take(struct sbh_inbound *ib)
{
    struct flush *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    struct item **from = &ib->pending, **to = &f->head;
    while (*from) {
        struct item *it = *from;
        if (item_busy(ib, it, f)) {
            from = &it->next; /* waits for the flush that holds its id */
            continue;
        }
        *from = it->next;
        it->next = NULL;
        *to = it;
        to = &it->next;
        ib->n_pending--;
        item_claim(ib, it, f, 1);
    }
    ib->tail = from;
    if (!f->head) {
        free(f);
        return NULL;
    }
    f->ib = ib;
    f->early = json_array();
    f->fan_rows = json_array();
    f->fan_snapshot = ib->fanout.snapshot ? ib->fanout.snapshot(ib->fanout.arg) : NULL;
    f->look = ib->look;
    *ib->order_tail = f;
    ib->order_tail = &f->next;
    return f;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_inbound *ib = arg;
    /* What arrives meanwhile joins the next flush. */
    while (ib->in_flight < FLUSHES_IN_FLIGHT && ib->pending) {
        struct flush *f = flush_take(ib);
        if (!f)
            return; /* all held back, or no memory: a finishing flush re-arms */
        ib->in_flight++;
        if (sbh_db_submit(ib->db, work_flush, done_flush, f) < 0)
            done_flush(f, SBH_DB_UNAVAILABLE);
    }
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

void sbh_inbound_set_fanout(struct sbh_inbound *ib, const struct sbh_inbound_fanout *fanout)
{
    ib->fanout = *fanout;
}

void sbh_inbound_on_early_status(struct sbh_inbound *ib, sbh_early_status_fn fn, void *arg)
{
    ib->early_fn = fn;
    ib->early_arg = arg;
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
    ib->order_tail = &ib->order;
    ib->busy = sbh_map_new();
    ib->flush_ev = evtimer_new(base, on_flush, ib);
    if (!ib->flush_ev || !ib->busy) {
        if (ib->flush_ev)
            event_free(ib->flush_ev);
        sbh_map_free(ib->busy);
        free(ib);
        return NULL;
    }
    return ib;
}

/* Answer (not stored) whoever still waits on the items of list, and free them. */
static void items_abandon(struct item *it)
{
    while (it) {
        struct item *next = it->next;
        if (it->done && !it->acked)
            it->done(it->arg, 0);
        item_free(it);
        it = next;
    }
}

void sbh_inbound_free(struct sbh_inbound *ib)
{
    if (!ib)
        return;
    items_abandon(ib->pending);
    /* Flushes the database pool dropped at its end (a shutdown that timed out). */
    while (ib->order) {
        struct flush *f = ib->order;
        ib->order = f->next;
        items_abandon(f->head);
        json_decref(f->early);
        json_decref(f->fan_snapshot);
        json_decref(f->fan_rows);
        free(f);
    }
    event_free(ib->flush_ev);
    sbh_map_free(ib->busy);
    free(ib);
}
