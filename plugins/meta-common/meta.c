#include "meta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/plugutil.h"

/* ---- SHA-256 (FIPS 180-4) ---- */

struct sha256 {
    uint32_t h[8];
    uint64_t bytes;
    unsigned char block[64];
    size_t fill;
};

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(struct sha256 *s, const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, h;

    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
    e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
    s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha256_init(struct sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof(iv));
    s->bytes = 0;
    s->fill = 0;
}

static void sha256_update(struct sha256 *s, const void *data, size_t len)
{
    const unsigned char *p = data;

    s->bytes += len;
    while (len) {
        size_t take = 64 - s->fill < len ? 64 - s->fill : len;

        memcpy(s->block + s->fill, p, take);
        s->fill += take, p += take, len -= take;
        if (s->fill == 64) {
            sha256_block(s, s->block);
            s->fill = 0;
        }
    }
}

static void sha256_final(struct sha256 *s, unsigned char out[32])
{
    uint64_t bits = s->bytes * 8;
    unsigned char pad = 0x80, zero = 0, len[8];

    sha256_update(s, &pad, 1);
    while (s->fill != 56)
        sha256_update(s, &zero, 1);
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(s->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)s->h[i];
    }
}

void meta_sha256(const void *data, size_t len, unsigned char out[32])
{
    struct sha256 s;

    sha256_init(&s);
    sha256_update(&s, data, len);
    sha256_final(&s, out);
}

void meta_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                      unsigned char out[32])
{
    unsigned char k[64] = {0}, pad[64], inner[32];
    struct sha256 s;

    if (key_len > 64)
        meta_sha256(key, key_len, k);
    else if (key_len)
        memcpy(k, key, key_len);
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x36;
    sha256_init(&s);
    sha256_update(&s, pad, 64);
    sha256_update(&s, msg, msg_len);
    sha256_final(&s, inner);
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x5c;
    sha256_init(&s);
    sha256_update(&s, pad, 64);
    sha256_update(&s, inner, 32);
    sha256_final(&s, out);
}

/* ---- webhook signature and handshake ---- */

enum meta_sig meta_check_signature(const char *app_secret, const sb_http_request *req)
{
    const char *got = pu_header(req->headers, req->n_headers, "X-Hub-Signature-256");
    unsigned char mac[32];
    char want[7 + 64 + 1];
    static const char hex[] = "0123456789abcdef";

    if (!got || !*got)
        return META_SIG_MISSING;
    if (!app_secret)
        return META_SIG_BAD;
    meta_hmac_sha256(app_secret, strlen(app_secret), req->body ? req->body : (const void *)"",
                     req->body_len, mac);
    memcpy(want, "sha256=", 7);
    for (int i = 0; i < 32; i++) {
        want[7 + 2 * i] = hex[mac[i] >> 4];
        want[8 + 2 * i] = hex[mac[i] & 15];
    }
    want[71] = '\0';
    /* Meta sends lower-case hex; accept upper case too without leaking timing. */
    {
        size_t n = strlen(got);
        unsigned char diff = n != 71;

        for (size_t i = 0; i < 71; i++) {
            unsigned char c = i < n ? (unsigned char)got[i] : 0;
            if (c >= 'A' && c <= 'F')
                c = (unsigned char)(c - 'A' + 'a');
            diff |= (unsigned char)(c ^ (unsigned char)want[i]);
        }
        return diff == 0 ? META_SIG_OK : META_SIG_BAD;
    }
}

static void verify_handshake(const sb_host_services *host, const sb_http_request *req,
                             sb_reply *reply, const char *verify_token)
{
    char *mode = pu_query_param(req->query, "hub.mode");
    char *token = pu_query_param(req->query, "hub.verify_token");
    char *challenge = pu_query_param(req->query, "hub.challenge");

    if (mode && !strcmp(mode, "subscribe") && token && verify_token && *verify_token &&
        pu_ct_equal(verify_token, token) && challenge) {
        host->reply(reply, 200, "text/plain", challenge, strlen(challenge));
    } else if (!mode || !challenge) {
        pu_reply_error(host, reply, 400, "bad_request",
                       "expected hub.mode, hub.verify_token and hub.challenge");
    } else {
        pu_reply_error(host, reply, 403, "verify_token_mismatch",
                       "hub.mode is not subscribe or hub.verify_token does not match");
    }
    free(mode);
    free(token);
    free(challenge);
}

json_t *meta_webhook_front(const sb_host_services *host, sb_plugin *self, sb_instance *inst,
                           const sb_http_request *req, sb_reply *reply, const char *app_secret,
                           const char *verify_token)
{
    json_t *body;

    if (req->method && !strcmp(req->method, "GET")) {
        verify_handshake(host, req, reply, verify_token);
        return NULL;
    }
    if (!req->method || strcmp(req->method, "POST") != 0) {
        host->reply_header(reply, "Allow", "GET, POST");
        pu_reply_error(host, reply, 405, "method_not_allowed", "only GET and POST are accepted");
        return NULL;
    }
    switch (meta_check_signature(app_secret, req)) {
    case META_SIG_OK:
        break;
    case META_SIG_MISSING:
        host->metric_add(self, inst, "signature_rejected", 1);
        host->log(self, inst, SB_LOG_WARN, "webhook refused: no X-Hub-Signature-256");
        pu_reply_error(host, reply, 401, "signature_missing", "X-Hub-Signature-256 is required");
        return NULL;
    default:
        host->metric_add(self, inst, "signature_rejected", 1);
        host->log(self, inst, SB_LOG_WARN, "webhook refused: X-Hub-Signature-256 does not match");
        pu_reply_error(host, reply, 403, "signature_mismatch",
                       "X-Hub-Signature-256 does not match the body");
        return NULL;
    }
    body = req->body_len ? json_loadb((const char *)req->body, req->body_len, 0, NULL) : NULL;
    if (!json_is_object(body)) {
        json_decref(body);
        pu_reply_error(host, reply, 400, "invalid_json", "the body must be a JSON object");
        return NULL;
    }
    return body;
}

/* ---- Graph API answers ---- */

int meta_is_throttle_code(long long code)
{
    /*
     * 4 application, 17 user, 32 page, 613 custom rate limits (documented as
     * throttling), 80007 WhatsApp/Instagram business-use-case limit, 130429
     * Cloud API throughput, 131048 spam rate limit, 131056 pair rate limit;
     * 1 (unknown), 2 (service temporarily unavailable) and 131016 (service
     * unavailable) are documented as "retry later" too.
     */
    static const long long codes[] = {1, 2, 4, 17, 32, 613, 80007, 130429, 131016, 131048, 131056};

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (codes[i] == code)
            return 1;
    return 0;
}

static int is_auth_code(long long code, long long subcode)
{
    /*
     * 190 invalid/expired token, 102 session, 3 capability, 10 and 200-299
     * permissions. Code 10 with a subcode is about the message (Messenger's
     * 2018278: outside the 24-hour window), not the credentials.
     */
    return code == 190 || code == 102 || code == 3 || (code == 10 && !subcode) ||
           (code >= 200 && code <= 299);
}

/*
 * X-Business-Use-Case-Usage: {"<id>":[{"type",...,"estimated_time_to_regain_access":minutes}]}
 * (and the same inside X-Ad-Account-Usage-like headers); the largest estimate wins.
 */
static uint32_t usage_estimate_ms(const sb_http_response *resp)
{
    const char *h = pu_header(resp->headers, resp->n_headers, "X-Business-Use-Case-Usage");
    json_t *doc, *arr, *it;
    const char *key;
    size_t i;
    double minutes = 0;

    if (!h)
        return 0;
    doc = json_loads(h, 0, NULL);
    json_object_foreach (doc, key, arr) {
        json_array_foreach (arr, i, it) {
            json_t *v = json_object_get(it, "estimated_time_to_regain_access");
            if (json_is_number(v) && json_number_value(v) > minutes)
                minutes = json_number_value(v);
        }
    }
    json_decref(doc);
    return pu_secs_to_ms(minutes * 60.0);
}

void meta_graph_result(const sb_http_response *resp, struct meta_result *out)
{
    json_t *err;
    const char *msg, *type, *trace, *details;

    memset(out, 0, sizeof(*out));
    out->http_status = resp->status;
    if (resp->body && resp->body_len)
        out->body = json_loadb((const char *)resp->body, resp->body_len, 0, NULL);
    if (resp->status == 0) {
        out->retryable = 1;
        snprintf(out->error_code, sizeof(out->error_code), "transport");
        snprintf(out->error_message, sizeof(out->error_message), "%s",
                 resp->error ? resp->error : "no answer from the Graph API");
        return;
    }
    err = json_object_get(out->body, "error");
    if (resp->status >= 200 && resp->status < 300 && !json_is_object(err)) {
        out->ok = 1;
        return;
    }
    out->code = json_integer_value(json_object_get(err, "code"));
    out->subcode = json_integer_value(json_object_get(err, "error_subcode"));
    msg = json_string_value(json_object_get(err, "message"));
    type = json_string_value(json_object_get(err, "type"));
    trace = json_string_value(json_object_get(err, "fbtrace_id"));
    details = json_string_value(json_object_get(json_object_get(err, "error_data"), "details"));
    if (json_is_object(err) && out->subcode)
        snprintf(out->error_code, sizeof(out->error_code), "graph_%lld_%lld", out->code,
                 out->subcode);
    else if (json_is_object(err))
        snprintf(out->error_code, sizeof(out->error_code), "graph_%lld", out->code);
    else
        snprintf(out->error_code, sizeof(out->error_code), "http_%d", resp->status);
    snprintf(out->error_message, sizeof(out->error_message), "%s%s%s (HTTP %d%s%s%s%s)",
             msg ? msg : "the Graph API refused the request", details ? ": " : "",
             details ? details : "", resp->status, type ? ", " : "", type ? type : "",
             trace ? ", fbtrace_id " : "", trace ? trace : "");
    out->retryable = resp->status >= 500 || resp->status == 429 ||
                     meta_is_throttle_code(out->code) ||
                     json_is_true(json_object_get(err, "is_transient"));
    /* An auth error is never worth retrying, whatever the status. */
    if (is_auth_code(out->code, out->subcode) || (resp->status == 401 && !out->code)) {
        out->auth_error = 1;
        out->retryable = 0;
    }
    if (out->retryable) {
        out->retry_after_ms = pu_retry_after_header(resp);
        if (!out->retry_after_ms)
            out->retry_after_ms = usage_estimate_ms(resp);
    }
}
