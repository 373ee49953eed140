/*
 * The one place HTTP answers are written: JSON bodies, the error shape
 * {"error":{"code","message","details"}}, and per-route request metrics.
 */
#ifndef SBH_RESPOND_H
#define SBH_RESPOND_H

#include <stddef.h>

#include <event2/http.h>
#include <jansson.h>

/* Send status with body (copied); route labels the request in /metrics. */
void sbh_respond(struct evhttp_request *req, const char *route, int status,
                 const char *content_type, const void *body, size_t len);

/* Send a JSON document; steals body. */
void sbh_respond_json(struct evhttp_request *req, const char *route, int status, json_t *body);

/* Send the error shape; details (stolen) may be NULL. */
void sbh_respond_error(struct evhttp_request *req, const char *route, int status, const char *code,
                       const char *message, json_t *details);

/*
 * The client closed the connection of a request we had not finished
 * answering (call from the connection's close callback). libevent detaches
 * such a request from its connection and leaves it to us: this frees it.
 * When the connection goes for another reason (evhttp_free) the request is
 * still attached and libevent frees it; this then does nothing.
 */
void sbh_request_abandoned(struct evhttp_request *req);

#endif
