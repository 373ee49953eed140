/*
 * Prometheus counters kept in the daemon. Counters are identified by metric
 * name and a rendered label set; the exposition is built on demand.
 */
#ifndef SBH_METRICS_H
#define SBH_METRICS_H

#include <event2/buffer.h>

/* Ends a label list: a typed NULL, as variadic functions need. */
#define SBH_END ((const char *)NULL)

/* Add delta to name{labels}. labels is NULL or pairs "k1", "v1", ..., NULL
 * (values are escaped here). help is used the first time the name appears. */
void sbh_metrics_add(const char *name, const char *help, double delta, ...)
    __attribute__((sentinel));

/* switchboard_http_requests_total{route,status} += 1, without rendering labels. */
void sbh_metrics_http(const char *route, int status);

/*
 * Count value into the histogram name{labels,le} with buckets from 5 ms to
 * 10 s (seconds), plus name_sum and name_count.
 */
void sbh_metrics_observe(const char *name, const char *help, double value, ...)
    __attribute__((sentinel));

/* Current value of name{labels} (labels as for sbh_metrics_add); 0 if unknown. */
double sbh_metrics_get(const char *name, ...) __attribute__((sentinel));

/* Append every counter in Prometheus text format. */
void sbh_metrics_render(struct evbuffer *out);

/* Append one gauge line with its HELP and TYPE. */
void sbh_metrics_gauge(struct evbuffer *out, const char *name, const char *help, double value);

/* Forget everything (daemon exit, tests). */
void sbh_metrics_reset(void);

#endif
