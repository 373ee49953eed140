/*
 * The host's WebSocket client (host/ws.c) against the npm `ws` package's
 * server (tests/ws/server.js), started by tests/ws/test_ws.sh, which passes
 * SB_WS_PORT, SB_WSS_PORT and SB_WS_CA (the self-signed certificate).
 */
#include "runtime.h"
#include "metrics.h"
#include "ws.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <CUnit/Basic.h>

#include "runner.h"

static struct event_base *g_base;
static struct sbh_wsc *g_c;
static struct sbh_slot g_slot;
static struct sb_plugin g_gen;
static struct sb_instance g_inst_a, g_inst_b;
static struct event *g_tick;
static int g_port, g_tls_port;
static const char *g_ca;
static int g_in_call; /* set around connect/send/close: callbacks must never see it */
static int g_sync_calls;

static void on_tick(evutil_socket_t fd, short what, void *arg) {}

static void test_setup(void)
{
    g_base = event_base_new();
    g_c = sbh_wsc_new(g_base);
    sbh_wsc_set_timeouts(g_c, 5000, 1000);
    memset(&g_slot, 0, sizeof(g_slot));
    g_slot.name = "test";
    memset(&g_gen, 0, sizeof(g_gen));
    g_gen.slot = &g_slot;
    LIST_INIT(&g_gen.websockets);
    struct sb_instance *insts[] = {&g_inst_a, &g_inst_b};
    for (int i = 0; i < 2; i++) {
        memset(insts[i], 0, sizeof(*insts[i]));
        insts[i]->slot = &g_slot;
        insts[i]->gen = &g_gen;
        insts[i]->id = i ? "b" : "a";
        LIST_INIT(&insts[i]->websockets);
    }
    g_tick = event_new(g_base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 5000};
    event_add(g_tick, &tv);
    g_sync_calls = 0;
}

static void test_teardown(void)
{
    CU_ASSERT_EQUAL(g_sync_calls, 0);
    sbh_wsc_free(g_c);
    event_free(g_tick);
    event_base_free(g_base);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int run_until(const int *n, int want, long ms)
{
    long end = now_ms() + ms;
    while (*n < want && now_ms() < end)
        event_base_loop(g_base, EVLOOP_ONCE);
    return *n >= want;
}

static void run_for(long ms)
{
    int never = 0;
    run_until(&never, 1, ms);
}

#define MAX_MSGS 16

struct rec {
    int opened, msgs, closed, events;
    int code;
    char reason[256];
    char *msg[MAX_MSGS];
    size_t len[MAX_MSGS];
    int binary[MAX_MSGS];
    sb_ws *ws;
    int action; /* 1: cancel inst a on OPEN; 2: close on first message; 3: send on OPEN */
};

static void rec_clear(struct rec *r)
{
    for (int i = 0; i < r->msgs && i < MAX_MSGS; i++)
        free(r->msg[i]);
    memset(r, 0, sizeof(*r));
}

static void on_ws(void *arg, enum sb_ws_event ev, const unsigned char *data, size_t len, int code)
{
    struct rec *r = arg;
    if (g_in_call)
        g_sync_calls++;
    r->events++;
    CU_ASSERT_EQUAL(r->closed, 0); /* nothing after CLOSED */
    switch (ev) {
    case SB_WS_OPEN:
        CU_ASSERT_EQUAL(r->opened, 0);
        r->opened++;
        if (r->action == 1)
            sbh_ws_cancel_inst(&g_inst_a);
        else if (r->action == 3)
            CU_ASSERT_EQUAL(sbh_ws_send(r->ws, 0, "from-open", 9), SB_OK);
        break;
    case SB_WS_TEXT:
    case SB_WS_BINARY:
        CU_ASSERT_EQUAL(r->opened, 1);
        if (r->msgs < MAX_MSGS) {
            r->msg[r->msgs] = malloc(len + 1);
            memcpy(r->msg[r->msgs], data, len);
            r->msg[r->msgs][len] = 0;
            r->len[r->msgs] = len;
            r->binary[r->msgs] = ev == SB_WS_BINARY;
        }
        r->msgs++;
        if (r->action == 2)
            sbh_ws_close(r->ws, 1000, "done");
        break;
    case SB_WS_CLOSED:
        r->closed++;
        r->code = code;
        snprintf(r->reason, sizeof(r->reason), "%.*s", (int)len, (const char *)data);
        break;
    }
}

static sb_ws *open_ws(struct sb_instance *inst, int tls, const char *host, const char *path,
                      struct rec *r, const sb_header *h, size_t nh)
{
    char url[256];
    snprintf(url, sizeof(url), "%s://%s:%d%s", tls ? "wss" : "ws", host, tls ? g_tls_port : g_port,
             path);
    g_in_call = 1;
    r->ws = sbh_ws_connect(g_c, &g_gen, inst, url, h, nh, on_ws, r);
    g_in_call = 0;
    return r->ws;
}

static int send_text(sb_ws *ws, const char *s)
{
    g_in_call = 1;
    int rc = sbh_ws_send(ws, 0, s, strlen(s));
    g_in_call = 0;
    return rc;
}

static void wait_idle(void)
{
    long end = now_ms() + 3000;
    while (sbh_wsc_active(g_c) && now_ms() < end)
        event_base_loop(g_base, EVLOOP_ONCE);
    CU_ASSERT_EQUAL(sbh_wsc_active(g_c), 0);
}

/* The close codes the server saw, as its /closes page reports them. */
static char *server_closes(void)
{
    struct rec r = {0};
    open_ws(NULL, 0, "127.0.0.1", "/closes", &r, NULL, 0);
    run_until(&r.msgs, 1, 3000);
    char *out = r.msgs ? strdup(r.msg[0]) : strdup("");
    g_in_call = 1;
    sbh_ws_close(r.ws, 1000, NULL);
    g_in_call = 0;
    rec_clear(&r);
    return out;
}

static void test_echo(void)
{
    struct rec r = {0};
    CU_ASSERT_PTR_NOT_NULL_FATAL(open_ws(&g_inst_a, 0, "127.0.0.1", "/echo", &r, NULL, 0));
    CU_ASSERT_EQUAL(r.events, 0);
    CU_ASSERT_EQUAL(send_text(r.ws, "early"), SB_EGONE); /* not open yet */
    CU_ASSERT_FATAL(run_until(&r.opened, 1, 3000));
    CU_ASSERT_EQUAL(send_text(r.ws, "hello"), SB_OK);
    g_in_call = 1;
    CU_ASSERT_EQUAL(sbh_ws_send(r.ws, 1, "\x00\x01\x02", 3), SB_OK);
    g_in_call = 0;
    /* 1 MiB: several frames' worth on the wire, one message */
    size_t big = 1 << 20;
    char *b = malloc(big + 1);
    memset(b, 'x', big);
    b[big] = 0;
    CU_ASSERT_EQUAL(send_text(r.ws, b), SB_OK);
    free(b);
    CU_ASSERT_FATAL(run_until(&r.msgs, 3, 5000));
    CU_ASSERT_STRING_EQUAL(r.msg[0], "hello");
    CU_ASSERT_EQUAL(r.binary[0], 0);
    CU_ASSERT_EQUAL(r.len[1], 3);
    CU_ASSERT_EQUAL(r.binary[1], 1);
    CU_ASSERT(memcmp(r.msg[1], "\x00\x01\x02", 3) == 0);
    CU_ASSERT_EQUAL(r.len[2], big);
    CU_ASSERT_EQUAL(sbh_wsc_framing(g_c), 0); /* idle again: the wslay context is gone */
    CU_ASSERT_EQUAL(send_text(r.ws, "again"), SB_OK);
    CU_ASSERT_FATAL(run_until(&r.msgs, 4, 3000));
    CU_ASSERT_STRING_EQUAL(r.msg[3], "again");
    /* We close: no callback comes, the handshake completes on its own. */
    g_in_call = 1;
    sbh_ws_close(r.ws, 1000, "bye");
    g_in_call = 0;
    int events = r.events;
    wait_idle();
    CU_ASSERT_EQUAL(r.events, events);
    CU_ASSERT_EQUAL(r.closed, 0);
    char *seen = server_closes();
    CU_ASSERT_PTR_NOT_NULL(strstr(seen, "{\"path\":\"/echo\",\"code\":1000}"));
    free(seen);
    rec_clear(&r);
}

static void test_server_close(void)
{
    struct rec r = {0};
    open_ws(NULL, 0, "127.0.0.1", "/echo", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.opened, 1, 3000));
    send_text(r.ws, "close-me");
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 3000));
    CU_ASSERT_EQUAL(r.code, 4001);
    rec_clear(&r);
    open_ws(NULL, 0, "127.0.0.1", "/serverclose", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 3000));
    CU_ASSERT_EQUAL(r.opened, 1);
    CU_ASSERT_EQUAL(r.code, 4000);
    wait_idle();
    rec_clear(&r);
}

static void test_fragments_and_ping(void)
{
    struct rec r = {0};
    open_ws(NULL, 0, "127.0.0.1", "/fragments", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.msgs, 2, 3000));
    /* one message from three fragments, and the server saw our pong */
    CU_ASSERT_STRING_EQUAL(r.msg[0], "hello world");
    CU_ASSERT_STRING_EQUAL(r.msg[1], "pong-seen");
    g_in_call = 1;
    sbh_ws_close(r.ws, 0, NULL);
    g_in_call = 0;
    wait_idle();
    rec_clear(&r);
}

/* Frames split across reads, with the connection idle between them: the
 * wslay context is let go only between whole messages and comes back. */
static void test_trickle(void)
{
    struct rec r = {0};
    open_ws(NULL, 0, "127.0.0.1", "/trickle", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.msgs, 5, 5000));
    CU_ASSERT_STRING_EQUAL(r.msg[0], "abc");
    CU_ASSERT_STRING_EQUAL(r.msg[1], "hello world");
    CU_ASSERT_EQUAL(r.len[2], 200);
    CU_ASSERT_EQUAL(strspn(r.msg[2], "x"), 200);
    CU_ASSERT_EQUAL(r.binary[3], 1);
    CU_ASSERT_EQUAL(r.len[3], 70000);
    CU_ASSERT_EQUAL(r.len[3] == 70000 ? strspn(r.msg[3], "y") : 0, 70000);
    CU_ASSERT_STRING_EQUAL(r.msg[4], "done pong");
    run_for(50);
    CU_ASSERT_EQUAL(sbh_wsc_active(g_c), 1);
    CU_ASSERT_EQUAL(sbh_wsc_framing(g_c), 0); /* open and idle: no wslay context */
    g_in_call = 1;
    sbh_ws_close(r.ws, 0, NULL);
    g_in_call = 0;
    wait_idle();
    CU_ASSERT_EQUAL(r.closed, 0);
    rec_clear(&r);
}

static void test_oversized(void)
{
    struct rec r = {0};
    open_ws(NULL, 0, "127.0.0.1", "/big", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 10000));
    CU_ASSERT_EQUAL(r.msgs, 0);
    CU_ASSERT_EQUAL(r.code, 1009);
    wait_idle();
    rec_clear(&r);
    run_for(200);
    char *seen = server_closes();
    CU_ASSERT_PTR_NOT_NULL(strstr(seen, "{\"path\":\"/big\",\"code\":1009}"));
    free(seen);
}

static void test_abrupt_drop(void)
{
    struct rec r = {0};
    open_ws(NULL, 0, "127.0.0.1", "/drop", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 3000));
    CU_ASSERT_EQUAL(r.msgs, 1);
    CU_ASSERT_STRING_EQUAL(r.msg[0], "bye");
    CU_ASSERT_EQUAL(r.code, 1006);
    wait_idle();
    rec_clear(&r);
}

static void test_bad_utf8(void)
{
    struct rec r = {0};
    open_ws(NULL, 0, "127.0.0.1", "/badutf8", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 3000));
    CU_ASSERT_EQUAL(r.msgs, 0);
    CU_ASSERT_EQUAL(r.code, 1007);
    wait_idle();
    rec_clear(&r);
}

static void test_headers(void)
{
    struct rec r = {0};
    sb_header h[] = {{"X-Test", "abc 123"}};
    open_ws(NULL, 0, "127.0.0.1", "/headers", &r, h, 1);
    CU_ASSERT_FATAL(run_until(&r.msgs, 1, 3000));
    CU_ASSERT_STRING_EQUAL(r.msg[0], "abc 123");
    g_in_call = 1;
    sbh_ws_close(r.ws, 1000, NULL);
    g_in_call = 0;
    wait_idle();
    rec_clear(&r);
}

static void test_bad_accept(void)
{
    struct rec r = {0};
    open_ws(NULL, 0, "127.0.0.1", "/badaccept", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 3000));
    CU_ASSERT_EQUAL(r.opened, 0);
    CU_ASSERT_EQUAL(r.code, 1006);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.reason, "Sec-WebSocket-Accept"));
    wait_idle();
    rec_clear(&r);
}

static void test_refused(void)
{
    struct rec r = {0};
    char url[64];
    /* a port nobody listens on: bind, read it, close */
    evutil_socket_t s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t sl = sizeof(sin);
    bind(s, (struct sockaddr *)&sin, sizeof(sin));
    getsockname(s, (struct sockaddr *)&sin, &sl);
    evutil_closesocket(s);
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/", ntohs(sin.sin_port));
    g_in_call = 1;
    r.ws = sbh_ws_connect(g_c, &g_gen, NULL, url, NULL, 0, on_ws, &r);
    g_in_call = 0;
    CU_ASSERT_PTR_NOT_NULL(r.ws);
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 3000));
    CU_ASSERT_EQUAL(r.opened, 0);
    CU_ASSERT_EQUAL(r.code, 1006);
    wait_idle();
    rec_clear(&r);
}

static void test_tls(void)
{
    struct rec r = {0};
    /* Not trusted yet: the self-signed certificate is refused. */
    open_ws(NULL, 1, "localhost", "/echo", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 5000));
    CU_ASSERT_EQUAL(r.opened, 0);
    CU_ASSERT_EQUAL(r.code, 1006);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.reason, "TLS"));
    rec_clear(&r);
    CU_ASSERT_EQUAL_FATAL(sbh_wsc_set_ca_file(g_c, g_ca), 0);
    open_ws(NULL, 1, "localhost", "/echo", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.opened, 1, 5000));
    send_text(r.ws, "over tls");
    CU_ASSERT_FATAL(run_until(&r.msgs, 1, 3000));
    CU_ASSERT_STRING_EQUAL(r.msg[0], "over tls");
    send_text(r.ws, "close-me");
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 3000));
    CU_ASSERT_EQUAL(r.code, 4001);
    rec_clear(&r);
    /* Trusted CA, but the name does not match (the certificate is for localhost). */
    open_ws(NULL, 1, "127.0.0.1", "/echo", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.closed, 1, 5000));
    CU_ASSERT_EQUAL(r.opened, 0);
    CU_ASSERT_EQUAL(r.code, 1006);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.reason, "TLS"));
    wait_idle();
    rec_clear(&r);
}

static void test_cancel_inst(void)
{
    struct rec a = {0}, b = {0};
    open_ws(&g_inst_a, 0, "127.0.0.1", "/echo", &a, NULL, 0);
    open_ws(&g_inst_b, 0, "127.0.0.1", "/echo", &b, NULL, 0);
    CU_ASSERT_FATAL(run_until(&a.opened, 1, 3000));
    CU_ASSERT_FATAL(run_until(&b.opened, 1, 3000));
    sbh_ws_cancel_inst(&g_inst_a);
    CU_ASSERT_EQUAL(sbh_wsc_active(g_c), 1);
    send_text(b.ws, "still here");
    CU_ASSERT_FATAL(run_until(&b.msgs, 1, 3000));
    CU_ASSERT_EQUAL(a.events, 1); /* OPEN only, never CLOSED */
    /* cancel while connecting, and from inside a callback */
    struct rec c = {0};
    c.action = 1;
    open_ws(&g_inst_a, 0, "127.0.0.1", "/echo", &c, NULL, 0);
    run_for(300);
    CU_ASSERT_EQUAL(c.events, 1);
    CU_ASSERT_EQUAL(c.closed, 0);
    sbh_ws_cancel_gen(&g_gen);
    CU_ASSERT_EQUAL(sbh_wsc_active(g_c), 0);
    run_for(100);
    CU_ASSERT_EQUAL(b.closed, 0);
    rec_clear(&a);
    rec_clear(&b);
    rec_clear(&c);
}

static void test_send_and_close_in_callbacks(void)
{
    struct rec r = {0};
    r.action = 3; /* send from OPEN */
    open_ws(NULL, 0, "127.0.0.1", "/echo", &r, NULL, 0);
    CU_ASSERT_FATAL(run_until(&r.msgs, 1, 3000));
    CU_ASSERT_STRING_EQUAL(r.msg[0], "from-open");
    r.action = 2; /* close from the next message */
    send_text(r.ws, "one");
    send_text(r.ws, "two");
    run_until(&r.msgs, 3, 1000);
    CU_ASSERT_EQUAL(r.msgs, 2); /* let go after "one": "two" is not delivered */
    wait_idle();
    CU_ASSERT_EQUAL(r.closed, 0);
    rec_clear(&r);
}

static void test_bad_arguments(void)
{
    struct rec r = {0};
    const char *bad[] = {"http://127.0.0.1/", "ws://",         "ws://:80/",  "ws://a b/",
                         "ws://h:0/",         "ws://h:99999/", "ws://[::1/", "ws://h/x y"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_PTR_NULL(sbh_ws_connect(g_c, &g_gen, NULL, bad[i], NULL, 0, on_ws, &r));
    sb_header reserved[] = {{"Sec-WebSocket-Key", "x"}};
    sb_header crlf[] = {{"X-A", "a\r\nB: c"}};
    sb_header notoken[] = {{"X A", "a"}};
    CU_ASSERT_PTR_NULL(
        sbh_ws_connect(g_c, &g_gen, NULL, "ws://127.0.0.1/", reserved, 1, on_ws, &r));
    CU_ASSERT_PTR_NULL(sbh_ws_connect(g_c, &g_gen, NULL, "ws://127.0.0.1/", crlf, 1, on_ws, &r));
    CU_ASSERT_PTR_NULL(sbh_ws_connect(g_c, &g_gen, NULL, "ws://127.0.0.1/", notoken, 1, on_ws, &r));
    CU_ASSERT_PTR_NULL(sbh_ws_connect(g_c, &g_gen, NULL, "ws://127.0.0.1/", NULL, 0, NULL, &r));
    CU_ASSERT_EQUAL(sbh_wsc_active(g_c), 0);
    CU_ASSERT_EQUAL(r.events, 0);
}

static const struct sb_test tests[] = {
    {"echo text, binary, 1 MiB; client close", test_echo},
    {"server-initiated close codes", test_server_close},
    {"fragmented message and ping/pong", test_fragments_and_ping},
    {"frames split over idle reads", test_trickle},
    {"oversized message closes 1009", test_oversized},
    {"abrupt disconnect is 1006", test_abrupt_drop},
    {"invalid UTF-8 text closes 1007", test_bad_utf8},
    {"extra handshake headers", test_headers},
    {"wrong Sec-WebSocket-Accept refused", test_bad_accept},
    {"refused connection reported later", test_refused},
    {"TLS: untrusted, trusted CA file, name mismatch", test_tls},
    {"cancel by instance and generation", test_cancel_inst},
    {"send and close inside callbacks", test_send_and_close_in_callbacks},
    {"bad arguments give NULL", test_bad_arguments},
};

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const char *p = getenv("SB_WS_PORT"), *tp = getenv("SB_WSS_PORT");
    g_ca = getenv("SB_WS_CA");
    if (!p || !tp || !g_ca) {
        fprintf(stderr, "test_ws: run through tests/ws/test_ws.sh\n");
        return 77;
    }
    g_port = atoi(p);
    g_tls_port = atoi(tp);
    static const struct sb_suite suite = {
        .name = "ws", SB_TESTS(tests), .setup = test_setup, .teardown = test_teardown};
    int rc = sb_run("test_ws", &suite, 1);
    sbh_metrics_reset();
    return rc;
}
