/* Monotonic milliseconds and millisecond timers, for the loop's schedulers. */
#ifndef SBH_CLOCK_H
#define SBH_CLOCK_H

#include <stdint.h>
#include <time.h>

#include <event2/event.h>

/* Milliseconds of the monotonic clock (never goes back). */
static inline uint64_t sbh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* (Re)arm a timer event to fire in ms milliseconds. */
static inline void sbh_timer_arm_ms(struct event *ev, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    event_add(ev, &tv);
}

/* Exponential backoff's ceiling: base doubled per attempt after the first,
 * capped at max (attempt 0 or 1 gives base). */
static inline uint64_t sbh_backoff_ceiling_ms(uint64_t base, uint64_t max, unsigned attempt)
{
    uint64_t ms = base;
    for (unsigned i = 1; i < attempt && ms < max; i++)
        ms *= 2;
    return ms > max ? max : ms;
}

#endif
