/*
 * whatsapp-official: the WhatsApp Business Cloud API (Graph API).
 *
 * Outbound: POST <api_base>/<graph_version>/<phone_number_id>/messages with
 * the access token as a Bearer token: text, image/video/audio/document by
 * link or uploaded first through .../media (multipart), interactive reply
 * buttons (up to 3) or a list (4 to 10 choices), templates passed through
 * from the message's "template" object, reply_to as context.message_id.
 * The answer's messages[0].id (the wamid) is the provider message id.
 * Graph errors are mapped by meta-common (retry / fail / credentials bad).
 *
 * Inbound (<webhook_path>/<instance>): the GET verify handshake and the
 * X-Hub-Signature-256 check (meta-common), then every change with field
 * "messages" for our phone_number_id: messages -> message.received (text,
 * media, location, contacts, reactions, ...) or interaction (button and
 * interactive replies); statuses sent/delivered/read/failed ->
 * message.status with message_id = the wamid and event_id = wamid:status.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <switchboard/switchboard.h>

#include "../common/plugutil.h"
#include "../meta-common/meta.h"

#define WA_VERSION "1.0.0"
#define WA_DEFAULT_BASE "https://graph.facebook.com"
#define WA_DEFAULT_GRAPH "v23.0"
#define WA_MAX_BUTTONS 3
#define WA_MAX_ROWS 10

#define WA_SCHEMA                                                                                  \
    "{\"type\":\"object\",\"properties\":{"                                                        \
    "\"phone_number_id\":{\"type\":\"string\",\"minLength\":1,"                                    \
    "\"description\":\"the business phone number's id\"},"                                         \
    "\"waba_id\":{\"type\":\"string\",\"description\":\"WhatsApp Business Account id\"},"          \
    "\"access_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true},"                   \
    "\"app_secret\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true,"                      \
    "\"description\":\"signs webhooks (X-Hub-Signature-256)\"},"                                   \
    "\"verify_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true,"                    \
    "\"description\":\"hub.verify_token of the webhook subscription\"},"                           \
    "\"graph_version\":{\"type\":\"string\",\"pattern\":\"^v[0-9]+\\\\.[0-9]+$\","                 \
    "\"description\":\"Graph API version (default v23.0)\"},"                                      \
    "\"api_base\":{\"type\":\"string\",\"minLength\":1,"                                           \
    "\"description\":\"Graph API base URL (default https://graph.facebook.com)\"},"                \
    "\"list_button\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":20,"                       \
    "\"description\":\"label of the button that opens a list (default Choose)\"}"                  \
    "},\"required\":[\"phone_number_id\",\"access_token\",\"app_secret\"],"                        \
    "\"additionalProperties\":false}"

struct wa_instance;

/* One send: an optional media upload, then the message. */
struct wa_send {
    struct wa_send *next;
    struct wa_instance *wi;
    sb_http_call *call;
    sb_send_done_fn done;
    void *done_arg;
    json_t *body;       /* the message request */
    json_t *media_slot; /* borrowed from body: gets "id" after the upload */
};

struct wa_instance {
    sb_instance *inst;
    char *phone_id, *waba_id, *token, *auth, *app_secret, *verify_token, *version, *api_base;
    char *list_button;
    int auth_failed;
    struct wa_send *sends;
    sb_http_call *probe;
    unsigned long sent, failed, received, statuses, skipped;
};

static const sb_host_services *host;
static sb_plugin *plugin_self;

/* ---- outbound ---- */

static void send_unlink(struct wa_send *s)
{
    struct wa_send **link = &s->wi->sends;

    while (*link && *link != s)
        link = &(*link)->next;
    if (*link)
        *link = s->next;
}

static void send_free(struct wa_send *s)
{
    json_decref(s->body);
    free(s);
}

static void credentials_seen(struct wa_instance *wi, const struct meta_result *r)
{
    if (r->auth_error) {
        wi->auth_failed = 1;
        host->set_state(wi->inst, SB_STATE_ERROR, r->error_message);
    } else if (r->ok && wi->auth_failed) {
        wi->auth_failed = 0;
        host->set_state(wi->inst, SB_STATE_CONNECTED, NULL);
    }
}

static void send_done(struct wa_send *s, const struct meta_result *r, const char *msg_id)
{
    sb_send_result res = {.ok = r->ok && msg_id,
                          .retryable = r->retryable,
                          .retry_after_ms = r->retry_after_ms,
                          .provider_msg_id = msg_id,
                          .error_code = r->error_code,
                          .error_message = r->error_message};

    if (r->ok && !msg_id) {
        res.error_code = "bad_answer";
        res.error_message = "the Graph API answered without messages[0].id";
        res.retryable = 0;
    }
    if (res.ok)
        s->wi->sent++;
    else
        s->wi->failed++;
    s->done(s->done_arg, &res);
}

static sb_http_call *graph_post(struct wa_instance *wi, const char *edge, const void *body,
                                size_t len, const char *content_type, sb_http_done_fn fn, void *arg)
{
    char *url = pu_printf("%s/%s/%s/%s", wi->api_base, wi->version, wi->phone_id, edge);
    sb_header headers[2] = {{"Content-Type", content_type}, {"Authorization", wi->auth}};
    sb_http_request req = {.method = "POST",
                           .url = url,
                           .headers = headers,
                           .n_headers = 2,
                           .body = body,
                           .body_len = len};
    sb_http_call *call;

    if (!url)
        return NULL;
    call = host->http_request(plugin_self, wi->inst, &req, fn, arg);
    free(url);
    return call;
}

static void on_message_answer(void *arg, const sb_http_response *resp)
{
    struct wa_send *s = arg;
    struct meta_result r;

    send_unlink(s);
    meta_graph_result(resp, &r);
    credentials_seen(s->wi, &r);
    send_done(s, &r,
              json_string_value(
                  json_object_get(json_array_get(json_object_get(r.body, "messages"), 0), "id")));
    json_decref(r.body);
    send_free(s);
}

/* Post s->body to /messages; 0, or -1 when the request could not start. */
static int post_message(struct wa_send *s)
{
    char *text = json_dumps(s->body, JSON_COMPACT);

    if (!text)
        return -1;
    s->call =
        graph_post(s->wi, "messages", text, strlen(text), "application/json", on_message_answer, s);
    free(text);
    return s->call ? 0 : -1;
}

static void on_upload_answer(void *arg, const sb_http_response *resp)
{
    struct wa_send *s = arg;
    struct meta_result r;
    const char *id;

    meta_graph_result(resp, &r);
    credentials_seen(s->wi, &r);
    id = json_string_value(json_object_get(r.body, "id"));
    if (r.ok && id) {
        json_object_set_new(s->media_slot, "id", json_string(id));
        if (post_message(s) == 0) {
            json_decref(r.body);
            return;
        }
        snprintf(r.error_code, sizeof(r.error_code), "internal");
        snprintf(r.error_message, sizeof(r.error_message), "could not start the send");
        r.ok = 0;
        r.retryable = 1;
    } else if (r.ok) {
        r.ok = 0;
        snprintf(r.error_code, sizeof(r.error_code), "bad_answer");
        snprintf(r.error_message, sizeof(r.error_message),
                 "the media upload answered without an id");
    }
    send_unlink(s);
    send_done(s, &r, NULL);
    json_decref(r.body);
    send_free(s);
}

/* POST /media: multipart file + messaging_product + type (the MIME type). */
static int upload_media(struct wa_send *s, const json_t *media, const char **why)
{
    const char *mime = json_string_value(json_object_get(media, "mime_type"));
    const char *filename = json_string_value(json_object_get(media, "filename"));
    unsigned char *data = NULL;
    size_t len = 0;
    struct pu_multipart mp;

    if (pu_base64_decode(json_string_value(json_object_get(media, "data_base64")), &data, &len)) {
        *why = "media.data_base64 is not valid base64";
        return -1;
    }
    pu_mp_init(&mp);
    pu_mp_field(&mp, "messaging_product", "whatsapp");
    pu_mp_field(&mp, "type", mime);
    pu_mp_file(&mp, "file", filename ? filename : "upload", mime, data, len);
    pu_mp_end(&mp);
    free(data);
    s->call = mp.buf.oom ? NULL
                         : graph_post(s->wi, "media", mp.buf.p, mp.buf.len, mp.content_type,
                                      on_upload_answer, s);
    pu_buf_free(&mp.buf);
    return s->call ? 0 : -1;
}

/* {"link"} or {} (filled with "id" after the upload), plus caption and filename. */
static json_t *media_object(const json_t *media, const char *kind, const char *caption)
{
    const char *url = json_string_value(json_object_get(media, "url"));
    const char *filename = json_string_value(json_object_get(media, "filename"));
    json_t *o = json_object();

    if (url)
        json_object_set_new(o, "link", json_string(url));
    if (caption && *caption && strcmp(kind, "audio") != 0)
        json_object_set_new(o, "caption", json_string(caption));
    if (filename && !strcmp(kind, "document"))
        json_object_set_new(o, "filename", json_string(filename));
    return o;
}

static char *caption_of(const json_t *msg, const json_t *media)
{
    const char *text = json_string_value(json_object_get(msg, "text"));
    const char *cap = json_string_value(json_object_get(media, "caption"));

    if (text && *text && cap && *cap)
        return pu_printf("%s\n\n%s", text, cap);
    return pu_strdup(text && *text ? text : cap ? cap : "");
}

/* Interactive buttons (<= 3) or a list (<= 10); NULL with *why on failure. */
static json_t *interactive_of(struct wa_instance *wi, const json_t *msg, const json_t *choices,
                              const char **why)
{
    const char *text = json_string_value(json_object_get(msg, "text"));
    size_t n = json_array_size(choices), i;
    json_t *c, *items = json_array(), *inter;
    int list = n > WA_MAX_BUTTONS;

    if (n > WA_MAX_ROWS) {
        json_decref(items);
        *why = "WhatsApp shows at most 10 choices (an interactive list)";
        return NULL;
    }
    json_array_foreach (choices, i, c) {
        char *title = pu_utf8_cut(json_string_value(json_object_get(c, "title")), list ? 24 : 20);
        const char *id = json_string_value(json_object_get(c, "id"));

        if (list)
            json_array_append_new(items, json_pack("{s:s,s:s}", "id", id, "title", title));
        else
            json_array_append_new(items, json_pack("{s:s,s:{s:s,s:s}}", "type", "reply", "reply",
                                                   "id", id, "title", title));
        free(title);
    }
    inter = json_pack("{s:s,s:{s:s}}", "type", list ? "list" : "button", "body", "text",
                      text && *text ? text : "\u2063");
    if (list)
        json_object_set_new(
            inter, "action",
            json_pack("{s:s,s:[{s:o}]}", "button", wi->list_button, "sections", "rows", items));
    else
        json_object_set_new(inter, "action", json_pack("{s:o}", "buttons", items));
    return inter;
}

/* Build the /messages body; NULL with *why (permanent) on a message we cannot send. */
static json_t *build_message(struct wa_instance *wi, const json_t *msg, json_t **media_slot,
                             const char **why)
{
    const char *reply_to = json_string_value(json_object_get(msg, "reply_to"));
    json_t *tmpl = json_object_get(msg, "template");
    json_t *media = json_object_get(msg, "media");
    json_t *choices = json_object_get(msg, "buttons");
    json_t *body = json_pack("{s:s,s:s,s:O}", "messaging_product", "whatsapp", "recipient_type",
                             "individual", "to", json_object_get(msg, "to"));

    *media_slot = NULL;
    if (!json_is_array(choices))
        choices = json_object_get(msg, "quick_replies");
    if (reply_to)
        json_object_set_new(body, "context", json_pack("{s:s}", "message_id", reply_to));
    if (json_is_object(tmpl)) {
        json_object_set_new(body, "type", json_string("template"));
        json_object_set_new(body, "template", json_deep_copy(tmpl));
    } else if (json_is_array(choices)) {
        json_t *inter = interactive_of(wi, msg, choices, why);

        if (!inter) {
            json_decref(body);
            return NULL;
        }
        if (json_is_object(media)) {
            const char *kind =
                pu_media_kind(json_string_value(json_object_get(media, "mime_type")));
            if (!strcmp(kind, "audio")) {
                json_decref(inter);
                json_decref(body);
                *why = "an interactive message cannot carry audio";
                return NULL;
            }
            *media_slot = media_object(media, kind, NULL);
            json_object_set_new(inter, "header",
                                json_pack("{s:s,s:o}", "type", kind, kind, *media_slot));
        }
        json_object_set_new(body, "type", json_string("interactive"));
        json_object_set_new(body, "interactive", inter);
    } else if (json_is_object(media)) {
        const char *kind = pu_media_kind(json_string_value(json_object_get(media, "mime_type")));
        char *caption = caption_of(msg, media);

        *media_slot = media_object(media, kind, caption);
        free(caption);
        json_object_set_new(body, "type", json_string(kind));
        json_object_set_new(body, kind, *media_slot);
    } else {
        json_object_set_new(body, "type", json_string("text"));
        json_object_set_new(
            body, "text",
            json_pack("{s:O,s:b}", "body", json_object_get(msg, "text"), "preview_url", 0));
    }
    /* Only an upload needs the slot afterwards. */
    if (!(json_is_object(media) && json_object_get(media, "data_base64")))
        *media_slot = NULL;
    return body;
}

static int wa_send(sb_instance *inst, void *state, const json_t *msg, sb_send_done_fn done,
                   void *done_arg)
{
    struct wa_instance *wi = state;
    struct wa_send *s;
    const char *why = NULL;
    int rc;

    if (!json_is_string(json_object_get(msg, "to"))) {
        sb_send_result res = {.error_code = "invalid_message",
                              .error_message = "\"to\" is required"};
        done(done_arg, &res);
        return 0;
    }
    s = calloc(1, sizeof(*s));
    if (!s)
        return -1;
    s->wi = wi;
    s->done = done;
    s->done_arg = done_arg;
    s->body = build_message(wi, msg, &s->media_slot, &why);
    if (!s->body) {
        sb_send_result res = {.error_code = "invalid_message",
                              .error_message = why ? why : "out of memory"};
        free(s);
        wi->failed++;
        done(done_arg, &res);
        return 0;
    }
    rc = s->media_slot ? upload_media(s, json_object_get(msg, "media"), &why) : post_message(s);
    if (rc != 0) {
        json_decref(s->body);
        free(s);
        if (why) {
            sb_send_result res = {.error_code = "invalid_message", .error_message = why};
            wi->failed++;
            done(done_arg, &res);
            return 0;
        }
        return -1;
    }
    s->next = wi->sends;
    wi->sends = s;
    return 0;
}

/* ---- inbound ---- */

static void copy_key(json_t *dst, const json_t *src, const char *key)
{
    json_t *v = json_object_get(src, key);

    if (v)
        json_object_set(dst, key, v);
}

static const char *contact_name(const json_t *value, const char *wa_id)
{
    size_t i;
    json_t *c;

    json_array_foreach (json_object_get(value, "contacts"), i, c) {
        const char *id = json_string_value(json_object_get(c, "wa_id"));
        if (id && wa_id && !strcmp(id, wa_id))
            return json_string_value(json_object_get(json_object_get(c, "profile"), "name"));
    }
    return NULL;
}

static json_t *media_event(const json_t *m, const char *type)
{
    json_t *f = json_object_get(m, type), *out = json_pack("{s:s}", "type", type);

    copy_key(out, f, "id");
    copy_key(out, f, "mime_type");
    copy_key(out, f, "sha256");
    copy_key(out, f, "caption");
    copy_key(out, f, "filename");
    copy_key(out, f, "animated");
    copy_key(out, f, "voice");
    return out;
}

/* One messages[] item -> (type, payload); payload is new. */
static json_t *message_event(const json_t *value, const json_t *m, const char **type)
{
    static const char *const media_types[] = {"image",    "video",   "audio",
                                              "document", "sticker", NULL};
    const char *mtype = json_string_value(json_object_get(m, "type"));
    const char *from = json_string_value(json_object_get(m, "from"));
    const char *name = contact_name(value, from);
    json_t *ctx = json_object_get(m, "context"), *ev = json_object();

    *type = "message.received";
    /* The wamid is both the message id and, being unique, the event id. */
    json_object_set(ev, "event_id", json_object_get(m, "id"));
    json_object_set(ev, "message_id", json_object_get(m, "id"));
    json_object_set_new(ev, "from", json_string(from ? from : ""));
    if (name)
        json_object_set_new(ev, "name", json_string(name));
    copy_key(ev, m, "timestamp");
    json_object_set_new(ev, "type", json_string(mtype ? mtype : "unknown"));
    if (json_is_string(json_object_get(ctx, "id")))
        json_object_set(ev, "reply_to", json_object_get(ctx, "id"));
    if (json_is_object(ctx) && json_object_get(ctx, "referred_product"))
        copy_key(ev, ctx, "referred_product");
    copy_key(ev, m, "referral");
    if (!mtype) {
        json_object_set_new(ev, "text", json_string(""));
        return ev;
    }
    if (!strcmp(mtype, "text")) {
        json_object_set(ev, "text", json_object_get(json_object_get(m, "text"), "body"));
        return ev;
    }
    for (size_t i = 0; media_types[i]; i++)
        if (!strcmp(mtype, media_types[i])) {
            json_t *caption = json_object_get(json_object_get(m, mtype), "caption");
            json_object_set_new(ev, "media", media_event(m, mtype));
            json_object_set_new(ev, "text",
                                json_is_string(caption) ? json_incref(caption) : json_string(""));
            return ev;
        }
    if (!strcmp(mtype, "button")) {
        /* A template's quick-reply button: payload is the id we gave it. */
        json_t *b = json_object_get(m, "button");
        *type = "interaction";
        json_object_set_new(ev, "kind", json_string("button"));
        json_object_set(ev, "id", json_object_get(b, "payload"));
        json_object_set(ev, "title", json_object_get(b, "text"));
        return ev;
    }
    if (!strcmp(mtype, "interactive")) {
        json_t *in = json_object_get(m, "interactive");
        const char *itype = json_string_value(json_object_get(in, "type"));
        json_t *reply = itype ? json_object_get(in, itype) : NULL;

        if (itype && (!strcmp(itype, "button_reply") || !strcmp(itype, "list_reply"))) {
            *type = "interaction";
            json_object_set_new(ev, "kind",
                                json_string(!strcmp(itype, "list_reply") ? "list" : "button"));
            copy_key(ev, reply, "id");
            copy_key(ev, reply, "title");
            copy_key(ev, reply, "description");
            return ev;
        }
        json_object_set(ev, "interactive", in);
        json_object_set_new(ev, "text", json_string(""));
        return ev;
    }
    /* location, contacts, reaction, order, system, unsupported: carried as they are. */
    json_object_set_new(ev, "text", json_string(""));
    if (json_object_get(m, mtype))
        copy_key(ev, m, mtype);
    copy_key(ev, m, "errors");
    if (!strcmp(mtype, "location")) {
        json_t *loc = json_object_get(m, "location");
        const char *lname = json_string_value(json_object_get(loc, "name"));
        if (lname)
            json_object_set_new(ev, "text", json_string(lname));
    } else if (!strcmp(mtype, "system")) {
        copy_key(ev, json_object_get(m, "system"), "body");
        json_object_set(ev, "text", json_object_get(json_object_get(m, "system"), "body"));
    }
    return ev;
}

static json_t *status_event(const json_t *st)
{
    const char *id = json_string_value(json_object_get(st, "id"));
    const char *status = json_string_value(json_object_get(st, "status"));
    char *event_id = pu_printf("%s:%s", id ? id : "", status ? status : "");
    json_t *ev =
        json_pack("{s:s?,s:s?,s:s?}", "event_id", event_id, "message_id", id, "state", status);
    json_t *err = json_array_get(json_object_get(st, "errors"), 0);

    free(event_id);
    copy_key(ev, st, "timestamp");
    copy_key(ev, st, "recipient_id");
    copy_key(ev, st, "conversation");
    copy_key(ev, st, "pricing");
    copy_key(ev, st, "errors");
    if (json_is_object(err)) {
        const char *title = json_string_value(json_object_get(err, "title"));
        const char *msg = json_string_value(json_object_get(err, "message"));
        const char *details =
            json_string_value(json_object_get(json_object_get(err, "error_data"), "details"));
        char *reason = pu_printf("%s (code %" JSON_INTEGER_FORMAT ")%s%s",
                                 details ? details
                                 : msg   ? msg
                                 : title ? title
                                         : "failed",
                                 json_integer_value(json_object_get(err, "code")),
                                 title && details ? ": " : "", title && details ? title : "");
        if (reason)
            json_object_set_new(ev, "error", json_string(reason));
        free(reason);
    }
    return ev;
}

/* Emit everything in one change's value; -1 when the host refused an event. */
static int handle_value(struct wa_instance *wi, const json_t *value)
{
    const char *pid =
        json_string_value(json_object_get(json_object_get(value, "metadata"), "phone_number_id"));
    json_t *m;
    size_t i;

    if (pid && strcmp(pid, wi->phone_id) != 0) {
        wi->skipped++;
        host->log(plugin_self, wi->inst, SB_LOG_DEBUG,
                  "change for phone number %s, not this instance's: skipped", pid);
        return 0;
    }
    json_array_foreach (json_object_get(value, "messages"), i, m) {
        const char *type;
        json_t *ev = message_event(value, m, &type);

        if (host->emit_event(wi->inst, type, ev) != SB_OK)
            return -1;
        wi->received++;
    }
    json_array_foreach (json_object_get(value, "statuses"), i, m) {
        if (host->emit_event(wi->inst, "message.status", status_event(m)) != SB_OK)
            return -1;
        wi->statuses++;
    }
    json_array_foreach (json_object_get(value, "errors"), i, m)
        host->log(plugin_self, wi->inst, SB_LOG_WARN,
                  "WhatsApp reported error %" JSON_INTEGER_FORMAT ": %s",
                  json_integer_value(json_object_get(m, "code")),
                  json_string_value(json_object_get(m, "title")) ?: "");
    return 0;
}

static void wa_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply)
{
    struct wa_instance *wi = state;
    json_t *body =
        meta_webhook_front(host, plugin_self, inst, req, reply, wi->app_secret, wi->verify_token);
    json_t *entry, *change;
    size_t i, j;
    int rc = 0;

    if (!body)
        return;
    json_array_foreach (json_object_get(body, "entry"), i, entry) {
        json_array_foreach (json_object_get(entry, "changes"), j, change) {
            const char *field = json_string_value(json_object_get(change, "field"));

            if (field && !strcmp(field, "messages") && rc == 0)
                rc = handle_value(wi, json_object_get(change, "value"));
        }
    }
    json_decref(body);
    if (rc != 0) {
        pu_reply_event_rejected(host, reply);
        return;
    }
    host->reply(reply, 200, "application/json", "{}", 2);
}

/* ---- lifecycle ---- */

/* GET /<version>/<phone_number_id>: the token works (connected) or not (error). */
static void on_probe(void *arg, const sb_http_response *resp)
{
    struct wa_instance *wi = arg;
    struct meta_result r;

    wi->probe = NULL;
    meta_graph_result(resp, &r);
    if (r.ok) {
        wi->auth_failed = 0;
        host->set_state(wi->inst, SB_STATE_CONNECTED, NULL);
    } else if (r.auth_error) {
        credentials_seen(wi, &r);
    } else {
        /* Graph unreachable: sends will tell; webhooks work regardless. */
        host->set_state(wi->inst, SB_STATE_DISCONNECTED, r.error_message);
    }
    json_decref(r.body);
}

static void wi_free(struct wa_instance *wi)
{
    free(wi->phone_id);
    free(wi->waba_id);
    free(wi->token);
    free(wi->auth);
    free(wi->app_secret);
    free(wi->verify_token);
    free(wi->version);
    free(wi->api_base);
    free(wi->list_button);
    free(wi);
}

static int wa_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    struct wa_instance *wi = calloc(1, sizeof(*wi));
    char *url;
    sb_header headers[1];
    sb_http_request req = {.method = "GET", .headers = headers, .n_headers = 1};

    if (!wi) {
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    wi->inst = inst;
    wi->phone_id = pu_json_strdup(settings, "phone_number_id", NULL);
    wi->waba_id = pu_json_strdup(settings, "waba_id", NULL);
    wi->token = pu_json_strdup(settings, "access_token", NULL);
    wi->app_secret = pu_json_strdup(settings, "app_secret", NULL);
    wi->verify_token = pu_json_strdup(settings, "verify_token", NULL);
    wi->version = pu_json_strdup(settings, "graph_version", WA_DEFAULT_GRAPH);
    wi->api_base = pu_json_strdup(settings, "api_base", WA_DEFAULT_BASE);
    wi->list_button = pu_json_strdup(settings, "list_button", "Choose");
    if (wi->api_base)
        for (size_t n = strlen(wi->api_base); n && wi->api_base[n - 1] == '/'; n--)
            wi->api_base[n - 1] = '\0';
    if (!wi->phone_id || !wi->token || !wi->app_secret) {
        host->set_state(inst, SB_STATE_ERROR,
                        "phone_number_id, access_token and app_secret are required");
        wi_free(wi);
        return -1;
    }
    wi->auth = pu_printf("Bearer %s", wi->token);
    if (!wi->auth || !wi->version || !wi->api_base || !wi->list_button) {
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        wi_free(wi);
        return -1;
    }
    *state = wi;
    host->set_state(inst, SB_STATE_CONNECTING, NULL);
    url = pu_printf("%s/%s/%s", wi->api_base, wi->version, wi->phone_id);
    headers[0].name = "Authorization";
    headers[0].value = wi->auth;
    req.url = url;
    if (url)
        wi->probe = host->http_request(plugin_self, inst, &req, on_probe, wi);
    free(url);
    if (!wi->probe)
        host->set_state(inst, SB_STATE_CONNECTED, NULL);
    return 0;
}

static void wa_instance_stop(sb_instance *inst, void *state)
{
    struct wa_instance *wi = state;

    if (wi->probe)
        host->http_cancel(wi->probe);
    while (wi->sends) {
        struct wa_send *s = wi->sends;
        sb_send_result res = {.ok = 0,
                              .retryable = 1,
                              .error_code = "instance_stopped",
                              .error_message = "the instance stopped before the answer came"};

        wi->sends = s->next;
        host->http_cancel(s->call);
        s->done(s->done_arg, &res);
        send_free(s);
    }
    wi_free(wi);
}

static json_t *wa_status(sb_instance *inst, void *state)
{
    const struct wa_instance *wi = state;

    return json_pack("{s:s,s:s?,s:s,s:I,s:I,s:I,s:I,s:I}", "phone_number_id", wi->phone_id,
                     "waba_id", wi->waba_id, "graph_version", wi->version, "sent",
                     (json_int_t)wi->sent, "failed", (json_int_t)wi->failed, "received",
                     (json_int_t)wi->received, "statuses", (json_int_t)wi->statuses, "skipped",
                     (json_int_t)wi->skipped);
}

static int wa_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    host = services;
    plugin_self = self;
    if (!pu_services_usable(services, self, "whatsapp-official", PU_SERVICES_THROUGH(reply_header)))
        return -1;
    return 0;
}

static void wa_shutdown(sb_plugin *self)
{
    host = NULL;
    plugin_self = NULL;
}

SWITCHBOARD_PLUGIN_INIT(.name = "whatsapp-official", .version = WA_VERSION,
                        .description = "WhatsApp Business Cloud API (Graph API)",
                        .capabilities = SB_CAP_MEDIA | SB_CAP_BUTTONS | SB_CAP_WEBHOOK,
                        .settings_schema = WA_SCHEMA, .init = wa_init, .shutdown = wa_shutdown,
                        .instance_start = wa_instance_start, .instance_stop = wa_instance_stop,
                        .send = wa_send, .webhook = wa_webhook, .status = wa_status)
