/* The HTTP front: health, readiness, metrics, the provider list and webhooks. */
#include "daemon.h"

#include "api.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "respond.h"

#include <errno.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/listener.h>
#include <event2/keyvalq_struct.h>

#define SBH_MAX_BODY (1024 * 1024)

static double uptime_seconds(const struct sbh_daemon *d)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - d->started.tv_sec) +
           (double)(now.tv_nsec - d->started.tv_nsec) / 1e9;
}

static void serve_healthz(struct sbh_daemon *d, struct evhttp_request *req)
{
    static const char ok[] = "{\"status\":\"ok\"}";
    sbh_respond(req, "/healthz", 200, NULL, ok, sizeof(ok) - 1);
}

static void serve_readyz(struct sbh_daemon *d, struct evhttp_request *req)
{
    json_t *plugins;
    int db = d->db && sbh_db_available(d->db);
    int ready = sbh_registry_ready(d->reg, &plugins) && !d->stopping && db;
    json_t *body = json_pack("{s:b, s:o, s:s}", "ready", ready, "plugins", plugins, "database",
                             db ? "up" : "down");
    if (d->stopping)
        json_object_set_new(body, "reason", json_string("shutting down"));
    sbh_respond_json(req, "/readyz", ready ? 200 : 503, body);
}

static void serve_metrics(struct sbh_daemon *d, struct evhttp_request *req)
{
    struct evbuffer *out = evbuffer_new();
    if (!out) {
        sbh_respond_error(req, "/metrics", 500, "internal", "out of memory", NULL);
        return;
    }
    sbh_metrics_gauge(out, "switchboard_uptime_seconds", "Seconds since the daemon started",
                      uptime_seconds(d));
    sbh_metrics_gauge(out, "switchboard_plugins_loaded", "Plugins loaded and serving",
                      (double)sbh_registry_loaded(d->reg));
    sbh_metrics_gauge(out, "switchboard_webhooks_pending", "Webhook requests awaiting an answer",
                      (double)sbh_registry_pending(d->reg));
    sbh_metrics_gauge(out, "switchboard_database_up", "1 when the database answers",
                      d->db && sbh_db_available(d->db) ? 1 : 0);
    sbh_metrics_gauge(out, "switchboard_api_requests_in_flight",
                      "API requests awaiting the database", (double)d->api_inflight);
    if (d->outbox)
        sbh_outbox_metrics(d->outbox, out);
    sbh_metrics_render(out);
    size_t len = evbuffer_get_length(out);
    sbh_respond(req, "/metrics", 200, "text/plain; version=0.0.4; charset=utf-8",
                evbuffer_pullup(out, -1), len);
    evbuffer_free(out);
}

struct route {
    const char *path;
    void (*serve)(struct sbh_daemon *, struct evhttp_request *);
};

static const struct route routes[] = {
    {"/healthz", serve_healthz},
    {"/readyz", serve_readyz},
    {"/metrics", serve_metrics},
};

static void on_request(struct evhttp_request *req, void *arg)
{
    struct sbh_daemon *d = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (!path || !*path)
        path = "/";
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(path, routes[i].path) != 0)
            continue;
        enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
            sbh_respond_error(req, routes[i].path, 405, "method_not_allowed",
                              "this resource only answers GET", NULL);
            return;
        }
        routes[i].serve(d, req);
        return;
    }
    if (sbh_registry_webhook(d->reg, req, path) || sbh_api_dispatch(d, req, path))
        return;
    sbh_respond_error(req, "other", 404, "not_found", "no such resource",
                      json_pack("{s:s}", "path", path));
}

int sbh_http_setup(struct sbh_daemon *d)
{
    d->http = evhttp_new(d->base);
    if (!d->http)
        return -1;
    evhttp_set_gencb(d->http, on_request, d);
    evhttp_set_max_body_size(d->http, SBH_MAX_BODY);
    evhttp_set_allowed_methods(d->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                                            EVHTTP_REQ_OPTIONS);
    evhttp_set_timeout(d->http, 60);
    return 0;
}

#define ACCEPT_PAUSE_MS 200

/* The listener's callback argument is evhttp's own: the daemon is found here. */
static struct sbh_daemon *accepting_daemon;

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_daemon *d = arg;
    if (d->listener && !d->stopping)
        evconnlistener_enable(evhttp_bound_socket_get_listener(d->listener));
}

/*
 * accept() failed, mostly for want of file descriptors: pause the listener a
 * moment instead of retrying in a tight loop (and logging each time).
 */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    struct sbh_daemon *d = accepting_daemon;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval pause = {0, ACCEPT_PAUSE_MS * 1000};
    evconnlistener_disable(lev);
    sbh_metrics_add("switchboard_accept_errors_total", "accept() failures (listener paused)", 1,
                    SBH_END);
    sbh_log_fields(SB_LOG_WARN, "http", NULL, NULL,
                   json_pack("{s:s, s:i}", "reason", evutil_socket_error_to_string(err), "pause_ms",
                             ACCEPT_PAUSE_MS),
                   "cannot accept connections; pausing the listener");
    event_base_once(d->base, -1, EV_TIMEOUT, resume_accepting, d, &pause);
}

struct evhttp_bound_socket *sbh_http_bind(struct sbh_daemon *d, const char *address, int port)
{
    struct evhttp_bound_socket *s =
        evhttp_bind_socket_with_handle(d->http, address, (ev_uint16_t)port);
    if (!s) {
        json_t *fields = json_pack("{s:s, s:i, s:s}", "address", address, "port", port, "reason",
                                   strerror(errno));
        sbh_log_fields(SB_LOG_ERROR, "http", NULL, NULL, fields, "cannot listen");
        return NULL;
    }
    accepting_daemon = d;
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(s), on_accept_error);
    sbh_log_fields(SB_LOG_INFO, "http", NULL, NULL,
                   json_pack("{s:s, s:i}", "address", address, "port", port), "listening");
    return s;
}
