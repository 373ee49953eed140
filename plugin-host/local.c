/*
 * Services kept in this process: timers, descriptor watches and child
 * processes. Each may be taken back from inside its own callback, so a
 * callback in progress marks the object and the dispatcher frees it after.
 */
#include "phost.h"

#include <errno.h>
#include <signal.h>
#include <time.h>
#include <stdlib.h>
#include <sys/wait.h>

/* An instance resource needs a running instance; NULL means plugin-wide. */
static int owner_of(sb_instance *inst, enum ph_owner *owner)
{
    if (inst && !inst->running)
        return -1;
    *owner = inst ? PH_OWNER_INSTANCE : PH_OWNER_PLUGIN;
    return 0;
}

/* ---- timers ---- */

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
    struct sb_timer *t = arg;
    t->firing = 1;
    t->fn(t->arg);
    t->firing = 0;
    if (t->dead) {
        event_free(t->ev);
        free(t);
    } else if (!t->repeat) {
        ph_timer_cancel(t);
    }
    ph_status_poke();
}

sb_timer *ph_timer_start(sb_plugin *self, sb_instance *inst, uint32_t ms, int repeat,
                         sb_timer_fn fn, void *arg)
{
    enum ph_owner owner;
    if (!fn || owner_of(inst, &owner) < 0)
        return NULL;
    struct sb_timer *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ev = event_new(ph.base, -1, repeat ? EV_PERSIST : 0, timer_fire, t);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!t->ev || event_add(t->ev, &tv) < 0) {
        if (t->ev)
            event_free(t->ev);
        free(t);
        return NULL;
    }
    t->owner = owner;
    t->fn = fn;
    t->arg = arg;
    t->repeat = repeat;
    LIST_INSERT_HEAD(&ph.timers, t, link);
    return t;
}

void ph_timer_cancel(sb_timer *t)
{
    if (!t || t->dead)
        return; /* cancelled twice inside its callback */
    LIST_REMOVE(t, link);
    if (t->firing) {
        t->dead = 1;
        event_del(t->ev);
        return;
    }
    event_free(t->ev);
    free(t);
}

/* ---- descriptor watches ---- */

static void fd_fire(evutil_socket_t fd, short what, void *arg)
{
    struct sb_fd_watch *w = arg;
    int bits = (what & EV_READ ? SB_FD_READ : 0) | (what & EV_WRITE ? SB_FD_WRITE : 0);
    w->firing = 1;
    w->fn(w->arg, (int)fd, bits);
    w->firing = 0;
    if (w->dead) {
        event_free(w->ev);
        free(w);
    }
    ph_status_poke();
}

sb_fd_watch *ph_fd_watch(sb_plugin *self, sb_instance *inst, int fd, int what, sb_fd_fn fn,
                         void *arg)
{
    enum ph_owner owner;
    if (fd < 0 || !fn || !(what & (SB_FD_READ | SB_FD_WRITE)) ||
        (what & ~(SB_FD_READ | SB_FD_WRITE)) || owner_of(inst, &owner) < 0)
        return NULL;
    struct sb_fd_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    /* Level-triggered (no EV_ET): ready data not read is reported again. */
    short ev = EV_PERSIST | (what & SB_FD_READ ? EV_READ : 0) | (what & SB_FD_WRITE ? EV_WRITE : 0);
    w->ev = event_new(ph.base, fd, ev, fd_fire, w);
    /* event_add refuses a descriptor that is not open (epoll_ctl EBADF). */
    if (!w->ev || event_add(w->ev, NULL) < 0) {
        if (w->ev)
            event_free(w->ev);
        free(w);
        return NULL;
    }
    w->owner = owner;
    w->fn = fn;
    w->arg = arg;
    LIST_INSERT_HEAD(&ph.fds, w, link);
    return w;
}

void ph_fd_unwatch(sb_fd_watch *w)
{
    if (!w || w->dead)
        return;
    LIST_REMOVE(w, link);
    event_del(w->ev);
    if (w->firing) {
        w->dead = 1;
        return;
    }
    event_free(w->ev);
    free(w);
}

/* ---- child processes ---- */

static void proc_ended(void *arg, pid_t pid, int status)
{
    struct sb_proc *p = arg;
    p->ended = 1;
    LIST_REMOVE(p, link);
    if (p->exit) {
        p->firing = 1;
        p->exit(p->arg, status);
    }
    free(p);
    ph_status_poke();
}

sb_proc *ph_proc_spawn(sb_plugin *self, sb_instance *inst, const char *const *argv,
                       const char *const *envp, const sb_proc_fd *fds, size_t n_fds,
                       sb_proc_exit_fn exit, void *arg)
{
    enum ph_owner owner;
    if (!argv || !argv[0] || owner_of(inst, &owner) < 0)
        return NULL;
    struct sb_proc *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    char why[256];
    /* Same process group as this host: the daemon's stop kills them together. */
    p->pid = sbh_spawn(argv, envp, fds, n_fds, 0, why, sizeof(why));
    if (p->pid < 0) {
        ph_services()->log(self, inst, SB_LOG_ERROR, "cannot start %s: %s", argv[0], why);
        free(p);
        return NULL;
    }
    if (sbh_reaper_watch(ph.reaper, p->pid, proc_ended, p) < 0) {
        kill(p->pid, SIGKILL);
        while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR)
            ;
        free(p);
        return NULL;
    }
    p->owner = owner;
    p->exit = exit;
    p->arg = arg;
    LIST_INSERT_HEAD(&ph.procs, p, link);
    return p;
}

long ph_proc_pid(sb_proc *p)
{
    return p ? (long)p->pid : -1;
}

int ph_proc_signal(sb_proc *p, int sig)
{
    if (!p)
        return SB_EINVAL;
    if (p->ended)
        return SB_EGONE;
    if (kill(p->pid, sig) == 0)
        return SB_OK;
    return errno == ESRCH ? SB_EGONE : SB_EINVAL;
}

void ph_proc_release(sb_proc *p)
{
    /* Inside its own exit callback it is already off the list and freed after. */
    if (!p || p->firing)
        return;
    LIST_REMOVE(p, link);
    kill(p->pid, SIGKILL);
    sbh_reaper_forget(ph.reaper, p->pid);
    free(p);
}

/* ---- release ---- */

void ph_local_release(enum ph_owner owner)
{
    struct sb_timer *t, *tn;
    for (t = LIST_FIRST(&ph.timers); t; t = tn) {
        tn = LIST_NEXT(t, link);
        if (t->owner == owner)
            ph_timer_cancel(t);
    }
    struct sb_fd_watch *w, *wn;
    for (w = LIST_FIRST(&ph.fds); w; w = wn) {
        wn = LIST_NEXT(w, link);
        if (w->owner == owner)
            ph_fd_unwatch(w);
    }
    /* Children the plugin left running get SIGTERM, not SIGKILL: a browser
     * then saves its profile. ph_local_drain waits for them at exit. */
    struct sb_proc *p;
    LIST_FOREACH (p, &ph.procs, link)
        if (p->owner == owner && !p->terminating) {
            p->terminating = 1;
            p->exit = NULL;
            kill(p->pid, SIGTERM);
        }
}

void ph_local_drain(unsigned ms)
{
    for (unsigned waited = 0; !LIST_EMPTY(&ph.procs) && waited < ms; waited += 10) {
        sbh_reaper_poll(ph.reaper);
        if (LIST_EMPTY(&ph.procs))
            break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
