/*
 * The Messenger Platform and Instagram Messaging share one Send API
 * (POST /<version>/me/messages with recipient.id, messaging_type RESPONSE
 * and a message) and one webhook shape (entry[].messaging[]), so both
 * plugins are this code with a different descriptor. Compile messaging.c
 * together with meta.c and ../common/plugutil.c.
 */
#ifndef SB_META_MESSAGING_H
#define SB_META_MESSAGING_H

#include <switchboard/switchboard.h>

struct mm_flavour {
    const char *name;           /* "messenger" or "instagram" */
    const char *object;         /* webhook "object": "page" or "instagram" */
    const char *default_base;   /* Graph host */
    const char *token_key;      /* settings key of the access token */
    int button_template;        /* buttons (<= 3) as a button template (Messenger) */
    int profile;                /* set get_started / persistent_menu on start (Messenger) */
    int templates;              /* message "template" sent as a template attachment */
    const char *template_types; /* the template_types it takes, space separated; NULL: any */
    int uploads;                /* media.data_base64 uploaded with the send (filedata; Messenger) */
    int replies;                /* reply_to sent as the Send API's reply_to {mid} (Messenger) */
};

int mm_init(const sb_host_services *services, sb_plugin *self, const json_t *config);
void mm_shutdown(sb_plugin *self);
int mm_instance_start(const struct mm_flavour *fl, sb_instance *inst, const json_t *settings,
                      void **state);
void mm_instance_stop(sb_instance *inst, void *state);
int mm_send(sb_instance *inst, void *state, const json_t *message, sb_send_done_fn done,
            void *done_arg);
void mm_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply);
json_t *mm_status(sb_instance *inst, void *state);

#endif
