/*
 * fakeprov: a test provider plugin that talks HTTP to a fake provider
 * (tests/integration/fakeprovider.py) through the host's async HTTP client.
 *
 * send(): POST <base_url>/send with the provider-neutral message as JSON
 * (Authorization: Bearer <token> when the token secret is set, 2 s timeout),
 * and the answer mapped onto sb_send_result:
 *   2xx {"id": ...}           ok, provider_msg_id = id
 *   429                       retryable, retry_after_ms from Retry-After
 *                             (seconds) or the body's "retry_after" (seconds)
 *   5xx, or no answer at all  retryable (Retry-After honoured when present)
 *   any other status          permanent, with the error body's message
 *
 * webhook: POST JSON {"event_id", "type": "message"|"status", ...}:
 *   "message": {"from", "text", "message_id"} -> message.received
 *   "status":  {"message_id", "state"}        -> message.status
 * answered 200 {"ok":true} once the host has the event.
 *
 * Setting complete_on_stop (default true): false makes instance_stop drop its
 * in-flight sends without completing them, leaving it to the host (which
 * cancels the instance's HTTP calls) to notice: a plugin that trusts the
 * host's clean-up.
 *
 * Capabilities: webhook only (no media, buttons or threads), so the host's
 * degradation is visible in what reaches the fake.
 */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <switchboard/switchboard.h>

#define FAKEPROV_VERSION "1.0.0-test"
#define SEND_TIMEOUT_MS 2000
#define MAX_RETRY_AFTER_MS (3600u * 1000u)

#define FAKEPROV_SCHEMA                                                                            \
    "{\"type\":\"object\",\"properties\":{"                                                        \
    "\"base_url\":{\"type\":\"string\",\"minLength\":1},"                                          \
    "\"token\":{\"type\":\"string\",\"writeOnly\":true},"                                          \
    "\"complete_on_stop\":{\"type\":\"boolean\"}},"                                                \
    "\"required\":[\"base_url\"],\"additionalProperties\":false}"

struct fp_instance;

/* One send waiting for the fake's answer. */
struct fp_send {
    struct fp_send *next;
    struct fp_instance *owner;
    sb_http_call *call;
    sb_send_done_fn done;
    void *done_arg;
};

struct fp_instance {
    sb_instance *inst;
    char *base_url;
    char *auth; /* "Bearer <token>" or NULL */
    /* false: instance_stop leaves the host's cancellation to end its sends (done never runs) */
    int complete_on_stop;
    unsigned long sent, failed, webhooks;
    struct fp_send *sends; /* in flight */
};

static const sb_host_services *host;
static sb_plugin *plugin_self;

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *out = malloc(n);

    if (out)
        memcpy(out, s, n);
    return out;
}

static void send_unlink(struct fp_send *s)
{
    struct fp_send **link = &s->owner->sends;

    while (*link && *link != s)
        link = &(*link)->next;
    if (*link)
        *link = s->next;
}

static void finish_fail(struct fp_send *s, int retryable, uint32_t retry_after_ms, const char *code,
                        const char *message)
{
    sb_send_result res = {.ok = 0,
                          .retryable = retryable,
                          .retry_after_ms = retry_after_ms,
                          .error_code = code,
                          .error_message = message};

    s->owner->failed++;
    s->done(s->done_arg, &res);
}

static const char *find_header(const sb_http_response *resp, const char *name)
{
    for (size_t i = 0; i < resp->n_headers; i++)
        if (resp->headers[i].name && strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

/* Seconds (integer or decimal) -> ms, clamped; 0 when absent or unparsable. */
static uint32_t seconds_to_ms(double secs)
{
    if (!(secs > 0))
        return 0;
    if (secs * 1000.0 > (double)MAX_RETRY_AFTER_MS)
        return MAX_RETRY_AFTER_MS;
    return (uint32_t)(secs * 1000.0 + 0.5);
}

static uint32_t retry_after_of(const sb_http_response *resp, const json_t *body)
{
    const char *h = find_header(resp, "Retry-After");
    json_t *v;

    if (h) {
        char *end = NULL;
        double secs;

        while (isspace((unsigned char)*h))
            h++;
        secs = strtod(h, &end);
        if (end != h)
            return seconds_to_ms(secs);
        /* An HTTP-date is not produced by the fake; ignore it. */
    }
    v = json_object_get(body, "retry_after");
    if (json_is_number(v))
        return seconds_to_ms(json_number_value(v));
    return 0;
}

/* The error body's message: {"error":{"message"}}, {"error":"..."} or {"message"}. */
static const char *error_message_of(const json_t *body)
{
    json_t *err = json_object_get(body, "error");
    const char *m;

    if (json_is_object(err) && (m = json_string_value(json_object_get(err, "message"))))
        return m;
    if ((m = json_string_value(err)))
        return m;
    if ((m = json_string_value(json_object_get(body, "message"))))
        return m;
    return NULL;
}

static void on_response(void *arg, const sb_http_response *resp)
{
    struct fp_send *s = arg;
    json_t *body = NULL;
    char code[32], fallback[64];

    send_unlink(s);
    if (resp->body && resp->body_len)
        body = json_loadb((const char *)resp->body, resp->body_len, 0, NULL);
    if (resp->status == 0) {
        finish_fail(s, 1, 0, "transport", resp->error ? resp->error : "no answer");
    } else if (resp->status >= 200 && resp->status < 300) {
        json_t *id = json_object_get(body, "id");
        char num[32];
        sb_send_result res = {.ok = 1};

        if (json_is_string(id)) {
            res.provider_msg_id = json_string_value(id);
        } else if (json_is_integer(id)) {
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(id));
            res.provider_msg_id = num;
        }
        s->owner->sent++;
        s->done(s->done_arg, &res);
    } else {
        const char *msg = error_message_of(body);
        int retryable = resp->status == 429 || resp->status >= 500;

        snprintf(code, sizeof(code), "http_%d", resp->status);
        snprintf(fallback, sizeof(fallback), "the provider answered %d", resp->status);
        finish_fail(s, retryable, retryable ? retry_after_of(resp, body) : 0, code,
                    msg ? msg : fallback);
    }
    json_decref(body);
    free(s);
}

static int fp_send(sb_instance *inst, void *state, const json_t *message, sb_send_done_fn done,
                   void *done_arg)
{
    struct fp_instance *fi = state;
    struct fp_send *s;
    char *url, *text;
    size_t n;
    sb_header headers[2] = {{"Content-Type", "application/json"}, {"Authorization", fi->auth}};
    sb_http_request req = {.method = "POST",
                           .headers = headers,
                           .n_headers = fi->auth ? 2 : 1,
                           .timeout_ms = SEND_TIMEOUT_MS};

    text = json_dumps(message, JSON_COMPACT);
    n = strlen(fi->base_url) + sizeof("/send");
    url = malloc(n);
    s = calloc(1, sizeof(*s));
    if (!text || !url || !s) {
        free(text);
        free(url);
        free(s);
        return -1;
    }
    /* base_url may end with a slash or not. */
    snprintf(url, n, "%s%s", fi->base_url,
             fi->base_url[0] && fi->base_url[strlen(fi->base_url) - 1] == '/' ? "send" : "/send");
    req.url = url;
    req.body = (const unsigned char *)text;
    req.body_len = strlen(text);
    s->owner = fi;
    s->done = done;
    s->done_arg = done_arg;
    /* Linked before the request: done may, in principle, come from inside it. */
    s->next = fi->sends;
    fi->sends = s;
    s->call = host->http_request(plugin_self, inst, &req, on_response, s);
    free(url);
    free(text);
    if (!s->call) {
        /* Not started (and on_response will not run): say so synchronously. */
        send_unlink(s);
        free(s);
        return -1;
    }
    return 0;
}

static void reply_json(sb_reply *reply, int status, const char *text)
{
    host->reply(reply, status, "application/json", text, strlen(text));
}

static void reply_error(sb_reply *reply, int status, const char *code, const char *message)
{
    json_t *err =
        json_pack("{s:{s:s,s:s,s:{}}}", "error", "code", code, "message", message, "details");
    char *text = err ? json_dumps(err, JSON_COMPACT) : NULL;

    if (text)
        reply_json(reply, status, text);
    else
        reply_json(reply, 500, "{\"error\":{\"code\":\"internal\",\"message\":\"oom\"}}");
    free(text);
    json_decref(err);
}

/* Copy key from src to dst when it is a string. */
static void copy_str(json_t *dst, const json_t *src, const char *key)
{
    json_t *v = json_object_get(src, key);

    if (json_is_string(v))
        json_object_set(dst, key, v);
}

static void fp_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply)
{
    struct fp_instance *fi = state;
    json_t *body, *payload;
    const char *type, *event_type;
    int rc;

    if (!req->method || strcmp(req->method, "POST") != 0) {
        host->reply_header(reply, "Allow", "POST");
        reply_error(reply, 405, "method_not_allowed", "only POST is accepted");
        return;
    }
    body = req->body && req->body_len ? json_loadb((const char *)req->body, req->body_len, 0, NULL)
                                      : NULL;
    if (!json_is_object(body)) {
        json_decref(body);
        reply_error(reply, 400, "invalid_json", "the body must be a JSON object");
        return;
    }
    type = json_string_value(json_object_get(body, "type"));
    if (!type || (strcmp(type, "message") && strcmp(type, "status"))) {
        json_decref(body);
        reply_error(reply, 400, "invalid_field", "type must be \"message\" or \"status\"");
        return;
    }
    payload = json_object();
    if (!payload) {
        json_decref(body);
        reply_error(reply, 500, "internal", "out of memory");
        return;
    }
    copy_str(payload, body, "event_id");
    copy_str(payload, body, "message_id");
    if (!strcmp(type, "message")) {
        event_type = "message.received";
        json_object_set_new(payload, "from",
                            json_is_string(json_object_get(body, "from"))
                                ? json_incref(json_object_get(body, "from"))
                                : json_null());
        json_object_set_new(payload, "text",
                            json_is_string(json_object_get(body, "text"))
                                ? json_incref(json_object_get(body, "text"))
                                : json_string(""));
    } else {
        if (!json_is_string(json_object_get(body, "message_id")) ||
            !json_is_string(json_object_get(body, "state"))) {
            json_decref(payload);
            json_decref(body);
            reply_error(reply, 400, "invalid_field", "a status needs message_id and state");
            return;
        }
        event_type = "message.status";
        copy_str(payload, body, "state");
    }
    json_decref(body);
    rc = host->emit_event(inst, event_type, payload); /* steals payload */
    if (rc != SB_OK) {
        host->reply_header(reply, "Retry-After", "1");
        reply_error(reply, 503, "event_rejected", "the host did not accept the event");
        return;
    }
    fi->webhooks++;
    reply_json(reply, 200, "{\"ok\":true}");
}

static int fp_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    const char *base = json_string_value(json_object_get(settings, "base_url"));
    const char *token = json_string_value(json_object_get(settings, "token"));
    struct fp_instance *fi;

    if (!base || !*base) {
        host->set_state(inst, SB_STATE_ERROR, "settings.base_url is required");
        return -1;
    }
    fi = calloc(1, sizeof(*fi));
    if (fi)
        fi->base_url = dup_str(base);
    if (fi && token && *token) {
        size_t n = strlen(token) + sizeof("Bearer ");
        fi->auth = malloc(n);
        if (fi->auth)
            snprintf(fi->auth, n, "Bearer %s", token);
    }
    if (!fi || !fi->base_url || (token && *token && !fi->auth)) {
        if (fi) {
            free(fi->base_url);
            free(fi->auth);
        }
        free(fi);
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    fi->inst = inst;
    fi->complete_on_stop = !json_is_false(json_object_get(settings, "complete_on_stop"));
    *state = fi;
    host->set_state(inst, SB_STATE_CONNECTED, NULL);
    return 0;
}

/*
 * Sends still waiting for the fake are the host's messages: cancel the HTTP
 * calls (their callbacks will not run) and complete each send as a transient
 * failure, so the outbox neither waits forever nor loses the message.
 */
static void fp_instance_stop(sb_instance *inst, void *state)
{
    struct fp_instance *fi = state;

    while (fi->sends) {
        struct fp_send *s = fi->sends;

        fi->sends = s->next;
        host->http_cancel(s->call);
        if (fi->complete_on_stop)
            finish_fail(s, 1, 0, "instance_stopped", "the instance stopped before the answer came");
        free(s);
    }
    free(fi->base_url);
    free(fi->auth);
    free(fi);
}

static json_t *fp_status(sb_instance *inst, void *state)
{
    const struct fp_instance *fi = state;
    size_t n = 0;

    for (const struct fp_send *s = fi->sends; s; s = s->next)
        n++;
    return json_pack("{s:s,s:I,s:I,s:I,s:I}", "base_url", fi->base_url, "sent",
                     (json_int_t)fi->sent, "failed", (json_int_t)fi->failed, "webhooks",
                     (json_int_t)fi->webhooks, "in_flight", (json_int_t)n);
}

static int fp_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    size_t needed = offsetof(sb_host_services, reply_header) + sizeof(services->reply_header);

    host = services;
    plugin_self = self;
    if (services->abi_major != SB_ABI_MAJOR || services->struct_size < needed) {
        services->log(self, NULL, SB_LOG_ERROR, "fakeprov: host services ABI %u (size %u) unusable",
                      (unsigned)services->abi_major, (unsigned)services->struct_size);
        return -1;
    }
    return 0;
}

static void fp_shutdown(sb_plugin *self)
{
    host = NULL;
    plugin_self = NULL;
}

SWITCHBOARD_PLUGIN_INIT(.name = "fakeprov", .version = FAKEPROV_VERSION,
                        .description = "Test provider speaking HTTP to a loopback fake",
                        .capabilities = SB_CAP_WEBHOOK, .settings_schema = FAKEPROV_SCHEMA,
                        .init = fp_init, .shutdown = fp_shutdown,
                        .instance_start = fp_instance_start, .instance_stop = fp_instance_stop,
                        .send = fp_send, .webhook = fp_webhook, .status = fp_status)
