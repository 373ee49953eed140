/*
 * discord: Discord bots through the REST API, the Gateway and the
 * interactions endpoint.
 *
 * Gateway (the host's WebSocket): Hello -> heartbeats every
 * heartbeat_interval, the first after interval * random(0..1); a heartbeat
 * due while the previous one is unacknowledged means a zombie connection:
 * it is closed (4000, so the session stays resumable) and resumed. Identify
 * carries the configured intents (MESSAGE_CONTENT added unless
 * message_content is false); READY's session_id, resume_gateway_url and
 * every dispatch's sequence are kept in the instance's key-value store, so a
 * drop, a Reconnect (op 7), a resumable Invalid Session (op 9, d true) and a
 * daemon restart all Resume on resume_gateway_url; Invalid Session with d
 * false, and close codes 4007/4009, start a new session after 1-5 s. Close
 * codes 4004 and 4010-4014 stop the instance (error state). Other losses are
 * retried after 1 s doubling to 60 s with jitter.
 *
 * Inbound: MESSAGE_CREATE (not our own) -> message.received; interactions
 * (INTERACTION_CREATE on the Gateway, or POSTs to the interactions endpoint
 * at <webhook_path>/<instance>, verified with Ed25519 over
 * X-Signature-Timestamp + body against public_key, else 401) -> interaction,
 * answered with a deferred response: type 5 for commands and modals, 6 for
 * components; PING is answered with PONG.
 *
 * Outbound: POST /channels/{id}/messages with content, embeds, components
 * (buttons become action rows; provider_options.components/embeds/
 * allowed_mentions pass through) and message_reference for replies; a thread
 * is a channel, so "thread" replaces the channel. Sends are paced per
 * rate-limit bucket (X-RateLimit-Remaining/-Reset-After; one request at a
 * time until a bucket's limits are known) and by the global 50 requests/s;
 * a 429 is retryable with the body's retry_after (global ones hold every
 * bucket). Slash commands in settings.commands are registered on start with
 * PUT /applications/{application_id}/commands.
 *
 * libcrypto is linked for Ed25519 verification only; all I/O is the host's.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include <switchboard/switchboard.h>

#include "../common/plugutil.h"

#define DISCORD_VERSION "1.0.0"
#define REST_TIMEOUT_MS 15000
#define BACKOFF_BASE_MS 1000
#define BACKOFF_CAP_MS 60000
#define GLOBAL_PER_SECOND 50
#define MAX_SKEW_SECONDS 300
#define DEFAULT_INTENTS ((1 << 0) | (1 << 9) | (1 << 12)) /* GUILDS, GUILD_MESSAGES, DMs */
#define MESSAGE_CONTENT_INTENT (1 << 15)

#define DISCORD_SCHEMA                                                                             \
    "{\"type\":\"object\",\"properties\":{"                                                        \
    "\"bot_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true,"                       \
    "\"description\":\"Bot token (sent as Authorization: Bot <token>)\"},"                         \
    "\"application_id\":{\"type\":\"string\",\"pattern\":\"^[0-9]+$\"},"                           \
    "\"public_key\":{\"type\":\"string\",\"pattern\":\"^[0-9a-fA-F]{64}$\","                       \
    "\"description\":\"Application public key (hex), verifies the interactions endpoint\"},"       \
    "\"intents\":{\"type\":\"integer\",\"minimum\":0,"                                             \
    "\"description\":\"Gateway intents bit set; default GUILDS|GUILD_MESSAGES|DIRECT_MESSAGES\"}," \
    "\"message_content\":{\"type\":\"boolean\",\"description\":\"add the MESSAGE_CONTENT "         \
    "intent (privileged), default true\"},"                                                        \
    "\"gateway\":{\"type\":\"boolean\",\"description\":\"connect to the Gateway, default true\"}," \
    "\"api_base\":{\"type\":\"string\",\"minLength\":1,"                                           \
    "\"description\":\"REST base, default https://discord.com/api/v10\"},"                         \
    "\"gateway_url\":{\"type\":\"string\",\"minLength\":1,"                                        \
    "\"description\":\"Gateway URL, default wss://gateway.discord.gg\"},"                          \
    "\"commands\":{\"type\":\"array\",\"items\":{\"type\":\"object\"},"                            \
    "\"description\":\"application commands registered on start (bulk overwrite)\"}},"             \
    "\"required\":[\"bot_token\"],\"additionalProperties\":false}"

struct dc_instance;

struct dc_send {
    struct dc_send *next;
    struct dc_instance *owner;
    struct dc_bucket *bucket;
    sb_http_call *call;
    char *url;
    char *body;
    sb_send_done_fn done;
    void *done_arg;
};

/* One rate-limit bucket: POST /channels/{id}/messages per channel (the major parameter). */
struct dc_bucket {
    struct dc_bucket *next;
    struct dc_instance *owner;
    char *key;
    char hash[64];
    int known, limit, remaining, inflight;
    long long reset_at; /* monotonic ms */
    struct dc_send *head, **tail;
    sb_timer *timer;
};

struct dc_instance {
    sb_instance *inst;
    char *auth; /* "Bot <token>" */
    char *token;
    char *app_id;
    EVP_PKEY *pubkey;
    char *api_base;
    char *gateway_url;
    long long intents;
    int use_gateway;
    json_t *commands;
    /* gateway */
    sb_ws *ws;
    sb_timer *hb_timer;
    int hb_repeating;
    sb_timer *retry_timer;
    sb_timer *cmd_timer;
    unsigned cmd_attempts;
    int ack_pending;
    int ready;
    unsigned attempt;
    uint32_t hb_interval;
    long long seq;
    char *session_id, *resume_url, *self_id;
    int stopped_for_good;
    /* REST */
    struct dc_send *inflight; /* sent, waiting for their answers */
    struct dc_bucket *buckets;
    long long global_until, window_start;
    int window_count;
    unsigned long sent, failed, events, refused, heartbeats, acks, identifies, resumes, reconnects,
        dispatches, rate_limited;
};

static const sb_host_services *host;
static sb_plugin *plugin_self;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_str(json_t *obj, const char *key, const char *value)
{
    json_object_set_new(obj, key, value ? json_string(value) : json_null());
}

static void set_copy(json_t *obj, const char *key, json_t *value)
{
    if (value)
        json_object_set(obj, key, value);
}

/* ---- normalised inbound events ---- */

static json_t *interaction_event(const json_t *ix)
{
    const json_t *data = json_object_get(ix, "data");
    const json_t *user = json_object_get(json_object_get(ix, "member"), "user");
    if (!user)
        user = json_object_get(ix, "user");
    json_int_t type = json_integer_value(json_object_get(ix, "type"));
    json_int_t ctype = json_integer_value(json_object_get(data, "component_type"));
    const char *kind = type == 2   ? "command"
                       : type == 3 ? (ctype == 2 ? "button" : "select")
                       : type == 4 ? "autocomplete"
                       : type == 5 ? "modal"
                                   : "other";
    const char *id = pu_jstr(ix, "id");
    char *eid = id ? pu_printf("interaction:%s", id) : NULL;
    json_t *p = json_object();
    set_str(p, "event_id", eid);
    free(eid);
    set_str(p, "kind", kind);
    set_str(p, "interaction_id", id);
    set_str(p, "interaction_token", pu_jstr(ix, "token"));
    set_str(p, "application_id", pu_jstr(ix, "application_id"));
    set_str(p, "command", pu_jstr(data, "name"));
    set_copy(p, "options", json_object_get(data, "options"));
    set_str(p, "button_id", pu_jstr(data, "custom_id"));
    set_copy(p, "values", json_object_get(data, "values"));
    set_str(p, "from", pu_jstr(user, "id"));
    set_str(p, "from_name", pu_jstr(user, "username"));
    set_str(p, "chat", pu_jstr(ix, "channel_id"));
    set_str(p, "guild", pu_jstr(ix, "guild_id"));
    set_str(p, "message_id", pu_jstr(json_object_get(ix, "message"), "id"));
    return p;
}

/* The deferred answer an interaction gets (ours to send within 3 s). */
static const char *deferred_response(json_int_t type)
{
    switch (type) {
    case 1:
        return "{\"type\":1}"; /* PONG */
    case 3:
        return "{\"type\":6}"; /* DEFERRED_UPDATE_MESSAGE */
    case 4:
        return "{\"type\":8,\"data\":{\"choices\":[]}}";
    default:
        return "{\"type\":5}"; /* DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE */
    }
}

static int emit_message(struct dc_instance *di, const json_t *m)
{
    const json_t *author = json_object_get(m, "author");
    const char *author_id = pu_jstr(author, "id");
    if (di->self_id && author_id && !strcmp(author_id, di->self_id))
        return 0; /* our own message */
    const char *id = pu_jstr(m, "id");
    char *eid = id ? pu_printf("message:%s", id) : NULL;
    json_t *p = json_object();
    set_str(p, "event_id", eid);
    free(eid);
    set_str(p, "message_id", id);
    set_str(p, "from", author_id);
    set_str(p, "from_name", pu_jstr(author, "username"));
    set_str(p, "chat", pu_jstr(m, "channel_id"));
    set_str(p, "guild", pu_jstr(m, "guild_id"));
    set_str(p, "text", pu_jstr(m, "content") ? pu_jstr(m, "content") : "");
    set_str(p, "reply_to", pu_jstr(json_object_get(m, "message_reference"), "message_id"));
    json_object_set_new(p, "bot", json_boolean(json_is_true(json_object_get(author, "bot"))));
    if (json_array_size(json_object_get(m, "attachments")))
        set_copy(p, "attachments", json_object_get(m, "attachments"));
    if (host->emit_event(di->inst, "message.received", p) != SB_OK)
        return -1;
    di->events++;
    return 0;
}

/* ---- interactions endpoint ---- */

static int verify(const struct dc_instance *di, const sb_http_request *req, const char **why)
{
    const char *sig_hex = pu_req_header(req, "X-Signature-Ed25519");
    const char *ts = pu_req_header(req, "X-Signature-Timestamp");
    unsigned char sig[64];
    if (!di->pubkey) {
        *why = "no public_key is configured";
        return 0;
    }
    if (!sig_hex || !ts) {
        *why = "X-Signature-Ed25519 and X-Signature-Timestamp are required";
        return 0;
    }
    if (pu_unhex(sig_hex, sig, sizeof(sig)) < 0) {
        *why = "bad X-Signature-Ed25519";
        return 0;
    }
    size_t tl = strlen(ts), n = tl + req->body_len;
    unsigned char *msg = malloc(n ? n : 1);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = 0;
    if (msg && ctx) {
        memcpy(msg, ts, tl);
        if (req->body_len)
            memcpy(msg + tl, req->body, req->body_len);
        ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, di->pubkey) == 1 &&
             EVP_DigestVerify(ctx, sig, sizeof(sig), msg, n) == 1;
    }
    EVP_MD_CTX_free(ctx);
    free(msg);
    if (!ok) {
        *why = "bad X-Signature-Ed25519";
        return 0;
    }
    /* Signed, but replayed long after: refused too (our rule, not Discord's). */
    char *end = NULL;
    long long t = strtoll(ts, &end, 10);
    long long now = (long long)time(NULL);
    if (end == ts || *end || t < now - MAX_SKEW_SECONDS || t > now + MAX_SKEW_SECONDS) {
        *why = "stale X-Signature-Timestamp";
        return 0;
    }
    return 1;
}

static void dc_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply)
{
    struct dc_instance *di = state;
    const char *why = NULL;
    if (!req->method || strcmp(req->method, "POST") != 0) {
        host->reply_header(reply, "Allow", "POST");
        pu_reply_error(host, reply, 405, "method_not_allowed", "only POST is accepted");
        return;
    }
    if (!verify(di, req, &why)) {
        di->refused++;
        host->metric_add(plugin_self, di->inst, "requests_refused", 1);
        host->log(plugin_self, di->inst, SB_LOG_WARN, "interaction refused: %s", why);
        pu_reply_error(host, reply, 401, "bad_signature", why);
        return;
    }
    json_t *ix = json_loadb((const char *)req->body, req->body_len, 0, NULL);
    json_t *type = json_object_get(ix, "type");
    if (!json_is_object(ix) || !json_is_integer(type)) {
        json_decref(ix);
        pu_reply_error(host, reply, 400, "bad_body", "not an interaction");
        return;
    }
    json_int_t t = json_integer_value(type);
    if (t != 1) {
        if (host->emit_event(di->inst, "interaction", interaction_event(ix)) != SB_OK) {
            json_decref(ix);
            pu_reply_event_rejected(host, reply);
            return;
        }
        di->events++;
    }
    json_decref(ix);
    pu_reply_json(host, reply, 200, deferred_response(t));
}

/* ---- REST: generic calls (interaction callbacks, command registration) ---- */

static void on_callback_answer(void *arg, const sb_http_response *resp)
{
    struct dc_instance *di = arg;
    if (resp->status < 200 || resp->status >= 300)
        host->log(plugin_self, di->inst, SB_LOG_WARN, "interaction callback answered %d",
                  resp->status);
}

static sb_http_call *rest(struct dc_instance *di, const char *method, const char *path,
                          const char *body, sb_http_done_fn done, void *arg)
{
    char *url = pu_printf("%s%s", di->api_base, path);
    sb_header h[] = {
        {"Authorization", di->auth},
        {"Content-Type", "application/json"},
        {"User-Agent", "DiscordBot (https://example.invalid/switchboard, " DISCORD_VERSION ")"}};
    sb_http_request req = {.method = method,
                           .url = url,
                           .headers = h,
                           .n_headers = 3,
                           .body = (const unsigned char *)body,
                           .body_len = body ? strlen(body) : 0,
                           .timeout_ms = REST_TIMEOUT_MS};
    sb_http_call *call = url ? host->http_request(plugin_self, di->inst, &req, done, arg) : NULL;
    free(url);
    return call;
}

static void register_commands(void *arg);

static void on_commands_answer(void *arg, const sb_http_response *resp)
{
    struct dc_instance *di = arg;
    if (resp->status >= 200 && resp->status < 300) {
        host->log(plugin_self, di->inst, SB_LOG_INFO, "%zu application commands registered",
                  json_array_size(di->commands));
        return;
    }
    host->log(plugin_self, di->inst, SB_LOG_WARN, "registering commands: HTTP %d %.*s",
              resp->status, (int)(resp->body_len > 300 ? 300 : resp->body_len),
              resp->body ? (const char *)resp->body : "");
    if ((resp->status == 429 || resp->status >= 500 || resp->status == 0) && di->cmd_attempts < 5) {
        json_t *b =
            resp->body_len ? json_loadb((const char *)resp->body, resp->body_len, 0, NULL) : NULL;
        uint32_t ms = pu_secs_to_ms(json_number_value(json_object_get(b, "retry_after")));
        json_decref(b);
        if (!ms)
            ms = pu_backoff_ms(di->cmd_attempts, 1000, 30000);
        di->cmd_timer = host->timer_start(plugin_self, di->inst, ms, 0, register_commands, di);
    }
}

static void register_commands(void *arg)
{
    struct dc_instance *di = arg;
    di->cmd_timer = NULL;
    di->cmd_attempts++;
    char *path = pu_printf("/applications/%s/commands", di->app_id);
    char *body = json_dumps(di->commands, JSON_COMPACT);
    if (path && body)
        rest(di, "PUT", path, body, on_commands_answer, di);
    free(path);
    free(body);
}

/* ---- Gateway ---- */

static void gw_connect(void *arg);

static void kv_put(struct dc_instance *di, const char *key, const char *value)
{
    host->kv_set(di->inst, key, value ? value : "");
}

static void save_seq(struct dc_instance *di)
{
    char num[32];
    snprintf(num, sizeof(num), "%lld", di->seq);
    kv_put(di, "seq", di->seq >= 0 ? num : "");
}

static void forget_session(struct dc_instance *di)
{
    free(di->session_id);
    free(di->resume_url);
    di->session_id = di->resume_url = NULL;
    di->seq = -1;
    kv_put(di, "session_id", NULL);
    kv_put(di, "resume_gateway_url", NULL);
    kv_put(di, "seq", NULL);
}

static void gw_send(struct dc_instance *di, json_t *payload)
{
    char *text = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    if (text && di->ws)
        host->ws_send(di->ws, 0, text, strlen(text));
    free(text);
    json_decref(payload);
}

static void hb_stop(struct dc_instance *di)
{
    if (di->hb_timer)
        host->timer_cancel(di->hb_timer);
    di->hb_timer = NULL;
}

static void schedule_connect(struct dc_instance *di, uint32_t ms)
{
    if (di->retry_timer || di->stopped_for_good)
        return;
    di->retry_timer = host->timer_start(plugin_self, di->inst, ms, 0, gw_connect, di);
}

/* Drop the connection (code 4000 keeps the session resumable) and come back. */
static void gw_restart(struct dc_instance *di, int code, uint32_t delay_ms, const char *why)
{
    host->log(plugin_self, di->inst, SB_LOG_INFO, "gateway: reconnecting (%s)", why);
    hb_stop(di);
    if (di->ws)
        host->ws_close(di->ws, code, why);
    di->ws = NULL;
    di->ready = 0;
    di->reconnects++;
    host->set_state(di->inst, SB_STATE_CONNECTING, why);
    schedule_connect(di, delay_ms);
}

static void send_heartbeat(struct dc_instance *di)
{
    gw_send(di, json_pack("{s:i,s:o}", "op", 1, "d",
                          di->seq >= 0 ? json_integer(di->seq) : json_null()));
    di->heartbeats++;
}

static void on_heartbeat(void *arg)
{
    struct dc_instance *di = arg;
    if (!di->hb_repeating)
        di->hb_timer = NULL; /* the jittered first one has fired */
    if (di->ack_pending) {
        /* No ACK since the last one: a zombie connection. */
        gw_restart(di, 4000, 0, "heartbeat not acknowledged");
        return;
    }
    di->ack_pending = 1;
    send_heartbeat(di);
    if (!di->hb_repeating) {
        di->hb_repeating = 1;
        di->hb_timer =
            host->timer_start(plugin_self, di->inst, di->hb_interval, 1, on_heartbeat, di);
    }
}

static void identify_or_resume(struct dc_instance *di)
{
    if (di->session_id && di->seq >= 0) {
        gw_send(di, json_pack("{s:i,s:{s:s,s:s,s:I}}", "op", 6, "d", "token", di->token,
                              "session_id", di->session_id, "seq", (json_int_t)di->seq));
        di->resumes++;
    } else {
        gw_send(di, json_pack("{s:i,s:{s:s,s:I,s:{s:s,s:s,s:s}}}", "op", 2, "d", "token", di->token,
                              "intents", (json_int_t)di->intents, "properties", "os", "linux",
                              "browser", "switchboard", "device", "switchboard"));
        di->identifies++;
    }
}

static void on_dispatch(struct dc_instance *di, const char *t, const json_t *d)
{
    di->dispatches++;
    if (!strcmp(t, "READY")) {
        free(di->session_id);
        free(di->resume_url);
        free(di->self_id);
        di->session_id = pu_strdup(pu_jstr(d, "session_id"));
        di->resume_url = pu_strdup(pu_jstr(d, "resume_gateway_url"));
        di->self_id = pu_strdup(pu_jstr(json_object_get(d, "user"), "id"));
        kv_put(di, "session_id", di->session_id);
        kv_put(di, "resume_gateway_url", di->resume_url);
        kv_put(di, "self_id", di->self_id);
        save_seq(di);
        di->ready = 1;
        di->attempt = 0;
        host->set_state(di->inst, SB_STATE_CONNECTED, "gateway ready");
    } else if (!strcmp(t, "RESUMED")) {
        di->ready = 1;
        di->attempt = 0;
        host->set_state(di->inst, SB_STATE_CONNECTED, "gateway resumed");
    } else if (!strcmp(t, "MESSAGE_CREATE")) {
        emit_message(di, d);
    } else if (!strcmp(t, "INTERACTION_CREATE")) {
        if (host->emit_event(di->inst, "interaction", interaction_event(d)) == SB_OK)
            di->events++;
        const char *id = pu_jstr(d, "id"), *token = pu_jstr(d, "token");
        if (id && token) {
            char *path = pu_printf("/interactions/%s/%s/callback", id, token);
            if (path)
                rest(di, "POST", path,
                     deferred_response(json_integer_value(json_object_get(d, "type"))),
                     on_callback_answer, di);
            free(path);
        }
    }
}

static void on_gateway_text(struct dc_instance *di, const unsigned char *data, size_t len)
{
    json_t *m = json_loadb((const char *)data, len, 0, NULL);
    if (!json_is_object(m)) {
        json_decref(m);
        return;
    }
    json_int_t op = json_integer_value(json_object_get(m, "op"));
    const json_t *d = json_object_get(m, "d");
    json_t *s = json_object_get(m, "s");
    switch (op) {
    case 10: /* Hello */
        di->hb_interval = (uint32_t)json_integer_value(json_object_get(d, "heartbeat_interval"));
        if (di->hb_interval == 0)
            di->hb_interval = 41250; /* Discord's usual value, should Hello lack it */
        hb_stop(di);
        di->ack_pending = 0;
        di->hb_repeating = 0;
        di->hb_timer =
            host->timer_start(plugin_self, di->inst,
                              (uint32_t)((double)di->hb_interval * (random() / (RAND_MAX + 1.0))),
                              0, on_heartbeat, di);
        identify_or_resume(di);
        break;
    case 11: /* Heartbeat ACK */
        di->ack_pending = 0;
        di->acks++;
        break;
    case 1: /* the server asks for a heartbeat now */
        send_heartbeat(di);
        break;
    case 0: /* Dispatch */
        if (json_is_integer(s)) {
            di->seq = json_integer_value(s);
            save_seq(di);
        }
        if (pu_jstr(m, "t"))
            on_dispatch(di, pu_jstr(m, "t"), d);
        break;
    case 7: /* Reconnect */
        gw_restart(di, 4000, 0, "reconnect requested");
        break;
    case 9: /* Invalid Session */
        if (json_is_true(d)) {
            gw_restart(di, 4000, 0, "invalid session (resumable)");
        } else {
            forget_session(di);
            gw_restart(di, 1000, 1000 + (uint32_t)(random() % 4001), "invalid session");
        }
        break;
    default:
        break;
    }
    json_decref(m);
}

static void on_gateway(void *arg, enum sb_ws_event ev, const unsigned char *data, size_t len,
                       int code)
{
    struct dc_instance *di = arg;
    switch (ev) {
    case SB_WS_OPEN:
        break;
    case SB_WS_TEXT:
        on_gateway_text(di, data, len);
        break;
    case SB_WS_BINARY:
        break;
    case SB_WS_CLOSED:
        di->ws = NULL;
        di->ready = 0;
        hb_stop(di);
        host->log(plugin_self, di->inst, SB_LOG_INFO, "gateway closed (%d %.*s)", code,
                  (int)(len > 200 ? 200 : len), (const char *)data);
        if (code == 4004 || (code >= 4010 && code <= 4014)) {
            char why[96];
            snprintf(why, sizeof(why), "gateway closed with %d: not reconnecting", code);
            di->stopped_for_good = 1;
            host->set_state(di->inst, SB_STATE_ERROR, why);
            return;
        }
        if (code == 4007 || code == 4009)
            forget_session(di);
        host->set_state(di->inst, SB_STATE_DISCONNECTED, "gateway connection lost");
        di->reconnects++;
        schedule_connect(di, pu_backoff_ms(di->attempt, BACKOFF_BASE_MS, BACKOFF_CAP_MS));
        if (di->attempt < 16)
            di->attempt++;
        break;
    }
}

static char *gateway_target(const char *base)
{
    if (strchr(base, '?'))
        return pu_strdup(base);
    size_t n = strlen(base);
    return pu_printf("%s%s?v=10&encoding=json", base, n && base[n - 1] == '/' ? "" : "/");
}

static void load_session(struct dc_instance *di)
{
    char *v = NULL;
    if (di->session_id)
        return;
    if (host->kv_get(di->inst, "session_id", &v) == SB_OK && v && *v)
        di->session_id = v;
    else
        free(v);
    v = NULL;
    if (host->kv_get(di->inst, "resume_gateway_url", &v) == SB_OK && v && *v)
        di->resume_url = v;
    else
        free(v);
    v = NULL;
    if (host->kv_get(di->inst, "seq", &v) == SB_OK && v && *v)
        di->seq = strtoll(v, NULL, 10);
    free(v);
    v = NULL;
    if (!di->self_id && host->kv_get(di->inst, "self_id", &v) == SB_OK && v && *v)
        di->self_id = v;
    else
        free(v);
}

static void gw_connect(void *arg)
{
    struct dc_instance *di = arg;
    di->retry_timer = NULL;
    if (di->ws || di->stopped_for_good)
        return;
    load_session(di);
    int resume = di->session_id && di->resume_url && di->seq >= 0;
    char *url = gateway_target(resume ? di->resume_url : di->gateway_url);
    di->ws = url ? host->ws_connect(plugin_self, di->inst, url, NULL, 0, on_gateway, di) : NULL;
    free(url);
    if (!di->ws) {
        host->log(plugin_self, di->inst, SB_LOG_WARN, "gateway: cannot connect (bad URL?)");
        if (resume)
            forget_session(di); /* a bad resume URL must not stop us for good */
        schedule_connect(di, pu_backoff_ms(di->attempt++, BACKOFF_BASE_MS, BACKOFF_CAP_MS));
        return;
    }
    host->set_state(di->inst, SB_STATE_CONNECTING, resume ? "gateway: resuming" : "gateway");
}

/* ---- sending, paced per bucket ---- */

static struct dc_bucket *bucket_for(struct dc_instance *di, const char *key)
{
    for (struct dc_bucket *b = di->buckets; b; b = b->next)
        if (!strcmp(b->key, key))
            return b;
    struct dc_bucket *b = calloc(1, sizeof(*b));
    if (!b || !(b->key = strdup(key))) {
        free(b);
        return NULL;
    }
    b->owner = di;
    b->tail = &b->head;
    b->next = di->buckets;
    di->buckets = b;
    return b;
}

static void send_free(struct dc_send *s)
{
    free(s->url);
    free(s->body);
    free(s);
}

static void finish(struct dc_send *s, const sb_send_result *res)
{
    if (res->ok)
        s->owner->sent++;
    else
        s->owner->failed++;
    s->done(s->done_arg, res);
    send_free(s);
}

static void finish_fail(struct dc_send *s, int retryable, uint32_t retry_after_ms, const char *code,
                        const char *message)
{
    sb_send_result res = {.ok = 0,
                          .retryable = retryable,
                          .retry_after_ms = retry_after_ms,
                          .error_code = code,
                          .error_message = message};
    finish(s, &res);
}

static void inflight_unlink(struct dc_send *s)
{
    struct dc_send **link = &s->owner->inflight;
    while (*link && *link != s)
        link = &(*link)->next;
    if (*link)
        *link = s->next;
}

static void pump(struct dc_bucket *b);

static void on_bucket_timer(void *arg)
{
    struct dc_bucket *b = arg;
    b->timer = NULL;
    pump(b);
}

static long long header_num(const sb_http_response *resp, const char *name, int *found)
{
    const char *v = pu_resp_header(resp, name);
    *found = v != NULL;
    return v ? strtoll(v, NULL, 10) : 0;
}

static void on_send_answer(void *arg, const sb_http_response *resp)
{
    struct dc_send *s = arg;
    struct dc_instance *di = s->owner;
    struct dc_bucket *b = s->bucket;
    long long now = now_ms();
    inflight_unlink(s);
    b->inflight--;
    /* The bucket's state, as the answer tells it. */
    int has_rem = 0, has_lim = 0;
    long long rem = header_num(resp, "X-RateLimit-Remaining", &has_rem);
    long long lim = header_num(resp, "X-RateLimit-Limit", &has_lim);
    const char *reset_after = pu_resp_header(resp, "X-RateLimit-Reset-After");
    const char *hash = pu_resp_header(resp, "X-RateLimit-Bucket");
    if (hash)
        snprintf(b->hash, sizeof(b->hash), "%s", hash);
    if (has_rem && reset_after) {
        long long reset_at = now + (long long)(strtod(reset_after, NULL) * 1000.0 + 0.5);
        b->limit = has_lim ? (int)lim : b->limit;
        if (b->known && now < b->reset_at && reset_at <= b->reset_at + 250) {
            /* Same window: answers may come out of order, the lowest count wins. */
            if (rem < b->remaining)
                b->remaining = (int)rem;
        } else {
            b->remaining = (int)rem;
            b->reset_at = reset_at;
        }
        b->known = 1;
    }
    json_t *body =
        resp->body_len ? json_loadb((const char *)resp->body, resp->body_len, 0, NULL) : NULL;
    char code[48], msg[200];
    if (resp->status == 0) {
        finish_fail(s, 1, 0, "transport", resp->error ? resp->error : "no answer");
    } else if (resp->status == 429) {
        double secs = json_number_value(json_object_get(body, "retry_after"));
        uint32_t ms = pu_secs_to_ms(secs);
        if (!ms)
            ms = pu_retry_after_header(resp);
        const char *g = pu_resp_header(resp, "X-RateLimit-Global");
        int global = json_is_true(json_object_get(body, "global")) || (g && !strcasecmp(g, "true"));
        di->rate_limited++;
        if (global) {
            di->global_until = now + ms;
        } else {
            b->known = 1;
            b->remaining = 0;
            b->reset_at = now + ms;
        }
        snprintf(msg, sizeof(msg), "rate limited (%s), retry after %u ms",
                 global ? "global" : "bucket", (unsigned)ms);
        finish_fail(s, 1, ms, "rate_limited", msg);
    } else if (resp->status >= 200 && resp->status < 300) {
        sb_send_result res = {.ok = 1, .provider_msg_id = pu_jstr(body, "id")};
        finish(s, &res);
    } else {
        const char *m = pu_jstr(body, "message");
        json_t *c = json_object_get(body, "code");
        if (json_is_integer(c))
            snprintf(code, sizeof(code), "discord_%" JSON_INTEGER_FORMAT, json_integer_value(c));
        else
            snprintf(code, sizeof(code), "http_%d", resp->status);
        snprintf(msg, sizeof(msg), "%s", m ? m : "Discord refused the message");
        finish_fail(s, resp->status >= 500, pu_retry_after_header(resp), code, msg);
    }
    json_decref(body);
    pump(b);
}

/* 1 when b may send now; else 0 with *wait_ms (0: wait for an answer instead). */
static int may_send(struct dc_bucket *b, long long now, long long *wait_ms)
{
    struct dc_instance *di = b->owner;
    *wait_ms = 0;
    if (di->global_until > now) {
        *wait_ms = di->global_until - now;
        return 0;
    }
    if (now - di->window_start >= 1000) {
        di->window_start = now;
        di->window_count = 0;
    }
    if (di->window_count >= GLOBAL_PER_SECOND) {
        *wait_ms = di->window_start + 1000 - now;
        return 0;
    }
    if (b->known && now >= b->reset_at) {
        if (b->limit <= 0)
            b->known = 0; /* reset, limit never told: learn it again */
        else
            b->remaining = b->limit; /* the window has passed */
    }
    if (!b->known)
        return b->inflight == 0; /* learn the limits from one answer first */
    if (b->remaining - b->inflight > 0)
        return 1;
    *wait_ms = b->reset_at > now ? b->reset_at - now : 0;
    return 0;
}

static void pump(struct dc_bucket *b)
{
    struct dc_instance *di = b->owner;
    while (b->head) {
        long long wait = 0;
        if (!may_send(b, now_ms(), &wait)) {
            if (wait > 0 && !b->timer)
                b->timer = host->timer_start(plugin_self, di->inst, (uint32_t)wait + 1, 0,
                                             on_bucket_timer, b);
            return;
        }
        struct dc_send *s = b->head;
        b->head = s->next;
        if (!b->head)
            b->tail = &b->head;
        s->next = NULL;
        di->window_count++;
        b->inflight++;
        s->next = di->inflight;
        di->inflight = s;
        char *path = s->url;
        s->call = rest(di, "POST", path, s->body, on_send_answer, s);
        if (!s->call) {
            inflight_unlink(s);
            b->inflight--;
            finish_fail(s, 1, 0, "internal", "could not start the request");
        }
    }
}

/* The POST /channels/{id}/messages body (new reference). */
static json_t *render(const json_t *m)
{
    const json_t *opts = json_object_get(m, "provider_options");
    const char *text = pu_jstr(m, "text");
    const char *reply_to = pu_jstr(m, "reply_to");
    const json_t *buttons = json_object_get(m, "buttons");
    const json_t *media = json_object_get(m, "media");
    const char *murl = pu_jstr(media, "url");
    const char *mime = pu_jstr(media, "mime_type");
    const char *caption = pu_jstr(media, "caption");
    json_t *body = json_object();
    char *content = NULL;
    int image = murl && (!mime || !strncmp(mime, "image/", 6));
    if (murl && !image)
        content = pu_printf("%s%s%s",
                            text      ? text
                            : caption ? caption
                                      : "",
                            text || caption ? "\n" : "", murl);
    const char *c = content ? content : text ? text : caption;
    if (c && *c)
        json_object_set_new(body, "content", json_string(c));
    free(content);
    json_t *embeds = json_is_array(json_object_get(opts, "embeds"))
                         ? json_deep_copy(json_object_get(opts, "embeds"))
                         : json_array();
    if (murl && image)
        json_array_append_new(embeds, json_pack("{s:{s:s}}", "image", "url", murl));
    if (json_array_size(embeds))
        json_object_set_new(body, "embeds", embeds);
    else
        json_decref(embeds);
    if (json_is_array(json_object_get(opts, "components"))) {
        json_object_set(body, "components", json_object_get(opts, "components"));
    } else if (json_array_size(buttons)) {
        json_t *rows = json_array(), *row = NULL;
        size_t i;
        json_t *btn;
        json_array_foreach (buttons, i, btn) {
            if (!row || json_array_size(row) == 5) {
                row = json_array();
                json_array_append_new(rows, json_pack("{s:i,s:o}", "type", 1, "components", row));
            }
            json_array_append_new(row, json_pack("{s:i,s:i,s:s?,s:s?}", "type", 2, "style", 1,
                                                 "label", pu_jstr(btn, "title"), "custom_id",
                                                 pu_jstr(btn, "id")));
        }
        json_object_set_new(body, "components", rows);
    }
    if (reply_to)
        json_object_set_new(
            body, "message_reference",
            json_pack("{s:s,s:b}", "message_id", reply_to, "fail_if_not_exists", 0));
    if (json_is_object(json_object_get(opts, "allowed_mentions")))
        json_object_set(body, "allowed_mentions", json_object_get(opts, "allowed_mentions"));
    return body;
}

static int dc_send(sb_instance *inst, void *state, const json_t *message, sb_send_done_fn done,
                   void *done_arg)
{
    struct dc_instance *di = state;
    const char *channel =
        pu_jstr(message, "thread") ? pu_jstr(message, "thread") : pu_jstr(message, "to");
    if (!channel || !*channel || strspn(channel, "0123456789") != strlen(channel))
        return -1; /* Discord ids are snowflakes */
    json_t *body = render(message);
    struct dc_send *s = calloc(1, sizeof(*s));
    char *key = pu_printf("channels/%s/messages", channel);
    struct dc_bucket *b = key ? bucket_for(di, key) : NULL;
    free(key);
    if (s && body) {
        s->body = json_dumps(body, JSON_COMPACT);
        s->url = pu_printf("/channels/%s/messages", channel);
    }
    json_decref(body);
    if (!s || !b || !s->body || !s->url) {
        if (s)
            send_free(s);
        return -1;
    }
    s->owner = di;
    s->bucket = b;
    s->done = done;
    s->done_arg = done_arg;
    *b->tail = s;
    b->tail = &s->next;
    pump(b);
    return 0;
}

/* ---- instances ---- */

static void instance_free(struct dc_instance *di)
{
    free(di->auth);
    free(di->token);
    free(di->app_id);
    EVP_PKEY_free(di->pubkey);
    free(di->api_base);
    free(di->gateway_url);
    json_decref(di->commands);
    free(di->session_id);
    free(di->resume_url);
    free(di->self_id);
    free(di);
}

static char *trimmed_base(const char *v, const char *dflt)
{
    char *s = pu_strdup(v && *v ? v : dflt);
    size_t n = s ? strlen(s) : 0;
    while (n > 1 && s[n - 1] == '/')
        s[--n] = 0;
    return s;
}

static int dc_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    const char *token = pu_jstr(settings, "bot_token");
    const char *pk = pu_jstr(settings, "public_key");
    if (!token || !*token) {
        host->set_state(inst, SB_STATE_ERROR, "settings.bot_token is required");
        return -1;
    }
    struct dc_instance *di = calloc(1, sizeof(*di));
    if (!di) {
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    di->inst = inst;
    di->seq = -1;
    di->token = pu_strdup(token);
    di->auth = pu_printf("Bot %s", token);
    di->app_id = pu_strdup(pu_jstr(settings, "application_id"));
    di->api_base = trimmed_base(pu_jstr(settings, "api_base"), "https://discord.com/api/v10");
    di->gateway_url = trimmed_base(pu_jstr(settings, "gateway_url"), "wss://gateway.discord.gg");
    json_t *intents = json_object_get(settings, "intents");
    di->intents = json_is_integer(intents) ? json_integer_value(intents) : DEFAULT_INTENTS;
    if (!json_is_false(json_object_get(settings, "message_content")))
        di->intents |= MESSAGE_CONTENT_INTENT;
    di->use_gateway = !json_is_false(json_object_get(settings, "gateway"));
    if (json_is_array(json_object_get(settings, "commands")))
        di->commands = json_deep_copy(json_object_get(settings, "commands"));
    if (!di->token || !di->auth || !di->api_base || !di->gateway_url) {
        instance_free(di);
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    if (pk) {
        unsigned char raw[32];
        if (pu_unhex(pk, raw, sizeof(raw)) < 0 ||
            !(di->pubkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, sizeof(raw)))) {
            instance_free(di);
            host->set_state(inst, SB_STATE_ERROR, "settings.public_key is not an Ed25519 key");
            return -1;
        }
    }
    if (di->commands && !di->app_id) {
        instance_free(di);
        host->set_state(inst, SB_STATE_ERROR, "settings.commands needs settings.application_id");
        return -1;
    }
    *state = di;
    if (di->commands)
        di->cmd_timer = host->timer_start(plugin_self, inst, 0, 0, register_commands, di);
    if (di->use_gateway) {
        /* On a later loop turn: the key-value store (the stored session) is
         * ready by then even during the daemon's start-up. */
        host->set_state(inst, SB_STATE_CONNECTING, "gateway");
        schedule_connect(di, 0);
    } else {
        host->set_state(inst, SB_STATE_CONNECTED, "interactions endpoint only");
    }
    return 0;
}

static void dc_instance_stop(sb_instance *inst, void *state)
{
    struct dc_instance *di = state;
    while (di->inflight) {
        struct dc_send *s = di->inflight;
        di->inflight = s->next;
        host->http_cancel(s->call);
        finish_fail(s, 1, 0, "instance_stopped", "the instance stopped before Discord answered");
    }
    while (di->buckets) {
        struct dc_bucket *b = di->buckets;
        di->buckets = b->next;
        while (b->head) {
            struct dc_send *s = b->head;
            b->head = s->next;
            finish_fail(s, 1, 0, "instance_stopped", "the instance stopped before sending");
        }
        if (b->timer)
            host->timer_cancel(b->timer);
        free(b->key);
        free(b);
    }
    hb_stop(di);
    if (di->retry_timer)
        host->timer_cancel(di->retry_timer);
    if (di->cmd_timer)
        host->timer_cancel(di->cmd_timer);
    if (di->ws)
        host->ws_close(di->ws, 4000, "stopping"); /* 4000: the session stays resumable */
    instance_free(di);
}

static json_t *dc_status(sb_instance *inst, void *state)
{
    const struct dc_instance *di = state;
    json_t *buckets = json_array();
    for (const struct dc_bucket *b = di->buckets; b; b = b->next)
        json_array_append_new(buckets, json_pack("{s:s,s:s,s:i,s:i,s:i}", "route", b->key, "bucket",
                                                 b->hash, "limit", b->limit, "remaining",
                                                 b->remaining, "inflight", b->inflight));
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:o,s:{s:b,s:b,s:s?,s:I,s:I,s:I,s:I,s:I,s:I,s:I}}",
                     "sent", (json_int_t)di->sent, "failed", (json_int_t)di->failed, "events",
                     (json_int_t)di->events, "refused", (json_int_t)di->refused, "rate_limited",
                     (json_int_t)di->rate_limited, "buckets", buckets, "gateway", "enabled",
                     di->use_gateway, "ready", di->ready, "session_id", di->session_id, "seq",
                     (json_int_t)di->seq, "heartbeats", (json_int_t)di->heartbeats, "acks",
                     (json_int_t)di->acks, "identifies", (json_int_t)di->identifies, "resumes",
                     (json_int_t)di->resumes, "reconnects", (json_int_t)di->reconnects,
                     "dispatches", (json_int_t)di->dispatches);
}

static int dc_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    host = services;
    plugin_self = self;
    if (!pu_services_usable(services, self, "discord", PU_SERVICES_THROUGH(reply_header)))
        return -1;
    srandom((unsigned)time(NULL) ^ (unsigned)(uintptr_t)self);
    return 0;
}

static void dc_shutdown(sb_plugin *self)
{
    host = NULL;
    plugin_self = NULL;
}

SWITCHBOARD_PLUGIN_INIT(.name = "discord", .version = DISCORD_VERSION,
                        .description = "Discord: REST, Gateway and interactions endpoint",
                        .capabilities = SB_CAP_MEDIA | SB_CAP_BUTTONS | SB_CAP_THREADS |
                                        SB_CAP_WEBHOOK,
                        .settings_schema = DISCORD_SCHEMA, .init = dc_init, .shutdown = dc_shutdown,
                        .instance_start = dc_instance_start, .instance_stop = dc_instance_stop,
                        .send = dc_send, .webhook = dc_webhook, .status = dc_status)
