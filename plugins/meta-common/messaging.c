#include "messaging.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/plugutil.h"
#include "meta.h"

#define MM_DEFAULT_GRAPH "v23.0"
#define MM_MAX_QUICK_REPLIES 13
#define MM_MAX_BUTTONS 3

struct mm_instance;

/* One send: up to two requests (the text, then the attachment). */
struct mm_send {
    struct mm_send *next;
    struct mm_instance *mi;
    sb_http_call *call;
    sb_send_done_fn done;
    void *done_arg;
    json_t *first, *second; /* request bodies; second may be NULL */
    /* An uploaded attachment: the last request goes as this multipart body
     * (its JSON body's members as form fields, plus filedata) instead. */
    struct pu_multipart upload;
    int has_upload;
};

struct mm_instance {
    const struct mm_flavour *fl;
    sb_instance *inst;
    char *page_id, *auth, *app_secret, *verify_token, *version, *api_base;
    json_t *profile; /* messenger_profile body or NULL */
    int auth_failed;
    sb_http_call *probe, *profile_call;
    struct mm_send *sends;
    unsigned long sent, failed, received, skipped, degraded;
};

static const sb_host_services *host;
static sb_plugin *plugin_self;

int mm_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    host = services;
    plugin_self = self;
    if (!pu_services_usable(services, self, "messaging", PU_SERVICES_THROUGH(reply_header)))
        return -1;
    return 0;
}

void mm_shutdown(sb_plugin *self)
{
    host = NULL;
    plugin_self = NULL;
}

/* ---- Graph calls ---- */

/* <method> <api_base>/<version>/me[/<edge>] with a body of type ctype (none when NULL). */
static sb_http_call *graph_call_raw(struct mm_instance *mi, const char *method, const char *edge,
                                    const char *body, size_t len, const char *ctype,
                                    sb_http_done_fn fn, void *arg)
{
    char *url =
        pu_printf("%s/%s/me%s%s", mi->api_base, mi->version, edge ? "/" : "", edge ? edge : "");
    sb_header headers[2] = {{"Authorization", mi->auth}, {"Content-Type", ctype}};
    sb_http_request req = {.method = method,
                           .url = url,
                           .headers = headers,
                           .n_headers = ctype ? 2 : 1,
                           .body = (const unsigned char *)body,
                           .body_len = len};
    sb_http_call *call = NULL;

    if (url)
        call = host->http_request(plugin_self, mi->inst, &req, fn, arg);
    free(url);
    return call;
}

static sb_http_call *graph_call(struct mm_instance *mi, const char *method, const char *edge,
                                const json_t *body, sb_http_done_fn fn, void *arg)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    sb_http_call *call = NULL;

    if (text || !body)
        call = graph_call_raw(mi, method, edge, text, text ? strlen(text) : 0,
                              body ? "application/json" : NULL, fn, arg);
    free(text);
    return call;
}

static void credentials_seen(struct mm_instance *mi, const struct meta_result *r)
{
    if (r->auth_error) {
        mi->auth_failed = 1;
        host->set_state(mi->inst, SB_STATE_ERROR, r->error_message);
    } else if (r->ok && mi->auth_failed) {
        mi->auth_failed = 0;
        host->set_state(mi->inst, SB_STATE_CONNECTED, NULL);
    }
}

/* ---- sending ---- */

static void send_unlink(struct mm_send *s)
{
    struct mm_send **link = &s->mi->sends;

    while (*link && *link != s)
        link = &(*link)->next;
    if (*link)
        *link = s->next;
}

static void send_free(struct mm_send *s)
{
    json_decref(s->first);
    json_decref(s->second);
    if (s->has_upload)
        pu_buf_free(&s->upload.buf);
    free(s);
}

static void on_sent(void *arg, const sb_http_response *resp);

/* Put s->first on the wire: the upload's multipart body when it is the last request. */
static sb_http_call *send_next(struct mm_send *s)
{
    if (s->has_upload && !s->second)
        return graph_call_raw(s->mi, "POST", "messages", s->upload.buf.p, s->upload.buf.len,
                              s->upload.content_type, on_sent, s);
    return graph_call(s->mi, "POST", "messages", s->first, on_sent, s);
}

static void on_sent(void *arg, const sb_http_response *resp)
{
    struct mm_send *s = arg;
    struct meta_result r;
    const char *mid;
    sb_send_result res = {0};

    meta_graph_result(resp, &r);
    credentials_seen(s->mi, &r);
    mid = json_string_value(json_object_get(r.body, "message_id"));
    if (r.ok && mid && s->second) {
        /* The text went out; now the attachment. */
        json_decref(s->first);
        s->first = s->second;
        s->second = NULL;
        s->call = send_next(s);
        if (s->call) {
            json_decref(r.body);
            return;
        }
        res.retryable = 1;
        res.error_code = "internal";
        res.error_message = "could not start the attachment request";
    } else if (r.ok && mid) {
        res.ok = 1;
        res.provider_msg_id = mid;
    } else {
        res.retryable = r.retryable;
        res.retry_after_ms = r.retry_after_ms;
        res.error_code = r.ok ? "bad_answer" : r.error_code;
        res.error_message = r.ok ? "the Send API answered without message_id" : r.error_message;
    }
    send_unlink(s);
    if (res.ok)
        s->mi->sent++;
    else
        s->mi->failed++;
    s->done(s->done_arg, &res);
    json_decref(r.body);
    send_free(s);
}

static json_t *envelope(const json_t *msg, json_t *message)
{
    return json_pack("{s:{s:O},s:s,s:o}", "recipient", "id", json_object_get(msg, "to"),
                     "messaging_type", "RESPONSE", "message", message);
}

static json_t *quick_replies(const json_t *choices)
{
    json_t *out = json_array(), *c;
    size_t i;

    json_array_foreach (choices, i, c) {
        char *title = pu_utf8_cut(json_string_value(json_object_get(c, "title")), 20);
        const char *id = json_string_value(json_object_get(c, "id"));

        json_array_append_new(out, json_pack("{s:s,s:s,s:s}", "content_type", "text", "title",
                                             title, "payload", id && *id ? id : title));
        free(title);
    }
    return out;
}

static const char *attachment_type(const char *mime)
{
    const char *kind = pu_media_kind(mime);

    return strcmp(kind, "document") ? kind : "file";
}

/* 1 when list (space-separated words; NULL means any) holds word. */
static int word_in(const char *list, const char *word)
{
    size_t n = strlen(word);

    if (!list)
        return 1;
    for (const char *p = list; (p = strstr(p, word)); p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return 1;
    return 0;
}

/*
 * A Messenger template (Send API: message.attachment {type: template,
 * payload: {template_type: button|generic|media|..., ...}}), the message's
 * "template" passed through as the payload. The message's text fills a
 * button template that has none, else goes first as its own message;
 * quick_replies ride on the template message.
 */
static json_t *build_template(struct mm_instance *mi, const json_t *msg, json_t **second,
                              const char **why)
{
    json_t *tmpl = json_object_get(msg, "template");
    const char *type = json_string_value(json_object_get(tmpl, "template_type"));
    const char *text = json_string_value(json_object_get(msg, "text"));
    json_t *quick = json_object_get(msg, "quick_replies");
    json_t *payload, *message;

    if (!mi->fl->templates) {
        *why = "this provider sends no templates; use text, buttons or media";
        return NULL;
    }
    if (!json_is_object(tmpl) || !type || !*type) {
        *why = "a Messenger template is a payload with a template_type (button, generic, media, "
               "...); a WhatsApp template name cannot be sent here";
        return NULL;
    }
    if (!word_in(mi->fl->template_types, type)) {
        *why = "Instagram takes generic and button templates only";
        return NULL;
    }
    if (json_object_get(msg, "media")) {
        *why = "send media or a template, not both (a media template carries its own)";
        return NULL;
    }
    if (json_is_array(json_object_get(msg, "buttons"))) {
        *why = "send buttons or a template, not both (put the buttons in the template)";
        return NULL;
    }
    if (json_is_array(quick) && json_array_size(quick) > MM_MAX_QUICK_REPLIES) {
        *why = "at most 13 quick replies";
        return NULL;
    }
    payload = json_deep_copy(tmpl);
    if (!strcmp(type, "button") && text && *text && !json_object_get(payload, "text")) {
        json_object_set_new(payload, "text", json_string(text));
        text = NULL;
    }
    message = json_pack("{s:{s:s,s:o}}", "attachment", "type", "template", "payload", payload);
    if (!message)
        return NULL;
    if (json_is_array(quick))
        json_object_set_new(message, "quick_replies", quick_replies(quick));
    if (text && *text) {
        /* An attachment carries no text: the text first, then the template. */
        *second = envelope(msg, message);
        return envelope(msg, json_pack("{s:s}", "text", text));
    }
    return envelope(msg, message);
}

/*
 * The text of a message whose uploaded media a provider cannot take (the
 * Instagram API with Instagram Login sends media by URL only): the text, the
 * caption, and the note the host's own degradation writes (malloc'd).
 */
static char *media_left_out(const char *text, const char *caption)
{
    static const char note[] = "[an attachment this provider cannot show was left out]";
    int t = text && *text, c = caption && *caption;

    return pu_printf("%s%s%s%s%s", t ? text : "", t ? "\n\n" : "", c ? caption : "", c ? "\n" : "",
                     note);
}

/* The request bodies for one message; NULL with *why when it cannot be sent. */
static json_t *build(struct mm_instance *mi, const json_t *msg, json_t **second, const char **why)
{
    const char *text = json_string_value(json_object_get(msg, "text"));
    json_t *media = json_object_get(msg, "media");
    json_t *choices = json_object_get(msg, "buttons");
    int from_buttons = json_is_array(choices);
    json_t *message = NULL, *attach = NULL;

    *second = NULL;
    if (!from_buttons)
        choices = json_object_get(msg, "quick_replies");
    if (json_object_get(msg, "template"))
        return build_template(mi, msg, second, why);
    if (json_is_array(choices) && json_array_size(choices) > MM_MAX_QUICK_REPLIES) {
        *why = "at most 13 quick replies";
        return NULL;
    }
    if (json_is_object(media)) {
        const char *url = json_string_value(json_object_get(media, "url"));
        const char *caption = json_string_value(json_object_get(media, "caption"));
        const char *type = attachment_type(json_string_value(json_object_get(media, "mime_type")));

        /* Uploaded (Send API with filedata): the payload carries no url. */
        attach = url ? json_pack("{s:{s:s,s:{s:s,s:b}}}", "attachment", "type", type, "payload",
                                 "url", url, "is_reusable", 1)
                     : json_pack("{s:{s:s,s:{s:b}}}", "attachment", "type", type, "payload",
                                 "is_reusable", 1);
        /* An attachment carries no text: caption and text go first, as a text message. */
        if (caption && *caption && !(text && *text))
            text = caption;
    }
    if (json_is_array(choices) && from_buttons && mi->fl->button_template &&
        json_array_size(choices) <= MM_MAX_BUTTONS) {
        json_t *buttons = json_array(), *c;
        size_t i;

        json_array_foreach (choices, i, c) {
            char *title = pu_utf8_cut(json_string_value(json_object_get(c, "title")), 20);
            json_array_append_new(buttons, json_pack("{s:s,s:s,s:O}", "type", "postback", "title",
                                                     title, "payload", json_object_get(c, "id")));
            free(title);
        }
        message = json_pack("{s:{s:s,s:{s:s,s:s,s:o}}}", "attachment", "type", "template",
                            "payload", "template_type", "button", "text",
                            text && *text ? text : " ", "buttons", buttons);
    } else if (text && *text) {
        message = json_pack("{s:s}", "text", text);
        if (json_is_array(choices))
            json_object_set_new(message, "quick_replies", quick_replies(choices));
    }
    if (!message) {
        if (!attach) {
            *why = "nothing to send";
            return NULL;
        }
        if (json_is_array(choices))
            json_object_set_new(attach, "quick_replies", quick_replies(choices));
        return envelope(msg, attach);
    }
    if (attach)
        *second = envelope(msg, attach);
    return envelope(msg, message);
}

/*
 * A provider without uploads gets the message with its data_base64 media
 * replaced by a note in the text (new reference), as the host degrades what
 * a provider cannot show; NULL when there is nothing to change.
 */
static json_t *without_upload(struct mm_instance *mi, const json_t *msg)
{
    json_t *media = json_object_get(msg, "media"), *copy;
    char *text;

    if (mi->fl->uploads || !json_is_object(media) || json_object_get(media, "url") ||
        !json_object_get(media, "data_base64"))
        return NULL;
    copy = json_copy((json_t *)msg);
    text = media_left_out(pu_jstr(msg, "text"), pu_jstr(media, "caption"));
    if (!copy || !text) {
        json_decref(copy);
        free(text);
        return NULL;
    }
    json_object_del(copy, "media");
    json_object_set_new(copy, "text", json_string(text));
    free(text);
    mi->degraded++;
    host->metric_add(plugin_self, mi->inst, "media_degraded", 1);
    host->log(plugin_self, mi->inst, SB_LOG_INFO,
              "media.data_base64 cannot be uploaded to %s: sent as text", mi->fl->name);
    return copy;
}

/*
 * reply_to (Messenger): the Send API's top-level reply_to {mid} (Graph API
 * reference, Page Messages: a parameter beside recipient and message) on the
 * first request, so the first bubble quotes the message. 0, or -1 out of memory.
 */
static int reply_to(struct mm_instance *mi, json_t *first, const json_t *msg)
{
    const char *mid = pu_jstr(msg, "reply_to");

    if (!mi->fl->replies || !mid || !*mid)
        return 0;
    return json_object_set_new(first, "reply_to", json_pack("{s:s}", "mid", mid));
}

/* The multipart body of an uploaded attachment: the last request's members and filedata. */
static int build_upload(struct mm_send *s, const json_t *msg, const char **why)
{
    json_t *media = json_object_get(msg, "media");
    const json_t *last = s->second ? s->second : s->first;

    if (!json_is_object(media) || json_object_get(media, "url") ||
        !json_object_get(media, "data_base64"))
        return 0;
    switch (pu_mp_upload(&s->upload, last, "filedata", media, "upload", why)) {
    case 0:
        s->has_upload = 1;
        return 0;
    case -1:
        return -1;
    default:
        *why = NULL; /* out of memory */
        return -1;
    }
}

int mm_send(sb_instance *inst, void *state, const json_t *msg_in, sb_send_done_fn done,
            void *done_arg)
{
    struct mm_instance *mi = state;
    const char *why = NULL;
    struct mm_send *s = calloc(1, sizeof(*s));
    json_t *degraded = without_upload(mi, msg_in);
    const json_t *msg = degraded ? degraded : msg_in;

    if (!s) {
        json_decref(degraded);
        return -1;
    }
    s->mi = mi;
    s->done = done;
    s->done_arg = done_arg;
    if (!json_is_string(json_object_get(msg, "to")))
        why = "\"to\" must be the recipient's id";
    else if ((s->first = build(mi, msg, &s->second, &why)) &&
             (reply_to(mi, s->first, msg) || build_upload(s, msg, &why))) {
        json_decref(s->first);
        s->first = NULL;
    }
    json_decref(degraded);
    if (!s->first) {
        sb_send_result res = {.error_code = "invalid_message",
                              .error_message = why ? why : "out of memory"};
        send_free(s);
        mi->failed++;
        done(done_arg, &res);
        return 0;
    }
    s->call = send_next(s);
    if (!s->call) {
        send_free(s);
        return -1;
    }
    s->next = mi->sends;
    mi->sends = s;
    return 0;
}

/* ---- inbound ---- */

static void copy_key(json_t *dst, const json_t *src, const char *key)
{
    json_t *v = json_object_get(src, key);

    if (v)
        json_object_set(dst, key, v);
}

static json_t *base_event(const json_t *item, const char *event_id, const char *mid)
{
    json_t *ev = json_pack("{s:s,s:O}", "event_id", event_id, "from",
                           json_object_get(json_object_get(item, "sender"), "id"));

    if (mid)
        json_object_set_new(ev, "message_id", json_string(mid));
    json_object_set(ev, "to", json_object_get(json_object_get(item, "recipient"), "id"));
    copy_key(ev, item, "timestamp");
    return ev;
}

static int emit(struct mm_instance *mi, const char *type, json_t *ev)
{
    if (host->emit_event(mi->inst, type, ev) != SB_OK)
        return -1;
    mi->received++;
    return 0;
}

static int handle_message(struct mm_instance *mi, const json_t *item, const json_t *m)
{
    const char *mid = json_string_value(json_object_get(m, "mid"));
    json_t *qr = json_object_get(m, "quick_reply"), *atts = json_object_get(m, "attachments");
    json_t *reply_to = json_object_get(m, "reply_to"), *ev, *a;
    size_t i;

    if (json_is_true(json_object_get(m, "is_echo"))) {
        mi->skipped++; /* our own message, echoed back */
        return 0;
    }
    if (!mid)
        return 0;
    ev = base_event(item, mid, mid);
    if (json_is_object(qr)) {
        json_object_set_new(ev, "kind", json_string("quick_reply"));
        json_object_set(ev, "id", json_object_get(qr, "payload"));
        copy_key(ev, m, "text");
        if (json_object_get(ev, "text"))
            json_object_set(ev, "title", json_object_get(ev, "text"));
        json_object_del(ev, "text");
        return emit(mi, "interaction", ev);
    }
    json_object_set_new(ev, "text",
                        json_is_string(json_object_get(m, "text"))
                            ? json_incref(json_object_get(m, "text"))
                            : json_string(""));
    if (json_is_true(json_object_get(m, "is_deleted")))
        json_object_set_new(ev, "deleted", json_true());
    if (json_is_object(reply_to)) {
        json_t *story = json_object_get(reply_to, "story");
        if (json_is_string(json_object_get(reply_to, "mid")))
            json_object_set(ev, "reply_to", json_object_get(reply_to, "mid"));
        if (json_is_object(story))
            json_object_set(ev, "story_reply", story); /* Instagram: {id, url} */
    }
    json_array_foreach (atts, i, a) {
        const char *type = json_string_value(json_object_get(a, "type"));
        json_t *url = json_object_get(json_object_get(a, "payload"), "url");

        if (type && !strcmp(type, "story_mention")) {
            json_object_set_new(ev, "story_mention", json_pack("{s:O?}", "url", url));
        } else if (i == 0 && type) {
            json_object_set_new(ev, "media", json_pack("{s:s,s:O?}", "type", type, "url", url));
        }
    }
    if (json_array_size(atts))
        json_object_set(ev, "attachments", atts);
    copy_key(ev, m, "referral");
    return emit(mi, "message.received", ev);
}

static int handle_postback(struct mm_instance *mi, const json_t *item, const json_t *pb)
{
    const char *mid = json_string_value(json_object_get(pb, "mid"));
    char *event_id =
        mid ? pu_strdup(mid)
            : pu_printf("postback:%s:%" JSON_INTEGER_FORMAT,
                        json_string_value(json_object_get(json_object_get(item, "sender"), "id"))
                            ?: "",
                        json_integer_value(json_object_get(item, "timestamp")));
    json_t *ev = base_event(item, event_id ? event_id : "postback", mid);

    free(event_id);
    json_object_set_new(ev, "kind", json_string("postback"));
    json_object_set(ev, "id", json_object_get(pb, "payload"));
    copy_key(ev, pb, "title");
    copy_key(ev, pb, "referral");
    return emit(mi, "interaction", ev);
}

static int emit_status(struct mm_instance *mi, const json_t *item, const char *mid,
                       const char *state)
{
    char *event_id = pu_printf("%s:%s", mid, state);
    json_t *ev = base_event(item, event_id ? event_id : mid, mid);

    free(event_id);
    json_object_set_new(ev, "state", json_string(state));
    return host->emit_event(mi->inst, "message.status", ev) == SB_OK ? 0 : -1;
}

static int handle_item(struct mm_instance *mi, const json_t *item)
{
    json_t *v;
    size_t i;

    if (json_is_object((v = json_object_get(item, "message"))))
        return handle_message(mi, item, v);
    if (json_is_object((v = json_object_get(item, "postback"))))
        return handle_postback(mi, item, v);
    if (json_is_object((v = json_object_get(item, "delivery")))) {
        json_t *mid;
        json_array_foreach (json_object_get(v, "mids"), i, mid)
            if (json_is_string(mid) && emit_status(mi, item, json_string_value(mid), "delivered"))
                return -1;
        return 0;
    }
    if (json_is_object((v = json_object_get(item, "read")))) {
        /* Instagram names the message; Messenger only a watermark (time). */
        const char *mid = json_string_value(json_object_get(v, "mid"));
        return mid ? emit_status(mi, item, mid, "read") : 0;
    }
    if (json_is_object((v = json_object_get(item, "reaction")))) {
        const char *mid = json_string_value(json_object_get(v, "mid"));
        char *event_id = pu_printf("%s:reaction:%s:%s", mid ? mid : "",
                                   json_string_value(json_object_get(v, "action")) ?: "",
                                   json_string_value(json_object_get(v, "reaction")) ?: "");
        json_t *ev = base_event(item, event_id ? event_id : "reaction", NULL);

        free(event_id);
        json_object_set(ev, "reaction", v);
        json_object_set_new(ev, "text", json_string(""));
        return emit(mi, "message.received", ev);
    }
    mi->skipped++;
    return 0;
}

void mm_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply)
{
    struct mm_instance *mi = state;
    json_t *body =
        meta_webhook_front(host, plugin_self, inst, req, reply, mi->app_secret, mi->verify_token);
    json_t *entry, *item;
    const char *object;
    size_t i, j;
    int rc = 0;

    if (!body)
        return;
    object = json_string_value(json_object_get(body, "object"));
    if (!object || strcmp(object, mi->fl->object) != 0) {
        host->log(plugin_self, inst, SB_LOG_WARN, "webhook for object %s ignored",
                  object ? object : "(none)");
        json_decref(body);
        host->reply(reply, 200, "application/json", "{}", 2);
        return;
    }
    json_array_foreach (json_object_get(body, "entry"), i, entry) {
        json_array_foreach (json_object_get(entry, "messaging"), j, item)
            if (rc == 0)
                rc = handle_item(mi, item);
    }
    json_decref(body);
    if (rc != 0) {
        pu_reply_event_rejected(host, reply);
        return;
    }
    host->reply(reply, 200, "application/json", "{}", 2);
}

/* ---- lifecycle ---- */

static void on_probe(void *arg, const sb_http_response *resp)
{
    struct mm_instance *mi = arg;
    struct meta_result r;

    mi->probe = NULL;
    meta_graph_result(resp, &r);
    if (r.ok) {
        const char *id = json_string_value(json_object_get(r.body, "id"));
        if (id && !mi->page_id)
            mi->page_id = pu_strdup(id);
        mi->auth_failed = 0;
        host->set_state(mi->inst, SB_STATE_CONNECTED, NULL);
    } else if (r.auth_error) {
        credentials_seen(mi, &r);
    } else {
        host->set_state(mi->inst, SB_STATE_DISCONNECTED, r.error_message);
    }
    json_decref(r.body);
}

static void on_profile(void *arg, const sb_http_response *resp)
{
    struct mm_instance *mi = arg;
    struct meta_result r;

    mi->profile_call = NULL;
    meta_graph_result(resp, &r);
    credentials_seen(mi, &r);
    if (r.ok)
        host->log(plugin_self, mi->inst, SB_LOG_INFO, "messenger profile set");
    else
        host->log(plugin_self, mi->inst, SB_LOG_WARN, "messenger profile not set: %s",
                  r.error_message);
    json_decref(r.body);
}

static void mi_free(struct mm_instance *mi)
{
    free(mi->page_id);
    free(mi->auth);
    free(mi->app_secret);
    free(mi->verify_token);
    free(mi->version);
    free(mi->api_base);
    json_decref(mi->profile);
    free(mi);
}

int mm_instance_start(const struct mm_flavour *fl, sb_instance *inst, const json_t *settings,
                      void **state)
{
    struct mm_instance *mi = calloc(1, sizeof(*mi));
    const char *token = json_string_value(json_object_get(settings, fl->token_key));
    json_t *menu = json_object_get(settings, "persistent_menu");
    const char *start_payload = json_string_value(json_object_get(settings, "get_started_payload"));

    if (!mi) {
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    mi->fl = fl;
    mi->inst = inst;
    mi->page_id = pu_json_strdup(settings, "page_id", NULL);
    if (!mi->page_id)
        mi->page_id = pu_json_strdup(settings, "ig_account_id", NULL);
    mi->app_secret = pu_json_strdup(settings, "app_secret", NULL);
    mi->verify_token = pu_json_strdup(settings, "verify_token", NULL);
    mi->version = pu_json_strdup(settings, "graph_version", MM_DEFAULT_GRAPH);
    mi->api_base = pu_json_strdup(settings, "api_base", fl->default_base);
    if (mi->api_base)
        for (size_t n = strlen(mi->api_base); n && mi->api_base[n - 1] == '/'; n--)
            mi->api_base[n - 1] = '\0';
    mi->auth = token && *token ? pu_printf("Bearer %s", token) : NULL;
    if (!mi->auth || !mi->app_secret || !mi->version || !mi->api_base) {
        host->set_state(inst, SB_STATE_ERROR, "the access token and app_secret are required");
        mi_free(mi);
        return -1;
    }
    if (fl->profile && (json_is_array(menu) || start_payload)) {
        mi->profile = json_object();
        if (start_payload)
            json_object_set_new(mi->profile, "get_started",
                                json_pack("{s:s}", "payload", start_payload));
        if (json_is_array(menu))
            json_object_set_new(mi->profile, "persistent_menu", json_deep_copy(menu));
    }
    *state = mi;
    host->set_state(inst, SB_STATE_CONNECTING, NULL);
    mi->probe = graph_call(mi, "GET", NULL, NULL, on_probe, mi);
    if (mi->profile)
        mi->profile_call = graph_call(mi, "POST", "messenger_profile", mi->profile, on_profile, mi);
    if (!mi->probe)
        host->set_state(inst, SB_STATE_CONNECTED, NULL);
    return 0;
}

void mm_instance_stop(sb_instance *inst, void *state)
{
    struct mm_instance *mi = state;

    if (mi->probe)
        host->http_cancel(mi->probe);
    if (mi->profile_call)
        host->http_cancel(mi->profile_call);
    while (mi->sends) {
        struct mm_send *s = mi->sends;
        sb_send_result res = {.ok = 0,
                              .retryable = 1,
                              .error_code = "instance_stopped",
                              .error_message = "the instance stopped before the answer came"};

        mi->sends = s->next;
        host->http_cancel(s->call);
        s->done(s->done_arg, &res);
        send_free(s);
    }
    mi_free(mi);
}

json_t *mm_status(sb_instance *inst, void *state)
{
    const struct mm_instance *mi = state;

    return json_pack("{s:s?,s:s,s:I,s:I,s:I,s:I,s:I}", "page_id", mi->page_id, "graph_version",
                     mi->version, "sent", (json_int_t)mi->sent, "failed", (json_int_t)mi->failed,
                     "received", (json_int_t)mi->received, "skipped", (json_int_t)mi->skipped,
                     "media_degraded", (json_int_t)mi->degraded);
}
