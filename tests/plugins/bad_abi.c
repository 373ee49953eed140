/*
 * Test plugin: a well-formed echo descriptor that claims ABI major 99.
 *
 * The loader must refuse it after reading only the three header fields, and
 * never call init. Everything else is valid so that the ABI check is the only
 * possible reason for the refusal.
 */
#include <switchboard/switchboard.h>

static int bad_init(const sb_host_services *services, sb_plugin *self, const json_t *config)
{
    return 0;
}

static void bad_shutdown(sb_plugin *self) {}

static int bad_instance_start(sb_instance *inst, const json_t *settings, void **state)
{
    *state = NULL;
    return 0;
}

static void bad_instance_stop(sb_instance *inst, void *state) {}

/*
 * Written out by hand: SWITCHBOARD_PLUGIN_INIT fills in SB_ABI_MAJOR, and
 * overriding it there would trip -Woverride-init.
 */
static const sb_plugin_desc bad_desc = {
    .abi_major = 99,
    .abi_minor = SB_ABI_MINOR,
    .struct_size = sizeof(sb_plugin_desc),
    .name = "echo",
    .version = "99.0.0-bad-abi",
    .description = "test plugin with an unsupported ABI major",
    .capabilities = SB_CAP_WEBHOOK,
    .settings_schema = "{\"type\":\"object\"}",
    .init = bad_init,
    .shutdown = bad_shutdown,
    .instance_start = bad_instance_start,
    .instance_stop = bad_instance_stop,
};

const sb_plugin_desc *switchboard_plugin_entry(void);
const sb_plugin_desc *switchboard_plugin_entry(void)
{
    return &bad_desc;
}
