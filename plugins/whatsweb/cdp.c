/*
 * The DevTools protocol over two pipes (see cdp.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/plugutil.h"
#include "cdp.h"

#define READ_CHUNK 65536
#define READS_PER_WAKEUP 16

struct pending {
    struct pending *next;
    long id;
    ww_cdp_reply_fn fn;
    void *arg;
};

struct ww_cdp {
    const sb_host_services *host;
    sb_plugin *self;
    sb_instance *inst;
    int rfd, wfd;
    sb_fd_watch *rwatch, *wwatch;
    ww_cdp_event_fn on_event;
    ww_cdp_closed_fn on_closed;
    void *arg;
    long next_id;
    struct pending *pending;
    struct pu_buf in;  /* bytes read, not yet split */
    size_t in_scan;    /* in.p[0..in_scan) holds no NUL */
    struct pu_buf out; /* bytes to write, from out_off */
    size_t out_off;
    int broken;
    int wfail; /* a write failed outside a loop callback; reported by the read side */
    int depth; /* callbacks running */
    int freed; /* ww_cdp_free called during a callback */
};

static void destroy(struct ww_cdp *c)
{
    if (c->rwatch)
        c->host->fd_unwatch(c->rwatch);
    if (c->wwatch)
        c->host->fd_unwatch(c->wwatch);
    if (c->rfd >= 0)
        close(c->rfd);
    if (c->wfd >= 0)
        close(c->wfd);
    while (c->pending) {
        struct pending *p = c->pending;
        c->pending = p->next;
        free(p);
    }
    pu_buf_free(&c->in);
    pu_buf_free(&c->out);
    free(c);
}

void ww_cdp_free(struct ww_cdp *c)
{
    if (!c)
        return;
    if (c->depth) {
        /* Inside a callback: stop everything now, free when it returns. */
        c->freed = 1;
        c->broken = 1;
        return;
    }
    destroy(c);
}

/* Stop watching after a failure; the owner hears of it once. */
static void breakdown(struct ww_cdp *c, const char *why)
{
    if (c->broken)
        return;
    c->broken = 1;
    if (c->rwatch) {
        c->host->fd_unwatch(c->rwatch);
        c->rwatch = NULL;
    }
    if (c->wwatch) {
        c->host->fd_unwatch(c->wwatch);
        c->wwatch = NULL;
    }
    c->depth++;
    c->on_closed(c->arg, why);
    c->depth--;
}

static void on_writable(void *arg, int fd, int what);

/*
 * Write what the pipe takes; watch for room while something is left. A
 * failure is reported through on_closed only from a loop callback
 * (from_loop); inside ww_cdp_call it just fails the call, and the read side
 * (EOF) or the owner's health check reports the broken browser.
 */
static void flush_out(struct ww_cdp *c, int from_loop)
{
    while (!c->broken && c->out_off < c->out.len) {
        ssize_t n = write(c->wfd, c->out.p + c->out_off, c->out.len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (from_loop)
            breakdown(c, n < 0 && errno == EPIPE ? "chromium closed its command pipe"
                                                 : "writing to chromium failed");
        else
            c->wfail = 1;
        return;
    }
    if (c->broken)
        return;
    if (c->out_off == c->out.len) {
        c->out.len = 0;
        c->out_off = 0;
        if (c->out.p)
            c->out.p[0] = '\0';
        if (c->wwatch) {
            c->host->fd_unwatch(c->wwatch);
            c->wwatch = NULL;
        }
        return;
    }
    if (c->out_off > c->out.len / 2) {
        memmove(c->out.p, c->out.p + c->out_off, c->out.len - c->out_off);
        c->out.len -= c->out_off;
        c->out_off = 0;
    }
    if (!c->wwatch) {
        c->wwatch = c->host->fd_watch(c->self, c->inst, c->wfd, SB_FD_WRITE, on_writable, c);
        if (!c->wwatch) {
            if (from_loop)
                breakdown(c, "cannot watch the command pipe");
            else
                c->wfail = 1;
        }
    }
}

static void on_writable(void *arg, int fd, int what)
{
    struct ww_cdp *c = arg;

    c->depth++;
    flush_out(c, 1);
    c->depth--;
    if (c->freed && !c->depth)
        destroy(c);
}

static void dispatch(struct ww_cdp *c, const char *text, size_t len)
{
    json_error_t err;
    json_t *msg = json_loadb(text, len, 0, &err);
    json_t *id, *result, *error;

    if (!json_is_object(msg)) {
        json_decref(msg);
        breakdown(c, "chromium sent a message that is not a JSON object");
        return;
    }
    id = json_object_get(msg, "id");
    if (json_is_integer(id)) {
        long want = (long)json_integer_value(id);
        struct pending **link = &c->pending, *p;

        while (*link && (*link)->id != want)
            link = &(*link)->next;
        if ((p = *link)) {
            *link = p->next;
            result = json_object_get(msg, "result");
            error = json_object_get(msg, "error");
            if (p->fn)
                p->fn(p->arg, error ? NULL : result, error ? error : result ? NULL : msg);
            free(p);
        }
    } else {
        const char *method = json_string_value(json_object_get(msg, "method"));

        if (method)
            c->on_event(c->arg, method, json_object_get(msg, "params"),
                        json_string_value(json_object_get(msg, "sessionId")));
    }
    json_decref(msg);
}

static void on_readable(void *arg, int fd, int what)
{
    struct ww_cdp *c = arg;

    c->depth++;
    for (int round = 0; round < READS_PER_WAKEUP && !c->broken; round++) {
        char chunk[READ_CHUNK];
        ssize_t n = read(c->rfd, chunk, sizeof(chunk));
        size_t start = 0;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            breakdown(c,
                      n == 0 ? "chromium closed its event pipe" : "reading from chromium failed");
            break;
        }
        pu_buf_add(&c->in, chunk, (size_t)n);
        if (c->in.oom) {
            breakdown(c, "out of memory reading from chromium");
            break;
        }
        for (size_t i = c->in_scan; i < c->in.len && !c->broken; i++) {
            if (c->in.p[i] != '\0')
                continue;
            dispatch(c, c->in.p + start, i - start);
            start = i + 1;
        }
        if (c->broken)
            break;
        if (start) {
            memmove(c->in.p, c->in.p + start, c->in.len - start);
            c->in.len -= start;
            c->in.p[c->in.len] = '\0';
        }
        c->in_scan = c->in.len;
        if (c->in.len > WW_CDP_MAX_MESSAGE) {
            breakdown(c, "chromium sent a message over the size limit");
            break;
        }
    }
    c->depth--;
    if (c->freed && !c->depth)
        destroy(c);
}

struct ww_cdp *ww_cdp_new(const sb_host_services *host, sb_plugin *self, sb_instance *inst, int rfd,
                          int wfd, ww_cdp_event_fn on_event, ww_cdp_closed_fn on_closed, void *arg)
{
    struct ww_cdp *c = calloc(1, sizeof(*c));

    if (!c) {
        close(rfd);
        close(wfd);
        return NULL;
    }
    c->host = host;
    c->self = self;
    c->inst = inst;
    c->rfd = rfd;
    c->wfd = wfd;
    c->on_event = on_event;
    c->on_closed = on_closed;
    c->arg = arg;
    fcntl(rfd, F_SETFL, fcntl(rfd, F_GETFL) | O_NONBLOCK);
    fcntl(wfd, F_SETFL, fcntl(wfd, F_GETFL) | O_NONBLOCK);
    c->rwatch = host->fd_watch(self, inst, rfd, SB_FD_READ, on_readable, c);
    if (!c->rwatch) {
        destroy(c);
        return NULL;
    }
    return c;
}

long ww_cdp_call(struct ww_cdp *c, const char *session, const char *method, json_t *params,
                 ww_cdp_reply_fn fn, void *arg)
{
    json_t *msg;
    char *text;
    struct pending *p;
    long id;

    if (!c || c->broken || c->wfail) {
        json_decref(params);
        return -1;
    }
    id = ++c->next_id;
    msg = json_pack("{s:I,s:s,s:o}", "id", (json_int_t)id, "method", method, "params",
                    params ? params : json_object());
    if (msg && session)
        json_object_set_new(msg, "sessionId", json_string(session));
    text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    p = text ? calloc(1, sizeof(*p)) : NULL;
    if (!p) {
        free(text);
        return -1;
    }
    p->id = id;
    p->fn = fn;
    p->arg = arg;
    pu_buf_add(&c->out, text, strlen(text) + 1); /* with the NUL */
    free(text);
    if (c->out.oom) {
        free(p);
        return -1;
    }
    p->next = c->pending;
    c->pending = p;
    if (!c->wwatch)
        flush_out(c, 0);
    /* A write failure leaves the command unanswered: drop it. */
    if (c->wfail) {
        ww_cdp_cancel(c, id);
        return -1;
    }
    return id;
}

void ww_cdp_cancel(struct ww_cdp *c, long id)
{
    struct pending **link;

    if (!c)
        return;
    for (link = &c->pending; *link; link = &(*link)->next)
        if ((*link)->id == id) {
            struct pending *p = *link;
            *link = p->next;
            free(p);
            return;
        }
}

size_t ww_cdp_pending_out(const struct ww_cdp *c)
{
    return c ? c->out.len - c->out_off : 0;
}
