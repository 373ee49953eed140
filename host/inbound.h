/*
 * Inbound events on their way in: written to webhook_events (a provider's
 * redelivery of an event id it sent before is recognised and dropped) and,
 * for messages, to messages, a batch per transaction with two transactions
 * at most in flight (an event id is never in both); only then is
 * the provider's webhook acknowledged, and the events handed on to
 * subscribers (Server-Sent Events, customer webhooks).
 */
#ifndef SBH_INBOUND_H
#define SBH_INBOUND_H

#include <event2/event.h>
#include <jansson.h>

#include "db.h"

struct sbh_inbound;

/* Called for each stored, new event (envelope borrowed). */
typedef void (*sbh_event_fn)(void *arg, const json_t *envelope);

struct sbh_inbound *sbh_inbound_new(struct event_base *base, struct sbh_db *db);
void sbh_inbound_free(struct sbh_inbound *ib);
/* Add a consumer of stored events (up to 4). */
void sbh_inbound_on_event(struct sbh_inbound *ib, sbh_event_fn fn, void *arg);

/*
 * Rows that belong with the events, written in the same transaction (the
 * customer webhooks' deliveries). snapshot (loop thread, before a batch)
 * returns what match needs, a new reference no one changes afterwards, or
 * NULL for nothing to do; match (a database worker) appends rows for one
 * stored envelope (text: the same as JSON); write (the worker, inside the
 * transaction) stores them, and may take out rows that no longer apply; stored (loop thread, after
 * the commit) gets them, borrowed.
 */
struct sbh_inbound_fanout {
    json_t *(*snapshot)(void *arg);
    void (*match)(const json_t *snapshot, const json_t *envelope, const char *text, json_t *rows);
    int (*write)(MYSQL *conn, json_t *rows);
    void (*stored)(void *arg, const json_t *rows);
    void *arg;
};
void sbh_inbound_set_fanout(struct sbh_inbound *ib, const struct sbh_inbound_fanout *fanout);

/*
 * Store events (stolen: an array of {"type", "payload"}) of one instance.
 * done (may be NULL) runs once on the loop: ok 1 when they are durable
 * (duplicates count as stored), 0 when the database refused. Events stored
 * without a done are retried until the database takes them.
 */
void sbh_inbound_store(struct sbh_inbound *ib, const char *provider, const char *instance,
                       json_t *events, void (*done)(void *arg, int ok), void *arg);

/*
 * A message.status event whose message had no provider id recorded yet (the
 * provider answered the send and reported on it before the result was
 * written): handed to fn so the sender can apply it.
 */
typedef void (*sbh_early_status_fn)(void *arg, const char *instance, const char *message_id,
                                    const char *state);
void sbh_inbound_on_early_status(struct sbh_inbound *ib, sbh_early_status_fn fn, void *arg);

/* Events waiting for the database. */
size_t sbh_inbound_unsaved(const struct sbh_inbound *ib);

#endif
