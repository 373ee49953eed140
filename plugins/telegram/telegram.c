/*
 * telegram: the Telegram Bot API provider (core.telegram.org/bots/api).
 *
 * Inbound, one of two modes per instance:
 *  - webhook: on start, setWebhook(url = <public_url>/webhook/telegram/<id>,
 *    secret_token); every webhook must carry the same value in
 *    X-Telegram-Bot-Api-Secret-Token (else 401).
 *  - polling: deleteWebhook once, then getUpdates long polling chained
 *    through host timers; the next offset (highest update_id + 1) is kept in
 *    the instance's key-value store ("offset"), written after the update's
 *    event was handed to the host, so a restart resumes where it stopped.
 * Updates: message / channel_post -> message.received; edited_message /
 * edited_channel_post -> message.received with "edited": true;
 * callback_query -> interaction, then answerCallbackQuery.
 *
 * Outbound: sendMessage (reply_parameters for reply_to, inline_keyboard for
 * buttons, a one-time reply keyboard for quick_replies, parse_mode only when
 * the message asks with "format"), sendPhoto/sendVideo/sendAudio/sendDocument
 * by URL or uploaded as multipart/form-data. {"ok":false,"error_code":429,
 * "parameters":{"retry_after":N}} is a retryable failure with retry_after_ms,
 * and holds the chat's queue for those N seconds.
 *
 * Pacing (core.telegram.org/bots/faq, "My bot is hitting limits"): sends are
 * built at once, then queued inside the plugin and let out by host timers so
 * that one chat gets at most one message per pace_chat_ms (default 1000 ms;
 * groups and channels, negative or @ ids, one per pace_group_ms, default
 * 3000 ms = 20 a minute) and the bot at most pace_global_per_second (default
 * 30) in any 1 s window. The queue is FIFO per chat; a chat waiting does not
 * hold back the others. 0 turns a limit off. Telegram's limits are per bot,
 * so the pacer (queue, chat times, the 1 s window) belongs to the bot token:
 * instances of one token share one, refcounted, in a plugin-wide map keyed by
 * a hash of the token (the strictest of their settings applies), freed with
 * the last of them.
 *
 * The bot token is part of every method URL: it is never logged.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <switchboard/switchboard.h>

#include "../common/plugutil.h"

#define TG_VERSION "1.0.0"
#define TG_DEFAULT_BASE "https://api.telegram.org"
#define TG_DEFAULT_POLL_TIMEOUT 25
#define TG_BACKOFF_MIN_MS 1000u
#define TG_BACKOFF_MAX_MS 60000u
#define TG_PACE_CHAT_MS 1000u
#define TG_PACE_GROUP_MS 3000u
#define TG_PACE_GLOBAL 30u
#define TG_CHAT_BUCKETS 1024u

#define TG_SCHEMA                                                                                  \
    "{\"type\":\"object\",\"properties\":{"                                                        \
    "\"bot_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true,"                       \
    "\"description\":\"Bot API token from @BotFather\"},"                                          \
    "\"mode\":{\"type\":\"string\",\"enum\":[\"webhook\",\"polling\"],"                            \
    "\"description\":\"webhook (needs public_url and webhook_secret) or polling (default)\"},"     \
    "\"webhook_secret\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":256,"                   \
    "\"pattern\":\"^[A-Za-z0-9_-]+$\",\"writeOnly\":true,"                                         \
    "\"description\":\"secret_token for setWebhook, checked on every webhook\"},"                  \
    "\"public_url\":{\"type\":\"string\",\"minLength\":1,"                                         \
    "\"description\":\"external base URL of this daemon; the webhook is "                          \
    "<public_url>/webhook/telegram/<instance id>\"},"                                              \
    "\"allowed_updates\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"                    \
    "\"api_base\":{\"type\":\"string\",\"minLength\":1,"                                           \
    "\"description\":\"Bot API base URL (default https://api.telegram.org)\"},"                    \
    "\"poll_timeout\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":50,"                         \
    "\"description\":\"getUpdates long-poll timeout in seconds (default 25)\"},"                   \
    "\"pace_chat_ms\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":60000,"                      \
    "\"description\":\"least time between two sends to one private chat (default 1000, 0 off)\"}," \
    "\"pace_group_ms\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":600000,"                    \
    "\"description\":\"least time between two sends to one group or channel (default 3000)\"},"    \
    "\"pace_global_per_second\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":100000,"           \
    "\"description\":\"most sends of the bot in any second (default 30, 0 off)\"}"                 \
    "},\"required\":[\"bot_token\"],\"additionalProperties\":false}"

struct tg_instance;
struct tg_call;
typedef void (*tg_call_fn)(struct tg_call *c, const sb_http_response *resp, json_t *doc);

/* One Bot API request in flight. */
struct tg_call {
    struct tg_call *next;
    struct tg_instance *ti;
    sb_http_call *call;
    tg_call_fn fn;
    sb_send_done_fn done; /* sends only */
    void *done_arg;
    char *chat; /* sends only: the pacing key */
};

/* A send built and waiting for its chat's and the bot's turn. */
struct tg_pending {
    struct tg_pending *next;
    struct tg_instance *ti;                    /* whose send it is */
    int waited;                                /* it could not go at once */
    char *chat, *method, *body, *content_type; /* content_type NULL: JSON */
    size_t len;
    sb_send_done_fn done;
    void *done_arg;
};

/* When a chat may get its next message (monotonic ms); gone once past. */
struct tg_chat {
    struct tg_chat *next;
    uint64_t next_ok;
    char key[];
};

/*
 * The pacing of one bot token, shared by the instances that use it. Its
 * timer is plugin-wide (no instance), cancelled when the last instance goes.
 */
struct tg_pacer {
    struct tg_pacer *next; /* in its pacers[] bucket */
    uint64_t token_hash;   /* FNV-1a of the token; members[0]'s token decides */
    struct tg_instance *members;
    unsigned refs;
    uint32_t pace_chat_ms, pace_group_ms, pace_global; /* strictest of the members' */
    struct tg_pending *queue, **queue_tail;
    size_t queued;
    unsigned long paced;
    sb_timer *pace_timer;
    uint64_t pace_timer_at;
    uint64_t *ring; /* dispatch times of the last pace_global sends */
    size_t ring_n, ring_pos;
    struct tg_chat **chats;   /* TG_CHAT_BUCKETS */
    size_t n_chats, sweep_at; /* entries; a full sweep when n_chats reaches sweep_at */
    int pumping, pump_again;  /* pump() is not re-entered (done may send) */
};

struct tg_instance {
    sb_instance *inst;
    char *token, *secret, *public_url, *api_base, *webhook_url;
    json_t *allowed_updates; /* array or NULL */
    int webhook_mode;
    int poll_timeout;
    long long offset; /* next getUpdates offset, 0 before the first update */
    sb_timer *timer;  /* next poll or setWebhook retry */
    uint32_t backoff_ms;
    int auth_failed; /* the last answer said the token is bad */
    struct tg_call *calls;
    unsigned long updates, sent, failed, refused;
    /* pacing: this instance's settings and counts; the pacer is its token's */
    uint32_t pace_chat_ms, pace_group_ms, pace_global;
    struct tg_pacer *pacer;
    struct tg_instance *pacer_next; /* the pacer's members */
    size_t queued;                  /* its sends waiting in the pacer */
    unsigned long paced;            /* its sends that had to wait */
};

static const sb_host_services *host;
static sb_plugin *plugin_self;

/* ---- requests ---- */

static void call_unlink(struct tg_call *c)
{
    struct tg_call **link = &c->ti->calls;

    while (*link && *link != c)
        link = &(*link)->next;
    if (*link)
        *link = c->next;
}

static void on_answer(void *arg, const sb_http_response *resp)
{
    struct tg_call *c = arg;
    json_t *doc = resp->body && resp->body_len
                      ? json_loadb((const char *)resp->body, resp->body_len, 0, NULL)
                      : NULL;

    call_unlink(c);
    c->fn(c, resp, doc);
    json_decref(doc);
    free(c->chat);
    free(c);
}

/*
 * POST <api_base>/bot<token>/<method> with body (JSON when content_type is
 * NULL). Returns the call, or NULL when it could not start (fn not called).
 */
static struct tg_call *tg_request(struct tg_instance *ti, const char *method, const void *body,
                                  size_t len, const char *content_type, uint32_t timeout_ms,
                                  tg_call_fn fn)
{
    struct tg_call *c = calloc(1, sizeof(*c));
    char *url = pu_printf("%s/bot%s/%s", ti->api_base, ti->token, method);
    sb_header headers[1] = {{"Content-Type", content_type ? content_type : "application/json"}};
    sb_http_request req = {.method = "POST",
                           .url = url,
                           .headers = headers,
                           .n_headers = 1,
                           .body = body,
                           .body_len = len,
                           .timeout_ms = timeout_ms};

    if (!c || !url) {
        free(c);
        free(url);
        return NULL;
    }
    c->ti = ti;
    c->fn = fn;
    c->next = ti->calls;
    ti->calls = c;
    c->call = host->http_request(plugin_self, ti->inst, &req, on_answer, c);
    free(url);
    if (!c->call) {
        call_unlink(c);
        free(c);
        return NULL;
    }
    return c;
}

static struct tg_call *tg_request_json(struct tg_instance *ti, const char *method,
                                       const json_t *body, uint32_t timeout_ms, tg_call_fn fn)
{
    char *text = json_dumps(body, JSON_COMPACT);
    struct tg_call *c;

    if (!text)
        return NULL;
    c = tg_request(ti, method, text, strlen(text), NULL, timeout_ms, fn);
    free(text);
    return c;
}

/* The Bot API's verdict: description of a failed answer (static fallback). */
static const char *tg_description(const sb_http_response *resp, json_t *doc)
{
    const char *d = json_string_value(json_object_get(doc, "description"));

    if (d)
        return d;
    if (resp->status == 0)
        return resp->error ? resp->error : "no answer from the Bot API";
    return "the Bot API refused the request";
}

static int tg_ok(const sb_http_response *resp, json_t *doc)
{
    return resp->status >= 200 && resp->status < 300 && json_is_true(json_object_get(doc, "ok"));
}

static int tg_error_code(const sb_http_response *resp, json_t *doc)
{
    json_t *v = json_object_get(doc, "error_code");

    return json_is_integer(v) ? (int)json_integer_value(v) : resp->status;
}

static uint32_t tg_retry_after(const sb_http_response *resp, json_t *doc)
{
    json_t *v = json_object_get(json_object_get(doc, "parameters"), "retry_after");

    if (json_is_number(v))
        return pu_secs_to_ms(json_number_value(v));
    return pu_retry_after_header(resp);
}

/* Track whether the token works: 401 puts the instance in error until a call succeeds. */
static void tg_auth_seen(struct tg_instance *ti, const sb_http_response *resp, json_t *doc)
{
    if (tg_ok(resp, doc)) {
        if (ti->auth_failed) {
            ti->auth_failed = 0;
            host->set_state(ti->inst, SB_STATE_CONNECTED, NULL);
        }
    } else if (resp->status != 0 && tg_error_code(resp, doc) == 401) {
        ti->auth_failed = 1;
        host->set_state(ti->inst, SB_STATE_ERROR, tg_description(resp, doc));
    }
}

static uint32_t next_backoff(struct tg_instance *ti)
{
    uint32_t ms = ti->backoff_ms ? ti->backoff_ms : TG_BACKOFF_MIN_MS;

    ti->backoff_ms = ms * 2 > TG_BACKOFF_MAX_MS ? TG_BACKOFF_MAX_MS : ms * 2;
    return ms;
}

/* ---- inbound updates ---- */

static json_t *id_string(json_t *v)
{
    char buf[32];

    if (json_is_integer(v)) {
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return json_string(buf);
    }
    if (json_is_string(v))
        return json_incref(v);
    return json_null();
}

static void copy_key(json_t *dst, const json_t *src, const char *key)
{
    json_t *v = json_object_get(src, key);

    if (v)
        json_object_set(dst, key, v);
}

static json_t *user_of(const json_t *u)
{
    json_t *out;

    if (!json_is_object(u))
        return json_null();
    out = json_object();
    json_object_set_new(out, "id", id_string(json_object_get(u, "id")));
    copy_key(out, u, "username");
    copy_key(out, u, "first_name");
    copy_key(out, u, "last_name");
    copy_key(out, u, "is_bot");
    copy_key(out, u, "language_code");
    return out;
}

/* The largest size of a photo (the array is ordered smallest first). */
static json_t *media_of(const json_t *m)
{
    static const char *const kinds[] = {"document",  "video",   "audio",      "voice",
                                        "animation", "sticker", "video_note", NULL};
    json_t *photo = json_object_get(m, "photo"), *f = NULL, *out;
    const char *kind = NULL;

    if (json_is_array(photo) && json_array_size(photo)) {
        f = json_array_get(photo, json_array_size(photo) - 1);
        kind = "photo";
    }
    for (size_t i = 0; !f && kinds[i]; i++)
        if (json_is_object(json_object_get(m, kinds[i]))) {
            f = json_object_get(m, kinds[i]);
            kind = kinds[i];
        }
    if (!f)
        return NULL;
    out = json_pack("{s:s}", "type", kind);
    copy_key(out, f, "file_id");
    copy_key(out, f, "file_unique_id");
    copy_key(out, f, "mime_type");
    copy_key(out, f, "file_name");
    copy_key(out, f, "file_size");
    copy_key(out, f, "width");
    copy_key(out, f, "height");
    copy_key(out, f, "duration");
    return out;
}

static json_t *message_event(const json_t *m, const char *event_id, int edited)
{
    json_t *chat = json_object_get(m, "chat"), *ev = json_object(), *c, *media;
    json_t *text = json_object_get(m, "text");
    json_t *reply = json_object_get(m, "reply_to_message");

    json_object_set_new(ev, "event_id", json_string(event_id));
    json_object_set_new(ev, "message_id", id_string(json_object_get(m, "message_id")));
    /* "from" is the address to answer: the chat, as a string ("to" of a send). */
    json_object_set_new(ev, "from", id_string(json_object_get(chat, "id")));
    c = json_object();
    json_object_set_new(c, "id", id_string(json_object_get(chat, "id")));
    copy_key(c, chat, "type");
    copy_key(c, chat, "title");
    copy_key(c, chat, "username");
    json_object_set_new(ev, "chat", c);
    json_object_set_new(ev, "sender", user_of(json_object_get(m, "from")));
    copy_key(ev, m, "date");
    if (edited) {
        json_object_set_new(ev, "edited", json_true());
        copy_key(ev, m, "edit_date");
    }
    if (!json_is_string(text))
        text = json_object_get(m, "caption");
    json_object_set_new(ev, "text", json_is_string(text) ? json_incref(text) : json_string(""));
    if (json_is_string(text) && json_is_array(json_object_get(m, "entities")))
        copy_key(ev, m, "entities");
    if (json_is_object(reply))
        json_object_set_new(ev, "reply_to", id_string(json_object_get(reply, "message_id")));
    if (json_object_get(m, "message_thread_id"))
        json_object_set_new(ev, "thread", id_string(json_object_get(m, "message_thread_id")));
    if ((media = media_of(m)))
        json_object_set_new(ev, "media", media);
    copy_key(ev, m, "location");
    copy_key(ev, m, "contact");
    copy_key(ev, m, "venue");
    copy_key(ev, m, "poll");
    return ev;
}

static void on_answer_callback(struct tg_call *c, const sb_http_response *resp, json_t *doc)
{
    if (!tg_ok(resp, doc))
        host->log(plugin_self, c->ti->inst, SB_LOG_WARN, "answerCallbackQuery failed: %s",
                  tg_description(resp, doc));
}

static json_t *callback_event(const json_t *cq, const char *event_id)
{
    json_t *msg = json_object_get(cq, "message");
    json_t *chat_id = json_object_get(json_object_get(msg, "chat"), "id");
    json_t *ev = json_object();

    json_object_set_new(ev, "event_id", json_string(event_id));
    json_object_set_new(ev, "kind", json_string("button"));
    json_object_set_new(ev, "interaction_id", id_string(json_object_get(cq, "id")));
    /* The button's id, as the send gave it (callback_data). */
    json_object_set_new(ev, "id", id_string(json_object_get(cq, "data")));
    json_object_set_new(
        ev, "from",
        id_string(chat_id ? chat_id : json_object_get(json_object_get(cq, "from"), "id")));
    json_object_set_new(ev, "sender", user_of(json_object_get(cq, "from")));
    if (json_is_object(msg))
        json_object_set_new(ev, "message_id", id_string(json_object_get(msg, "message_id")));
    copy_key(ev, cq, "inline_message_id");
    copy_key(ev, cq, "chat_instance");
    return ev;
}

/*
 * Turn one update into events. Returns 0 when the update is done with
 * (handled or deliberately ignored), -1 when the host refused an event.
 */
static int process_update(struct tg_instance *ti, const json_t *upd)
{
    static const struct {
        const char *field;
        int edited;
    } kinds[] = {{"message", 0},          {"edited_message", 1},
                 {"channel_post", 0},     {"edited_channel_post", 1},
                 {"business_message", 0}, {"edited_business_message", 1}};
    char event_id[40];
    json_t *cq;

    snprintf(event_id, sizeof(event_id), "tg-%" JSON_INTEGER_FORMAT,
             json_integer_value(json_object_get(upd, "update_id")));
    ti->updates++;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        json_t *m = json_object_get(upd, kinds[i].field);
        if (json_is_object(m))
            return host->emit_event(ti->inst, "message.received",
                                    message_event(m, event_id, kinds[i].edited)) == SB_OK
                       ? 0
                       : -1;
    }
    cq = json_object_get(upd, "callback_query");
    if (json_is_object(cq)) {
        json_t *ans;

        if (host->emit_event(ti->inst, "interaction", callback_event(cq, event_id)) != SB_OK)
            return -1;
        /* Stops the client's progress indicator; fire and forget. */
        ans = json_pack("{s:O}", "callback_query_id", json_object_get(cq, "id"));
        if (ans && !tg_request_json(ti, "answerCallbackQuery", ans, 0, on_answer_callback))
            host->log(plugin_self, ti->inst, SB_LOG_WARN, "answerCallbackQuery not sent");
        json_decref(ans);
        return 0;
    }
    host->log(plugin_self, ti->inst, SB_LOG_DEBUG, "update %s of a kind not handled, skipped",
              event_id);
    return 0;
}

/* ---- polling ---- */

static void poll_now(void *arg);

static void schedule(struct tg_instance *ti, uint32_t ms, sb_timer_fn fn)
{
    if (ti->timer)
        host->timer_cancel(ti->timer);
    ti->timer = host->timer_start(plugin_self, ti->inst, ms, 0, fn, ti);
    if (!ti->timer)
        host->log(plugin_self, ti->inst, SB_LOG_ERROR, "could not start a timer");
}

static void save_offset(struct tg_instance *ti)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%lld", ti->offset);
    if (host->kv_set(ti->inst, "offset", buf) != SB_OK)
        host->log(plugin_self, ti->inst, SB_LOG_WARN, "could not store the update offset");
}

static void on_updates(struct tg_call *c, const sb_http_response *resp, json_t *doc)
{
    struct tg_instance *ti = c->ti;
    json_t *result = json_object_get(doc, "result"), *upd;
    size_t i;
    uint32_t wait;

    tg_auth_seen(ti, resp, doc);
    if (!tg_ok(resp, doc)) {
        int code = tg_error_code(resp, doc);

        wait = code == 429 ? tg_retry_after(resp, doc) : 0;
        if (!wait)
            wait = next_backoff(ti);
        if (code == 409 || resp->status == 0 || code >= 500)
            host->set_state(ti->inst, code == 409 ? SB_STATE_ERROR : SB_STATE_DISCONNECTED,
                            tg_description(resp, doc));
        host->log(plugin_self, ti->inst, SB_LOG_WARN, "getUpdates failed (%d): %s; again in %u ms",
                  code, tg_description(resp, doc), (unsigned)wait);
        schedule(ti, wait, poll_now);
        return;
    }
    host->set_state(ti->inst, SB_STATE_CONNECTED, NULL);
    ti->backoff_ms = 0;
    json_array_foreach (result, i, upd) {
        json_int_t id = json_integer_value(json_object_get(upd, "update_id"));

        /* An update below the offset was confirmed before: never twice. */
        if (id < ti->offset)
            continue;
        if (process_update(ti, upd) != 0) {
            host->log(plugin_self, ti->inst, SB_LOG_WARN, "the host refused an update; retrying");
            schedule(ti, next_backoff(ti), poll_now);
            return;
        }
        /* Only now is the update ours: the next getUpdates confirms it. */
        ti->offset = (long long)id + 1;
        save_offset(ti);
    }
    schedule(ti, 0, poll_now);
}

static void poll_now(void *arg)
{
    struct tg_instance *ti = arg;
    json_t *body = json_pack("{s:i,s:i}", "timeout", ti->poll_timeout, "limit", 100);

    ti->timer = NULL;
    if (ti->offset)
        json_object_set_new(body, "offset", json_integer(ti->offset));
    if (ti->allowed_updates)
        json_object_set(body, "allowed_updates", ti->allowed_updates);
    /* The host's client waits longer than the long poll itself. */
    if (!body || !tg_request_json(ti, "getUpdates", body, (uint32_t)(ti->poll_timeout + 15) * 1000u,
                                  on_updates))
        schedule(ti, next_backoff(ti), poll_now);
    json_decref(body);
}

static void start_polling(void *arg);

static void on_delete_webhook(struct tg_call *c, const sb_http_response *resp, json_t *doc)
{
    struct tg_instance *ti = c->ti;

    tg_auth_seen(ti, resp, doc);
    if (!tg_ok(resp, doc)) {
        uint32_t wait = tg_error_code(resp, doc) == 429 ? tg_retry_after(resp, doc) : 0;
        host->log(plugin_self, ti->inst, SB_LOG_WARN, "deleteWebhook failed: %s",
                  tg_description(resp, doc));
        if (!ti->auth_failed)
            host->set_state(ti->inst, SB_STATE_DISCONNECTED, tg_description(resp, doc));
        schedule(ti, wait ? wait : next_backoff(ti), start_polling);
        return;
    }
    ti->backoff_ms = 0;
    poll_now(ti);
}

/* getUpdates answers 409 while a webhook is set: remove it first. */
static void start_polling(void *arg)
{
    struct tg_instance *ti = arg;
    json_t *body = json_pack("{s:b}", "drop_pending_updates", 0);

    ti->timer = NULL;
    if (!body || !tg_request_json(ti, "deleteWebhook", body, 0, on_delete_webhook))
        schedule(ti, next_backoff(ti), start_polling);
    json_decref(body);
}

/* ---- webhook mode ---- */

static void set_webhook(void *arg);

static void on_set_webhook(struct tg_call *c, const sb_http_response *resp, json_t *doc)
{
    struct tg_instance *ti = c->ti;

    tg_auth_seen(ti, resp, doc);
    if (!tg_ok(resp, doc)) {
        uint32_t wait = tg_error_code(resp, doc) == 429 ? tg_retry_after(resp, doc) : 0;

        host->set_state(ti->inst, SB_STATE_ERROR, tg_description(resp, doc));
        host->log(plugin_self, ti->inst, SB_LOG_WARN, "setWebhook failed: %s",
                  tg_description(resp, doc));
        schedule(ti, wait ? wait : next_backoff(ti), set_webhook);
        return;
    }
    ti->backoff_ms = 0;
    host->set_state(ti->inst, SB_STATE_CONNECTED, NULL);
    host->log(plugin_self, ti->inst, SB_LOG_INFO, "webhook set");
}

static void set_webhook(void *arg)
{
    struct tg_instance *ti = arg;
    json_t *body = json_pack("{s:s,s:s}", "url", ti->webhook_url, "secret_token", ti->secret);

    ti->timer = NULL;
    if (body && ti->allowed_updates)
        json_object_set(body, "allowed_updates", ti->allowed_updates);
    if (!body || !tg_request_json(ti, "setWebhook", body, 0, on_set_webhook))
        schedule(ti, next_backoff(ti), set_webhook);
    json_decref(body);
}

static void tg_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply)
{
    struct tg_instance *ti = state;
    const char *got = pu_header(req->headers, req->n_headers, "X-Telegram-Bot-Api-Secret-Token");
    json_t *upd;

    if (!req->method || strcmp(req->method, "POST") != 0) {
        host->reply_header(reply, "Allow", "POST");
        pu_reply_error(host, reply, 405, "method_not_allowed", "only POST is accepted");
        return;
    }
    if (!ti->secret || !got || !pu_ct_equal(ti->secret, got)) {
        ti->refused++;
        host->metric_add(plugin_self, inst, "signature_rejected", 1);
        host->log(plugin_self, inst, SB_LOG_WARN,
                  "webhook refused: X-Telegram-Bot-Api-Secret-Token %s",
                  got ? "does not match" : "missing");
        pu_reply_error(host, reply, 401, "bad_secret_token",
                       "X-Telegram-Bot-Api-Secret-Token is missing or wrong");
        return;
    }
    upd = req->body_len ? json_loadb((const char *)req->body, req->body_len, 0, NULL) : NULL;
    if (!json_is_object(upd) || !json_is_integer(json_object_get(upd, "update_id"))) {
        json_decref(upd);
        pu_reply_error(host, reply, 400, "invalid_update", "the body must be an Update object");
        return;
    }
    if (process_update(ti, upd) != 0) {
        /* Telegram retries on a non-2xx answer. */
        pu_reply_event_rejected(host, reply);
    } else {
        host->reply(reply, 200, "application/json", "{}", 2);
    }
    json_decref(upd);
}

/* ---- pacing ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint32_t chat_hash(const char *key)
{
    uint32_t h = 2166136261u;

    while (*key)
        h = (h ^ (unsigned char)*key++) * 16777619u;
    return h % TG_CHAT_BUCKETS;
}

/*
 * Drop every entry whose time has passed, so chats not written to again do
 * not pile up; the next sweep waits until the table has doubled (amortised
 * O(1) per entry).
 */
static void chats_sweep(struct tg_pacer *pc, uint64_t now)
{
    for (size_t i = 0; i < TG_CHAT_BUCKETS; i++) {
        struct tg_chat **link = &pc->chats[i], *c;

        while ((c = *link)) {
            if (c->next_ok <= now) {
                *link = c->next;
                free(c);
                pc->n_chats--;
            } else {
                link = &c->next;
            }
        }
    }
    pc->sweep_at = pc->n_chats * 2 > TG_CHAT_BUCKETS * 4 ? pc->n_chats * 2 : TG_CHAT_BUCKETS * 4;
}

/*
 * The chat's entry (created when create is set; NULL on no memory or when
 * absent). Entries whose time has passed are dropped on the way.
 */
static struct tg_chat *chat_find(struct tg_pacer *pc, const char *key, uint64_t now, int create)
{
    struct tg_chat **link, *c;
    size_t len;

    if (!pc->chats && !(pc->chats = calloc(TG_CHAT_BUCKETS, sizeof(*pc->chats))))
        return NULL;
    link = &pc->chats[chat_hash(key)];
    while ((c = *link)) {
        if (!strcmp(c->key, key))
            return c;
        if (c->next_ok <= now) {
            *link = c->next;
            free(c);
            pc->n_chats--;
            continue;
        }
        link = &c->next;
    }
    if (!create)
        return NULL;
    if (pc->n_chats >= pc->sweep_at)
        chats_sweep(pc, now);
    len = strlen(key) + 1;
    if (!(c = malloc(sizeof(*c) + len)))
        return NULL;
    memcpy(c->key, key, len);
    c->next_ok = 0;
    c->next = pc->chats[chat_hash(key)];
    pc->chats[chat_hash(key)] = c;
    pc->n_chats++;
    return c;
}

/* Groups and supergroups have negative ids, channels too (or "@name"). */
static uint32_t chat_interval(const struct tg_pacer *pc, const char *key)
{
    return key[0] == '-' || key[0] == '@' ? pc->pace_group_ms : pc->pace_chat_ms;
}

/* No send of the bot to this chat before now + ms (a 429's retry_after). */
static void chat_hold(struct tg_pacer *pc, const char *key, uint32_t ms)
{
    uint64_t now = now_ms();
    struct tg_chat *c = key ? chat_find(pc, key, now, 1) : NULL;

    if (c && c->next_ok < now + ms)
        c->next_ok = now + ms;
}

/* Earliest time the bot may send again under the global limit. */
static uint64_t global_ok(const struct tg_pacer *pc, uint64_t now)
{
    if (!pc->pace_global || pc->ring_n < pc->pace_global)
        return now;
    return pc->ring[pc->ring_pos] + 1000u;
}

static void global_count(struct tg_pacer *pc, uint64_t now)
{
    if (!pc->pace_global || !pc->ring)
        return;
    pc->ring[pc->ring_pos] = now;
    pc->ring_pos = (pc->ring_pos + 1) % pc->pace_global;
    if (pc->ring_n < pc->pace_global)
        pc->ring_n++;
}

static void pending_free(struct tg_pending *p)
{
    free(p->chat);
    free(p->method);
    free(p->body);
    free(p->content_type);
    free(p);
}

static void on_sent(struct tg_call *c, const sb_http_response *resp, json_t *doc);

/* Put the request on the wire; a failure to start is a retryable failure. */
static void dispatch(struct tg_pending *p)
{
    struct tg_instance *ti = p->ti;
    struct tg_call *c = tg_request(ti, p->method, p->body, p->len, p->content_type, 0, on_sent);

    ti->queued--;
    if (p->waited)
        ti->paced++;
    if (!c) {
        sb_send_result res = {.ok = 0,
                              .retryable = 1,
                              .error_code = "transport",
                              .error_message = "could not start the Bot API request"};
        ti->failed++;
        p->done(p->done_arg, &res);
    } else {
        c->done = p->done;
        c->done_arg = p->done_arg;
        c->chat = p->chat;
        p->chat = NULL;
    }
    pending_free(p);
}

static void pace_fire(void *arg);

/* Send whatever may go now, in order; wake up again when the next may. */
static void pump(struct tg_pacer *pc)
{
    uint64_t now, wake, g;
    struct tg_pending **link, *p;

    if (pc->pumping) {
        pc->pump_again = 1;
        return;
    }
    pc->pumping = 1;
again:
    pc->pump_again = 0;
    now = now_ms();
    wake = UINT64_MAX;
    g = global_ok(pc, now);
    link = &pc->queue;
    while ((p = *link)) {
        struct tg_chat *c;
        uint32_t gap;

        if (g > now) {
            wake = g;
            for (; p; p = p->next)
                p->waited = 1;
            break;
        }
        c = chat_find(pc, p->chat, now, 0);
        if (c && c->next_ok > now) {
            if (c->next_ok < wake)
                wake = c->next_ok;
            p->waited = 1;
            link = &p->next;
            continue;
        }
        gap = chat_interval(pc, p->chat);
        if (gap && (c || (c = chat_find(pc, p->chat, now, 1))))
            c->next_ok = now + gap;
        *link = p->next;
        if (pc->queue_tail == &p->next)
            pc->queue_tail = link;
        pc->queued--;
        if (p->waited)
            pc->paced++;
        global_count(pc, now);
        g = global_ok(pc, now);
        dispatch(p);
    }
    if (pc->pump_again)
        goto again;
    pc->pumping = 0;
    if (!pc->queue) {
        pc->queue_tail = &pc->queue;
        wake = UINT64_MAX;
    }
    if (pc->pace_timer && pc->pace_timer_at != wake) {
        host->timer_cancel(pc->pace_timer);
        pc->pace_timer = NULL;
    }
    if (wake != UINT64_MAX && !pc->pace_timer) {
        pc->pace_timer_at = wake;
        /* Plugin-wide: the pacer outlives any one of its instances. */
        pc->pace_timer =
            host->timer_start(plugin_self, NULL, (uint32_t)(wake - now), 0, pace_fire, pc);
        if (!pc->pace_timer)
            host->log(plugin_self, NULL, SB_LOG_ERROR, "could not start the pacing timer");
    }
}

static void pace_fire(void *arg)
{
    struct tg_pacer *pc = arg;

    pc->pace_timer = NULL;
    pump(pc);
}

/* Queue one built request (takes body) and let out what may go. */
static int enqueue(struct tg_instance *ti, const char *chat, const char *method, char *body,
                   size_t len, const char *content_type, sb_send_done_fn done, void *done_arg)
{
    struct tg_pacer *pc = ti->pacer;
    struct tg_pending *p = calloc(1, sizeof(*p));

    if (!p || !(p->chat = pu_strdup(chat)) || !(p->method = pu_strdup(method)) ||
        (content_type && !(p->content_type = pu_strdup(content_type)))) {
        if (p)
            pending_free(p);
        free(body);
        return -1;
    }
    p->ti = ti;
    p->body = body;
    p->len = len;
    p->done = done;
    p->done_arg = done_arg;
    *pc->queue_tail = p;
    pc->queue_tail = &p->next;
    pc->queued++;
    ti->queued++;
    pump(pc);
    return 0;
}

/* ---- the pacers of the plugin, one per bot token ---- */

#define TG_PACER_BUCKETS 256u
static struct tg_pacer *pacers[TG_PACER_BUCKETS];

static uint64_t token_hash(const char *token)
{
    uint64_t h = 14695981039346656037ull;

    while (*token)
        h = (h ^ (unsigned char)*token++) * 1099511628211ull;
    return h;
}

/* The ring keeps the newest of its times when the bot's limit changes. */
static int ring_resize(struct tg_pacer *pc, uint32_t cap)
{
    uint64_t *ring = NULL;
    size_t keep = 0;

    if (cap == pc->pace_global)
        return 0;
    if (cap && !(ring = calloc(cap, sizeof(*ring))))
        return -1;
    if (cap && pc->ring) {
        size_t old = pc->pace_global, first;

        keep = pc->ring_n < cap ? pc->ring_n : cap;
        first = (pc->ring_pos + old - keep) % old; /* the oldest of the newest keep */
        for (size_t i = 0; i < keep; i++)
            ring[i] = pc->ring[(first + i) % old];
    }
    free(pc->ring);
    pc->ring = ring;
    pc->ring_n = keep;
    pc->ring_pos = cap ? keep % cap : 0;
    pc->pace_global = cap;
    return 0;
}

/* The strictest settings of the members: longest gaps, smallest non-zero bot limit. */
static int pacer_settle(struct tg_pacer *pc)
{
    uint32_t chat = 0, group = 0, global = 0;

    for (struct tg_instance *m = pc->members; m; m = m->pacer_next) {
        chat = m->pace_chat_ms > chat ? m->pace_chat_ms : chat;
        group = m->pace_group_ms > group ? m->pace_group_ms : group;
        if (m->pace_global && (!global || m->pace_global < global))
            global = m->pace_global;
    }
    pc->pace_chat_ms = chat;
    pc->pace_group_ms = group;
    return ring_resize(pc, global);
}

static void pacer_free(struct tg_pacer *pc)
{
    if (pc->pace_timer)
        host->timer_cancel(pc->pace_timer);
    if (pc->chats) {
        for (size_t i = 0; i < TG_CHAT_BUCKETS; i++)
            while (pc->chats[i]) {
                struct tg_chat *c = pc->chats[i];
                pc->chats[i] = c->next;
                free(c);
            }
        free(pc->chats);
    }
    free(pc->ring);
    free(pc);
}

/* Join the pacer of ti's token (made when ti is its first instance). */
static int pacer_join(struct tg_instance *ti)
{
    uint64_t h = token_hash(ti->token);
    struct tg_pacer **bucket = &pacers[h % TG_PACER_BUCKETS], *pc;

    for (pc = *bucket; pc; pc = pc->next)
        if (pc->token_hash == h && !strcmp(pc->members->token, ti->token))
            break;
    if (!pc) {
        if (!(pc = calloc(1, sizeof(*pc))))
            return -1;
        pc->token_hash = h;
        pc->queue_tail = &pc->queue;
        pc->next = *bucket;
        *bucket = pc;
    }
    ti->pacer_next = pc->members;
    pc->members = ti;
    pc->refs++;
    ti->pacer = pc;
    if (pacer_settle(pc) == 0)
        return 0;
    host->log(plugin_self, ti->inst, SB_LOG_ERROR, "out of memory for the pacer");
    return 0; /* the old window stays; pacing still works on it */
}

/* Leave the pacer: ti's queued sends fail (retryable); the last member frees it. */
static void pacer_leave(struct tg_instance *ti)
{
    struct tg_pacer *pc = ti->pacer, **link;
    struct tg_pending **pl, *p;
    struct tg_instance **ml;

    if (!pc)
        return;
    ti->pacer = NULL;
    for (pl = &pc->queue; (p = *pl);) {
        sb_send_result res = {.ok = 0,
                              .retryable = 1,
                              .error_code = "instance_stopped",
                              .error_message = "the instance stopped before the message went out"};
        if (p->ti != ti) {
            pl = &p->next;
            continue;
        }
        *pl = p->next;
        pc->queued--;
        ti->queued--;
        p->done(p->done_arg, &res);
        pending_free(p);
    }
    pc->queue_tail = &pc->queue;
    for (p = pc->queue; p; p = p->next)
        pc->queue_tail = &p->next;
    for (ml = &pc->members; *ml && *ml != ti; ml = &(*ml)->pacer_next)
        ;
    if (*ml)
        *ml = ti->pacer_next;
    if (--pc->refs) {
        pacer_settle(pc); /* the limits may loosen: let out what now may go */
        pump(pc);
        return;
    }
    for (link = &pacers[pc->token_hash % TG_PACER_BUCKETS]; *link && *link != pc;
         link = &(*link)->next)
        ;
    if (*link)
        *link = pc->next;
    pacer_free(pc);
}

/* ---- sending ---- */

static void send_finish(struct tg_call *c, const sb_send_result *res)
{
    if (res->ok)
        c->ti->sent++;
    else
        c->ti->failed++;
    c->done(c->done_arg, res);
}

static void on_sent(struct tg_call *c, const sb_http_response *resp, json_t *doc)
{
    struct tg_instance *ti = c->ti;
    sb_send_result res = {0};
    char idbuf[32], code[32], msgbuf[512];

    tg_auth_seen(ti, resp, doc);
    if (tg_ok(resp, doc)) {
        json_t *mid = json_object_get(json_object_get(doc, "result"), "message_id");

        snprintf(idbuf, sizeof(idbuf), "%" JSON_INTEGER_FORMAT, json_integer_value(mid));
        res.ok = 1;
        res.provider_msg_id = idbuf;
        send_finish(c, &res);
        return;
    }
    if (resp->status == 0) {
        res.retryable = 1;
        res.error_code = "transport";
        res.error_message = tg_description(resp, doc);
        send_finish(c, &res);
        return;
    }
    {
        int ec = tg_error_code(resp, doc);
        json_t *migrate = json_object_get(json_object_get(doc, "parameters"), "migrate_to_chat_id");

        res.retryable = ec == 429 || ec >= 500 || resp->status >= 500;
        res.retry_after_ms = res.retryable ? tg_retry_after(resp, doc) : 0;
        if (ec == 429 && res.retry_after_ms)
            chat_hold(ti->pacer, c->chat, res.retry_after_ms);
        snprintf(code, sizeof(code), "telegram_%d", ec);
        if (json_is_integer(migrate))
            snprintf(msgbuf, sizeof(msgbuf), "%s (the group is now chat %" JSON_INTEGER_FORMAT ")",
                     tg_description(resp, doc), json_integer_value(migrate));
        else
            snprintf(msgbuf, sizeof(msgbuf), "%s", tg_description(resp, doc));
        res.error_code = code;
        res.error_message = msgbuf;
        send_finish(c, &res);
    }
}

/* chat_id: Integer or String (@channelusername). */
static json_t *chat_id_of(const char *to)
{
    const char *p = to;
    char *end;
    long long v;

    if (*p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return json_string(to);
    v = strtoll(to, &end, 10);
    return *end ? json_string(to) : json_integer(v);
}

static json_t *integer_of(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);

    return *s && !*end ? json_integer(v) : NULL;
}

/*
 * Fill body with what every send method shares. Returns NULL, or the reason
 * the message cannot be sent (a permanent failure).
 */
static const char *common_fields(json_t *body, const json_t *msg)
{
    const char *reply_to = json_string_value(json_object_get(msg, "reply_to"));
    const char *thread = json_string_value(json_object_get(msg, "thread"));
    const char *format = json_string_value(json_object_get(msg, "format"));
    json_t *buttons = json_object_get(msg, "buttons");
    json_t *quick = json_object_get(msg, "quick_replies"), *b;
    size_t i;

    json_object_set_new(body, "chat_id", chat_id_of(json_string_value(json_object_get(msg, "to"))));
    if (reply_to) {
        json_t *id = integer_of(reply_to);
        if (!id)
            return "reply_to must be a Telegram message_id (an integer)";
        json_object_set_new(
            body, "reply_parameters",
            json_pack("{s:o,s:b}", "message_id", id, "allow_sending_without_reply", 1));
    }
    if (thread) {
        json_t *id = integer_of(thread);
        if (!id)
            return "thread must be a Telegram message_thread_id (an integer)";
        json_object_set_new(body, "message_thread_id", id);
    }
    if (format && !strcmp(format, "markdown"))
        json_object_set_new(body, "parse_mode", json_string("MarkdownV2"));
    else if (format && !strcmp(format, "html"))
        json_object_set_new(body, "parse_mode", json_string("HTML"));
    if (json_is_array(buttons)) {
        json_t *rows = json_array();

        json_array_foreach (buttons, i, b) {
            const char *id = json_string_value(json_object_get(b, "id"));
            /* callback_data is 1-64 bytes. */
            if (!id || !*id || strlen(id) > 64) {
                json_decref(rows);
                return "a button id must be 1 to 64 bytes on Telegram (callback_data)";
            }
            json_array_append_new(
                rows,
                json_pack("[{s:O,s:s}]", "text", json_object_get(b, "title"), "callback_data", id));
        }
        json_object_set_new(body, "reply_markup", json_pack("{s:o}", "inline_keyboard", rows));
    } else if (json_is_array(quick)) {
        json_t *rows = json_array();

        json_array_foreach (quick, i, b)
            json_array_append_new(rows, json_pack("[{s:O}]", "text", json_object_get(b, "title")));
        json_object_set_new(body, "reply_markup",
                            json_pack("{s:o,s:b,s:b}", "keyboard", rows, "one_time_keyboard", 1,
                                      "resize_keyboard", 1));
    }
    return NULL;
}

static const char *media_method(const char *kind, const char **field)
{
    if (!strcmp(kind, "image")) {
        *field = "photo";
        return "sendPhoto";
    }
    if (!strcmp(kind, "video")) {
        *field = "video";
        return "sendVideo";
    }
    if (!strcmp(kind, "audio")) {
        *field = "audio";
        return "sendAudio";
    }
    *field = "document";
    return "sendDocument";
}

/* The caption: the message text, then the media caption, joined by a blank line. */
static char *caption_of(const json_t *msg, const json_t *media)
{
    const char *text = json_string_value(json_object_get(msg, "text"));
    const char *cap = json_string_value(json_object_get(media, "caption"));

    if (text && *text && cap && *cap)
        return pu_printf("%s\n\n%s", text, cap);
    return pu_strdup(text && *text ? text : cap);
}

static int tg_send(sb_instance *inst, void *state, const json_t *msg, sb_send_done_fn done,
                   void *done_arg)
{
    struct tg_instance *ti = state;
    json_t *media = json_object_get(msg, "media");
    json_t *body = json_object();
    const char *why = NULL, *method = "sendMessage", *ctype = NULL;
    const char *to = json_string_value(json_object_get(msg, "to"));
    char *text = NULL;
    size_t len = 0;
    int built = -1;

    if (!to || !*to) {
        why = "\"to\" must be a chat id";
    } else if (!(why = common_fields(body, msg))) {
        if (json_is_object(media)) {
            const char *field, *url = json_string_value(json_object_get(media, "url"));
            char *caption = caption_of(msg, media);

            method = media_method(
                pu_media_kind(json_string_value(json_object_get(media, "mime_type"))), &field);
            if (caption)
                json_object_set_new(body, "caption", json_string(caption));
            free(caption);
            if (url) {
                json_object_set_new(body, field, json_string(url));
            } else {
                struct pu_multipart mp;
                int r = pu_mp_upload(&mp, body, field, media, field, &why);

                if (r == 0) {
                    /* The buffer becomes the pending body; the boundary type is copied. */
                    text = (char *)mp.buf.p;
                    len = mp.buf.len;
                    built = enqueue(ti, to, method, text, len, mp.content_type, done, done_arg);
                    json_decref(body);
                    return built;
                }
                if (r == -2) {
                    json_decref(body);
                    return -1;
                }
            }
        } else {
            json_object_set(body, "text", json_object_get(msg, "text"));
        }
    }
    if (!why) {
        text = json_dumps(body, JSON_COMPACT);
        len = text ? strlen(text) : 0;
    }
    json_decref(body);
    if (why) {
        sb_send_result res = {.ok = 0, .error_code = "invalid_message", .error_message = why};
        ti->failed++;
        done(done_arg, &res);
        return 0;
    }
    if (!text)
        return -1;
    return enqueue(ti, to, method, text, len, ctype, done, done_arg);
}

/* ---- lifecycle ---- */

static void ti_free(struct tg_instance *ti)
{
    free(ti->token);
    free(ti->secret);
    free(ti->public_url);
    free(ti->api_base);
    free(ti->webhook_url);
    json_decref(ti->allowed_updates);
    free(ti);
}

static uint32_t setting_uint(const json_t *settings, const char *key, uint32_t dflt)
{
    json_t *v = json_object_get(settings, key);

    return json_is_integer(v) && json_integer_value(v) >= 0 ? (uint32_t)json_integer_value(v)
                                                            : dflt;
}

static char *trim_slash(char *s)
{
    size_t n = s ? strlen(s) : 0;

    while (n && s[n - 1] == '/')
        s[--n] = '\0';
    return s;
}

static int fail_start(sb_instance *inst, struct tg_instance *ti, const char *why)
{
    host->set_state(inst, SB_STATE_ERROR, why);
    host->log(plugin_self, inst, SB_LOG_ERROR, "%s", why);
    ti_free(ti);
    return -1;
}

static int tg_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    struct tg_instance *ti = calloc(1, sizeof(*ti));
    const char *mode = json_string_value(json_object_get(settings, "mode"));
    json_t *timeout = json_object_get(settings, "poll_timeout");
    json_t *allowed = json_object_get(settings, "allowed_updates");
    char *stored = NULL;

    if (!ti) {
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    ti->inst = inst;
    ti->token = pu_json_strdup(settings, "bot_token", NULL);
    ti->secret = pu_json_strdup(settings, "webhook_secret", NULL);
    ti->public_url = trim_slash(pu_json_strdup(settings, "public_url", NULL));
    ti->api_base = trim_slash(pu_json_strdup(settings, "api_base", TG_DEFAULT_BASE));
    ti->webhook_mode = mode && !strcmp(mode, "webhook");
    ti->poll_timeout =
        json_is_integer(timeout) ? (int)json_integer_value(timeout) : TG_DEFAULT_POLL_TIMEOUT;
    if (json_is_array(allowed))
        ti->allowed_updates = json_deep_copy(allowed);
    ti->pace_chat_ms = setting_uint(settings, "pace_chat_ms", TG_PACE_CHAT_MS);
    ti->pace_group_ms = setting_uint(settings, "pace_group_ms", TG_PACE_GROUP_MS);
    ti->pace_global = setting_uint(settings, "pace_global_per_second", TG_PACE_GLOBAL);
    if (!ti->token)
        return fail_start(inst, ti, "settings.bot_token is required");
    if (!ti->api_base)
        return fail_start(inst, ti, "out of memory");
    if (ti->webhook_mode) {
        if (!ti->public_url)
            return fail_start(inst, ti, "webhook mode needs settings.public_url");
        if (!ti->secret)
            return fail_start(inst, ti, "webhook mode needs settings.webhook_secret");
        ti->webhook_url =
            pu_printf("%s/webhook/telegram/%s", ti->public_url, host->instance_id(inst));
        if (!ti->webhook_url)
            return fail_start(inst, ti, "out of memory");
    }
    if (pacer_join(ti))
        return fail_start(inst, ti, "out of memory");
    if (host->kv_get(inst, "offset", &stored) == SB_OK && stored) {
        ti->offset = strtoll(stored, NULL, 10);
        free(stored);
    }
    *state = ti;
    host->set_state(inst, SB_STATE_CONNECTING, NULL);
    schedule(ti, 0, ti->webhook_mode ? set_webhook : start_polling);
    host->log(plugin_self, inst, SB_LOG_INFO, "telegram instance started (%s, offset %lld)",
              ti->webhook_mode ? "webhook" : "polling", ti->offset);
    return 0;
}

static void tg_instance_stop(sb_instance *inst, void *state)
{
    struct tg_instance *ti = state;

    if (ti->timer)
        host->timer_cancel(ti->timer);
    pacer_leave(ti);
    while (ti->calls) {
        struct tg_call *c = ti->calls;

        ti->calls = c->next;
        host->http_cancel(c->call);
        if (c->done) {
            sb_send_result res = {.ok = 0,
                                  .retryable = 1,
                                  .error_code = "instance_stopped",
                                  .error_message = "the instance stopped before the answer came"};
            c->done(c->done_arg, &res);
        }
        free(c->chat);
        free(c);
    }
    ti_free(ti);
}

static json_t *tg_status(sb_instance *inst, void *state)
{
    const struct tg_instance *ti = state;
    const struct tg_pacer *pc = ti->pacer;

    return json_pack(
        "{s:s,s:s?,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:{s:I,s:I,s:I,s:I,s:I,s:I}}", "mode",
        ti->webhook_mode ? "webhook" : "polling", "webhook_url", ti->webhook_url, "offset",
        (json_int_t)ti->offset, "updates", (json_int_t)ti->updates, "sent", (json_int_t)ti->sent,
        "failed", (json_int_t)ti->failed, "refused", (json_int_t)ti->refused, "queued",
        (json_int_t)ti->queued, "paced", (json_int_t)ti->paced,
        /* the bot token's pacer, shared by its instances */
        "pacer", "instances", (json_int_t)pc->refs, "queued", (json_int_t)pc->queued, "paced",
        (json_int_t)pc->paced, "chat_ms", (json_int_t)pc->pace_chat_ms, "group_ms",
        (json_int_t)pc->pace_group_ms, "global_per_second", (json_int_t)pc->pace_global);
}

static int tg_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    host = services;
    plugin_self = self;
    if (!pu_services_usable(services, self, "telegram", PU_SERVICES_THROUGH(reply_header)))
        return -1;
    return 0;
}

static void tg_shutdown(sb_plugin *self)
{
    host = NULL;
    plugin_self = NULL;
}

SWITCHBOARD_PLUGIN_INIT(.name = "telegram", .version = TG_VERSION,
                        .description = "Telegram Bot API (webhook or getUpdates long polling)",
                        .capabilities = SB_CAP_MEDIA | SB_CAP_BUTTONS | SB_CAP_EDITS |
                                        SB_CAP_WEBHOOK | SB_CAP_POLLING,
                        .settings_schema = TG_SCHEMA, .init = tg_init, .shutdown = tg_shutdown,
                        .instance_start = tg_instance_start, .instance_stop = tg_instance_stop,
                        .send = tg_send, .webhook = tg_webhook, .status = tg_status)
