/*
 * Customer webhooks. Every stored event is matched against the
 * subscriptions (event types, instances); a delivery row is written for each
 * match, then the event is POSTed signed as Standard Webhooks lays down:
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

/* An sbh_event_fn: deliver a stored event (borrowed) to matching subscriptions. */
void sbh_subs_publish(void *subs, const json_t *envelope);

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
