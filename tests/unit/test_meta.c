/*
 * Unit tests of plugins/meta-common/meta.c and plugins/common/plugutil.c,
 * compiled in: SHA-256 (FIPS 180-2 vectors), HMAC-SHA256 (RFC 4231),
 * X-Hub-Signature-256 checks, and the Graph error mapping.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "runner.h"

#include "../../plugins/common/plugutil.h"
#include "../../plugins/meta-common/meta.h"

static void hex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_sha256(void)
{
    unsigned char md[32];
    char h[65];
    char *million = malloc(1000000);

    meta_sha256("abc", 3, md);
    hex(md, 32, h);
    CU_ASSERT_STRING_EQUAL(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    meta_sha256("", 0, md);
    hex(md, 32, h);
    CU_ASSERT_STRING_EQUAL(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    meta_sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, md);
    hex(md, 32, h);
    CU_ASSERT_STRING_EQUAL(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    memset(million, 'a', 1000000);
    meta_sha256(million, 1000000, md);
    hex(md, 32, h);
    CU_ASSERT_STRING_EQUAL(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
}

static void test_hmac(void)
{
    unsigned char mac[32], key[131];
    char h[65];

    /* RFC 4231 test case 2 */
    meta_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac);
    hex(mac, 32, h);
    CU_ASSERT_STRING_EQUAL(h, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* test case 6: a key longer than the block */
    memset(key, 0xaa, sizeof(key));
    meta_hmac_sha256(key, sizeof(key), "Test Using Larger Than Block-Size Key - Hash Key First", 54,
                     mac);
    hex(mac, 32, h);
    CU_ASSERT_STRING_EQUAL(h, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

static enum meta_sig check(const char *secret, const char *header, const char *body)
{
    sb_header hd[1] = {{"x-hub-signature-256", header}};
    sb_http_request req = {.method = "POST",
                           .headers = hd,
                           .n_headers = header ? 1 : 0,
                           .body = (const unsigned char *)body,
                           .body_len = strlen(body)};
    return meta_check_signature(secret, &req);
}

static void test_signature(void)
{
    unsigned char mac[32];
    char h[65], header[80];
    const char *body = "{\"object\":\"page\"}";

    meta_hmac_sha256("s3cret", 6, body, strlen(body), mac);
    hex(mac, 32, h);
    snprintf(header, sizeof(header), "sha256=%s", h);
    CU_ASSERT_EQUAL(check("s3cret", header, body), META_SIG_OK);
    CU_ASSERT_EQUAL(check("other", header, body), META_SIG_BAD);
    CU_ASSERT_EQUAL(check("s3cret", header, "{\"object\":\"page\"} "), META_SIG_BAD);
    CU_ASSERT_EQUAL(check("s3cret", NULL, body), META_SIG_MISSING);
    CU_ASSERT_EQUAL(check("s3cret", "sha1=abc", body), META_SIG_BAD);
    header[strlen(header) - 1] = '\0'; /* one digit short */
    CU_ASSERT_EQUAL(check("s3cret", header, body), META_SIG_BAD);
}

static void graph(int status, const char *body, const char *retry_after, struct meta_result *r)
{
    sb_header hd[1] = {{"Retry-After", retry_after}};
    sb_http_response resp = {.status = status,
                             .headers = hd,
                             .n_headers = retry_after ? 1 : 0,
                             .body = (const unsigned char *)body,
                             .body_len = strlen(body)};
    meta_graph_result(&resp, r);
    json_decref(r->body);
}

static void test_graph_mapping(void)
{
    struct meta_result r;

    graph(200, "{\"messages\":[{\"id\":\"wamid.X\"}]}", NULL, &r);
    CU_ASSERT(r.ok);
    graph(400,
          "{\"error\":{\"message\":\"(#130429) Rate limit hit\",\"type\":\"OAuthException\","
          "\"code\":130429,\"fbtrace_id\":\"T\"}}",
          NULL, &r);
    CU_ASSERT(!r.ok && r.retryable && !r.auth_error);
    CU_ASSERT_STRING_EQUAL(r.error_code, "graph_130429");
    CU_ASSERT(strstr(r.error_message, "fbtrace_id T") != NULL);
    graph(400, "{\"error\":{\"message\":\"slow\",\"code\":4}}", "7", &r);
    CU_ASSERT(r.retryable && r.retry_after_ms == 7000);
    graph(401,
          "{\"error\":{\"message\":\"Invalid OAuth access token\",\"type\":\"OAuthException\","
          "\"code\":190,\"error_subcode\":463}}",
          NULL, &r);
    CU_ASSERT(!r.retryable && r.auth_error);
    CU_ASSERT_STRING_EQUAL(r.error_code, "graph_190_463");
    graph(400, "{\"error\":{\"message\":\"outside window\",\"code\":10,\"error_subcode\":2018278}}",
          NULL, &r);
    CU_ASSERT(!r.retryable && !r.auth_error);
    graph(400,
          "{\"error\":{\"message\":\"bad param\",\"code\":100,\"error_data\":{"
          "\"details\":\"to is invalid\"}}}",
          NULL, &r);
    CU_ASSERT(!r.retryable && !r.auth_error && strstr(r.error_message, "to is invalid"));
    graph(502, "<html>bad gateway</html>", NULL, &r);
    CU_ASSERT(r.retryable);
    CU_ASSERT_STRING_EQUAL(r.error_code, "http_502");
    {
        sb_http_response resp = {.status = 0, .error = "Connection refused"};
        meta_graph_result(&resp, &r);
        CU_ASSERT(r.retryable);
        CU_ASSERT_STRING_EQUAL(r.error_code, "transport");
    }
}

static void test_query_and_base64(void)
{
    char *v = pu_query_param("hub.mode=subscribe&hub.challenge=a%2Bb+c&x", "hub.challenge");
    unsigned char *out = NULL;
    size_t n = 0;

    CU_ASSERT_STRING_EQUAL(v, "a+b c");
    free(v);
    CU_ASSERT_PTR_NULL(pu_query_param("a=1", "hub.mode"));
    CU_ASSERT_EQUAL(pu_base64_decode("aGVsbG8gd29ybGQ=", &out, &n), 0);
    CU_ASSERT(n == 11 && !memcmp(out, "hello world", 11));
    free(out);
    v = pu_utf8_cut("h\xc3\xa9llo", 2);
    CU_ASSERT_STRING_EQUAL(v, "h\xc3\xa9");
    free(v);
}

int main(void)
{
    static const struct sb_test tests[] = {{"sha256", test_sha256},
                                           {"hmac-sha256", test_hmac},
                                           {"X-Hub-Signature-256", test_signature},
                                           {"Graph error mapping", test_graph_mapping},
                                           {"query, base64, utf-8", test_query_and_base64}};
    static const struct sb_suite suite = {.name = "meta", SB_TESTS(tests)};
    return sb_run("test_meta", &suite, 1);
}
