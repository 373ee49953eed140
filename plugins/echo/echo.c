/*
 * echo: the reference provider plugin.
 *
 * It talks to no real messenger. A webhook POST is turned into an inbound
 * "message.received" event and answered with the request body; a send() is
 * echoed straight back as an inbound event. It exists to exercise the host
 * (loading, hot swap, reload, webhooks, timers) end to end, and as the example
 * plugin authors copy from, so it uses only the SDK headers and Jansson.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <switchboard/switchboard.h>

#ifndef ECHO_VERSION
#define ECHO_VERSION "1.0.0"
#endif

/* Upper bound of a webhook's delay_ms: long enough for drain/swap tests. */
#define ECHO_MAX_DELAY_MS 60000

/* token is a secret (writeOnly): when set, webhooks must carry it in X-Echo-Token. */
#define ECHO_SCHEMA                                                                                \
    "{\"type\":\"object\",\"properties\":{\"prefix\":{\"type\":\"string\"},"                       \
    "\"token\":{\"type\":\"string\",\"minLength\":8,\"writeOnly\":true}},"                         \
    "\"additionalProperties\":false}"

struct echo_instance;

/* A webhook whose 200 answer waits for a host timer (delay_ms). */
struct echo_pending {
    struct echo_pending *next;
    struct echo_instance *owner;
    sb_reply *reply;
    sb_timer *timer;
    /* Rendered at webhook time: the request is gone once we reply. */
    char *body;
};

struct echo_instance {
    sb_instance *inst;
    char *prefix;                 /* prepended to every echoed text */
    char *token;                  /* required X-Echo-Token value, or NULL */
    unsigned long sent;           /* sends completed, for provider_msg_id */
    struct echo_pending *pending; /* delayed webhook replies not yet answered */
};

/*
 * Each plugin generation is dlopen()ed from its own copy, so these statics are
 * per generation; the host guarantees services outlives us.
 */
static const sb_host_services *host;
static sb_plugin *plugin_self;

/* malloc'd concatenation of two strings; NULL when out of memory. */
static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a);
    size_t lb = strlen(b);
    char *out = malloc(la + lb + 1);

    if (!out)
        return NULL;
    memcpy(out, a, la);
    memcpy(out + la, b, lb + 1);
    return out;
}

/* Build the "message.received" payload: the prefix is the only transformation. */
static json_t *make_received(const struct echo_instance *ei, json_t *from, const char *text)
{
    char *prefixed = concat(ei->prefix, text);
    json_t *payload;

    if (!prefixed)
        return NULL;
    /* "from" is always present so consumers see one shape; null when unknown. */
    payload = json_pack("{s:O,s:s}", "from", from ? from : json_null(), "text", prefixed);
    free(prefixed);
    return payload;
}

/* Hand an event to the host; emit_event steals the payload in every case. */
static int emit_received(struct echo_instance *ei, json_t *from, const char *text, json_t *event_id)
{
    json_t *payload = make_received(ei, from, text);

    if (!payload)
        return SB_ENOMEM;
    /* The provider's own event id lets the host drop a redelivered webhook. */
    if (json_is_string(event_id))
        json_object_set(payload, "event_id", event_id);
    return host->emit_event(ei->inst, "message.received", payload);
}

/* Answer with a serialized JSON value (borrowed). */
static void reply_json(sb_reply *reply, int status, const json_t *value)
{
    /* Last resort when even serialising fails: the reply must still happen once. */
    static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
    char *text = json_dumps(value, JSON_COMPACT);

    if (!text) {
        host->reply(reply, 500, "application/json", oom, sizeof(oom) - 1);
        return;
    }
    host->reply(reply, status, "application/json", text, strlen(text));
    free(text);
}

/* Answer with the contract's error shape; steals details (may be NULL). */
static void reply_error(sb_reply *reply, int status, const char *code, const char *message,
                        json_t *details)
{
    /* "o*" steals details even when json_pack fails, and omits the key when NULL. */
    json_t *err = json_pack("{s:{s:s,s:s,s:o*}}", "error", "code", code, "message", message,
                            "details", details);

    reply_json(reply, status, err);
    json_decref(err);
}

static void reply_invalid_field(sb_reply *reply, const char *field, const char *message)
{
    reply_error(reply, 400, "invalid_field", message, json_pack("{s:s}", "field", field));
}

/* The success body: {"ok":true,"instance":...,"plugin_version":...,"echo":body}. */
static char *render_ok(const struct echo_instance *ei, json_t *body)
{
    json_t *ok = json_pack("{s:b,s:s,s:s,s:O}", "ok", 1, "instance", host->instance_id(ei->inst),
                           "plugin_version", ECHO_VERSION, "echo", body);
    char *text = ok ? json_dumps(ok, JSON_COMPACT) : NULL;

    json_decref(ok);
    return text;
}

static void reply_rendered(sb_reply *reply, const char *text)
{
    host->reply(reply, 200, "application/json", text, strlen(text));
}

/* Remove p from its owner's list; it must be on it. */
static void pending_unlink(struct echo_pending *p)
{
    struct echo_pending **link = &p->owner->pending;

    while (*link != p)
        link = &(*link)->next;
    *link = p->next;
}

static void pending_free(struct echo_pending *p)
{
    free(p->body);
    free(p);
}

/* Timer callback: the delay is over, send the answer rendered earlier. */
static void pending_fire(void *arg)
{
    struct echo_pending *p = arg;

    /* A fired one-shot timer is gone and must never be cancelled. */
    p->timer = NULL;
    pending_unlink(p);
    reply_rendered(p->reply, p->body);
    pending_free(p);
}

/* Park the rendered answer until delay_ms has passed; takes ownership of text. */
static void defer_reply(struct echo_instance *ei, sb_reply *reply, char *text, uint32_t delay_ms)
{
    struct echo_pending *p = calloc(1, sizeof(*p));

    if (!p) {
        free(text);
        reply_error(reply, 500, "internal", "out of memory", NULL);
        return;
    }
    p->owner = ei;
    p->reply = reply;
    p->body = text;
    p->timer = host->timer_start(plugin_self, ei->inst, delay_ms, 0, pending_fire, p);
    if (!p->timer) {
        pending_free(p);
        reply_error(reply, 503, "timer_unavailable", "could not start the delay timer", NULL);
        return;
    }
    p->next = ei->pending;
    ei->pending = p;
}

/*
 * Validate the optional delay_ms. Returns 0 and sets *delay_ms (0 when absent)
 * or -1 when the value is not an integer in range.
 */
static int parse_delay(json_t *body, uint32_t *delay_ms)
{
    json_t *v = json_object_get(body, "delay_ms");
    json_int_t ms;

    *delay_ms = 0;
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return -1;
    ms = json_integer_value(v);
    if (ms < 0 || ms > ECHO_MAX_DELAY_MS)
        return -1;
    *delay_ms = (uint32_t)ms;
    return 0;
}

/* Parse the request body; NULL (after answering 400) when it is not a JSON object. */
static json_t *parse_body(const sb_http_request *req, sb_reply *reply)
{
    json_error_t jerr;
    json_t *body;

    /* json_loadb() wants a buffer even for an empty body. */
    if (!req->body || req->body_len == 0) {
        reply_error(reply, 400, "invalid_json", "request body is empty", NULL);
        return NULL;
    }
    body = json_loadb((const char *)req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!body) {
        /* Where parsing stopped helps whoever wrote the client. */
        reply_error(reply, 400, "invalid_json", "request body is not valid JSON",
                    json_pack("{s:i,s:i,s:s}", "line", jerr.line, "column", jerr.column, "reason",
                              jerr.text));
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        reply_error(reply, 400, "invalid_json", "request body must be a JSON object", NULL);
        return NULL;
    }
    return body;
}

/*
 * Check the fields of a parsed webhook body. Returns 0, or -1 after answering
 * 400 invalid_field naming the first bad field.
 */
static int check_webhook_fields(json_t *body, sb_reply *reply, uint32_t *delay_ms)
{
    json_t *from = json_object_get(body, "from");

    if (!json_is_string(json_object_get(body, "text"))) {
        reply_invalid_field(reply, "text", "\"text\" is required and must be a string");
        return -1;
    }
    if (from && !json_is_string(from)) {
        reply_invalid_field(reply, "from", "\"from\" must be a string");
        return -1;
    }
    if (parse_delay(body, delay_ms) != 0) {
        reply_invalid_field(reply, "delay_ms", "\"delay_ms\" must be an integer from 0 to 60000");
        return -1;
    }
    return 0;
}

/* Emit the event and answer (now or after delay_ms) for a validated body. */
static void accept_webhook(struct echo_instance *ei, json_t *body, sb_reply *reply,
                           uint32_t delay_ms)
{
    char *text;

    /*
     * Emit before answering, even when the answer is delayed: a real provider
     * delivers the message when the webhook arrives, and a 5xx tells it to
     * retry, so only promise 200 once the host has the event.
     */
    if (emit_received(ei, json_object_get(body, "from"),
                      json_string_value(json_object_get(body, "text")),
                      json_object_get(body, "event_id")) != SB_OK) {
        reply_error(reply, 503, "event_rejected", "the host did not accept the event", NULL);
        return;
    }
    text = render_ok(ei, body);
    if (!text) {
        reply_error(reply, 500, "internal", "out of memory", NULL);
        return;
    }
    if (delay_ms > 0) {
        defer_reply(ei, reply, text, delay_ms);
        return;
    }
    reply_rendered(reply, text);
    free(text);
}

/* Constant-time: the token is a secret, its comparison must not leak it. */
static int token_ok(const struct echo_instance *ei, const sb_http_request *req)
{
    if (!ei->token)
        return 1;
    for (size_t i = 0; i < req->n_headers; i++) {
        if (strcasecmp(req->headers[i].name, "X-Echo-Token") != 0)
            continue;
        const char *got = req->headers[i].value;
        size_t n = strlen(ei->token), m = strlen(got);
        unsigned char diff = n != m;
        for (size_t k = 0; k < n; k++)
            diff |= (unsigned char)(ei->token[k] ^ (k < m ? got[k] : 0));
        return diff == 0;
    }
    return 0;
}

static void echo_webhook(sb_instance *inst, void *state, const sb_http_request *req,
                         sb_reply *reply)
{
    uint32_t delay_ms;
    json_t *body;

    if (!req->method || strcmp(req->method, "POST") != 0) {
        reply_error(reply, 405, "method_not_allowed", "only POST is accepted", NULL);
        return;
    }
    if (!token_ok(state, req)) {
        reply_error(reply, 401, "bad_token", "X-Echo-Token is missing or wrong", NULL);
        return;
    }
    body = parse_body(req, reply);
    if (!body)
        return;
    if (check_webhook_fields(body, reply, &delay_ms) == 0)
        accept_webhook(state, body, reply, delay_ms);
    json_decref(body);
}

/* Complete a send as failed; retryable says whether the host should try again. */
static void send_fail(sb_send_done_fn done, void *done_arg, int retryable, const char *code,
                      const char *message)
{
    sb_send_result res = {
        .ok = 0, .retryable = retryable, .error_code = code, .error_message = message};

    done(done_arg, &res);
}

static int echo_send(sb_instance *inst, void *state, const json_t *message, sb_send_done_fn done,
                     void *done_arg)
{
    struct echo_instance *ei = state;
    json_t *to = json_object_get(message, "to");
    json_t *text = json_object_get(message, "text");
    char msg_id[32];
    sb_send_result res = {.ok = 1};

    if (!json_is_string(text) || !json_is_string(to)) {
        send_fail(done, done_arg, 0, "invalid_message", "\"to\" and \"text\" must be strings");
        return 0;
    }
    /* The echo is the delivery: if the host refuses it, nothing was sent. */
    if (emit_received(ei, to, json_string_value(text), NULL) != SB_OK) {
        send_fail(done, done_arg, 1, "emit_failed", "the host did not accept the echo");
        return 0;
    }
    ei->sent++;
    snprintf(msg_id, sizeof(msg_id), "echo-%lu", ei->sent);
    res.provider_msg_id = msg_id;
    done(done_arg, &res);
    return 0;
}

static int echo_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    json_t *prefix = json_object_get(settings, "prefix");
    json_t *token = json_object_get(settings, "token");
    struct echo_instance *ei;

    /* The host validates against the schema; this guards against a host that did not. */
    if (prefix && !json_is_string(prefix)) {
        host->set_state(inst, SB_STATE_ERROR, "settings.prefix must be a string");
        return -1;
    }
    ei = calloc(1, sizeof(*ei));
    /* Copy the prefix: settings are only borrowed (and strdup is not C11). */
    if (ei)
        ei->prefix = concat("", prefix ? json_string_value(prefix) : "");
    if (ei && json_is_string(token))
        ei->token = concat("", json_string_value(token));
    if (!ei || !ei->prefix || (json_is_string(token) && !ei->token)) {
        if (ei) {
            free(ei->prefix);
            free(ei->token);
        }
        free(ei);
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    ei->inst = inst;
    *state = ei;
    /* Nothing to connect to: the instance is usable right away. */
    host->set_state(inst, SB_STATE_CONNECTED, NULL);
    host->log(plugin_self, inst, SB_LOG_INFO, "echo instance started");
    return 0;
}

/*
 * Answer our own delayed replies instead of leaving them to the host, so the
 * client gets the contract's instance_stopped error rather than a generic one.
 */
static void echo_instance_stop(sb_instance *inst, void *state)
{
    struct echo_instance *ei = state;

    while (ei->pending) {
        struct echo_pending *p = ei->pending;

        ei->pending = p->next;
        host->timer_cancel(p->timer);
        reply_error(p->reply, 503, "instance_stopped", "the instance stopped before replying",
                    NULL);
        pending_free(p);
    }
    free(ei->prefix);
    free(ei->token);
    free(ei);
}

static json_t *echo_status(sb_instance *inst, void *state)
{
    const struct echo_instance *ei = state;
    size_t n = 0;

    for (const struct echo_pending *p = ei->pending; p; p = p->next)
        n++;
    return json_pack("{s:s,s:I,s:I}", "prefix", ei->prefix, "sent", (json_int_t)ei->sent,
                     "pending_replies", (json_int_t)n);
}

static int echo_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    /* We call members up to timer_cancel; an older, shorter table lacks them. */
    size_t needed = offsetof(sb_host_services, timer_cancel) + sizeof(services->timer_cancel);

    host = services;
    plugin_self = self;
    if (services->abi_major != SB_ABI_MAJOR || services->struct_size < needed) {
        services->log(self, NULL, SB_LOG_ERROR, "echo: host services ABI %u (size %u) unusable",
                      (unsigned)services->abi_major, (unsigned)services->struct_size);
        return -1;
    }
    services->log(self, NULL, SB_LOG_INFO, "echo %s initialised", ECHO_VERSION);
    return 0;
}

static void echo_shutdown(sb_plugin *self)
{
    /* Instances are already stopped; only forget the host. */
    host = NULL;
    plugin_self = NULL;
}

SWITCHBOARD_PLUGIN_INIT(.name = "echo", .version = ECHO_VERSION,
                        .description = "Echoes webhooks and sends back as inbound messages",
                        .capabilities = SB_CAP_MEDIA | SB_CAP_BUTTONS | SB_CAP_THREADS |
                                        SB_CAP_WEBHOOK,
                        .settings_schema = ECHO_SCHEMA, .init = echo_init,
                        .shutdown = echo_shutdown, .instance_start = echo_instance_start,
                        .instance_stop = echo_instance_stop, .send = echo_send,
                        .webhook = echo_webhook, .status = echo_status)
