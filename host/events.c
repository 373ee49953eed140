#include "events.h"

#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>

#define PING_S 15
#define MAX_BACKLOG (4 * 1024 * 1024)

struct stream {
    LIST_ENTRY(stream) link;
    struct sbh_events *hub;
    struct evhttp_request *req;
    char *types; /* ",a,b," for a quick strstr, or NULL */
    char *instance;
    json_t *scope;
};

struct sbh_events {
    LIST_HEAD(, stream) streams;
    struct event *ping;
    size_t n;
};

static void stream_free(struct stream *s)
{
    LIST_REMOVE(s, link);
    s->hub->n--;
    free(s->types);
    free(s->instance);
    json_decref(s->scope);
    free(s);
}

/*
 * The client went away. For a reply still streaming (evhttp_send_reply_start
 * without _end), libevent detaches the request from the dying connection and
 * leaves it to us: free it, or it leaks (seen under LeakSanitizer).
 */
static void on_close(struct evhttp_connection *conn, void *arg)
{
    struct stream *s = arg;
    struct evhttp_request *req = s->req;
    stream_free(s);
    if (req && evhttp_request_get_connection(req) == NULL)
        evhttp_request_free(req);
}

static void stream_end(struct stream *s)
{
    struct evhttp_request *req = s->req;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), NULL, NULL);
    stream_free(s);
    evhttp_send_reply_end(req);
}

static size_t backlog(const struct stream *s)
{
    struct bufferevent *bev =
        evhttp_connection_get_bufferevent(evhttp_request_get_connection(s->req));
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

static void send_text(struct stream *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void send_text(struct stream *s, const char *fmt, ...)
{
    struct evbuffer *buf = evbuffer_new();
    va_list ap;
    if (!buf)
        return;
    va_start(ap, fmt);
    evbuffer_add_vprintf(buf, fmt, ap);
    va_end(ap);
    evhttp_send_reply_chunk(s->req, buf);
    evbuffer_free(buf);
}

static int wants(const struct stream *s, const char *type, const char *instance)
{
    if (s->instance && strcmp(s->instance, instance) != 0)
        return 0;
    if (s->types) {
        char needle[128];
        snprintf(needle, sizeof(needle), ",%s,", type);
        if (!strstr(s->types, needle))
            return 0;
    }
    if (s->scope) {
        size_t i;
        json_t *v;
        json_array_foreach (s->scope, i, v)
            if (!strcmp(json_string_value(v), instance))
                return 1;
        return 0;
    }
    return 1;
}

void sbh_events_publish(void *events, const json_t *envelope)
{
    struct sbh_events *hub = events;
    const char *type = json_string_value(json_object_get(envelope, "type"));
    const char *instance = json_string_value(json_object_get(envelope, "instance"));
    const char *id = json_string_value(json_object_get(envelope, "id"));
    char *data = NULL;
    struct stream *s, *next;
    for (s = LIST_FIRST(&hub->streams); s; s = next) {
        next = LIST_NEXT(s, link);
        if (!type || !instance || !wants(s, type, instance))
            continue;
        if (backlog(s) > MAX_BACKLOG) {
            stream_end(s); /* a reader this far behind is not reading */
            continue;
        }
        if (!data && !(data = json_dumps(envelope, JSON_COMPACT)))
            return;
        send_text(s, "id: %s\nevent: %s\ndata: %s\n\n", id ? id : "", type, data);
    }
    free(data);
}

static void on_ping(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_events *hub = arg;
    struct stream *s;
    LIST_FOREACH (s, &hub->streams, link)
        send_text(s, ": ping\n\n");
}

void sbh_events_stream(struct sbh_events *hub, struct evhttp_request *req, const char *types,
                       const char *instance, const json_t *scope)
{
    struct stream *s = calloc(1, sizeof(*s));
    if (!s) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    s->hub = hub;
    s->req = req;
    if (types) {
        size_t n = strlen(types) + 3;
        s->types = malloc(n);
        if (s->types)
            snprintf(s->types, n, ",%s,", types);
    }
    s->instance = instance ? strdup(instance) : NULL;
    s->scope = scope ? json_deep_copy(scope) : NULL;
    LIST_INSERT_HEAD(&hub->streams, s, link);
    hub->n++;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_close, s);
    evhttp_send_reply_start(req, 200, "OK");
    sbh_metrics_http("/v1/events", 200);
    send_text(s, ": switchboard event stream\n\n");
}

size_t sbh_events_streams(const struct sbh_events *hub)
{
    return hub->n;
}

struct sbh_events *sbh_events_new(struct event_base *base)
{
    struct sbh_events *hub = calloc(1, sizeof(*hub));
    if (!hub)
        return NULL;
    LIST_INIT(&hub->streams);
    hub->ping = event_new(base, -1, EV_PERSIST, on_ping, hub);
    struct timeval tv = {PING_S, 0};
    if (!hub->ping || event_add(hub->ping, &tv) < 0) {
        if (hub->ping)
            event_free(hub->ping);
        free(hub);
        return NULL;
    }
    return hub;
}

void sbh_events_free(struct sbh_events *hub)
{
    if (!hub)
        return;
    while (!LIST_EMPTY(&hub->streams))
        stream_end(LIST_FIRST(&hub->streams));
    event_free(hub->ping);
    free(hub);
}
