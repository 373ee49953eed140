#include "metrics.h"

#include "map.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct counter {
    char *name;
    char *labels; /* rendered: k="v",k2="v2" */
    double value;
};

struct family {
    char *name;
    char *help;
    int histogram; /* series are name_bucket{le}, name_sum, name_count */
};

static struct counter *counters;
static size_t n_counters;
/* "name\x1flabels" -> index + 1 into counters: every send and event bumps
 * a few series, so finding one must not walk them all. */
static struct sbh_map *index_by_key;
static struct family *families;
static size_t n_families;

static void append_escaped(char *dst, size_t cap, size_t *off, const char *s)
{
    for (; *s && *off + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') {
            dst[(*off)++] = '\\';
            dst[(*off)++] = *s;
        } else if (*s == '\n') {
            dst[(*off)++] = '\\';
            dst[(*off)++] = 'n';
        } else {
            dst[(*off)++] = *s;
        }
    }
    dst[*off] = '\0';
}

static void render_labels(char *dst, size_t cap, va_list ap)
{
    size_t off = 0;
    const char *k;
    dst[0] = '\0';
    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        off += (size_t)snprintf(dst + off, cap - off, "%s%s=\"", off ? "," : "", k);
        if (off >= cap)
            break;
        append_escaped(dst, cap, &off, v ? v : "");
        if (off + 2 < cap) {
            dst[off++] = '"';
            dst[off] = '\0';
        }
    }
}

/* The map key of name{labels}; 0, or -1 when it does not fit. */
static int series_key(char *key, size_t cap, const char *name, const char *labels)
{
    size_t n = strlen(name), l = strlen(labels);
    if (n + 1 + l + 1 > cap)
        return -1;
    memcpy(key, name, n);
    key[n] = '\x1f';
    memcpy(key + n + 1, labels, l + 1);
    return 0;
}

static struct counter *find(const char *name, const char *labels)
{
    char key[1024];
    if (!index_by_key || series_key(key, sizeof(key), name, labels) < 0)
        return NULL;
    uintptr_t at = (uintptr_t)sbh_map_get(index_by_key, key);
    return at ? &counters[at - 1] : NULL;
}

static void remember_family(const char *name, const char *help, int histogram)
{
    for (size_t i = 0; i < n_families; i++)
        if (!strcmp(families[i].name, name))
            return;
    struct family *grown = realloc(families, (n_families + 1) * sizeof(*grown));
    if (!grown)
        return;
    families = grown;
    families[n_families].name = strdup(name);
    families[n_families].help = strdup(help ? help : name);
    families[n_families].histogram = histogram;
    n_families++;
}

static struct counter *series_get(const char *name, const char *labels, const char *family,
                                  const char *help, int histogram);

/* The counter name{labels}, created at 0 when new; NULL when out of memory. */
static struct counter *counter_get(const char *name, const char *help, const char *labels)
{
    return series_get(name, labels, name, help, 0);
}

static struct counter *series_get(const char *name, const char *labels, const char *family,
                                  const char *help, int histogram)
{
    struct counter *c = find(name, labels);
    if (c)
        return c;
    char key[1024];
    if (series_key(key, sizeof(key), name, labels) < 0)
        return NULL;
    if (!index_by_key && !(index_by_key = sbh_map_new()))
        return NULL;
    struct counter *grown = realloc(counters, (n_counters + 1) * sizeof(*grown));
    if (!grown)
        return NULL;
    counters = grown;
    if (sbh_map_put(index_by_key, key, (void *)(uintptr_t)(n_counters + 1)) < 0)
        return NULL;
    c = &counters[n_counters++];
    c->name = strdup(name);
    c->labels = strdup(labels);
    c->value = 0;
    remember_family(family, help, histogram);
    return c;
}

static void labels_of(char *dst, size_t cap, ...)
{
    va_list ap;
    va_start(ap, cap);
    render_labels(dst, cap, ap);
    va_end(ap);
}

void sbh_metrics_add(const char *name, const char *help, double delta, ...)
{
    char labels[512];
    va_list ap;
    va_start(ap, delta);
    render_labels(labels, sizeof(labels), ap);
    va_end(ap);
    struct counter *c = counter_get(name, help, labels);
    if (c)
        c->value += delta;
}

double sbh_metrics_get(const char *name, ...)
{
    char labels[512];
    va_list ap;
    va_start(ap, name);
    render_labels(labels, sizeof(labels), ap);
    va_end(ap);
    struct counter *c = find(name, labels);
    return c ? c->value : 0;
}

void sbh_metrics_gauge(struct evbuffer *out, const char *name, const char *help, double value)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %.3f\n", name, help, name, name,
                        value);
}

/* 1 when counter c belongs to family f (a histogram's three series do). */
static int in_family(const struct counter *c, const struct family *f)
{
    size_t n = strlen(f->name);
    if (!f->histogram)
        return !strcmp(c->name, f->name);
    return !strncmp(c->name, f->name, n) &&
           (!strcmp(c->name + n, "_bucket") || !strcmp(c->name + n, "_sum") ||
            !strcmp(c->name + n, "_count"));
}

static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const char *const bucket_le[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                        "0.5",   "1",    "2.5",   "5",    "10",  "+Inf"};

void sbh_metrics_observe(const char *name, const char *help, double value, ...)
{
    char labels[480], with_le[512], series[160];
    va_list ap;
    va_start(ap, value);
    render_labels(labels, sizeof(labels), ap);
    va_end(ap);
    for (size_t i = 0; i <= sizeof(buckets) / sizeof(buckets[0]); i++) {
        int inf = i == sizeof(buckets) / sizeof(buckets[0]);
        if (snprintf(with_le, sizeof(with_le), "%s%sle=\"%s\"", labels, labels[0] ? "," : "",
                     bucket_le[i]) >= (int)sizeof(with_le))
            return;
        snprintf(series, sizeof(series), "%s_bucket", name);
        struct counter *c = series_get(series, with_le, name, help, 1);
        if (c && (inf || value <= buckets[i]))
            c->value += 1;
    }
    snprintf(series, sizeof(series), "%s_sum", name);
    struct counter *sum = series_get(series, labels, name, help, 1);
    if (sum)
        sum->value += value;
    snprintf(series, sizeof(series), "%s_count", name);
    struct counter *count = series_get(series, labels, name, help, 1);
    if (count)
        count->value += 1;
}

void sbh_metrics_render(struct evbuffer *out)
{
    for (size_t f = 0; f < n_families; f++) {
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", families[f].name, families[f].help,
                            families[f].name, families[f].histogram ? "histogram" : "counter");
        for (size_t i = 0; i < n_counters; i++) {
            if (!in_family(&counters[i], &families[f]))
                continue;
            if (counters[i].labels[0])
                evbuffer_add_printf(out, "%s{%s} %.17g\n", counters[i].name, counters[i].labels,
                                    counters[i].value);
            else
                evbuffer_add_printf(out, "%s %.17g\n", counters[i].name, counters[i].value);
        }
    }
}

static void http_slots_reset(void);

void sbh_metrics_reset(void)
{
    http_slots_reset();
    for (size_t i = 0; i < n_counters; i++) {
        free(counters[i].name);
        free(counters[i].labels);
    }
    for (size_t i = 0; i < n_families; i++) {
        free(families[i].name);
        free(families[i].help);
    }
    free(counters);
    free(families);
    sbh_map_free(index_by_key);
    index_by_key = NULL;
    counters = NULL;
    families = NULL;
    n_counters = n_families = 0;
}

/* The request counter is bumped on every answer: skip label rendering there. */
struct http_slot {
    char *route;
    int status;
    size_t counter; /* index into counters */
};
static struct http_slot *http_slots;
static size_t n_http_slots;

void sbh_metrics_http(const char *route, int status)
{
    for (size_t i = 0; i < n_http_slots; i++)
        if (http_slots[i].status == status && !strcmp(http_slots[i].route, route)) {
            counters[http_slots[i].counter].value += 1;
            return;
        }
    char code[16], labels[512];
    snprintf(code, sizeof(code), "%d", status);
    labels_of(labels, sizeof(labels), "route", route, "status", code, SBH_END);
    struct counter *c = counter_get("switchboard_http_requests_total",
                                    "HTTP requests answered, by route and status", labels);
    if (!c)
        return;
    c->value += 1;
    struct http_slot *grown = realloc(http_slots, (n_http_slots + 1) * sizeof(*grown));
    if (!grown)
        return;
    http_slots = grown;
    http_slots[n_http_slots].route = strdup(route);
    http_slots[n_http_slots].status = status;
    http_slots[n_http_slots].counter = (size_t)(c - counters);
    if (http_slots[n_http_slots].route)
        n_http_slots++;
}

static void http_slots_reset(void)
{
    for (size_t i = 0; i < n_http_slots; i++)
        free(http_slots[i].route);
    free(http_slots);
    http_slots = NULL;
    n_http_slots = 0;
}
