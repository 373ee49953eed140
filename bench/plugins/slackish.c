/*
 * slackish: a benchmark provider plugin speaking Slack's wire protocol.
 *
 * Built by bench/messaging.sh (not by the tree's make) with
 *
 *   cc -O2 -shared -fPIC -I$top/sdk/include slackish.c $(pkg-config --cflags --libs jansson)
 *
 * It uses only the SDK headers and Jansson: the HMAC-SHA256 for Slack's
 * request signatures is a small self-contained implementation in this file
 * (FIPS 180-4 SHA-256, RFC 2104 HMAC), so nothing links OpenSSL.
 *
 * Inbound (Events API over HTTP), POST <webhook_path>/<instance>:
 *   X-Slack-Request-Timestamp: T   (refused when |now - T| > 300 s)
 *   X-Slack-Signature: v0=<hex HMAC-SHA256(signing_secret, "v0:" T ":" raw body)>
 *   {"type":"url_verification","challenge":C}  -> 200 {"challenge":C}
 *   {"type":"event_callback","event_id":E,"event":{"type":"message","user","text","channel","ts"}}
 *       -> message.received {"event_id":E,"from":user,"text","channel","message_id":ts};
 *          other inner events are acknowledged without an event.
 *   answered 200 (empty body, as Bolt does) once the host has the event; a bad or
 *   missing signature or a stale timestamp 401, anything else malformed 400.
 *
 * Outbound, send(): POST <api_base>/chat.postMessage, Authorization: Bearer <token>,
 *   {"channel":to,"text":text[,"thread_ts":thread]}
 *   200 {"ok":true,"ts"}                    sent, provider message id = ts
 *   200 {"ok":false,"error":"ratelimited"}  and internal_error, fatal_error,
 *        service_unavailable, request_timeout: transient (retried)
 *   200 {"ok":false,"error":other}          permanent (channel_not_found, invalid_auth, ...)
 *   429 (Retry-After seconds), 5xx, no answer: transient, Retry-After honoured
 *   any other status                        permanent
 */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <switchboard/switchboard.h>

#define SLACKISH_VERSION "1.0.0-bench"
#define SEND_TIMEOUT_MS 10000
#define MAX_SKEW_S 300
#define MAX_RETRY_AFTER_MS (3600u * 1000u)

#define SLACKISH_SCHEMA                                                                            \
    "{\"type\":\"object\",\"properties\":{"                                                        \
    "\"api_base\":{\"type\":\"string\",\"minLength\":1},"                                          \
    "\"token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true},"                          \
    "\"signing_secret\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true}},"                \
    "\"required\":[\"api_base\"],\"additionalProperties\":false}"

/* ------------------------------------------------------------------ SHA-256 */

struct sha256 {
    uint32_t h[8];
    uint64_t len; /* bytes hashed so far */
    unsigned char buf[64];
    size_t fill;
};

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, hh;

    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] +
                      w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

static void sha256_init(struct sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof(iv));
    s->len = 0;
    s->fill = 0;
}

static void sha256_update(struct sha256 *s, const void *data, size_t n)
{
    const unsigned char *p = data;

    s->len += n;
    if (s->fill) {
        size_t take = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->buf + s->fill, p, take);
        s->fill += take, p += take, n -= take;
        if (s->fill < 64)
            return;
        sha256_block(s->h, s->buf);
        s->fill = 0;
    }
    for (; n >= 64; p += 64, n -= 64)
        sha256_block(s->h, p);
    memcpy(s->buf, p, n);
    s->fill = n;
}

static void sha256_final(struct sha256 *s, unsigned char out[32])
{
    uint64_t bits = s->len * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (s->fill < 56 ? 56 : 120) - s->fill;

    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, pad, padlen + 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(s->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)s->h[i];
    }
}

/*
 * HMAC-SHA256 with the key's inner and outer states hashed once per instance
 * (the signing secret does not change), so a request costs the body's blocks
 * plus two.
 */
struct hmac_key {
    struct sha256 inner, outer;
};

static void hmac_key_init(struct hmac_key *k, const unsigned char *key, size_t n)
{
    unsigned char block[64] = {0}, pad[64];

    if (n > 64) {
        struct sha256 s;
        sha256_init(&s);
        sha256_update(&s, key, n);
        sha256_final(&s, block);
    } else {
        memcpy(block, key, n);
    }
    for (int i = 0; i < 64; i++)
        pad[i] = block[i] ^ 0x36;
    sha256_init(&k->inner);
    sha256_update(&k->inner, pad, 64);
    for (int i = 0; i < 64; i++)
        pad[i] = block[i] ^ 0x5c;
    sha256_init(&k->outer);
    sha256_update(&k->outer, pad, 64);
}

/* ------------------------------------------------------------------ plugin */

struct sl_instance;

struct sl_send {
    struct sl_send *next;
    struct sl_instance *owner;
    sb_http_call *call;
    sb_send_done_fn done;
    void *done_arg;
};

struct sl_instance {
    sb_instance *inst;
    char *url;  /* <api_base>/chat.postMessage */
    char *auth; /* "Bearer <token>" or NULL */
    int have_secret;
    struct hmac_key key;
    unsigned long sent, failed, webhooks, refused;
    struct sl_send *sends; /* in flight */
};

static const sb_host_services *host;
static sb_plugin *plugin_self;

/* ---- send ---- */

static void send_unlink(struct sl_send *s)
{
    struct sl_send **link = &s->owner->sends;

    while (*link && *link != s)
        link = &(*link)->next;
    if (*link)
        *link = s->next;
}

static void finish_fail(struct sl_send *s, int retryable, uint32_t retry_after_ms,
                        const char *code, const char *message)
{
    sb_send_result res = {.ok = 0,
                          .retryable = retryable,
                          .retry_after_ms = retry_after_ms,
                          .error_code = code,
                          .error_message = message};

    s->owner->failed++;
    s->done(s->done_arg, &res);
}

static uint32_t retry_after_ms(const sb_http_response *resp)
{
    for (size_t i = 0; i < resp->n_headers; i++) {
        const char *v = resp->headers[i].value;
        char *end = NULL;
        double secs;

        if (!resp->headers[i].name || strcasecmp(resp->headers[i].name, "Retry-After") || !v)
            continue;
        while (isspace((unsigned char)*v))
            v++;
        secs = strtod(v, &end); /* Slack sends integer seconds */
        if (end == v || !(secs > 0))
            return 0;
        return secs * 1000.0 > (double)MAX_RETRY_AFTER_MS ? MAX_RETRY_AFTER_MS
                                                           : (uint32_t)(secs * 1000.0 + 0.5);
    }
    return 0;
}

/* Slack's errors that say "try again later" rather than "this will never work". */
static int transient_error(const char *err)
{
    static const char *const list[] = {"ratelimited",     "rate_limited",        "internal_error",
                                       "fatal_error",     "service_unavailable", "request_timeout",
                                       "team_added_to_org", NULL};
    for (const char *const *p = list; *p; p++)
        if (!strcmp(*p, err))
            return 1;
    return 0;
}

static void on_response(void *arg, const sb_http_response *resp)
{
    struct sl_send *s = arg;
    json_t *body = NULL;
    char code[32], msg[96];

    send_unlink(s);
    if (resp->status == 200 && resp->body && resp->body_len)
        body = json_loadb((const char *)resp->body, resp->body_len, 0, NULL);
    if (resp->status == 0) {
        finish_fail(s, 1, 0, "transport", resp->error ? resp->error : "no answer");
    } else if (resp->status == 429 || resp->status >= 500) {
        snprintf(code, sizeof(code), "http_%d", resp->status);
        snprintf(msg, sizeof(msg), "slack answered %d", resp->status);
        finish_fail(s, 1, retry_after_ms(resp), resp->status == 429 ? "ratelimited" : code, msg);
    } else if (resp->status != 200 || !json_is_object(body)) {
        snprintf(code, sizeof(code), "http_%d", resp->status);
        snprintf(msg, sizeof(msg), "slack answered %d%s", resp->status,
                 resp->status == 200 ? " without a JSON object" : "");
        finish_fail(s, 0, 0, code, msg);
    } else if (json_is_true(json_object_get(body, "ok"))) {
        sb_send_result res = {.ok = 1,
                              .provider_msg_id = json_string_value(json_object_get(body, "ts"))};
        s->owner->sent++;
        s->done(s->done_arg, &res);
    } else {
        const char *err = json_string_value(json_object_get(body, "error"));

        if (!err)
            err = "unknown_error";
        finish_fail(s, transient_error(err), transient_error(err) ? retry_after_ms(resp) : 0, err,
                    err);
    }
    json_decref(body);
    free(s);
}

static int sl_send(sb_instance *inst, void *state, const json_t *message, sb_send_done_fn done,
                   void *done_arg)
{
    struct sl_instance *si = state;
    const char *to = json_string_value(json_object_get(message, "to"));
    const char *text = json_string_value(json_object_get(message, "text"));
    const char *thread = json_string_value(json_object_get(message, "thread"));
    sb_header headers[2] = {{"Content-Type", "application/json; charset=utf-8"},
                            {"Authorization", si->auth}};
    sb_http_request req = {.method = "POST",
                           .url = si->url,
                           .headers = headers,
                           .n_headers = si->auth ? 2 : 1,
                           .timeout_ms = SEND_TIMEOUT_MS};
    struct sl_send *s;
    json_t *out;
    char *body;

    if (!to || !text) {
        sb_send_result res = {.ok = 0,
                              .error_code = "invalid_message",
                              .error_message = "\"to\" and \"text\" must be strings"};
        done(done_arg, &res);
        return 0;
    }
    out = json_pack("{s:s,s:s}", "channel", to, "text", text);
    if (out && thread)
        json_object_set_new(out, "thread_ts", json_string(thread));
    body = out ? json_dumps(out, JSON_COMPACT) : NULL;
    json_decref(out);
    s = calloc(1, sizeof(*s));
    if (!body || !s) {
        free(body);
        free(s);
        return -1;
    }
    req.body = (const unsigned char *)body;
    req.body_len = strlen(body);
    s->owner = si;
    s->done = done;
    s->done_arg = done_arg;
    s->next = si->sends;
    si->sends = s;
    s->call = host->http_request(plugin_self, inst, &req, on_response, s);
    free(body);
    if (!s->call) {
        send_unlink(s);
        free(s);
        return -1;
    }
    return 0;
}

/* ---- webhook ---- */

static void reply_text(sb_reply *reply, int status, const char *ctype, const char *text)
{
    host->reply(reply, status, ctype, text, strlen(text));
}

static void refuse(struct sl_instance *si, sb_reply *reply, int status, const char *code,
                   const char *message)
{
    char buf[256];

    si->refused++;
    snprintf(buf, sizeof(buf), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\",\"details\":{}}}",
             code, message);
    reply_text(reply, status, "application/json", buf);
}

static const char *req_header(const sb_http_request *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (req->headers[i].name && strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* 1 when sig is "v0=" + hex of the HMAC over "v0:" ts ":" body; constant time in the MAC. */
static int signature_ok(const struct sl_instance *si, const char *ts, const char *sig,
                        const unsigned char *body, size_t len)
{
    struct sha256 s = si->key.inner;
    unsigned char mac[32], diff = 0;

    if (strncmp(sig, "v0=", 3) != 0 || strlen(sig) != 3 + 64)
        return 0;
    sha256_update(&s, "v0:", 3);
    sha256_update(&s, ts, strlen(ts));
    sha256_update(&s, ":", 1);
    sha256_update(&s, body, len);
    sha256_final(&s, mac);
    s = si->key.outer;
    sha256_update(&s, mac, 32);
    sha256_final(&s, mac);
    for (int i = 0; i < 32; i++) {
        int hi = hexval((unsigned char)sig[3 + 2 * i]), lo = hexval((unsigned char)sig[4 + 2 * i]);
        if (hi < 0 || lo < 0)
            return 0;
        diff |= (unsigned char)(mac[i] ^ (hi << 4 | lo));
    }
    return diff == 0;
}

/* 1 when ts is a decimal Unix time within MAX_SKEW_S of now. */
static int timestamp_fresh(const char *ts)
{
    char *end = NULL;
    long long t;

    if (!ts || !isdigit((unsigned char)*ts))
        return 0;
    t = strtoll(ts, &end, 10);
    if (*end)
        return 0;
    long long d = (long long)time(NULL) - t;
    return d <= MAX_SKEW_S && d >= -MAX_SKEW_S;
}

static void copy_str(json_t *dst, const char *dkey, const json_t *src, const char *skey)
{
    json_t *v = json_object_get(src, skey);

    if (json_is_string(v))
        json_object_set(dst, dkey, v);
}

static void sl_webhook(sb_instance *inst, void *state, const sb_http_request *req,
                       sb_reply *reply)
{
    struct sl_instance *si = state;
    const char *ts, *sig, *type;
    json_t *body, *ev, *payload;

    if (!req->method || strcmp(req->method, "POST") != 0) {
        host->reply_header(reply, "Allow", "POST");
        refuse(si, reply, 405, "method_not_allowed", "only POST is accepted");
        return;
    }
    ts = req_header(req, "X-Slack-Request-Timestamp");
    sig = req_header(req, "X-Slack-Signature");
    if (!si->have_secret || !ts || !sig) {
        refuse(si, reply, 401, "bad_signature", "X-Slack-Signature or timestamp missing");
        return;
    }
    if (!timestamp_fresh(ts)) {
        refuse(si, reply, 401, "stale_request", "X-Slack-Request-Timestamp is not within 5 minutes");
        return;
    }
    if (!signature_ok(si, ts, sig, req->body ? req->body : (const unsigned char *)"",
                      req->body_len)) {
        refuse(si, reply, 401, "bad_signature", "X-Slack-Signature does not match");
        return;
    }
    body = req->body_len ? json_loadb((const char *)req->body, req->body_len, 0, NULL) : NULL;
    if (!json_is_object(body)) {
        json_decref(body);
        refuse(si, reply, 400, "invalid_json", "the body must be a JSON object");
        return;
    }
    type = json_string_value(json_object_get(body, "type"));
    if (type && !strcmp(type, "url_verification")) {
        const char *ch = json_string_value(json_object_get(body, "challenge"));
        json_t *c = json_pack("{s:s}", "challenge", ch ? ch : "");
        char *text = c ? json_dumps(c, JSON_COMPACT) : NULL;
        reply_text(reply, 200, "application/json", text ? text : "{}");
        free(text);
        json_decref(c);
        json_decref(body);
        return;
    }
    ev = json_object_get(body, "event");
    if (!type || strcmp(type, "event_callback") || !json_is_object(ev)) {
        json_decref(body);
        refuse(si, reply, 400, "invalid_field", "expected an event_callback with an event");
        return;
    }
    if (!json_is_string(json_object_get(ev, "type")) ||
        strcmp(json_string_value(json_object_get(ev, "type")), "message") ||
        json_object_get(ev, "subtype")) {
        /* Not a plain message: acknowledged, nothing to store. */
        json_decref(body);
        reply_text(reply, 200, "text/plain", "");
        return;
    }
    payload = json_object();
    if (!payload) {
        json_decref(body);
        refuse(si, reply, 500, "internal", "out of memory");
        return;
    }
    copy_str(payload, "event_id", body, "event_id");
    json_object_set_new(payload, "from",
                        json_is_string(json_object_get(ev, "user"))
                            ? json_incref(json_object_get(ev, "user"))
                            : json_null());
    json_object_set_new(payload, "text",
                        json_is_string(json_object_get(ev, "text"))
                            ? json_incref(json_object_get(ev, "text"))
                            : json_string(""));
    copy_str(payload, "channel", ev, "channel");
    copy_str(payload, "message_id", ev, "ts");
    copy_str(payload, "thread", ev, "thread_ts");
    json_decref(body);
    if (host->emit_event(inst, "message.received", payload) != SB_OK) { /* steals payload */
        host->reply_header(reply, "Retry-After", "1");
        refuse(si, reply, 503, "event_rejected", "the host did not accept the event");
        return;
    }
    si->webhooks++;
    /* The host holds this answer until the event is stored. */
    reply_text(reply, 200, "text/plain", "");
}

/* ---- lifecycle ---- */

static int sl_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    const char *base = json_string_value(json_object_get(settings, "api_base"));
    const char *token = json_string_value(json_object_get(settings, "token"));
    const char *secret = json_string_value(json_object_get(settings, "signing_secret"));
    struct sl_instance *si;
    size_t n;

    if (!base || !*base) {
        host->set_state(inst, SB_STATE_ERROR, "settings.api_base is required");
        return -1;
    }
    si = calloc(1, sizeof(*si));
    if (!si)
        goto oom;
    n = strlen(base) + sizeof("/chat.postMessage");
    if (!(si->url = malloc(n)))
        goto oom;
    snprintf(si->url, n, "%s%s", base,
             base[strlen(base) - 1] == '/' ? "chat.postMessage" : "/chat.postMessage");
    if (token && *token) {
        n = strlen(token) + sizeof("Bearer ");
        if (!(si->auth = malloc(n)))
            goto oom;
        snprintf(si->auth, n, "Bearer %s", token);
    }
    if (secret && *secret) {
        hmac_key_init(&si->key, (const unsigned char *)secret, strlen(secret));
        si->have_secret = 1;
    }
    si->inst = inst;
    *state = si;
    host->set_state(inst, SB_STATE_CONNECTED, NULL);
    return 0;
oom:
    if (si) {
        free(si->url);
        free(si->auth);
    }
    free(si);
    host->set_state(inst, SB_STATE_ERROR, "out of memory");
    return -1;
}

/* In-flight sends are the host's messages: cancel and report them transient. */
static void sl_instance_stop(sb_instance *inst, void *state)
{
    struct sl_instance *si = state;

    (void)inst;
    while (si->sends) {
        struct sl_send *s = si->sends;

        si->sends = s->next;
        host->http_cancel(s->call);
        finish_fail(s, 1, 0, "instance_stopped", "the instance stopped before Slack answered");
        free(s);
    }
    memset(&si->key, 0, sizeof(si->key));
    free(si->url);
    free(si->auth);
    free(si);
}

static json_t *sl_status(sb_instance *inst, void *state)
{
    const struct sl_instance *si = state;
    size_t n = 0;

    (void)inst;
    for (const struct sl_send *s = si->sends; s; s = s->next)
        n++;
    return json_pack("{s:I,s:I,s:I,s:I,s:I}", "sent", (json_int_t)si->sent, "failed",
                     (json_int_t)si->failed, "webhooks", (json_int_t)si->webhooks, "refused",
                     (json_int_t)si->refused, "in_flight", (json_int_t)n);
}

static int sl_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    size_t needed = offsetof(sb_host_services, reply_header) + sizeof(services->reply_header);

    (void)config;
    host = services;
    plugin_self = self;
    if (services->abi_major != SB_ABI_MAJOR || services->struct_size < needed) {
        services->log(self, NULL, SB_LOG_ERROR, "slackish: host services ABI %u (size %u) unusable",
                      (unsigned)services->abi_major, (unsigned)services->struct_size);
        return -1;
    }
    return 0;
}

static void sl_shutdown(sb_plugin *self)
{
    (void)self;
    host = NULL;
    plugin_self = NULL;
}

SWITCHBOARD_PLUGIN_INIT(.name = "slackish", .version = SLACKISH_VERSION,
                        .description = "Benchmark provider speaking Slack's Events API and "
                                       "chat.postMessage",
                        .capabilities = SB_CAP_WEBHOOK | SB_CAP_THREADS,
                        .settings_schema = SLACKISH_SCHEMA, .init = sl_init,
                        .shutdown = sl_shutdown, .instance_start = sl_instance_start,
                        .instance_stop = sl_instance_stop, .send = sl_send,
                        .webhook = sl_webhook, .status = sl_status)
