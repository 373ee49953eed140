/*
 * myprovider: a starting point for an out-of-tree switchboard provider plugin.
 *
 * Build:   make            (uses pkg-config switchboard-sdk)
 * Install: make install    (into the daemon's plugin directory)
 * Enable:  add to /etc/switchboard/conf.d/myprovider.json
 *            {"plugins":{"myprovider":{"enabled":true}},
 *             "instances":{"my-1":{"provider":"myprovider","settings":{}}}}
 *
 * Rules of the ABI (see <switchboard/plugin.h> and <switchboard/services.h>):
 *  - every callback runs on the daemon's single event-loop thread: never
 *    block; use services->timer_start, http_request and ws_connect instead;
 *  - JSON arguments are borrowed unless a comment says "steals";
 *  - answer every webhook exactly once through services->reply().
 *
 * Rename "myprovider" everywhere (the name must match [a-z0-9-]+ and the .so
 * file name), then fill in the places marked TODO.
 */
#include <stdlib.h>
#include <string.h>

#include <switchboard/switchboard.h>

#define MYPROVIDER_VERSION "0.1.0"

/* Per-instance state: everything one configured account needs. */
struct my_instance {
    sb_instance *inst;
    /* TODO: credentials, connection handles, timers, cursors... */
};

/* The host's service table; valid from init until the plugin is unloaded. */
static const sb_host_services *host;
static sb_plugin *plugin_self;

/*
 * Called once when the plugin is loaded. config is this plugin's
 * "plugins.myprovider.config" section of the daemon config (borrowed).
 * Return -1 after logging why to refuse loading.
 */
static int my_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    host = services;
    plugin_self = self;
    /* TODO: read plugin-wide options from config. */
    (void)config;
    host->log(self, NULL, SB_LOG_INFO, "myprovider %s initialised", MYPROVIDER_VERSION);
    return 0;
}

/* Called after every instance has stopped: release plugin-wide resources. */
static void my_shutdown(sb_plugin *self)
{
    (void)self;
    host = NULL;
    plugin_self = NULL;
}

/*
 * Start one instance. settings were validated against MY_SETTINGS_SCHEMA by
 * the host. Connect asynchronously and report progress with set_state().
 */
static int my_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    struct my_instance *mi = calloc(1, sizeof(*mi));

    if (!mi) {
        host->set_state(inst, SB_STATE_ERROR, "out of memory");
        return -1;
    }
    mi->inst = inst;
    /* TODO: copy what you need from settings (they are borrowed), start connecting. */
    (void)settings;
    *state = mi;
    host->set_state(inst, SB_STATE_CONNECTED, NULL);
    return 0;
}

/*
 * Stop the instance synchronously and free its state. The host cancels any
 * timers/requests still tied to the instance afterwards and answers its
 * unanswered webhooks with 503.
 */
static void my_instance_stop(sb_instance *inst, void *state)
{
    struct my_instance *mi = state;

    /* TODO: cancel your timers and requests, close sockets. */
    (void)inst;
    free(mi);
}

/*
 * An inbound webhook from the provider. Verify it (signature headers, secret
 * path...), turn it into events with emit_event(), and answer exactly once.
 */
static void my_webhook(sb_instance *inst, void *state, const sb_http_request *req, sb_reply *reply)
{
    static const char ok[] = "{\"ok\":true}";

    /*
     * TODO: parse req->body (req->body_len bytes, not NUL-terminated), e.g.
     *   json_t *body = json_loadb((const char *)req->body, req->body_len, 0, NULL);
     * then emit:
     *   host->emit_event(inst, "message.received",
     *                    json_pack("{s:s,s:s}", "from", sender, "text", text));
     * and answer 4xx (bad request) or 5xx (provider should retry) on failure.
     */
    (void)inst;
    (void)state;
    (void)req;
    host->reply(reply, 200, "application/json", ok, strlen(ok));
}

/*
 * TODO (optional): implement .send to deliver outgoing messages; call done()
 * exactly once with the result. Without it the host refuses sends for this
 * provider. Likewise .status for provider-specific instance details.
 */

/* JSON Schema of an instance's "settings" object. */
#define MY_SETTINGS_SCHEMA "{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}"

SWITCHBOARD_PLUGIN_INIT(.name = "myprovider", .version = MYPROVIDER_VERSION,
                        .description = "TODO: one line about the messenger",
                        /* TODO: declare what the messenger supports. */
                        .capabilities = SB_CAP_WEBHOOK, .settings_schema = MY_SETTINGS_SCHEMA,
                        .init = my_init, .shutdown = my_shutdown,
                        .instance_start = my_instance_start, .instance_stop = my_instance_stop,
                        .webhook = my_webhook)
