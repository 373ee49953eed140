/*
 * Unit tests of the echo plugin, driven through its ABI alone.
 *
 * The test dlopen()s the built echo.so (as the host does) and hands it a fake
 * sb_host_services table that records what the plugin does: emitted events,
 * webhook replies, send completions and timers. Timers never fire on their
 * own; a test fires them by hand, so delayed replies are deterministic.
 *
 * Plugin location: $SB_PLUGIN_DIR/echo.so, else ../build/plugins/echo.so
 * (relative to tests/ in the build tree, where `make check` runs us).
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "runner.h"
#include <jansson.h>

#include <switchboard/switchboard.h>

#define MAX_EVENTS 8
#define MAX_REPLIES 8
#define MAX_TIMERS 8
#define MAX_DONES 8

/* The host's opaque types are ours to define here. */
struct sb_plugin {
    int timers; /* timers started with this handle: the plugin must pass its own */
};

struct sb_instance {
    const char *id;
    enum sb_instance_state state;
};

struct sb_reply {
    int answers; /* reply() calls for this request; must end up exactly 1 */
};

struct sb_timer {
    int active; /* started and neither fired nor cancelled */
    int fired;
    int cancelled;
    uint32_t ms;
    int repeat;
    sb_instance *inst;
    sb_timer_fn fn;
    void *arg;
};

struct recorded_event {
    char type[32];
    json_t *payload; /* owned: emit_event steals it */
};

struct recorded_reply {
    struct sb_reply *reply;
    int status;
    char content_type[64];
    json_t *body; /* parsed; NULL when the body was not JSON */
};

struct recorded_done {
    int ok;
    int retryable;
    char provider_msg_id[64];
    char error_code[64];
    size_t events_before; /* events emitted when done() ran, to check ordering */
};

/* Everything the fake host saw; reset between tests. */
static struct {
    struct recorded_event events[MAX_EVENTS];
    size_t n_events;
    struct recorded_reply replies[MAX_REPLIES];
    size_t n_replies;
    struct sb_timer timers[MAX_TIMERS];
    size_t n_timers;
    struct recorded_done dones[MAX_DONES];
    size_t n_dones;
    int misuse; /* ABI rule broken: double reply, bad cancel, table overflow */
    char last_log[256];
} rec;

/* ---- fake host services ------------------------------------------------- */

static void fake_log(sb_plugin *self, sb_instance *inst, enum sb_log_level level, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));
static void fake_log(sb_plugin *self, sb_instance *inst, enum sb_log_level level, const char *fmt,
                     ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(rec.last_log, sizeof(rec.last_log), fmt, ap);
    va_end(ap);
}

static const char *fake_instance_id(sb_instance *inst)
{
    return inst->id;
}

static void fake_set_state(sb_instance *inst, enum sb_instance_state state, const char *detail)
{
    inst->state = state;
}

static int fake_emit_event(sb_instance *inst, const char *type, json_t *payload)
{
    struct recorded_event *ev;

    if (rec.n_events == MAX_EVENTS) {
        rec.misuse++;
        json_decref(payload);
        return SB_ENOMEM;
    }
    ev = &rec.events[rec.n_events++];
    snprintf(ev->type, sizeof(ev->type), "%s", type);
    ev->payload = payload;
    return SB_OK;
}

static int fake_reply(sb_reply *reply, int status, const char *content_type, const void *body,
                      size_t len)
{
    struct recorded_reply *r;

    if (++reply->answers > 1 || rec.n_replies == MAX_REPLIES) {
        rec.misuse++;
        return SB_EGONE;
    }
    r = &rec.replies[rec.n_replies++];
    r->reply = reply;
    r->status = status;
    snprintf(r->content_type, sizeof(r->content_type), "%s",
             content_type ? content_type : "application/json");
    r->body = json_loadb(body, len, 0, NULL);
    return SB_OK;
}

static sb_timer *fake_timer_start(sb_plugin *self, sb_instance *inst, uint32_t ms, int repeat,
                                  sb_timer_fn fn, void *arg)
{
    struct sb_timer *t;

    if (rec.n_timers == MAX_TIMERS) {
        rec.misuse++;
        return NULL;
    }
    if (self)
        self->timers++;
    t = &rec.timers[rec.n_timers++];
    *t = (struct sb_timer){
        .active = 1, .ms = ms, .repeat = repeat, .inst = inst, .fn = fn, .arg = arg};
    return t;
}

static void fake_timer_cancel(sb_timer *timer)
{
    /* Cancelling a fired one-shot or an already cancelled timer is a bug. */
    if (!timer || !timer->active) {
        rec.misuse++;
        return;
    }
    timer->active = 0;
    timer->cancelled = 1;
}

static sb_http_call *fake_http_request(sb_plugin *self, sb_instance *inst,
                                       const sb_http_request *req, sb_http_done_fn done, void *arg)
{
    return NULL;
}

static void fake_http_cancel(sb_http_call *call) {}

static sb_ws *fake_ws_connect(sb_plugin *self, sb_instance *inst, const char *url,
                              const sb_header *headers, size_t n_headers, sb_ws_fn fn, void *arg)
{
    return NULL;
}

static int fake_ws_send(sb_ws *ws, int binary, const void *data, size_t len)
{
    return SB_ENOTAVAIL;
}

static void fake_ws_close(sb_ws *ws, int code, const char *reason) {}

static int fake_kv_get(sb_instance *inst, const char *key, char **value)
{
    return SB_ENOTAVAIL;
}

static int fake_kv_set(sb_instance *inst, const char *key, const char *value)
{
    return SB_ENOTAVAIL;
}

static void fake_metric_add(sb_plugin *self, sb_instance *inst, const char *name, double delta) {}

static const sb_host_services fake_services = {
    .struct_size = sizeof(sb_host_services),
    .abi_major = SB_ABI_MAJOR,
    .abi_minor = SB_ABI_MINOR,
    .log = fake_log,
    .instance_id = fake_instance_id,
    .set_state = fake_set_state,
    .emit_event = fake_emit_event,
    .reply = fake_reply,
    .timer_start = fake_timer_start,
    .timer_cancel = fake_timer_cancel,
    .http_request = fake_http_request,
    .http_cancel = fake_http_cancel,
    .ws_connect = fake_ws_connect,
    .ws_send = fake_ws_send,
    .ws_close = fake_ws_close,
    .kv_get = fake_kv_get,
    .kv_set = fake_kv_set,
    .metric_add = fake_metric_add,
};

static void rec_reset(void)
{
    for (size_t i = 0; i < rec.n_events; i++)
        json_decref(rec.events[i].payload);
    for (size_t i = 0; i < rec.n_replies; i++)
        json_decref(rec.replies[i].body);
    memset(&rec, 0, sizeof(rec));
}

/* ---- plugin under test -------------------------------------------------- */

static void *dl;
static const sb_plugin_desc *desc;
static struct sb_plugin plugin;
static struct sb_instance instance = {.id = "echo-test"};
static void *inst_state;
static int inst_running;

/*
 * Reply handles outlive the test function: a reply the plugin still holds when
 * a test fails early is answered by instance_stop in the teardown.
 */
static struct sb_reply reply_pool[16];
static size_t n_reply_pool;

static int suite_init(void)
{
    const char *dir = getenv("SB_PLUGIN_DIR");
    char path[4096];
    sb_plugin_entry_fn entry;

    snprintf(path, sizeof(path), "%s", dir && *dir ? dir : "../build/plugins");
    strncat(path, "/echo.so", sizeof(path) - strlen(path) - 1);
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        fprintf(stderr, "test_echo: cannot load %s: %s\n", path, dlerror());
        return -1;
    }
    /* Object-to-function pointer conversion: POSIX guarantees it for dlsym. */
    entry = (sb_plugin_entry_fn)dlsym(dl, SB_PLUGIN_ENTRY_SYMBOL);
    desc = entry ? entry() : NULL;
    if (!desc || desc->abi_major != SB_ABI_MAJOR) {
        fprintf(stderr, "test_echo: %s has no usable descriptor\n", path);
        return -1;
    }
    if (desc->init(&fake_services, &plugin, NULL) != 0) {
        fprintf(stderr, "test_echo: init failed: %s\n", rec.last_log);
        return -1;
    }
    return 0;
}

static int suite_cleanup(void)
{
    if (desc)
        desc->shutdown(&plugin);
    rec_reset();
    if (dl)
        dlclose(dl);
    return 0;
}

/* Every test starts with a fresh "echo-test" instance with prefix "echo: ". */
static void test_setup(void)
{
    json_t *settings = json_pack("{s:s}", "prefix", "echo: ");

    rec_reset();
    memset(reply_pool, 0, sizeof(reply_pool));
    plugin.timers = 0;
    n_reply_pool = 0;
    instance.state = SB_STATE_STOPPED;
    inst_state = NULL;
    inst_running = desc->instance_start(&instance, settings, &inst_state) == 0;
    json_decref(settings);
}

static void test_teardown(void)
{
    if (inst_running)
        desc->instance_stop(&instance, inst_state);
    inst_running = 0;
    rec_reset();
}

/* ---- helpers ------------------------------------------------------------ */

/*
 * Deliver one webhook and return its reply handle. The request lives on our
 * stack and is gone on return, as the contract allows once the plugin replied
 * or parked what it needs.
 */
static struct sb_reply *webhook(const char *method, const char *body)
{
    struct sb_reply *reply;
    static const sb_header headers[] = {{"Content-Type", "application/json"}};
    sb_http_request req = {
        .method = method,
        .url = "/",
        .headers = headers,
        .n_headers = 1,
        .body = (const unsigned char *)body,
        .body_len = body ? strlen(body) : 0,
    };

    CU_ASSERT_FATAL(inst_running);
    CU_ASSERT_FATAL(n_reply_pool < sizeof(reply_pool) / sizeof(reply_pool[0]));
    reply = &reply_pool[n_reply_pool++];
    desc->webhook(&instance, inst_state, &req, reply);
    return reply;
}

/* A webhook with one extra header, on an instance started with a token. */
static struct sb_reply *webhook_with_header(void *state, const char *name, const char *value)
{
    struct sb_reply *reply = &reply_pool[n_reply_pool++];
    const sb_header headers[] = {{name, value}};
    static const char body[] = "{\"text\":\"hi\"}";
    sb_http_request req = {.method = "POST",
                           .url = "",
                           .headers = headers,
                           .n_headers = name ? 1 : 0,
                           .body = (const unsigned char *)body,
                           .body_len = sizeof(body) - 1};
    desc->webhook(&instance, state, &req, reply);
    return reply;
}

static const char *str_at(const json_t *root, const char *path_a, const char *path_b)
{
    const json_t *v = json_object_get(root, path_a);

    if (path_b)
        v = json_object_get(v, path_b);
    return json_string_value(v);
}

/* Assert a single reply with the contract's error shape and return it. */
static const struct recorded_reply *expect_error(struct sb_reply *reply, int status,
                                                 const char *code)
{
    const struct recorded_reply *r = &rec.replies[0];
    const char *got;

    CU_ASSERT_EQUAL_FATAL(rec.n_replies, 1);
    CU_ASSERT_PTR_EQUAL(r->reply, reply);
    CU_ASSERT_EQUAL(r->status, status);
    CU_ASSERT_STRING_EQUAL(r->content_type, "application/json");
    CU_ASSERT_PTR_NOT_NULL_FATAL(r->body);
    got = str_at(r->body, "error", "code");
    CU_ASSERT_PTR_NOT_NULL_FATAL(got);
    CU_ASSERT_STRING_EQUAL(got, code);
    CU_ASSERT_PTR_NOT_NULL(str_at(r->body, "error", "message"));
    return r;
}

static void send_done(void *arg, const sb_send_result *res)
{
    struct recorded_done *d;

    if (rec.n_dones == MAX_DONES) {
        rec.misuse++;
        return;
    }
    d = &rec.dones[rec.n_dones++];
    d->ok = res->ok;
    d->retryable = res->retryable;
    d->events_before = rec.n_events;
    snprintf(d->provider_msg_id, sizeof(d->provider_msg_id), "%s",
             res->provider_msg_id ? res->provider_msg_id : "");
    snprintf(d->error_code, sizeof(d->error_code), "%s", res->error_code ? res->error_code : "");
}

static int do_send(const char *message_json)
{
    json_t *msg = json_loads(message_json, 0, NULL);
    int rc;

    CU_ASSERT_PTR_NOT_NULL_FATAL(msg);
    rc = desc->send(&instance, inst_state, msg, send_done, NULL);
    json_decref(msg);
    return rc;
}

/* Assert event i is message.received {"from":from,"text":text}. */
static void expect_received(size_t i, const char *from, const char *text)
{
    const struct recorded_event *ev = &rec.events[i];

    CU_ASSERT_FATAL(i < rec.n_events);
    CU_ASSERT_STRING_EQUAL(ev->type, "message.received");
    CU_ASSERT_PTR_NOT_NULL_FATAL(str_at(ev->payload, "from", NULL));
    CU_ASSERT_STRING_EQUAL(str_at(ev->payload, "from", NULL), from);
    CU_ASSERT_PTR_NOT_NULL_FATAL(str_at(ev->payload, "text", NULL));
    CU_ASSERT_STRING_EQUAL(str_at(ev->payload, "text", NULL), text);
}

/* ---- tests -------------------------------------------------------------- */

static void test_descriptor(void)
{
    json_t *schema, *want;
    const uint32_t caps = SB_CAP_MEDIA | SB_CAP_BUTTONS | SB_CAP_THREADS | SB_CAP_WEBHOOK;

    CU_ASSERT_EQUAL(desc->abi_major, SB_ABI_MAJOR);
    CU_ASSERT_EQUAL(desc->abi_minor, SB_ABI_MINOR);
    CU_ASSERT_EQUAL(desc->struct_size, sizeof(sb_plugin_desc));
    CU_ASSERT_PTR_NOT_NULL_FATAL(desc->name);
    CU_ASSERT_STRING_EQUAL(desc->name, "echo");
    CU_ASSERT_PTR_NOT_NULL_FATAL(desc->version);
    CU_ASSERT(desc->version[0] != '\0');
    CU_ASSERT_EQUAL(desc->capabilities, caps);
    CU_ASSERT_PTR_NOT_NULL(desc->init);
    CU_ASSERT_PTR_NOT_NULL(desc->shutdown);
    CU_ASSERT_PTR_NOT_NULL(desc->instance_start);
    CU_ASSERT_PTR_NOT_NULL(desc->instance_stop);
    CU_ASSERT_PTR_NOT_NULL(desc->send);
    CU_ASSERT_PTR_NOT_NULL(desc->webhook);

    CU_ASSERT_PTR_NOT_NULL_FATAL(desc->settings_schema);
    schema = json_loads(desc->settings_schema, 0, NULL);
    want = json_loads("{\"type\":\"object\",\"properties\":{\"prefix\":{\"type\":\"string\"},"
                      "\"token\":{\"type\":\"string\",\"minLength\":8,\"writeOnly\":true}},"
                      "\"additionalProperties\":false}",
                      0, NULL);
    CU_ASSERT_PTR_NOT_NULL(schema);
    CU_ASSERT(json_equal(schema, want));
    json_decref(schema);
    json_decref(want);
}

static void test_instance_start(void)
{
    CU_ASSERT(inst_running);
    CU_ASSERT_PTR_NOT_NULL(inst_state);
    CU_ASSERT_EQUAL(instance.state, SB_STATE_CONNECTED);
}

static void test_webhook_ok(void)
{
    const char *body = "{\"text\":\"hello\",\"from\":\"alice\"}";
    const struct recorded_reply *r = &rec.replies[0];
    struct sb_reply *reply = webhook("POST", body);
    json_t *sent;

    CU_ASSERT_EQUAL_FATAL(rec.n_replies, 1);
    CU_ASSERT_EQUAL(r->status, 200);
    CU_ASSERT_STRING_EQUAL(r->content_type, "application/json");
    CU_ASSERT_PTR_NOT_NULL_FATAL(r->body);
    CU_ASSERT(json_is_true(json_object_get(r->body, "ok")));
    CU_ASSERT_PTR_NOT_NULL_FATAL(str_at(r->body, "instance", NULL));
    CU_ASSERT_STRING_EQUAL(str_at(r->body, "instance", NULL), "echo-test");
    CU_ASSERT_PTR_NOT_NULL_FATAL(str_at(r->body, "plugin_version", NULL));
    CU_ASSERT_STRING_EQUAL(str_at(r->body, "plugin_version", NULL), desc->version);
    /* "echo" is the request body, unchanged. */
    sent = json_loads(body, 0, NULL);
    CU_ASSERT(json_equal(json_object_get(r->body, "echo"), sent));
    json_decref(sent);

    CU_ASSERT_EQUAL_FATAL(rec.n_events, 1);
    expect_received(0, "alice", "echo: hello");
    CU_ASSERT_EQUAL(rec.n_timers, 0);
    CU_ASSERT_EQUAL(reply->answers, 1);
}

static void test_webhook_invalid_json(void)
{
    static const char *const bodies[] = {"{not json", "[1,2]", "\"text\"", "", NULL};

    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        const struct recorded_reply *r;
        struct sb_reply *reply;

        rec_reset();
        reply = webhook("POST", bodies[i]);
        r = expect_error(reply, 400, "invalid_json");
        CU_ASSERT_EQUAL(rec.n_events, 0);
        /* A syntax error says where parsing stopped. */
        if (i == 0)
            CU_ASSERT(json_is_integer(json_object_get(
                json_object_get(json_object_get(r->body, "error"), "details"), "column")));
    }
}

static void test_webhook_missing_text(void)
{
    static const char *const bodies[] = {"{\"from\":\"alice\"}", "{\"text\":5}"};

    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct sb_reply *reply;
        const struct recorded_reply *r;

        rec_reset();
        reply = webhook("POST", bodies[i]);
        r = expect_error(reply, 400, "invalid_field");
        CU_ASSERT_PTR_NOT_NULL_FATAL(str_at(json_object_get(r->body, "error"), "details", "field"));
        CU_ASSERT_STRING_EQUAL(str_at(json_object_get(r->body, "error"), "details", "field"),
                               "text");
        CU_ASSERT_EQUAL(rec.n_events, 0);
    }
}

static void test_webhook_bad_delay(void)
{
    static const char *const bodies[] = {"{\"text\":\"x\",\"delay_ms\":-1}",
                                         "{\"text\":\"x\",\"delay_ms\":60001}",
                                         "{\"text\":\"x\",\"delay_ms\":\"10\"}"};

    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct sb_reply *reply;
        const struct recorded_reply *r;

        rec_reset();
        reply = webhook("POST", bodies[i]);
        r = expect_error(reply, 400, "invalid_field");
        CU_ASSERT_PTR_NOT_NULL_FATAL(str_at(json_object_get(r->body, "error"), "details", "field"));
        CU_ASSERT_STRING_EQUAL(str_at(json_object_get(r->body, "error"), "details", "field"),
                               "delay_ms");
        CU_ASSERT_EQUAL(rec.n_timers, 0);
    }
}

static void test_webhook_get(void)
{
    struct sb_reply *reply;

    reply = webhook("GET", NULL);
    expect_error(reply, 405, "method_not_allowed");
    CU_ASSERT_EQUAL(rec.n_events, 0);
}

static void test_webhook_delay(void)
{
    struct sb_reply *reply;
    struct sb_timer *t = &rec.timers[0];
    const struct recorded_reply *r = &rec.replies[0];

    reply = webhook("POST", "{\"text\":\"later\",\"from\":\"bob\",\"delay_ms\":250}");
    CU_ASSERT_EQUAL(rec.n_replies, 0);
    CU_ASSERT_EQUAL(reply->answers, 0);
    CU_ASSERT_EQUAL_FATAL(rec.n_timers, 1);
    CU_ASSERT(t->active);
    CU_ASSERT_EQUAL(t->ms, 250);
    CU_ASSERT_EQUAL(t->repeat, 0);
    CU_ASSERT_PTR_EQUAL(t->inst, &instance);
    CU_ASSERT_EQUAL(plugin.timers, 1);

    /* Fire by hand, as the host loop would after 250 ms. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(t->fn);
    t->active = 0;
    t->fired = 1;
    t->fn(t->arg);

    CU_ASSERT_EQUAL_FATAL(rec.n_replies, 1);
    CU_ASSERT_EQUAL(r->status, 200);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r->body);
    CU_ASSERT_EQUAL(
        json_integer_value(json_object_get(json_object_get(r->body, "echo"), "delay_ms")), 250);
    CU_ASSERT_EQUAL_FATAL(rec.n_events, 1);
    expect_received(0, "bob", "echo: later");
    CU_ASSERT_EQUAL(rec.misuse, 0);
}

static void test_stop_answers_pending(void)
{
    struct sb_reply *reply;
    struct sb_timer *t = &rec.timers[0];

    reply = webhook("POST", "{\"text\":\"never\",\"delay_ms\":60000}");
    CU_ASSERT_EQUAL_FATAL(rec.n_timers, 1);
    CU_ASSERT_EQUAL(rec.n_replies, 0);

    desc->instance_stop(&instance, inst_state);
    inst_running = 0;

    expect_error(reply, 503, "instance_stopped");
    CU_ASSERT(t->cancelled);
    CU_ASSERT_FALSE(t->active);
    CU_ASSERT_FALSE(t->fired);
    CU_ASSERT_EQUAL(reply->answers, 1);
    CU_ASSERT_EQUAL(rec.misuse, 0);
}

static void test_send_echoes(void)
{
    CU_ASSERT_EQUAL(do_send("{\"to\":\"carol\",\"text\":\"hi\"}"), 0);
    CU_ASSERT_EQUAL_FATAL(rec.n_dones, 1);
    CU_ASSERT_EQUAL(rec.dones[0].ok, 1);
    CU_ASSERT_STRING_EQUAL(rec.dones[0].provider_msg_id, "echo-1");
    /* The echo event comes before the completion. */
    CU_ASSERT_EQUAL(rec.dones[0].events_before, 1);
    CU_ASSERT_EQUAL_FATAL(rec.n_events, 1);
    expect_received(0, "carol", "echo: hi");

    /* The counter moves on per send. */
    CU_ASSERT_EQUAL(do_send("{\"to\":\"carol\",\"text\":\"again\"}"), 0);
    CU_ASSERT_EQUAL_FATAL(rec.n_dones, 2);
    CU_ASSERT_STRING_EQUAL(rec.dones[1].provider_msg_id, "echo-2");
}

static void test_send_without_text(void)
{
    CU_ASSERT_EQUAL(do_send("{\"to\":\"carol\"}"), 0);
    CU_ASSERT_EQUAL_FATAL(rec.n_dones, 1);
    CU_ASSERT_EQUAL(rec.dones[0].ok, 0);
    CU_ASSERT_EQUAL(rec.dones[0].retryable, 0);
    CU_ASSERT_STRING_EQUAL(rec.dones[0].error_code, "invalid_message");
    CU_ASSERT_EQUAL(rec.n_events, 0);
}

static void test_webhook_without_from(void)
{
    struct sb_reply *reply;

    reply = webhook("POST", "{\"text\":\"a\"}");
    CU_ASSERT_EQUAL(reply->answers, 1);
    CU_ASSERT_EQUAL_FATAL(rec.n_events, 1);
    /* No "from" in the body: the event still carries the key, as null. */
    CU_ASSERT(json_is_null(json_object_get(rec.events[0].payload, "from")));
    CU_ASSERT_EQUAL(rec.misuse, 0);
}

/* With a token set, only webhooks carrying it in X-Echo-Token are accepted. */
static void test_webhook_token(void)
{
    void *state = NULL;
    json_t *settings = json_pack("{s:s, s:s}", "prefix", "", "token", "s3cret-token");
    CU_ASSERT_EQUAL_FATAL(desc->instance_start(&instance, settings, &state), 0);
    json_decref(settings);
    rec_reset();
    expect_error(webhook_with_header(state, NULL, NULL), 401, "bad_token");
    rec_reset();
    expect_error(webhook_with_header(state, "X-Echo-Token", "s3cret-tokeX"), 401, "bad_token");
    rec_reset();
    expect_error(webhook_with_header(state, "X-Echo-Token", "s3cret-token-longer"), 401,
                 "bad_token");
    rec_reset();
    struct sb_reply *ok = webhook_with_header(state, "x-echo-token", "s3cret-token");
    CU_ASSERT_EQUAL_FATAL(rec.n_replies, 1);
    CU_ASSERT_PTR_EQUAL(rec.replies[0].reply, ok);
    CU_ASSERT_EQUAL(rec.replies[0].status, 200);
    desc->instance_stop(&instance, state);
}

static const struct sb_test tests[] = {
    {"descriptor fields", test_descriptor},
    {"instance_start reports connected", test_instance_start},
    {"webhook happy path", test_webhook_ok},
    {"webhook invalid JSON -> 400 invalid_json", test_webhook_invalid_json},
    {"webhook missing text -> 400 invalid_field", test_webhook_missing_text},
    {"webhook bad delay_ms -> 400 invalid_field", test_webhook_bad_delay},
    {"webhook GET -> 405", test_webhook_get},
    {"webhook delay_ms defers reply to timer", test_webhook_delay},
    {"instance_stop answers pending 503", test_stop_answers_pending},
    {"send echoes back", test_send_echoes},
    {"send without text fails permanently", test_send_without_text},
    {"webhook without from", test_webhook_without_from},
    {"webhook token checked when set", test_webhook_token},
};

int main(void)
{
    static const struct sb_suite suite = {.name = "echo plugin",
                                          SB_TESTS(tests),
                                          .init = suite_init,
                                          .clean = suite_cleanup,
                                          .setup = test_setup,
                                          .teardown = test_teardown};
    return sb_run("test_echo", &suite, 1);
}
