/*
 * Test plugin: a valid "echo" descriptor whose init logs why and fails.
 *
 * The loader must refuse it ("plugin refused" with the reason) and, when it
 * replaces a running echo.so, keep the old generation serving.
 */
#include <switchboard/switchboard.h>

static int fail_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    services->log(self, NULL, SB_LOG_ERROR, "init_fail: deliberate init failure (test plugin)");
    return -1;
}

/* The callbacks below are never reached, but the descriptor must be complete. */
static void fail_shutdown(sb_plugin *self) {}

static int fail_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    *state = NULL;
    return 0;
}

static void fail_instance_stop(sb_instance *inst, void *state) {}

SWITCHBOARD_PLUGIN_INIT(.name = "echo", .version = "0.0.0-init-fail",
                        .description = "test plugin whose init always fails",
                        .capabilities = SB_CAP_WEBHOOK, .settings_schema = "{\"type\":\"object\"}",
                        .init = fail_init, .shutdown = fail_shutdown,
                        .instance_start = fail_instance_start, .instance_stop = fail_instance_stop)
