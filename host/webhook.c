/*
 * Webhook requests on their way to a plugin: copied out of evhttp so a plugin
 * may read them until it answers, held while its plugin swaps, answered
 * exactly once.
 */
#include "runtime.h"

#include "inbound.h"
#include "log.h"
#include "map.h"
#include "respond.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "GET";
}

static void reply_free(struct sb_reply *r)
{
    for (size_t i = 0; i < r->n_headers; i++) {
        free((char *)r->headers[i].name);
        free((char *)r->headers[i].value);
    }
    free(r->headers);
    free(r->route);
    free(r->instance_id);
    free(r->subpath);
    free(r->query);
    free(r->method);
    free(r->body);
    json_decref(r->events);
    free(r->ans_type);
    free(r->ans_body);
    free(r);
}

/* The client went away before its answer: the request is ours to free. */
static void on_connection_close(struct evhttp_connection *conn, void *arg)
{
    struct sb_reply *r = arg;
    sbh_request_abandoned(r->req);
    r->req = NULL;
}

static int copy_headers(struct sb_reply *r, struct evkeyvalq *in)
{
    struct evkeyval *kv;
    size_t n = 0;
    TAILQ_FOREACH (kv, in, next)
        n++;
    r->headers = calloc(n ? n : 1, sizeof(*r->headers));
    if (!r->headers)
        return -1;
    TAILQ_FOREACH (kv, in, next) {
        sb_header *h = &r->headers[r->n_headers++];
        h->name = strdup(kv->key);
        h->value = strdup(kv->value);
        if (!h->name || !h->value)
            return -1;
    }
    return 0;
}

static int copy_body(struct sb_reply *r, struct evbuffer *in)
{
    r->body_len = evbuffer_get_length(in);
    r->body = malloc(r->body_len + 1);
    if (!r->body)
        return -1;
    evbuffer_copyout(in, r->body, r->body_len);
    r->body[r->body_len] = '\0'; /* plugins may treat a text body as a string */
    return 0;
}

struct sb_reply *sbh_reply_new(struct sbh_slot *slot, struct evhttp_request *req, const char *rest)
{
    struct sb_reply *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->reg = slot->reg;
    r->req = req;
    const char *slash = strchr(rest, '/');
    size_t id_len = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    r->instance_id = strndup(rest, id_len);
    r->subpath = strdup(slash ? slash : "");
    r->query = query ? strdup(query) : NULL;
    r->method = strdup(method_name(evhttp_request_get_command(req)));
    if (asprintf(&r->route, "%s/{instance}", slot->webhook_path) < 0)
        r->route = NULL;
    if (!r->instance_id || !r->subpath || (query && !r->query) || !r->method || !r->route ||
        copy_headers(r, evhttp_request_get_input_headers(req)) < 0 ||
        copy_body(r, evhttp_request_get_input_buffer(req)) < 0) {
        reply_free(r);
        return NULL;
    }
    r->view = (sb_http_request){.method = r->method,
                                .url = r->subpath,
                                .query = r->query,
                                .headers = r->headers,
                                .n_headers = r->n_headers,
                                .body = r->body,
                                .body_len = r->body_len};
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_connection_close, r);
    return r;
}

/* The events are durable (or not): now the provider hears the plugin's answer. */
static void on_stored(void *arg, int ok)
{
    struct sb_reply *r = arg;
    struct sbh_registry *reg = r->reg;
    reg->storing--;
    if (r->req) {
        evhttp_connection_set_closecb(evhttp_request_get_connection(r->req), NULL, NULL);
        if (ok) {
            sbh_respond(r->req, r->route, r->ans_status, r->ans_type, r->ans_body, r->ans_len);
        } else {
            static const char busy[] = "{\"error\":{\"code\":\"not_stored\",\"message\":"
                                       "\"the event could not be stored; send it again\","
                                       "\"details\":{}}}";
            evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", "1");
            sbh_respond(r->req, r->route, 503, NULL, busy, sizeof(busy) - 1);
        }
    }
    reply_free(r);
    sbh_registry_reply_done(reg);
}

/* Keep the plugin's answer and store the events first; 0 when that started. */
static int answer_after_store(struct sb_reply *r, int status, const char *content_type,
                              const void *body, size_t len)
{
    struct sbh_registry *reg = r->reg;
    if (!r->events || !reg->inbound || !r->inst || status >= 300)
        return -1;
    r->ans_status = status;
    r->ans_type = content_type ? strdup(content_type) : NULL;
    r->ans_body = malloc(len ? len : 1);
    if (!r->ans_body || (content_type && !r->ans_type))
        return -1;
    memcpy(r->ans_body, body, len);
    r->ans_len = len;
    TAILQ_REMOVE(&r->inst->pending, r, link);
    if (!r->abandoned)
        r->inst->n_pending--;
    json_t *events = r->events;
    struct sb_instance *inst = r->inst;
    r->events = NULL;
    r->inst = NULL; /* the host holds it now; on_stored may run before store returns */
    reg->storing++;
    sbh_inbound_store(reg->inbound, inst->slot->name, inst->id, events, on_stored, r);
    return 0;
}

int sbh_reply_answer(struct sb_reply *r, int status, const char *content_type, const void *body,
                     size_t len)
{
    if (status < 100 || status > 599)
        return SB_EINVAL;
    if (answer_after_store(r, status, content_type, body, len) == 0)
        return SB_OK;
    /* Events of a refused request are still the provider's: keep them. */
    if (r->events && r->reg->inbound && r->inst) {
        sbh_inbound_store(r->reg->inbound, r->inst->slot->name, r->inst->id, r->events, NULL, NULL);
        r->events = NULL;
    }
    if (r->req) {
        evhttp_connection_set_closecb(evhttp_request_get_connection(r->req), NULL, NULL);
        sbh_respond(r->req, r->route, status, content_type, body, len);
    }
    struct sbh_registry *reg = r->reg;
    if (r->inst) {
        TAILQ_REMOVE(&r->inst->pending, r, link);
        if (!r->abandoned)
            r->inst->n_pending--;
    }
    reply_free(r);
    sbh_registry_reply_done(reg);
    return SB_OK;
}

void sbh_reply_error(struct sb_reply *r, int status, const char *code, const char *message)
{
    json_t *doc = json_pack("{s:{s:s, s:s, s:{s:s}}}", "error", "code", code, "message", message,
                            "details", "instance", r->instance_id);
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(doc);
    sbh_reply_answer(r, status, NULL, text ? text : "{}", text ? strlen(text) : 2);
    free(text);
}

void sbh_reply_abandon(struct sb_reply *r, const char *code, const char *message)
{
    if (r->abandoned)
        return;
    if (r->req) {
        json_t *doc = json_pack("{s:{s:s, s:s, s:{s:s}}}", "error", "code", code, "message",
                                message, "details", "instance", r->instance_id);
        char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(doc);
        evhttp_connection_set_closecb(evhttp_request_get_connection(r->req), NULL, NULL);
        sbh_respond(r->req, r->route, 503, NULL, text ? text : "{}", text ? strlen(text) : 2);
        free(text);
        r->req = NULL;
    }
    r->abandoned = 1;
    if (r->inst)
        r->inst->n_pending--;
}

void sbh_reply_deliver(struct sbh_slot *slot, struct sb_reply *r)
{
    if (!r->req) {
        reply_free(r);
        return;
    }
    /* One lookup whatever the number of instances. */
    struct sb_instance *inst = sbh_map_get(slot->reg->by_id, r->instance_id);
    if (inst && inst->slot != slot)
        inst = NULL;
    if (!inst) {
        sbh_reply_error(r, 404, "instance_not_found", "no such instance for this provider");
        return;
    }
    if (!inst->gen) {
        sbh_reply_error(r, 503, "instance_not_running", "the instance is not running");
        return;
    }
    if (!inst->gen->desc->webhook) {
        sbh_reply_error(r, 404, "no_webhooks", "this provider takes no webhooks");
        return;
    }
    r->inst = inst;
    TAILQ_INSERT_TAIL(&inst->pending, r, link);
    inst->n_pending++;
    struct sbh_registry *reg = slot->reg;
    struct sb_reply *outer = reg->current;
    reg->current = r;
    inst->gen->desc->webhook(inst, inst->state, &r->view, r);
    /* r may be gone now; only compare the pointer. */
    reg->current = outer;
}
