/*
 * The descriptor checks every loader of a plugin makes before it calls
 * anything: the daemon's (loader.c) and switchboard-plugin-host's.
 */
#include "desc.h"

#include <stdio.h>
#include <string.h>

#include <jansson.h>

int sbh_desc_check(const sb_plugin_desc *d, const char *expect_name, char *why, size_t why_len)
{
    if (d->abi_major != SB_ABI_MAJOR) {
        snprintf(why, why_len, "ABI major %u, this host speaks %u", d->abi_major, SB_ABI_MAJOR);
        return -1;
    }
    if (d->abi_minor > SB_ABI_MINOR) {
        snprintf(why, why_len, "ABI %u.%u is newer than this host's %u.%u", d->abi_major,
                 d->abi_minor, SB_ABI_MAJOR, SB_ABI_MINOR);
        return -1;
    }
    /* Minor 0 defines every field we read, so anything shorter is corrupt. */
    if (d->struct_size < sizeof(sb_plugin_desc)) {
        snprintf(why, why_len, "descriptor is %u bytes, ABI %u.0 needs %zu", d->struct_size,
                 SB_ABI_MAJOR, sizeof(sb_plugin_desc));
        return -1;
    }
    if (!d->name || !d->version) {
        snprintf(why, why_len, "descriptor has no name or version");
        return -1;
    }
    if (!d->init || !d->shutdown || !d->instance_start || !d->instance_stop) {
        snprintf(why, why_len,
                 "descriptor lacks a required callback (init, shutdown, "
                 "instance_start, instance_stop)");
        return -1;
    }
    if (expect_name && strcmp(d->name, expect_name) != 0) {
        snprintf(why, why_len, "file holds plugin \"%s\", expected \"%s\"", d->name, expect_name);
        return -1;
    }
    if (d->settings_schema) {
        json_t *schema = json_loads(d->settings_schema, 0, NULL);
        int ok = json_is_object(schema);
        json_decref(schema);
        if (!ok) {
            snprintf(why, why_len, "settings_schema is not a JSON object");
            return -1;
        }
    }
    return 0;
}
