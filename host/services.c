/*
 * The host services table handed to plugins. Every resource a plugin opens
 * here is recorded against its generation and instance so the host can take
 * it all back before an instance stops or a generation is unloaded.
 */
#include "runtime.h"

#include "httpc.h"
#include "inbound.h"
#include "kv.h"
#include "log.h"
#include "metrics.h"
#include "ws.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char *const state_names[] = {"stopped",   "connecting",   "qr",
                                          "connected", "disconnected", "error"};

static const char *gen_name(const struct sb_plugin *gen)
{
    return gen && gen->slot ? gen->slot->name : NULL;
}

static void svc_log(sb_plugin *self, sb_instance *inst, enum sb_log_level level, const char *fmt,
                    ...)
{
    va_list ap;
    if (level > SB_LOG_DEBUG)
        level = SB_LOG_DEBUG;
    va_start(ap, fmt);
    sbh_logv(level, "plugin", gen_name(self), inst ? inst->id : NULL, fmt, ap);
    va_end(ap);
}

static const char *svc_instance_id(sb_instance *inst)
{
    return inst ? inst->id : NULL;
}

static void svc_set_state(sb_instance *inst, enum sb_instance_state state, const char *detail)
{
    if (!inst || state > SB_STATE_ERROR)
        return;
    if (inst->conn_state != state)
        sbh_log(SB_LOG_INFO, "instance", inst->slot->name, inst->id, "state %s%s%s",
                state_names[state], detail ? ": " : "", detail ? detail : "");
    inst->conn_state = state;
    free(inst->detail);
    inst->detail = detail ? strdup(detail) : NULL;
}

static int svc_emit_event(sb_instance *inst, const char *type, json_t *payload)
{
    if (!inst || !type || !payload) {
        json_decref(payload);
        return SB_EINVAL;
    }
    struct sbh_registry *reg = inst->slot->reg;
    struct sb_reply *cur = reg->current;
    sbh_metrics_add("switchboard_events_total", "Inbound events emitted by plugins", 1, "provider",
                    inst->slot->name, "instance", inst->id, "type", type, SBH_END);
    if (reg->inbound) {
        json_t *ev = json_pack("{s:s, s:o}", "type", type, "payload", payload);
        if (!ev)
            return SB_ENOMEM;
        /* Emitted while handling a webhook: stored before that webhook is answered. */
        if (cur && cur->inst == inst) {
            if (!cur->events)
                cur->events = json_array();
            json_array_append_new(cur->events, ev);
            return SB_OK;
        }
        sbh_inbound_store(reg->inbound, inst->slot->name, inst->id, json_pack("[o]", ev), NULL,
                          NULL);
        return SB_OK;
    }
    if (reg->sink) {
        reg->sink(reg->sink_arg, inst->slot->name, inst->id, type, payload);
        return SB_OK;
    }
    json_decref(payload);
    return SB_OK;
}

static int svc_reply(sb_reply *reply, int status, const char *content_type, const void *body,
                     size_t len)
{
    if (!reply)
        return SB_EINVAL;
    return sbh_reply_answer(reply, status, content_type, body, len);
}

static void timer_free(struct sb_timer *t)
{
    if (t->detached)
        return; /* cancelled twice inside its callback */
    LIST_REMOVE(t, by_gen);
    if (t->inst)
        LIST_REMOVE(t, by_inst);
    if (t->firing) {
        /* Taken back from inside its own callback: timer_fire frees it. */
        t->cancelled = 1;
        t->detached = 1;
        event_del(t->ev);
        return;
    }
    event_free(t->ev);
    free(t);
}

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
    struct sb_timer *t = arg;
    t->firing = 1;
    t->fn(t->arg);
    t->firing = 0;
    if (t->detached) {
        event_free(t->ev);
        free(t);
    } else if (!t->repeat || t->cancelled) {
        timer_free(t);
    }
}

static sb_timer *svc_timer_start(sb_plugin *self, sb_instance *inst, uint32_t ms, int repeat,
                                 sb_timer_fn fn, void *arg)
{
    if (!self || !fn)
        return NULL;
    struct sb_timer *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    struct event_base *base = self->slot->reg->base;
    t->ev = event_new(base, -1, repeat ? EV_PERSIST : 0, timer_fire, t);
    if (!t->ev) {
        free(t);
        return NULL;
    }
    t->gen = self;
    t->inst = inst;
    t->fn = fn;
    t->arg = arg;
    t->repeat = repeat;
    LIST_INSERT_HEAD(&self->timers, t, by_gen);
    if (inst)
        LIST_INSERT_HEAD(&inst->timers, t, by_inst);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(t->ev, &tv);
    return t;
}

static void svc_timer_cancel(sb_timer *t)
{
    if (!t)
        return;
    timer_free(t);
}

void sbh_timers_cancel_gen(struct sb_plugin *gen)
{
    struct sb_timer *t;
    while ((t = LIST_FIRST(&gen->timers)) != NULL)
        timer_free(t);
}

void sbh_timers_cancel_inst(struct sb_instance *inst)
{
    struct sb_timer *t;
    while ((t = LIST_FIRST(&inst->timers)) != NULL)
        timer_free(t);
}

static sb_http_call *svc_http_request(sb_plugin *self, sb_instance *inst,
                                      const sb_http_request *req, sb_http_done_fn done, void *arg)
{
    if (!self || !self->slot)
        return NULL;
    return sbh_httpc_request(self->slot->reg->httpc, self, inst, req, done, arg);
}

static void svc_http_cancel(sb_http_call *call)
{
    sbh_httpc_cancel(call);
}

static sb_ws *svc_ws_connect(sb_plugin *self, sb_instance *inst, const char *url,
                             const sb_header *headers, size_t n_headers, sb_ws_fn fn, void *arg)
{
    if (!self || !self->slot || !self->slot->reg->wsc)
        return NULL;
    return sbh_ws_connect(self->slot->reg->wsc, self, inst, url, headers, n_headers, fn, arg);
}

static int svc_ws_send(sb_ws *ws, int binary, const void *data, size_t len)
{
    return sbh_ws_send(ws, binary, data, len);
}

static void svc_ws_close(sb_ws *ws, int code, const char *reason)
{
    sbh_ws_close(ws, code, reason);
}

static int svc_kv_get(sb_instance *inst, const char *key, char **value)
{
    if (!inst || !key || !value)
        return SB_EINVAL;
    struct sbh_kv *kv = inst->slot->reg->kv;
    return kv ? sbh_kv_get(kv, inst->id, key, value) : SB_ENOTAVAIL;
}

static int svc_kv_set(sb_instance *inst, const char *key, const char *value)
{
    if (!inst)
        return SB_EINVAL;
    struct sbh_kv *kv = inst->slot->reg->kv;
    return kv ? sbh_kv_set(kv, inst->id, key, value) : SB_ENOTAVAIL;
}

static int valid_metric_name(const char *s)
{
    if (!s || !*s || strlen(s) > 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

static void svc_metric_add(sb_plugin *self, sb_instance *inst, const char *name, double delta)
{
    char full[128];
    if (!self || !valid_metric_name(name))
        return;
    snprintf(full, sizeof(full), "switchboard_plugin_%s_total", name);
    sbh_metrics_add(full, "Counter reported by a plugin", delta, "provider", gen_name(self),
                    "instance", inst ? inst->id : "", SBH_END);
}

static sb_plugin *svc_instance_plugin(sb_instance *inst)
{
    return inst ? inst->gen : NULL;
}

static int svc_reply_header(sb_reply *reply, const char *name, const char *value)
{
    if (!reply || !name || !value)
        return SB_EINVAL;
    if (!reply->req)
        return SB_EGONE;
    /* evhttp refuses CR/LF in either part, which keeps header injection out. */
    return evhttp_add_header(evhttp_request_get_output_headers(reply->req), name, value) == 0
               ? SB_OK
               : SB_EINVAL;
}

/* Offered by switchboard-plugin-host only (see services.h). */
static sb_fd_watch *svc_fd_watch(sb_plugin *self, sb_instance *inst, int fd, int what, sb_fd_fn fn,
                                 void *arg)
{
    (void)self, (void)inst, (void)fd, (void)what, (void)fn, (void)arg;
    return NULL;
}

static void svc_fd_unwatch(sb_fd_watch *watch)
{
    (void)watch;
}

static sb_proc *svc_proc_spawn(sb_plugin *self, sb_instance *inst, const char *const *argv,
                               const char *const *envp, const sb_proc_fd *fds, size_t n_fds,
                               sb_proc_exit_fn exit_fn, void *arg)
{
    (void)self, (void)inst, (void)argv, (void)envp, (void)fds, (void)n_fds, (void)exit_fn,
        (void)arg;
    return NULL;
}

static long svc_proc_pid(sb_proc *proc)
{
    (void)proc;
    return SB_ENOTAVAIL;
}

static int svc_proc_signal(sb_proc *proc, int sig)
{
    (void)proc, (void)sig;
    return SB_ENOTAVAIL;
}

static void svc_proc_release(sb_proc *proc)
{
    (void)proc;
}

static const sb_host_services services = {
    .struct_size = sizeof(sb_host_services),
    .abi_major = SB_ABI_MAJOR,
    .abi_minor = SB_ABI_MINOR,
    .log = svc_log,
    .instance_id = svc_instance_id,
    .set_state = svc_set_state,
    .emit_event = svc_emit_event,
    .reply = svc_reply,
    .timer_start = svc_timer_start,
    .timer_cancel = svc_timer_cancel,
    .http_request = svc_http_request,
    .http_cancel = svc_http_cancel,
    .ws_connect = svc_ws_connect,
    .ws_send = svc_ws_send,
    .ws_close = svc_ws_close,
    .kv_get = svc_kv_get,
    .kv_set = svc_kv_set,
    .metric_add = svc_metric_add,
    .instance_plugin = svc_instance_plugin,
    .reply_header = svc_reply_header,
    .fd_watch = svc_fd_watch,
    .fd_unwatch = svc_fd_unwatch,
    .proc_spawn = svc_proc_spawn,
    .proc_pid = svc_proc_pid,
    .proc_signal = svc_proc_signal,
    .proc_release = svc_proc_release,
};

const sb_host_services *sbh_services(void)
{
    return &services;
}
