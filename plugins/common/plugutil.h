/*
 * Small helpers shared by the bundled provider plugins (compiled into each
 * plugin that lists plugutil.c in its sources; nothing here is exported).
 * SDK and Jansson only: no host headers, no libcurl, no OpenSSL.
 */
#ifndef SB_PLUGUTIL_H
#define SB_PLUGUTIL_H

#include <stddef.h>
#include <stdint.h>

#include <switchboard/switchboard.h>

/* Upper bound of a provider's retry hint we pass on (1 hour). */
#define PU_MAX_RETRY_MS (3600u * 1000u)

char *pu_strdup(const char *s);
/* malloc'd printf; NULL when out of memory. */
char *pu_printf(const char *fmt, ...) SB_PRINTF(1, 2);
/* strdup of a JSON string member, or of dflt (may be NULL) when absent/empty. */
char *pu_json_strdup(const json_t *obj, const char *key, const char *dflt);

/* Case-insensitive header lookup; NULL when absent. */
const char *pu_header(const sb_header *headers, size_t n, const char *name);
/* The url-decoded value of name in a query string (malloc'd), or NULL. */
char *pu_query_param(const char *query, const char *name);
/* Constant-time equality of two NUL-terminated strings (length leaks). */
int pu_ct_equal(const char *a, const char *b);
/* Seconds -> milliseconds, clamped to PU_MAX_RETRY_MS; 0 for <= 0. */
uint32_t pu_secs_to_ms(double secs);
/* Retry-After (delta-seconds) of a response in ms, or 0. */
uint32_t pu_retry_after_header(const sb_http_response *resp);

/* A growing byte buffer; p is NUL-terminated after every append. */
struct pu_buf {
    char *p;
    size_t len, cap;
    int oom;
};
void pu_buf_add(struct pu_buf *b, const void *data, size_t len);
void pu_buf_str(struct pu_buf *b, const char *s);
void pu_buf_free(struct pu_buf *b);

/* Standard base64 (padding optional, whitespace skipped); 0 or -1. */
int pu_base64_decode(const char *in, unsigned char **out, size_t *out_len);

/* "image", "video", "audio" or "document" for a MIME type. */
const char *pu_media_kind(const char *mime);
/* A copy of s cut to at most max_chars UTF-8 characters. */
char *pu_utf8_cut(const char *s, size_t max_chars);

/*
 * A multipart/form-data body: pu_mp_field() for text parts, pu_mp_file() for
 * the file part; pu_mp_end() closes it. boundary is fixed per body.
 */
struct pu_multipart {
    struct pu_buf buf;
    char boundary[48];
    char content_type[96];
};
void pu_mp_init(struct pu_multipart *mp);
void pu_mp_field(struct pu_multipart *mp, const char *name, const char *value);
void pu_mp_file(struct pu_multipart *mp, const char *name, const char *filename, const char *mime,
                const unsigned char *data, size_t len);
void pu_mp_end(struct pu_multipart *mp);
/*
 * A whole upload body: every member of fields as a text part (strings as
 * they are, anything else as compact JSON), then the bytes of a message's
 * media.data_base64 as the file part file_field (media.filename, else
 * dflt_filename; media.mime_type). 0; -1 with *why when the base64 is bad;
 * -2 out of memory. On success the caller owns mp->buf (pu_buf_free).
 */
int pu_mp_upload(struct pu_multipart *mp, const json_t *fields, const char *file_field,
                 const json_t *media, const char *dflt_filename, const char **why);

/* A request's or response's header (case-insensitive), or NULL. */
const char *pu_req_header(const sb_http_request *req, const char *name);
const char *pu_resp_header(const sb_http_response *resp, const char *name);
/* A JSON string member, or NULL. */
const char *pu_jstr(const json_t *obj, const char *key);
/* application/x-www-form-urlencoded -> {"name": "value"} (last one wins); NULL if not UTF-8. */
json_t *pu_form_decode(const unsigned char *body, size_t len);
/* Bytes of sb_host_services up to and including member (for pu_services_usable). */
#define PU_SERVICES_THROUGH(member)                                                                \
    (offsetof(sb_host_services, member) + sizeof(((sb_host_services *)0)->member))
/*
 * 1 when the host's services table speaks our ABI major and reaches needed
 * bytes; otherwise logs why, naming plugin, and returns 0 (init then fails).
 */
int pu_services_usable(const sb_host_services *s, sb_plugin *self, const char *plugin,
                       size_t needed);
/* Exponential backoff with full jitter: random in [base, min(cap, base << attempt)]. */
uint32_t pu_backoff_ms(unsigned attempt, uint32_t base_ms, uint32_t cap_ms);
/* Lower-case hex of len bytes into out (2*len+1). */
void pu_hex(const unsigned char *in, size_t len, char *out);
/* Hex text -> bytes; the count, or -1 when not exactly out_len bytes of hex. */
int pu_unhex(const char *hex, unsigned char *out, size_t out_len);

/* Answer a webhook with JSON text. */
void pu_reply_json(const sb_host_services *host, sb_reply *reply, int status, const char *text);
/* Answer 503 "event_rejected" with Retry-After: 1, so the provider sends the
 * webhook again (the host did not take an event). */
void pu_reply_event_rejected(const sb_host_services *host, sb_reply *reply);
/* Answer a webhook with a JSON error in the API's shape. */
void pu_reply_error(const sb_host_services *host, sb_reply *reply, int status, const char *code,
                    const char *message);

#endif
