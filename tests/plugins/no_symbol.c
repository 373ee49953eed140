/*
 * Test plugin: a loadable shared object that does not export
 * switchboard_plugin_entry, as when a plugin is built with a misspelt entry
 * point. dlsym() must fail and the loader refuse it with that reason.
 */

/* Close to the real name on purpose: the loader must match it exactly. */
int switchboard_plugin_entry_missing(void);
int switchboard_plugin_entry_missing(void)
{
    return 42;
}
