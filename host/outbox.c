#include "outbox.h"

#include "clock.h"
#include "log.h"
#include "map.h"
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <openssl/rand.h>

#define NOT_RUNNING_RETRY_MS 1000 /* instance stopped: look again, no attempt spent */
#define PERSIST_RETRY_MS 1000
#define ACCEPTS_IN_FLIGHT 2
#define PERSIST_BATCH_MAX 1000

enum where { W_READY, W_DELAYED, W_SENDING, W_RESULT };
enum breaker { B_CLOSED, B_OPEN, B_HALF_OPEN };
static const char *const breaker_names[] = {"closed", "open", "half-open"};

struct lane;

struct msg {
    TAILQ_ENTRY(msg) link;
    struct lane *lane;
    char *id;
    json_t *body;
    unsigned attempts;
    uint64_t due_ms;
    enum where where;
    uint64_t started_ms;
    /* The plugin's answer, copied: its strings live only during done(). */
    int ok, retryable;
    uint32_t retry_after_ms;
    char *provider_msg_id;
    char *error;
};
TAILQ_HEAD(msg_list, msg);

struct lane {
    struct sbh_outbox *ob;
    char *instance_id;
    struct msg_list ready;
    struct msg_list delayed; /* sorted by due_ms */
    unsigned in_flight;
    enum breaker breaker;
    unsigned failures;      /* consecutive transient ones */
    int gone;               /* its instance was deleted: results are dropped */
    TAILQ_ENTRY(lane) dead; /* gone and idle: freed at the end of the results turn */
    uint64_t open_until_ms;
    unsigned cooldown_ms;
    struct event *timer;
    unsigned long sent, failed, retried;
    time_t last_success, last_failure;
    char *last_error;
};

struct accept {
    struct accept *next;
    json_t *row;
    sbh_accept_fn done;
    void *arg;
    int result;
    int duplicate;
    int retries; /* conflicts retried alone (a concurrent batch had the key) */
    char *stored_id;
    int tries; /* conflicts seen: a racing twin with the same key */
};

struct batch {
    struct sbh_outbox *ob;
    struct accept *head;
    json_t *updates; /* result batch: array of update objects */
};

struct sbh_outbox {
    struct event_base *base;
    struct sbh_db *db;
    struct sbh_registry *reg;
    struct sbh_outbox_conf conf;
    struct sbh_map *lanes; /* instance id -> lane */
    struct sbh_map *live;  /* message id -> msg */
    json_t *recent;        /* provider message id -> [message id, time]: just sent */
    json_t *early;         /* provider message id -> [state, time]: status came first */
    struct accept *pending_head, **pending_tail;
    size_t pending_n;
    struct event *flush_ev;
    struct msg_list results;
    TAILQ_HEAD(, lane) dead;
    struct event *results_ev;
    json_t *updates;
    int persisting;
    struct event *persist_ev;
    size_t accepts_in_flight;
};

void sbh_outbox_conf_default(struct sbh_outbox_conf *conf)
{
    *conf = (struct sbh_outbox_conf){.max_attempts = 8,
                                     .backoff_base_ms = 1000,
                                     .backoff_max_ms = 300000,
                                     .breaker_failures = 5,
                                     .breaker_cooldown_ms = 30000,
                                     .max_in_flight = 32,
                                     .batch_max = 256};
}

/* ---- lanes and messages ---- */

static void pump(struct lane *lane);

static void on_lane_timer(evutil_socket_t fd, short what, void *arg)
{
    struct lane *lane = arg;
    uint64_t now = sbh_now_ms();
    struct msg *m;
    while ((m = TAILQ_FIRST(&lane->delayed)) != NULL && m->due_ms <= now) {
        TAILQ_REMOVE(&lane->delayed, m, link);
        m->where = W_READY;
        TAILQ_INSERT_TAIL(&lane->ready, m, link);
    }
    pump(lane);
}

/* Wake the lane for its next due message or the end of its breaker's cooldown. */
static void rearm(struct lane *lane)
{
    uint64_t now = sbh_now_ms(), at = UINT64_MAX;
    struct msg *m = TAILQ_FIRST(&lane->delayed);
    if (m)
        at = m->due_ms;
    if (lane->breaker == B_OPEN && !TAILQ_EMPTY(&lane->ready) && lane->open_until_ms < at)
        at = lane->open_until_ms;
    if (at == UINT64_MAX) {
        event_del(lane->timer);
        return;
    }
    sbh_timer_arm_ms(lane->timer, at > now ? at - now : 0);
}

static struct lane *lane_get(struct sbh_outbox *ob, const char *instance_id)
{
    struct lane *lane = sbh_map_get(ob->lanes, instance_id);
    if (lane)
        return lane;
    lane = calloc(1, sizeof(*lane));
    if (!lane)
        return NULL;
    lane->ob = ob;
    lane->instance_id = strdup(instance_id);
    TAILQ_INIT(&lane->ready);
    TAILQ_INIT(&lane->delayed);
    lane->cooldown_ms = ob->conf.breaker_cooldown_ms;
    lane->timer = evtimer_new(ob->base, on_lane_timer, lane);
    if (!lane->instance_id || !lane->timer || sbh_map_put(ob->lanes, instance_id, lane) < 0) {
        if (lane->timer)
            event_free(lane->timer);
        free(lane->instance_id);
        free(lane);
        return NULL;
    }
    return lane;
}

static void msg_free(struct msg *m)
{
    json_decref(m->body);
    free(m->id);
    free(m->provider_msg_id);
    free(m->error);
    free(m);
}

static void delay(struct msg *m, uint64_t ms)
{
    struct lane *lane = m->lane;
    m->due_ms = sbh_now_ms() + ms;
    m->where = W_DELAYED;
    struct msg *after = TAILQ_LAST(&lane->delayed, msg_list);
    while (after && after->due_ms > m->due_ms)
        after = TAILQ_PREV(after, msg_list, link);
    if (after)
        TAILQ_INSERT_AFTER(&lane->delayed, after, m, link);
    else
        TAILQ_INSERT_HEAD(&lane->delayed, m, link);
}

/* Hand a stored message to its lane; delay_ms 0 means now. */
static void enqueue(struct sbh_outbox *ob, const char *id, const char *instance_id, json_t *body,
                    unsigned attempts, uint64_t delay_ms)
{
    struct lane *lane = lane_get(ob, instance_id);
    struct msg *m = lane ? calloc(1, sizeof(*m)) : NULL;
    if (!m || !(m->id = strdup(id)) || sbh_map_put(ob->live, id, m) < 0) {
        /* Stored, so not lost: a restart's recovery sends it. */
        sbh_log(SB_LOG_ERROR, "outbox", NULL, instance_id, "out of memory queuing %s", id);
        if (m)
            free(m->id);
        free(m);
        json_decref(body);
        return;
    }
    m->lane = lane;
    m->body = body;
    m->attempts = attempts;
    if (delay_ms) {
        delay(m, delay_ms);
        rearm(lane);
        return;
    }
    m->where = W_READY;
    TAILQ_INSERT_TAIL(&lane->ready, m, link);
    pump(lane);
}

/* ---- sending ---- */

static void on_sent(void *arg, const sb_send_result *res)
{
    struct msg *m = arg;
    m->ok = res->ok;
    m->retryable = res->retryable;
    m->retry_after_ms = res->retry_after_ms;
    m->provider_msg_id = res->provider_msg_id ? strdup(res->provider_msg_id) : NULL;
    if (!res->ok) {
        char text[512];
        snprintf(text, sizeof(text), "%s: %s", res->error_code ? res->error_code : "error",
                 res->error_message ? res->error_message : "");
        m->error = strdup(text);
    }
    /* Handled on the next turn: done() may come from inside send(). */
    m->where = W_RESULT;
    TAILQ_INSERT_TAIL(&m->lane->ob->results, m, link);
    event_active(m->lane->ob->results_ev, EV_TIMEOUT, 0);
}

/* May the breaker let one more message through now? */
static int breaker_allows(struct lane *lane)
{
    if (lane->breaker == B_CLOSED)
        return 1;
    if (lane->breaker == B_OPEN) {
        if (sbh_now_ms() < lane->open_until_ms)
            return 0;
        lane->breaker = B_HALF_OPEN;
        sbh_log(SB_LOG_INFO, "outbox", NULL, lane->instance_id,
                "circuit breaker half-open: probing");
    }
    return lane->in_flight == 0; /* half-open: one probe at a time */
}

static void finish(struct msg *m, const char *state);

static void pump(struct lane *lane)
{
    struct sbh_outbox *ob = lane->ob;
    struct msg *m;
    if (lane->gone)
        return;
    while (lane->in_flight < ob->conf.max_in_flight && (m = TAILQ_FIRST(&lane->ready)) &&
           breaker_allows(lane)) {
        TAILQ_REMOVE(&lane->ready, m, link);
        m->where = W_SENDING;
        m->attempts++;
        m->started_ms = sbh_now_ms();
        lane->in_flight++;
        int rc = sbh_registry_send(ob->reg, lane->instance_id, m->body, on_sent, m);
        if (rc == 0)
            continue;
        lane->in_flight--;
        m->attempts--;
        if (rc == SBH_SEND_NOT_RUNNING) {
            delay(m, NOT_RUNNING_RETRY_MS);
            continue;
        }
        free(m->error);
        m->error = strdup(rc == SBH_SEND_UNSUPPORTED ? "unsupported: this provider cannot send"
                                                     : "refused: the plugin refused the message");
        finish(m, "failed");
    }
    rearm(lane);
}

/* ---- results ---- */

static void persist_soon(struct sbh_outbox *ob);

static void queue_update(struct sbh_outbox *ob, const struct msg *m, const char *state,
                         int terminal, uint64_t retry_in_ms)
{
    json_t *u =
        json_pack("{s:s, s:s, s:s?, s:i, s:s?, s:b, s:I}", "id", m->id, "state", state,
                  "provider_message_id", m->provider_msg_id, "attempts", (int)m->attempts, "error",
                  m->error, "terminal", terminal, "retry_in_ms", (json_int_t)retry_in_ms);
    if (u)
        json_array_append_new(ob->updates, u);
    persist_soon(ob);
}

static void count(const struct lane *lane, const char *name, const char *help)
{
    uint32_t caps;
    const char *provider = "unknown";
    sbh_registry_instance_caps(lane->ob->reg, lane->instance_id, &caps, &provider);
    sbh_metrics_add(name, help, 1, "provider", provider, SBH_END);
}

/* The message is done with (sent or failed): record it, forget it. */
#define EARLY_KEEP_S 600

/* Forget what is older than EARLY_KEEP_S in a provider-id map. */
static void prune(json_t *map)
{
    const char *key;
    json_t *v, *tmp;
    time_t now = time(NULL);
    if (json_object_size(map) < 1024)
        return;
    json_object_foreach_safe (map, tmp, key, v)
        if (now - json_integer_value(json_array_get(v, 1)) > EARLY_KEEP_S)
            json_object_del(map, key);
}

void sbh_outbox_early_status(void *arg, const char *instance, const char *pmid, const char *state)
{
    struct sbh_outbox *ob = arg;
    json_t *recent = json_object_get(ob->recent, pmid);
    if (recent) {
        /* The result was written a moment ago, after the status looked: move it now. */
        json_t *u = json_pack("{s:O, s:s, s:b}", "id", json_array_get(recent, 0), "state", state,
                              "status_only", 1);
        if (u)
            json_array_append_new(ob->updates, u);
        persist_soon(ob);
        return;
    }
    prune(ob->early);
    json_object_set_new(ob->early, pmid, json_pack("[s, I]", state, (json_int_t)time(NULL)));
}

static void finish(struct msg *m, const char *state)
{
    struct lane *lane = m->lane;
    struct sbh_outbox *ob = lane->ob;
    int sent = !strcmp(state, "sent");
    json_t *early = m->provider_msg_id ? json_object_get(ob->early, m->provider_msg_id) : NULL;
    if (sent && early) {
        /* The provider reported on it before we wrote it down. */
        state = json_string_value(json_array_get(early, 0));
    } else if (sent && m->provider_msg_id) {
        prune(ob->recent);
        json_object_set_new(ob->recent, m->provider_msg_id,
                            json_pack("[s, I]", m->id, (json_int_t)time(NULL)));
    }
    if (sent) {
        lane->sent++;
        lane->last_success = time(NULL);
        count(lane, "switchboard_messages_sent_total", "Messages a provider accepted");
    } else {
        lane->failed++;
        lane->last_failure = time(NULL);
        free(lane->last_error);
        lane->last_error = m->error ? strdup(m->error) : NULL;
        count(lane, "switchboard_messages_failed_total", "Messages given up on");
        sbh_log(SB_LOG_WARN, "outbox", NULL, lane->instance_id,
                "message %s failed after %u attempts: %s", m->id, m->attempts,
                m->error ? m->error : "");
    }
    queue_update(ob, m, state, 1, 0);
    if (early)
        json_object_del(ob->early, m->provider_msg_id);
    sbh_map_del(ob->live, m->id);
    msg_free(m);
}

/* Full jitter: a random wait in [0, min(cap, base * 2^(attempt-1))]. */
static uint64_t backoff_ms(const struct sbh_outbox_conf *c, unsigned attempt)
{
    uint64_t ceiling = sbh_backoff_ceiling_ms(c->backoff_base_ms, c->backoff_max_ms, attempt);
    uint32_t r = 0;
    RAND_bytes((unsigned char *)&r, sizeof(r));
    return ceiling ? r % (ceiling + 1) : 0;
}

static void breaker_failure(struct lane *lane)
{
    const struct sbh_outbox_conf *c = &lane->ob->conf;
    lane->failures++;
    int reopen = lane->breaker == B_HALF_OPEN;
    if (!reopen && (lane->breaker != B_CLOSED || lane->failures < c->breaker_failures))
        return;
    if (reopen && lane->cooldown_ms < 8 * c->breaker_cooldown_ms)
        lane->cooldown_ms *= 2;
    lane->breaker = B_OPEN;
    lane->open_until_ms = sbh_now_ms() + lane->cooldown_ms;
    sbh_log(SB_LOG_WARN, "outbox", NULL, lane->instance_id,
            "circuit breaker open for %u ms after %u failures", lane->cooldown_ms, lane->failures);
}

static void breaker_success(struct lane *lane)
{
    if (lane->breaker != B_CLOSED)
        sbh_log(SB_LOG_INFO, "outbox", NULL, lane->instance_id, "circuit breaker closed");
    lane->breaker = B_CLOSED;
    lane->failures = 0;
    lane->cooldown_ms = lane->ob->conf.breaker_cooldown_ms;
}

static void handle_result(struct msg *m)
{
    struct lane *lane = m->lane;
    const struct sbh_outbox_conf *c = &lane->ob->conf;
    lane->in_flight--;
    if (lane->gone) {
        /* Its rows went with the instance: nothing to record. */
        sbh_map_del(lane->ob->live, m->id);
        msg_free(m);
        return;
    }
    uint32_t caps;
    const char *provider = "unknown";
    sbh_registry_instance_caps(lane->ob->reg, lane->instance_id, &caps, &provider);
    sbh_metrics_observe("switchboard_send_duration_seconds",
                        "Time from handing a message to its plugin to the plugin's answer",
                        (double)(sbh_now_ms() - m->started_ms) / 1000.0, "provider", provider,
                        SBH_END);
    if (m->ok) {
        breaker_success(lane);
        finish(m, "sent");
        return;
    }
    if (!m->retryable) {
        finish(m, "failed");
        return;
    }
    breaker_failure(lane);
    /* The health shows the last error seen, a transient one too. */
    lane->last_failure = time(NULL);
    free(lane->last_error);
    lane->last_error = m->error ? strdup(m->error) : NULL;
    if (m->attempts >= c->max_attempts) {
        finish(m, "failed");
        return;
    }
    uint64_t wait = backoff_ms(c, m->attempts);
    if (m->retry_after_ms > wait)
        wait = m->retry_after_ms;
    lane->retried++;
    count(lane, "switchboard_messages_retried_total", "Send attempts that will be retried");
    queue_update(lane->ob, m, "queued", 0, wait);
    /* The lane's health shows the latest error, transient ones too. */
    free(lane->last_error);
    lane->last_error = m->error ? strdup(m->error) : NULL;
    free(m->error);
    m->error = NULL;
    free(m->provider_msg_id);
    m->provider_msg_id = NULL;
    delay(m, wait);
}

static void lane_free(struct lane *lane);

static void on_results(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_outbox *ob = arg;
    struct msg *m;
    struct msg_list done = TAILQ_HEAD_INITIALIZER(done);
    TAILQ_CONCAT(&done, &ob->results, link);
    struct lane *touched[64];
    size_t n_touched = 0;
    while ((m = TAILQ_FIRST(&done)) != NULL) {
        TAILQ_REMOVE(&done, m, link);
        struct lane *lane = m->lane;
        handle_result(m);
        if (n_touched < 64 && (n_touched == 0 || touched[n_touched - 1] != lane))
            touched[n_touched++] = lane;
        else if (n_touched == 64)
            pump(lane);
    }
    for (size_t i = 0; i < n_touched; i++)
        pump(touched[i]);
    struct lane *lane, *next;
    for (lane = TAILQ_FIRST(&ob->dead); lane; lane = next) {
        next = TAILQ_NEXT(lane, dead);
        if (lane->in_flight)
            continue;
        TAILQ_REMOVE(&ob->dead, lane, dead);
        lane_free(lane);
    }
}

/* ---- writing results back ---- */

static int write_update(MYSQL *conn, const json_t *u)
{
    const char *id = json_string_value(json_object_get(u, "id"));
    int rc = sbh_db_exec(conn, NULL,
                         "UPDATE messages SET state = ?, provider_message_id = "
                         "COALESCE(?, provider_message_id), attempts = ?, last_error = ?, "
                         "updated_at = UTC_TIMESTAMP(6) WHERE id = ?",
                         "ssiss", json_string_value(json_object_get(u, "state")),
                         json_string_value(json_object_get(u, "provider_message_id")),
                         json_integer_value(json_object_get(u, "attempts")),
                         json_string_value(json_object_get(u, "error")), id);
    if (rc != SBH_DB_OK)
        return rc;
    if (json_is_true(json_object_get(u, "terminal")))
        return sbh_db_exec(conn, NULL, "DELETE FROM outbox WHERE message_id = ?", "s", id);
    return sbh_db_exec(conn, NULL,
                       "UPDATE outbox SET attempts = ?, due_at = DATE_ADD(UTC_TIMESTAMP(6), "
                       "INTERVAL ? MICROSECOND) WHERE message_id = ?",
                       "iis", json_integer_value(json_object_get(u, "attempts")),
                       json_integer_value(json_object_get(u, "retry_in_ms")) * 1000, id);
}

/* Finished messages, many at once: one bulk UPDATE and one bulk DELETE. */
static int write_finished(MYSQL *conn, const json_t *list)
{
    static const char *const keys[] = {"state", "provider_message_id", "attempts", "error", "id"};
    size_t n = json_array_size(list), i;
    json_t *values = json_array(), *ids = json_array(), *u;
    json_array_foreach (list, i, u) {
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            json_t *v = json_object_get(u, keys[k]);
            json_array_append(values, v ? v : json_null());
        }
        json_array_append(ids, json_object_get(u, "id"));
    }
    int rc = sbh_db_exec_rows(conn, NULL,
                              "UPDATE messages SET state = ?, provider_message_id = ?, attempts = "
                              "?, last_error = ?, updated_at = UTC_TIMESTAMP(6) WHERE id = ?",
                              n, values);
    if (rc == SBH_DB_OK)
        rc = sbh_db_exec_rows(conn, NULL, "DELETE FROM outbox WHERE message_id = ?", n, ids);
    json_decref(values);
    json_decref(ids);
    return rc;
}

/* A provider's status for a message whose result is already written. */
static int write_status(MYSQL *conn, const json_t *u)
{
    const char *state = json_string_value(json_object_get(u, "state"));
    if (!strcmp(state, "failed"))
        return sbh_db_exec(conn, NULL,
                           "UPDATE messages SET state = 'failed' WHERE id = ? AND state = 'sent'",
                           "s", json_string_value(json_object_get(u, "id")));
    return sbh_db_exec(conn, NULL,
                       "UPDATE messages SET state = ?, updated_at = UTC_TIMESTAMP(6) WHERE id = ? "
                       "AND FIELD(state, 'sent', 'delivered', 'read') < FIELD(?, 'sent', "
                       "'delivered', 'read')",
                       "sss", state, json_string_value(json_object_get(u, "id")), state);
}

static int write_updates(MYSQL *conn, void *arg)
{
    struct batch *b = arg;
    size_t i;
    json_t *u, *finished = json_array();
    int rc = SBH_DB_OK;
    json_array_foreach (b->updates, i, u) {
        if (json_is_true(json_object_get(u, "status_only")))
            continue; /* after the results: they may be in this very batch */
        if (json_is_true(json_object_get(u, "terminal"))) {
            /* A message finished twice in one batch cannot happen: ids are unique. */
            json_array_append(finished, u);
            continue;
        }
        rc = write_update(conn, u); /* retries: rarer, one by one */
        if (rc != SBH_DB_OK)
            break;
    }
    if (rc == SBH_DB_OK)
        rc = write_finished(conn, finished);
    json_array_foreach (b->updates, i, u)
        if (rc == SBH_DB_OK && json_is_true(json_object_get(u, "status_only")))
            rc = write_status(conn, u);
    json_decref(finished);
    return rc;
}

static int work_updates(MYSQL *conn, void *arg)
{
    return sbh_db_transaction(conn, write_updates, arg);
}

static void done_updates(void *arg, int rc)
{
    struct batch *b = arg;
    struct sbh_outbox *ob = b->ob;
    ob->persisting = 0;
    if (rc != SBH_DB_OK) {
        /* Keep them, oldest first, and try again: a restart would resend, not lose. */
        json_array_extend(b->updates, ob->updates);
        json_decref(ob->updates);
        ob->updates = json_incref(b->updates);
        sbh_timer_arm_ms(ob->persist_ev, PERSIST_RETRY_MS);
    } else if (json_array_size(ob->updates)) {
        persist_soon(ob);
    }
    json_decref(b->updates);
    free(b);
}

static void on_persist(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_outbox *ob = arg;
    if (ob->persisting || json_array_size(ob->updates) == 0)
        return;
    struct batch *b = calloc(1, sizeof(*b));
    if (!b)
        return;
    b->ob = ob;
    b->updates = ob->updates;
    ob->updates = json_array();
    /* Bounded statements: the rest waits for the next round. */
    while (json_array_size(b->updates) > PERSIST_BATCH_MAX) {
        size_t last = json_array_size(b->updates) - 1;
        json_array_insert(ob->updates, 0, json_array_get(b->updates, last));
        json_array_remove(b->updates, last);
    }
    ob->persisting = 1;
    if (sbh_db_submit(ob->db, work_updates, done_updates, b) < 0)
        done_updates(b, SBH_DB_UNAVAILABLE);
}

static void persist_soon(struct sbh_outbox *ob)
{
    if (!ob->persisting && !evtimer_pending(ob->persist_ev, NULL))
        sbh_timer_arm_ms(ob->persist_ev, 0);
}

/* ---- accepting ---- */

static json_t *row_values(const json_t *row)
{
    char *body = json_dumps(json_object_get(row, "body"), JSON_COMPACT);
    json_t *degraded = json_object_get(row, "degraded");
    char *deg = json_is_array(degraded) ? json_dumps(degraded, JSON_COMPACT) : NULL;
    json_t *v =
        json_pack("[O, O, O, s?, s?, O]", json_object_get(row, "id"),
                  json_object_get(row, "instance_id"), json_object_get(row, "recipient"), body, deg,
                  json_object_get(row, "idempotency_key") ? json_object_get(row, "idempotency_key")
                                                          : json_null());
    free(body);
    free(deg);
    return v;
}

#define MSG_INSERT                                                                                 \
    "INSERT INTO messages (id, instance_id, direction, state, recipient, body, degraded, "         \
    "idempotency_key, created_at, updated_at) VALUES "
#define MSG_ROW "(?, ?, 'out', 'queued', ?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
#define OUTBOX_INSERT "INSERT INTO outbox (message_id, instance_id, due_at) VALUES "
#define OUTBOX_ROW "(?, ?, UTC_TIMESTAMP(6))"

static int keyed(const struct accept *a)
{
    return json_is_string(json_object_get(a->row, "idempotency_key"));
}

/* The rows without idempotency keys: one bulk INSERT into each table. */
static int insert_plain(MYSQL *conn, const struct accept *head)
{
    size_t n = 0;
    json_t *mv = json_array(), *ov = json_array();
    for (const struct accept *a = head; a; a = a->next) {
        if (keyed(a))
            continue;
        json_t *values = row_values(a->row);
        json_array_extend(mv, values);
        json_decref(values);
        json_array_append(ov, json_object_get(a->row, "id"));
        json_array_append(ov, json_object_get(a->row, "instance_id"));
        n++;
    }
    int rc = sbh_db_exec_rows(conn, NULL, MSG_INSERT MSG_ROW, n, mv);
    if (rc == SBH_DB_OK)
        rc = sbh_db_exec_rows(conn, NULL, OUTBOX_INSERT OUTBOX_ROW, n, ov);
    json_decref(mv);
    json_decref(ov);
    return rc;
}

/* With an idempotency key: an earlier message with the key wins. */
static int insert_keyed(MYSQL *conn, struct accept *a)
{
    json_t *rows = NULL;
    const json_t *row = a->row;
    int rc = sbh_db_query(conn, &rows,
                          "SELECT id FROM messages WHERE instance_id = ? AND idempotency_key = ?",
                          "ss", json_string_value(json_object_get(row, "instance_id")),
                          json_string_value(json_object_get(row, "idempotency_key")));
    if (rc == SBH_DB_OK && json_array_size(rows)) {
        a->duplicate = 1;
        a->stored_id = strdup(json_string_value(json_object_get(json_array_get(rows, 0), "id")));
        json_decref(rows);
        return SBH_DB_OK;
    }
    json_decref(rows);
    if (rc != SBH_DB_OK)
        return rc;
    json_t *mv = row_values(row);
    json_t *ov =
        json_pack("[O, O]", json_object_get(row, "id"), json_object_get(row, "instance_id"));
    rc = sbh_db_exec_json(conn, NULL, MSG_INSERT MSG_ROW, mv);
    if (rc == SBH_DB_OK)
        rc = sbh_db_exec_json(conn, NULL, OUTBOX_INSERT OUTBOX_ROW, ov);
    json_decref(mv);
    json_decref(ov);
    return rc;
}

static int write_accepts(MYSQL *conn, void *arg)
{
    struct batch *b = arg;
    int rc = SBH_DB_OK;
    /* Keyed rows one by one (they may be duplicates), the rest in one statement. */
    for (struct accept *a = b->head; a && rc == SBH_DB_OK; a = a->next)
        if (keyed(a))
            rc = insert_keyed(conn, a);
    return rc == SBH_DB_OK ? insert_plain(conn, b->head) : rc;
}

static int work_accepts(MYSQL *conn, void *arg)
{
    struct batch *b = arg;
    int rc = sbh_db_transaction(conn, write_accepts, arg);
    if (rc == SBH_DB_CONFLICT) {
        /* Two requests with one key raced inside this batch: redo them singly. */
        for (struct accept *a = b->head; a; a = a->next) {
            free(a->stored_id);
            a->stored_id = NULL;
            a->duplicate = 0;
        }
        return SBH_DB_CONFLICT;
    }
    return rc;
}

static void accept_one(struct sbh_outbox *ob, struct accept *a);

static void done_accepts(void *arg, int rc)
{
    struct batch *b = arg;
    struct sbh_outbox *ob = b->ob;
    struct accept *a = b->head;
    ob->accepts_in_flight--;
    if (ob->pending_head)
        sbh_timer_arm_ms(ob->flush_ev, 0);
    if (rc == SBH_DB_CONFLICT && a && !a->next && a->tries++ < 3) {
        /* Its twin committed first: run it again to find that message. */
        free(b);
        accept_one(ob, a);
        return;
    }
    if (rc == SBH_DB_CONFLICT && a && a->next) {
        /* Retry each on its own: only a real duplicate stays a duplicate. */
        while (a) {
            struct accept *next = a->next;
            a->next = NULL;
            accept_one(ob, a);
            a = next;
        }
        free(b);
        return;
    }
    if (rc == SBH_DB_CONFLICT && a && keyed(a) && a->retries < 3) {
        /* Alone and still a conflict: a batch on the other connection committed the
         * same key meanwhile. Once more: its SELECT now finds that message. */
        a->retries++;
        accept_one(ob, a);
        free(b);
        return;
    }
    while (a) {
        struct accept *next = a->next;
        const char *id =
            a->stored_id ? a->stored_id : json_string_value(json_object_get(a->row, "id"));
        if (rc == SBH_DB_OK && !a->duplicate)
            enqueue(ob, id, json_string_value(json_object_get(a->row, "instance_id")),
                    json_incref(json_object_get(a->row, "body")), 0, 0);
        a->done(a->arg, rc, id, a->duplicate);
        json_decref(a->row);
        free(a->stored_id);
        free(a);
        a = next;
    }
    free(b);
}

static void submit_batch(struct sbh_outbox *ob, struct accept *head)
{
    struct batch *b = calloc(1, sizeof(*b));
    if (!b) {
        done_accepts(&(struct batch){.ob = ob, .head = head}, SBH_DB_ERROR);
        return;
    }
    b->ob = ob;
    b->head = head;
    ob->accepts_in_flight++;
    if (sbh_db_submit(ob->db, work_accepts, done_accepts, b) < 0)
        done_accepts(b, SBH_DB_UNAVAILABLE);
}

static void accept_one(struct sbh_outbox *ob, struct accept *a)
{
    submit_batch(ob, a);
}

/*
 * At most ACCEPTS_IN_FLIGHT transactions at once: under load the next batch
 * fills while those commit, so one commit (and one fsync) serves many.
 */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_outbox *ob = arg;
    while (ob->pending_head && ob->accepts_in_flight < ACCEPTS_IN_FLIGHT) {
        struct accept *head = ob->pending_head, *a = head;
        size_t n = 1;
        while (a->next && n < ob->conf.batch_max) {
            a = a->next;
            n++;
        }
        ob->pending_head = a->next;
        a->next = NULL;
        ob->pending_n -= n;
        submit_batch(ob, head);
    }
    if (!ob->pending_head) {
        ob->pending_tail = &ob->pending_head;
        ob->pending_n = 0;
    }
}

void sbh_outbox_accept(struct sbh_outbox *ob, json_t *row, sbh_accept_fn done, void *arg)
{
    struct accept *a = calloc(1, sizeof(*a));
    if (!a) {
        json_decref(row);
        done(arg, SBH_DB_ERROR, NULL, 0);
        return;
    }
    a->row = row;
    a->done = done;
    a->arg = arg;
    *ob->pending_tail = a;
    ob->pending_tail = &a->next;
    /* Every request that arrives in this loop turn joins one transaction. */
    if (++ob->pending_n == 1 && ob->accepts_in_flight < ACCEPTS_IN_FLIGHT)
        sbh_timer_arm_ms(ob->flush_ev, 0);
}

/* ---- recovery, views, life cycle ---- */

int sbh_outbox_recover(struct sbh_outbox *ob, MYSQL *conn, char *why, size_t why_len)
{
    json_t *rows = NULL, *row;
    size_t i;
    if (sbh_db_query(conn, &rows,
                     "SELECT o.message_id, o.instance_id, o.attempts, GREATEST(0, "
                     "TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), o.due_at)) AS delay_us, "
                     "m.body FROM outbox o JOIN messages m ON m.id = o.message_id "
                     "ORDER BY m.created_at",
                     "") != SBH_DB_OK) {
        snprintf(why, why_len, "cannot read the outbox: %s", mysql_error(conn));
        return -1;
    }
    json_array_foreach (rows, i, row) {
        json_t *body = json_loads(json_string_value(json_object_get(row, "body")), 0, NULL);
        if (!body)
            continue;
        enqueue(ob, json_string_value(json_object_get(row, "message_id")),
                json_string_value(json_object_get(row, "instance_id")), body,
                (unsigned)json_integer_value(json_object_get(row, "attempts")),
                (uint64_t)json_integer_value(json_object_get(row, "delay_us")) / 1000);
    }
    if (json_array_size(rows))
        sbh_log(SB_LOG_INFO, "outbox", NULL, NULL, "%zu queued messages recovered",
                json_array_size(rows));
    json_decref(rows);
    return 0;
}

const char *sbh_outbox_live_state(const struct sbh_outbox *ob, const char *id)
{
    const struct msg *m = sbh_map_get(ob->live, id);
    if (!m)
        return NULL;
    return m->where == W_SENDING || m->where == W_RESULT ? "sending" : "queued";
}

static size_t list_len(const struct msg_list *l)
{
    size_t n = 0;
    const struct msg *m;
    TAILQ_FOREACH (m, l, link)
        n++;
    return n;
}

json_t *sbh_outbox_instance_health(const struct sbh_outbox *ob, const char *instance_id)
{
    const struct lane *lane = sbh_map_get(ob->lanes, instance_id);
    if (!lane)
        return json_pack("{s:s, s:i, s:i, s:i}", "breaker", "closed", "queued", 0, "sent", 0,
                         "failed", 0);
    json_t *h =
        json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "breaker", breaker_names[lane->breaker],
                  "queued", (json_int_t)(list_len(&lane->ready) + list_len(&lane->delayed)),
                  "in_flight", (json_int_t)lane->in_flight, "sent", (json_int_t)lane->sent,
                  "failed", (json_int_t)lane->failed, "retried", (json_int_t)lane->retried,
                  "consecutive_failures", (json_int_t)lane->failures);
    if (lane->last_success)
        json_object_set_new(h, "last_success", json_integer(lane->last_success));
    if (lane->last_failure)
        json_object_set_new(h, "last_failure", json_integer(lane->last_failure));
    if (lane->last_error)
        json_object_set_new(h, "last_error", json_string(lane->last_error));
    return h;
}

static void lane_free(struct lane *lane)
{
    struct msg *m;
    while ((m = TAILQ_FIRST(&lane->ready)) != NULL) {
        TAILQ_REMOVE(&lane->ready, m, link);
        sbh_map_del(lane->ob->live, m->id);
        msg_free(m);
    }
    while ((m = TAILQ_FIRST(&lane->delayed)) != NULL) {
        TAILQ_REMOVE(&lane->delayed, m, link);
        sbh_map_del(lane->ob->live, m->id);
        msg_free(m);
    }
    event_free(lane->timer);
    free(lane->last_error);
    free(lane->instance_id);
    free(lane);
}

void sbh_outbox_forget_instance(struct sbh_outbox *ob, const char *instance_id)
{
    struct lane *lane = sbh_map_get(ob->lanes, instance_id);
    if (!lane)
        return;
    sbh_map_del(ob->lanes, instance_id);
    if (lane->in_flight == 0) {
        lane_free(lane);
        return;
    }
    /* Sends in flight finish first and are dropped; the waiting ones go now. */
    lane->gone = 1;
    TAILQ_INSERT_TAIL(&ob->dead, lane, dead);
    struct msg *m;
    while ((m = TAILQ_FIRST(&lane->ready)) != NULL) {
        TAILQ_REMOVE(&lane->ready, m, link);
        sbh_map_del(ob->live, m->id);
        msg_free(m);
    }
    while ((m = TAILQ_FIRST(&lane->delayed)) != NULL) {
        TAILQ_REMOVE(&lane->delayed, m, link);
        sbh_map_del(ob->live, m->id);
        msg_free(m);
    }
    event_del(lane->timer);
}

size_t sbh_outbox_depth(const struct sbh_outbox *ob)
{
    return sbh_map_size(ob->live);
}

struct gauge_ctx {
    struct evbuffer *out;
};

static void breaker_line(const char *id, void *value, void *arg)
{
    const struct lane *lane = value;
    struct gauge_ctx *g = arg;
    uint32_t caps;
    const char *provider = "unknown";
    sbh_registry_instance_caps(lane->ob->reg, id, &caps, &provider);
    evbuffer_add_printf(g->out, "switchboard_breaker_state{provider=\"%s\",instance=\"%s\"} %d\n",
                        provider, id, (int)lane->breaker);
}

void sbh_outbox_metrics(const struct sbh_outbox *ob, struct evbuffer *out)
{
    struct gauge_ctx g = {out};
    sbh_metrics_gauge(out, "switchboard_outbox_depth", "Messages accepted and not yet finished",
                      (double)sbh_outbox_depth(ob));
    evbuffer_add_printf(out,
                        "# HELP switchboard_breaker_state Circuit breaker per instance: "
                        "0 closed, 1 open, 2 half-open\n# TYPE switchboard_breaker_state gauge\n");
    sbh_map_each(ob->lanes, breaker_line, &g);
}

size_t sbh_outbox_unsaved(const struct sbh_outbox *ob)
{
    return ob->pending_n + ob->accepts_in_flight + json_array_size(ob->updates) + ob->persisting;
}

struct sbh_outbox *sbh_outbox_new(struct event_base *base, struct sbh_db *db,
                                  struct sbh_registry *reg, const struct sbh_outbox_conf *conf)
{
    struct sbh_outbox *ob = calloc(1, sizeof(*ob));
    if (!ob)
        return NULL;
    ob->base = base;
    ob->db = db;
    ob->reg = reg;
    ob->conf = *conf;
    ob->lanes = sbh_map_new();
    ob->live = sbh_map_new();
    ob->pending_tail = &ob->pending_head;
    TAILQ_INIT(&ob->results);
    TAILQ_INIT(&ob->dead);
    ob->flush_ev = evtimer_new(base, on_flush, ob);
    ob->results_ev = event_new(base, -1, 0, on_results, ob);
    ob->persist_ev = evtimer_new(base, on_persist, ob);
    ob->updates = json_array();
    ob->recent = json_object();
    ob->early = json_object();
    if (!ob->lanes || !ob->live || !ob->flush_ev || !ob->results_ev || !ob->persist_ev ||
        !ob->updates) {
        sbh_outbox_free(ob);
        return NULL;
    }
    return ob;
}

static void lane_free_cb(const char *key, void *value, void *arg)
{
    lane_free(value);
}

void sbh_outbox_free(struct sbh_outbox *ob)
{
    if (!ob)
        return;
    struct msg *m;
    while ((m = TAILQ_FIRST(&ob->results)) != NULL) {
        TAILQ_REMOVE(&ob->results, m, link);
        msg_free(m);
    }
    if (ob->lanes)
        sbh_map_each(ob->lanes, lane_free_cb, NULL);
    struct lane *lane;
    while ((lane = TAILQ_FIRST(&ob->dead)) != NULL) {
        TAILQ_REMOVE(&ob->dead, lane, dead);
        lane_free(lane);
    }
    sbh_map_free(ob->lanes);
    sbh_map_free(ob->live);
    struct accept *a = ob->pending_head;
    while (a) {
        struct accept *next = a->next;
        json_decref(a->row);
        free(a);
        a = next;
    }
    if (ob->flush_ev)
        event_free(ob->flush_ev);
    if (ob->results_ev)
        event_free(ob->results_ev);
    if (ob->persist_ev)
        event_free(ob->persist_ev);
    json_decref(ob->updates);
    json_decref(ob->recent);
    json_decref(ob->early);
    free(ob);
}
