#include "json_locate.h"

#include <ctype.h>
#include <string.h>

struct scan {
    const char *s;
    size_t len;
    size_t pos;
};

static void skip_ws(struct scan *sc)
{
    while (sc->pos < sc->len && strchr(" \t\r\n", sc->s[sc->pos]) && sc->s[sc->pos])
        sc->pos++;
}

/* Skip a string token; *start and *slen receive its raw contents (escapes kept). */
static int skip_string(struct scan *sc, size_t *start, size_t *slen)
{
    if (sc->pos >= sc->len || sc->s[sc->pos] != '"')
        return -1;
    size_t begin = ++sc->pos;
    while (sc->pos < sc->len && sc->s[sc->pos] != '"')
        sc->pos += sc->s[sc->pos] == '\\' ? 2 : 1;
    if (sc->pos >= sc->len)
        return -1;
    if (start)
        *start = begin;
    if (slen)
        *slen = sc->pos - begin;
    sc->pos++;
    return 0;
}

static int skip_value(struct scan *sc);

static int skip_container(struct scan *sc, char close)
{
    sc->pos++;
    for (;;) {
        skip_ws(sc);
        if (sc->pos >= sc->len)
            return -1;
        if (sc->s[sc->pos] == close) {
            sc->pos++;
            return 0;
        }
        if (sc->s[sc->pos] == ',' || sc->s[sc->pos] == ':') {
            sc->pos++;
            continue;
        }
        if (skip_value(sc) < 0)
            return -1;
    }
}

static int skip_value(struct scan *sc)
{
    skip_ws(sc);
    if (sc->pos >= sc->len)
        return -1;
    switch (sc->s[sc->pos]) {
    case '"':
        return skip_string(sc, NULL, NULL);
    case '{':
        return skip_container(sc, '}');
    case '[':
        return skip_container(sc, ']');
    default:
        while (sc->pos < sc->len && !strchr(",}] \t\r\n", sc->s[sc->pos]))
            sc->pos++;
        return 0;
    }
}

static long hex4(const char *s, size_t avail)
{
    long v = 0;
    if (avail < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        int c = (unsigned char)s[i];
        if (!isxdigit(c))
            return -1;
        v = v * 16 + (isdigit(c) ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

static size_t utf8_put(unsigned long cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decode the escape at s (s[0] is '\\') into out; returns the bytes it took, 0 if bad. */
static size_t unescape(const char *s, size_t avail, char *out, size_t *out_len)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *p = avail >= 2 && s[1] ? strchr(from, s[1]) : NULL;
    if (p) {
        out[0] = to[p - from];
        *out_len = 1;
        return 2;
    }
    if (avail < 6 || s[1] != 'u')
        return 0;
    long cp = hex4(s + 2, avail - 2);
    size_t used = 6;
    if (cp >= 0xD800 && cp < 0xDC00 && avail >= 12 && s[6] == '\\' && s[7] == 'u') {
        long lo = hex4(s + 8, avail - 8);
        if (lo >= 0xDC00 && lo < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            used = 12;
        }
    }
    if (cp < 0)
        return 0;
    *out_len = utf8_put((unsigned long)cp, out);
    return used;
}

/* Whether the raw (still escaped) key text equals the decoded key want. */
static int key_equals(const char *raw, size_t len, const char *want)
{
    size_t wlen = strlen(want), w = 0;
    for (size_t i = 0; i < len;) {
        char buf[4] = {raw[i]};
        size_t n = 1, used = 1;
        if (raw[i] == '\\' && (used = unescape(raw + i, len - i, buf, &n)) == 0)
            return 0;
        if (w + n > wlen || memcmp(want + w, buf, n) != 0)
            return 0;
        i += used;
        w += n;
    }
    return w == wlen;
}

/* With sc at an object, move to the key named want; leaves pos at the key. */
static int find_key(struct scan *sc, const char *want)
{
    skip_ws(sc);
    if (sc->pos >= sc->len || sc->s[sc->pos] != '{')
        return -1;
    sc->pos++;
    for (;;) {
        skip_ws(sc);
        if (sc->pos >= sc->len || sc->s[sc->pos] == '}')
            return -1;
        if (sc->s[sc->pos] == ',') {
            sc->pos++;
            continue;
        }
        size_t key_at = sc->pos, start, klen;
        if (skip_string(sc, &start, &klen) < 0)
            return -1;
        if (key_equals(sc->s + start, klen, want)) {
            sc->pos = key_at;
            return 0;
        }
        skip_ws(sc);
        if (sc->pos < sc->len && sc->s[sc->pos] == ':')
            sc->pos++;
        if (skip_value(sc) < 0)
            return -1;
    }
}

static void position(const char *s, size_t pos, int *line, int *column)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < pos; i++) {
        if (s[i] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *column = c;
}

int sbh_json_locate(const char *text, size_t len, const char *const *path, size_t depth, int *line,
                    int *column)
{
    struct scan sc = {text, len, 0};
    size_t found_at = 0;
    int rc = 0;

    for (size_t i = 0; i < depth; i++) {
        size_t before = sc.pos;
        if (find_key(&sc, path[i]) < 0) {
            sc.pos = before;
            rc = -1;
            break;
        }
        found_at = sc.pos;
        if (i + 1 == depth)
            break;
        skip_string(&sc, NULL, NULL);
        skip_ws(&sc);
        if (sc.pos < sc.len && sc.s[sc.pos] == ':')
            sc.pos++;
        skip_ws(&sc);
    }
    position(text, rc == 0 ? found_at : sc.pos, line, column);
    return rc;
}
