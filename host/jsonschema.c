#include "jsonschema.h"

#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Two passes: the whole schema is checked first, so a misused keyword is
 * reported (-1) whatever the document holds; then the document is walked.
 * Checks run in a fixed order: type, enum, const, then the keywords of the
 * instance's type; an object's required list comes before its members, and
 * members and items are visited in document order.
 */

struct ctx {
    struct sbh_schema_violation *v;
    char path[sizeof(((struct sbh_schema_violation *)0)->path)];
    size_t len;
};

/* ---- path ---- */

static size_t path_grow(struct ctx *c, size_t old, int added)
{
    size_t len = old + (added > 0 ? (size_t)added : 0);
    c->len = len < sizeof(c->path) ? len : sizeof(c->path) - 1;
    return old;
}

/* Append ".key" ("key" at the root); returns the length to pop back to. */
static size_t push_key(struct ctx *c, const char *key)
{
    size_t old = c->len;
    return path_grow(c, old,
                     snprintf(c->path + old, sizeof(c->path) - old, "%s%s", old ? "." : "", key));
}

static size_t push_index(struct ctx *c, size_t i)
{
    size_t old = c->len;
    return path_grow(c, old, snprintf(c->path + old, sizeof(c->path) - old, "[%zu]", i));
}

static void pop(struct ctx *c, size_t old)
{
    c->len = old;
    c->path[old] = '\0';
}

/* ---- outcomes ---- */

__attribute__((format(printf, 2, 3))) static int fail(struct ctx *c, const char *fmt, ...)
{
    va_list ap;
    snprintf(c->v->path, sizeof(c->v->path), "%s", c->path);
    va_start(ap, fmt);
    vsnprintf(c->v->message, sizeof(c->v->message), fmt, ap);
    va_end(ap);
    return 1;
}

/* A misused keyword; c->path is where in the schema. */
__attribute__((format(printf, 2, 3))) static int bad_schema(struct ctx *c, const char *fmt, ...)
{
    char *msg = c->v->message;
    va_list ap;
    c->v->path[0] = '\0';
    int n = snprintf(msg, sizeof(c->v->message), "invalid schema%s%.100s: ", c->len ? " at " : "",
                     c->path);
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(c->v->message) - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- values ---- */

static int is_whole(const json_t *n)
{
    if (json_is_integer(n))
        return 1;
    double d = json_real_value(n);
    return json_is_real(n) && isfinite(d) && d == floor(d);
}

/* A non-negative integer keyword value (1.0 counts, as in JSON Schema). */
static int is_count(const json_t *n)
{
    return is_whole(n) && json_number_value(n) >= 0;
}

static long long count_of(const json_t *n)
{
    if (json_is_integer(n))
        return (long long)json_integer_value(n);
    /* A huge whole real would overflow the cast; any such bound is as good as infinite. */
    double d = json_real_value(n);
    return d >= 9e18 ? LLONG_MAX : (long long)d;
}

static int cmp_num(const json_t *a, const json_t *b)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        return (x > y) - (x < y);
    }
    double x = json_number_value(a), y = json_number_value(b);
    return (x > y) - (x < y);
}

static void fmt_num(const json_t *n, char *buf, size_t len)
{
    if (json_is_integer(n)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(n));
        return;
    }
    /* Shortest text that reads back as the same double. */
    double d = json_real_value(n);
    snprintf(buf, len, "%.15g", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, len, "%.17g", d);
}

/* JSON Schema equality: 1 and 1.0 are the same number. */
static int values_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return cmp_num(a, b) == 0;
    if (json_typeof(a) != json_typeof(b))
        return 0;
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b))
            return 0;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!values_equal(json_array_get(a, i), json_array_get(b, i)))
                return 0;
        return 1;
    }
    if (json_is_object(a)) {
        const char *key;
        json_t *val;
        if (json_object_size(a) != json_object_size(b))
            return 0;
        json_object_foreach ((json_t *)a, key, val) {
            const json_t *other = json_object_get(b, key);
            if (!other || !values_equal(val, other))
                return 0;
        }
        return 1;
    }
    return json_equal(a, b);
}

/* Append the compact JSON text of value; "..." once out of room. */
static void append_json(char *buf, size_t len, size_t *off, const char *sep, const json_t *value)
{
    char *text = json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT);
    int n = snprintf(buf + *off, len - *off, "%s%s", sep, text ? text : "?");
    free(text);
    if (n >= 0 && (size_t)n < len - *off) {
        *off += (size_t)n;
        return;
    }
    if (len >= 4)
        memcpy(buf + len - 4, "...", 4);
    *off = len - 1;
}

/* Code points, not bytes, as JSON Schema counts string length. */
static size_t utf8_len(const char *s, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        count += ((unsigned char)s[i] & 0xC0) != 0x80;
    return count;
}

/* "scheme://rest": a scheme per RFC 3986, something after it, no spaces. */
static int is_uri(const char *s)
{
    size_t i = 0;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
        return 0;
    while (s[i] && (strchr("+-.", s[i]) || (s[i] >= '0' && s[i] <= '9') ||
                    (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')))
        i++;
    if (strncmp(s + i, "://", 3) || !s[i + 3])
        return 0;
    for (; s[i]; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f)
            return 0;
    return 1;
}

/* ---- types ---- */

static const char *const type_names[] = {"string", "number",  "integer", "object",
                                         "array",  "boolean", "null"};
static const char *const type_phrases[] = {"a string", "a number",  "an integer", "an object",
                                           "an array", "a boolean", "null"};
#define N_TYPES (sizeof(type_names) / sizeof(type_names[0]))

static int type_index(const json_t *name)
{
    const char *s = json_string_value(name);
    for (size_t i = 0; s && i < N_TYPES; i++)
        if (!strcmp(s, type_names[i]))
            return (int)i;
    return -1;
}

static int has_type(const json_t *doc, int t)
{
    switch (t) {
    case 0:
        return json_is_string(doc);
    case 1:
        return json_is_number(doc);
    case 2:
        return json_is_number(doc) && is_whole(doc);
    case 3:
        return json_is_object(doc);
    case 4:
        return json_is_array(doc);
    case 5:
        return json_is_boolean(doc);
    default:
        return json_is_null(doc);
    }
}

/* ---- schema check (pass 1) ---- */

static int check_schema(struct ctx *c, const json_t *s);

static int check_type_keyword(struct ctx *c, const json_t *type)
{
    size_t i;
    const json_t *t;
    if (json_is_string(type) && type_index(type) >= 0)
        return 0;
    if (!json_is_array(type) || !json_array_size(type))
        return bad_schema(c, "\"type\" must be a type name or an array of them");
    json_array_foreach (type, i, t) {
        if (type_index(t) < 0)
            return bad_schema(c, "\"type\" must be a type name or an array of them");
    }
    return 0;
}

static int check_pattern_keyword(struct ctx *c, const json_t *pattern)
{
    regex_t re;
    if (!json_is_string(pattern))
        return bad_schema(c, "\"pattern\" must be a string");
    int rc = regcomp(&re, json_string_value(pattern), REG_EXTENDED | REG_NOSUB);
    if (rc) {
        char err[128];
        regerror(rc, &re, err, sizeof(err));
        return bad_schema(c, "\"pattern\" is not a valid regular expression: %s", err);
    }
    regfree(&re);
    return 0;
}

static int check_sub(struct ctx *c, const char *key, const char *name, const json_t *sub)
{
    size_t old = push_key(c, key);
    if (name)
        push_key(c, name);
    int rc = check_schema(c, sub);
    pop(c, old);
    return rc;
}

static int check_keyword_types(struct ctx *c, const json_t *s)
{
    static const char *const numbers[] = {"minimum", "maximum", "exclusiveMinimum",
                                          "exclusiveMaximum"};
    static const char *const counts[] = {"minLength", "maxLength", "minItems", "maxItems"};
    static const char *const booleans[] = {"uniqueItems", "writeOnly", "readOnly"};
    const json_t *kw;
    for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++)
        if ((kw = json_object_get(s, numbers[i])) && !json_is_number(kw))
            return bad_schema(c, "\"%s\" must be a number", numbers[i]);
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++)
        if ((kw = json_object_get(s, counts[i])) && !is_count(kw))
            return bad_schema(c, "\"%s\" must be a non-negative integer", counts[i]);
    for (size_t i = 0; i < sizeof(booleans) / sizeof(booleans[0]); i++)
        if ((kw = json_object_get(s, booleans[i])) && !json_is_boolean(kw))
            return bad_schema(c, "\"%s\" must be true or false", booleans[i]);
    if ((kw = json_object_get(s, "enum")) && !json_is_array(kw))
        return bad_schema(c, "\"enum\" must be an array");
    if ((kw = json_object_get(s, "format")) && !json_is_string(kw))
        return bad_schema(c, "\"format\" must be a string");
    return 0;
}

static int check_required_keyword(struct ctx *c, const json_t *req)
{
    size_t i;
    const json_t *name;
    if (!json_is_array(req))
        return bad_schema(c, "\"required\" must be an array of strings");
    json_array_foreach (req, i, name) {
        if (!json_is_string(name))
            return bad_schema(c, "\"required\" must be an array of strings");
    }
    return 0;
}

static int check_schema(struct ctx *c, const json_t *s)
{
    const json_t *kw, *sub;
    const char *key;
    int rc;
    if (json_is_boolean(s))
        return 0;
    if (!json_is_object(s))
        return bad_schema(c, "a schema must be an object or a boolean");
    if ((kw = json_object_get(s, "type")) && (rc = check_type_keyword(c, kw)))
        return rc;
    if ((rc = check_keyword_types(c, s)))
        return rc;
    if ((kw = json_object_get(s, "pattern")) && (rc = check_pattern_keyword(c, kw)))
        return rc;
    if ((kw = json_object_get(s, "required")) && (rc = check_required_keyword(c, kw)))
        return rc;
    if ((kw = json_object_get(s, "properties")) && !json_is_object(kw))
        return bad_schema(c, "\"properties\" must be an object of schemas");
    json_object_foreach ((json_t *)kw, key, sub) {
        if ((rc = check_sub(c, "properties", key, sub)))
            return rc;
    }
    if ((kw = json_object_get(s, "additionalProperties")) &&
        (rc = check_sub(c, "additionalProperties", NULL, kw)))
        return rc;
    if ((kw = json_object_get(s, "items")) && (rc = check_sub(c, "items", NULL, kw)))
        return rc;
    return 0;
}

/* ---- validation (pass 2) ---- */

static int validate(struct ctx *c, const json_t *s, const json_t *doc);

static int check_type(struct ctx *c, const json_t *type, const json_t *doc)
{
    char want[200];
    size_t off = 0, n = json_is_array(type) ? json_array_size(type) : 1;
    for (size_t i = 0; i < n; i++)
        if (has_type(doc, type_index(json_is_array(type) ? json_array_get(type, i) : type)))
            return 0;
    for (size_t i = 0; i < n && off < sizeof(want); i++) {
        int t = type_index(json_is_array(type) ? json_array_get(type, i) : type);
        const char *sep = !i ? "" : i + 1 == n ? " or " : ", ";
        off += (size_t)snprintf(want + off, sizeof(want) - off, "%s%s", sep, type_phrases[t]);
    }
    return fail(c, "must be %s", want);
}

static int check_enum(struct ctx *c, const json_t *values, const json_t *doc)
{
    char list[200] = "";
    size_t i, off = 0;
    const json_t *value;
    json_array_foreach (values, i, value) {
        if (values_equal(value, doc))
            return 0;
    }
    json_array_foreach (values, i, value) {
        append_json(list, sizeof(list), &off, i ? ", " : "", value);
    }
    return fail(c, "must be one of %s", list);
}

static int check_const(struct ctx *c, const json_t *value, const json_t *doc)
{
    char text[200] = "";
    size_t off = 0;
    if (values_equal(value, doc))
        return 0;
    append_json(text, sizeof(text), &off, "", value);
    return fail(c, "must be %s", text);
}

static int check_number(struct ctx *c, const json_t *s, const json_t *doc)
{
    /* Each bound fails when the comparison of doc with it gives bad (or 0, if exclusive). */
    static const struct {
        const char *keyword;
        int bad, exclusive;
        const char *message;
    } bounds[] = {
        {"minimum", -1, 0, "must be at least %s"},
        {"exclusiveMinimum", -1, 1, "must be greater than %s"},
        {"maximum", 1, 0, "must be at most %s"},
        {"exclusiveMaximum", 1, 1, "must be less than %s"},
    };
    for (size_t i = 0; i < sizeof(bounds) / sizeof(bounds[0]); i++) {
        const json_t *bound = json_object_get(s, bounds[i].keyword);
        char text[64];
        if (!bound)
            continue;
        int cmp = cmp_num(doc, bound);
        if (cmp != bounds[i].bad && !(bounds[i].exclusive && cmp == 0))
            continue;
        fmt_num(bound, text, sizeof(text));
        return fail(c, bounds[i].message, text);
    }
    return 0;
}

static int check_pattern(struct ctx *c, const json_t *pattern, const char *text)
{
    regex_t re;
    const char *p = json_string_value(pattern);
    if (regcomp(&re, p, REG_EXTENDED | REG_NOSUB))
        return bad_schema(c, "\"pattern\" is not a valid regular expression");
    int matched = regexec(&re, text, 0, NULL, 0) == 0;
    regfree(&re);
    return matched ? 0 : fail(c, "must match pattern %s", p);
}

static int check_string(struct ctx *c, const json_t *s, const json_t *doc)
{
    const json_t *kw;
    const char *text = json_string_value(doc);
    int rc;
    size_t len = utf8_len(text, json_string_length(doc));
    if ((kw = json_object_get(s, "minLength")) && len < (size_t)count_of(kw))
        return fail(c, "must be at least %lld character%s long", count_of(kw),
                    count_of(kw) == 1 ? "" : "s");
    if ((kw = json_object_get(s, "maxLength")) && len > (size_t)count_of(kw))
        return fail(c, "must be at most %lld character%s long", count_of(kw),
                    count_of(kw) == 1 ? "" : "s");
    if ((kw = json_object_get(s, "pattern")) && (rc = check_pattern(c, kw, text)))
        return rc;
    /* Other formats are annotations only, as the specification allows. */
    kw = json_object_get(s, "format");
    if (kw && !strcmp(json_string_value(kw), "uri") && !is_uri(text))
        return fail(c, "must be a URI (scheme://...)");
    return 0;
}

static int check_member(struct ctx *c, const json_t *sub, const char *key, const json_t *value)
{
    size_t old = push_key(c, key);
    int rc = validate(c, sub, value);
    pop(c, old);
    return rc;
}

static int check_object(struct ctx *c, const json_t *s, const json_t *doc)
{
    const json_t *props = json_object_get(s, "properties");
    const json_t *extra = json_object_get(s, "additionalProperties"), *name;
    const char *key;
    json_t *value;
    size_t i;
    json_array_foreach (json_object_get(s, "required"), i, name) {
        if (json_object_get(doc, json_string_value(name)))
            continue;
        size_t old = push_key(c, json_string_value(name));
        fail(c, "is required");
        pop(c, old);
        return 1;
    }
    json_object_foreach ((json_t *)doc, key, value) {
        const json_t *sub = json_object_get(props, key);
        if (!sub)
            sub = extra;
        int rc = sub ? check_member(c, sub, key, value) : 0;
        if (rc)
            return rc;
    }
    return 0;
}

static int check_array(struct ctx *c, const json_t *s, const json_t *doc)
{
    const json_t *kw, *items = json_object_get(s, "items");
    size_t n = json_array_size(doc);
    if ((kw = json_object_get(s, "minItems")) && n < (size_t)count_of(kw))
        return fail(c, "must have at least %lld item%s", count_of(kw),
                    count_of(kw) == 1 ? "" : "s");
    if ((kw = json_object_get(s, "maxItems")) && n > (size_t)count_of(kw))
        return fail(c, "must have at most %lld item%s", count_of(kw), count_of(kw) == 1 ? "" : "s");
    if (json_is_true(json_object_get(s, "uniqueItems")))
        for (size_t j = 1; j < n; j++)
            for (size_t i = 0; i < j; i++)
                if (values_equal(json_array_get(doc, i), json_array_get(doc, j)))
                    return fail(c, "must not contain duplicates (items %zu and %zu are equal)", i,
                                j);
    for (size_t i = 0; items && i < n; i++) {
        size_t old = push_index(c, i);
        int rc = validate(c, items, json_array_get(doc, i));
        pop(c, old);
        if (rc)
            return rc;
    }
    return 0;
}

static int validate(struct ctx *c, const json_t *s, const json_t *doc)
{
    const json_t *kw;
    int rc;
    if (json_is_true(s))
        return 0;
    if (json_is_false(s))
        return fail(c, "is not allowed");
    if ((kw = json_object_get(s, "type")) && (rc = check_type(c, kw, doc)))
        return rc;
    if ((kw = json_object_get(s, "enum")) && (rc = check_enum(c, kw, doc)))
        return rc;
    if ((kw = json_object_get(s, "const")) && (rc = check_const(c, kw, doc)))
        return rc;
    if (json_is_number(doc))
        return check_number(c, s, doc);
    if (json_is_string(doc))
        return check_string(c, s, doc);
    if (json_is_object(doc))
        return check_object(c, s, doc);
    if (json_is_array(doc))
        return check_array(c, s, doc);
    return 0;
}

int sbh_jsonschema_validate(const json_t *schema, const json_t *doc, struct sbh_schema_violation *v)
{
    struct sbh_schema_violation scratch = {"", ""};
    struct ctx c = {.v = v ? v : &scratch};
    int rc;
    c.v->path[0] = c.v->message[0] = '\0';
    if (!schema)
        return bad_schema(&c, "no schema");
    if ((rc = check_schema(&c, schema)))
        return rc;
    if (!doc)
        return fail(&c, "is missing");
    return validate(&c, schema, doc);
}

json_t *sbh_jsonschema_secret_fields(const json_t *schema)
{
    json_t *names = json_array(), *sub;
    const json_t *props = json_object_get(schema, "properties");
    const char *key;
    if (!names || !json_is_object(props))
        return names;
    json_object_foreach ((json_t *)props, key, sub) {
        if (json_is_true(json_object_get(sub, "writeOnly")) &&
            json_array_append_new(names, json_string(key)) < 0) {
            json_decref(names);
            return NULL;
        }
    }
    return names;
}
