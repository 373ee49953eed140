/*
 * Unit tests of the host's async HTTP client (host/httpc.c) against a small
 * HTTP/1.1 server on loopback run by the test itself: plain sockets, one
 * thread per connection, keep-alive, counting accepted connections.
 *
 * Server routes:
 *   /ok                 200 "hello world" with X-Test and a padded header
 *   /echo               200, body: "METHOD PATH\n" + "name: value\n"... + "\n" + body
 *   /status/429         429 with Retry-After: 7
 *   /status/500         500 "boom"
 *   /hang               reads the request and never answers
 *   /slow?ms=N          answers 200 "slow" after N ms
 *   /close              promises 100 bytes, sends 7, closes
 *   /big?n=N            N bytes with Content-Length
 *   /bigchunked?n=N     N bytes chunked (no length known up front)
 *
 * Each test gets a fresh event_base, client and registry; the calls belong to
 * a fake generation and instances of a fake slot "test".
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "runner.h"
#include <event2/event.h>

#include "httpc.h"
#include "metrics.h"
#include "registry.h"
#include "runtime.h"

#define METRIC "switchboard_http_client_requests_total"

/* ---- the server ---- */

static int g_lfd = -1;
static int g_port;
static pthread_t g_accept_thr;
static atomic_int g_accepted;
static atomic_int g_conns_open;
static atomic_int g_stop;

static int send_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* recv with a stop check every 100 ms; 0 on EOF, -1 on error or stop. */
static ssize_t recv_some(int fd, char *buf, size_t len)
{
    for (;;) {
        if (atomic_load(&g_stop))
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int rc = poll(&p, 1, 100);
        if (rc < 0 && errno != EINTR)
            return -1;
        if (rc <= 0)
            continue;
        ssize_t n = recv(fd, buf, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        return n;
    }
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static long query_num(const char *path, const char *key, long dflt)
{
    const char *q = strchr(path, '?');
    size_t klen = strlen(key);
    while (q) {
        q++;
        if (!strncmp(q, key, klen) && q[klen] == '=')
            return strtol(q + klen + 1, NULL, 10);
        q = strchr(q, '&');
    }
    return dflt;
}

static int route_is(const char *path, const char *route)
{
    size_t n = strlen(route);
    return !strncmp(path, route, n) && (path[n] == 0 || path[n] == '?');
}

static int respond(int fd, int status, const char *reason, const char *extra, const char *body,
                   size_t len)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\nContent-Type: text/plain\r\n%s\r\n",
                     status, reason, len, extra ? extra : "");
    if (send_all(fd, head, (size_t)n) < 0)
        return -1;
    return len ? send_all(fd, body, len) : 0;
}

static int send_big(int fd, size_t n, int chunked)
{
    static char block[65536];
    memset(block, 'x', sizeof(block));
    char head[256];
    int hl =
        chunked
            ? snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            : snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
    if (send_all(fd, head, (size_t)hl) < 0)
        return -1;
    while (n) {
        size_t k = n < sizeof(block) ? n : sizeof(block);
        if (chunked) {
            char sz[32];
            int sl = snprintf(sz, sizeof(sz), "%zx\r\n", k);
            if (send_all(fd, sz, (size_t)sl) < 0)
                return -1;
        }
        if (send_all(fd, block, k) < 0 || (chunked && send_all(fd, "\r\n", 2) < 0))
            return -1;
        n -= k;
    }
    return chunked ? send_all(fd, "0\r\n\r\n", 5) : 0;
}

/* Answer one request; -1 closes the connection. */
static int handle(int fd, const char *method, const char *path, const char *head, size_t head_len,
                  const char *body, size_t body_len)
{
    if (route_is(path, "/ok"))
        return respond(fd, 200, "OK", "X-Test: yes\r\nX-Padded:   padded value  \r\n",
                       "hello world", 11);
    if (route_is(path, "/echo")) {
        size_t cap = head_len + body_len + 64;
        char *out = malloc(cap);
        int n = snprintf(out, cap, "%s %s\n", method, path);
        /* headers: the lines after the request line, CRLF turned into LF */
        const char *line = memchr(head, '\n', head_len);
        line = line ? line + 1 : head + head_len;
        while (line < head + head_len) {
            const char *eol = memchr(line, '\n', (size_t)(head + head_len - line));
            if (!eol)
                break;
            size_t ll = (size_t)(eol - line);
            if (ll && line[ll - 1] == '\r')
                ll--;
            if (!ll)
                break;
            n += snprintf(out + n, cap - (size_t)n, "%.*s\n", (int)ll, line);
            line = eol + 1;
        }
        n += snprintf(out + n, cap - (size_t)n, "\n");
        memcpy(out + n, body, body_len);
        int rc = respond(fd, 200, "OK", "X-Echo: 1\r\n", out, (size_t)n + body_len);
        free(out);
        return rc;
    }
    if (route_is(path, "/status/429"))
        return respond(fd, 429, "Too Many Requests", "Retry-After: 7\r\n", "slow down", 9);
    if (route_is(path, "/status/500"))
        return respond(fd, 500, "Internal Server Error", NULL, "boom", 4);
    if (route_is(path, "/hang")) {
        char buf[256];
        while (recv_some(fd, buf, sizeof(buf)) > 0)
            ;
        return -1;
    }
    if (route_is(path, "/slow")) {
        long ms = query_num(path, "ms", 100);
        for (long t = 0; t < ms && !atomic_load(&g_stop); t += 10)
            sleep_ms(10);
        return respond(fd, 200, "OK", NULL, "slow", 4);
    }
    if (route_is(path, "/close")) {
        const char *part = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial";
        send_all(fd, part, strlen(part));
        return -1;
    }
    if (route_is(path, "/big") && !strcmp(method, "HEAD")) {
        char line[128];
        int n = snprintf(line, sizeof(line), "HTTP/1.1 200 OK\r\nContent-Length: %ld\r\n\r\n",
                         query_num(path, "n", 0));
        return send_all(fd, line, (size_t)n);
    }
    if (route_is(path, "/big"))
        return send_big(fd, (size_t)query_num(path, "n", 0), 0);
    if (route_is(path, "/bigchunked"))
        return send_big(fd, (size_t)query_num(path, "n", 0), 1);
    return respond(fd, 404, "Not Found", NULL, "no", 2);
}

static void *conn_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        char *end;
        while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
            if (len == cap) {
                cap *= 2;
                buf = realloc(buf, cap);
            }
            ssize_t n = recv_some(fd, buf + len, cap - len);
            if (n <= 0)
                goto out;
            len += (size_t)n;
        }
        size_t head_len = (size_t)(end - buf) + 4;
        char method[16] = "", path[1024] = "";
        if (sscanf(buf, "%15s %1023s", method, path) != 2)
            goto out;
        size_t body_len = 0;
        for (const char *h = buf; h < buf + head_len; h++) {
            if ((h == buf || h[-1] == '\n') && !strncasecmp(h, "Content-Length:", 15))
                body_len = (size_t)strtoul(h + 15, NULL, 10);
        }
        int close_after = 0;
        for (const char *h = buf; h < buf + head_len; h++)
            if ((h == buf || h[-1] == '\n') && !strncasecmp(h, "Connection: close", 17))
                close_after = 1;
        while (len < head_len + body_len) {
            if (len == cap) {
                cap = head_len + body_len;
                buf = realloc(buf, cap);
            }
            ssize_t n = recv_some(fd, buf + len, cap - len);
            if (n <= 0)
                goto out;
            len += (size_t)n;
        }
        if (handle(fd, method, path, buf, head_len, buf + head_len, body_len) < 0 || close_after)
            goto out;
        memmove(buf, buf + head_len + body_len, len - head_len - body_len);
        len -= head_len + body_len;
    }
out:
    free(buf);
    close(fd);
    atomic_fetch_sub(&g_conns_open, 1);
    return NULL;
}

static void *accept_main(void *arg)
{
    while (!atomic_load(&g_stop)) {
        struct pollfd p = {.fd = g_lfd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int fd = accept(g_lfd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&g_accepted, 1);
        atomic_fetch_add(&g_conns_open, 1);
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, conn_main, (void *)(intptr_t)fd) != 0) {
            close(fd);
            atomic_fetch_sub(&g_conns_open, 1);
        }
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

static int server_start(void)
{
    g_lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(g_lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    if (g_lfd < 0 || bind(g_lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(g_lfd, 256) < 0 || getsockname(g_lfd, (struct sockaddr *)&sa, &sl) < 0)
        return -1;
    g_port = ntohs(sa.sin_port);
    return pthread_create(&g_accept_thr, NULL, accept_main, NULL) == 0 ? 0 : -1;
}

static void server_stop(void)
{
    atomic_store(&g_stop, 1);
    pthread_join(g_accept_thr, NULL);
    for (int i = 0; i < 300 && atomic_load(&g_conns_open) > 0; i++)
        sleep_ms(10);
    close(g_lfd);
}

/* ---- fixture ---- */

static struct event_base *g_base;
static struct sbh_httpc *g_c;
static struct sbh_registry *g_reg;
static char g_dir[64];
static struct sbh_slot g_slot;
static struct sb_plugin g_gen;
static struct sb_instance g_inst_a, g_inst_b;
static struct event *g_tick;
static int g_in_request; /* set around every request call: done must never see it */
static int g_sync_calls;

static void on_tick(evutil_socket_t fd, short what, void *arg) {}

static void test_setup(void)
{
    g_base = event_base_new();
    g_c = sbh_httpc_new(g_base);
    snprintf(g_dir, sizeof(g_dir), "/tmp/sb-httpc-XXXXXX");
    CU_ASSERT_PTR_NOT_NULL(mkdtemp(g_dir));
    g_reg = sbh_registry_new(g_base, g_dir);
    sbh_registry_set_httpc(g_reg, g_c);
    memset(&g_slot, 0, sizeof(g_slot));
    g_slot.reg = g_reg;
    g_slot.name = "test";
    memset(&g_gen, 0, sizeof(g_gen));
    g_gen.slot = &g_slot;
    LIST_INIT(&g_gen.timers);
    LIST_INIT(&g_gen.http_calls);
    struct sb_instance *insts[] = {&g_inst_a, &g_inst_b};
    for (int i = 0; i < 2; i++) {
        memset(insts[i], 0, sizeof(*insts[i]));
        insts[i]->slot = &g_slot;
        insts[i]->gen = &g_gen;
        insts[i]->id = i ? "b" : "a";
        LIST_INIT(&insts[i]->timers);
        LIST_INIT(&insts[i]->http_calls);
    }
    /* keeps EVLOOP_ONCE from blocking forever or returning at once */
    g_tick = event_new(g_base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 5000};
    event_add(g_tick, &tv);
    g_sync_calls = 0;
}

static void test_teardown(void)
{
    CU_ASSERT_EQUAL(g_sync_calls, 0);
    sbh_httpc_free(g_c);
    sbh_registry_free(g_reg);
    rmdir(g_dir);
    event_free(g_tick);
    event_base_free(g_base);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Run the loop until *n reaches want or ms pass; returns *n >= want. */
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

/* One finished call as seen by its callback (copied). */
struct result {
    int calls;
    int status;
    char *error;
    char *body;
    size_t body_len;
    json_t *headers; /* {name: value} */
    int *counter;    /* bumped too, when set */
};

static void result_clear(struct result *r)
{
    free(r->error);
    free(r->body);
    json_decref(r->headers);
    memset(r, 0, sizeof(*r));
}

static void on_done(void *arg, const sb_http_response *resp)
{
    struct result *r = arg;
    if (g_in_request)
        g_sync_calls++;
    r->calls++;
    if (r->counter)
        (*r->counter)++;
    r->status = resp->status;
    free(r->error);
    r->error = resp->error ? strdup(resp->error) : NULL;
    free(r->body);
    r->body = malloc(resp->body_len + 1);
    if (resp->body_len)
        memcpy(r->body, resp->body, resp->body_len);
    r->body[resp->body_len] = 0;
    r->body_len = resp->body_len;
    json_decref(r->headers);
    r->headers = json_object();
    for (size_t i = 0; i < resp->n_headers; i++)
        json_object_set_new(r->headers, resp->headers[i].name, json_string(resp->headers[i].value));
}

static const char *header(const struct result *r, const char *name)
{
    const char *key;
    json_t *v;
    if (!r->headers)
        return NULL;
    json_object_foreach (r->headers, key, v)
        if (!strcasecmp(key, name))
            return json_string_value(v);
    return NULL;
}

static char *url(const char *path)
{
    static char buf[4][256];
    static int next;
    char *out = buf[next++ % 4];
    snprintf(out, 256, "http://127.0.0.1:%d%s", g_port, path);
    return out;
}

static sb_http_call *start_req(struct sb_instance *inst, const sb_http_request *req,
                               struct result *r)
{
    g_in_request = 1;
    sb_http_call *call = sbh_httpc_request(g_c, &g_gen, inst, req, on_done, r);
    g_in_request = 0;
    return call;
}

static sb_http_call *start_get(struct sb_instance *inst, const char *path, uint32_t timeout_ms,
                               struct result *r)
{
    sb_http_request req = {.method = "GET", .url = url(path), .timeout_ms = timeout_ms};
    return start_req(inst, &req, r);
}

static double metric(const char *cls)
{
    return sbh_metrics_get(METRIC, "provider", "test", "status_class", cls, SBH_END);
}

/* ---- tests ---- */

static void test_get_ok(void)
{
    struct result r = {0};
    double before = metric("2xx");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_get(&g_inst_a, "/ok", 0, &r));
    CU_ASSERT_EQUAL(r.calls, 0);
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 1);
    CU_ASSERT_TRUE(run_until(&r.calls, 1, 5000));
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_PTR_NULL(r.error);
    CU_ASSERT_EQUAL(r.body_len, 11);
    CU_ASSERT_STRING_EQUAL(r.body, "hello world");
    CU_ASSERT_STRING_EQUAL(header(&r, "X-Test"), "yes");
    CU_ASSERT_STRING_EQUAL(header(&r, "x-padded"), "padded value"); /* trimmed */
    CU_ASSERT_STRING_EQUAL(header(&r, "Content-Length"), "11");
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 0);
    CU_ASSERT_EQUAL(metric("2xx"), before + 1);
    run_for(50);
    CU_ASSERT_EQUAL(r.calls, 1); /* exactly once */
    result_clear(&r);
}

static void test_post_echo(void)
{
    struct result r = {0};
    char body[64];
    snprintf(body, sizeof(body), "{\"text\":\"hi\"}");
    char name[32], value[32];
    snprintf(name, sizeof(name), "X-One");
    snprintf(value, sizeof(value), "1");
    sb_header headers[] = {{name, value},
                           {"Content-Type", "application/json"},
                           {"Authorization", "Bearer abc"},
                           {"X-Empty", ""}};
    sb_http_request req = {.method = "POST",
                           .url = url("/echo?x=1"),
                           .headers = headers,
                           .n_headers = 4,
                           .body = (const unsigned char *)body,
                           .body_len = strlen(body)};
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_req(NULL, &req, &r));
    /* everything was copied: the caller's buffers may go away at once */
    memset(body, 'Z', sizeof(body) - 1);
    memset(name, 'Z', sizeof(name) - 1);
    memset(value, 'Z', sizeof(value) - 1);
    CU_ASSERT_TRUE(run_until(&r.calls, 1, 5000));
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_STRING_EQUAL(header(&r, "X-Echo"), "1");
    CU_ASSERT_PTR_NOT_NULL(strstr(r.body, "POST /echo?x=1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.body, "\nX-One: 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.body, "\nContent-Type: application/json\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.body, "\nAuthorization: Bearer abc\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.body, "\nX-Empty:"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.body, "\nContent-Length: 13\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.body, "\nUser-Agent: switchboard/"));
    CU_ASSERT_PTR_NULL(strcasestr(r.body, "Expect:"));
    size_t blen = strlen(r.body);
    CU_ASSERT(blen > 15 && !strcmp(r.body + blen - 15, "\n\n{\"text\":\"hi\"}"));
    result_clear(&r);
}

static void test_methods(void)
{
    static const char *const methods[] = {"PUT", "PATCH", "DELETE", "GET", "POST"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        struct result r = {0};
        int with_body = i < 2;
        sb_http_request req = {.method = methods[i],
                               .url = url("/echo"),
                               .body = with_body ? (const unsigned char *)"abc" : NULL,
                               .body_len = with_body ? 3 : 0};
        CU_ASSERT_PTR_NOT_NULL_FATAL(start_req(&g_inst_a, &req, &r));
        CU_ASSERT_TRUE(run_until(&r.calls, 1, 5000));
        CU_ASSERT_EQUAL(r.status, 200);
        char want[64];
        snprintf(want, sizeof(want), "%s /echo\n", methods[i]);
        CU_ASSERT_EQUAL(strncmp(r.body, want, strlen(want)), 0);
        size_t blen = strlen(r.body);
        if (with_body)
            CU_ASSERT(blen > 5 && !strcmp(r.body + blen - 5, "\n\nabc"));
        if (!strcmp(methods[i], "POST")) /* empty POST still says how long it is */
            CU_ASSERT_PTR_NOT_NULL(strstr(r.body, "\nContent-Length: 0\n"));
        if (!strcmp(methods[i], "GET") || !strcmp(methods[i], "DELETE"))
            CU_ASSERT_PTR_NULL(strstr(r.body, "Content-Length"));
        result_clear(&r);
    }
}

static void test_statuses(void)
{
    struct result r429 = {0}, r500 = {0}, r404 = {0};
    double c4 = metric("4xx"), c5 = metric("5xx");
    int n = 0;
    r429.counter = r500.counter = r404.counter = &n;
    CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_a, "/status/429", 0, &r429));
    CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_a, "/status/500", 0, &r500));
    CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_b, "/nothing", 0, &r404));
    CU_ASSERT_TRUE(run_until(&n, 3, 5000));
    CU_ASSERT_EQUAL(r429.status, 429);
    CU_ASSERT_PTR_NULL(r429.error);
    CU_ASSERT_STRING_EQUAL(header(&r429, "Retry-After"), "7");
    CU_ASSERT_STRING_EQUAL(r429.body, "slow down");
    CU_ASSERT_EQUAL(r500.status, 500);
    CU_ASSERT_STRING_EQUAL(r500.body, "boom");
    CU_ASSERT_EQUAL(r404.status, 404);
    CU_ASSERT_EQUAL(metric("4xx"), c4 + 2);
    CU_ASSERT_EQUAL(metric("5xx"), c5 + 1);
    result_clear(&r429);
    result_clear(&r500);
    result_clear(&r404);
}

static void test_timeout(void)
{
    struct result r = {0};
    double errs = metric("error");
    long t0 = now_ms();
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_get(&g_inst_a, "/hang", 300, &r));
    CU_ASSERT_TRUE(run_until(&r.calls, 1, 5000));
    long took = now_ms() - t0;
    CU_ASSERT_EQUAL(r.status, 0);
    CU_ASSERT_PTR_NOT_NULL(r.error);
    CU_ASSERT(r.error && strcasestr(r.error, "timed out"));
    CU_ASSERT(took >= 250 && took < 3000);
    CU_ASSERT_EQUAL(r.body_len, 0);
    CU_ASSERT_EQUAL(metric("error"), errs + 1);
    result_clear(&r);
}

static void test_closed_mid_response(void)
{
    struct result r = {0};
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_get(&g_inst_a, "/close", 0, &r));
    CU_ASSERT_TRUE(run_until(&r.calls, 1, 5000));
    CU_ASSERT_EQUAL(r.status, 0);
    CU_ASSERT_PTR_NOT_NULL(r.error);
    result_clear(&r);
}

static void test_refused_connection(void)
{
    /* a port nobody listens on: bind one, note it, close it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    char u[64];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/", ntohs(sa.sin_port));
    struct result r = {0};
    sb_http_request req = {.url = u}; /* method NULL: GET */
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_req(NULL, &req, &r));
    CU_ASSERT_TRUE(run_until(&r.calls, 1, 5000));
    CU_ASSERT_EQUAL(r.status, 0);
    CU_ASSERT_PTR_NOT_NULL(r.error);
    result_clear(&r);
}

static void test_body_cap(void)
{
    char path[64];
    struct result ok = {0}, len = {0}, chunked = {0}, head = {0};
    int n = 0;
    ok.counter = len.counter = chunked.counter = head.counter = &n;
    sbh_httpc_set_body_cap(g_c, 1 << 20);
    snprintf(path, sizeof(path), "/big?n=%d", 1 << 20); /* exactly the cap: fine */
    CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_a, path, 0, &ok));
    snprintf(path, sizeof(path), "/big?n=%d", (1 << 20) + 1); /* Content-Length over */
    CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_a, path, 0, &len));
    snprintf(path, sizeof(path), "/bigchunked?n=%d", 2 << 20); /* found out while reading */
    CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_a, path, 0, &chunked));
    snprintf(path, sizeof(path), "/big?n=%d", 4 << 20); /* HEAD: the length is no body */
    sb_http_request req = {.method = "HEAD", .url = url(path)};
    CU_ASSERT_PTR_NOT_NULL(start_req(&g_inst_b, &req, &head));
    CU_ASSERT_TRUE(run_until(&n, 4, 10000));
    CU_ASSERT_EQUAL(ok.status, 200);
    CU_ASSERT_EQUAL(ok.body_len, 1 << 20);
    CU_ASSERT_EQUAL(len.status, 0);
    CU_ASSERT(len.error && strstr(len.error, "larger than"));
    CU_ASSERT_EQUAL(chunked.status, 0);
    CU_ASSERT(chunked.error && strstr(chunked.error, "larger than"));
    CU_ASSERT_EQUAL(chunked.body_len, 0);
    CU_ASSERT_EQUAL(head.status, 200);
    CU_ASSERT_EQUAL(head.body_len, 0);
    CU_ASSERT_STRING_EQUAL(header(&head, "Content-Length"), "4194304");
    result_clear(&head);
    result_clear(&ok);
    result_clear(&len);
    result_clear(&chunked);
}

static void test_default_body_cap(void)
{
    char path[64];
    struct result r = {0};
    snprintf(path, sizeof(path), "/bigchunked?n=%zu", SBH_HTTPC_BODY_CAP + 65536);
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_get(&g_inst_a, path, 0, &r));
    CU_ASSERT_TRUE(run_until(&r.calls, 1, 20000));
    CU_ASSERT_EQUAL(r.status, 0);
    CU_ASSERT(r.error && strstr(r.error, "larger than 16777216 bytes"));
    result_clear(&r);
}

static void test_connection_reuse(void)
{
    int before = atomic_load(&g_accepted);
    for (int i = 0; i < 20; i++) {
        struct result r = {0};
        CU_ASSERT_PTR_NOT_NULL_FATAL(start_get(&g_inst_a, "/ok", 0, &r));
        CU_ASSERT_TRUE(run_until(&r.calls, 1, 5000));
        CU_ASSERT_EQUAL(r.status, 200);
        result_clear(&r);
    }
    CU_ASSERT_EQUAL(atomic_load(&g_accepted) - before, 1);
}

static void test_concurrent(void)
{
    enum { N = 100 };
    static struct result rs[N];
    int n = 0, before = atomic_load(&g_accepted);
    for (int i = 0; i < N; i++) {
        memset(&rs[i], 0, sizeof(rs[i]));
        rs[i].counter = &n;
        CU_ASSERT_PTR_NOT_NULL(start_get(i % 2 ? &g_inst_a : &g_inst_b, "/slow?ms=20", 0, &rs[i]));
    }
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), N);
    CU_ASSERT_TRUE(run_until(&n, N, 20000));
    int ok = 0;
    for (int i = 0; i < N; i++) {
        ok += rs[i].calls == 1 && rs[i].status == 200 && !strcmp(rs[i].body, "slow");
        result_clear(&rs[i]);
    }
    CU_ASSERT_EQUAL(ok, N);
    int conns = atomic_load(&g_accepted) - before;
    CU_ASSERT(conns >= 1 && conns <= SBH_HTTPC_MAX_HOST_CONNECTIONS); /* the per-host cap */
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 0);
}

static void test_host_cap(void)
{
    enum { N = 10 };
    static struct result rs[N];
    int n = 0, before = atomic_load(&g_accepted);
    sbh_httpc_set_max_host_connections(g_c, 2);
    for (int i = 0; i < N; i++) {
        memset(&rs[i], 0, sizeof(rs[i]));
        rs[i].counter = &n;
        CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_a, "/slow?ms=20", 0, &rs[i]));
    }
    CU_ASSERT_TRUE(run_until(&n, N, 10000));
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(rs[i].status, 200);
        result_clear(&rs[i]);
    }
    CU_ASSERT_EQUAL(atomic_load(&g_accepted) - before, 2);
}

static void cancel_from_timer(evutil_socket_t fd, short what, void *arg)
{
    sbh_httpc_cancel(arg);
}

static void test_cancel(void)
{
    struct result now = {0}, later = {0}, quick = {0};
    /* at once, before the loop ever ran */
    sb_http_call *a = start_get(&g_inst_a, "/ok", 0, &now);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    sbh_httpc_cancel(a);
    /* mid-flight, from a timer */
    sb_http_call *b = start_get(&g_inst_a, "/slow?ms=300", 0, &later);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    struct event *ev = evtimer_new(g_base, cancel_from_timer, b);
    struct timeval tv = {0, 100000};
    evtimer_add(ev, &tv);
    /* and a call that is not cancelled, to know the loop works */
    CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_b, "/ok", 0, &quick));
    CU_ASSERT_TRUE(run_until(&quick.calls, 1, 5000));
    run_for(600);
    CU_ASSERT_EQUAL(now.calls, 0);
    CU_ASSERT_EQUAL(later.calls, 0);
    CU_ASSERT_EQUAL(quick.calls, 1);
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 0);
    sbh_httpc_cancel(NULL);
    event_free(ev);
    result_clear(&now);
    result_clear(&later);
    result_clear(&quick);
}

static void test_cancel_gen_inst(void)
{
    struct result rs[6] = {{0}};
    int n = 0;
    struct sb_instance *owner[6] = {&g_inst_a, &g_inst_a, &g_inst_a, &g_inst_b, &g_inst_b, NULL};
    for (int i = 0; i < 6; i++) {
        rs[i].counter = &n;
        CU_ASSERT_PTR_NOT_NULL(start_get(owner[i], i % 2 ? "/hang" : "/slow?ms=200", 0, &rs[i]));
    }
    /* one host call (no generation) outlives both */
    struct result host = {0};
    sb_http_request req = {.url = url("/slow?ms=200")};
    g_in_request = 1;
    CU_ASSERT_PTR_NOT_NULL(sbh_httpc_request(g_c, NULL, NULL, &req, on_done, &host));
    g_in_request = 0;
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 7);
    run_for(50); /* connections open, requests in flight */
    sbh_httpc_cancel_inst(&g_inst_a);
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 4);
    CU_ASSERT_PTR_NULL(LIST_FIRST(&g_inst_a.http_calls));
    sbh_httpc_cancel_gen(&g_gen);
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 1);
    CU_ASSERT_PTR_NULL(LIST_FIRST(&g_gen.http_calls));
    CU_ASSERT_PTR_NULL(LIST_FIRST(&g_inst_b.http_calls));
    CU_ASSERT_TRUE(run_until(&host.calls, 1, 5000));
    CU_ASSERT_EQUAL(host.status, 200);
    run_for(300);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 0);
    CU_ASSERT_EQUAL(
        sbh_metrics_get(METRIC, "provider", "host", "status_class", "2xx", SBH_END) >= 1, 1);
    for (int i = 0; i < 6; i++)
        result_clear(&rs[i]);
    result_clear(&host);
}

/* Callbacks that take other calls (and themselves) back. */
struct canceller {
    struct result r;
    sb_http_call *self;
    sb_http_call *victim;
    int *counter;
};

static void on_done_cancel(void *arg, const sb_http_response *resp)
{
    struct canceller *k = arg;
    if (g_in_request)
        g_sync_calls++;
    k->r.calls++;
    k->r.status = resp->status;
    (*k->counter)++;
    sbh_httpc_cancel(k->self); /* a no-op inside its own callback */
    if (k->victim)
        sbh_httpc_cancel(k->victim);
}

static void test_cancel_inside_callback(void)
{
    int n = 0;
    struct canceller a = {.counter = &n}, b = {.counter = &n};
    struct result hang = {0};
    sb_http_request req = {.url = url("/ok")};
    sb_http_call *victim = start_get(&g_inst_a, "/hang", 0, &hang);
    g_in_request = 1;
    a.self = sbh_httpc_request(g_c, &g_gen, &g_inst_a, &req, on_done_cancel, &a);
    g_in_request = 0;
    a.victim = victim;
    CU_ASSERT_TRUE(run_until(&n, 1, 5000));
    CU_ASSERT_EQUAL(a.r.status, 200);
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 0);
    /* two calls racing, each cancelling the other: exactly one callback */
    n = 0;
    g_in_request = 1;
    a.self = sbh_httpc_request(g_c, &g_gen, &g_inst_a, &req, on_done_cancel, &a);
    b.self = sbh_httpc_request(g_c, &g_gen, &g_inst_b, &req, on_done_cancel, &b);
    g_in_request = 0;
    a.victim = b.self;
    b.victim = a.self;
    CU_ASSERT_TRUE(run_until(&n, 1, 5000));
    run_for(200);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(hang.calls, 0);
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 0);
}

/* A callback that stops "its instance": every call of it goes, its own is safe. */
static void on_done_stop_inst(void *arg, const sb_http_response *resp)
{
    int *n = arg;
    (*n)++;
    sbh_httpc_cancel_inst(&g_inst_a);
    sbh_httpc_cancel_gen(&g_gen);
}

static void test_cancel_gen_inside_callback(void)
{
    int n = 0;
    struct result other = {0};
    sb_http_request req = {.url = url("/ok")};
    CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_a, "/hang", 0, &other));
    CU_ASSERT_PTR_NOT_NULL(sbh_httpc_request(g_c, &g_gen, &g_inst_a, &req, on_done_stop_inst, &n));
    CU_ASSERT_TRUE(run_until(&n, 1, 5000));
    run_for(100);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(other.calls, 0);
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 0);
}

/* A callback that starts the next request: also reported later, never inside. */
struct chain {
    int left;
    int done;
    int status_ok;
};

static void on_done_chain(void *arg, const sb_http_response *resp)
{
    struct chain *ch = arg;
    if (g_in_request)
        g_sync_calls++;
    ch->done++;
    ch->status_ok += resp->status == 200;
    if (--ch->left > 0) {
        sb_http_request req = {.url = url("/ok")};
        g_in_request = 1;
        sb_http_call *next = sbh_httpc_request(g_c, &g_gen, NULL, &req, on_done_chain, ch);
        g_in_request = 0;
        CU_ASSERT_PTR_NOT_NULL(next);
    }
}

static void test_chain_and_async_failures(void)
{
    struct chain ch = {.left = 5};
    sb_http_request req = {.url = url("/ok")};
    g_in_request = 1;
    CU_ASSERT_PTR_NOT_NULL(sbh_httpc_request(g_c, &g_gen, NULL, &req, on_done_chain, &ch));
    g_in_request = 0;
    CU_ASSERT_TRUE(run_until(&ch.done, 5, 5000));
    CU_ASSERT_EQUAL(ch.status_ok, 5);
    /* failures known at once are still reported on a later loop turn */
    struct result ftp = {0}, bad = {0};
    sb_http_request r1 = {.url = "ftp://127.0.0.1/file"};
    sb_http_request r2 = {.url = "http://"};
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_req(NULL, &r1, &ftp));
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_req(NULL, &r2, &bad));
    /* refused by curl_easy_setopt itself (over CURL_MAX_INPUT_LENGTH) */
    struct result huge = {0};
    size_t hlen = (9u << 20) + 32;
    char *long_url = malloc(hlen);
    int hp = snprintf(long_url, hlen, "http://127.0.0.1:%d/", g_port);
    memset(long_url + hp, 'a', hlen - (size_t)hp - 1);
    long_url[hlen - 1] = 0;
    sb_http_request r3 = {.url = long_url};
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_req(NULL, &r3, &huge));
    free(long_url);
    CU_ASSERT_EQUAL(ftp.calls + bad.calls + huge.calls, 0);
    int n = 0;
    ftp.counter = bad.counter = huge.counter = &n;
    CU_ASSERT_TRUE(run_until(&n, 3, 5000));
    CU_ASSERT_EQUAL(huge.status, 0);
    CU_ASSERT(huge.error && strstr(huge.error, "bad argument")); /* the deferred path */
    result_clear(&huge);
    CU_ASSERT_EQUAL(ftp.status, 0);
    CU_ASSERT_PTR_NOT_NULL(ftp.error);
    CU_ASSERT_EQUAL(bad.status, 0);
    CU_ASSERT_PTR_NOT_NULL(bad.error);
    result_clear(&ftp);
    result_clear(&bad);
}

static void test_bad_arguments(void)
{
    struct result r = {0};
    sb_header crlf[] = {{"X-Evil", "a\r\nX-Injected: 1"}};
    sb_header badname[] = {{"Bad Name", "x"}};
    sb_http_request ok = {.url = url("/ok")};
    sb_http_request no_url = {.method = "GET"};
    sb_http_request bad_method = {.method = "GE T", .url = url("/ok")};
    sb_http_request inj = {.url = url("/ok"), .headers = crlf, .n_headers = 1};
    sb_http_request name = {.url = url("/ok"), .headers = badname, .n_headers = 1};
    sb_http_request nobody = {.method = "POST", .url = url("/ok"), .body_len = 3};
    CU_ASSERT_PTR_NULL(sbh_httpc_request(g_c, &g_gen, NULL, &no_url, on_done, &r));
    CU_ASSERT_PTR_NULL(sbh_httpc_request(g_c, &g_gen, NULL, &bad_method, on_done, &r));
    CU_ASSERT_PTR_NULL(sbh_httpc_request(g_c, &g_gen, NULL, &inj, on_done, &r));
    CU_ASSERT_PTR_NULL(sbh_httpc_request(g_c, &g_gen, NULL, &name, on_done, &r));
    CU_ASSERT_PTR_NULL(sbh_httpc_request(g_c, &g_gen, NULL, &nobody, on_done, &r));
    CU_ASSERT_PTR_NULL(sbh_httpc_request(g_c, &g_gen, NULL, &ok, NULL, &r));
    CU_ASSERT_PTR_NULL(sbh_httpc_request(g_c, &g_gen, NULL, NULL, on_done, &r));
    CU_ASSERT_PTR_NULL(sbh_httpc_request(NULL, &g_gen, NULL, &ok, on_done, &r));
    run_for(50);
    CU_ASSERT_EQUAL(r.calls, 0);
    CU_ASSERT_EQUAL(sbh_httpc_active(g_c), 0);
}

/* Through the services table, as a plugin calls it. */
static void test_services(void)
{
    const sb_host_services *svc = sbh_services();
    struct result r = {0}, gone = {0};
    sb_http_request req = {.method = "GET", .url = url("/ok")};
    g_in_request = 1;
    sb_http_call *call = svc->http_request(&g_gen, &g_inst_a, &req, on_done, &r);
    sb_http_call *cancelled = svc->http_request(&g_gen, &g_inst_b, &req, on_done, &gone);
    g_in_request = 0;
    CU_ASSERT_PTR_NOT_NULL(call);
    CU_ASSERT_PTR_NOT_NULL(cancelled);
    svc->http_cancel(cancelled);
    CU_ASSERT_TRUE(run_until(&r.calls, 1, 5000));
    run_for(50);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_EQUAL(gone.calls, 0);
    CU_ASSERT_PTR_NULL(svc->http_request(NULL, NULL, &req, on_done, &r));
    /* a host without a client: the service is not offered */
    sbh_registry_set_httpc(g_reg, NULL);
    CU_ASSERT_PTR_NULL(svc->http_request(&g_gen, NULL, &req, on_done, &r));
    sbh_registry_set_httpc(g_reg, g_c);
    svc->http_cancel(NULL);
    result_clear(&r);
}

/* Freeing the client with calls open drops them without callbacks. */
static void test_free_with_calls_open(void)
{
    struct result r = {0}, h = {0};
    CU_ASSERT_PTR_NOT_NULL(start_get(&g_inst_a, "/hang", 0, &h));
    CU_ASSERT_PTR_NOT_NULL(start_get(NULL, "/slow?ms=100", 0, &r));
    run_for(50);
    sbh_httpc_free(g_c);
    g_c = sbh_httpc_new(g_base); /* for the teardown */
    sbh_registry_set_httpc(g_reg, g_c);
    run_for(200);
    CU_ASSERT_EQUAL(r.calls + h.calls, 0);
    CU_ASSERT_PTR_NULL(LIST_FIRST(&g_gen.http_calls));
    CU_ASSERT_PTR_NULL(LIST_FIRST(&g_inst_a.http_calls));
}

static const struct sb_test tests[] = {
    {"GET: status, headers, body", test_get_ok},
    {"POST echo: method, headers, body copied", test_post_echo},
    {"PUT/PATCH/DELETE/GET/POST", test_methods},
    {"429 with Retry-After, 500, 404", test_statuses},
    {"timeout: status 0 and error", test_timeout},
    {"server closes mid-response", test_closed_mid_response},
    {"connection refused", test_refused_connection},
    {"body cap (Content-Length and chunked)", test_body_cap},
    {"default body cap 16 MiB", test_default_body_cap},
    {"20 sequential requests, 1 connection", test_connection_reuse},
    {"100 concurrent requests", test_concurrent},
    {"per-host connection cap", test_host_cap},
    {"cancel before completion", test_cancel},
    {"cancel_inst / cancel_gen", test_cancel_gen_inst},
    {"cancel inside a callback", test_cancel_inside_callback},
    {"cancel_gen inside a callback", test_cancel_gen_inside_callback},
    {"chained requests, immediate failures deferred", test_chain_and_async_failures},
    {"bad arguments give NULL", test_bad_arguments},
    {"services table", test_services},
    {"free with calls open", test_free_with_calls_open},
};

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    /* a proxy from the environment must not see loopback test traffic */
    static const char *const proxies[] = {"http_proxy",  "HTTP_PROXY", "https_proxy",
                                          "HTTPS_PROXY", "ALL_PROXY",  "all_proxy"};
    for (size_t i = 0; i < sizeof(proxies) / sizeof(proxies[0]); i++)
        unsetenv(proxies[i]);
    if (server_start() < 0) {
        perror("test_httpc: server");
        return 1;
    }
    static const struct sb_suite suite = {
        .name = "httpc", SB_TESTS(tests), .setup = test_setup, .teardown = test_teardown};
    int rc = sb_run("test_httpc", &suite, 1);
    server_stop();
    sbh_metrics_reset();
    return rc;
}
