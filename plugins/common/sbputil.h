/*
 * Small helpers shared by the bundled provider plugins (compiled into each
 * .so; they use only the SDK headers, Jansson and libc).
 */
#ifndef SBP_PLUGUTIL_H
#define SBP_PLUGUTIL_H

#include <stddef.h>
#include <stdint.h>

#include <switchboard/switchboard.h>

/* A request's or response's header (case-insensitive), or NULL. */
const char *sbp_req_header(const sb_http_request *req, const char *name);
const char *sbp_resp_header(const sb_http_response *resp, const char *name);

/* malloc'd copies; NULL in, NULL out. */
char *sbp_strdup(const char *s);
char *sbp_printf(const char *fmt, ...) SB_PRINTF(1, 2);

/* application/x-www-form-urlencoded -> {"name": "value"} (last one wins); NULL if malformed. */
json_t *sbp_form_decode(const unsigned char *body, size_t len);

/* Seconds (integer or decimal text) -> ms, clamped to an hour; 0 when absent or bad. */
uint32_t sbp_seconds_to_ms(double secs);
uint32_t sbp_retry_after_header_ms(const sb_http_response *resp);

/* Exponential backoff with full jitter: random in [base, min(cap, base << attempt)]. */
uint32_t sbp_backoff_ms(unsigned attempt, uint32_t base_ms, uint32_t cap_ms);

/* Lower-case hex of len bytes into out (2*len+1). */
void sbp_hex(const unsigned char *in, size_t len, char *out);
/* Hex text -> bytes; the count, or -1 when not exactly out_len bytes of hex. */
int sbp_unhex(const char *hex, unsigned char *out, size_t out_len);

/* Answer a webhook with JSON text / an {"error":{...}} body. */
void sbp_reply_json(const sb_host_services *host, sb_reply *reply, int status, const char *text);
void sbp_reply_error(const sb_host_services *host, sb_reply *reply, int status, const char *code,
                     const char *message);

/* A JSON string member, or NULL. */
const char *sbp_jstr(const json_t *obj, const char *key);

#endif
