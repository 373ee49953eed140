/*
 * Messages: POST /v1/instances/{id}/messages (durable, 202 once stored),
 * GET /v1/instances/{id}/messages (both directions, newest first) and
 * GET /v1/messages/{id}. Parts a provider cannot show are degraded here,
 * before the message is stored, and the answer says what was.
 */
#include "api.h"

#include "outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>
#include <openssl/rand.h>

#define MAX_TEXT 65536
#define MAX_CHOICES 13

#define MSG_COLUMNS                                                                                \
    "id, instance_id, direction, state, recipient, sender, body, provider_message_id, "            \
    "degraded, attempts, last_error, "                                                             \
    "DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS created_at, "                             \
    "DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS updated_at"

static const char *in_str(const struct sbh_call *call, const char *key)
{
    return json_string_value(json_object_get(call->in, key));
}

/* ---- validation ---- */

static int check_choices(struct sbh_call *call, const char *field)
{
    json_t *list = json_object_get(call->body, field), *c;
    size_t i;
    if (!list)
        return 0;
    if (!json_is_array(list) || json_array_size(list) == 0 || json_array_size(list) > MAX_CHOICES) {
        sbh_call_error(call, 400, "invalid_field", field, "%s must be an array of 1 to %d items",
                       field, MAX_CHOICES);
        return -1;
    }
    json_array_foreach (list, i, c) {
        const char *title = json_string_value(json_object_get(c, "title"));
        if (!json_is_object(c) || !json_is_string(json_object_get(c, "id")) || !title || !*title) {
            char where[64];
            snprintf(where, sizeof(where), "%s[%zu]", field, i);
            sbh_call_error(call, 400, "invalid_field", where, "each item needs an id and a title");
            return -1;
        }
    }
    return 0;
}

static int check_media(struct sbh_call *call)
{
    static const char *const allowed[] = {"url",     "data_base64", "mime_type",
                                          "caption", "filename",    NULL};
    json_t *media = json_object_get(call->body, "media");
    const char *key;
    json_t *v;
    if (!media)
        return 0;
    if (!json_is_object(media)) {
        sbh_call_error(call, 400, "invalid_field", "media", "media must be an object");
        return -1;
    }
    json_object_foreach (media, key, v) {
        const char *const *a = allowed;
        while (*a && strcmp(*a, key))
            a++;
        if (!*a || !json_is_string(v)) {
            char field[96];
            snprintf(field, sizeof(field), "media.%s", key);
            sbh_call_error(call, 400, "invalid_field", field,
                           *a ? "must be a string" : "unknown field");
            return -1;
        }
    }
    if (!json_object_get(media, "url") == !json_object_get(media, "data_base64")) {
        sbh_call_error(call, 400, "invalid_field", "media",
                       "media needs exactly one of url and data_base64");
        return -1;
    }
    if (!json_object_get(media, "mime_type")) {
        sbh_call_error(call, 400, "invalid_field", "media.mime_type", "mime_type is required");
        return -1;
    }
    return 0;
}

static int check_message(struct sbh_call *call)
{
    static const char *const allowed[] = {
        "to",       "text",   "media",  "buttons",  "quick_replies",
        "reply_to", "thread", "format", "template", "provider_options",
        NULL};
    if (sbh_call_body_object(call, allowed) < 0)
        return -1;
    json_t *b = call->body, *text = json_object_get(b, "text");
    const char *to = json_string_value(json_object_get(b, "to"));
    if (!to || !*to || strlen(to) > 255) {
        sbh_call_error(call, 400, "invalid_field", "to", "to is required (1 to 255 characters)");
        return -1;
    }
    if (text && (!json_is_string(text) || json_string_length(text) > MAX_TEXT)) {
        sbh_call_error(call, 400, "invalid_field", "text",
                       "text must be a string of at most %d bytes", MAX_TEXT);
        return -1;
    }
    if (!text && !json_object_get(b, "media") && !json_object_get(b, "template")) {
        sbh_call_error(call, 400, "invalid_field", "text",
                       "a message needs text, media or a template");
        return -1;
    }
    /* Formatting is opt-in: plain text unless the caller names a markup. */
    json_t *format = json_object_get(b, "format");
    if (format && (!json_is_string(format) || (strcmp(json_string_value(format), "plain") &&
                                               strcmp(json_string_value(format), "markdown") &&
                                               strcmp(json_string_value(format), "html")))) {
        sbh_call_error(call, 400, "invalid_field", "format",
                       "format must be \"plain\", \"markdown\" or \"html\"");
        return -1;
    }
    /*
     * A provider template, passed through as given: WhatsApp's names a
     * registered template ("name"), Messenger's is a template payload
     * ("template_type": button, generic, media, ...).
     */
    json_t *template = json_object_get(b, "template");
    if (template && (!json_is_object(template) ||
                     (!json_is_string(json_object_get(template, "name")) &&
                      !json_is_string(json_object_get(template, "template_type"))))) {
        sbh_call_error(call, 400, "invalid_field", "template",
                       "template must be an object with a name (WhatsApp) or a template_type "
                       "(Messenger)");
        return -1;
    }
    static const char *const strings[] = {"reply_to", "thread"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(b, strings[i]);
        if (v && !json_is_string(v)) {
            sbh_call_error(call, 400, "invalid_field", strings[i], "must be a string");
            return -1;
        }
    }
    json_t *po = json_object_get(b, "provider_options");
    if (po && !json_is_object(po)) {
        sbh_call_error(call, 400, "invalid_field", "provider_options", "must be an object");
        return -1;
    }
    return check_media(call) < 0 || check_choices(call, "buttons") < 0 ||
                   check_choices(call, "quick_replies") < 0
               ? -1
               : 0;
}

/* ---- degradation ---- */

static void append_text(json_t *msg, const char *extra)
{
    const char *text = json_string_value(json_object_get(msg, "text"));
    size_t len = (text ? strlen(text) : 0) + strlen(extra) + 3;
    char *joined = malloc(len);
    if (!joined)
        return;
    snprintf(joined, len, "%s%s%s", text ? text : "", text && *text ? "\n\n" : "", extra);
    json_object_set_new(msg, "text", json_string(joined));
    free(joined);
}

/* Choices the provider cannot show become a numbered list in the text. */
static void choices_as_text(json_t *msg, const char *field, json_t *degraded)
{
    json_t *list = json_object_get(msg, field), *c;
    size_t i, len = 0;
    char *buf = NULL;
    FILE *out = open_memstream(&buf, &len);
    if (!out)
        return;
    json_array_foreach (list, i, c)
        fprintf(out, "%s%zu. %s", i ? "\n" : "", i + 1,
                json_string_value(json_object_get(c, "title")));
    if (fclose(out) == 0)
        append_text(msg, buf);
    free(buf);
    json_object_del(msg, field);
    json_array_append_new(degraded, json_string(field));
}

/* What this provider cannot show is rewritten, never refused. New reference. */
static json_t *degrade(json_t *msg, uint32_t caps)
{
    json_t *degraded = json_array();
    if (json_object_get(msg, "buttons") && !(caps & SB_CAP_BUTTONS))
        choices_as_text(msg, "buttons", degraded);
    if (json_object_get(msg, "quick_replies") && !(caps & SB_CAP_BUTTONS))
        choices_as_text(msg, "quick_replies", degraded);
    json_t *media = json_object_get(msg, "media");
    if (media && !(caps & SB_CAP_MEDIA)) {
        const char *caption = json_string_value(json_object_get(media, "caption"));
        const char *url = json_string_value(json_object_get(media, "url"));
        char *line = NULL;
        if (asprintf(&line, "%s%s%s", caption ? caption : "", caption ? "\n" : "",
                     url ? url : "[an attachment this provider cannot show was left out]") >= 0)
            append_text(msg, line);
        free(line);
        json_object_del(msg, "media");
        json_array_append_new(degraded, json_string("media"));
    }
    if (json_object_get(msg, "thread") && !(caps & SB_CAP_THREADS)) {
        json_object_del(msg, "thread");
        json_array_append_new(degraded, json_string("thread"));
    }
    return degraded;
}

/* ---- send ---- */

struct accepted {
    struct sbh_call *call;
    json_t *degraded;
};

static void on_accepted(void *arg, int rc, const char *id, int duplicate)
{
    struct accepted *acc = arg;
    struct sbh_call *call = acc->call;
    if (rc != SBH_DB_OK) {
        json_decref(acc->degraded);
        free(acc);
        sbh_call_db_error(call, rc);
        return;
    }
    sbh_call_reply(call, 202,
                   json_pack("{s:s, s:s, s:o, s:b}", "id", id, "state", "queued", "degraded",
                             acc->degraded, "duplicate", duplicate));
    free(acc);
}

static void make_id(char *out, size_t len)
{
    unsigned char raw[12];
    RAND_bytes(raw, sizeof(raw));
    size_t off = (size_t)snprintf(out, len, "msg_");
    for (size_t i = 0; i < sizeof(raw) && off + 2 < len; i++)
        off += (size_t)snprintf(out + off, len - off, "%02x", raw[i]);
}

static void send_message(struct sbh_call *call)
{
    uint32_t caps;
    const char *provider;
    sbh_registry_instance_caps(call->d->reg, call->id, &caps, &provider);
    if (check_message(call) < 0)
        return;
    const char *key =
        evhttp_find_header(evhttp_request_get_input_headers(call->req), "Idempotency-Key");
    if (key && (!*key || strlen(key) > 255))
        return sbh_call_error(call, 400, "invalid_header", "Idempotency-Key",
                              "Idempotency-Key must be 1 to 255 characters");
    json_t *msg = json_deep_copy(call->body);
    struct accepted *acc = calloc(1, sizeof(*acc));
    if (!msg || !acc) {
        json_decref(msg);
        free(acc);
        return sbh_call_error(call, 500, "internal", NULL, "out of memory");
    }
    acc->call = call;
    acc->degraded = degrade(msg, caps);
    char id[40];
    make_id(id, sizeof(id));
    json_t *row = json_pack("{s:s, s:s, s:O, s:o, s:O, s:s?}", "id", id, "instance_id", call->id,
                            "recipient", json_object_get(msg, "to"), "body", msg, "degraded",
                            json_array_size(acc->degraded) ? acc->degraded : json_null(),
                            "idempotency_key", key);
    sbh_outbox_accept(call->d->outbox, row, on_accepted, acc);
}

/* ---- reads ---- */

static json_t *message_doc(const struct sbh_daemon *d, const json_t *row)
{
    const char *id = json_string_value(json_object_get(row, "id"));
    const char *live = sbh_outbox_live_state(d->outbox, id);
    json_t *body = json_loads(json_string_value(json_object_get(row, "body")), 0, NULL);
    const char *deg_text = json_string_value(json_object_get(row, "degraded"));
    json_t *degraded = deg_text ? json_loads(deg_text, 0, NULL) : NULL;
    return json_pack(
        "{s:O, s:O, s:O, s:s, s:O, s:O, s:o, s:O, s:o, s:O, s:O, s:O, s:O}", "id",
        json_object_get(row, "id"), "instance_id", json_object_get(row, "instance_id"), "direction",
        json_object_get(row, "direction"), "state",
        live ? live : json_string_value(json_object_get(row, "state")), "to",
        json_object_get(row, "recipient"), "from", json_object_get(row, "sender"), "body",
        body ? body : json_object(), "provider_message_id",
        json_object_get(row, "provider_message_id"), "degraded", degraded ? degraded : json_array(),
        "attempts", json_object_get(row, "attempts"), "last_error",
        json_object_get(row, "last_error"), "created_at", json_object_get(row, "created_at"),
        "updated_at", json_object_get(row, "updated_at"));
}

static int work_get(MYSQL *conn, struct sbh_call *call)
{
    json_t *rows = NULL;
    int rc = sbh_db_query(conn, &rows, "SELECT " MSG_COLUMNS " FROM messages WHERE id = ?", "s",
                          in_str(call, "id"));
    if (rc == SBH_DB_OK && json_array_size(rows) == 0)
        rc = SBH_DB_NOTFOUND;
    if (rc == SBH_DB_OK)
        call->out = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    return rc;
}

static void then_got(struct sbh_call *call, int rc)
{
    if (rc == SBH_DB_OK && !sbh_principal_allows(&call->who, json_string_value(json_object_get(
                                                                 call->out, "instance_id"))))
        rc = SBH_DB_NOTFOUND;
    if (rc == SBH_DB_NOTFOUND)
        return sbh_call_error(call, 404, "not_found", NULL, "no such message");
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    sbh_call_reply(call, 200, message_doc(call->d, call->out));
}

static int work_list(MYSQL *conn, struct sbh_call *call)
{
    const char *cursor = in_str(call, "cursor");
    const char *bar = cursor ? strchr(cursor, '|') : NULL;
    char when[64] = "9999-12-31 23:59:59.999999";
    const char *after_id = "";
    if (bar && (size_t)(bar - cursor) < sizeof(when)) {
        snprintf(when, sizeof(when), "%.*s", (int)(bar - cursor), cursor);
        after_id = bar + 1;
    }
    /* Newest first; the cursor is the last row's (created_at, id). */
    return sbh_db_query(conn, &call->out,
                        "SELECT " MSG_COLUMNS ", CAST(created_at AS CHAR) AS cursor_at "
                        "FROM messages WHERE instance_id = ? AND (created_at < ? OR "
                        "(created_at = ? AND id < ?)) ORDER BY created_at DESC, id DESC LIMIT ?",
                        "ssssi", in_str(call, "instance"), when, when, after_id,
                        json_integer_value(json_object_get(call->in, "limit")) + 1);
}

static void then_listed(struct sbh_call *call, int rc)
{
    if (rc != SBH_DB_OK)
        return sbh_call_db_error(call, rc);
    size_t limit = (size_t)json_integer_value(json_object_get(call->in, "limit")), i;
    json_t *items = json_array(), *row, *next = json_null();
    json_array_foreach (call->out, i, row) {
        if (i == limit) {
            const json_t *last = json_array_get(call->out, i - 1);
            char cur[160];
            snprintf(cur, sizeof(cur), "%s|%s",
                     json_string_value(json_object_get(last, "cursor_at")),
                     json_string_value(json_object_get(last, "id")));
            next = json_string(cur);
            break;
        }
        json_array_append_new(items, message_doc(call->d, row));
    }
    sbh_call_reply(call, 200, json_pack("{s:o, s:o}", "messages", items, "next_cursor", next));
}

static void list_messages(struct sbh_call *call)
{
    uint32_t caps;
    const char *provider;
    if (sbh_registry_instance_caps(call->d->reg, call->id, &caps, &provider) < 0)
        return sbh_call_error(call, 404, "not_found", NULL, "no such instance");
    struct evkeyvalq q;
    const char *uri_query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(call->req));
    TAILQ_INIT(&q);
    if (uri_query && evhttp_parse_query_str(uri_query, &q) < 0)
        return sbh_call_error(call, 400, "invalid_query", NULL, "malformed query string");
    const char *limit_s = evhttp_find_header(&q, "limit"),
               *cursor = evhttp_find_header(&q, "cursor");
    char *end = NULL;
    long limit = limit_s ? strtol(limit_s, &end, 10) : 50;
    if (limit < 1 || limit > 500 || (end && *end)) {
        evhttp_clear_headers(&q);
        return sbh_call_error(call, 400, "invalid_field", "limit", "limit must be 1 to 500");
    }
    call->in = json_pack("{s:s, s:s?, s:I}", "instance", call->id, "cursor", cursor, "limit",
                         (json_int_t)limit);
    evhttp_clear_headers(&q);
    sbh_call_db(call, work_list, then_listed);
}

void sbh_api_instance_messages(struct sbh_call *call, enum evhttp_cmd_type method)
{
    uint32_t caps;
    const char *provider;
    if (sbh_registry_instance_caps(call->d->reg, call->id, &caps, &provider) < 0)
        return sbh_call_error(call, 404, "not_found", NULL, "no such instance");
    if (method == EVHTTP_REQ_POST)
        return send_message(call);
    if (method == EVHTTP_REQ_GET)
        return list_messages(call);
    sbh_call_error(call, 405, "method_not_allowed", NULL, "GET or POST");
}

void sbh_api_messages(struct sbh_call *call, enum evhttp_cmd_type method)
{
    if (!*call->id || method != EVHTTP_REQ_GET)
        return sbh_call_error(call, 405, "method_not_allowed", NULL, "GET /v1/messages/{id}");
    call->in = json_pack("{s:s}", "id", call->id);
    sbh_call_db(call, work_get, then_got);
}
