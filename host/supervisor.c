#include "supervisor.h"

#include "clock.h"
#include "log.h"
#include "proc.h"
#include "runtime.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A process the supervisor knows: running for an owner, or draining. */
struct proc {
    LIST_ENTRY(proc) link;
    struct sbh_supervisor *sv;
    pid_t pid;
    sbh_child_exit_fn on_exit; /* NULL once draining */
    void *arg;
    char *key;          /* draining: what it served */
    struct event *kill; /* draining: end of the grace period */
};
LIST_HEAD(proc_list, proc);

/* A directory to delete once key's process has ended. */
struct wipe {
    LIST_ENTRY(wipe) link;
    char *key;
    char *dir;
};
LIST_HEAD(wipe_list, wipe);

struct sbh_supervisor {
    struct wipe_list wipes;
    struct event_base *base;
    struct sbh_reaper *reaper;
    char *plugin_host;
    char *state_dir;
    struct proc_list procs;
    size_t n_procs;
    size_t n_removing; /* rm -rf children of logged-out profiles */
    struct event *drained_ev;
    void (*drained)(void *);
    void *drained_arg;
};

struct sbh_supervisor *sbh_supervisor_new(struct event_base *base, const char *plugin_host,
                                          const char *state_dir)
{
    struct sbh_supervisor *sv = calloc(1, sizeof(*sv));
    if (!sv)
        return NULL;
    sv->base = base;
    LIST_INIT(&sv->procs);
    LIST_INIT(&sv->wipes);
    sv->reaper = sbh_reaper_new(base);
    sv->plugin_host = strdup(plugin_host);
    sv->state_dir = strdup(state_dir);
    if (!sv->reaper || !sv->plugin_host || !sv->state_dir) {
        sbh_supervisor_free(sv, 0);
        return NULL;
    }
    return sv;
}

int sbh_supervisor_set_host(struct sbh_supervisor *sv, const char *plugin_host)
{
    char *copy = strdup(plugin_host);
    if (!copy)
        return -1;
    free(sv->plugin_host);
    sv->plugin_host = copy;
    return 0;
}

const char *sbh_supervisor_state_dir(const struct sbh_supervisor *sv)
{
    return sv->state_dir;
}

size_t sbh_supervisor_count(const struct sbh_supervisor *sv)
{
    return sv->n_procs;
}

static void proc_free(struct proc *p)
{
    LIST_REMOVE(p, link);
    p->sv->n_procs--;
    if (p->kill)
        event_free(p->kill);
    free(p->key);
    free(p);
}

static int unlink_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    if (remove(path) < 0 && errno != ENOENT)
        sbh_warn("supervisor", "cannot remove %s: %s", path, strerror(errno));
    return 0;
}

static void remove_tree(const char *dir)
{
    if (nftw(dir, unlink_one, 16, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT)
        sbh_warn("supervisor", "cannot remove %s: %s", dir, strerror(errno));
}

static void rm_done(void *arg, pid_t pid, int status)
{
    struct sbh_supervisor *sv = arg;
    (void)pid;
    sv->n_removing--;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        sbh_warn("supervisor", "removing a logged-out state directory failed (status %d)", status);
}

/*
 * A browser profile holds thousands of files: deleting it on the loop would
 * stall every request. The directory is renamed away at once (the next start
 * finds none) and an `rm -rf` child removes it; the walk on the loop is only
 * the fallback.
 */
static void remove_tree_async(struct sbh_supervisor *sv, const char *dir)
{
    static unsigned seq;
    char tomb[PATH_MAX], why[256];
    snprintf(tomb, sizeof(tomb), "%s.deleted.%d.%u", dir, (int)getpid(), ++seq);
    if (rename(dir, tomb) < 0) {
        if (errno != ENOENT)
            remove_tree(dir);
        return;
    }
    const char *const argv[] = {"rm", "-rf", "--", tomb, NULL};
    pid_t pid = sbh_spawn(argv, NULL, NULL, 0, 0, why, sizeof(why));
    if (pid > 0 && sbh_reaper_watch(sv->reaper, pid, rm_done, sv) == 0) {
        sv->n_removing++;
        return;
    }
    if (pid > 0)
        sbh_reaper_forget(sv->reaper, pid);
    else
        remove_tree(tomb);
}

static void wipe_free(struct wipe *w)
{
    LIST_REMOVE(w, link);
    free(w->key);
    free(w->dir);
    free(w);
}

void sbh_supervisor_wipe(struct sbh_supervisor *sv, const char *key, const char *dir)
{
    if (!sbh_supervisor_busy(sv, key)) {
        remove_tree_async(sv, dir);
        return;
    }
    struct wipe *w = calloc(1, sizeof(*w));
    if (w && (w->key = strdup(key)) && (w->dir = strdup(dir))) {
        LIST_INSERT_HEAD(&sv->wipes, w, link);
        return;
    }
    if (w) {
        free(w->key);
        free(w);
    }
    sbh_error("supervisor", "out of memory: %s is not removed", dir);
}

static void fire_drained(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct sbh_supervisor *sv = arg;
    struct wipe *w, *tmp;
    for (w = LIST_FIRST(&sv->wipes); w && (tmp = LIST_NEXT(w, link), 1); w = tmp)
        if (!sbh_supervisor_busy(sv, w->key)) {
            remove_tree_async(sv, w->dir);
            wipe_free(w);
        }
    if (sv->drained)
        sv->drained(sv->drained_arg);
}

static void on_reaped(void *arg, pid_t pid, int status)
{
    (void)pid;
    struct proc *p = arg;
    struct sbh_supervisor *sv = p->sv;
    sbh_child_exit_fn fn = p->on_exit;
    void *fn_arg = p->arg;
    int drained = p->key != NULL;
    /* The group may still hold the plugin's own children (its browser). */
    kill(-p->pid, SIGKILL);
    proc_free(p);
    if (fn)
        fn(fn_arg, status);
    if (drained && sv->drained_ev)
        event_active(sv->drained_ev, 0, 0);
    else if (drained)
        fire_drained(-1, 0, sv);
}

pid_t sbh_supervisor_spawn(struct sbh_supervisor *sv, sbh_child_exit_fn on_exit, void *arg, int *fd,
                           char *why, size_t why_len)
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
        snprintf(why, why_len, "socketpair: %s", strerror(errno));
        return -1;
    }
    struct proc *p = calloc(1, sizeof(*p));
    const char *const argv[] = {sv->plugin_host, "--ipc-fd", "3", NULL};
    const sb_proc_fd map[] = {{pair[1], 3}};
    pid_t pid = p ? sbh_spawn(argv, NULL, map, 1, SBH_SPAWN_NEW_PGRP, why, why_len) : -1;
    close(pair[1]);
    if (!p)
        snprintf(why, why_len, "out of memory");
    if (pid < 0 || sbh_reaper_watch(sv->reaper, pid, on_reaped, p) < 0) {
        if (pid > 0) {
            kill(-pid, SIGKILL);
            sbh_reaper_forget(sv->reaper, pid);
            snprintf(why, why_len, "out of memory");
        }
        close(pair[0]);
        free(p);
        return -1;
    }
    *p = (struct proc){.sv = sv, .pid = pid, .on_exit = on_exit, .arg = arg};
    LIST_INSERT_HEAD(&sv->procs, p, link);
    sv->n_procs++;
    *fd = pair[0];
    return pid;
}

static struct proc *proc_find(const struct sbh_supervisor *sv, pid_t pid)
{
    struct proc *p;
    LIST_FOREACH (p, &sv->procs, link)
        if (p->pid == pid)
            return p;
    return NULL;
}

void sbh_supervisor_kill(struct sbh_supervisor *sv, pid_t pid)
{
    if (proc_find(sv, pid))
        kill(-pid, SIGKILL);
}

static void grace_over(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct proc *p = arg;
    sbh_log(SB_LOG_WARN, "supervisor", NULL, p->key,
            "plugin-host %d did not stop in time; killing its process group", (int)p->pid);
    kill(-p->pid, SIGKILL);
}

void sbh_supervisor_drain(struct sbh_supervisor *sv, pid_t pid, const char *key, unsigned grace_ms)
{
    struct proc *p = proc_find(sv, pid);
    if (!p)
        return;
    p->on_exit = NULL;
    p->arg = NULL;
    free(p->key);
    p->key = strdup(key ? key : "");
    if (!p->key || !grace_ms) {
        kill(-pid, SIGKILL);
        return;
    }
    p->kill = evtimer_new(sv->base, grace_over, p);
    if (!p->kill)
        kill(-pid, SIGKILL);
    else
        sbh_timer_arm_ms(p->kill, grace_ms);
}

int sbh_supervisor_busy(const struct sbh_supervisor *sv, const char *key)
{
    struct proc *p;
    LIST_FOREACH (p, &sv->procs, link)
        if (p->key && !strcmp(p->key, key))
            return 1;
    return 0;
}

void sbh_supervisor_on_drained(struct sbh_supervisor *sv, void (*fn)(void *arg), void *arg)
{
    sv->drained = fn;
    sv->drained_arg = arg;
    if (!sv->drained_ev)
        sv->drained_ev = event_new(sv->base, -1, 0, fire_drained, sv);
}

/* Wait up to ms for every known process to end by itself. */
static void wait_all(struct sbh_supervisor *sv, unsigned ms)
{
    for (unsigned waited = 0; (sv->n_procs || sv->n_removing) && waited <= ms; waited += 10) {
        sbh_reaper_poll(sv->reaper);
        if (!sv->n_procs && !sv->n_removing)
            break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void sbh_supervisor_free(struct sbh_supervisor *sv, unsigned grace_ms)
{
    if (!sv)
        return;
    struct proc *p;
    /* Nobody listens any more: processes that end are only reaped. */
    LIST_FOREACH (p, &sv->procs, link)
        p->on_exit = NULL;
    if (sv->reaper)
        wait_all(sv, grace_ms);
    while ((p = LIST_FIRST(&sv->procs)) != NULL) {
        kill(-p->pid, SIGKILL);
        sbh_reaper_forget(sv->reaper, p->pid);
        proc_free(p);
    }
    sbh_reaper_free(sv->reaper); /* SIGKILLs and reaps what is left */
    struct wipe *w;
    while ((w = LIST_FIRST(&sv->wipes)) != NULL) {
        remove_tree(w->dir); /* every process is gone now */
        wipe_free(w);
    }
    if (sv->drained_ev)
        event_free(sv->drained_ev);
    free(sv->plugin_host);
    free(sv->state_dir);
    free(sv);
}
