/*
 * Frames from the daemon, by "t". Unknown types are a protocol error, and so
 * is plugin work before init succeeded.
 */
#include "phost.h"

#include <string.h>

static void on_ping(json_t *frame)
{
    json_t *n = json_object_get(frame, "n");
    ph_send_frame(json_pack("{s:s, s:O}", "t", "pong", "n", n ? n : json_null()));
}

static void on_stop(json_t *frame)
{
    ph.stop_asked = 1;
    ph_finish(0);
}

/* Work for the instance: only once it runs. */
static int need_instance(const char *t)
{
    if (ph.inst.running)
        return 1;
    ph_protocol_error("\"%s\" before the instance started", t);
    return 0;
}

static void on_init(json_t *frame)
{
    if (ph.desc || ph.dl) {
        ph_protocol_error("second \"init\"");
        return;
    }
    ph_init(frame);
}

static void on_send(json_t *frame)
{
    if (need_instance("send"))
        ph_send(frame);
}

static void on_webhook(json_t *frame)
{
    if (need_instance("webhook"))
        ph_webhook(frame);
}

/* Answers to what we asked may still arrive after the instance stopped: ignored by id. */
static void on_http_done(json_t *frame)
{
    ph_http_done(frame);
}

static void on_ws_event(json_t *frame)
{
    ph_ws_event(frame);
}

static const struct {
    const char *t;
    void (*fn)(json_t *frame);
} handlers[] = {
    {"ping", on_ping},         {"init", on_init}, {"send", on_send},
    {"webhook", on_webhook},   {"stop", on_stop}, {"http_done", on_http_done},
    {"ws_event", on_ws_event},
};

void ph_handle_frame(json_t *frame)
{
    if (ph.exit_code >= 0)
        return; /* on our way out: what is left in the buffer does not matter */
    const char *t = json_string_value(json_object_get(frame, "t"));
    for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++) {
        if (!strcmp(t, handlers[i].t)) {
            handlers[i].fn(frame);
            return;
        }
    }
    ph_protocol_error("unknown frame type \"%s\"", t);
}
