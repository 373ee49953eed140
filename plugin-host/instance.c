/*
 * The plugin and its one instance: load and start on "init", hand it sends
 * and webhooks, and take it all down again in the order the in-process host
 * does (instance_stop, release, fail what it forgot, shutdown, release).
 */
#include "phost.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "desc.h"

static void started_fail(const char *why)
{
    fprintf(stderr, "switchboard-plugin-host: start failed: %s\n", why);
    ph_send_frame(
        json_pack("{s:s, s:i, s:o}", "t", "log", "level", SB_LOG_ERROR, "msg", ph_text(why)));
    ph_send_frame(json_pack("{s:s, s:b, s:o}", "t", "started", "ok", 0, "error", ph_text(why)));
    ph_finish(1);
}

static int load(const char *path, const char *name, char *why, size_t why_len)
{
    ph.dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!ph.dl) {
        snprintf(why, why_len, "dlopen: %s", dlerror());
        return -1;
    }
    sb_plugin_entry_fn entry;
    /* POSIX's blessed way to turn a dlsym result into a function pointer. */
    *(void **)&entry = dlsym(ph.dl, SB_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        snprintf(why, why_len, "no %s symbol", SB_PLUGIN_ENTRY_SYMBOL);
        return -1;
    }
    const sb_plugin_desc *d = entry();
    if (!d) {
        snprintf(why, why_len, "%s returned NULL", SB_PLUGIN_ENTRY_SYMBOL);
        return -1;
    }
    if (sbh_desc_check(d, name, why, why_len) < 0)
        return -1;
    ph.desc = d;
    return 0;
}

static int copy_kv(const json_t *kv, char *why, size_t why_len)
{
    const char *key;
    json_t *val;
    json_object_foreach ((json_t *)kv, key, val) {
        if (!json_is_string(val)) {
            snprintf(why, why_len, "kv member \"%s\" is not a string", key);
            return -1;
        }
        json_object_set(ph.kv, key, val);
    }
    return 0;
}

void ph_init(json_t *frame)
{
    char why[512];
    const char *plugin = NULL, *name = NULL, *id = NULL, *state_dir = NULL;
    json_t *config = NULL, *settings = NULL, *kv = NULL;
    if (json_unpack(frame, "{s:s, s:s, s:s, s:s, s?o, s?o, s?o}", "plugin", &plugin, "name", &name,
                    "instance", &id, "state_dir", &state_dir, "config", &config, "settings",
                    &settings, "kv", &kv) < 0 ||
        (config && !json_is_object(config) && !json_is_null(config)) ||
        (settings && !json_is_object(settings) && !json_is_null(settings)) ||
        (kv && !json_is_object(kv) && !json_is_null(kv))) {
        started_fail("init frame lacks plugin, name, instance or state_dir, or has a "
                     "config, settings or kv that is not an object");
        return;
    }
    ph.name = strdup(name);
    ph.inst.id = strdup(id);
    if (!ph.name || !ph.inst.id) {
        started_fail("out of memory");
        return;
    }
    if (kv && copy_kv(kv, why, sizeof(why)) < 0) {
        started_fail(why);
        return;
    }
    if (load(plugin, name, why, sizeof(why)) < 0) {
        char msg[768];
        snprintf(msg, sizeof(msg), "plugin %s refused: %s", plugin, why);
        started_fail(msg);
        return;
    }
    json_t *empty = json_object();
    int rc =
        ph.desc->init(ph_services(), &ph.plugin, config && json_is_object(config) ? config : empty);
    json_decref(empty);
    if (rc != 0) {
        started_fail("the plugin's init failed");
        return;
    }
    ph.initialised = 1;
    /* The plugin finds its directory in its settings, as PROTOCOL.md promises. */
    json_t *s = settings && json_is_object(settings) ? json_deep_copy(settings) : json_object();
    json_object_set_new(s, "_state_dir", json_string(state_dir));
    ph.inst.running = 1;
    ph.inst.starting = 1;
    rc = ph.desc->instance_start(&ph.inst, s, &ph.inst.state);
    ph.inst.starting = 0;
    json_decref(s);
    if (rc != 0) {
        ph.inst.running = 0;
        /* What it opened before failing is tied to the instance: taken back now. */
        ph_local_release(PH_OWNER_INSTANCE);
        ph_remote_release(PH_OWNER_INSTANCE);
        started_fail("the instance failed to start");
        return;
    }
    ph_send_frame(json_pack("{s:s, s:b}", "t", "started", "ok", 1));
    ph_status_check();
}

/* ---- send ---- */

static void send_done(void *done_arg, const sb_send_result *r)
{
    struct ph_send *s = done_arg;
    if (s->done)
        return; /* a second done() is the plugin's bug; the daemon heard the first */
    s->done = 1;
    json_t *f = json_pack("{s:s, s:I, s:i, s:i, s:I}", "t", "send_done", "id", (json_int_t)s->id,
                          "ok", r && r->ok ? 1 : 0, "retryable", r && r->retryable ? 1 : 0,
                          "retry_after_ms", (json_int_t)(r ? r->retry_after_ms : 0));
    if (f) {
        json_object_set_new(f, "provider_msg_id", ph_text(r ? r->provider_msg_id : NULL));
        json_object_set_new(f, "error_code", ph_text(r ? r->error_code : NULL));
        json_object_set_new(f, "error_message", ph_text(r ? r->error_message : NULL));
    }
    ph_send_frame(f);
    LIST_REMOVE(s, link);
    if (!s->in_call)
        free(s);
}

void ph_send(json_t *frame)
{
    json_t *id = json_object_get(frame, "id");
    json_t *msg = json_object_get(frame, "message");
    if (!json_is_integer(id) || !json_is_object(msg)) {
        ph_protocol_error("\"send\" without an integer id and a message object");
        return;
    }
    json_t *refused = json_pack("{s:s, s:O, s:b}", "t", "send_done", "id", id, "refused", 1);
    struct ph_send *s = ph.desc->send ? calloc(1, sizeof(*s)) : NULL;
    if (!s) {
        ph_send_frame(refused);
        return;
    }
    s->id = (uint64_t)json_integer_value(id);
    s->in_call = 1;
    LIST_INSERT_HEAD(&ph.sends, s, link);
    int rc = ph.desc->send(&ph.inst, ph.inst.state, msg, send_done, s);
    s->in_call = 0;
    if (s->done) {
        json_decref(refused);
        free(s);
        return;
    }
    if (rc != 0) {
        LIST_REMOVE(s, link);
        free(s);
        ph_send_frame(refused);
        return;
    }
    json_decref(refused);
}

/* Sends the plugin forgot when it stopped: the daemon retries them. */
static void fail_sends(void)
{
    static const sb_send_result stopped = {.ok = 0,
                                           .retryable = 1,
                                           .error_code = "instance_stopped",
                                           .error_message = "the instance stopped while sending"};
    struct ph_send *s;
    while ((s = LIST_FIRST(&ph.sends)) != NULL)
        send_done(s, &stopped);
}

/* ---- webhook ---- */

static void reply_free(struct sb_reply *r)
{
    LIST_REMOVE(r, link);
    if (ph.current == r)
        ph.current = NULL;
    json_decref(r->frame);
    json_decref(r->headers);
    free(r->req_headers);
    free(r->body);
    free(r);
}

/* Build the request view; strings stay in the frame, which r keeps. */
static int reply_fill(struct sb_reply *r, json_t *frame)
{
    const char *method = NULL, *url = NULL, *body = NULL;
    json_t *query = NULL, *headers = NULL;
    json_int_t id;
    if (json_unpack(frame, "{s:I, s:s, s?s, s?o, s?o, s?s}", "id", &id, "method", &method, "url",
                    &url, "query", &query, "headers", &headers, "body_b64", &body) < 0)
        return -1;
    if (query && !json_is_string(query) && !json_is_null(query))
        return -1;
    r->id = (uint64_t)id;
    r->req.method = method;
    r->req.url = url ? url : "";
    r->req.query = json_string_value(query);
    if (headers && ph_headers_from_json(headers, &r->req_headers, &r->req.n_headers) < 0)
        return -1;
    r->req.headers = r->req_headers;
    size_t len = 0;
    if (body && sbh_b64_decode(body, &r->body, &len) < 0)
        return -1;
    r->req.body = r->body;
    r->req.body_len = len;
    return 0;
}

static void reply_error(struct sb_reply *r, int status, const char *code, const char *message)
{
    json_t *doc = json_pack("{s:{s:s, s:s, s:{s:s}}}", "error", "code", code, "message", message,
                            "details", "instance", ph.inst.id);
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(doc);
    ph_services()->reply(r, status, NULL, text ? text : "{}", text ? strlen(text) : 2);
    free(text);
}

void ph_webhook(json_t *frame)
{
    struct sb_reply *r = calloc(1, sizeof(*r));
    if (!r) {
        ph_protocol_error("out of memory for a webhook");
        return;
    }
    r->frame = json_incref(frame);
    r->headers = json_array();
    LIST_INSERT_HEAD(&ph.replies, r, link);
    if (reply_fill(r, frame) < 0) {
        reply_free(r);
        ph_protocol_error("malformed \"webhook\" frame");
        return;
    }
    if (!ph.desc->webhook) {
        reply_error(r, 404, "not_found", "this provider takes no webhooks");
        return;
    }
    ph.current = r;
    ph.desc->webhook(&ph.inst, ph.inst.state, &r->req, r);
    /* r may be gone (answered inside): current was cleared with it. */
    ph.current = NULL;
}

/* ---- services the table in services.c points at ---- */

int ph_reply(sb_reply *r, int status, const char *content_type, const void *body, size_t len)
{
    if (!r)
        return SB_EINVAL;
    char *b64 = sbh_b64_encode(body ? body : "", body ? len : 0);
    if (!b64)
        return SB_ENOMEM;
    json_t *f = json_pack("{s:s, s:I, s:i, s:o, s:O, s:s}", "t", "reply", "id", (json_int_t)r->id,
                          "status", status, "content_type", ph_text(content_type), "headers",
                          r->headers, "body_b64", b64);
    free(b64);
    ph_send_frame(f);
    reply_free(r);
    return f ? SB_OK : SB_ENOMEM;
}

int ph_reply_header(sb_reply *r, const char *name, const char *value)
{
    if (!r || !name || !value || !*name)
        return SB_EINVAL;
    /* As evhttp does in-process: no CR/LF, so no header injection. */
    if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n"))
        return SB_EINVAL;
    json_t *pair = json_pack("[o, o]", ph_text(name), ph_text(value));
    return pair && json_array_append_new(r->headers, pair) == 0 ? SB_OK : SB_ENOMEM;
}

struct sb_reply *ph_current_reply(void)
{
    return ph.current;
}

/* ---- teardown ---- */

static void stop_instance(void)
{
    if (!ph.inst.running)
        return;
    ph.desc->instance_stop(&ph.inst, ph.inst.state);
    ph.inst.running = 0;
    ph.inst.state = NULL;
    ph_local_release(PH_OWNER_INSTANCE);
    ph_remote_release(PH_OWNER_INSTANCE);
    fail_sends();
    struct sb_reply *r;
    while ((r = LIST_FIRST(&ph.replies)) != NULL)
        reply_error(r, 503, "instance_stopped", "the instance stopped before answering");
}

void ph_teardown(void)
{
    stop_instance();
    if (ph.initialised) {
        ph.desc->shutdown(&ph.plugin);
        ph.initialised = 0;
    }
    ph_local_release(PH_OWNER_PLUGIN);
    ph_remote_release(PH_OWNER_PLUGIN);
    ph_local_release(PH_OWNER_INSTANCE); /* opened by shutdown for a stopped instance */
    ph_remote_release(PH_OWNER_INSTANCE);
    ph.desc = NULL;
    if (ph.dl)
        dlclose(ph.dl);
    ph.dl = NULL;
}
