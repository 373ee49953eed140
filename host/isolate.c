#include "isolate.h"

#include "cgroup.h"
#include "clock.h"
#include "ipc.h"
#include "kv.h"
#include "log.h"
#include "metrics.h"
#include "runtime.h"
#include "supervisor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* The proxy side of one generation. */
struct sbh_iso_gen {
    struct sbh_supervisor *sv;
    struct sbh_isolate_conf conf;
    const sb_plugin_desc *real;
    sb_plugin_desc *proxy;
    unsigned running; /* children alive or being started */
    int cgroup_warned;
};

enum phase {
    PH_WAITING,  /* the previous process of this instance is still draining */
    PH_HELLO,    /* spawned, waiting for hello */
    PH_STARTING, /* init sent, waiting for started */
    PH_RUNNING,
    PH_BACKOFF, /* died; restart timer armed */
    PH_FAILED,  /* crash loop or start refused: no more restarts */
};

static const char *const phase_names[] = {"waiting", "starting",   "starting",
                                          "running", "restarting", "failed"};

/* Something in flight between the daemon and a child, by the id on the wire. */
enum pend_kind { PK_SEND, PK_WEBHOOK, PK_HTTP, PK_WS };
struct pend {
    LIST_ENTRY(pend) link;
    struct child *c;
    enum pend_kind kind;
    long long id;
    void *handle;         /* sb_reply, sb_http_call or sb_ws */
    sb_send_done_fn done; /* PK_SEND */
    void *arg;
};
LIST_HEAD(pend_list, pend);

/* One instance's child process: the instance state the registry holds. */
struct child {
    struct sb_instance *inst;
    struct sbh_iso_gen *ig;
    enum phase phase;
    pid_t pid; /* 0 when none alive */
    struct sbh_ipc *ipc;
    struct event *tick;  /* heartbeat */
    struct event *retry; /* backoff and waiting */
    uint64_t started_ms, last_heard_ms;
    uint64_t closed_ms; /* the channel closed: waiting for the exit status */
    char *close_why;
    unsigned failures, restarts;
    long long ping_seq, next_id;
    char *last_failure;
    json_t *status; /* the plugin's status() as last pushed */
    struct pend_list pends;
    int counted;  /* holds one of ig->running */
    char *cgroup; /* its memory cgroup, when capped */
};

static void child_spawn(struct child *c);
static void child_failed(struct child *c, const char *why);

/* ---- configuration ---- */

static unsigned uint_or(const json_t *obj, const char *key, unsigned dflt)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (unsigned)json_integer_value(v)
                                                            : dflt;
}

void sbh_isolate_conf_read(struct sbh_isolate_conf *conf, const json_t *s)
{
    conf->heartbeat_ms = uint_or(s, "heartbeat_ms", 2000);
    conf->heartbeat_timeout_ms = uint_or(s, "heartbeat_timeout_ms", 10000);
    conf->restart_min_ms = uint_or(s, "restart_min_ms", 1000);
    conf->restart_max_ms = uint_or(s, "restart_max_ms", 60000);
    conf->max_restarts = uint_or(s, "max_restarts", 5);
    conf->healthy_after_ms = uint_or(s, "healthy_after_ms", 60000);
    conf->stop_grace_ms = uint_or(s, "stop_grace_ms", 10000);
    conf->max_processes = uint_or(s, "max_processes", 0);
    conf->memory_max_mib = uint_or(s, "memory_max_mib", 0);
}

char *sbh_isolate_instance_dir(const struct sbh_supervisor *sv, const char *id)
{
    char *dir;
    if (asprintf(&dir, "%s/instances/%s", sbh_supervisor_state_dir(sv), id) < 0)
        return NULL;
    return dir;
}

static int make_instance_dir(const struct sbh_supervisor *sv, const char *id, char **dir)
{
    char *parent;
    *dir = sbh_isolate_instance_dir(sv, id);
    if (!*dir || asprintf(&parent, "%s/instances", sbh_supervisor_state_dir(sv)) < 0)
        return -1;
    int rc =
        (mkdir(parent, 0700) < 0 && errno != EEXIST) || (mkdir(*dir, 0700) < 0 && errno != EEXIST)
            ? -1
            : 0;
    free(parent);
    return rc;
}

/* ---- small helpers ---- */

static const char *const state_names[] = {"stopped",   "connecting",   "qr",
                                          "connected", "disconnected", "error"};

static int state_parse(const char *s)
{
    for (int i = 0; s && i <= SB_STATE_ERROR; i++)
        if (!strcmp(s, state_names[i]))
            return i;
    return -1;
}

static const sb_host_services *svc(void)
{
    return sbh_services();
}

static int send_frame(struct child *c, json_t *frame)
{
    if (!c->ipc) {
        json_decref(frame);
        return -1;
    }
    return sbh_ipc_send_new(c->ipc, frame);
}

static json_t *headers_json(const sb_header *h, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            arr, json_pack("[ss]", h[i].name ? h[i].name : "", h[i].value ? h[i].value : ""));
    return arr;
}

/* A frame's [[name, value]...] as sb_header pairs borrowing its strings. */
static sb_header *headers_view(const json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    sb_header *h = calloc(*n ? *n : 1, sizeof(*h));
    for (size_t i = 0; h && i < *n; i++) {
        json_t *pair = json_array_get(arr, i);
        h[i].name = json_string_value(json_array_get(pair, 0));
        h[i].value = json_string_value(json_array_get(pair, 1));
        if (!h[i].name || !h[i].value) {
            free(h);
            return NULL;
        }
    }
    return h;
}

static json_t *b64_new(const void *data, size_t len)
{
    char *text = sbh_b64_encode(data ? data : "", len);
    json_t *j = json_string(text ? text : "");
    free(text);
    return j;
}

/* Decode member key of frame; an absent member is empty. 0 or -1. */
static int b64_member(const json_t *frame, const char *key, unsigned char **out, size_t *len)
{
    const char *text = json_string_value(json_object_get(frame, key));
    return sbh_b64_decode(text ? text : "", out, len);
}

static long long frame_id(const json_t *frame)
{
    json_t *id = json_object_get(frame, "id");
    return json_is_integer(id) ? json_integer_value(id) : -1;
}

/* ---- what is in flight ---- */

static struct pend *pend_add(struct child *c, enum pend_kind kind, long long id)
{
    struct pend *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->c = c;
    p->kind = kind;
    p->id = id;
    LIST_INSERT_HEAD(&c->pends, p, link);
    return p;
}

static struct pend *pend_find(struct child *c, enum pend_kind kind, long long id)
{
    struct pend *p;
    LIST_FOREACH (p, &c->pends, link)
        if (p->kind == kind && p->id == id)
            return p;
    return NULL;
}

static void pend_free(struct pend *p)
{
    LIST_REMOVE(p, link);
    free(p);
}

/*
 * The child is gone: sends fail (retryable), webhooks get 503, the daemon's
 * requests and sockets for it are cancelled. quiet: the instance is
 * stopping, and the registry answers sends and webhooks itself.
 */
static void pends_abort(struct child *c, int quiet)
{
    static const sb_send_result gone = {.ok = 0,
                                        .retryable = 1,
                                        .error_code = "plugin_host_exited",
                                        .error_message = "the plugin-host process ended"};
    struct pend *p;
    while ((p = LIST_FIRST(&c->pends)) != NULL) {
        LIST_REMOVE(&*p, link);
        if (p->kind == PK_SEND && !quiet)
            p->done(p->arg, &gone);
        else if (p->kind == PK_WEBHOOK && !quiet)
            sbh_reply_error(p->handle, 503, "plugin_host_exited",
                            "the plugin-host process ended before answering");
        else if (p->kind == PK_HTTP)
            svc()->http_cancel(p->handle);
        else if (p->kind == PK_WS)
            svc()->ws_close(p->handle, 1001, "plugin-host gone");
        free(p);
    }
}

/* ---- frames from the child ---- */

static void on_send_done(struct child *c, const json_t *f)
{
    struct pend *p = pend_find(c, PK_SEND, frame_id(f));
    if (!p)
        return;
    sb_send_result res = {
        .ok = json_is_true(json_object_get(f, "ok")) ||
              json_integer_value(json_object_get(f, "ok")) == 1,
        .retryable = json_is_true(json_object_get(f, "retryable")) ||
                     json_integer_value(json_object_get(f, "retryable")) == 1,
        .retry_after_ms = (uint32_t)json_integer_value(json_object_get(f, "retry_after_ms")),
        .provider_msg_id = json_string_value(json_object_get(f, "provider_msg_id")),
        .error_code = json_string_value(json_object_get(f, "error_code")),
        .error_message = json_string_value(json_object_get(f, "error_message")),
    };
    if (json_is_true(json_object_get(f, "refused"))) {
        res = (sb_send_result){.ok = 0,
                               .retryable = 0,
                               .error_code = "refused",
                               .error_message = "the plugin refused the message"};
    }
    sb_send_done_fn done = p->done;
    void *arg = p->arg;
    pend_free(p);
    done(arg, &res);
}

static void on_reply(struct child *c, const json_t *f)
{
    struct pend *p = pend_find(c, PK_WEBHOOK, frame_id(f));
    if (!p)
        return;
    sb_reply *reply = p->handle;
    pend_free(p);
    unsigned char *body = NULL;
    size_t len = 0, n = 0;
    json_t *status = json_object_get(f, "status");
    sb_header *h = headers_view(json_object_get(f, "headers"), &n);
    if (!json_is_integer(status) || !h || b64_member(f, "body_b64", &body, &len) < 0) {
        free(h);
        sbh_reply_error(reply, 502, "plugin_host_protocol", "the plugin-host sent a bad reply");
        return;
    }
    for (size_t i = 0; i < n; i++)
        svc()->reply_header(reply, h[i].name, h[i].value);
    svc()->reply(reply, (int)json_integer_value(status),
                 json_string_value(json_object_get(f, "content_type")), body, len);
    free(h);
    free(body);
}

static void on_event(struct child *c, const json_t *f)
{
    const char *type = json_string_value(json_object_get(f, "type"));
    json_t *payload = json_object_get(f, "payload");
    if (!type || !payload)
        return;
    struct sbh_registry *reg = c->inst->slot->reg;
    struct sb_reply *saved = reg->current;
    json_t *hook = json_object_get(f, "webhook");
    struct pend *p = hook ? pend_find(c, PK_WEBHOOK, json_integer_value(hook)) : NULL;
    /* Emitted inside that webhook's handling: stored before it is answered. */
    if (p)
        reg->current = p->handle;
    svc()->emit_event(c->inst, type, json_incref(payload));
    reg->current = saved;
}

static void on_state(struct child *c, const json_t *f)
{
    int st = state_parse(json_string_value(json_object_get(f, "state")));
    if (st >= 0)
        svc()->set_state(c->inst, (enum sb_instance_state)st,
                         json_string_value(json_object_get(f, "detail")));
}

static void on_log(struct child *c, const json_t *f)
{
    json_int_t level = json_integer_value(json_object_get(f, "level"));
    const char *msg = json_string_value(json_object_get(f, "msg"));
    if (level < SB_LOG_ERROR || level > SB_LOG_DEBUG)
        level = SB_LOG_INFO;
    sbh_log((enum sb_log_level)level, "plugin", c->inst->slot->name, c->inst->id, "%s",
            msg ? msg : "");
}

static void http_done(void *arg, const sb_http_response *resp)
{
    struct pend *p = arg;
    struct child *c = p->c;
    json_t *f =
        json_pack("{s:s, s:I, s:i, s:o, s:o}", "t", "http_done", "id", (json_int_t)p->id, "status",
                  resp->status, "headers", headers_json(resp->headers, resp->n_headers), "body_b64",
                  b64_new(resp->body, resp->body_len));
    if (f && resp->error)
        json_object_set_new(f, "error", json_string(resp->error));
    pend_free(p);
    send_frame(c, f);
}

static void on_http(struct child *c, const json_t *f)
{
    long long id = frame_id(f);
    size_t n = 0, len = 0;
    unsigned char *body = NULL;
    sb_header *h = headers_view(json_object_get(f, "headers"), &n);
    struct pend *p = h && b64_member(f, "body_b64", &body, &len) == 0 && id > 0
                         ? pend_add(c, PK_HTTP, id)
                         : NULL;
    sb_http_request req = {
        .method = json_string_value(json_object_get(f, "method")),
        .url = json_string_value(json_object_get(f, "url")),
        .headers = h,
        .n_headers = n,
        .body = body,
        .body_len = len,
        .timeout_ms = (uint32_t)json_integer_value(json_object_get(f, "timeout_ms")),
    };
    if (p && (p->handle = svc()->http_request(c->inst->gen, c->inst, &req, http_done, p)))
        p = NULL;
    if (p || !h || id <= 0) {
        if (p)
            pend_free(p);
        send_frame(c, json_pack("{s:s, s:I, s:i, s:s, s:[], s:s}", "t", "http_done", "id",
                                (json_int_t)id, "status", 0, "error", "request refused by the host",
                                "headers", "body_b64", ""));
    }
    free(h);
    free(body);
}

static void on_http_cancel(struct child *c, const json_t *f)
{
    struct pend *p = pend_find(c, PK_HTTP, frame_id(f));
    if (!p)
        return;
    svc()->http_cancel(p->handle);
    pend_free(p);
}

static const char *const ws_events[] = {"open", "text", "binary", "closed"};

static void ws_event(void *arg, enum sb_ws_event ev, const unsigned char *data, size_t len,
                     int code)
{
    struct pend *p = arg;
    struct child *c = p->c;
    json_t *f = json_pack("{s:s, s:I, s:s, s:o}", "t", "ws_event", "id", (json_int_t)p->id, "ev",
                          ws_events[ev], "data_b64", b64_new(data, len));
    if (ev == SB_WS_CLOSED) {
        json_object_set_new(f, "code", json_integer(code));
        pend_free(p);
    }
    send_frame(c, f);
}

static void on_ws_connect(struct child *c, const json_t *f)
{
    long long id = frame_id(f);
    size_t n = 0;
    sb_header *h = headers_view(json_object_get(f, "headers"), &n);
    struct pend *p = h && id > 0 ? pend_add(c, PK_WS, id) : NULL;
    const char *url = json_string_value(json_object_get(f, "url"));
    if (p && url && (p->handle = svc()->ws_connect(c->inst->gen, c->inst, url, h, n, ws_event, p)))
        p = NULL;
    if (p || !h || id <= 0) {
        if (p)
            pend_free(p);
        send_frame(c, json_pack("{s:s, s:I, s:s, s:s, s:i}", "t", "ws_event", "id", (json_int_t)id,
                                "ev", "closed", "data_b64", "", "code", 1006));
    }
    free(h);
}

static void on_ws_send(struct child *c, const json_t *f)
{
    struct pend *p = pend_find(c, PK_WS, frame_id(f));
    unsigned char *data = NULL;
    size_t len = 0;
    if (!p || b64_member(f, "data_b64", &data, &len) < 0)
        return;
    svc()->ws_send(p->handle, json_is_true(json_object_get(f, "binary")), data, len);
    free(data);
}

static void on_ws_close(struct child *c, const json_t *f)
{
    struct pend *p = pend_find(c, PK_WS, frame_id(f));
    if (!p)
        return;
    svc()->ws_close(p->handle, (int)json_integer_value(json_object_get(f, "code")),
                    json_string_value(json_object_get(f, "reason")));
    pend_free(p);
}

static void on_hello(struct child *c, const json_t *f)
{
    if (c->phase != PH_HELLO || json_integer_value(json_object_get(f, "v")) != SBH_IPC_VERSION) {
        child_failed(c, "plugin-host speaks another IPC version");
        return;
    }
    struct sb_instance *inst = c->inst;
    struct sbh_kv *kv = inst->slot->reg->kv;
    char *dir = NULL;
    if (make_instance_dir(c->ig->sv, inst->id, &dir) < 0) {
        free(dir);
        child_failed(c, "cannot create the instance's state directory");
        return;
    }
    json_t *init =
        json_pack("{s:s, s:s, s:s, s:O, s:s, s:O, s:o, s:s}", "t", "init", "plugin",
                  inst->gen->copy_path, "name", inst->slot->name, "config",
                  inst->slot->plugin_config, "instance", inst->id, "settings", inst->settings, "kv",
                  kv ? sbh_kv_dump(kv, inst->id) : json_object(), "state_dir", dir);
    free(dir);
    c->phase = PH_STARTING;
    if (!init || send_frame(c, init) < 0)
        child_failed(c, "cannot send init to the plugin-host");
}

static void on_started(struct child *c, const json_t *f)
{
    if (c->phase != PH_STARTING)
        return;
    if (!json_is_true(json_object_get(f, "ok"))) {
        const char *why = json_string_value(json_object_get(f, "error"));
        char detail[512];
        snprintf(detail, sizeof(detail), "plugin failed to start: %s", why ? why : "no reason");
        /* A refused start is a setting or plugin problem: restarting will not help. */
        c->failures = c->ig->conf.max_restarts;
        child_failed(c, detail);
        return;
    }
    c->phase = PH_RUNNING;
    sbh_log(SB_LOG_INFO, "supervisor", c->inst->slot->name, c->inst->id,
            "plugin-host %d running the instance", (int)c->pid);
}

typedef void (*frame_fn)(struct child *, const json_t *);
static const struct {
    const char *t;
    frame_fn fn;
} frame_table[] = {
    {"hello", on_hello},
    {"started", on_started},
    {"send_done", on_send_done},
    {"reply", on_reply},
    {"event", on_event},
    {"state", on_state},
    {"log", on_log},
    {"http", on_http},
    {"http_cancel", on_http_cancel},
    {"ws_connect", on_ws_connect},
    {"ws_send", on_ws_send},
    {"ws_close", on_ws_close},
};

static void on_frame(void *arg, json_t *f)
{
    struct child *c = arg;
    const char *t = json_string_value(json_object_get(f, "t"));
    c->last_heard_ms = sbh_now_ms();
    if (!strcmp(t, "pong") || !strcmp(t, "stopped"))
        return;
    if (!strcmp(t, "status")) {
        json_decref(c->status);
        c->status = json_incref(json_object_get(f, "status"));
        return;
    }
    if (!strcmp(t, "kv_set")) {
        svc()->kv_set(c->inst, json_string_value(json_object_get(f, "key")),
                      json_string_value(json_object_get(f, "value")));
        return;
    }
    if (!strcmp(t, "metric")) {
        svc()->metric_add(c->inst->gen, c->inst, json_string_value(json_object_get(f, "name")),
                          json_real_value(json_object_get(f, "delta")) +
                              (double)json_integer_value(json_object_get(f, "delta")));
        return;
    }
    for (size_t i = 0; i < sizeof(frame_table) / sizeof(frame_table[0]); i++)
        if (!strcmp(t, frame_table[i].t)) {
            frame_table[i].fn(c, f);
            return;
        }
    char why[128];
    snprintf(why, sizeof(why), "plugin-host sent an unknown frame \"%.40s\"", t);
    child_failed(c, why);
}

/* The process ending closes the channel first: give its exit status (the
 * better reason) a moment to arrive before failing on the closed channel. */
#define EXIT_WAIT_MS 1000

static void on_close(void *arg, const char *why)
{
    struct child *c = arg;
    char detail[256];
    snprintf(detail, sizeof(detail), "IPC channel closed: %s", why);
    if (!c->pid) {
        child_failed(c, detail);
        return;
    }
    free(c->close_why);
    c->close_why = strdup(detail);
    c->closed_ms = sbh_now_ms();
    sbh_timer_arm_ms(c->tick, EXIT_WAIT_MS);
}

/* ---- supervision ---- */

static void release_count(struct child *c)
{
    if (c->counted)
        c->ig->running--;
    c->counted = 0;
}

static void on_child_exit(void *arg, int status)
{
    struct child *c = arg;
    char why[128];
    c->pid = 0;
    release_count(c);
    sbh_cgroup_remove(c->cgroup);
    c->cgroup = NULL;
    if (WIFSIGNALED(status))
        snprintf(why, sizeof(why), "plugin-host killed by signal %d", WTERMSIG(status));
    else
        snprintf(why, sizeof(why), "plugin-host exited with status %d", WEXITSTATUS(status));
    child_failed(c, why);
    /* The process is gone now: a restart that waited for it may go. */
    if (c->phase == PH_BACKOFF && !evtimer_pending(c->retry, NULL))
        child_spawn(c);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct child *c = arg;
    if (c->phase != PH_HELLO && c->phase != PH_STARTING && c->phase != PH_RUNNING)
        return;
    if (c->closed_ms) {
        if (sbh_now_ms() - c->closed_ms >= EXIT_WAIT_MS)
            child_failed(c, c->close_why ? c->close_why : "IPC channel closed");
        else
            sbh_timer_arm_ms(c->tick, EXIT_WAIT_MS);
        return;
    }
    uint64_t silent = sbh_now_ms() - c->last_heard_ms;
    if (silent > c->ig->conf.heartbeat_timeout_ms) {
        char why[128];
        snprintf(why, sizeof(why), "plugin-host silent for %llu ms", (unsigned long long)silent);
        child_failed(c, why);
        return;
    }
    send_frame(c, json_pack("{s:s, s:I}", "t", "ping", "n", (json_int_t)++c->ping_seq));
    sbh_timer_arm_ms(c->tick, c->ig->conf.heartbeat_ms);
}

static unsigned backoff_ms(const struct child *c)
{
    const struct sbh_isolate_conf *k = &c->ig->conf;
    return (unsigned)sbh_backoff_ceiling_ms(k->restart_min_ms, k->restart_max_ms, c->failures);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct child *c = arg;
    /* Respawn only once the old process is reaped (it may hold the profile). */
    if (c->pid == 0)
        child_spawn(c);
}

/*
 * The running process failed (exited, went silent, broke the protocol):
 * kill its group, give back what was in flight, and restart it later, or
 * give up after max_restarts consecutive short runs.
 */
static void child_failed(struct child *c, const char *why)
{
    if (c->phase == PH_BACKOFF || c->phase == PH_FAILED || c->phase == PH_WAITING) {
        return;
    }
    if (c->pid)
        sbh_supervisor_kill(c->ig->sv, c->pid);
    sbh_ipc_free(c->ipc);
    c->ipc = NULL;
    c->closed_ms = 0;
    evtimer_del(c->tick);
    pends_abort(c, 0);
    json_decref(c->status);
    c->status = NULL;
    free(c->last_failure);
    c->last_failure = strdup(why);
    uint64_t ran = c->phase == PH_RUNNING ? sbh_now_ms() - c->started_ms : 0;
    c->failures = ran >= c->ig->conf.healthy_after_ms ? 1 : c->failures + 1;
    sbh_metrics_add("switchboard_plugin_host_failures_total", "Plugin-host processes that failed",
                    1, "provider", c->inst->slot->name, "instance", c->inst->id, SBH_END);
    struct sb_instance *inst = c->inst;
    json_t *ev = json_pack("{s:s, s:s, s:i}", "status", "disconnected", "reason", why, "failures",
                           (int)c->failures);
    if (c->failures > c->ig->conf.max_restarts) {
        char detail[512];
        snprintf(detail, sizeof(detail), "gave up after %u failed runs; last: %s", c->failures,
                 why);
        c->phase = PH_FAILED;
        sbh_log(SB_LOG_ERROR, "supervisor", inst->slot->name, inst->id, "%s", detail);
        svc()->set_state(inst, SB_STATE_ERROR, detail);
        json_object_set_new(ev, "status", json_string("error"));
        svc()->emit_event(inst, "instance.status", ev);
        return;
    }
    unsigned ms = backoff_ms(c);
    char detail[512];
    snprintf(detail, sizeof(detail), "%s; restarting in %u ms", why, ms);
    sbh_log(SB_LOG_WARN, "supervisor", inst->slot->name, inst->id, "%s", detail);
    svc()->set_state(inst, SB_STATE_DISCONNECTED, detail);
    svc()->emit_event(inst, "instance.status", ev);
    c->phase = PH_BACKOFF;
    sbh_timer_arm_ms(c->retry, ms);
}

static void cap_memory(struct child *c)
{
    char why[512];
    c->cgroup =
        sbh_cgroup_memory_cap(c->pid, c->inst->id, c->ig->conf.memory_max_mib, why, sizeof(why));
    if (!c->cgroup && !c->ig->cgroup_warned) {
        c->ig->cgroup_warned = 1;
        sbh_log(SB_LOG_WARN, "supervisor", c->inst->slot->name, NULL,
                "memory_max_mib not enforced: %s", why);
    }
}

static void child_spawn(struct child *c)
{
    struct sbh_iso_gen *ig = c->ig;
    char why[256];
    if (sbh_supervisor_busy(ig->sv, c->inst->id)) {
        c->phase = PH_WAITING; /* on_drained tries again */
        return;
    }
    if (ig->conf.max_processes && ig->running >= ig->conf.max_processes) {
        snprintf(why, sizeof(why), "max_processes (%u) of %s reached", ig->conf.max_processes,
                 c->inst->slot->name);
        c->phase = PH_FAILED;
        svc()->set_state(c->inst, SB_STATE_ERROR, why);
        return;
    }
    int fd = -1;
    pid_t pid = sbh_supervisor_spawn(ig->sv, on_child_exit, c, &fd, why, sizeof(why));
    if (pid < 0) {
        c->phase = PH_HELLO; /* so child_failed counts it */
        child_failed(c, why);
        return;
    }
    c->pid = pid;
    c->counted = 1;
    ig->running++;
    if (ig->conf.memory_max_mib)
        cap_memory(c);
    if (c->started_ms)
        c->restarts++;
    c->started_ms = c->last_heard_ms = sbh_now_ms();
    c->phase = PH_HELLO;
    c->ipc = sbh_ipc_new(c->inst->slot->reg->base, fd, on_frame, on_close, c);
    if (!c->ipc) {
        child_failed(c, "cannot set up the IPC channel");
        return;
    }
    sbh_timer_arm_ms(c->tick, ig->conf.heartbeat_ms);
}

/* ---- the proxy descriptor ---- */

static int px_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    (void)services, (void)self, (void)config;
    return 0; /* the real init runs in each plugin-host */
}

static void px_shutdown(sb_plugin *self)
{
    (void)self;
}

static int px_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    (void)settings;
    struct child *c = calloc(1, sizeof(*c));
    if (!c)
        return -1;
    c->inst = inst;
    c->ig = inst->gen->iso;
    LIST_INIT(&c->pends);
    struct event_base *base = inst->slot->reg->base;
    c->tick = evtimer_new(base, on_tick, c);
    c->retry = evtimer_new(base, on_retry, c);
    if (!c->tick || !c->retry) {
        if (c->tick)
            event_free(c->tick);
        if (c->retry)
            event_free(c->retry);
        free(c);
        return -1;
    }
    *state = c;
    svc()->set_state(inst, SB_STATE_CONNECTING, "starting plugin-host");
    child_spawn(c);
    return 0;
}

static void px_instance_stop(sb_instance *inst, void *state)
{
    struct child *c = state;
    (void)inst;
    pends_abort(c, 1);
    if (c->pid) {
        /* Ask it to stop; it gets stop_grace_ms before its group is killed. */
        if (c->ipc && send_frame(c, json_pack("{s:s}", "t", "stop")) == 0)
            sbh_ipc_flush(c->ipc, 100);
        sbh_supervisor_drain(c->ig->sv, c->pid, inst->id, c->ig->conf.stop_grace_ms);
    }
    release_count(c);
    free(c->cgroup); /* still in use while it drains; the next start reuses it */
    sbh_ipc_free(c->ipc);
    event_free(c->tick);
    event_free(c->retry);
    json_decref(c->status);
    free(c->last_failure);
    free(c->close_why);
    free(c);
}

static int px_send(sb_instance *inst, void *state, const json_t *message, sb_send_done_fn done,
                   void *done_arg)
{
    (void)inst;
    struct child *c = state;
    struct pend *p = NULL;
    if (c->phase == PH_RUNNING && !c->closed_ms && (p = pend_add(c, PK_SEND, ++c->next_id))) {
        p->done = done;
        p->arg = done_arg;
        if (send_frame(c, json_pack("{s:s, s:I, s:O}", "t", "send", "id", (json_int_t)p->id,
                                    "message", message)) == 0)
            return 0;
        pend_free(p);
    }
    /* Not running now: the outbox tries again later, unless it gave up for good. */
    sb_send_result res = {.ok = 0,
                          .retryable = c->phase != PH_FAILED,
                          .error_code = "instance_restarting",
                          .error_message = "the instance's plugin-host is not running"};
    done(done_arg, &res);
    return 0;
}

static void px_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply)
{
    (void)inst;
    struct child *c = state;
    if (c->phase != PH_RUNNING || c->closed_ms) {
        svc()->reply_header(reply, "Retry-After", "1");
        sbh_reply_error(reply, 503, "instance_restarting",
                        "the instance's plugin-host is not running");
        return;
    }
    struct pend *p = pend_add(c, PK_WEBHOOK, ++c->next_id);
    json_t *f =
        p ? json_pack("{s:s, s:I, s:s, s:s, s:o, s:o}", "t", "webhook", "id", (json_int_t)p->id,
                      "method", req->method, "url", req->url ? req->url : "", "headers",
                      headers_json(req->headers, req->n_headers), "body_b64",
                      b64_new(req->body, req->body_len))
          : NULL;
    if (f)
        json_object_set_new(f, "query", req->query ? json_string(req->query) : json_null());
    if (!f || send_frame(c, f) < 0) {
        if (p)
            pend_free(p);
        sbh_reply_error(reply, 503, "plugin_host_unavailable", "cannot reach the plugin-host");
        return;
    }
    p->handle = reply;
}

static json_t *px_status(sb_instance *inst, void *state)
{
    (void)inst;
    struct child *c = state;
    json_t *st = c->status && json_is_object(c->status) ? json_deep_copy(c->status) : json_object();
    json_t *proc =
        json_pack("{s:s, s:s, s:i, s:i}", "isolation", "process", "phase", phase_names[c->phase],
                  "restarts", (int)c->restarts, "failures", (int)c->failures);
    if (c->pid)
        json_object_set_new(proc, "pid", json_integer(c->pid));
    if (c->last_failure)
        json_object_set_new(proc, "last_failure", json_string(c->last_failure));
    json_object_set_new(st, "process", proc);
    return st;
}

/* Children waiting for a drained predecessor try again. */
static void on_drained(void *arg);

int sbh_isolate_wrap(struct sb_plugin *gen, struct sbh_supervisor *sv,
                     const struct sbh_isolate_conf *conf)
{
    struct sbh_iso_gen *ig = calloc(1, sizeof(*ig));
    sb_plugin_desc *proxy = malloc(sizeof(*proxy));
    if (!ig || !proxy) {
        free(ig);
        free(proxy);
        return -1;
    }
    const sb_plugin_desc *r = gen->desc;
    const sb_plugin_desc tmp = {
        .abi_major = r->abi_major,
        .abi_minor = r->abi_minor,
        .struct_size = sizeof(sb_plugin_desc),
        .name = r->name,
        .version = r->version,
        .description = r->description,
        .capabilities = r->capabilities,
        .settings_schema = r->settings_schema,
        .init = px_init,
        .shutdown = px_shutdown,
        .instance_start = px_instance_start,
        .instance_stop = px_instance_stop,
        .send = r->send ? px_send : NULL,
        .webhook = r->webhook ? px_webhook : NULL,
        .status = px_status,
    };
    memcpy(proxy, &tmp, sizeof(tmp));
    *ig = (struct sbh_iso_gen){.sv = sv, .conf = *conf, .real = r, .proxy = proxy};
    gen->iso = ig;
    gen->desc = proxy;
    sbh_supervisor_on_drained(sv, on_drained, gen->slot->reg);
    return 0;
}

void sbh_isolate_unwrap(struct sb_plugin *gen)
{
    if (!gen || !gen->iso)
        return;
    gen->desc = gen->iso->real;
    free(gen->iso->proxy);
    free(gen->iso);
    gen->iso = NULL;
}

static void on_drained(void *arg)
{
    struct sbh_registry *reg = arg;
    struct sbh_slot *slot;
    struct sb_instance *inst;
    TAILQ_FOREACH (slot, &reg->slots, link)
        TAILQ_FOREACH (inst, &slot->instances, link) {
            struct child *c = inst->gen && inst->gen->iso ? inst->state : NULL;
            if (c && c->phase == PH_WAITING)
                child_spawn(c);
        }
}
