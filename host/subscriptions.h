/*
 * Customer webhooks. Every stored event is matched against the
 * subscriptions (event types, instances); a delivery row is written for each
 * match with the event, then the event is POSTed signed as Standard Webhooks lays down:
 * webhook-id, webhook-timestamp and webhook-signature
 * "v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>", the secret in its
 * "whsec_<base64>" form. A delivery that gets no 2xx is retried after
 * base x 1, 5, 30, 120, 600, 1800, 3600, 7200 and then marked failed.
 */
#ifndef SBH_SUBSCRIPTIONS_H
#define SBH_SUBSCRIPTIONS_H

#include <event2/event.h>
#include <jansson.h>
#include <mysql.h>

#include "db.h"

struct sbh_httpc;
struct sbh_keyring;
struct sbh_subs;

struct sbh_subs_conf {
    unsigned retry_base_ms; /* default 1000 */
    unsigned max_attempts;  /* default 8 */
    unsigned timeout_ms;    /* per delivery, default 10000 */
};

struct sbh_subs *sbh_subs_new(struct event_base *base, struct sbh_db *db, struct sbh_httpc *httpc,
                              const struct sbh_subs_conf *conf);
/* Drop everything in memory (in-flight calls die with the HTTP client). */
void sbh_subs_free(struct sbh_subs *subs);

/* Load subscriptions (opening their secrets) and pending deliveries: start-up. */
int sbh_subs_load(struct sbh_subs *subs, MYSQL *conn, const struct sbh_keyring *ring, char *why,
                  size_t why_len);

/*
 * Delivery rows are written in the transaction that stores their events
 * (see sbh_inbound_fanout), so an acknowledged event never loses its
 * deliveries to a crash. The four steps, in order:
 *
 * sbh_subs_filters (loop thread): the subscriptions now, as an array
 * [{id, events, instances}] that no one changes afterwards (a new
 * reference), or NULL when there are none.
 * sbh_subs_match (any thread, reads only): for each filter the envelope
 * (text: the same, as JSON) matches, appends event id, text and
 * subscription id to rows.
 * sbh_subs_write (a database worker, inside the transaction): writes rows
 * as pending deliveries; the rows of a subscription deleted meanwhile are
 * taken out of rows, and the others' subscriptions locked until the commit.
 * sbh_subs_stored (loop thread, after the commit): delivers them; rows borrowed.
 */
json_t *sbh_subs_filters(void *subs);
void sbh_subs_match(const json_t *filters, const json_t *envelope, const char *text, json_t *rows);
int sbh_subs_write(MYSQL *conn, json_t *rows);
void sbh_subs_stored(void *subs, const json_t *rows);

/* The API created one (row with the opened "secret"), or deleted one. */
void sbh_subs_added(struct sbh_subs *subs, const json_t *row);
void sbh_subs_removed(struct sbh_subs *subs, const char *id);

/* Deliveries not yet recorded as done, for the shutdown drain. */
size_t sbh_subs_unsaved(const struct sbh_subs *subs);

/*
 * The signature header value for id, timestamp and body under secret
 * ("whsec_..."), into out (>= 64 bytes); -1 for a malformed secret.
 */
int sbh_subs_sign(const char *secret, const char *id, long long timestamp, const char *body,
                  size_t body_len, char *out, size_t out_len);

#endif
