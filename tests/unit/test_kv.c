/*
 * The key-value store's memory side (host/kv.c) without a database: pairs
 * per instance set, replaced, read back and forgotten.
 */
#include "kv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "runner.h"
#include <switchboard/services.h>

static char *get(struct sbh_kv *kv, const char *inst, const char *key)
{
    char *v = NULL;
    return sbh_kv_get(kv, inst, key, &v) == SB_OK ? v : NULL;
}

static void expect(struct sbh_kv *kv, const char *inst, const char *key, const char *want)
{
    char *v = get(kv, inst, key);
    if (want) {
        CU_ASSERT_PTR_NOT_NULL(v);
        if (v)
            CU_ASSERT_STRING_EQUAL(v, want);
    } else {
        CU_ASSERT_PTR_NULL(v);
    }
    free(v);
}

static void test_pairs(void)
{
    struct sbh_kv *kv = sbh_kv_new(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(kv);
    expect(kv, "a", "session_id", NULL);
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", "session_id", "s1"), SB_OK);
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", "seq", "1"), SB_OK);
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", "resume_gateway_url", "wss://x"), SB_OK);
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "b", "seq", "7"), SB_OK);
    /* replacing the first, a middle and the last pair, longer and shorter */
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", "session_id", "s2-longer-than-before"), SB_OK);
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", "seq", "123456"), SB_OK);
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", "resume_gateway_url", ""), SB_OK);
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", "seq", "2"), SB_OK);
    expect(kv, "a", "session_id", "s2-longer-than-before");
    expect(kv, "a", "seq", "2");
    expect(kv, "a", "resume_gateway_url", "");
    expect(kv, "a", "se", NULL); /* a prefix is not a key */
    expect(kv, "a", "7", NULL);  /* nor is a value */
    expect(kv, "b", "seq", "7");
    expect(kv, "c", "seq", NULL);
    json_t *d = sbh_kv_dump(kv, "a");
    CU_ASSERT_EQUAL(json_object_size(d), 3);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "seq")), "2");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "resume_gateway_url")), "");
    json_decref(d);
    d = sbh_kv_dump(kv, "c");
    CU_ASSERT_EQUAL(json_object_size(d), 0);
    json_decref(d);
    /* refused: empty or long keys, long or non-UTF-8 values */
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", "", "x"), SB_EINVAL);
    char longkey[200];
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = 0;
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", longkey, "x"), SB_EINVAL);
    CU_ASSERT_EQUAL(sbh_kv_set(kv, "a", "bad", "\xff\xfe"), SB_EINVAL);
    expect(kv, "a", "bad", NULL);
    sbh_kv_forget(kv, "a");
    expect(kv, "a", "seq", NULL);
    expect(kv, "b", "seq", "7");
    CU_ASSERT_EQUAL(sbh_kv_unsaved(kv), 0);
    sbh_kv_free(kv);
}

static void test_many(void)
{
    struct sbh_kv *kv = sbh_kv_new(NULL);
    char inst[32], val[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(inst, sizeof(inst), "inst-%d", i);
        snprintf(val, sizeof(val), "%d", i);
        CU_ASSERT_EQUAL(sbh_kv_set(kv, inst, "seq", val), SB_OK);
        CU_ASSERT_EQUAL(sbh_kv_set(kv, inst, "session_id", inst), SB_OK);
    }
    for (int i = 0; i < 2000; i += 97) {
        snprintf(inst, sizeof(inst), "inst-%d", i);
        snprintf(val, sizeof(val), "%d", i);
        expect(kv, inst, "seq", val);
        expect(kv, inst, "session_id", inst);
    }
    sbh_kv_free(kv);
}

int main(void)
{
    static const struct sb_test tests[] = {
        {"pairs set, replaced, read, forgotten", test_pairs},
        {"2,000 instances", test_many},
    };
    static const struct sb_suite suite = {.name = "kv", SB_TESTS(tests)};
    return sb_run("test_kv", &suite, 1);
}
