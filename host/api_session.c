/*
 * Browser sessions of process-isolated instances (WhatsApp Web): the login
 * QR code a plugin reports in its status, and logout, which throws the
 * instance's state directory (its browser profile) away.
 */
#include "api.h"

#include "ipc.h"
#include "isolate.h"
#include "log.h"
#include "registry.h"
#include "supervisor.h"

#include <stdlib.h>
#include <string.h>

static json_t *instance_status(struct sbh_call *call)
{
    return sbh_registry_instance_status(call->d->reg, call->id);
}

static int wants_png(struct sbh_call *call)
{
    const char *uri = evhttp_request_get_uri(call->req);
    const char *accept = evhttp_find_header(evhttp_request_get_input_headers(call->req), "Accept");
    return (uri && strstr(uri, "format=png")) || (accept && strstr(accept, "image/png"));
}

void sbh_api_instance_qr(struct sbh_call *call)
{
    json_t *st = instance_status(call);
    if (!st)
        return sbh_call_error(call, 404, "not_found", NULL, "no such instance");
    json_t *qr = json_object_get(json_object_get(st, "provider_status"), "qr");
    const char *text = json_string_value(json_object_get(qr, "text"));
    const char *png = json_string_value(json_object_get(qr, "png_b64"));
    const char *state = json_string_value(json_object_get(st, "state"));
    /* The state (with the QR text as its detail) can be a moment ahead of the
     * status that carries the image. */
    if (!text && state && !strcmp(state, "qr"))
        text = json_string_value(json_object_get(st, "detail"));
    if (!text || !state || strcmp(state, "qr") != 0) {
        sbh_call_error(call, 409, "no_qr", NULL, "instance %s is %s: there is no QR code to scan",
                       call->id, state ? state : "unknown");
        json_decref(st);
        return;
    }
    if (wants_png(call)) {
        unsigned char *bytes = NULL;
        size_t len = 0;
        if (!png || sbh_b64_decode(png, &bytes, &len) < 0 || len == 0) {
            free(bytes);
            json_decref(st);
            return sbh_call_error(call, 409, "no_qr_image", NULL,
                                  "the plugin reported the QR text but no image");
        }
        json_decref(st);
        sbh_call_reply_raw(call, 200, "image/png", bytes, len);
        free(bytes);
        return;
    }
    json_t *doc = json_pack("{s:s, s:s, s:s}", "id", call->id, "state", state, "text", text);
    if (png) {
        json_object_set_new(doc, "png_base64", json_string(png));
        size_t need = strlen(png) + 32;
        char *url = malloc(need);
        if (url) {
            snprintf(url, need, "data:image/png;base64,%s", png);
            json_object_set_new(doc, "data_url", json_string(url));
            free(url);
        }
    }
    json_t *at = json_object_get(qr, "updated_at");
    if (at)
        json_object_set(doc, "updated_at", at);
    json_decref(st);
    sbh_call_reply(call, 200, doc);
}

void sbh_api_instance_logout(struct sbh_call *call)
{
    struct sbh_registry *reg = call->d->reg;
    int iso = sbh_registry_instance_isolated(reg, call->id);
    if (iso < 0)
        return sbh_call_error(call, 404, "not_found", NULL, "no such instance");
    if (!iso)
        return sbh_call_error(call, 409, "no_session", NULL,
                              "instance %s does not run in a plugin-host and keeps no session "
                              "to log out of",
                              call->id);
    json_t *st = instance_status(call);
    int running = json_is_true(json_object_get(st, "running"));
    json_decref(st);
    /* Stop, wipe the profile once the old process is gone, start afresh (a new QR). */
    if (running)
        sbh_registry_instance_control(reg, call->id, 0, 1);
    char *dir = sbh_isolate_instance_dir(call->d->sv, call->id);
    if (dir)
        sbh_supervisor_wipe(call->d->sv, call->id, dir);
    free(dir);
    if (running)
        sbh_registry_instance_control(reg, call->id, 1, 0);
    sbh_log(SB_LOG_INFO, "api", NULL, call->id, "instance logged out by key %s", call->who.key_id);
    st = instance_status(call);
    sbh_call_reply(call, 200,
                   json_pack("{s:s, s:b, s:o}", "id", call->id, "logged_out", 1, "status",
                             st ? st : json_object()));
}
