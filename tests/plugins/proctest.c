/*
 * proctest: a test plugin for the ABI 1.1 services and the ones the
 * plugin-host proxies (tests/integration/test_plugin_host_ipc.py). Each
 * setting turns on one behaviour at instance start:
 *
 *   "spawn": true      run /bin/sh -c 'echo hi >&3' with a pipe on fd 3,
 *                      fd_watch the read end, and once both EOF and the exit
 *                      status are in, emit message.received
 *                      {"kind":"spawn","read":"hi\n","exit_code":0}
 *   "sleeper": true    run `sleep 1000` and emit {"kind":"sleeper","pid":N}
 *                      (the test checks it is gone after stop)
 *   "timer_ms": N      a one-shot timer that emits {"kind":"timer"}
 *   "http_url": "..."  http_request GET; emits {"kind":"http","status":N,"body":"..."}
 *   "ws_url": "..."    ws_connect; sends "ping" on open, emits
 *                      {"kind":"ws","text":"..."} for the first text and closes
 *   "kv": true         emits {"kind":"kv","greeting":<kv_get "greeting">} and
 *                      kv_set "seen" = "yes"
 *   "fail_start": true instance_start fails
 *
 * send: text "refuse" is refused synchronously; anything else completes ok
 * (provider_msg_id "pt-N") from a 10 ms timer. webhook: emits
 * {"kind":"webhook","body":...} and answers 202 with X-Proctest: 1.
 * status(): {"events": number emitted so far}.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <switchboard/switchboard.h>

static const sb_host_services *host;
static sb_plugin *self_plugin;

struct pt_send {
    struct pt *pt;
    sb_timer *timer;
    sb_send_done_fn done;
    void *done_arg;
};

struct pt {
    sb_instance *inst;
    unsigned events, sends;
    /* spawn */
    int rfd;
    sb_fd_watch *watch;
    sb_proc *proc;
    char out[256];
    size_t out_len;
    int eof, exited, status;
    /* sleeper */
    sb_proc *sleeper;
    sb_timer *timer;
    sb_http_call *http;
    sb_ws *ws;
    struct pt_send *send; /* at most one in flight, enough for the tests */
};

static void emit(struct pt *pt, json_t *payload)
{
    pt->events++;
    host->emit_event(pt->inst, "message.received", payload);
}

static void spawn_maybe_done(struct pt *pt)
{
    if (!pt->eof || !pt->exited)
        return;
    json_t *ev = json_pack("{s:s, s:s%, s:i, s:b}", "kind", "spawn", "read", pt->out, pt->out_len,
                           "exit_code", WIFEXITED(pt->status) ? WEXITSTATUS(pt->status) : -1,
                           "signaled", WIFSIGNALED(pt->status));
    emit(pt, ev);
}

static void on_readable(void *arg, int fd, int what)
{
    struct pt *pt = arg;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
        size_t room = sizeof(pt->out) - 1 - pt->out_len;
        size_t take = (size_t)n < room ? (size_t)n : room;
        memcpy(pt->out + pt->out_len, buf, take);
        pt->out_len += take;
        return;
    }
    /* EOF (or an error): unwatch from inside our own callback, then close. */
    host->fd_unwatch(pt->watch);
    pt->watch = NULL;
    close(pt->rfd);
    pt->rfd = -1;
    pt->eof = 1;
    spawn_maybe_done(pt);
}

static void on_exit_status(void *arg, int status)
{
    struct pt *pt = arg;
    pt->proc = NULL;
    pt->exited = 1;
    pt->status = status;
    spawn_maybe_done(pt);
}

static int start_spawn(struct pt *pt)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    const char *argv[] = {"/bin/sh", "-c", "echo hi >&3", NULL};
    sb_proc_fd map[] = {{p[1], 3}};
    pt->proc = host->proc_spawn(self_plugin, pt->inst, argv, NULL, map, 1, on_exit_status, pt);
    close(p[1]);
    if (!pt->proc) {
        close(p[0]);
        return -1;
    }
    pt->rfd = p[0];
    pt->watch = host->fd_watch(self_plugin, pt->inst, p[0], SB_FD_READ, on_readable, pt);
    return pt->watch ? 0 : -1;
}

static void on_sleeper_exit(void *arg, int status)
{
    struct pt *pt = arg;
    pt->sleeper = NULL;
}

static int start_sleeper(struct pt *pt)
{
    const char *argv[] = {"sleep", "1000", NULL};
    pt->sleeper = host->proc_spawn(self_plugin, pt->inst, argv, NULL, NULL, 0, on_sleeper_exit, pt);
    if (!pt->sleeper)
        return -1;
    emit(pt, json_pack("{s:s, s:I}", "kind", "sleeper", "pid",
                       (json_int_t)host->proc_pid(pt->sleeper)));
    return 0;
}

static void on_timer(void *arg)
{
    struct pt *pt = arg;
    pt->timer = NULL;
    emit(pt, json_pack("{s:s}", "kind", "timer"));
}

static void on_http(void *arg, const sb_http_response *resp)
{
    struct pt *pt = arg;
    pt->http = NULL;
    json_t *headers = json_object();
    for (size_t i = 0; i < resp->n_headers; i++)
        json_object_set_new(headers, resp->headers[i].name, json_string(resp->headers[i].value));
    emit(pt, json_pack("{s:s, s:i, s:s%, s:o, s:s?}", "kind", "http", "status", resp->status,
                       "body", resp->body ? (const char *)resp->body : "", resp->body_len,
                       "headers", headers, "error", resp->error));
}

static void on_ws(void *arg, enum sb_ws_event ev, const unsigned char *data, size_t len, int code)
{
    struct pt *pt = arg;
    if (ev == SB_WS_OPEN) {
        int rc = host->ws_send(pt->ws, 0, "ping", 4);
        emit(pt, json_pack("{s:s, s:i}", "kind", "ws_open", "send_rc", rc));
        return;
    }
    if (ev == SB_WS_TEXT) {
        emit(pt, json_pack("{s:s, s:s%}", "kind", "ws", "text", (const char *)data, len));
        host->ws_close(pt->ws, 1000, "done");
        pt->ws = NULL;
        return;
    }
    if (ev == SB_WS_CLOSED) {
        int rc = host->ws_send(pt->ws, 0, "late", 4);
        emit(pt, json_pack("{s:s, s:i, s:i}", "kind", "ws_closed", "code", code, "send_rc", rc));
        pt->ws = NULL;
    }
}

static void start_kv(struct pt *pt)
{
    char *v = NULL;
    int rc = host->kv_get(pt->inst, "greeting", &v);
    emit(pt,
         json_pack("{s:s, s:s?, s:i}", "kind", "kv", "greeting", rc == SB_OK ? v : NULL, "rc", rc));
    free(v);
    host->kv_set(pt->inst, "seen", "yes");
}

static int pt_start(sb_instance *inst, const json_t *settings, void **state)
{
    if (json_is_true(json_object_get(settings, "fail_start"))) {
        host->set_state(inst, SB_STATE_ERROR, "fail_start is set");
        return -1;
    }
    struct pt *pt = calloc(1, sizeof(*pt));
    if (!pt)
        return -1;
    pt->inst = inst;
    pt->rfd = -1;
    *state = pt;
    host->set_state(inst, SB_STATE_CONNECTING, "proctest starting");
    if (json_is_true(json_object_get(settings, "spawn")) && start_spawn(pt) < 0)
        host->log(self_plugin, inst, SB_LOG_ERROR, "proctest: spawn failed");
    if (json_is_true(json_object_get(settings, "sleeper")) && start_sleeper(pt) < 0)
        host->log(self_plugin, inst, SB_LOG_ERROR, "proctest: sleeper failed");
    json_t *ms = json_object_get(settings, "timer_ms");
    if (json_is_integer(ms))
        pt->timer =
            host->timer_start(self_plugin, inst, (uint32_t)json_integer_value(ms), 0, on_timer, pt);
    const char *url = json_string_value(json_object_get(settings, "http_url"));
    if (url) {
        sb_header h[] = {{"X-Proctest", "1"}};
        sb_http_request req = {.method = "GET", .url = url, .headers = h, .n_headers = 1};
        pt->http = host->http_request(self_plugin, inst, &req, on_http, pt);
    }
    url = json_string_value(json_object_get(settings, "ws_url"));
    if (url)
        pt->ws = host->ws_connect(self_plugin, inst, url, NULL, 0, on_ws, pt);
    if (json_is_true(json_object_get(settings, "kv")))
        start_kv(pt);
    host->set_state(inst, SB_STATE_CONNECTED, NULL);
    return 0;
}

/* Leaves its children, watch, timer, request and socket to the host on purpose. */
static void pt_stop(sb_instance *inst, void *state)
{
    struct pt *pt = state;
    if (pt->rfd >= 0)
        close(pt->rfd);
    free(pt->send);
    free(pt);
}

static void send_fire(void *arg)
{
    struct pt_send *s = arg;
    struct pt *pt = s->pt;
    char id[32];
    snprintf(id, sizeof(id), "pt-%u", ++pt->sends);
    sb_send_result r = {.ok = 1, .provider_msg_id = id};
    pt->send = NULL;
    s->done(s->done_arg, &r);
    free(s);
}

static int pt_send(sb_instance *inst, void *state, const json_t *message, sb_send_done_fn done,
                   void *done_arg)
{
    struct pt *pt = state;
    const char *text = json_string_value(json_object_get(message, "text"));
    if (!text || !strcmp(text, "refuse") || pt->send)
        return -1;
    struct pt_send *s = calloc(1, sizeof(*s));
    if (!s)
        return -1;
    s->pt = pt;
    s->done = done;
    s->done_arg = done_arg;
    s->timer = host->timer_start(self_plugin, inst, 10, 0, send_fire, s);
    if (!s->timer) {
        free(s);
        return -1;
    }
    pt->send = s;
    return 0;
}

static void pt_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply)
{
    struct pt *pt = state;
    emit(pt, json_pack("{s:s, s:s%, s:s, s:s?}", "kind", "webhook", "body",
                       req->body ? (const char *)req->body : "", req->body_len, "url", req->url,
                       "query", req->query));
    host->reply_header(reply, "X-Proctest", "1");
    host->reply(reply, 202, "text/plain", "accepted", 8);
}

static json_t *pt_status(sb_instance *inst, void *state)
{
    struct pt *pt = state;
    return json_pack("{s:i}", "events", (int)pt->events);
}

static int pt_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    host = services;
    self_plugin = self;
    if (services->struct_size < offsetof(sb_host_services, proc_release) + sizeof(void *)) {
        services->log(self, NULL, SB_LOG_ERROR, "proctest needs ABI 1.1 services");
        return -1;
    }
    return 0;
}

static void pt_shutdown(sb_plugin *self)
{
    host = NULL;
}

SWITCHBOARD_PLUGIN_INIT(.name = "proctest", .version = "1.0.0-test",
                        .description = "test plugin for fd_watch, proc_* and proxied services",
                        .capabilities = SB_CAP_WEBHOOK | SB_CAP_PROCESS_ONLY,
                        .settings_schema = "{\"type\":\"object\"}", .init = pt_init,
                        .shutdown = pt_shutdown, .instance_start = pt_start,
                        .instance_stop = pt_stop, .send = pt_send, .webhook = pt_webhook,
                        .status = pt_status)
