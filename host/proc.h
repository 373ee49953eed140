/*
 * Child processes on the loop: spawn with a descriptor map, and reap through
 * one SIGCHLD event. Shared by the daemon (plugin-host children, the
 * proc_spawn service) and switchboard-plugin-host (its plugin's children).
 */
#ifndef SBH_PROC_H
#define SBH_PROC_H

#include <stddef.h>
#include <sys/types.h>

#include <event2/event.h>
#include <switchboard/services.h>

/* Put the child in a process group of its own (it leads it). */
#define SBH_SPAWN_NEW_PGRP 1u

/*
 * fork + exec argv (PATH searched; envp NULL keeps the environment). In the
 * child: PR_SET_PDEATHSIG(SIGKILL), default signal dispositions and an empty
 * signal mask, stdin from /dev/null, fds[i].parent_fd copied to
 * fds[i].child_fd, every other descriptor above 2 closed. Returns the pid,
 * or -1 with why filled (exec failures are seen as exit status 127).
 */
pid_t sbh_spawn(const char *const *argv, const char *const *envp, const sb_proc_fd *fds,
                size_t n_fds, unsigned flags, char *why, size_t why_len);

struct sbh_reaper;
/* status is the wait status. */
typedef void (*sbh_exit_fn)(void *arg, pid_t pid, int status);

/* One per loop; NULL on failure. Only reaps pids it was told about. */
struct sbh_reaper *sbh_reaper_new(struct event_base *base);
/* SIGKILL and reap (blocking, briefly) every child still known, then free. */
void sbh_reaper_free(struct sbh_reaper *r);
/* Call fn once when pid ends. 0, or -1 out of memory. */
int sbh_reaper_watch(struct sbh_reaper *r, pid_t pid, sbh_exit_fn fn, void *arg);
/* No callback for pid any more; it is still reaped when it ends. */
void sbh_reaper_forget(struct sbh_reaper *r, pid_t pid);
/* Reap now what has ended (the SIGCHLD handler's work, callable directly). */
void sbh_reaper_poll(struct sbh_reaper *r);

#endif
