/*
 * Plugin-host processes: start one (a socketpair to it as its fd 3, its own
 * process group, dying with the daemon), know when it ends, and stop one
 * gracefully (a grace period, then SIGKILL to the whole group). A stopped
 * instance's process may still be draining when the instance starts again;
 * the new one waits for it, since both would use the same state directory.
 */
#ifndef SBH_SUPERVISOR_H
#define SBH_SUPERVISOR_H

#include <stddef.h>
#include <sys/types.h>

#include <event2/event.h>

struct sbh_supervisor;

/* plugin_host and state_dir are copied. NULL on failure. */
struct sbh_supervisor *sbh_supervisor_new(struct event_base *base, const char *plugin_host,
                                          const char *state_dir);
/* Give draining processes up to grace_ms to end, then SIGKILL every group
 * still known and reap them (blocks; shutdown only). Then free. */
void sbh_supervisor_free(struct sbh_supervisor *sv, unsigned grace_ms);

/* The binary started from now on (copied; a reload may change it). 0 or -1. */
int sbh_supervisor_set_host(struct sbh_supervisor *sv, const char *plugin_host);

const char *sbh_supervisor_state_dir(const struct sbh_supervisor *sv);

/* Called once when pid has ended and been reaped. */
typedef void (*sbh_child_exit_fn)(void *arg, int status);

/*
 * Start a plugin-host: *fd gets the daemon's end of the socketpair (owned by
 * the caller). Returns the pid, or -1 with why.
 */
pid_t sbh_supervisor_spawn(struct sbh_supervisor *sv, sbh_child_exit_fn on_exit, void *arg, int *fd,
                           char *why, size_t why_len);

/* SIGKILL pid's whole process group now; on_exit still comes when reaped. */
void sbh_supervisor_kill(struct sbh_supervisor *sv, pid_t pid);

/*
 * Let go of a running or ending pid: no callback any more. It gets grace_ms
 * to end by itself (it was told to stop), then its group gets SIGKILL. key
 * (copied) names what it served, for sbh_supervisor_busy.
 */
void sbh_supervisor_drain(struct sbh_supervisor *sv, pid_t pid, const char *key, unsigned grace_ms);

/* 1 while a draining process of key has not ended yet. */
int sbh_supervisor_busy(const struct sbh_supervisor *sv, const char *key);

/* Called (deferred, on the loop) whenever a draining process has ended. */
void sbh_supervisor_on_drained(struct sbh_supervisor *sv, void (*fn)(void *arg), void *arg);

/*
 * Delete dir (recursively) for key: now when no process of key is draining,
 * else as soon as the last one has ended, before on_drained runs. dir is
 * copied. A logged-out browser profile goes this way.
 */
void sbh_supervisor_wipe(struct sbh_supervisor *sv, const char *key, const char *dir);

/* Number of plugin-host processes alive (running or draining). */
size_t sbh_supervisor_count(const struct sbh_supervisor *sv);

#endif
