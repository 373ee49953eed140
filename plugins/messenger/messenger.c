/*
 * messenger: the Messenger Platform (Facebook Pages) through the Graph API.
 * The Send API and the messaging[] webhooks are shared with Instagram in
 * meta-common/messaging.c; this file is the descriptor and the settings.
 * Buttons (up to 3) go out as a button template (postbacks), more as quick
 * replies; get_started_payload and persistent_menu are set through
 * /me/messenger_profile on start. A message's "template" (a template
 * payload with template_type button, generic, media, ...) goes out as
 * attachment {type: template, payload: <the template>}.
 */
#include <switchboard/switchboard.h>

#include "../meta-common/messaging.h"

#define MESSENGER_SCHEMA                                                                           \
    "{\"type\":\"object\",\"properties\":{"                                                        \
    "\"page_id\":{\"type\":\"string\",\"minLength\":1},"                                           \
    "\"page_access_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true},"              \
    "\"app_secret\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true,"                      \
    "\"description\":\"signs webhooks (X-Hub-Signature-256)\"},"                                   \
    "\"verify_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true},"                   \
    "\"graph_version\":{\"type\":\"string\",\"pattern\":\"^v[0-9]+\\\\.[0-9]+$\"},"                \
    "\"api_base\":{\"type\":\"string\",\"minLength\":1,"                                           \
    "\"description\":\"Graph API base URL (default https://graph.facebook.com)\"},"                \
    "\"get_started_payload\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":1000},"            \
    "\"persistent_menu\":{\"type\":\"array\",\"items\":{\"type\":\"object\"},"                     \
    "\"description\":\"passed to messenger_profile as persistent_menu\"}"                          \
    "},\"required\":[\"page_access_token\",\"app_secret\"],\"additionalProperties\":false}"

static const struct mm_flavour messenger = {.name = "messenger",
                                            .object = "page",
                                            .default_base = "https://graph.facebook.com",
                                            .token_key = "page_access_token",
                                            .button_template = 1,
                                            .profile = 1,
                                            .templates = 1,
                                            .uploads = 1,
                                            .replies = 1};

static int messenger_start(sb_instance *inst, const json_t *settings, void **state)
{
    return mm_instance_start(&messenger, inst, settings, state);
}

SWITCHBOARD_PLUGIN_INIT(.name = "messenger", .version = "1.0.0",
                        .description = "Facebook Messenger Platform (Send API, page webhooks)",
                        .capabilities = SB_CAP_MEDIA | SB_CAP_BUTTONS | SB_CAP_WEBHOOK,
                        .settings_schema = MESSENGER_SCHEMA, .init = mm_init,
                        .shutdown = mm_shutdown, .instance_start = messenger_start,
                        .instance_stop = mm_instance_stop, .send = mm_send, .webhook = mm_webhook,
                        .status = mm_status)
