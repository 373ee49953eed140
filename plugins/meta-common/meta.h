/*
 * meta-common: what the Meta family (WhatsApp Cloud API, Messenger,
 * Instagram) shares, compiled into each of those plugins (list meta.c and
 * ../common/plugutil.c in the plugin's sources):
 *
 *  - SHA-256 and HMAC-SHA256, implemented here (FIPS 180-4, RFC 2104) so the
 *    plugins link nothing but Jansson;
 *  - X-Hub-Signature-256 verification: "sha256=" + hex HMAC-SHA256(app
 *    secret, raw body), compared in constant time;
 *  - the GET hub.mode=subscribe / hub.verify_token / hub.challenge handshake,
 *    answered with the challenge as text/plain;
 *  - the one mapping of Graph API answers (status + {"error":{...}}) to send
 *    results: retry, fail, or fail and mark the instance's credentials bad.
 */
#ifndef SB_META_H
#define SB_META_H

#include <stddef.h>
#include <stdint.h>

#include <switchboard/switchboard.h>

void meta_sha256(const void *data, size_t len, unsigned char out[32]);
void meta_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                      unsigned char out[32]);

enum meta_sig { META_SIG_OK = 0, META_SIG_MISSING = -1, META_SIG_BAD = -2 };
/* Check X-Hub-Signature-256 of req against app_secret. */
enum meta_sig meta_check_signature(const char *app_secret, const sb_http_request *req);

/*
 * The whole webhook front door of a Meta plugin. GET: the verify handshake
 * (200 text/plain challenge when hub.mode is subscribe and hub.verify_token
 * matches, else 403). POST: the signature (missing 401, wrong 403, both
 * counted as signature_rejected in the plugin's metrics), then the body must
 * be a JSON object. Returns the parsed body (a new reference) when the caller
 * must go on and answer, or NULL when the request was answered here.
 */
json_t *meta_webhook_front(const sb_host_services *host, sb_plugin *self, sb_instance *inst,
                           const sb_http_request *req, sb_reply *reply, const char *app_secret,
                           const char *verify_token);

/* What a Graph API answer means for a send. */
struct meta_result {
    int ok;
    int retryable;           /* transient: the host retries (and counts toward its breaker) */
    int auth_error;          /* the token is invalid or lacks permission: instance in error */
    uint32_t retry_after_ms; /* Retry-After, or X-Business-Use-Case-Usage's estimate */
    int http_status;
    long long code, subcode; /* Graph error code and subcode, 0 when absent */
    char error_code[48];     /* "graph_<code>[_<subcode>]", "http_<status>" or "transport" */
    char error_message[600];
    json_t *body; /* the parsed answer (new reference) or NULL; caller decrefs */
};
void meta_graph_result(const sb_http_response *resp, struct meta_result *out);

/* 1 when a Graph error code means "throttled, try later". */
int meta_is_throttle_code(long long code);

#endif
