#include "ratelimit.h"

#include "map.h"

#include <math.h>
#include <stdlib.h>
#include <time.h>

#define IDLE_FORGET_S 60.0

struct bucket {
    double tokens;
    double last;
};

struct sbh_ratelimit {
    struct sbh_map *buckets;
    unsigned rate, burst;
    double last_sweep;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct sbh_ratelimit *sbh_ratelimit_new(unsigned rate, unsigned burst)
{
    struct sbh_ratelimit *rl = calloc(1, sizeof(*rl));
    if (!rl || !(rl->buckets = sbh_map_new())) {
        free(rl);
        return NULL;
    }
    sbh_ratelimit_set(rl, rate, burst);
    rl->last_sweep = now_s();
    return rl;
}

void sbh_ratelimit_set(struct sbh_ratelimit *rl, unsigned rate, unsigned burst)
{
    rl->rate = rate;
    rl->burst = burst ? burst : rate;
}

static void free_bucket(const char *key, void *value, void *arg)
{
    free(value);
}

void sbh_ratelimit_free(struct sbh_ratelimit *rl)
{
    if (!rl)
        return;
    sbh_map_each(rl->buckets, free_bucket, NULL);
    sbh_map_free(rl->buckets);
    free(rl);
}

struct sweep {
    double now;
    const char **keys;
    size_t n, cap;
};

static void collect_idle(const char *key, void *value, void *arg)
{
    const struct bucket *b = value;
    struct sweep *s = arg;
    if (s->now - b->last < IDLE_FORGET_S || s->n == s->cap)
        return;
    s->keys[s->n++] = key;
}

/* Forget buckets idle for a minute, so a scan of many addresses does not pile up. */
static void sweep(struct sbh_ratelimit *rl, double now)
{
    struct sweep s = {now, NULL, 0, 1024};
    if (now - rl->last_sweep < IDLE_FORGET_S)
        return;
    rl->last_sweep = now;
    s.keys = calloc(s.cap, sizeof(*s.keys));
    if (!s.keys)
        return;
    sbh_map_each(rl->buckets, collect_idle, &s);
    for (size_t i = 0; i < s.n; i++)
        free(sbh_map_del(rl->buckets, s.keys[i]));
    free(s.keys);
}

int sbh_ratelimit_take(struct sbh_ratelimit *rl, const char *key, unsigned *retry_after_s)
{
    if (!rl || rl->rate == 0)
        return 1;
    double now = now_s();
    sweep(rl, now);
    struct bucket *b = sbh_map_get(rl->buckets, key);
    if (!b) {
        b = calloc(1, sizeof(*b));
        if (!b || sbh_map_put(rl->buckets, key, b) < 0) {
            free(b);
            return 1; /* out of memory is not the client's fault */
        }
        b->tokens = rl->burst;
        b->last = now;
    }
    b->tokens += (now - b->last) * rl->rate;
    if (b->tokens > rl->burst)
        b->tokens = rl->burst;
    b->last = now;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 1;
    }
    *retry_after_s = (unsigned)ceil((1.0 - b->tokens) / rl->rate);
    if (*retry_after_s == 0)
        *retry_after_s = 1;
    return 0;
}
