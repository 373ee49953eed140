/*
 * The sb_host_services table of the plugin-host. What the daemon must see
 * (logs, states, events, kv writes, metrics, replies) becomes a frame; the
 * rest is answered here (local.c, remote.c, instance.c hold the state).
 */
#include "phost.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static const char *const state_names[] = {"stopped",   "connecting",   "qr",
                                          "connected", "disconnected", "error"};

void ph_send_frame(json_t *frame)
{
    if (!frame) {
        fprintf(stderr, "switchboard-plugin-host: a frame could not be built (out of memory?)\n");
        return;
    }
    const char *t = json_string_value(json_object_get(frame, "t"));
    /* With the daemon gone, a plugin's last words still reach the journal. */
    if (sbh_ipc_send(ph.ipc, frame) < 0 && t && !strcmp(t, "log"))
        fprintf(stderr, "switchboard-plugin-host: %s\n",
                json_string_value(json_object_get(frame, "msg")));
    json_decref(frame);
}

/* Length of the valid UTF-8 sequence at s, or 0. */
static size_t utf8_seq(const unsigned char *s)
{
    if (s[0] < 0x80)
        return 1;
    size_t n = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (s[0] > 0xf4)
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return n;
}

json_t *ph_text(const char *s)
{
    if (!s)
        return json_null();
    json_t *j = json_string(s);
    if (j)
        return j;
    /* Not UTF-8 (overlongs and surrogates too): keep what is, mark what is not. */
    size_t len = strlen(s);
    char *copy = malloc(len + 1);
    if (!copy)
        return json_null();
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq((const unsigned char *)s + i);
        if (n == 0) {
            copy[o++] = '?';
            i++;
            continue;
        }
        memcpy(copy + o, s + i, n);
        o += n;
        i += n;
    }
    copy[o] = '\0';
    j = json_string(copy);
    if (!j) /* what utf8_seq let through Jansson still refused: plain ASCII then */
        for (size_t i = 0; i < o; i++)
            if ((unsigned char)copy[i] >= 0x80)
                copy[i] = '?';
    if (!j)
        j = json_string(copy);
    free(copy);
    return j ? j : json_null();
}

/* ---- status pushes ---- */

void ph_status_check(void)
{
    gettimeofday(&ph.status_last, NULL);
    if (!ph.inst.running || ph.inst.starting || !ph.desc || !ph.desc->status)
        return;
    json_t *now = ph.desc->status(&ph.inst, ph.inst.state);
    if (json_equal(now, ph.status) || (!now && !ph.status)) {
        json_decref(now);
        return;
    }
    json_decref(ph.status);
    ph.status = now;
    ph_send_frame(json_pack("{s:s, s:O}", "t", "status", "status", now ? now : json_null()));
}

static void on_status_timer(evutil_socket_t fd, short what, void *arg)
{
    ph.status_armed = 0;
    ph_status_check();
}

void ph_status_poke(void)
{
    if (ph.status_armed || !ph.inst.running || !ph.desc || !ph.desc->status || ph.exit_code >= 0)
        return;
    if (!ph.status_ev)
        ph.status_ev = evtimer_new(ph.base, on_status_timer, NULL);
    if (!ph.status_ev)
        return;
    struct timeval now, since, wait = {0, 0}, period = {0, 100000};
    gettimeofday(&now, NULL);
    timersub(&now, &ph.status_last, &since);
    if (timercmp(&since, &period, <))
        timersub(&period, &since, &wait);
    if (evtimer_add(ph.status_ev, &wait) == 0)
        ph.status_armed = 1;
}

/* ---- proxied ---- */

static void svc_log(sb_plugin *self, sb_instance *inst, enum sb_log_level level, const char *fmt,
                    ...)
{
    char msg[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt ? fmt : "", ap);
    va_end(ap);
    if ((unsigned)level > SB_LOG_DEBUG)
        level = SB_LOG_DEBUG;
    ph_send_frame(
        json_pack("{s:s, s:i, s:o}", "t", "log", "level", (int)level, "msg", ph_text(msg)));
}

static const char *svc_instance_id(sb_instance *inst)
{
    return inst ? inst->id : NULL;
}

static void svc_set_state(sb_instance *inst, enum sb_instance_state state, const char *detail)
{
    if (!inst || (unsigned)state > SB_STATE_ERROR)
        return;
    /* The status first: whoever sees the new state (a QR) finds its details. */
    ph_status_check();
    ph_send_frame(json_pack("{s:s, s:s, s:o}", "t", "state", "state", state_names[state], "detail",
                            ph_text(detail)));
}

static int svc_emit_event(sb_instance *inst, const char *type, json_t *payload)
{
    if (!inst || !type || !payload) {
        json_decref(payload);
        return SB_EINVAL;
    }
    if (!inst->running) {
        json_decref(payload);
        return SB_EGONE;
    }
    json_t *f =
        json_pack("{s:s, s:o, s:o}", "t", "event", "type", ph_text(type), "payload", payload);
    if (!f)
        return SB_ENOMEM;
    /* Inside the webhook callback: the daemon stores it before answering that request. */
    struct sb_reply *cur = ph_current_reply();
    if (cur)
        json_object_set_new(f, "webhook", json_integer((json_int_t)cur->id));
    ph_send_frame(f);
    return SB_OK;
}

static int valid_kv(const char *key, const char *value)
{
    /* The daemon's store takes keys up to 128 bytes and values up to 64 KiB. */
    return key && *key && strlen(key) <= 128 && (!value || strlen(value) <= 64 * 1024);
}

static int svc_kv_get(sb_instance *inst, const char *key, char **value)
{
    if (!inst || !key || !value)
        return SB_EINVAL;
    const char *v = json_string_value(json_object_get(ph.kv, key));
    if (!v)
        return SB_ENOTFOUND;
    *value = strdup(v);
    return *value ? SB_OK : SB_ENOMEM;
}

static int svc_kv_set(sb_instance *inst, const char *key, const char *value)
{
    if (!inst || !valid_kv(key, value) || !value)
        return SB_EINVAL;
    json_t *v = json_string(value);
    if (!v)
        return SB_EINVAL; /* not UTF-8, as the daemon's store says */
    json_object_set(ph.kv, key, v);
    ph_send_frame(json_pack("{s:s, s:s, s:o}", "t", "kv_set", "key", key, "value", v));
    return SB_OK;
}

/* The daemon checks the name (one rule, in host/services.c) and drops a bad one. */
static void svc_metric_add(sb_plugin *self, sb_instance *inst, const char *name, double delta)
{
    if (!name)
        return;
    ph_send_frame(json_pack("{s:s, s:s, s:f}", "t", "metric", "name", name, "delta", delta));
}

static sb_plugin *svc_instance_plugin(sb_instance *inst)
{
    return inst ? &ph.plugin : NULL;
}

static const sb_host_services services = {
    .struct_size = sizeof(sb_host_services),
    .abi_major = SB_ABI_MAJOR,
    .abi_minor = SB_ABI_MINOR,
    .log = svc_log,
    .instance_id = svc_instance_id,
    .set_state = svc_set_state,
    .emit_event = svc_emit_event,
    .reply = ph_reply,
    .timer_start = ph_timer_start,
    .timer_cancel = ph_timer_cancel,
    .http_request = ph_http_request,
    .http_cancel = ph_http_cancel,
    .ws_connect = ph_ws_connect,
    .ws_send = ph_ws_send,
    .ws_close = ph_ws_close,
    .kv_get = svc_kv_get,
    .kv_set = svc_kv_set,
    .metric_add = svc_metric_add,
    .instance_plugin = svc_instance_plugin,
    .reply_header = ph_reply_header,
    .fd_watch = ph_fd_watch,
    .fd_unwatch = ph_fd_unwatch,
    .proc_spawn = ph_proc_spawn,
    .proc_pid = ph_proc_pid,
    .proc_signal = ph_proc_signal,
    .proc_release = ph_proc_release,
};

const sb_host_services *ph_services(void)
{
    return &services;
}
