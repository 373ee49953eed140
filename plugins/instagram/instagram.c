/*
 * instagram: Instagram Messaging through the Graph API (Instagram API with
 * Instagram Login: graph.instagram.com). The Send API and the messaging[]
 * webhooks are shared with Messenger in meta-common/messaging.c. Choices go
 * out as quick replies; a message's "template" (generic or button, the two
 * the Instagram API with Instagram Login documents) goes out as a template
 * attachment, as on Messenger; inbound story replies and story mentions are
 * flagged in the event ("story_reply": {id, url}, "story_mention": {url}).
 */
#include <switchboard/switchboard.h>

#include "../meta-common/messaging.h"

#define INSTAGRAM_SCHEMA                                                                           \
    "{\"type\":\"object\",\"properties\":{"                                                        \
    "\"ig_account_id\":{\"type\":\"string\",\"minLength\":1},"                                     \
    "\"access_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true},"                   \
    "\"app_secret\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true,"                      \
    "\"description\":\"signs webhooks (X-Hub-Signature-256)\"},"                                   \
    "\"verify_token\":{\"type\":\"string\",\"minLength\":1,\"writeOnly\":true},"                   \
    "\"graph_version\":{\"type\":\"string\",\"pattern\":\"^v[0-9]+\\\\.[0-9]+$\"},"                \
    "\"api_base\":{\"type\":\"string\",\"minLength\":1,"                                           \
    "\"description\":\"Graph API base URL (default https://graph.instagram.com)\"}"                \
    "},\"required\":[\"access_token\",\"app_secret\"],\"additionalProperties\":false}"

static const struct mm_flavour instagram = {.name = "instagram",
                                            .object = "instagram",
                                            .default_base = "https://graph.instagram.com",
                                            .token_key = "access_token",
                                            .button_template = 0,
                                            .profile = 0,
                                            .templates = 1,
                                            .template_types = "generic button"};

static int instagram_start(sb_instance *inst, const json_t *settings, void **state)
{
    return mm_instance_start(&instagram, inst, settings, state);
}

SWITCHBOARD_PLUGIN_INIT(
        .name = "instagram", .version = "1.0.0",
        .description = "Instagram Messaging (Graph API DMs, story replies and mentions)",
        .capabilities = SB_CAP_MEDIA | SB_CAP_BUTTONS | SB_CAP_WEBHOOK,
        .settings_schema = INSTAGRAM_SCHEMA, .init = mm_init, .shutdown = mm_shutdown,
        .instance_start = instagram_start, .instance_stop = mm_instance_stop, .send = mm_send,
        .webhook = mm_webhook, .status = mm_status)
