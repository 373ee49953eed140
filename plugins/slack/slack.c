/*
 * slack: Slack apps through the Web API, the Events API (HTTP mode) and
 * Socket Mode.
 *
 * Inbound, HTTP mode: every request to <webhook_path>/<instance>[/...] must
 * carry X-Slack-Request-Timestamp (within five minutes of now) and
 * X-Slack-Signature "v0=" + hex HMAC-SHA256(signing_secret, "v0:" + timestamp
 * + ":" + raw body), else 401. JSON bodies are Events API requests
 * (url_verification answered with the challenge; event_callback messages
 * become message.received, keyed by event_id so Slack's retries are
 * dropped by the host); form bodies are slash commands, or interactive
 * payloads (a "payload" field of JSON), which become interaction events.
 * Every verified request is answered 200 as soon as the host has stored its
 * events (Slack wants an answer within 3 s).
 *
 * Inbound, Socket Mode: apps.connections.open with the app-level token,
 * then a WebSocket to the URL it returns (the host's ws_connect); every
 * envelope is acknowledged with {"envelope_id"} once its events are handed
 * to the host; "disconnect" (warning, refresh_requested) opens the next
 * connection before the old one is dropped; a lost connection is reopened
 * with exponential backoff and jitter (1 s to 60 s).
 *
 * Outbound: chat.postMessage with text, Block Kit (a section, an image block
 * for image media, an actions block of buttons whose action_id and value are
 * the button id) and thread_ts (from "thread" or "reply_to"). HTTP 429 with
 * Retry-After, "ratelimited" and Slack's transient errors are retryable; other
 * {"ok":false,"error"} answers are permanent with Slack's error code.
 *
 * Media given as data_base64 are real file uploads, three requests chained
 * through the host's http_request: files.getUploadURLExternal (filename,
 * length) -> {upload_url, file_id}; the bytes POSTed to upload_url (no token:
 * the URL is pre-signed); files.completeUploadExternal (files=[{id,title}],
 * channel_id, initial_comment = the text or caption, thread_ts; with buttons,
 * their blocks instead of the comment). A failure at any step fails the send
 * with the same mapping, so a retry starts again from step 1. The message id
 * is the share's ts when Slack returns one, else the file id. Media given by
 * url are not downloaded: an image block, or a link in the text.
 *
 * HMAC-SHA256 comes from libcrypto (hashing only; all I/O is the host's).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <switchboard/switchboard.h>

#include "../common/plugutil.h"

#define SLACK_VERSION "1.0.0"
#define SEND_TIMEOUT_MS 10000
#define MAX_SKEW_SECONDS 300
#define BACKOFF_BASE_MS 1000
#define BACKOFF_CAP_MS 60000

#define SLACK_SCHEMA                                                                               \
    "{\"type\":\"object\",\"properties\":{"                                                        \
    "\"bot_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true,"                       \
    "\"description\":\"Bot User OAuth token (xoxb-...)\"},"                                        \
    "\"signing_secret\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true,"                  \
    "\"description\":\"Signing secret, verifies Events API, command and interactive requests\"},"  \
    "\"app_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true,"                       \
    "\"description\":\"App-level token (xapp-...) with connections:write, for Socket Mode\"},"     \
    "\"mode\":{\"enum\":[\"http\",\"socket\"],\"description\":\"http: Events API requests to "     \
    "the webhook; socket: Socket Mode WebSocket\"},"                                               \
    "\"api_base\":{\"type\":\"string\",\"minLength\":1,"                                           \
    "\"description\":\"Web API base URL, default https://slack.com/api\"}},"                       \
    "\"required\":[\"bot_token\"],\"additionalProperties\":false}"

struct sl_instance;

/* A file upload's steps (chat.postMessage sends are STEP_POST). */
enum sl_step { STEP_POST, STEP_GET_URL, STEP_UPLOAD, STEP_COMPLETE };

struct sl_send {
    struct sl_send *next;
    struct sl_instance *owner;
    sb_http_call *call;
    sb_send_done_fn done;
    void *done_arg;
    /* file uploads only */
    enum sl_step step;
    unsigned char *data;
    size_t len;
    char *file_id;
    char *complete_body; /* files.completeUploadExternal form, less the files field */
    char *title;
};

/* One Socket Mode connection. */
struct sl_conn {
    struct sl_instance *owner;
    sb_ws *ws;
    int hello;
};

struct sl_instance {
    sb_instance *inst;
    char *bot_auth; /* "Bearer xoxb-..." */
    char *signing_secret;
    char *app_auth; /* "Bearer xapp-..." or NULL */
    char *api_base;
    int socket_mode;
    struct sl_send *sends;
    sb_http_call *open_call; /* apps.connections.open in flight */
    struct sl_conn *conn;    /* the current connection */
    struct sl_conn *old;     /* the one being replaced after "disconnect" */
    sb_timer *retry_timer;
    unsigned attempt;
    unsigned long sent, failed, events, acks, refused, reconnects;
};

static const sb_host_services *host;
static sb_plugin *plugin_self;

/* ---- signatures ---- */

/* 1 when the request carries a fresh, good v0 signature; else 0 with why set. */
static int verify(const struct sl_instance *si, const sb_http_request *req, const char **why)
{
    const char *ts = pu_req_header(req, "X-Slack-Request-Timestamp");
    const char *sig = pu_req_header(req, "X-Slack-Signature");
    if (!si->signing_secret) {
        *why = "no signing_secret is configured";
        return 0;
    }
    if (!ts || !sig) {
        *why = "X-Slack-Request-Timestamp and X-Slack-Signature are required";
        return 0;
    }
    char *end = NULL;
    long long t = strtoll(ts, &end, 10);
    if (end == ts || *end) {
        *why = "bad X-Slack-Request-Timestamp";
        return 0;
    }
    long long now = (long long)time(NULL);
    if (t < now - MAX_SKEW_SECONDS || t > now + MAX_SKEW_SECONDS) {
        *why = "stale X-Slack-Request-Timestamp";
        return 0;
    }
    /* "v0:" + timestamp + ":" + body */
    size_t blen = strlen(ts) + 4 + req->body_len;
    unsigned char *base = malloc(blen + 1); /* + sprintf's NUL when the body is empty */
    if (!base) {
        *why = "out of memory";
        return 0;
    }
    int n = sprintf((char *)base, "v0:%s:", ts);
    if (req->body_len)
        memcpy(base + n, req->body, req->body_len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    int ok = HMAC(EVP_sha256(), si->signing_secret, (int)strlen(si->signing_secret), base, blen,
                  mac, &mac_len) != NULL;
    free(base);
    char want[3 + 2 * EVP_MAX_MD_SIZE + 1];
    memcpy(want, "v0=", 3);
    pu_hex(mac, mac_len, want + 3);
    if (!ok || strlen(sig) != strlen(want) || CRYPTO_memcmp(sig, want, strlen(want)) != 0) {
        *why = "bad X-Slack-Signature";
        return 0;
    }
    return 1;
}

/* ---- inbound: normalised events ---- */

static void set_str(json_t *obj, const char *key, const char *value)
{
    json_object_set_new(obj, key, value ? json_string(value) : json_null());
}

/*
 * An Events API body (event_callback). Returns 0 when handled (emitted or
 * skipped), -1 when the host refused an event.
 */
static int handle_event_callback(struct sl_instance *si, const json_t *body)
{
    const json_t *ev = json_object_get(body, "event");
    const char *etype = pu_jstr(ev, "type");
    const char *event_id = pu_jstr(body, "event_id");
    if (!json_is_object(ev) || !etype)
        return 0;
    if (strcmp(etype, "message") != 0)
        return 0; /* other event types are not ours to relay (yet) */
    /* Bots (ourselves included) and edits, deletions, joins... are not messages
     * someone sent us: see the message event's subtypes. */
    const char *subtype = pu_jstr(ev, "subtype");
    if (json_object_get(ev, "bot_id") || json_object_get(ev, "bot_profile") ||
        (subtype && strcmp(subtype, "file_share") && strcmp(subtype, "thread_broadcast")))
        return 0;
    json_t *p = json_object();
    set_str(p, "event_id", event_id);
    set_str(p, "message_id", pu_jstr(ev, "ts"));
    set_str(p, "from", pu_jstr(ev, "user"));
    set_str(p, "chat", pu_jstr(ev, "channel"));
    set_str(p, "text", pu_jstr(ev, "text") ? pu_jstr(ev, "text") : "");
    set_str(p, "thread", pu_jstr(ev, "thread_ts"));
    set_str(p, "team", pu_jstr(body, "team_id"));
    set_str(p, "channel_type", pu_jstr(ev, "channel_type"));
    if (json_object_get(ev, "files"))
        json_object_set(p, "files", json_object_get(ev, "files"));
    if (host->emit_event(si->inst, "message.received", p) != SB_OK)
        return -1;
    si->events++;
    return 0;
}

/* A slash command (the form's fields, or Socket Mode's payload object). */
static int handle_command(struct sl_instance *si, const json_t *f, const char *fallback_id)
{
    const char *trigger = pu_jstr(f, "trigger_id");
    char *eid = pu_printf("command:%s", trigger ? trigger : fallback_id ? fallback_id : "");
    json_t *p = json_object();
    set_str(p, "event_id", trigger || fallback_id ? eid : NULL);
    free(eid);
    set_str(p, "kind", "command");
    set_str(p, "command", pu_jstr(f, "command"));
    set_str(p, "text", pu_jstr(f, "text") ? pu_jstr(f, "text") : "");
    set_str(p, "from", pu_jstr(f, "user_id"));
    set_str(p, "chat", pu_jstr(f, "channel_id"));
    set_str(p, "team", pu_jstr(f, "team_id"));
    set_str(p, "trigger_id", trigger);
    set_str(p, "response_url", pu_jstr(f, "response_url"));
    if (host->emit_event(si->inst, "interaction", p) != SB_OK)
        return -1;
    si->events++;
    return 0;
}

/* An interactive payload (block_actions, view_submission, shortcut...). */
static int handle_interactive(struct sl_instance *si, const json_t *pl, const char *fallback_id)
{
    const char *type = pu_jstr(pl, "type");
    const char *trigger = pu_jstr(pl, "trigger_id");
    const json_t *actions = json_object_get(pl, "actions");
    const json_t *a0 = json_array_get(actions, 0);
    const char *action_ts = pu_jstr(a0, "action_ts");
    char *eid = NULL;
    if (trigger)
        eid = pu_printf("interactive:%s", trigger);
    else if (action_ts || fallback_id)
        eid = pu_printf("interactive:%s", action_ts ? action_ts : fallback_id);
    json_t *p = json_object();
    set_str(p, "event_id", eid);
    free(eid);
    set_str(p, "kind", type && !strcmp(type, "block_actions") ? "button" : type);
    set_str(p, "type", type);
    set_str(p, "from", pu_jstr(json_object_get(pl, "user"), "id"));
    set_str(p, "chat", pu_jstr(json_object_get(pl, "channel"), "id"));
    set_str(p, "team", pu_jstr(json_object_get(pl, "team"), "id"));
    set_str(p, "message_id", pu_jstr(json_object_get(pl, "message"), "ts"));
    set_str(p, "button_id", pu_jstr(a0, "action_id"));
    set_str(p, "value", pu_jstr(a0, "value"));
    set_str(p, "trigger_id", trigger);
    set_str(p, "response_url", pu_jstr(pl, "response_url"));
    if (actions)
        json_object_set(p, "actions", (json_t *)actions);
    if (json_object_get(pl, "view"))
        json_object_set(p, "view", json_object_get(pl, "view"));
    if (host->emit_event(si->inst, "interaction", p) != SB_OK)
        return -1;
    si->events++;
    return 0;
}

/* ---- HTTP mode ---- */

static void refuse(struct sl_instance *si, sb_reply *reply, int status, const char *code,
                   const char *why)
{
    si->refused++;
    host->metric_add(plugin_self, si->inst, "requests_refused", 1);
    host->log(plugin_self, si->inst, SB_LOG_WARN, "request refused: %s", why);
    pu_reply_error(host, reply, status, code, why);
}

static void unavailable(sb_reply *reply)
{
    pu_reply_event_rejected(host, reply);
}

static void sl_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply)
{
    struct sl_instance *si = state;
    const char *why = NULL;
    if (!req->method || strcmp(req->method, "POST") != 0) {
        host->reply_header(reply, "Allow", "POST");
        pu_reply_error(host, reply, 405, "method_not_allowed", "only POST is accepted");
        return;
    }
    if (!verify(si, req, &why)) {
        refuse(si, reply, 401, "bad_signature", why);
        return;
    }
    const char *ctype = pu_req_header(req, "Content-Type");
    int rc = 0;
    if (ctype && !strncasecmp(ctype, "application/x-www-form-urlencoded", 33)) {
        json_t *form = pu_form_decode(req->body, req->body_len);
        const char *payload = pu_jstr(form, "payload");
        if (!form) {
            pu_reply_error(host, reply, 400, "bad_form", "the form body is malformed");
            return;
        }
        if (payload) {
            json_t *pl = json_loads(payload, 0, NULL);
            if (!json_is_object(pl)) {
                json_decref(pl);
                json_decref(form);
                pu_reply_error(host, reply, 400, "bad_payload", "payload is not a JSON object");
                return;
            }
            rc = handle_interactive(si, pl, NULL);
            json_decref(pl);
        } else if (pu_jstr(form, "command")) {
            rc = handle_command(si, form, NULL);
        } else {
            json_decref(form);
            pu_reply_error(host, reply, 400, "unknown_request",
                           "neither a slash command nor an interactive payload");
            return;
        }
        json_decref(form);
        if (rc < 0)
            unavailable(reply);
        else
            host->reply(reply, 200, "text/plain", "", 0); /* acknowledged, nothing posted */
        return;
    }
    json_t *body =
        req->body_len ? json_loadb((const char *)req->body, req->body_len, 0, NULL) : NULL;
    const char *type = pu_jstr(body, "type");
    if (!json_is_object(body) || !type) {
        json_decref(body);
        pu_reply_error(host, reply, 400, "bad_body", "the body is not an Events API request");
        return;
    }
    if (!strcmp(type, "url_verification")) {
        json_t *ans = json_pack("{s:s?}", "challenge", pu_jstr(body, "challenge"));
        char *text = ans ? json_dumps(ans, JSON_COMPACT) : NULL;
        pu_reply_json(host, reply, 200, text ? text : "{}");
        free(text);
        json_decref(ans);
        json_decref(body);
        return;
    }
    if (!strcmp(type, "event_callback"))
        rc = handle_event_callback(si, body);
    json_decref(body);
    if (rc < 0)
        unavailable(reply);
    else
        pu_reply_json(host, reply, 200, "{\"ok\":true}");
}

/* ---- Socket Mode ---- */

static void start_open(struct sl_instance *si);

static void on_retry(void *arg)
{
    struct sl_instance *si = arg;
    si->retry_timer = NULL;
    start_open(si);
}

static void schedule_reconnect(struct sl_instance *si)
{
    if (si->retry_timer || si->open_call)
        return;
    uint32_t ms = pu_backoff_ms(si->attempt, BACKOFF_BASE_MS, BACKOFF_CAP_MS);
    if (si->attempt < 16)
        si->attempt++;
    si->reconnects++;
    host->log(plugin_self, si->inst, SB_LOG_INFO, "socket mode: reconnecting in %u ms",
              (unsigned)ms);
    si->retry_timer = host->timer_start(plugin_self, si->inst, ms, 0, on_retry, si);
}

static void ack(struct sl_conn *c, const char *envelope_id)
{
    json_t *a = json_pack("{s:s}", "envelope_id", envelope_id);
    char *text = a ? json_dumps(a, JSON_COMPACT) : NULL;
    if (text && host->ws_send(c->ws, 0, text, strlen(text)) == SB_OK)
        c->owner->acks++;
    free(text);
    json_decref(a);
}

static void conn_free(struct sl_conn *c)
{
    free(c);
}

static void on_socket_text(struct sl_conn *c, const unsigned char *data, size_t len)
{
    struct sl_instance *si = c->owner;
    json_t *m = json_loadb((const char *)data, len, 0, NULL);
    const char *type = pu_jstr(m, "type");
    const char *envelope_id = pu_jstr(m, "envelope_id");
    if (!json_is_object(m) || !type) {
        json_decref(m);
        return;
    }
    if (!strcmp(type, "hello")) {
        c->hello = 1;
        si->attempt = 0;
        host->set_state(si->inst, SB_STATE_CONNECTED, "socket mode");
        if (si->old && si->old != c) {
            host->ws_close(si->old->ws, 1000, "replaced");
            conn_free(si->old);
            si->old = NULL;
        }
    } else if (!strcmp(type, "disconnect")) {
        const char *reason = pu_jstr(m, "reason");
        host->log(plugin_self, si->inst, SB_LOG_INFO, "socket mode: disconnect (%s)",
                  reason ? reason : "no reason");
        if (reason && !strcmp(reason, "link_disabled")) {
            host->set_state(si->inst, SB_STATE_ERROR, "Socket Mode was disabled for the app");
        } else if (c == si->conn && !si->old && !si->open_call) {
            /* Open the next connection now; this one goes when it says hello. */
            si->old = c;
            si->conn = NULL;
            start_open(si);
        }
    } else if (envelope_id) {
        const json_t *pl = json_object_get(m, "payload");
        int rc = 0;
        if (!strcmp(type, "events_api")) {
            if (!strcmp(pu_jstr(pl, "type") ? pu_jstr(pl, "type") : "", "event_callback"))
                rc = handle_event_callback(si, pl);
        } else if (!strcmp(type, "slash_commands")) {
            rc = handle_command(si, pl, envelope_id);
        } else if (!strcmp(type, "interactive")) {
            rc = handle_interactive(si, pl, envelope_id);
        }
        /* Not acknowledged when the host refused it: Slack sends it again. */
        if (rc == 0)
            ack(c, envelope_id);
    }
    json_decref(m);
}

static void on_ws(void *arg, enum sb_ws_event ev, const unsigned char *data, size_t len, int code)
{
    struct sl_conn *c = arg;
    struct sl_instance *si = c->owner;
    switch (ev) {
    case SB_WS_OPEN:
        break;
    case SB_WS_TEXT:
        on_socket_text(c, data, len);
        break;
    case SB_WS_BINARY:
        break;
    case SB_WS_CLOSED:
        host->log(plugin_self, si->inst, SB_LOG_INFO, "socket mode: connection closed (%d %.*s)",
                  code, (int)(len > 200 ? 200 : len), (const char *)data);
        if (c == si->old) {
            si->old = NULL;
        } else if (c == si->conn) {
            si->conn = NULL;
            if (!si->old)
                host->set_state(si->inst, SB_STATE_DISCONNECTED, "socket mode connection lost");
            schedule_reconnect(si);
        }
        conn_free(c);
        break;
    }
}

static void on_open_answer(void *arg, const sb_http_response *resp)
{
    struct sl_instance *si = arg;
    si->open_call = NULL;
    json_t *body =
        resp->body_len ? json_loadb((const char *)resp->body, resp->body_len, 0, NULL) : NULL;
    const char *url = pu_jstr(body, "url");
    int ok = resp->status == 200 && json_is_true(json_object_get(body, "ok")) && url;
    if (!ok) {
        const char *err = pu_jstr(body, "error");
        char detail[160];
        snprintf(detail, sizeof(detail), "apps.connections.open failed: %s",
                 err            ? err
                 : resp->status ? "unexpected answer"
                                : resp->error);
        host->log(plugin_self, si->inst, SB_LOG_WARN, "%s (HTTP %d)", detail, resp->status);
        if (!si->old)
            host->set_state(si->inst, SB_STATE_ERROR, detail);
        json_decref(body);
        schedule_reconnect(si);
        return;
    }
    struct sl_conn *c = calloc(1, sizeof(*c));
    if (c) {
        c->owner = si;
        c->ws = host->ws_connect(plugin_self, si->inst, url, NULL, 0, on_ws, c);
    }
    json_decref(body);
    if (!c || !c->ws) {
        free(c);
        host->log(plugin_self, si->inst, SB_LOG_WARN, "socket mode: unusable WebSocket URL");
        schedule_reconnect(si);
        return;
    }
    si->conn = c;
}

static void start_open(struct sl_instance *si)
{
    if (si->open_call || si->conn)
        return;
    char *url = pu_printf("%s/apps.connections.open", si->api_base);
    sb_header h[] = {{"Authorization", si->app_auth},
                     {"Content-Type", "application/x-www-form-urlencoded"}};
    sb_http_request req = {
        .method = "POST", .url = url, .headers = h, .n_headers = 2, .timeout_ms = SEND_TIMEOUT_MS};
    if (!si->old)
        host->set_state(si->inst, SB_STATE_CONNECTING, "socket mode");
    si->open_call =
        url ? host->http_request(plugin_self, si->inst, &req, on_open_answer, si) : NULL;
    free(url);
    if (!si->open_call)
        schedule_reconnect(si);
}

/* ---- sending ---- */

static void send_unlink(struct sl_send *s)
{
    struct sl_send **link = &s->owner->sends;
    while (*link && *link != s)
        link = &(*link)->next;
    if (*link)
        *link = s->next;
}

static void finish_fail(struct sl_send *s, int retryable, uint32_t retry_after_ms, const char *code,
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

/* Slack's error codes that say "later", not "never". */
static int transient_error(const char *e)
{
    static const char *const list[] = {"ratelimited",      "rate_limited",        "internal_error",
                                       "fatal_error",      "service_unavailable", "request_timeout",
                                       "team_added_to_org"};
    for (size_t i = 0; i < sizeof(list) / sizeof(list[0]); i++)
        if (!strcmp(e, list[i]))
            return 1;
    return 0;
}

static void send_free(struct sl_send *s)
{
    free(s->data);
    free(s->file_id);
    free(s->complete_body);
    free(s->title);
    free(s);
}

static const char *step_name(enum sl_step step)
{
    switch (step) {
    case STEP_GET_URL:
        return "files.getUploadURLExternal";
    case STEP_UPLOAD:
        return "file upload";
    case STEP_COMPLETE:
        return "files.completeUploadExternal";
    default:
        return "chat.postMessage";
    }
}

/*
 * Shared error mapping: 1 when resp is a success (for Web API methods, 200 with
 * "ok":true), else 0 after failing the send (the caller then frees it).
 */
static int answer_ok(struct sl_send *s, const sb_http_response *resp, const json_t *body)
{
    char code[48], msg[200];
    if (resp->status == 0) {
        finish_fail(s, 1, 0, "transport", resp->error ? resp->error : "no answer");
    } else if (resp->status == 429) {
        snprintf(msg, sizeof(msg), "%s: Slack answered 429 Too Many Requests", step_name(s->step));
        finish_fail(s, 1, pu_retry_after_header(resp), "ratelimited", msg);
    } else if (resp->status >= 500) {
        snprintf(code, sizeof(code), "http_%d", resp->status);
        snprintf(msg, sizeof(msg), "%s: Slack answered a server error", step_name(s->step));
        finish_fail(s, 1, pu_retry_after_header(resp), code, msg);
    } else if (s->step == STEP_UPLOAD) {
        if (resp->status == 200)
            return 1;
        snprintf(code, sizeof(code), "http_%d", resp->status);
        finish_fail(s, 0, 0, code, "file upload: Slack refused the bytes");
    } else if (resp->status == 200 && json_is_true(json_object_get(body, "ok"))) {
        return 1;
    } else {
        const char *err = pu_jstr(body, "error");
        if (!err) {
            snprintf(code, sizeof(code), "http_%d", resp->status);
            snprintf(msg, sizeof(msg), "%s: Slack's answer is not an API response",
                     step_name(s->step));
            finish_fail(s, 0, 0, code, msg);
        } else {
            snprintf(msg, sizeof(msg), "%s: %s", step_name(s->step), err);
            finish_fail(s, transient_error(err), pu_retry_after_header(resp), err, msg);
        }
    }
    return 0;
}

static void finish_ok(struct sl_send *s, const char *provider_msg_id)
{
    sb_send_result res = {.ok = 1, .provider_msg_id = provider_msg_id};
    s->owner->sent++;
    s->done(s->done_arg, &res);
}

static void on_send_answer(void *arg, const sb_http_response *resp)
{
    struct sl_send *s = arg;
    s->call = NULL;
    send_unlink(s);
    json_t *body =
        resp->body_len ? json_loadb((const char *)resp->body, resp->body_len, 0, NULL) : NULL;
    if (answer_ok(s, resp, body))
        finish_ok(s, pu_jstr(body, "ts"));
    json_decref(body);
    send_free(s);
}

/* The chat.postMessage body for a neutral message (new reference). */
static json_t *render(const json_t *m)
{
    const char *text = pu_jstr(m, "text");
    const char *thread = pu_jstr(m, "thread");
    const char *reply_to = pu_jstr(m, "reply_to");
    const json_t *buttons = json_object_get(m, "buttons");
    const json_t *media = json_object_get(m, "media");
    const char *murl = pu_jstr(media, "url");
    const char *mime = pu_jstr(media, "mime_type");
    const char *caption = pu_jstr(media, "caption");
    int image = murl && ((mime && !strncmp(mime, "image/", 6)) || !mime);
    json_t *body = json_object();
    set_str(body, "channel", pu_jstr(m, "to"));
    char *full = NULL;
    if (murl && !image)
        full = pu_printf("%s%s<%s|%s>", text ? text : "", text && *text ? "\n" : "", murl,
                         caption ? caption : murl);
    const char *t = full ? full : text ? text : caption ? caption : "";
    json_object_set_new(body, "text", json_string(t));
    if (thread || reply_to)
        set_str(body, "thread_ts", thread ? thread : reply_to);
    if (json_array_size(buttons) || (murl && image)) {
        json_t *blocks = json_array();
        if (*t)
            json_array_append_new(blocks, json_pack("{s:s,s:{s:s,s:s}}", "type", "section", "text",
                                                    "type", "mrkdwn", "text", t));
        if (murl && image)
            json_array_append_new(blocks, json_pack("{s:s,s:s,s:s}", "type", "image", "image_url",
                                                    murl, "alt_text", caption ? caption : "image"));
        if (json_array_size(buttons)) {
            json_t *els = json_array();
            size_t i;
            json_t *b;
            json_array_foreach (buttons, i, b) {
                const char *id = pu_jstr(b, "id"), *title = pu_jstr(b, "title");
                if (!id || !title)
                    continue;
                json_array_append_new(els,
                                      json_pack("{s:s,s:{s:s,s:s,s:b},s:s,s:s}", "type", "button",
                                                "text", "type", "plain_text", "text", title,
                                                "emoji", 1, "action_id", id, "value", id));
            }
            json_array_append_new(blocks,
                                  json_pack("{s:s,s:o}", "type", "actions", "elements", els));
        }
        json_object_set_new(body, "blocks", blocks);
    }
    free(full);
    return body;
}

/* ---- file uploads: getUploadURLExternal, the bytes, completeUploadExternal ---- */

/* Appends "&key=value" (no "&" first), value percent-encoded for a form. */
static void form_add(struct pu_buf *b, const char *key, const char *value)
{
    static const char hex[] = "0123456789ABCDEF";
    if (b->len)
        pu_buf_add(b, "&", 1);
    pu_buf_str(b, key);
    pu_buf_add(b, "=", 1);
    for (const unsigned char *c = (const unsigned char *)value; *c; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
            *c == '-' || *c == '_' || *c == '.' || *c == '~') {
            pu_buf_add(b, c, 1);
        } else {
            char e[3] = {'%', hex[*c >> 4], hex[*c & 15]};
            pu_buf_add(b, e, 3);
        }
    }
}

static void on_upload_answer(void *arg, const sb_http_response *resp);

/* Starts the request of s's current step; 0, or -1 (nothing in flight). */
static int upload_request(struct sl_send *s, const char *url, const char *ctype,
                          const unsigned char *body, size_t len, int auth)
{
    sb_header h[2];
    size_t n = 0;
    if (auth)
        h[n++] = (sb_header){"Authorization", s->owner->bot_auth};
    h[n++] = (sb_header){"Content-Type", ctype};
    sb_http_request req = {.method = "POST",
                           .url = url,
                           .headers = h,
                           .n_headers = n,
                           .body = body,
                           .body_len = len,
                           .timeout_ms = SEND_TIMEOUT_MS};
    s->call = host->http_request(plugin_self, s->owner->inst, &req, on_upload_answer, s);
    return s->call ? 0 : -1;
}

/* Step 3: share the uploaded file in the channel. */
static int upload_complete(struct sl_send *s)
{
    json_t *files = json_pack("[{s:s,s:s}]", "id", s->file_id, "title", s->title);
    char *ftext = files ? json_dumps(files, JSON_COMPACT) : NULL;
    json_decref(files);
    if (!ftext)
        return -1;
    struct pu_buf b = {0};
    form_add(&b, "files", ftext);
    free(ftext);
    pu_buf_add(&b, "&", 1);
    pu_buf_str(&b, s->complete_body);
    char *url = pu_printf("%s/files.completeUploadExternal", s->owner->api_base);
    int rc = -1;
    if (url && !b.oom && b.p)
        rc = upload_request(s, url, "application/x-www-form-urlencoded", (const unsigned char *)b.p,
                            b.len, 1);
    free(url);
    pu_buf_free(&b);
    return rc;
}

/* The message id of a completed upload: the share's ts when Slack gives one. */
static const char *share_ts(const json_t *body)
{
    const json_t *f0 = json_array_get(json_object_get(body, "files"), 0);
    const json_t *shares = json_object_get(f0, "shares");
    const char *kind, *chan;
    const json_t *byk, *list;
    json_object_foreach ((json_t *)shares, kind, byk) {
        json_object_foreach ((json_t *)byk, chan, list) {
            const char *ts = pu_jstr(json_array_get(list, 0), "ts");
            if (ts)
                return ts;
        }
    }
    return NULL;
}

static void on_upload_answer(void *arg, const sb_http_response *resp)
{
    struct sl_send *s = arg;
    s->call = NULL;
    send_unlink(s); /* back on the list only while a next request is in flight */
    json_t *body = NULL;
    if (s->step != STEP_UPLOAD && resp->body_len)
        body = json_loadb((const char *)resp->body, resp->body_len, 0, NULL);
    if (!answer_ok(s, resp, body)) {
        json_decref(body);
        send_free(s);
        return;
    }
    int rc = -1;
    if (s->step == STEP_GET_URL) {
        const char *up = pu_jstr(body, "upload_url"), *fid = pu_jstr(body, "file_id");
        if (!up || !fid) {
            finish_fail(s, 0, 0, "bad_answer",
                        "files.getUploadURLExternal: no upload_url or file_id in the answer");
            json_decref(body);
            send_free(s);
            return;
        }
        s->file_id = pu_strdup(fid);
        s->step = STEP_UPLOAD;
        if (s->file_id)
            rc = upload_request(s, up, "application/octet-stream", s->data, s->len, 0);
    } else if (s->step == STEP_UPLOAD) {
        s->step = STEP_COMPLETE;
        rc = upload_complete(s);
    } else {
        const char *ts = share_ts(body);
        finish_ok(s, ts ? ts : s->file_id);
        json_decref(body);
        send_free(s);
        return;
    }
    json_decref(body);
    if (rc < 0) {
        finish_fail(s, 1, 0, "transport", "could not start the next upload request");
        send_free(s);
        return;
    }
    s->next = s->owner->sends;
    s->owner->sends = s;
}

/*
 * media.data_base64: a file upload. Returns 0 (started, or failed through
 * done with why), -1 when refused (nothing called).
 */
static int send_upload(struct sl_instance *si, const json_t *m, sb_send_done_fn done,
                       void *done_arg)
{
    const json_t *media = json_object_get(m, "media");
    const char *text = pu_jstr(m, "text");
    const char *caption = pu_jstr(media, "caption");
    const char *filename = pu_jstr(media, "filename");
    const char *thread = pu_jstr(m, "thread") ? pu_jstr(m, "thread") : pu_jstr(m, "reply_to");
    const char *why = NULL;
    struct sl_send *s = calloc(1, sizeof(*s));
    if (!s)
        return -1;
    s->owner = si;
    s->done = done;
    s->done_arg = done_arg;
    s->step = STEP_GET_URL;
    if (!filename || !*filename)
        filename = "file";
    if (pu_base64_decode(pu_jstr(media, "data_base64"), &s->data, &s->len))
        why = "media.data_base64 is not valid base64";
    else if (!s->len)
        why = "media.data_base64 is empty";
    if (why) {
        sb_send_result res = {.ok = 0, .error_code = "invalid_message", .error_message = why};
        si->failed++;
        done(done_arg, &res);
        send_free(s);
        return 0;
    }
    /* The message text (or the caption) is the comment; the caption (or the file name) the
     * title. With buttons, their blocks go instead (Slack ignores blocks next to a comment). */
    const char *comment = text && *text ? text : caption;
    s->title = pu_strdup(caption && *caption ? caption : filename);
    struct pu_buf cb = {0};
    form_add(&cb, "channel_id", pu_jstr(m, "to"));
    if (json_array_size(json_object_get(m, "buttons"))) {
        json_t *copy = json_deep_copy(m);
        json_object_del(copy, "media");
        if (!pu_jstr(copy, "text") && comment)
            json_object_set_new(copy, "text", json_string(comment));
        json_t *rendered = copy ? render(copy) : NULL;
        char *blocks =
            rendered ? json_dumps(json_object_get(rendered, "blocks"), JSON_COMPACT) : NULL;
        if (blocks)
            form_add(&cb, "blocks", blocks);
        else
            cb.oom = 1;
        free(blocks);
        json_decref(rendered);
        json_decref(copy);
    } else if (comment && *comment) {
        form_add(&cb, "initial_comment", comment);
    }
    if (thread)
        form_add(&cb, "thread_ts", thread);
    s->complete_body = cb.oom ? NULL : cb.p;
    if (cb.oom)
        pu_buf_free(&cb);
    char lenbuf[32];
    snprintf(lenbuf, sizeof(lenbuf), "%zu", s->len);
    struct pu_buf b = {0};
    form_add(&b, "filename", filename);
    form_add(&b, "length", lenbuf);
    char *url = pu_printf("%s/files.getUploadURLExternal", si->api_base);
    int rc = -1;
    if (url && s->title && s->complete_body && !b.oom) {
        s->next = si->sends;
        si->sends = s;
        rc = upload_request(s, url, "application/x-www-form-urlencoded", (const unsigned char *)b.p,
                            b.len, 1);
        if (rc < 0)
            send_unlink(s);
    }
    free(url);
    pu_buf_free(&b);
    if (rc < 0)
        send_free(s);
    return rc;
}

static int sl_send(sb_instance *inst, void *state, const json_t *message, sb_send_done_fn done,
                   void *done_arg)
{
    struct sl_instance *si = state;
    if (!pu_jstr(message, "to"))
        return -1;
    if (pu_jstr(json_object_get(message, "media"), "data_base64"))
        return send_upload(si, message, done, done_arg);
    json_t *body = render(message);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    char *url = pu_printf("%s/chat.postMessage", si->api_base);
    struct sl_send *s = calloc(1, sizeof(*s));
    json_decref(body);
    if (!text || !url || !s) {
        free(text);
        free(url);
        free(s);
        return -1;
    }
    sb_header h[] = {{"Authorization", si->bot_auth},
                     {"Content-Type", "application/json; charset=utf-8"}};
    sb_http_request req = {.method = "POST",
                           .url = url,
                           .headers = h,
                           .n_headers = 2,
                           .body = (const unsigned char *)text,
                           .body_len = strlen(text),
                           .timeout_ms = SEND_TIMEOUT_MS};
    s->owner = si;
    s->done = done;
    s->done_arg = done_arg;
    s->next = si->sends;
    si->sends = s;
    s->call = host->http_request(plugin_self, inst, &req, on_send_answer, s);
    free(url);
    free(text);
    if (!s->call) {
        send_unlink(s);
        free(s);
        return -1;
    }
    return 0;
}

/* ---- instances ---- */

static void instance_free(struct sl_instance *si)
{
    free(si->bot_auth);
    free(si->signing_secret);
    free(si->app_auth);
    free(si->api_base);
    free(si);
}

static int sl_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    const char *bot = pu_jstr(settings, "bot_token");
    const char *secret = pu_jstr(settings, "signing_secret");
    const char *app = pu_jstr(settings, "app_token");
    const char *mode = pu_jstr(settings, "mode");
    const char *base = pu_jstr(settings, "api_base");
    if (!bot || !*bot) {
        host->set_state(inst, SB_STATE_ERROR, "settings.bot_token is required");
        return -1;
    }
    int socket = mode && !strcmp(mode, "socket");
    if (mode && !socket && strcmp(mode, "http")) {
        host->set_state(inst, SB_STATE_ERROR, "settings.mode must be http or socket");
        return -1;
    }
    if (socket && (!app || !*app)) {
        host->set_state(inst, SB_STATE_ERROR, "Socket Mode needs settings.app_token");
        return -1;
    }
    struct sl_instance *si = calloc(1, sizeof(*si));
    if (!si) {
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    si->inst = inst;
    si->socket_mode = socket;
    si->bot_auth = pu_printf("Bearer %s", bot);
    si->signing_secret = pu_strdup(secret && *secret ? secret : NULL);
    si->app_auth = app && *app ? pu_printf("Bearer %s", app) : NULL;
    si->api_base = pu_strdup(base && *base ? base : "https://slack.com/api");
    if (si->api_base) {
        size_t n = strlen(si->api_base);
        while (n > 1 && si->api_base[n - 1] == '/')
            si->api_base[--n] = 0;
    }
    if (!si->bot_auth || !si->api_base || (secret && *secret && !si->signing_secret) ||
        (app && *app && !si->app_auth)) {
        instance_free(si);
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    *state = si;
    if (socket)
        start_open(si);
    else
        host->set_state(inst, SB_STATE_CONNECTED, "events over HTTP");
    return 0;
}

static void sl_instance_stop(sb_instance *inst, void *state)
{
    struct sl_instance *si = state;
    while (si->sends) {
        struct sl_send *s = si->sends;
        si->sends = s->next;
        host->http_cancel(s->call);
        finish_fail(s, 1, 0, "instance_stopped", "the instance stopped before Slack answered");
        send_free(s);
    }
    if (si->open_call)
        host->http_cancel(si->open_call);
    if (si->retry_timer)
        host->timer_cancel(si->retry_timer);
    struct sl_conn *conns[2] = {si->conn, si->old};
    for (int i = 0; i < 2; i++)
        if (conns[i]) {
            host->ws_close(conns[i]->ws, 1000, "stopping");
            conn_free(conns[i]);
        }
    instance_free(si);
}

static json_t *sl_status(sb_instance *inst, void *state)
{
    const struct sl_instance *si = state;
    json_t *st = json_pack("{s:s,s:I,s:I,s:I,s:I}", "mode", si->socket_mode ? "socket" : "http",
                           "sent", (json_int_t)si->sent, "failed", (json_int_t)si->failed, "events",
                           (json_int_t)si->events, "refused", (json_int_t)si->refused);
    if (st && si->socket_mode)
        json_object_set_new(st, "socket",
                            json_pack("{s:b,s:I,s:I}", "connected", si->conn && si->conn->hello,
                                      "acks", (json_int_t)si->acks, "reconnects",
                                      (json_int_t)si->reconnects));
    return st;
}

static int sl_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    host = services;
    plugin_self = self;
    if (!pu_services_usable(services, self, "slack", PU_SERVICES_THROUGH(reply_header)))
        return -1;
    return 0;
}

static void sl_shutdown(sb_plugin *self)
{
    host = NULL;
    plugin_self = NULL;
}

SWITCHBOARD_PLUGIN_INIT(.name = "slack", .version = SLACK_VERSION,
                        .description = "Slack: Web API, Events API over HTTP, Socket Mode",
                        .capabilities = SB_CAP_MEDIA | SB_CAP_BUTTONS | SB_CAP_THREADS |
                                        SB_CAP_WEBHOOK,
                        .settings_schema = SLACK_SCHEMA, .init = sl_init, .shutdown = sl_shutdown,
                        .instance_start = sl_instance_start, .instance_stop = sl_instance_stop,
                        .send = sl_send, .webhook = sl_webhook, .status = sl_status)
