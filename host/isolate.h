/*
 * Isolation "process": a plugin generation whose instances each run in a
 * switchboard-plugin-host child. The registry loads the .so as usual (for its
 * descriptor: name, schema, capabilities) but never calls its code; instead
 * the generation gets a proxy descriptor whose callbacks speak the IPC
 * protocol (plugin-host/PROTOCOL.md) to one child per instance, supervised:
 * heartbeat, restart with exponential backoff, crash-loop cut-off.
 */
#ifndef SBH_ISOLATE_H
#define SBH_ISOLATE_H

#include <jansson.h>
#include <switchboard/plugin.h>

struct sb_plugin;
struct sbh_supervisor;

/* Supervision knobs: the plugin's "process" config section. */
struct sbh_isolate_conf {
    unsigned heartbeat_ms;         /* ping period */
    unsigned heartbeat_timeout_ms; /* silence after which a child is killed */
    unsigned restart_min_ms;       /* first restart delay, doubled each time */
    unsigned restart_max_ms;
    unsigned max_restarts;     /* consecutive failed runs before giving up */
    unsigned healthy_after_ms; /* a run this long resets the count */
    unsigned stop_grace_ms;    /* a stopped child's time to end by itself */
    unsigned max_processes;    /* running children of this plugin, 0: no cap */
    unsigned memory_max_mib;   /* cgroup memory.max per child, 0: none */
};

/* Fill conf from a "process" section (borrowed, may be NULL) with defaults. */
void sbh_isolate_conf_read(struct sbh_isolate_conf *conf, const json_t *section);

/*
 * Turn a loaded generation into a proxy: gen->desc becomes a descriptor of
 * gen's own (freed by sbh_isolate_unwrap) and the real one is kept for its
 * metadata. sv (borrowed) must outlive the generation. 0, or -1 on ENOMEM.
 */
int sbh_isolate_wrap(struct sb_plugin *gen, struct sbh_supervisor *sv,
                     const struct sbh_isolate_conf *conf);
void sbh_isolate_unwrap(struct sb_plugin *gen);

/* The instance state directory for id under the supervisor's state dir
 * (malloc'd path "<state_dir>/instances/<id>"). */
char *sbh_isolate_instance_dir(const struct sbh_supervisor *sv, const char *id);

#endif
