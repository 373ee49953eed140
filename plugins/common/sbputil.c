#include "sbputil.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_RETRY_AFTER_MS (3600u * 1000u)

const char *sbp_req_header(const sb_http_request *req, const char *name)
{
    for (size_t i = 0; req && i < req->n_headers; i++)
        if (req->headers[i].name && !strcasecmp(req->headers[i].name, name))
            return req->headers[i].value;
    return NULL;
}

const char *sbp_resp_header(const sb_http_response *resp, const char *name)
{
    for (size_t i = 0; resp && i < resp->n_headers; i++)
        if (resp->headers[i].name && !strcasecmp(resp->headers[i].name, name))
            return resp->headers[i].value;
    return NULL;
}

char *sbp_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

char *sbp_printf(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    if (vasprintf(&out, fmt, ap) < 0)
        out = NULL;
    va_end(ap);
    return out;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode [s, s+n) with '+' as space; malloc'd, NULL if malformed. */
static char *form_unescape(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+')
            *o++ = ' ';
        else if (s[i] == '%') {
            int hi, lo;
            if (i + 2 >= n) {
                free(out);
                return NULL;
            }
            hi = hexval((unsigned char)s[i + 1]);
            lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0) {
                free(out);
                return NULL;
            }
            *o++ = (char)(hi * 16 + lo);
            i += 2;
        } else
            *o++ = s[i];
    }
    *o = 0;
    return out;
}

json_t *sbp_form_decode(const unsigned char *body, size_t len)
{
    json_t *obj = json_object();
    const char *p = (const char *)body, *end = p + len;
    while (obj && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (stop > p) {
            const char *ke = eq ? eq : stop;
            char *k = form_unescape(p, (size_t)(ke - p));
            char *v = eq ? form_unescape(eq + 1, (size_t)(stop - eq - 1)) : strdup("");
            json_t *js = v ? json_string(v) : NULL; /* NULL too when not UTF-8 */
            if (!k || !v || !js) {
                free(k);
                free(v);
                json_decref(js);
                json_decref(obj);
                return NULL;
            }
            json_object_set_new(obj, k, js);
            free(k);
            free(v);
        }
        p = amp ? amp + 1 : end;
    }
    return obj;
}

uint32_t sbp_seconds_to_ms(double secs)
{
    if (!(secs > 0))
        return 0;
    if (secs * 1000.0 > (double)MAX_RETRY_AFTER_MS)
        return MAX_RETRY_AFTER_MS;
    return (uint32_t)(secs * 1000.0 + 0.5);
}

uint32_t sbp_retry_after_header_ms(const sb_http_response *resp)
{
    const char *h = sbp_resp_header(resp, "Retry-After");
    if (!h)
        return 0;
    while (isspace((unsigned char)*h))
        h++;
    char *end = NULL;
    double secs = strtod(h, &end);
    return end != h ? sbp_seconds_to_ms(secs) : 0;
}

uint32_t sbp_backoff_ms(unsigned attempt, uint32_t base_ms, uint32_t cap_ms)
{
    uint64_t top = (uint64_t)base_ms << (attempt > 16 ? 16 : attempt);
    if (top > cap_ms)
        top = cap_ms;
    if (top <= base_ms)
        return base_ms;
    return base_ms + (uint32_t)((uint64_t)random() % (top - base_ms + 1));
}

void sbp_hex(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = 0;
}

int sbp_unhex(const char *hex, unsigned char *out, size_t out_len)
{
    if (!hex || strlen(hex) != 2 * out_len)
        return -1;
    for (size_t i = 0; i < out_len; i++) {
        int hi = hexval((unsigned char)hex[2 * i]), lo = hexval((unsigned char)hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi * 16 + lo);
    }
    return (int)out_len;
}

void sbp_reply_json(const sb_host_services *host, sb_reply *reply, int status, const char *text)
{
    host->reply(reply, status, "application/json", text, strlen(text));
}

void sbp_reply_error(const sb_host_services *host, sb_reply *reply, int status, const char *code,
                     const char *message)
{
    json_t *err =
        json_pack("{s:{s:s,s:s,s:{}}}", "error", "code", code, "message", message, "details");
    char *text = err ? json_dumps(err, JSON_COMPACT) : NULL;
    sbp_reply_json(host, reply, status,
                   text ? text : "{\"error\":{\"code\":\"internal\",\"message\":\"oom\"}}");
    free(text);
    json_decref(err);
}

const char *sbp_jstr(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}
