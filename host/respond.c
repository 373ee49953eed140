#include "respond.h"

#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

static const char *reason_for(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return NULL;
    }
}

void sbh_respond(struct evhttp_request *req, const char *route, int status,
                 const char *content_type, const void *body, size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", content_type ? content_type : "application/json");
    struct evbuffer *buf = evbuffer_new();
    if (buf && len)
        evbuffer_add(buf, body, len);
    evhttp_send_reply(req, status, reason_for(status), buf);
    if (buf)
        evbuffer_free(buf);
    sbh_metrics_http(route, status);
}

void sbh_request_abandoned(struct evhttp_request *req)
{
    if (req && !evhttp_request_get_connection(req))
        evhttp_request_free(req);
}

void sbh_respond_json(struct evhttp_request *req, const char *route, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(body);
    if (!text) {
        static const char oom[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        sbh_respond(req, route, 500, NULL, oom, sizeof(oom) - 1);
        return;
    }
    size_t len = strlen(text);
    sbh_respond(req, route, status, NULL, text, len);
    free(text);
}

void sbh_respond_error(struct evhttp_request *req, const char *route, int status, const char *code,
                       const char *message, json_t *details)
{
    json_t *err = json_pack("{s:s, s:s, s:o}", "code", code, "message", message, "details",
                            details ? details : json_object());
    sbh_respond_json(req, route, status, json_pack("{s:o}", "error", err));
}
