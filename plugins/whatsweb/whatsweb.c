/*
 * whatsweb: WhatsApp Web driven in a headless Chromium of the instance's own
 * (DESIGN.md, "Processes"; issue 7). Runs only in a switchboard-plugin-host
 * (SB_CAP_PROCESS_ONLY): Chromium is started with proc_spawn and dies with
 * that process.
 *
 * Chromium: `chromium --headless=new --remote-debugging-pipe
 * --user-data-dir=<_state_dir>/profile ...` (flags in browser_argv()), the
 * DevTools protocol over its fds 3 and 4 (cdp.c). Setup, one command after
 * the other: Browser.getVersion (for the user agent), Target.getTargets and
 * Target.attachToTarget {flatten} on the first page (Target.createTarget when
 * there is none), then on that session Page.enable, Runtime.enable,
 * Runtime.addBinding __sb_emit, Emulation.setUserAgentOverride (the browser's
 * own agent without "Headless", or settings.user_agent),
 * Page.addScriptToEvaluateOnNewDocument with inject.js, Page.navigate url.
 *
 * The page script (inject.js) reports through the binding: QR text and image,
 * authenticated, ready, disconnected, inbound messages, acks. States:
 * connecting while Chromium starts and the page loads, qr (detail: the QR
 * text) while a QR is shown, connected once ready, disconnected when the page
 * logs out or the browser is lost. instance.status events: qr, authenticated,
 * ready, disconnected. Sends evaluate window.__sb.send({...}) (awaitPromise,
 * returnByValue); media by URL is fetched through the host's HTTP client and
 * handed to the page as base64, like data_base64.
 *
 * Supervision: Chromium's exit (proc exit callback), a broken pipe, a crashed
 * page, or no answer to Browser.getVersion (every health_interval_ms) within
 * health_timeout_ms all end that browser (proc_release) and start a new one
 * after 1 s, doubling up to 30 s; the doubling starts over once a browser ran
 * healthy_after_ms. The login lives in the profile directory, so a new
 * browser comes back logged in.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <switchboard/switchboard.h>

#include "../common/plugutil.h"
#include "cdp.h"
#include "inject.h"

#define WW_VERSION "1.0.0"
#define WW_DEFAULT_URL "https://web.whatsapp.com/"
#define WW_DEFAULT_CHROMIUM "chromium"
#define WW_BINDING "__sb_emit"
#define WW_HEALTH_MS 5000u
#define WW_HEALTH_TIMEOUT_MS 10000u
#define WW_BACKOFF_MIN_MS 1000u
#define WW_BACKOFF_MAX_MS 30000u
#define WW_HEALTHY_MS 60000u
#define WW_SEND_TIMEOUT_MS 60000u
#define WW_FETCH_TIMEOUT_MS 30000u
#define WW_MAX_EXTRA_ARGS 64
/* After the pipes break, how long to wait for Chromium's exit status. */
#define WW_EXIT_GRACE_MS 1000u

#define WW_SCHEMA                                                                                  \
    "{\"type\":\"object\",\"properties\":{"                                                        \
    "\"url\":{\"type\":\"string\",\"minLength\":1,"                                                \
    "\"description\":\"WhatsApp Web URL (default https://web.whatsapp.com/)\"},"                   \
    "\"chromium\":{\"type\":\"string\",\"minLength\":1,"                                           \
    "\"description\":\"Chromium binary, searched in PATH (default chromium)\"},"                   \
    "\"extra_args\":{\"type\":\"array\",\"maxItems\":64,\"items\":{\"type\":\"string\"},"          \
    "\"description\":\"more Chromium command-line flags\"},"                                       \
    "\"user_agent\":{\"type\":\"string\",\"minLength\":1,"                                         \
    "\"description\":\"User-Agent of the page (default: Chromium's own without Headless)\"},"      \
    "\"health_interval_ms\":{\"type\":\"integer\",\"minimum\":100,\"maximum\":600000,"             \
    "\"description\":\"how often Chromium is asked for a sign of life (default 5000)\"},"          \
    "\"health_timeout_ms\":{\"type\":\"integer\",\"minimum\":100,\"maximum\":600000,"              \
    "\"description\":\"no answer for this long restarts Chromium (default 10000)\"},"              \
    "\"restart_backoff_ms\":{\"type\":\"integer\",\"minimum\":10,\"maximum\":600000,"              \
    "\"description\":\"first wait before restarting Chromium, doubled each time (default "         \
    "1000)\"},"                                                                                    \
    "\"restart_backoff_max_ms\":{\"type\":\"integer\",\"minimum\":10,\"maximum\":3600000,"         \
    "\"description\":\"longest wait between restarts (default 30000)\"},"                          \
    "\"healthy_after_ms\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":3600000,"                \
    "\"description\":\"a browser up this long resets the restart backoff (default 60000)\"},"      \
    "\"send_timeout_ms\":{\"type\":\"integer\",\"minimum\":100,\"maximum\":600000,"                \
    "\"description\":\"a send the page has not confirmed by then fails, retryable (default "       \
    "60000)\"},"                                                                                   \
    "\"_state_dir\":{\"type\":\"string\","                                                         \
    "\"description\":\"set by switchboard-plugin-host: the instance's state directory\"}"          \
    "},\"additionalProperties\":false}"

enum ww_phase {
    PH_STARTING,     /* Chromium starting, page being set up */
    PH_LOADING,      /* page navigated, neither QR nor chats yet */
    PH_QR,           /* login QR shown */
    PH_AUTH,         /* chat screen up, store hooks not yet */
    PH_READY,        /* logged in and hooked */
    PH_DISCONNECTED, /* logged out, phone gone, or browser lost */
};
static const char *const phase_names[] = {"starting",      "loading", "qr",
                                          "authenticated", "ready",   "disconnected"};

struct ww_instance;

/* One send in progress. */
struct ww_send {
    struct ww_send *next;
    struct ww_instance *wi;
    sb_send_done_fn done;
    void *done_arg;
    json_t *args;        /* window.__sb.send's argument */
    sb_http_call *fetch; /* media by URL */
    sb_timer *timer;     /* send_timeout_ms */
    long cdp_id;         /* > 0 while the page works on it */
};

struct ww_instance {
    sb_instance *inst;
    char *url, *chromium, *user_agent, *profile;
    json_t *extra_args;
    uint32_t health_ms, health_timeout_ms, backoff_min_ms, backoff_max_ms, healthy_ms;
    uint32_t send_timeout_ms;
    /* the browser */
    sb_proc *proc;
    long pid;
    struct ww_cdp *cdp;
    char *session; /* the page's flat session id */
    sb_timer *restart_timer, *health_timer, *stable_timer;
    sb_timer *grace_timer; /* pipes broke, waiting for the exit status */
    char *pipe_why;
    long health_id; /* Browser.getVersion waiting for its answer */
    uint64_t health_sent;
    unsigned attempt;  /* restarts since the browser last ran healthy */
    unsigned restarts; /* browsers started after the first */
    uint64_t browser_started;
    char *last_exit;
    /* the page */
    enum ww_phase phase;
    char *qr_text, *qr_png;
    char qr_at[40];
    unsigned long qr_count;
    long first_qr_ms; /* from browser start to its first QR, -1 before */
    char *me;
    /* sends and counters */
    struct ww_send *sends;
    unsigned long sent, failed, received, acks, emit_refused;
};

static const sb_host_services *host;
static sb_plugin *plugin_self;

static void browser_start(struct ww_instance *wi);
static void browser_lost(struct ww_instance *wi, const char *why);

/* ---- small helpers ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void iso_now(char *out, size_t len)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char date[24];

    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, len, "%s.%03dZ", date, (int)(ts.tv_nsec / 1000000) % 1000);
}

static char *b64_encode(const unsigned char *in, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        *o++ = tab[(v >> 18) & 63];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        *o++ = i + 2 < len ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static void replace_str(char **slot, const char *value)
{
    free(*slot);
    *slot = value ? pu_strdup(value) : NULL;
}

static uint32_t setting_uint(const json_t *settings, const char *key, uint32_t dflt)
{
    json_t *v = json_object_get(settings, key);

    return json_is_integer(v) && json_integer_value(v) >= 0 ? (uint32_t)json_integer_value(v)
                                                            : dflt;
}

static void timer_drop(sb_timer **t)
{
    if (*t) {
        host->timer_cancel(*t);
        *t = NULL;
    }
}

/* An instance.status event: {"status": status, key: value}. */
static void status_event(struct ww_instance *wi, const char *status, const char *key,
                         const char *value)
{
    json_t *ev = json_pack("{s:s}", "status", status);

    if (ev && key && value)
        json_object_set_new(ev, key, json_string(value));
    if (ev && host->emit_event(wi->inst, "instance.status", ev) != SB_OK)
        wi->emit_refused++;
}

/* ---- sends ---- */

static void send_finish(struct ww_send *s, const sb_send_result *res)
{
    struct ww_instance *wi = s->wi;
    struct ww_send **link = &wi->sends;

    while (*link && *link != s)
        link = &(*link)->next;
    if (*link)
        *link = s->next;
    timer_drop(&s->timer);
    if (s->fetch)
        host->http_cancel(s->fetch);
    if (s->cdp_id > 0)
        ww_cdp_cancel(wi->cdp, s->cdp_id);
    if (res->ok)
        wi->sent++;
    else
        wi->failed++;
    s->done(s->done_arg, res);
    json_decref(s->args);
    free(s);
}

static void send_fail(struct ww_send *s, int retryable, const char *code, const char *message)
{
    sb_send_result res = {
        .ok = 0, .retryable = retryable, .error_code = code, .error_message = message};

    send_finish(s, &res);
}

static void on_send_timeout(void *arg)
{
    struct ww_send *s = arg;

    s->timer = NULL;
    send_fail(s, 1, "timeout", "WhatsApp Web did not confirm the message in time");
}

/* The page's answer to window.__sb.send(). */
static void on_send_reply(void *arg, const json_t *result, const json_t *error)
{
    struct ww_send *s = arg;
    json_t *exc = json_object_get(result, "exceptionDetails");
    const char *id;

    s->cdp_id = 0;
    if (error) {
        send_fail(s, 1, "browser_error",
                  json_string_value(json_object_get(error, "message")) ?: "DevTools error");
        return;
    }
    if (exc) {
        const char *why =
            json_string_value(json_object_get(json_object_get(exc, "exception"), "description"));
        char *line = pu_strdup(why ? why : json_string_value(json_object_get(exc, "text")));
        char *nl = line ? strchr(line, '\n') : NULL;

        if (nl)
            *nl = '\0';
        if (line && strstr(line, "not ready"))
            send_fail(s, 1, "not_connected", line);
        else if (line && (strstr(line, "refused") || strstr(line, "no chat")))
            send_fail(s, 0, "whatsapp_refused", line);
        else
            send_fail(s, 1, "page_error", line ? line : "the page failed to send");
        free(line);
        return;
    }
    id = json_string_value(
        json_object_get(json_object_get(json_object_get(result, "result"), "value"), "id"));
    if (!id) {
        send_fail(s, 1, "page_error", "the page gave no message id");
        return;
    }
    sb_send_result ok = {.ok = 1, .provider_msg_id = id};
    send_finish(s, &ok);
}

/* Hand the send to the page. */
static void send_evaluate(struct ww_send *s)
{
    struct ww_instance *wi = s->wi;
    char *args, *expr;

    if (wi->phase != PH_READY || !wi->cdp || !wi->session) {
        char why[96];
        snprintf(why, sizeof(why), "WhatsApp Web is not logged in (%s)", phase_names[wi->phase]);
        send_fail(s, 1, "not_connected", why);
        return;
    }
    args = json_dumps(s->args, JSON_COMPACT);
    expr = args ? pu_printf("window.__sb.send(%s)", args) : NULL;
    free(args);
    if (expr)
        s->cdp_id = ww_cdp_call(
            wi->cdp, wi->session, "Runtime.evaluate",
            json_pack("{s:s,s:b,s:b}", "expression", expr, "awaitPromise", 1, "returnByValue", 1),
            on_send_reply, s);
    free(expr);
    if (s->cdp_id <= 0) {
        s->cdp_id = 0;
        send_fail(s, 1, "browser_error", "cannot talk to Chromium");
    }
}

/* "image/png; charset=x" -> "image/png" (malloc'd). */
static char *bare_mime(const char *ct)
{
    size_t n = ct ? strcspn(ct, "; \t") : 0;
    char *out = n ? malloc(n + 1) : NULL;

    if (out) {
        memcpy(out, ct, n);
        out[n] = '\0';
    }
    return out;
}

static void on_media_fetched(void *arg, const sb_http_response *resp)
{
    struct ww_send *s = arg;
    json_t *media = json_object_get(s->args, "media");
    char *data, *mime;

    s->fetch = NULL;
    if (resp->status < 200 || resp->status >= 300) {
        char why[160];
        snprintf(why, sizeof(why), "fetching media.url: %s%s%d",
                 resp->status ? "" : (resp->error ? resp->error : "no answer"),
                 resp->status ? "HTTP " : " ", resp->status);
        send_fail(s, resp->status == 0 || resp->status >= 500 || resp->status == 429,
                  "media_fetch_failed", why);
        return;
    }
    data = b64_encode(resp->body ? resp->body : (const unsigned char *)"", resp->body_len);
    if (!data) {
        send_fail(s, 1, "out_of_memory", "out of memory");
        return;
    }
    json_object_set_new(media, "data", json_string(data));
    free(data);
    if (!json_string_value(json_object_get(media, "mimetype"))) {
        mime = bare_mime(pu_resp_header(resp, "Content-Type"));
        json_object_set_new(media, "mimetype",
                            json_string(mime ? mime : "application/octet-stream"));
        json_object_set_new(media, "document",
                            json_boolean(!mime || !strcmp(pu_media_kind(mime), "document")));
        free(mime);
    }
    send_evaluate(s);
}

/* The last path segment of a URL, for a file name ("file" when there is none). */
static char *url_basename(const char *url)
{
    const char *start = strstr(url, "://"), *end, *p;

    start = start ? start + 3 : url;
    end = start + strcspn(start, "?#");
    p = end;
    while (p > start && p[-1] != '/')
        p--;
    if (p == start || p == end)
        return pu_strdup("file");
    return pu_printf("%.*s", (int)(end - p), p);
}

static int ww_send(sb_instance *inst, void *state, const json_t *msg, sb_send_done_fn done,
                   void *done_arg)
{
    struct ww_instance *wi = state;
    const char *to = json_string_value(json_object_get(msg, "to"));
    const char *text = json_string_value(json_object_get(msg, "text"));
    const char *reply_to = json_string_value(json_object_get(msg, "reply_to"));
    json_t *media = json_object_get(msg, "media");
    const char *url = json_string_value(json_object_get(media, "url"));
    const char *data = json_string_value(json_object_get(media, "data_base64"));
    const char *why = NULL;
    struct ww_send *s;

    if (!to || !*to)
        why = "\"to\" must be a WhatsApp id (digits, or <digits>@c.us / <id>@g.us)";
    else if (!json_is_object(media) && (!text || !*text))
        why = "a message needs text or media";
    else if (json_is_object(media) && !url && !data)
        why = "media needs url or data_base64";
    if (!why && data) {
        unsigned char *bytes = NULL;
        size_t len = 0;
        if (pu_base64_decode(data, &bytes, &len))
            why = "media.data_base64 is not valid base64";
        free(bytes);
    }
    if (why) {
        sb_send_result res = {.ok = 0, .error_code = "invalid_message", .error_message = why};
        wi->failed++;
        done(done_arg, &res);
        return 0;
    }
    if (!(s = calloc(1, sizeof(*s))))
        return -1;
    s->wi = wi;
    s->done = done;
    s->done_arg = done_arg;
    s->args = json_pack("{s:s,s:s}", "to", to, "text", text ? text : "");
    if (s->args && reply_to)
        json_object_set_new(s->args, "reply_to", json_string(reply_to));
    if (s->args && json_is_object(media)) {
        const char *mime = json_string_value(json_object_get(media, "mime_type"));
        const char *fname = json_string_value(json_object_get(media, "filename"));
        char *base = !fname && url ? url_basename(url) : NULL;
        json_t *m = json_object();

        if (mime) {
            json_object_set_new(m, "mimetype", json_string(mime));
            json_object_set_new(m, "document",
                                json_boolean(!strcmp(pu_media_kind(mime), "document")));
        }
        if (fname || base)
            json_object_set_new(m, "filename", json_string(fname ? fname : base));
        if (data)
            json_object_set_new(m, "data", json_string(data));
        free(base);
        /* The caption is the message's text (README "Message format"). */
        if (!text && json_string_value(json_object_get(media, "caption")))
            json_object_set(s->args, "text", json_object_get(media, "caption"));
        json_object_set_new(s->args, "media", m);
    }
    if (!s->args) {
        free(s);
        return -1;
    }
    s->next = wi->sends;
    wi->sends = s;
    s->timer = host->timer_start(plugin_self, inst, wi->send_timeout_ms, 0, on_send_timeout, s);
    if (json_is_object(media) && !data) {
        sb_http_request req = {.method = "GET", .url = url, .timeout_ms = WW_FETCH_TIMEOUT_MS};
        s->fetch = host->http_request(plugin_self, inst, &req, on_media_fetched, s);
        if (!s->fetch)
            send_fail(s, 0, "invalid_message", "media.url cannot be fetched");
        return 0;
    }
    send_evaluate(s);
    return 0;
}

/* ---- what the page reports ---- */

static void set_phase(struct ww_instance *wi, enum ww_phase ph)
{
    wi->phase = ph;
}

static void page_qr(struct ww_instance *wi, const json_t *ev)
{
    const char *ref = json_string_value(json_object_get(ev, "ref"));
    const char *png = json_string_value(json_object_get(ev, "png"));
    const char *comma = png ? strchr(png, ',') : NULL;
    int changed;

    if (!ref)
        return;
    changed = !wi->qr_text || strcmp(wi->qr_text, ref) != 0;
    replace_str(&wi->qr_text, ref);
    replace_str(&wi->qr_png,
                comma && !strncmp(png, "data:image/png;base64,", 22) ? comma + 1 : NULL);
    iso_now(wi->qr_at, sizeof(wi->qr_at));
    if (!changed && wi->phase == PH_QR)
        return;
    wi->qr_count++;
    if (wi->first_qr_ms < 0) {
        wi->first_qr_ms = (long)(now_ms() - wi->browser_started);
        host->log(plugin_self, wi->inst, SB_LOG_INFO,
                  "login QR shown %ld ms after chromium started", wi->first_qr_ms);
    }
    set_phase(wi, PH_QR);
    host->set_state(wi->inst, SB_STATE_QR, ref);
    status_event(wi, "qr", "qr", ref);
}

static void clear_qr(struct ww_instance *wi)
{
    replace_str(&wi->qr_text, NULL);
    replace_str(&wi->qr_png, NULL);
    wi->qr_at[0] = '\0';
}

static void copy_key(json_t *dst, const char *to, const json_t *src, const char *from)
{
    json_t *v = json_object_get(src, from);

    if (v && !json_is_null(v))
        json_object_set(dst, to, v);
}

static void page_message(struct ww_instance *wi, const json_t *m)
{
    const char *id = json_string_value(json_object_get(m, "id"));
    const char *chat = json_string_value(json_object_get(m, "chat"));
    const char *type = json_string_value(json_object_get(m, "type"));
    const char *body = json_string_value(json_object_get(m, "body"));
    const char *caption = json_string_value(json_object_get(m, "caption"));
    const char *author = json_string_value(json_object_get(m, "author"));
    int group = json_is_true(json_object_get(m, "group"));
    json_t *ev, *sender;

    if (!id || !chat)
        return;
    ev = json_pack("{s:s,s:s,s:s,s:s,s:s}", "event_id", id, "message_id", id, "from", chat, "text",
                   body      ? body
                   : caption ? caption
                             : "",
                   "type", type ? type : "unknown");
    if (!ev)
        return;
    json_object_set_new(ev, "chat",
                        json_pack("{s:s,s:s}", "id", chat, "type", group ? "group" : "private"));
    sender = json_pack("{s:s}", "id", author ? author : chat);
    copy_key(sender, "name", m, "notify_name");
    json_object_set_new(ev, "sender", sender);
    copy_key(ev, "date", m, "t");
    copy_key(ev, "reply_to", m, "quoted");
    if (type && strcmp(type, "chat") != 0) {
        json_t *media = json_pack("{s:s}", "type", type);
        copy_key(media, "mime_type", m, "mimetype");
        copy_key(media, "filename", m, "filename");
        copy_key(media, "size", m, "size");
        copy_key(media, "caption", m, "caption");
        json_object_set_new(ev, "media", media);
    }
    wi->received++;
    if (host->emit_event(wi->inst, "message.received", ev) != SB_OK) {
        wi->emit_refused++;
        host->log(plugin_self, wi->inst, SB_LOG_WARN, "inbound message %s not taken by the host",
                  id);
    }
}

static void page_ack(struct ww_instance *wi, const json_t *ev)
{
    const char *id = json_string_value(json_object_get(ev, "id"));
    json_int_t ack = json_integer_value(json_object_get(ev, "ack"));
    const char *state = ack == -1 ? "failed" : ack == 2 ? "delivered" : ack >= 3 ? "read" : NULL;
    char *event_id;
    json_t *out;

    if (!id || !state)
        return; /* 0 pending, 1 at the server: the send's own result says "sent" */
    event_id = pu_printf("%s:%s", id, state);
    out = json_pack("{s:s?,s:s,s:s}", "event_id", event_id, "message_id", id, "state", state);
    free(event_id);
    if (out && ack == -1)
        json_object_set_new(out, "error", json_string("WhatsApp could not deliver the message"));
    wi->acks++;
    if (out && host->emit_event(wi->inst, "message.status", out) != SB_OK)
        wi->emit_refused++;
}

static void page_event(struct ww_instance *wi, const char *payload)
{
    json_t *ev = json_loads(payload, 0, NULL);
    const char *what = json_string_value(json_object_get(ev, "ev"));

    if (!what) {
        json_decref(ev);
        return;
    }
    if (!strcmp(what, "qr")) {
        page_qr(wi, ev);
    } else if (!strcmp(what, "loaded")) {
        host->log(plugin_self, wi->inst, SB_LOG_DEBUG, "page loaded");
        if (wi->phase == PH_STARTING)
            set_phase(wi, PH_LOADING);
    } else if (!strcmp(what, "authenticated")) {
        clear_qr(wi);
        set_phase(wi, PH_AUTH);
        host->set_state(wi->inst, SB_STATE_CONNECTING, "authenticated");
        status_event(wi, "authenticated", NULL, NULL);
    } else if (!strcmp(what, "ready")) {
        replace_str(&wi->me, json_string_value(json_object_get(ev, "me")));
        set_phase(wi, PH_READY);
        host->set_state(wi->inst, SB_STATE_CONNECTED, NULL);
        status_event(wi, "ready", "me", wi->me);
        host->log(plugin_self, wi->inst, SB_LOG_INFO, "WhatsApp Web ready");
    } else if (!strcmp(what, "disconnected")) {
        const char *reason = json_string_value(json_object_get(ev, "reason"));
        set_phase(wi, PH_DISCONNECTED);
        host->set_state(wi->inst, SB_STATE_DISCONNECTED, reason);
        status_event(wi, "disconnected", "reason", reason);
        host->log(plugin_self, wi->inst, SB_LOG_WARN, "WhatsApp Web disconnected: %s",
                  reason ? reason : "?");
    } else if (!strcmp(what, "message")) {
        page_message(wi, json_object_get(ev, "msg"));
    } else if (!strcmp(what, "ack")) {
        page_ack(wi, ev);
    } else if (!strcmp(what, "error")) {
        host->log(plugin_self, wi->inst, SB_LOG_WARN, "page script: %s: %s",
                  json_string_value(json_object_get(ev, "where")) ?: "?",
                  json_string_value(json_object_get(ev, "message")) ?: "?");
    } else if (!strcmp(what, "state")) {
        host->log(plugin_self, wi->inst, SB_LOG_DEBUG, "WhatsApp socket state %s",
                  json_string_value(json_object_get(ev, "state")) ?: "?");
    }
    json_decref(ev);
}

/* ---- DevTools ---- */

static void on_cdp_event(void *arg, const char *method, const json_t *params, const char *session)
{
    struct ww_instance *wi = arg;

    if (!strcmp(method, "Runtime.bindingCalled")) {
        const char *name = json_string_value(json_object_get(params, "name"));
        const char *payload = json_string_value(json_object_get(params, "payload"));
        if (name && payload && !strcmp(name, WW_BINDING) && session && wi->session &&
            !strcmp(session, wi->session))
            page_event(wi, payload);
    } else if (!strcmp(method, "Inspector.targetCrashed")) {
        browser_lost(wi, "the WhatsApp Web page crashed");
    } else if (!strcmp(method, "Target.detachedFromTarget")) {
        const char *sid = json_string_value(json_object_get(params, "sessionId"));
        if (sid && wi->session && !strcmp(sid, wi->session))
            browser_lost(wi, "the WhatsApp Web page went away");
    }
}

static void on_pipe_grace(void *arg)
{
    struct ww_instance *wi = arg;
    char *why = wi->pipe_why;

    wi->grace_timer = NULL;
    wi->pipe_why = NULL;
    browser_lost(wi, why ? why : "chromium closed its pipes");
    free(why);
}

/*
 * The pipes broke. Chromium is usually exiting: wait a moment for its exit
 * status, which says more, before ending it.
 */
static void on_cdp_closed(void *arg, const char *why)
{
    struct ww_instance *wi = arg;

    if (!wi->proc || wi->grace_timer) {
        browser_lost(wi, why);
        return;
    }
    replace_str(&wi->pipe_why, why);
    ww_cdp_free(wi->cdp);
    wi->cdp = NULL;
    timer_drop(&wi->health_timer);
    wi->health_id = 0;
    wi->grace_timer =
        host->timer_start(plugin_self, wi->inst, WW_EXIT_GRACE_MS, 0, on_pipe_grace, wi);
    if (!wi->grace_timer)
        on_pipe_grace(wi);
}

/* A step of the setup failed: start over with a new browser. */
static int setup_failed(struct ww_instance *wi, const char *step, const json_t *error)
{
    char why[256];

    if (!error)
        return 0;
    snprintf(why, sizeof(why), "DevTools %s failed: %s", step,
             json_string_value(json_object_get(error, "message")) ?: "no result");
    browser_lost(wi, why);
    return 1;
}

static void on_navigated(void *arg, const json_t *result, const json_t *error)
{
    struct ww_instance *wi = arg;
    const char *err = json_string_value(json_object_get(result, "errorText"));

    if (setup_failed(wi, "Page.navigate", error))
        return;
    if (err) {
        char why[256];
        snprintf(why, sizeof(why), "cannot load %s: %s", wi->url, err);
        browser_lost(wi, why);
        return;
    }
    if (wi->phase == PH_STARTING)
        set_phase(wi, PH_LOADING);
}

static void on_step(void *arg, const json_t *result, const json_t *error)
{
    setup_failed(arg, "page setup", error);
}

/* Answers come in order: every hook is in place, load WhatsApp Web. */
static void on_script_added(void *arg, const json_t *result, const json_t *error)
{
    struct ww_instance *wi = arg;

    if (setup_failed(wi, "Page.addScriptToEvaluateOnNewDocument", error))
        return;
    if (ww_cdp_call(wi->cdp, wi->session, "Page.navigate", json_pack("{s:s}", "url", wi->url),
                    on_navigated, wi) < 0)
        browser_lost(wi, "cannot talk to Chromium");
}

/* Attached to the page: hooks, then load WhatsApp Web. */
static void on_attached(void *arg, const json_t *result, const json_t *error)
{
    struct ww_instance *wi = arg;
    const char *sid = json_string_value(json_object_get(result, "sessionId"));
    json_t *ua = NULL;
    int bad = 0;

    if (setup_failed(wi, "Target.attachToTarget", error))
        return;
    if (!sid) {
        browser_lost(wi, "Target.attachToTarget gave no session");
        return;
    }
    replace_str(&wi->session, sid);
    if (wi->user_agent)
        ua = json_pack("{s:s}", "userAgent", wi->user_agent);
    bad |= ww_cdp_call(wi->cdp, sid, "Page.enable", NULL, on_step, wi) < 0;
    bad |= ww_cdp_call(wi->cdp, sid, "Runtime.enable", NULL, on_step, wi) < 0;
    bad |= ww_cdp_call(wi->cdp, sid, "Runtime.addBinding", json_pack("{s:s}", "name", WW_BINDING),
                       on_step, wi) < 0;
    if (ua)
        bad |= ww_cdp_call(wi->cdp, sid, "Emulation.setUserAgentOverride", ua, on_step, wi) < 0;
    bad |= ww_cdp_call(wi->cdp, sid, "Page.addScriptToEvaluateOnNewDocument",
                       json_pack("{s:s}", "source", inject_js), on_script_added, wi) < 0;
    if (bad)
        browser_lost(wi, "cannot talk to Chromium");
}

static void attach(struct ww_instance *wi, const char *target)
{
    if (ww_cdp_call(wi->cdp, NULL, "Target.attachToTarget",
                    json_pack("{s:s,s:b}", "targetId", target, "flatten", 1), on_attached, wi) < 0)
        browser_lost(wi, "cannot talk to Chromium");
}

static void on_created(void *arg, const json_t *result, const json_t *error)
{
    struct ww_instance *wi = arg;
    const char *target = json_string_value(json_object_get(result, "targetId"));

    if (setup_failed(wi, "Target.createTarget", error))
        return;
    if (!target)
        browser_lost(wi, "Target.createTarget gave no target");
    else
        attach(wi, target);
}

/* Use the tab Chromium opened at start; make one when there is none. */
static void on_targets(void *arg, const json_t *result, const json_t *error)
{
    struct ww_instance *wi = arg;
    json_t *t;
    size_t i;

    if (setup_failed(wi, "Target.getTargets", error))
        return;
    json_array_foreach (json_object_get(result, "targetInfos"), i, t) {
        const char *type = json_string_value(json_object_get(t, "type"));
        const char *id = json_string_value(json_object_get(t, "targetId"));
        if (type && id && !strcmp(type, "page")) {
            attach(wi, id);
            return;
        }
    }
    if (ww_cdp_call(wi->cdp, NULL, "Target.createTarget", json_pack("{s:s}", "url", "about:blank"),
                    on_created, wi) < 0)
        browser_lost(wi, "cannot talk to Chromium");
}

/* The browser's own user agent, "HeadlessChrome/" made "Chrome/" (WhatsApp refuses the former). */
static void on_version(void *arg, const json_t *result, const json_t *error)
{
    struct ww_instance *wi = arg;
    const char *ua = json_string_value(json_object_get(result, "userAgent"));
    const char *h;

    if (setup_failed(wi, "Browser.getVersion", error))
        return;
    if (ua && !wi->user_agent && (h = strstr(ua, "HeadlessChrome/")))
        wi->user_agent = pu_printf("%.*s%s", (int)(h - ua), ua, h + strlen("Headless"));
    if (ww_cdp_call(wi->cdp, NULL, "Target.getTargets", NULL, on_targets, wi) < 0)
        browser_lost(wi, "cannot talk to Chromium");
}

/* ---- supervision ---- */

static void on_health_reply(void *arg, const json_t *result, const json_t *error)
{
    struct ww_instance *wi = arg;

    wi->health_id = 0;
}

static void on_health_tick(void *arg)
{
    struct ww_instance *wi = arg;

    if (!wi->cdp)
        return;
    if (wi->health_id > 0) {
        if (now_ms() - wi->health_sent >= wi->health_timeout_ms) {
            char why[96];
            snprintf(why, sizeof(why), "chromium did not answer for %u ms", wi->health_timeout_ms);
            browser_lost(wi, why);
        }
        return;
    }
    wi->health_sent = now_ms();
    wi->health_id = ww_cdp_call(wi->cdp, NULL, "Browser.getVersion", NULL, on_health_reply, wi);
    if (wi->health_id < 0) {
        wi->health_id = 0;
        browser_lost(wi, "cannot talk to Chromium");
    }
}

static void on_stable(void *arg)
{
    struct ww_instance *wi = arg;

    wi->stable_timer = NULL;
    wi->attempt = 0;
}

static void on_proc_exit(void *arg, int status)
{
    struct ww_instance *wi = arg;
    char why[96];

    wi->proc = NULL; /* ended and reaped: nothing to release */
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
        snprintf(why, sizeof(why), "chromium could not be started (%s not found?)", wi->chromium);
    else if (WIFEXITED(status))
        snprintf(why, sizeof(why), "chromium exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(why, sizeof(why), "chromium was killed by signal %d", WTERMSIG(status));
    else
        snprintf(why, sizeof(why), "chromium ended (wait status %d)", status);
    browser_lost(wi, why);
}

/*
 * End the current browser (if any): no callback of it comes afterwards.
 * hard: SIGKILL it now (proc_release). Otherwise (the instance stops) it is
 * asked to close over DevTools and left to the host, which sends SIGTERM and
 * SIGKILL five seconds later: either way Chromium writes its profile out
 * (DOM storage is committed lazily) before it goes.
 */
static void browser_stop(struct ww_instance *wi, int hard)
{
    timer_drop(&wi->health_timer);
    timer_drop(&wi->stable_timer);
    timer_drop(&wi->grace_timer);
    replace_str(&wi->pipe_why, NULL);
    wi->health_id = 0;
    /* Sends the page held are lost with it; the outbox sends them again. */
    for (struct ww_send *s = wi->sends, *next; s; s = next) {
        next = s->next;
        if (s->cdp_id > 0)
            send_fail(s, 1, "browser_restarted", "Chromium went away during the send");
    }
    if (wi->cdp) {
        if (!hard)
            ww_cdp_call(wi->cdp, NULL, "Browser.close", NULL, NULL, NULL);
        ww_cdp_free(wi->cdp);
        wi->cdp = NULL;
    }
    replace_str(&wi->session, NULL);
    if (wi->proc && hard)
        host->proc_release(wi->proc);
    wi->proc = NULL;
    wi->pid = 0;
}

static void on_restart(void *arg)
{
    struct ww_instance *wi = arg;

    wi->restart_timer = NULL;
    wi->restarts++;
    browser_start(wi);
}

/* The browser is gone or unusable: note why, end it, start another later. */
static void browser_lost(struct ww_instance *wi, const char *why)
{
    if (wi->restart_timer)
        return; /* already handled */
    uint32_t delay = pu_backoff_ms(wi->attempt, wi->backoff_min_ms, wi->backoff_max_ms);
    wi->attempt++;
    replace_str(&wi->last_exit, why);
    host->log(plugin_self, wi->inst, SB_LOG_WARN, "%s; restarting chromium in %u ms", why, delay);
    browser_stop(wi, 1);
    if (wi->phase == PH_READY || wi->phase == PH_AUTH)
        status_event(wi, "disconnected", "reason", why);
    set_phase(wi, PH_DISCONNECTED);
    clear_qr(wi);
    host->set_state(wi->inst, SB_STATE_DISCONNECTED, why);
    wi->restart_timer = host->timer_start(plugin_self, wi->inst, delay, 0, on_restart, wi);
}

static const char *const base_flags[] = {
    "--headless=new",       "--remote-debugging-pipe",
    "--no-first-run",       "--no-default-browser-check",
    "--disable-gpu",        "--disable-dev-shm-usage",
    "--disable-extensions", "--mute-audio",
};

/* argv for Chromium (NULL-terminated); free with free_argv. */
static char **browser_argv(struct ww_instance *wi)
{
    size_t nb = sizeof(base_flags) / sizeof(base_flags[0]);
    size_t n = 0, cap = nb + json_array_size(wi->extra_args) + 6;
    char **argv = calloc(cap, sizeof(*argv));
    json_t *a;
    size_t i;

    if (!argv)
        return NULL;
    argv[n++] = pu_strdup(wi->chromium);
    for (i = 0; i < nb; i++)
        argv[n++] = pu_strdup(base_flags[i]);
    argv[n++] = pu_printf("--user-data-dir=%s", wi->profile);
    /* Chromium's sandbox refuses to run as root; only then is it turned off. */
    if (geteuid() == 0)
        argv[n++] = pu_strdup("--no-sandbox");
    json_array_foreach (wi->extra_args, i, a)
        if (json_string_value(a))
            argv[n++] = pu_strdup(json_string_value(a));
    argv[n++] = pu_strdup("about:blank");
    for (i = 0; i < n; i++)
        if (!argv[i]) {
            for (size_t j = 0; j < n; j++)
                free(argv[j]);
            free(argv);
            return NULL;
        }
    return argv;
}

static void free_argv(char **argv)
{
    for (size_t i = 0; argv && argv[i]; i++)
        free(argv[i]);
    free(argv);
}

/* Chromium's profile lock of a browser that was killed (its pid may be reused). */
static void drop_singleton(const char *profile)
{
    static const char *const names[] = {"SingletonLock", "SingletonSocket", "SingletonCookie"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char *p = pu_printf("%s/%s", profile, names[i]);
        if (p)
            unlink(p);
        free(p);
    }
}

static void browser_start(struct ww_instance *wi)
{
    int to[2] = {-1, -1}, from[2] = {-1, -1};
    char **argv = browser_argv(wi);
    sb_proc_fd fds[2];

    set_phase(wi, PH_STARTING);
    wi->first_qr_ms = -1;
    host->set_state(wi->inst, SB_STATE_CONNECTING, "starting chromium");
    drop_singleton(wi->profile);
    if (!argv || pipe2(to, O_CLOEXEC) || pipe2(from, O_CLOEXEC)) {
        free_argv(argv);
        for (int i = 0; i < 2; i++) {
            if (to[i] >= 0)
                close(to[i]);
            if (from[i] >= 0)
                close(from[i]);
        }
        browser_lost(wi, "cannot make the DevTools pipes");
        return;
    }
    fds[0] = (sb_proc_fd){.parent_fd = to[0], .child_fd = 3};
    fds[1] = (sb_proc_fd){.parent_fd = from[1], .child_fd = 4};
    wi->proc = host->proc_spawn(plugin_self, wi->inst, (const char *const *)argv, NULL, fds, 2,
                                on_proc_exit, wi);
    free_argv(argv);
    close(to[0]);
    close(from[1]);
    if (!wi->proc) {
        close(to[1]);
        close(from[0]);
        browser_lost(wi, "chromium could not be started");
        return;
    }
    wi->pid = host->proc_pid(wi->proc);
    wi->browser_started = now_ms();
    host->log(plugin_self, wi->inst, SB_LOG_INFO, "chromium started (pid %ld, profile %s)", wi->pid,
              wi->profile);
    wi->cdp =
        ww_cdp_new(host, plugin_self, wi->inst, from[0], to[1], on_cdp_event, on_cdp_closed, wi);
    if (!wi->cdp) {
        browser_lost(wi, "cannot watch the DevTools pipes");
        return;
    }
    wi->health_timer =
        host->timer_start(plugin_self, wi->inst, wi->health_ms, 1, on_health_tick, wi);
    if (wi->healthy_ms)
        wi->stable_timer =
            host->timer_start(plugin_self, wi->inst, wi->healthy_ms, 0, on_stable, wi);
    if (ww_cdp_call(wi->cdp, NULL, "Browser.getVersion", NULL, on_version, wi) < 0)
        browser_lost(wi, "cannot talk to Chromium");
}

/* ---- lifecycle ---- */

static void wi_free(struct ww_instance *wi)
{
    free(wi->url);
    free(wi->chromium);
    free(wi->user_agent);
    free(wi->profile);
    free(wi->session);
    free(wi->last_exit);
    free(wi->pipe_why);
    free(wi->qr_text);
    free(wi->qr_png);
    free(wi->me);
    json_decref(wi->extra_args);
    free(wi);
}

static int fail_start(sb_instance *inst, struct ww_instance *wi, const char *why)
{
    host->set_state(inst, SB_STATE_ERROR, why);
    host->log(plugin_self, inst, SB_LOG_ERROR, "%s", why);
    wi_free(wi);
    return -1;
}

static int ww_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    struct ww_instance *wi = calloc(1, sizeof(*wi));
    const char *state_dir = json_string_value(json_object_get(settings, "_state_dir"));
    json_t *extra = json_object_get(settings, "extra_args");

    if (!wi) {
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    wi->inst = inst;
    wi->first_qr_ms = -1;
    if (!state_dir || !*state_dir)
        return fail_start(inst, wi,
                          "settings._state_dir is missing: whatsweb runs only in a "
                          "switchboard-plugin-host (isolation \"process\"), which sets it");
    wi->url = pu_json_strdup(settings, "url", WW_DEFAULT_URL);
    wi->chromium = pu_json_strdup(settings, "chromium", WW_DEFAULT_CHROMIUM);
    wi->user_agent = pu_json_strdup(settings, "user_agent", NULL);
    wi->profile = pu_printf("%s/profile", state_dir);
    wi->extra_args = json_is_array(extra) ? json_deep_copy(extra) : json_array();
    wi->health_ms = setting_uint(settings, "health_interval_ms", WW_HEALTH_MS);
    wi->health_timeout_ms = setting_uint(settings, "health_timeout_ms", WW_HEALTH_TIMEOUT_MS);
    wi->backoff_min_ms = setting_uint(settings, "restart_backoff_ms", WW_BACKOFF_MIN_MS);
    wi->backoff_max_ms = setting_uint(settings, "restart_backoff_max_ms", WW_BACKOFF_MAX_MS);
    wi->healthy_ms = setting_uint(settings, "healthy_after_ms", WW_HEALTHY_MS);
    wi->send_timeout_ms = setting_uint(settings, "send_timeout_ms", WW_SEND_TIMEOUT_MS);
    if (!wi->url || !wi->chromium || !wi->profile || !wi->extra_args)
        return fail_start(inst, wi, "out of memory");
    if (json_array_size(wi->extra_args) > WW_MAX_EXTRA_ARGS)
        return fail_start(inst, wi, "settings.extra_args has too many items");
    if (wi->backoff_max_ms < wi->backoff_min_ms)
        wi->backoff_max_ms = wi->backoff_min_ms;
    if (mkdir(wi->profile, 0700) && errno != EEXIST) {
        char why[256];
        snprintf(why, sizeof(why), "cannot create the profile directory: %s", strerror(errno));
        return fail_start(inst, wi, why);
    }
    *state = wi;
    browser_start(wi);
    host->log(plugin_self, inst, SB_LOG_INFO, "whatsweb instance started (%s)", wi->url);
    return 0;
}

static void ww_instance_stop(sb_instance *inst, void *state)
{
    struct ww_instance *wi = state;

    timer_drop(&wi->restart_timer);
    browser_stop(wi, 0);
    while (wi->sends)
        send_fail(wi->sends, 1, "instance_stopped",
                  "the instance stopped before the message went out");
    wi_free(wi);
}

static json_t *ww_status(sb_instance *inst, void *state)
{
    const struct ww_instance *wi = state;
    json_t *qr = json_null(), *browser;

    if (wi->qr_text)
        qr = json_pack("{s:s,s:s?,s:s}", "text", wi->qr_text, "png_b64", wi->qr_png, "updated_at",
                       wi->qr_at);
    browser = json_pack("{s:I,s:b,s:I,s:s?,s:I}", "pid", (json_int_t)wi->pid, "running",
                        wi->proc != NULL, "restarts", (json_int_t)wi->restarts, "last_exit",
                        wi->last_exit, "first_qr_ms", (json_int_t)wi->first_qr_ms);
    return json_pack("{s:s,s:o,s:o,s:s?,s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "phase",
                     phase_names[wi->phase], "qr", qr ? qr : json_null(), "browser",
                     browser ? browser : json_null(), "me", wi->me, "url", wi->url, "profile_dir",
                     wi->profile, "qr_count", (json_int_t)wi->qr_count, "sent",
                     (json_int_t)wi->sent, "failed", (json_int_t)wi->failed, "received",
                     (json_int_t)wi->received, "acks", (json_int_t)wi->acks);
}

static int ww_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    host = services;
    plugin_self = self;
    if (!pu_services_usable(services, self, "whatsweb", PU_SERVICES_THROUGH(proc_release)))
        return -1;
    return 0;
}

static void ww_shutdown(sb_plugin *self)
{
    host = NULL;
    plugin_self = NULL;
}

SWITCHBOARD_PLUGIN_INIT(
        .name = "whatsweb", .version = WW_VERSION,
        .description = "WhatsApp Web in a headless Chromium (QR login, linked device)",
        .capabilities = SB_CAP_MEDIA | SB_CAP_PROCESS_ONLY, .settings_schema = WW_SCHEMA,
        .init = ww_init, .shutdown = ww_shutdown, .instance_start = ww_instance_start,
        .instance_stop = ww_instance_stop, .send = ww_send, .status = ww_status)
