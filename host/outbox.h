/*
 * Durable sending. A message is acknowledged only once it is in the
 * messages and outbox tables (written in batches: one transaction for every
 * request that arrived in the same loop turn); then it is sent through its
 * instance's plugin, one lane per instance, retried with exponential backoff
 * and full jitter (never sooner than the provider's retry-after), guarded by
 * a per-instance circuit breaker, and its outcome written back in batches.
 * Rows still in the outbox at start-up are sent again: at least once.
 */
#ifndef SBH_OUTBOX_H
#define SBH_OUTBOX_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>
#include <mysql.h>

#include "db.h"
#include "registry.h"

struct sbh_outbox_conf {
    unsigned max_attempts;        /* then the message is failed */
    unsigned backoff_base_ms;     /* first retry waits up to this, doubling */
    unsigned backoff_max_ms;      /* cap of one wait */
    unsigned breaker_failures;    /* consecutive transient failures that open it */
    unsigned breaker_cooldown_ms; /* open this long before a probe, doubling */
    unsigned max_in_flight;       /* per instance */
    unsigned batch_max;           /* rows per accept transaction */
};

/* The defaults: 8 attempts, 1 s .. 5 min backoff, breaker 5 failures / 30 s. */
void sbh_outbox_conf_default(struct sbh_outbox_conf *conf);

struct sbh_outbox;

struct sbh_outbox *sbh_outbox_new(struct event_base *base, struct sbh_db *db,
                                  struct sbh_registry *reg, const struct sbh_outbox_conf *conf);
void sbh_outbox_free(struct sbh_outbox *ob);

/* Load what the outbox table still holds (start-up, blocking). */
int sbh_outbox_recover(struct sbh_outbox *ob, MYSQL *conn, char *why, size_t why_len);

/*
 * Store a message and queue it. row (stolen): {"id", "instance_id",
 * "recipient", "body" (object), "degraded" (array or null),
 * "idempotency_key" (string or null)}. done runs once on the loop: result
 * SBH_DB_OK with the stored id (an earlier message's when the idempotency
 * key was seen before: duplicate 1), or a database error code.
 */
typedef void (*sbh_accept_fn)(void *arg, int result, const char *id, int duplicate);
void sbh_outbox_accept(struct sbh_outbox *ob, json_t *row, sbh_accept_fn done, void *arg);

/* "queued" or "sending" for a message the sender holds, else NULL. */
const char *sbh_outbox_live_state(const struct sbh_outbox *ob, const char *id);

/* Breaker state and counts of an instance (new reference). */
json_t *sbh_outbox_instance_health(const struct sbh_outbox *ob, const char *instance_id);

/*
 * A status for a provider message id that matched no row (an
 * sbh_early_status_fn): applied to the send that owns the id, now if it was
 * recorded a moment ago, or when its result is written.
 */
void sbh_outbox_early_status(void *ob, const char *instance, const char *provider_msg_id,
                             const char *state);

/* Drop an instance's queued messages from memory (its rows are deleted). */
void sbh_outbox_forget_instance(struct sbh_outbox *ob, const char *instance_id);

/* Messages accepted and not yet finished, and gauges for /metrics. */
size_t sbh_outbox_depth(const struct sbh_outbox *ob);
void sbh_outbox_metrics(const struct sbh_outbox *ob, struct evbuffer *out);

/* Accept or result writes still on their way to the database. */
size_t sbh_outbox_unsaved(const struct sbh_outbox *ob);

#endif
