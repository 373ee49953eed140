#include "plugutil.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

char *pu_strdup(const char *s)
{
    size_t n;
    char *out;

    if (!s)
        return NULL;
    n = strlen(s) + 1;
    out = malloc(n);
    if (out)
        memcpy(out, s, n);
    return out;
}

char *pu_printf(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;

    va_start(ap, fmt);
    if (vasprintf(&out, fmt, ap) < 0)
        out = NULL;
    va_end(ap);
    return out;
}

char *pu_json_strdup(const json_t *obj, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(obj, key));

    return pu_strdup(v && *v ? v : dflt);
}

const char *pu_header(const sb_header *headers, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (headers[i].name && strcasecmp(headers[i].name, name) == 0)
            return headers[i].value ? headers[i].value : "";
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decode [s, s+n) (form encoding: '+' is a space) into a new string. */
static char *url_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            *o++ = ' ';
        } else if (s[i] == '%' && i + 2 < n && hexval((unsigned char)s[i + 1]) >= 0 &&
                   hexval((unsigned char)s[i + 2]) >= 0) {
            *o++ = (char)(hexval((unsigned char)s[i + 1]) * 16 + hexval((unsigned char)s[i + 2]));
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

char *pu_query_param(const char *query, const char *name)
{
    size_t nl = strlen(name);

    if (!query)
        return NULL;
    while (*query) {
        const char *end = strchr(query, '&');
        const char *eq;
        size_t len = end ? (size_t)(end - query) : strlen(query);

        eq = memchr(query, '=', len);
        if (eq) {
            char *key = url_decode(query, (size_t)(eq - query));
            int match = key && strlen(key) == nl && memcmp(key, name, nl) == 0;

            free(key);
            if (match)
                return url_decode(eq + 1, len - (size_t)(eq + 1 - query));
        }
        if (!end)
            break;
        query = end + 1;
    }
    return NULL;
}

int pu_ct_equal(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    unsigned char diff = n != m;

    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(a[i] ^ (i < m ? b[i] : 0));
    return diff == 0;
}

uint32_t pu_secs_to_ms(double secs)
{
    if (!(secs > 0))
        return 0;
    if (secs * 1000.0 > (double)PU_MAX_RETRY_MS)
        return PU_MAX_RETRY_MS;
    return (uint32_t)(secs * 1000.0 + 0.5);
}

uint32_t pu_retry_after_header(const sb_http_response *resp)
{
    const char *h = pu_header(resp->headers, resp->n_headers, "Retry-After");
    char *end = NULL;
    double secs;

    if (!h)
        return 0;
    while (isspace((unsigned char)*h))
        h++;
    secs = strtod(h, &end);
    if (end == h)
        return 0; /* an HTTP-date: none of our providers sends one */
    return pu_secs_to_ms(secs);
}

void pu_buf_add(struct pu_buf *b, const void *data, size_t len)
{
    if (b->oom)
        return;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;

        while (cap < b->len + len + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (len)
        memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
}

void pu_buf_str(struct pu_buf *b, const char *s)
{
    pu_buf_add(b, s, strlen(s));
}

void pu_buf_free(struct pu_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

int pu_base64_decode(const char *in, unsigned char **out, size_t *out_len)
{
    size_t n = strlen(in), o = 0;
    unsigned char *buf = malloc(n / 4 * 3 + 3);
    uint32_t acc = 0;
    int bits = 0;

    if (!buf)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v;

        if (isspace((unsigned char)in[i]))
            continue;
        if (in[i] == '=')
            break;
        v = b64val((unsigned char)in[i]);
        if (v < 0) {
            free(buf);
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (unsigned char)(acc >> bits);
        }
    }
    *out = buf;
    *out_len = o;
    return 0;
}

const char *pu_media_kind(const char *mime)
{
    if (!mime)
        return "document";
    if (!strncasecmp(mime, "image/", 6))
        return "image";
    if (!strncasecmp(mime, "video/", 6))
        return "video";
    if (!strncasecmp(mime, "audio/", 6))
        return "audio";
    return "document";
}

char *pu_utf8_cut(const char *s, size_t max_chars)
{
    size_t i = 0, chars = 0;
    char *out;

    while (s[i] && chars < max_chars) {
        i++;
        while ((s[i] & 0xC0) == 0x80)
            i++;
        chars++;
    }
    out = malloc(i + 1);
    if (out) {
        memcpy(out, s, i);
        out[i] = '\0';
    }
    return out;
}

void pu_mp_init(struct pu_multipart *mp)
{
    static unsigned long counter;
    memset(mp, 0, sizeof(*mp));
    snprintf(mp->boundary, sizeof(mp->boundary), "sbmp%lx%lx", (unsigned long)time(NULL),
             ++counter);
    snprintf(mp->content_type, sizeof(mp->content_type), "multipart/form-data; boundary=%s",
             mp->boundary);
}

static void mp_head(struct pu_multipart *mp, const char *name)
{
    pu_buf_str(&mp->buf, "--");
    pu_buf_str(&mp->buf, mp->boundary);
    pu_buf_str(&mp->buf, "\r\nContent-Disposition: form-data; name=\"");
    pu_buf_str(&mp->buf, name);
    pu_buf_str(&mp->buf, "\"");
}

void pu_mp_field(struct pu_multipart *mp, const char *name, const char *value)
{
    mp_head(mp, name);
    pu_buf_str(&mp->buf, "\r\n\r\n");
    pu_buf_str(&mp->buf, value);
    pu_buf_str(&mp->buf, "\r\n");
}

void pu_mp_file(struct pu_multipart *mp, const char *name, const char *filename, const char *mime,
                const unsigned char *data, size_t len)
{
    mp_head(mp, name);
    pu_buf_str(&mp->buf, "; filename=\"");
    /* Quotes and line breaks cannot appear inside the quoted filename. */
    for (const char *f = filename; *f; f++)
        pu_buf_add(&mp->buf, strchr("\"\r\n\\", *f) ? "_" : f, 1);
    pu_buf_str(&mp->buf, "\"\r\nContent-Type: ");
    pu_buf_str(&mp->buf, mime ? mime : "application/octet-stream");
    pu_buf_str(&mp->buf, "\r\n\r\n");
    pu_buf_add(&mp->buf, data, len);
    pu_buf_str(&mp->buf, "\r\n");
}

void pu_mp_end(struct pu_multipart *mp)
{
    pu_buf_str(&mp->buf, "--");
    pu_buf_str(&mp->buf, mp->boundary);
    pu_buf_str(&mp->buf, "--\r\n");
}

int pu_mp_upload(struct pu_multipart *mp, const json_t *fields, const char *file_field,
                 const json_t *media, const char *dflt_filename, const char **why)
{
    unsigned char *data = NULL;
    size_t len = 0;
    const char *key, *b64 = pu_jstr(media, "data_base64"), *filename = pu_jstr(media, "filename");
    json_t *v;

    if (!b64 || pu_base64_decode(b64, &data, &len)) {
        *why = "media.data_base64 is not valid base64";
        return -1;
    }
    pu_mp_init(mp);
    json_object_foreach ((json_t *)fields, key, v) {
        char *text = json_is_string(v) ? pu_strdup(json_string_value(v))
                                       : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!text)
            mp->buf.oom = 1;
        else
            pu_mp_field(mp, key, text);
        free(text);
    }
    pu_mp_file(mp, file_field, filename && *filename ? filename : dflt_filename,
               pu_jstr(media, "mime_type"), data, len);
    pu_mp_end(mp);
    free(data);
    if (mp->buf.oom) {
        pu_buf_free(&mp->buf);
        return -2;
    }
    return 0;
}

void pu_reply_error(const sb_host_services *host, sb_reply *reply, int status, const char *code,
                    const char *message)
{
    json_t *err =
        json_pack("{s:{s:s,s:s,s:{}}}", "error", "code", code, "message", message, "details");
    char *text = err ? json_dumps(err, JSON_COMPACT) : NULL;
    static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";

    if (text)
        host->reply(reply, status, "application/json", text, strlen(text));
    else
        host->reply(reply, 500, "application/json", oom, sizeof(oom) - 1);
    free(text);
    json_decref(err);
}

const char *pu_req_header(const sb_http_request *req, const char *name)
{
    return pu_header(req->headers, req->n_headers, name);
}

const char *pu_resp_header(const sb_http_response *resp, const char *name)
{
    return pu_header(resp->headers, resp->n_headers, name);
}

const char *pu_jstr(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

json_t *pu_form_decode(const unsigned char *body, size_t len)
{
    json_t *obj = json_object();
    const char *p = (const char *)body, *end = p + len;
    while (obj && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (stop > p) {
            const char *ke = eq ? eq : stop;
            char *k = url_decode(p, (size_t)(ke - p));
            char *v = eq ? url_decode(eq + 1, (size_t)(stop - eq - 1)) : pu_strdup("");
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

int pu_services_usable(const sb_host_services *s, sb_plugin *self, const char *plugin,
                       size_t needed)
{
    if (s->abi_major == SB_ABI_MAJOR && s->struct_size >= needed)
        return 1;
    s->log(self, NULL, SB_LOG_ERROR, "%s: host services ABI %u.%u (size %u, need %zu) unusable",
           plugin, (unsigned)s->abi_major, (unsigned)s->abi_minor, (unsigned)s->struct_size,
           needed);
    return 0;
}

uint32_t pu_backoff_ms(unsigned attempt, uint32_t base_ms, uint32_t cap_ms)
{
    uint64_t top = (uint64_t)base_ms << (attempt > 16 ? 16 : attempt);
    if (top > cap_ms)
        top = cap_ms;
    if (top <= base_ms)
        return base_ms;
    return base_ms + (uint32_t)((uint64_t)random() % (top - base_ms + 1));
}

void pu_hex(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = 0;
}

int pu_unhex(const char *hex, unsigned char *out, size_t out_len)
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

void pu_reply_json(const sb_host_services *host, sb_reply *reply, int status, const char *text)
{
    host->reply(reply, status, "application/json", text, strlen(text));
}

void pu_reply_event_rejected(const sb_host_services *host, sb_reply *reply)
{
    host->reply_header(reply, "Retry-After", "1");
    pu_reply_error(host, reply, 503, "event_rejected", "the host did not accept the event");
}
