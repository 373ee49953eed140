/*
 * Unit tests of host/ipc.c: frames over a socketpair (round trip, many in one
 * read, free from inside the callback), refusals (oversized length, malformed
 * JSON, no "t", EOF), and base64.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "runner.h"

#include <event2/event.h>

#include "ipc.h"

struct side {
    struct event_base *base;
    struct sbh_ipc *ipc;
    json_t *frames; /* copies of what arrived */
    int closed;
    char why[256];
    int free_in_frame; /* sbh_ipc_free from inside on_frame */
    size_t want;       /* loopbreak once this many frames arrived */
};

static void on_frame(void *arg, json_t *frame)
{
    struct side *s = arg;
    json_array_append_new(s->frames, json_deep_copy(frame));
    if (s->free_in_frame) {
        sbh_ipc_free(s->ipc);
        s->ipc = NULL;
    }
    if (json_array_size(s->frames) >= s->want)
        event_base_loopbreak(s->base);
}

static void on_close(void *arg, const char *why)
{
    struct side *s = arg;
    s->closed++;
    snprintf(s->why, sizeof(s->why), "%s", why);
    event_base_loopbreak(s->base);
}

static void run_for(struct event_base *base, unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static struct event_base *g_base;
static int g_raw; /* the peer's end, written by hand */
static struct side g_side;

static void setup(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    g_base = event_base_new();
    memset(&g_side, 0, sizeof(g_side));
    g_side.base = g_base;
    g_side.frames = json_array();
    g_side.want = 1;
    g_side.ipc = sbh_ipc_new(g_base, sv[0], on_frame, on_close, &g_side);
    g_raw = sv[1];
    if (!g_side.ipc)
        abort();
}

static void teardown(void)
{
    sbh_ipc_free(g_side.ipc);
    json_decref(g_side.frames);
    if (g_raw >= 0)
        close(g_raw);
    event_base_free(g_base);
}

static void write_raw(const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t w = write(g_raw, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        CU_ASSERT_FATAL(w > 0);
        p += w;
        len -= (size_t)w;
    }
}

static void write_frame(const char *json)
{
    size_t n = strlen(json);
    unsigned char hdr[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16),
                            (unsigned char)(n >> 8), (unsigned char)n};
    write_raw(hdr, 4);
    write_raw(json, n);
}

static void test_round_trip(void)
{
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct side a = {.base = g_base, .frames = json_array(), .want = 1};
    struct side b = {.base = g_base, .frames = json_array(), .want = 3};
    a.ipc = sbh_ipc_new(g_base, sv[0], on_frame, on_close, &a);
    b.ipc = sbh_ipc_new(g_base, sv[1], on_frame, on_close, &b);
    CU_ASSERT_FATAL(a.ipc && b.ipc);
    CU_ASSERT_EQUAL(sbh_ipc_send_new(a.ipc, json_pack("{s:s, s:i, s:s}", "t", "hello", "v", 1,
                                                      "text", "h\xc3\xa9llo \"quoted\"")),
                    0);
    CU_ASSERT_EQUAL(sbh_ipc_send_new(a.ipc, json_pack("{s:s, s:[i,i]}", "t", "two", "x", 1, 2)), 0);
    CU_ASSERT_EQUAL(sbh_ipc_send_new(a.ipc, json_pack("{s:s}", "t", "three")), 0);
    CU_ASSERT(sbh_ipc_pending(a.ipc) > 0);
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL_FATAL(json_array_size(b.frames), 3);
    json_t *f = json_array_get(b.frames, 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(f, "t")), "hello");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(f, "v")), 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(f, "text")),
                           "h\xc3\xa9llo \"quoted\"");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(b.frames, 2), "t")),
                           "three");
    CU_ASSERT_EQUAL(sbh_ipc_pending(a.ipc), 0);
    /* And back the other way. */
    CU_ASSERT_EQUAL(sbh_ipc_send_new(b.ipc, json_pack("{s:s, s:i}", "t", "pong", "n", 9)), 0);
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL_FATAL(json_array_size(a.frames), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(a.frames, 0), "n")), 9);
    CU_ASSERT_EQUAL(a.closed + b.closed, 0);
    sbh_ipc_free(a.ipc);
    sbh_ipc_free(b.ipc);
    json_decref(a.frames);
    json_decref(b.frames);
}

/* Frames split across writes, and several in one write, are each delivered once. */
static void test_split_and_batched(void)
{
    const char *one = "{\"t\":\"a\",\"n\":1}";
    size_t n = strlen(one);
    unsigned char hdr[4] = {0, 0, 0, (unsigned char)n};
    write_raw(hdr, 2);
    run_for(g_base, 50);
    write_raw(hdr + 2, 2);
    write_raw(one, 5);
    run_for(g_base, 50);
    CU_ASSERT_EQUAL(json_array_size(g_side.frames), 0);
    write_raw(one + 5, n - 5);
    write_frame("{\"t\":\"b\"}");
    write_frame("{\"t\":\"c\"}");
    g_side.want = 3;
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL(json_array_size(g_side.frames), 3);
    CU_ASSERT_EQUAL(g_side.closed, 0);
}

static void test_oversized_refused(void)
{
    unsigned char hdr[4] = {0x01, 0x00, 0x00, 0x01}; /* 16 MiB + 1 */
    write_raw(hdr, 4);
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL(g_side.closed, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(g_side.why, "16777217"));
    CU_ASSERT_EQUAL(json_array_size(g_side.frames), 0);
}

static void test_malformed_refused(void)
{
    write_frame("{\"t\":\"ok\"}");
    write_frame("{\"t\": nope}");
    write_frame("{\"t\":\"never\"}");
    g_side.want = 5;
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL(json_array_size(g_side.frames), 1);
    CU_ASSERT_EQUAL(g_side.closed, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(g_side.why, "malformed"));
    /* Still writable after a protocol error: a last frame can go out. */
    CU_ASSERT_EQUAL(sbh_ipc_send_new(g_side.ipc, json_pack("{s:s}", "t", "log")), 0);
    sbh_ipc_flush(g_side.ipc, 1000);
    CU_ASSERT_EQUAL(sbh_ipc_pending(g_side.ipc), 0);
}

static void test_no_type_refused(void)
{
    write_frame("[1,2]");
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL(g_side.closed, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(g_side.why, "\"t\""));
}

static void test_type_not_string_refused(void)
{
    write_frame("{\"t\":5}");
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL(g_side.closed, 1);
}

static void test_trailing_garbage_refused(void)
{
    write_frame("{\"t\":\"x\"} {}");
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL(g_side.closed, 1);
    CU_ASSERT_EQUAL(json_array_size(g_side.frames), 0);
}

static void test_eof(void)
{
    write_frame("{\"t\":\"last\"}");
    close(g_raw);
    g_raw = -1;
    g_side.want = 2;
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL(json_array_size(g_side.frames), 1);
    CU_ASSERT_EQUAL(g_side.closed, 1);
    CU_ASSERT_STRING_EQUAL(g_side.why, "EOF");
    CU_ASSERT_EQUAL(sbh_ipc_send_new(g_side.ipc, json_pack("{s:s}", "t", "x")), -1);
}

static void test_eof_mid_frame(void)
{
    unsigned char part[6] = {0, 0, 0, 10, '{', '"'};
    write_raw(part, sizeof(part));
    close(g_raw);
    g_raw = -1;
    run_for(g_base, 5000);
    CU_ASSERT_EQUAL(g_side.closed, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(g_side.why, "middle"));
}

static void test_free_inside_callback(void)
{
    g_side.free_in_frame = 1;
    write_frame("{\"t\":\"a\"}");
    write_frame("{\"t\":\"b\"}");
    g_side.want = 2;
    run_for(g_base, 300);
    CU_ASSERT_EQUAL(json_array_size(g_side.frames), 1);
    CU_ASSERT_PTR_NULL(g_side.ipc);
    CU_ASSERT_EQUAL(g_side.closed, 0);
}

static void test_send_refusals(void)
{
    json_t *arr = json_array();
    CU_ASSERT_EQUAL(sbh_ipc_send(g_side.ipc, arr), -1);
    json_decref(arr);
    CU_ASSERT_EQUAL(sbh_ipc_send(NULL, NULL), -1);
    size_t big = SBH_IPC_MAX_FRAME + 1;
    char *s = malloc(big + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    memset(s, 'a', big);
    s[big] = '\0';
    CU_ASSERT_EQUAL(sbh_ipc_send_new(g_side.ipc, json_pack("{s:s, s:s}", "t", "x", "d", s)), -1);
    free(s);
    CU_ASSERT_EQUAL(sbh_ipc_pending(g_side.ipc), 0);
}

/* A frame right at the limit goes through. */
static void test_large_frame(void)
{
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct side a = {.base = g_base, .frames = json_array(), .want = 1};
    struct side b = {.base = g_base, .frames = json_array(), .want = 1};
    a.ipc = sbh_ipc_new(g_base, sv[0], on_frame, on_close, &a);
    b.ipc = sbh_ipc_new(g_base, sv[1], on_frame, on_close, &b);
    size_t len = SBH_IPC_MAX_FRAME - 32;
    char *s = malloc(len + 1);
    memset(s, 'z', len);
    s[len] = '\0';
    CU_ASSERT_EQUAL(sbh_ipc_send_new(a.ipc, json_pack("{s:s, s:s}", "t", "big", "d", s)), 0);
    run_for(g_base, 20000);
    CU_ASSERT_EQUAL_FATAL(json_array_size(b.frames), 1);
    CU_ASSERT_EQUAL(json_string_length(json_object_get(json_array_get(b.frames, 0), "d")), len);
    free(s);
    sbh_ipc_free(a.ipc);
    sbh_ipc_free(b.ipc);
    json_decref(a.frames);
    json_decref(b.frames);
}

/* ---- base64 ---- */

static void check_decode(const char *text, const char *want)
{
    unsigned char *out = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(sbh_b64_decode(text, &out, &n), 0);
    CU_ASSERT_EQUAL(n, strlen(want));
    CU_ASSERT_STRING_EQUAL((char *)out, want);
    free(out);
}

static void test_b64_vectors(void)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                        "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char *e = sbh_b64_encode(plain[i], strlen(plain[i]));
        CU_ASSERT_STRING_EQUAL(e, coded[i]);
        free(e);
        check_decode(coded[i], plain[i]);
    }
    check_decode("Zg", "f");
    check_decode("Zm8", "fo");
    check_decode("Zm9vYg", "foob");
}

static void test_b64_round_trip(void)
{
    unsigned char data[300];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (unsigned char)(i * 131 + 7);
    for (size_t len = 0; len <= sizeof(data); len++) {
        char *e = sbh_b64_encode(data, len);
        CU_ASSERT_PTR_NOT_NULL_FATAL(e);
        CU_ASSERT_EQUAL(strlen(e), (len + 2) / 3 * 4);
        unsigned char *d = NULL;
        size_t n = 0;
        CU_ASSERT_EQUAL_FATAL(sbh_b64_decode(e, &d, &n), 0);
        CU_ASSERT_EQUAL(n, len);
        CU_ASSERT_EQUAL(memcmp(d, data, len), 0);
        free(d);
        free(e);
    }
}

static void test_b64_bad(void)
{
    static const char *const bad[] = {"Z", "Zm9v!", "Zm9=v", "Zg=", "Zm 9v", "====", "Zm9vY"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        unsigned char *d = NULL;
        size_t n = 0;
        CU_ASSERT_EQUAL(sbh_b64_decode(bad[i], &d, &n), -1);
        CU_ASSERT_PTR_NULL(d);
    }
}

/* ---- runner ---- */

static const struct sb_test tests[] = {
    {"frame round trip", test_round_trip},
    {"split and batched frames", test_split_and_batched},
    {"oversized length refused", test_oversized_refused},
    {"malformed JSON refused", test_malformed_refused},
    {"non-object refused", test_no_type_refused},
    {"non-string t refused", test_type_not_string_refused},
    {"trailing garbage refused", test_trailing_garbage_refused},
    {"EOF", test_eof},
    {"EOF in the middle of a frame", test_eof_mid_frame},
    {"free inside on_frame", test_free_inside_callback},
    {"send refusals", test_send_refusals},
    {"frame near the limit", test_large_frame},
    {"base64 vectors", test_b64_vectors},
    {"base64 round trip", test_b64_round_trip},
    {"base64 bad input", test_b64_bad},
};

int main(void)
{
    static const struct sb_suite suite = {
        .name = "ipc", SB_TESTS(tests), .setup = setup, .teardown = teardown};
    return sb_run("test_ipc", &suite, 1);
}
