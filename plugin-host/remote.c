/*
 * HTTP requests and WebSockets the daemon performs for the plugin. Each has
 * an id of ours; a cancelled or closed one is forgotten here at once, so an
 * answer the daemon had already sent finds no one and is dropped.
 */
#include "phost.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The in-process host refuses ws_send past 64 MiB queued; so do we. */
#define WS_SEND_QUEUE_MAX (64u * 1024u * 1024u)

int ph_headers_from_json(const json_t *arr, sb_header **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return -1;
    size_t count = json_array_size(arr);
    if (count == 0)
        return 0;
    sb_header *h = calloc(count, sizeof(*h));
    if (!h)
        return -1;
    for (size_t i = 0; i < count; i++) {
        json_t *pair = json_array_get(arr, i);
        h[i].name = json_string_value(json_array_get(pair, 0));
        h[i].value = json_string_value(json_array_get(pair, 1));
        if (json_array_size(pair) != 2 || !h[i].name || !h[i].value) {
            free(h);
            return -1;
        }
    }
    *out = h;
    *n = count;
    return 0;
}

json_t *ph_headers_to_json(const sb_header *h, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        if (!h[i].name || !h[i].value) {
            json_decref(arr);
            return NULL;
        }
        json_array_append_new(arr, json_pack("[o, o]", ph_text(h[i].name), ph_text(h[i].value)));
    }
    return arr;
}

static json_t *b64_member(const void *data, size_t len)
{
    char *b64 = sbh_b64_encode(data ? data : "", data ? len : 0);
    json_t *s = b64 ? json_string(b64) : NULL;
    free(b64);
    return s;
}

/* Frames may only go out while the daemon listens. */
static int channel_ok(void)
{
    return ph.ipc && ph.exit_code < 0;
}

/* ---- HTTP ---- */

sb_http_call *ph_http_request(sb_plugin *self, sb_instance *inst, const sb_http_request *req,
                              sb_http_done_fn done, void *arg)
{
    if (!req || !req->url || !done || (inst && !inst->running) || !channel_ok())
        return NULL;
    json_t *headers = ph_headers_to_json(req->headers, req->n_headers);
    json_t *body = b64_member(req->body, req->body_len);
    struct sb_http_call *c = calloc(1, sizeof(*c));
    if (!headers || !body || !c) {
        json_decref(headers);
        json_decref(body);
        free(c);
        return NULL;
    }
    c->id = ++ph.next_http_id;
    c->owner = inst ? PH_OWNER_INSTANCE : PH_OWNER_PLUGIN;
    c->done = done;
    c->arg = arg;
    json_t *f =
        json_pack("{s:s, s:I, s:o, s:o, s:o, s:o, s:I}", "t", "http", "id", (json_int_t)c->id,
                  "method", ph_text(req->method ? req->method : "GET"), "url", ph_text(req->url),
                  "headers", headers, "body_b64", body, "timeout_ms", (json_int_t)req->timeout_ms);
    if (!f || sbh_ipc_send_new(ph.ipc, f) < 0) {
        free(c);
        return NULL;
    }
    LIST_INSERT_HEAD(&ph.http, c, link);
    return c;
}

static void http_forget(struct sb_http_call *c)
{
    LIST_REMOVE(c, link);
    free(c);
}

void ph_http_cancel(sb_http_call *c)
{
    if (!c)
        return;
    ph_send_frame(json_pack("{s:s, s:I}", "t", "http_cancel", "id", (json_int_t)c->id));
    http_forget(c);
}

static struct sb_http_call *http_find(json_int_t id)
{
    struct sb_http_call *c;
    LIST_FOREACH (c, &ph.http, link)
        if ((json_int_t)c->id == id)
            return c;
    return NULL;
}

void ph_http_done(json_t *frame)
{
    json_int_t id = 0, status = 0;
    const char *error = NULL, *body64 = NULL;
    json_t *headers = NULL, *err = NULL;
    if (json_unpack(frame, "{s:I, s?I, s?o, s?o, s?s}", "id", &id, "status", &status, "error", &err,
                    "headers", &headers, "body_b64", &body64) < 0) {
        ph_protocol_error("malformed \"http_done\" frame");
        return;
    }
    struct sb_http_call *c = http_find(id);
    if (!c)
        return; /* cancelled: no callback */
    error = json_string_value(err);
    sb_http_response resp = {.status = (int)status, .error = error};
    sb_header *h = NULL;
    unsigned char *body = NULL;
    if (ph_headers_from_json(headers, &h, &resp.n_headers) < 0 ||
        (body64 && sbh_b64_decode(body64, &body, &resp.body_len) < 0)) {
        free(h);
        ph_protocol_error("malformed \"http_done\" headers or body");
        return;
    }
    resp.headers = h;
    resp.body = body;
    if (resp.status == 0 && !resp.error)
        resp.error = "no answer";
    /* Off the list before the callback: the handle ends with it. */
    sb_http_done_fn done = c->done;
    void *arg = c->arg;
    http_forget(c);
    done(arg, &resp);
    free(h);
    free(body);
}

/* ---- WebSocket ---- */

sb_ws *ph_ws_connect(sb_plugin *self, sb_instance *inst, const char *url, const sb_header *headers,
                     size_t n_headers, sb_ws_fn fn, void *arg)
{
    if (!url || !fn || (inst && !inst->running) || !channel_ok())
        return NULL;
    if (strncmp(url, "ws://", 5) != 0 && strncmp(url, "wss://", 6) != 0)
        return NULL;
    json_t *h = ph_headers_to_json(headers, n_headers);
    struct sb_ws *w = h ? calloc(1, sizeof(*w)) : NULL;
    if (!w) {
        json_decref(h);
        return NULL;
    }
    w->id = ++ph.next_ws_id;
    w->owner = inst ? PH_OWNER_INSTANCE : PH_OWNER_PLUGIN;
    w->fn = fn;
    w->arg = arg;
    json_t *f = json_pack("{s:s, s:I, s:o, s:o}", "t", "ws_connect", "id", (json_int_t)w->id, "url",
                          ph_text(url), "headers", h);
    if (!f || sbh_ipc_send_new(ph.ipc, f) < 0) {
        free(w);
        return NULL;
    }
    LIST_INSERT_HEAD(&ph.ws, w, link);
    return w;
}

int ph_ws_send(sb_ws *w, int binary, const void *data, size_t len)
{
    if (!w || (!data && len))
        return SB_EINVAL;
    if (!w->open || w->dead || !channel_ok())
        return SB_EGONE;
    if (sbh_ipc_pending(ph.ipc) > WS_SEND_QUEUE_MAX)
        return SB_ENOMEM;
    json_t *b64 = b64_member(data, len);
    json_t *f = b64 ? json_pack("{s:s, s:I, s:b, s:o}", "t", "ws_send", "id", (json_int_t)w->id,
                                "binary", binary ? 1 : 0, "data_b64", b64)
                    : NULL;
    if (!f)
        return SB_ENOMEM;
    /* Over the frame limit (16 MiB before base64) cannot cross: refused like a full queue. */
    return sbh_ipc_send_new(ph.ipc, f) == 0 ? SB_OK : SB_ENOMEM;
}

static void ws_free(struct sb_ws *w)
{
    LIST_REMOVE(w, link);
    if (w->firing) {
        w->dead = 1;
        return;
    }
    free(w);
}

void ph_ws_close(sb_ws *w, int code, const char *reason)
{
    if (!w || w->dead)
        return;
    char why[124];
    snprintf(why, sizeof(why), "%s", reason ? reason : "");
    ph_send_frame(json_pack("{s:s, s:I, s:i, s:o}", "t", "ws_close", "id", (json_int_t)w->id,
                            "code", code ? code : 1000, "reason", ph_text(why)));
    ws_free(w);
}

static struct sb_ws *ws_find(json_int_t id)
{
    struct sb_ws *w;
    LIST_FOREACH (w, &ph.ws, link)
        if ((json_int_t)w->id == id)
            return w;
    return NULL;
}

static int ws_event_kind(const char *ev, enum sb_ws_event *kind)
{
    static const struct {
        const char *name;
        enum sb_ws_event kind;
    } kinds[] = {{"open", SB_WS_OPEN},
                 {"text", SB_WS_TEXT},
                 {"binary", SB_WS_BINARY},
                 {"closed", SB_WS_CLOSED}};
    for (size_t i = 0; ev && i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        if (!strcmp(ev, kinds[i].name)) {
            *kind = kinds[i].kind;
            return 0;
        }
    }
    return -1;
}

void ph_ws_event(json_t *frame)
{
    json_int_t id = 0, code = 0;
    const char *ev = NULL, *data64 = NULL;
    enum sb_ws_event kind;
    if (json_unpack(frame, "{s:I, s:s, s?s, s?I}", "id", &id, "ev", &ev, "data_b64", &data64,
                    "code", &code) < 0 ||
        ws_event_kind(ev, &kind) < 0) {
        ph_protocol_error("malformed \"ws_event\" frame");
        return;
    }
    struct sb_ws *w = ws_find(id);
    if (!w)
        return; /* closed by the plugin: no further event */
    unsigned char *data = NULL;
    size_t len = 0;
    if (data64 && sbh_b64_decode(data64, &data, &len) < 0) {
        ph_protocol_error("malformed \"ws_event\" data");
        return;
    }
    if (kind == SB_WS_OPEN)
        w->open = 1;
    if (kind == SB_WS_CLOSED) {
        w->open = 0;
        if (!code)
            code = 1006;
    }
    w->firing = 1;
    w->fn(w->arg, kind, data ? data : (const unsigned char *)"", len, (int)code);
    w->firing = 0;
    free(data);
    if (w->dead)
        free(w);
    else if (kind == SB_WS_CLOSED)
        ws_free(w); /* CLOSED ends the handle */
}

/* ---- release ---- */

void ph_remote_release(enum ph_owner owner)
{
    struct sb_http_call *c, *cn;
    for (c = LIST_FIRST(&ph.http); c; c = cn) {
        cn = LIST_NEXT(c, link);
        if (c->owner == owner)
            ph_http_cancel(c);
    }
    struct sb_ws *w, *wn;
    for (w = LIST_FIRST(&ph.ws); w; w = wn) {
        wn = LIST_NEXT(w, link);
        if (w->owner == owner)
            ph_ws_close(w, 1001, "instance stopped");
    }
}
