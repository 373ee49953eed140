#include "json_locate.h"

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
        if (klen == strlen(want) && memcmp(sc->s + start, want, klen) == 0) {
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
