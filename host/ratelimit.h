/*
 * Token buckets by key (an API key id, a client address): `rate` tokens a
 * second up to `burst`. One limiter serves the API and the webhook routes.
 */
#ifndef SBH_RATELIMIT_H
#define SBH_RATELIMIT_H

struct sbh_ratelimit;

/* rate 0 means unlimited. burst 0 means rate (one second's worth). */
struct sbh_ratelimit *sbh_ratelimit_new(unsigned rate, unsigned burst);
void sbh_ratelimit_free(struct sbh_ratelimit *rl);
/* Change the rate and burst (config reload); buckets keep their tokens. */
void sbh_ratelimit_set(struct sbh_ratelimit *rl, unsigned rate, unsigned burst);

/* 1 when key may go now (a token is taken); else 0 with the seconds to wait. */
int sbh_ratelimit_take(struct sbh_ratelimit *rl, const char *key, unsigned *retry_after_s);

#endif
