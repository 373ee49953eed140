/*
 * Unit tests of the JSON Schema subset validator (host/jsonschema.c).
 *
 * Schemas and documents are written as JSON text; every failing case checks
 * the exact path and message of the violation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "runner.h"
#include <jansson.h>

#include "jsonschema.h"

/* plugins/echo/echo.c, ECHO_SCHEMA */
#define ECHO_SCHEMA                                                                                \
    "{\"type\":\"object\",\"properties\":{\"prefix\":{\"type\":\"string\"}},"                      \
    "\"additionalProperties\":false}"

static json_t *parse(const char *text)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &err);
    if (!v)
        fprintf(stderr, "\n  bad test JSON %s: %s\n", text, err.text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    return v;
}

static int run(const char *schema, const char *doc, struct sbh_schema_violation *v)
{
    json_t *s = parse(schema), *d = parse(doc);
    memset(v, 'x', sizeof(*v)); /* results must not depend on what was there */
    int rc = sbh_jsonschema_validate(s, d, v);
    json_decref(s);
    json_decref(d);
    return rc;
}

static void expect_ok(const char *schema, const char *doc)
{
    struct sbh_schema_violation v;
    int rc = run(schema, doc, &v);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc != 0)
        fprintf(stderr, "\n  %s against %s: %d %s: %s\n", doc, schema, rc, v.path, v.message);
}

static void expect_violation(const char *schema, const char *doc, const char *path,
                             const char *message)
{
    struct sbh_schema_violation v;
    int rc = run(schema, doc, &v);
    CU_ASSERT_EQUAL(rc, 1);
    CU_ASSERT_STRING_EQUAL(v.path, path);
    CU_ASSERT_STRING_EQUAL(v.message, message);
    if (rc != 1 || strcmp(v.path, path) || strcmp(v.message, message))
        fprintf(stderr, "\n  %s against %s: %d \"%s\": %s\n", doc, schema, rc, rc ? v.path : "",
                rc ? v.message : "");
}

/* The schema is refused (-1) whatever the document; message holds part. */
static void expect_bad_schema(const char *schema, const char *doc, const char *part)
{
    struct sbh_schema_violation v;
    int rc = run(schema, doc, &v);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(v.message, part));
    if (rc != -1 || !strstr(v.message, part))
        fprintf(stderr, "\n  %s: %d %s\n", schema, rc, rc ? v.message : "");
}

/* ---- type ---- */

static void test_type_single(void)
{
    expect_ok("{\"type\":\"string\"}", "\"x\"");
    expect_violation("{\"type\":\"string\"}", "5", "", "must be a string");
    expect_ok("{\"type\":\"number\"}", "5");
    expect_ok("{\"type\":\"number\"}", "5.5");
    expect_violation("{\"type\":\"number\"}", "\"5\"", "", "must be a number");
    expect_ok("{\"type\":\"integer\"}", "5");
    expect_ok("{\"type\":\"integer\"}", "-0");
    expect_violation("{\"type\":\"integer\"}", "5.5", "", "must be an integer");
    expect_violation("{\"type\":\"integer\"}", "true", "", "must be an integer");
    expect_ok("{\"type\":\"boolean\"}", "false");
    expect_violation("{\"type\":\"boolean\"}", "0", "", "must be a boolean");
    expect_ok("{\"type\":\"null\"}", "null");
    expect_violation("{\"type\":\"null\"}", "{}", "", "must be null");
    expect_ok("{\"type\":\"object\"}", "{}");
    expect_violation("{\"type\":\"object\"}", "[]", "", "must be an object");
    expect_ok("{\"type\":\"array\"}", "[]");
    expect_violation("{\"type\":\"array\"}", "{}", "", "must be an array");
}

/* Jansson keeps 3.0 a real; JSON Schema calls it an integer. */
static void test_type_integer_real(void)
{
    expect_ok("{\"type\":\"integer\"}", "3.0");
    expect_ok("{\"type\":\"integer\"}", "1e3");
    expect_violation("{\"type\":\"integer\"}", "3.000001", "", "must be an integer");
    expect_ok("{\"type\":\"integer\",\"maximum\":3}", "3.0");
}

static void test_type_array(void)
{
    expect_ok("{\"type\":[\"string\",\"null\"]}", "null");
    expect_ok("{\"type\":[\"string\",\"null\"]}", "\"a\"");
    expect_violation("{\"type\":[\"string\",\"null\"]}", "5", "", "must be a string or null");
    expect_violation("{\"type\":[\"string\",\"integer\",\"null\"]}", "1.5", "",
                     "must be a string, an integer or null");
}

/* ---- enum, const ---- */

static void test_enum(void)
{
    const char *s = "{\"enum\":[\"webhook\",\"polling\"]}";
    expect_ok(s, "\"polling\"");
    expect_violation(s, "\"push\"", "", "must be one of \"webhook\", \"polling\"");
    expect_violation(s, "1", "", "must be one of \"webhook\", \"polling\"");
    expect_ok("{\"enum\":[1,2,null]}", "1.0");
    expect_ok("{\"enum\":[1,2,null]}", "null");
    expect_violation("{\"enum\":[1,2,null]}", "3", "", "must be one of 1, 2, null");
    expect_ok("{\"enum\":[{\"a\":[1,2]}]}", "{\"a\":[1,2.0]}");
    expect_violation("{\"enum\":[{\"a\":[1,2]}]}", "{\"a\":[2,1]}", "",
                     "must be one of {\"a\":[1,2]}");
}

static void test_enum_long_message(void)
{
    char schema[4096];
    size_t off = (size_t)snprintf(schema, sizeof(schema), "{\"enum\":[");
    for (int i = 0; i < 100; i++)
        off += (size_t)snprintf(schema + off, sizeof(schema) - off, "%s\"value-%03d\"",
                                i ? "," : "", i);
    snprintf(schema + off, sizeof(schema) - off, "]}");
    struct sbh_schema_violation v;
    CU_ASSERT_EQUAL(run(schema, "\"other\"", &v), 1);
    CU_ASSERT(strlen(v.message) < sizeof(v.message));
    CU_ASSERT_EQUAL(strncmp(v.message, "must be one of \"value-000\", ", 28), 0);
    CU_ASSERT_STRING_EQUAL(v.message + strlen(v.message) - 3, "...");
}

static void test_const(void)
{
    expect_ok("{\"const\":\"v1\"}", "\"v1\"");
    expect_violation("{\"const\":\"v1\"}", "\"v2\"", "", "must be \"v1\"");
    expect_ok("{\"const\":{\"n\":2}}", "{\"n\":2.0}");
    expect_violation("{\"const\":{\"n\":2}}", "{\"n\":2,\"m\":1}", "", "must be {\"n\":2}");
    expect_violation("{\"const\":null}", "false", "", "must be null");
}

/* ---- numbers ---- */

static void test_minimum_maximum(void)
{
    expect_ok("{\"minimum\":1}", "1");
    expect_violation("{\"minimum\":1}", "0", "", "must be at least 1");
    expect_violation("{\"minimum\":1}", "0.99", "", "must be at least 1");
    expect_ok("{\"minimum\":0.5}", "0.5");
    expect_violation("{\"minimum\":0.5}", "0", "", "must be at least 0.5");
    expect_ok("{\"maximum\":10}", "10");
    expect_violation("{\"maximum\":10}", "11", "", "must be at most 10");
    expect_violation("{\"maximum\":10}", "10.5", "", "must be at most 10");
    /* Bounds only concern numbers. */
    expect_ok("{\"minimum\":1,\"maximum\":2}", "\"a string\"");
    expect_ok("{\"minimum\":-9007199254740993}", "-9007199254740992");
    expect_violation("{\"maximum\":9007199254740992}", "9007199254740993", "",
                     "must be at most 9007199254740992");
}

static void test_exclusive_bounds(void)
{
    expect_violation("{\"exclusiveMinimum\":0}", "0", "", "must be greater than 0");
    expect_violation("{\"exclusiveMinimum\":0}", "-1", "", "must be greater than 0");
    expect_ok("{\"exclusiveMinimum\":0}", "0.001");
    expect_violation("{\"exclusiveMaximum\":1.5}", "1.5", "", "must be less than 1.5");
    expect_ok("{\"exclusiveMaximum\":1.5}", "1");
    expect_violation("{\"exclusiveMaximum\":0.1}", "0.2", "", "must be less than 0.1");
}

/* ---- strings ---- */

static void test_length(void)
{
    expect_ok("{\"minLength\":2}", "\"ab\"");
    expect_violation("{\"minLength\":2}", "\"a\"", "", "must be at least 2 characters long");
    expect_violation("{\"minLength\":1}", "\"\"", "", "must be at least 1 character long");
    expect_ok("{\"maxLength\":3}", "\"abc\"");
    expect_violation("{\"maxLength\":3}", "\"abcd\"", "", "must be at most 3 characters long");
    /* Characters, not bytes: "é" is two bytes of UTF-8. */
    expect_ok("{\"maxLength\":1}", "\"\\u00e9\"");
    expect_violation("{\"minLength\":3}", "\"\\u00e9\\u00e9\"", "",
                     "must be at least 3 characters long");
    expect_ok("{\"minLength\":2.0}", "\"ab\"");
    expect_ok("{\"minLength\":5}", "42");
}

static void test_pattern(void)
{
    expect_ok("{\"pattern\":\"^[a-z]+$\"}", "\"abc\"");
    expect_violation("{\"pattern\":\"^[a-z]+$\"}", "\"abc1\"", "", "must match pattern ^[a-z]+$");
    /* Unanchored, as in JSON Schema: a match anywhere will do. */
    expect_ok("{\"pattern\":\"b\"}", "\"abc\"");
    expect_ok("{\"pattern\":\"^[0-9]+:[A-Za-z0-9_-]{3,}$\"}", "\"123:AA-_x\"");
    expect_violation("{\"pattern\":\"^[0-9]+:[A-Za-z0-9_-]{3,}$\"}", "\"123:AA\"", "",
                     "must match pattern ^[0-9]+:[A-Za-z0-9_-]{3,}$");
    expect_ok("{\"pattern\":\"^x$\"}", "7");
}

static void test_format_uri(void)
{
    const char *s = "{\"type\":\"string\",\"format\":\"uri\"}";
    expect_ok(s, "\"https://example.com/hook?x=1\"");
    expect_ok(s, "\"svn+ssh://host\"");
    expect_violation(s, "\"example.com\"", "", "must be a URI (scheme://...)");
    expect_violation(s, "\"https://\"", "", "must be a URI (scheme://...)");
    expect_violation(s, "\"1http://x\"", "", "must be a URI (scheme://...)");
    expect_violation(s, "\"http://a b\"", "", "must be a URI (scheme://...)");
    expect_violation(s, "\"mailto:me@example.com\"", "", "must be a URI (scheme://...)");
    /* Other formats are annotations. */
    expect_ok("{\"format\":\"email\"}", "\"not an email\"");
    /* Checks run in order: pattern before format. */
    expect_violation("{\"pattern\":\"^https\",\"format\":\"uri\"}", "\"https:x\"", "",
                     "must be a URI (scheme://...)");
    expect_violation("{\"pattern\":\"^https\",\"format\":\"uri\"}", "\"http://x\"", "",
                     "must match pattern ^https");
}

/* ---- objects ---- */

static void test_required(void)
{
    const char *s = "{\"type\":\"object\",\"required\":[\"token\",\"mode\"],"
                    "\"properties\":{\"mode\":{\"type\":\"string\"}}}";
    expect_ok(s, "{\"token\":\"t\",\"mode\":\"m\"}");
    /* required comes first, even before a wrong member earlier in the document */
    expect_violation(s, "{\"mode\":5}", "token", "is required");
    expect_violation(s, "{\"token\":1}", "mode", "is required");
    expect_violation(s, "{\"mode\":5,\"token\":1}", "mode", "must be a string");
    /* Only objects have required members. */
    expect_ok("{\"required\":[\"a\"]}", "[1]");
}

static void test_properties_document_order(void)
{
    const char *s = "{\"properties\":{\"a\":{\"type\":\"string\"},\"b\":{\"type\":\"string\"}}}";
    expect_violation(s, "{\"a\":1,\"b\":2}", "a", "must be a string");
    expect_violation(s, "{\"b\":2,\"a\":1}", "b", "must be a string");
    expect_ok(s, "{\"a\":\"x\",\"c\":5}");
}

static void test_additional_properties(void)
{
    const char *closed = "{\"properties\":{\"a\":{}},\"additionalProperties\":false}";
    expect_ok(closed, "{\"a\":1}");
    expect_violation(closed, "{\"a\":1,\"x\":2}", "x", "is not allowed");
    const char *typed =
        "{\"properties\":{\"a\":{}},\"additionalProperties\":{\"type\":\"integer\"}}";
    expect_ok(typed, "{\"a\":\"s\",\"b\":1,\"c\":2}");
    expect_violation(typed, "{\"a\":\"s\",\"b\":1,\"c\":\"x\"}", "c", "must be an integer");
    expect_ok("{\"additionalProperties\":true}", "{\"z\":null}");
}

static void test_nested_paths(void)
{
    const char *s = "{\"properties\":{\"a\":{\"properties\":{\"b\":{\"type\":\"string\"},"
                    "\"c\":{\"required\":[\"d\"]}}}}}";
    expect_violation(s, "{\"a\":{\"b\":1}}", "a.b", "must be a string");
    expect_violation(s, "{\"a\":{\"b\":\"x\",\"c\":{}}}", "a.c.d", "is required");
    const char *list =
        "{\"properties\":{\"list\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}}}";
    expect_ok(list, "{\"list\":[\"a\",\"b\"]}");
    expect_violation(list, "{\"list\":[\"a\",\"b\",3]}", "list[2]", "must be a string");
    const char *deep = "{\"items\":{\"items\":{\"properties\":{\"k\":{\"const\":1}}}}}";
    expect_violation(deep, "[[],[{\"k\":1},{\"k\":2}]]", "[1][1].k", "must be 1");
}

/* A path longer than the buffer is cut, never overrun. */
static void test_long_path(void)
{
    char schema[8192] = "", doc[8192] = "";
    size_t so = 0, dd = 0;
    for (int i = 0; i < 60; i++) {
        so += (size_t)snprintf(schema + so, sizeof(schema) - so,
                               "{\"properties\":{\"segment_%02d\":", i);
        dd += (size_t)snprintf(doc + dd, sizeof(doc) - dd, "{\"segment_%02d\":", i);
    }
    so += (size_t)snprintf(schema + so, sizeof(schema) - so, "{\"type\":\"string\"}");
    dd += (size_t)snprintf(doc + dd, sizeof(doc) - dd, "1");
    for (int i = 0; i < 60; i++) {
        so += (size_t)snprintf(schema + so, sizeof(schema) - so, "}}");
        dd += (size_t)snprintf(doc + dd, sizeof(doc) - dd, "}");
    }
    struct sbh_schema_violation v;
    CU_ASSERT_EQUAL(run(schema, doc, &v), 1);
    CU_ASSERT_EQUAL(strlen(v.path), sizeof(v.path) - 1);
    CU_ASSERT_EQUAL(strncmp(v.path, "segment_00.segment_01.", 22), 0);
    CU_ASSERT_STRING_EQUAL(v.message, "must be a string");
}

/* ---- arrays ---- */

static void test_items_counts(void)
{
    expect_ok("{\"minItems\":1}", "[0]");
    expect_violation("{\"minItems\":1}", "[]", "", "must have at least 1 item");
    expect_violation("{\"minItems\":2}", "[1]", "", "must have at least 2 items");
    expect_ok("{\"maxItems\":2}", "[1,2]");
    expect_violation("{\"maxItems\":2}", "[1,2,3]", "", "must have at most 2 items");
    expect_violation("{\"properties\":{\"l\":{\"maxItems\":0}}}", "{\"l\":[1]}", "l",
                     "must have at most 0 items");
    expect_ok("{\"minItems\":3}", "\"abc\"");
}

static void test_unique_items(void)
{
    const char *s = "{\"uniqueItems\":true}";
    expect_ok(s, "[1,2,\"1\",[1],{\"a\":1},{\"a\":2}]");
    expect_violation(s, "[1,2,1]", "", "must not contain duplicates (items 0 and 2 are equal)");
    expect_violation(s, "[3,1,1.0]", "", "must not contain duplicates (items 1 and 2 are equal)");
    expect_violation(s, "[{\"a\":1},{\"a\":1}]", "",
                     "must not contain duplicates (items 0 and 1 are equal)");
    expect_ok("{\"uniqueItems\":false}", "[1,1]");
}

static void test_items(void)
{
    expect_ok("{\"items\":{\"type\":\"integer\",\"minimum\":0}}", "[0,1,2]");
    expect_violation("{\"items\":{\"type\":\"integer\",\"minimum\":0}}", "[0,-1,\"x\"]", "[1]",
                     "must be at least 0");
    expect_violation("{\"items\":false}", "[1]", "[0]", "is not allowed");
    expect_ok("{\"items\":false}", "[]");
}

/* ---- schema forms ---- */

static void test_boolean_schemas_and_unknown_keywords(void)
{
    expect_ok("true", "{\"anything\":[1]}");
    expect_violation("false", "1", "", "is not allowed");
    expect_violation("{\"properties\":{\"gone\":false}}", "{\"gone\":0}", "gone", "is not allowed");
    expect_ok("{\"foo\":5,\"default\":3,\"description\":\"d\",\"title\":\"t\","
              "\"$schema\":\"https://json-schema.org/draft/2020-12/schema\"}",
              "\"x\"");
    expect_ok("{}", "null");
}

static void test_bad_schema(void)
{
    expect_bad_schema("{\"type\":5}", "1", "\"type\"");
    expect_bad_schema("{\"type\":\"strin\"}", "\"x\"", "\"type\"");
    expect_bad_schema("{\"type\":[]}", "1", "\"type\"");
    expect_bad_schema("{\"type\":[\"string\",1]}", "1", "\"type\"");
    expect_bad_schema("{\"pattern\":\"(\"}", "\"x\"", "\"pattern\" is not a valid regular");
    expect_bad_schema("{\"pattern\":5}", "\"x\"", "\"pattern\" must be a string");
    expect_bad_schema("{\"minLength\":-1}", "\"x\"", "\"minLength\"");
    expect_bad_schema("{\"maxItems\":\"3\"}", "[]", "\"maxItems\"");
    expect_bad_schema("{\"minItems\":1.5}", "[]", "\"minItems\"");
    expect_bad_schema("{\"minimum\":\"0\"}", "1", "\"minimum\"");
    expect_bad_schema("{\"exclusiveMaximum\":true}", "1", "\"exclusiveMaximum\"");
    expect_bad_schema("{\"required\":\"a\"}", "{}", "\"required\"");
    expect_bad_schema("{\"required\":[1]}", "{}", "\"required\"");
    expect_bad_schema("{\"properties\":[]}", "{}", "\"properties\"");
    expect_bad_schema("{\"enum\":\"a\"}", "\"a\"", "\"enum\"");
    expect_bad_schema("{\"format\":1}", "\"a\"", "\"format\"");
    expect_bad_schema("{\"uniqueItems\":1}", "[]", "\"uniqueItems\"");
    expect_bad_schema("{\"writeOnly\":\"yes\"}", "1", "\"writeOnly\"");
    expect_bad_schema("{\"items\":5}", "[]", "schema must be");
    expect_bad_schema("{\"additionalProperties\":\"no\"}", "{}", "schema must be");
    expect_bad_schema("5", "1", "schema must be");
    /* Found even where the document does not go, and located. */
    expect_bad_schema("{\"properties\":{\"mode\":{\"pattern\":\"[\"}}}", "{}",
                      "at properties.mode:");
    expect_bad_schema("{\"items\":{\"type\":\"nope\"}}", "5", "at items:");
    struct sbh_schema_violation v;
    json_t *doc = json_integer(1);
    CU_ASSERT_EQUAL(sbh_jsonschema_validate(NULL, doc, &v), -1);
    json_decref(doc);
}

/* ---- secrets ---- */

static void test_secret_fields(void)
{
    json_t *s = parse("{\"type\":\"object\",\"properties\":{"
                      "\"token\":{\"type\":\"string\",\"writeOnly\":true},"
                      "\"mode\":{\"type\":\"string\",\"writeOnly\":false},"
                      "\"nested\":{\"properties\":{\"inner\":{\"writeOnly\":true}}},"
                      "\"api_secret\":{\"writeOnly\":true},"
                      "\"plain\":{}}}");
    json_t *names = sbh_jsonschema_secret_fields(s);
    json_t *want = parse("[\"token\",\"api_secret\"]");
    CU_ASSERT_PTR_NOT_NULL_FATAL(names);
    CU_ASSERT(json_equal(names, want));
    json_decref(names);
    json_decref(want);
    json_decref(s);

    const char *none[] = {"{}", "true", "{\"properties\":{\"a\":{\"type\":\"string\"}}}",
                          ECHO_SCHEMA};
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        s = parse(none[i]);
        names = sbh_jsonschema_secret_fields(s);
        CU_ASSERT(json_is_array(names) && json_array_size(names) == 0);
        json_decref(names);
        json_decref(s);
    }
    names = sbh_jsonschema_secret_fields(NULL);
    CU_ASSERT(json_is_array(names) && json_array_size(names) == 0);
    json_decref(names);
}

/* ---- the echo plugin's settings_schema ---- */

static void test_echo_schema(void)
{
    expect_ok(ECHO_SCHEMA, "{}");
    expect_ok(ECHO_SCHEMA, "{\"prefix\":\"echo: \"}");
    expect_violation(ECHO_SCHEMA, "{\"prefix\":5}", "prefix", "must be a string");
    expect_violation(ECHO_SCHEMA, "{\"prefix\":\"p\",\"prefx\":\"x\"}", "prefx", "is not allowed");
    expect_violation(ECHO_SCHEMA, "[]", "", "must be an object");
    expect_violation(ECHO_SCHEMA, "null", "", "must be an object");
}

/* A realistic provider schema: several keywords together. */
static void test_provider_schema(void)
{
    const char *s = "{\"type\":\"object\",\"required\":[\"token\"],\"additionalProperties\":false,"
                    "\"properties\":{"
                    "\"token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true},"
                    "\"mode\":{\"enum\":[\"webhook\",\"polling\"],\"default\":\"webhook\"},"
                    "\"webhook_url\":{\"type\":\"string\",\"format\":\"uri\"},"
                    "\"poll_interval_s\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":3600},"
                    "\"allowed_updates\":{\"type\":\"array\",\"uniqueItems\":true,"
                    "\"items\":{\"type\":\"string\",\"pattern\":\"^[a-z_]+$\"}}}}";
    expect_ok(s, "{\"token\":\"1:abc\",\"mode\":\"polling\",\"poll_interval_s\":30,"
                 "\"allowed_updates\":[\"message\",\"edited_message\"]}");
    expect_violation(s, "{}", "token", "is required");
    expect_violation(s, "{\"token\":\"\"}", "token", "must be at least 1 character long");
    expect_violation(s, "{\"token\":\"t\",\"mode\":\"push\"}", "mode",
                     "must be one of \"webhook\", \"polling\"");
    expect_violation(s, "{\"token\":\"t\",\"poll_interval_s\":0}", "poll_interval_s",
                     "must be at least 1");
    expect_violation(s, "{\"token\":\"t\",\"poll_interval_s\":1.5}", "poll_interval_s",
                     "must be an integer");
    expect_violation(s, "{\"token\":\"t\",\"webhook_url\":\"nope\"}", "webhook_url",
                     "must be a URI (scheme://...)");
    expect_violation(s, "{\"token\":\"t\",\"allowed_updates\":[\"a\",\"b\",\"C\"]}",
                     "allowed_updates[2]", "must match pattern ^[a-z_]+$");
    expect_violation(s, "{\"token\":\"t\",\"extra\":1}", "extra", "is not allowed");
}

static const struct sb_test tests[] = {
    {"type", test_type_single},
    {"integer-valued reals are integers", test_type_integer_real},
    {"type arrays", test_type_array},
    {"enum", test_enum},
    {"enum message truncation", test_enum_long_message},
    {"const", test_const},
    {"minimum, maximum", test_minimum_maximum},
    {"exclusiveMinimum, exclusiveMaximum", test_exclusive_bounds},
    {"minLength, maxLength", test_length},
    {"pattern", test_pattern},
    {"format uri", test_format_uri},
    {"required", test_required},
    {"properties in document order", test_properties_document_order},
    {"additionalProperties", test_additional_properties},
    {"nested paths", test_nested_paths},
    {"long paths are cut", test_long_path},
    {"minItems, maxItems", test_items_counts},
    {"uniqueItems", test_unique_items},
    {"items", test_items},
    {"boolean schemas, unknown keywords", test_boolean_schemas_and_unknown_keywords},
    {"bad schemas", test_bad_schema},
    {"secret_fields", test_secret_fields},
    {"echo settings_schema", test_echo_schema},
    {"provider schema", test_provider_schema},
};

int main(void)
{
    static const struct sb_suite suite = {.name = "jsonschema", SB_TESTS(tests)};
    return sb_run("test_jsonschema", &suite, 1);
}
