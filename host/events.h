/*
 * GET /v1/events: stored events streamed live as Server-Sent Events
 * (id = event id, event = type, data = the JSON envelope), filtered by type
 * and instance, and by the caller's key scope. A comment line every 15 s
 * keeps proxies from timing the stream out; a client that stops reading
 * (over 4 MiB behind) is dropped rather than buffered forever.
 */
#ifndef SBH_EVENTS_H
#define SBH_EVENTS_H

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

struct sbh_events;

struct sbh_events *sbh_events_new(struct event_base *base);
/* End every stream and free. */
void sbh_events_free(struct sbh_events *ev);

/* An sbh_event_fn: send envelope (borrowed) to the streams that want it. */
void sbh_events_publish(void *events, const json_t *envelope);

/*
 * Turn req into a stream. types: comma-separated event types or NULL for
 * all; instance: one instance id or NULL; scope: the instance ids a scoped
 * key may see (borrowed, copied), NULL for all.
 */
void sbh_events_stream(struct sbh_events *ev, struct evhttp_request *req, const char *types,
                       const char *instance, const json_t *scope);

size_t sbh_events_streams(const struct sbh_events *ev);

#endif
