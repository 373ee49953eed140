#include "api.h"

#include "events.h"
#include "log.h"
#include "outbox.h"
#include "ratelimit.h"
#include "respond.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>

extern const char sbh_openapi_json[];

static void on_client_gone(struct evhttp_connection *conn, void *arg)
{
    struct sbh_call *call = arg;
    sbh_request_abandoned(call->req);
    call->req = NULL;
}

static struct sbh_call *call_new(struct sbh_daemon *d, struct evhttp_request *req,
                                 const char *route)
{
    struct sbh_call *call = calloc(1, sizeof(*call));
    if (!call)
        return NULL;
    call->d = d;
    call->req = req;
    snprintf(call->route, sizeof(call->route), "%s", route);
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_client_gone, call);
    d->api_inflight++;
    return call;
}

static void call_free(struct sbh_call *call)
{
    if (call->req)
        evhttp_connection_set_closecb(evhttp_request_get_connection(call->req), NULL, NULL);
    call->d->api_inflight--;
    sbh_principal_clear(&call->who);
    json_decref(call->body);
    json_decref(call->in);
    json_decref(call->out);
    free(call);
}

void sbh_call_detach(struct sbh_call *call)
{
    if (call->req)
        evhttp_connection_set_closecb(evhttp_request_get_connection(call->req), NULL, NULL);
    call->req = NULL;
    call_free(call);
}

/* GET /v1/events[?types=a,b&instance=id]: a Server-Sent Events stream. */
static void serve_events(struct sbh_call *call, enum evhttp_cmd_type method)
{
    struct evkeyvalq q;
    const char *uri_query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(call->req));
    if (method != EVHTTP_REQ_GET) {
        sbh_call_error(call, 405, "method_not_allowed", NULL, "only GET");
        return;
    }
    TAILQ_INIT(&q);
    if (uri_query && evhttp_parse_query_str(uri_query, &q) < 0) {
        sbh_call_error(call, 400, "invalid_query", NULL, "malformed query string");
        return;
    }
    const char *instance = evhttp_find_header(&q, "instance");
    if (instance && !sbh_principal_allows(&call->who, instance)) {
        evhttp_clear_headers(&q);
        sbh_call_error(call, 404, "not_found", "instance", "no such instance");
        return;
    }
    struct evhttp_request *req = call->req;
    struct sbh_events *hub = call->d->events;
    json_t *scope = call->who.admin ? NULL : json_incref(call->who.instance_ids);
    sbh_call_detach(call);
    sbh_events_stream(hub, req, evhttp_find_header(&q, "types"), instance, scope);
    json_decref(scope);
    evhttp_clear_headers(&q);
}

void sbh_call_reply(struct sbh_call *call, int status, json_t *doc)
{
    struct evhttp_request *req = call->req;
    if (req) {
        evhttp_connection_set_closecb(evhttp_request_get_connection(req), NULL, NULL);
        call->req = NULL;
        if (status == 204) {
            json_decref(doc);
            sbh_respond(req, call->route, 204, NULL, NULL, 0);
        } else {
            sbh_respond_json(req, call->route, status, doc);
        }
    } else {
        json_decref(doc);
    }
    call_free(call);
}

void sbh_call_reply_raw(struct sbh_call *call, int status, const char *content_type,
                        const void *body, size_t len)
{
    struct evhttp_request *req = call->req;
    if (req) {
        evhttp_connection_set_closecb(evhttp_request_get_connection(req), NULL, NULL);
        call->req = NULL;
        sbh_respond(req, call->route, status, content_type, body, len);
    }
    call_free(call);
}

void sbh_call_error(struct sbh_call *call, int status, const char *code, const char *field,
                    const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *details = field ? json_pack("{s:s}", "field", field) : json_object();
    json_t *err = json_pack("{s:s, s:s, s:o}", "code", code, "message", msg, "details", details);
    if (status == 503 && call->req)
        evhttp_add_header(evhttp_request_get_output_headers(call->req), "Retry-After", "1");
    sbh_call_reply(call, status, json_pack("{s:o}", "error", err));
}

void sbh_call_db_error(struct sbh_call *call, int result)
{
    switch (result) {
    case SBH_DB_UNAVAILABLE:
        sbh_call_error(call, 503, "database_unavailable", NULL,
                       "the database cannot be reached; retry later");
        return;
    case SBH_DB_NOTFOUND:
        sbh_call_error(call, 404, "not_found", NULL, "no such %s",
                       strstr(call->route, "keys") ? "key" : "instance");
        return;
    case SBH_DB_CONFLICT:
        sbh_call_error(call, 409, "conflict", NULL, "%s",
                       "the resource conflicts with an existing one, or changed meanwhile");
        return;
    default:
        sbh_call_error(call, 500, "internal", NULL, "the database refused the request");
    }
}

static void db_done(void *arg, int result)
{
    struct sbh_call *call = arg;
    call->then(call, result);
}

static int db_work(MYSQL *conn, void *arg)
{
    struct sbh_call *call = arg;
    return call->work(conn, call);
}

void sbh_call_db(struct sbh_call *call, int (*work)(MYSQL *, struct sbh_call *),
                 void (*then)(struct sbh_call *, int))
{
    call->work = work;
    call->then = then;
    /* Submitted even while the database is known to be down: the job doubles
     * as the probe that notices its return, and fails fast meanwhile. */
    if (sbh_db_submit(call->d->db, db_work, db_done, call) < 0)
        sbh_call_db_error(call, SBH_DB_UNAVAILABLE);
}

int sbh_call_body_object(struct sbh_call *call, const char *const *allowed)
{
    const char *key;
    json_t *v;
    if (!json_is_object(call->body)) {
        sbh_call_error(call, 400, "invalid_body", NULL, "the body must be a JSON object");
        return -1;
    }
    json_object_foreach (call->body, key, v) {
        const char *const *a = allowed;
        while (*a && strcmp(*a, key) != 0)
            a++;
        if (!*a) {
            sbh_call_error(call, 400, "unknown_field", key, "unknown field \"%s\"", key);
            return -1;
        }
    }
    return 0;
}

/* Parse a JSON body when there is one; answers 400 and returns -1 on bad JSON. */
static int parse_body(struct sbh_call *call)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(call->req);
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return 0;
    json_error_t jerr;
    call->body = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, &jerr);
    if (!call->body) {
        sbh_call_error(call, 400, "invalid_json", NULL, "invalid JSON at line %d column %d: %s",
                       jerr.line, jerr.column, jerr.text);
        return -1;
    }
    return 0;
}

static int authenticate(struct sbh_call *call)
{
    const char *why;
    const char *h =
        evhttp_find_header(evhttp_request_get_input_headers(call->req), "Authorization");
    if (sbh_auth_check(call->d->auth, h, &call->who, &why) == 0)
        return 0;
    evhttp_add_header(evhttp_request_get_output_headers(call->req), "WWW-Authenticate",
                      "Bearer realm=\"switchboard\"");
    sbh_call_error(call, 401, "unauthorized", NULL, "API key %s", why);
    return -1;
}

/* 1 when the key has used up its requests for now (answered 429). */
static int rate_limited(struct sbh_call *call)
{
    unsigned wait = 0;
    if (sbh_ratelimit_take(call->d->api_limit, call->who.key_id, &wait))
        return 0;
    char after[16];
    snprintf(after, sizeof(after), "%u", wait);
    evhttp_add_header(evhttp_request_get_output_headers(call->req), "Retry-After", after);
    sbh_call_error(call, 429, "rate_limited", NULL, "too many requests for this key; retry in %u s",
                   wait);
    return 1;
}

/* A provider's sending health: its instances' counts summed, the latest error. */
static json_t *provider_health(const struct sbh_daemon *d, const json_t *instances)
{
    json_int_t sent = 0, failed = 0, retried = 0, open = 0, last_success = 0, last_failure = 0;
    json_t *latest = NULL, *id;
    size_t i;
    json_array_foreach (instances, i, id) {
        json_t *h = d->outbox ? sbh_outbox_instance_health(d->outbox, json_string_value(id)) : NULL;
        const char *breaker = json_string_value(json_object_get(h, "breaker"));
        sent += json_integer_value(json_object_get(h, "sent"));
        failed += json_integer_value(json_object_get(h, "failed"));
        retried += json_integer_value(json_object_get(h, "retried"));
        open += breaker && strcmp(breaker, "closed") != 0;
        if (json_integer_value(json_object_get(h, "last_success")) > last_success)
            last_success = json_integer_value(json_object_get(h, "last_success"));
        if (json_integer_value(json_object_get(h, "last_failure")) > last_failure) {
            last_failure = json_integer_value(json_object_get(h, "last_failure"));
            json_decref(latest);
            latest = json_incref(h);
        }
        json_decref(h);
    }
    json_t *out = json_pack("{s:I, s:I, s:I, s:I}", "sent", sent, "failed", failed, "retried",
                            retried, "breakers_open", open);
    if (last_success)
        json_object_set_new(out, "last_success", json_integer(last_success));
    if (last_failure)
        json_object_set_new(out, "last_failure", json_integer(last_failure));
    if (json_object_get(latest, "last_error"))
        json_object_set(out, "last_error", json_object_get(latest, "last_error"));
    json_decref(latest);
    return out;
}

static void serve_providers(struct sbh_call *call, enum evhttp_cmd_type method)
{
    if (method != EVHTTP_REQ_GET) {
        sbh_call_error(call, 405, "method_not_allowed", NULL, "only GET");
        return;
    }
    json_t *providers = sbh_registry_providers(call->d->reg), *p;
    size_t i;
    json_array_foreach (providers, i, p)
        json_object_set_new(p, "health", provider_health(call->d, json_object_get(p, "instances")));
    sbh_call_reply(call, 200, json_pack("{s:o}", "providers", providers));
}

/* Split "/v1/<resource>[/<id>[/<action>]]"; -1 when malformed. */
static int split_path(const char *path, char *res, size_t res_len, char *id, size_t id_len,
                      char *action, size_t action_len)
{
    char buf[256];
    if (strlen(path) >= sizeof(buf))
        return -1;
    snprintf(buf, sizeof(buf), "%s", path + 4);
    char *save = NULL;
    const char *parts[4] = {NULL, NULL, NULL, NULL};
    int n = 0;
    for (char *t = strtok_r(buf, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        if (n == 3)
            return -1;
        parts[n++] = t;
    }
    if (n == 0)
        return -1;
    snprintf(res, res_len, "%s", parts[0]);
    snprintf(id, id_len, "%s", parts[1] ? parts[1] : "");
    snprintf(action, action_len, "%s", parts[2] ? parts[2] : "");
    return 0;
}

static const char *route_label(const char *res, const char *id, const char *action)
{
    if (!strcmp(res, "instances") && !strcmp(action, "messages"))
        return "/v1/instances/{id}/messages";
    if (!strcmp(res, "messages"))
        return *id ? "/v1/messages/{id}" : "other";
    if (!strcmp(res, "instances"))
        return !*id      ? "/v1/instances"
               : *action ? "/v1/instances/{id}/action"
                         : "/v1/instances/{id}";
    if (!strcmp(res, "keys"))
        return *id ? "/v1/keys/{id}" : "/v1/keys";
    if (!strcmp(res, "providers"))
        return "/v1/providers";
    if (!strcmp(res, "events") && !*id)
        return "/v1/events";
    if (!strcmp(res, "subscriptions"))
        return *id ? "/v1/subscriptions/{id}" : "/v1/subscriptions";
    return "other";
}

int sbh_api_dispatch(struct sbh_daemon *d, struct evhttp_request *req, const char *path)
{
    if (!strcmp(path, "/openapi.json")) {
        sbh_respond(req, "/openapi.json", 200, "application/json", sbh_openapi_json,
                    strlen(sbh_openapi_json));
        return 1;
    }
    if (strncmp(path, "/v1/", 4) != 0)
        return 0;
    char res[32], id[96], action[32];
    if (split_path(path, res, sizeof(res), id, sizeof(id), action, sizeof(action)) < 0)
        return 0;
    const char *route = route_label(res, id, action);
    if (!strcmp(route, "other") || (*action && strcmp(res, "instances") != 0))
        return 0;
    struct sbh_call *call = call_new(d, req, route);
    if (!call) {
        sbh_respond_error(req, route, 500, "internal", "out of memory", NULL);
        return 1;
    }
    if (strlen(id) >= sizeof(call->id)) {
        sbh_call_error(call, 404, "not_found", NULL, "no such resource");
        return 1;
    }
    snprintf(call->id, sizeof(call->id), "%s", id);
    if (d->stopping) {
        sbh_call_error(call, 503, "shutting_down", NULL, "the daemon is shutting down");
        return 1;
    }
    if (authenticate(call) < 0 || rate_limited(call) || parse_body(call) < 0)
        return 1;
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    if (!strcmp(res, "providers"))
        serve_providers(call, method);
    else if (!strcmp(res, "instances"))
        sbh_api_instances(call, method, action);
    else if (!strcmp(res, "messages"))
        sbh_api_messages(call, method);
    else if (!strcmp(res, "events"))
        serve_events(call, method);
    else if (!strcmp(res, "subscriptions"))
        sbh_api_subscriptions(call, method);
    else
        sbh_api_keys(call, method);
    return 1;
}
