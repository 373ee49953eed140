/*
 * Child processes: fork + exec with a descriptor map, and a reaper that waits
 * only for the pids it was given (the daemon has children of its own, such as
 * its embedded MariaDB, that other code reaps: never waitpid(-1) here).
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ---- in the child, between fork and exec: async-signal-safe calls only ---- */

static void child_fail(const char *what, const char *argv0)
{
    /* No stdio here: a bare write survives whatever state the parent's locks were in. */
    static const char head[] = "switchboard: spawn ";
    static const char mid[] = ": ";
    static const char tail[] = " failed\n";
    ssize_t r = write(2, head, sizeof(head) - 1);
    r = write(2, argv0, strlen(argv0));
    r = write(2, mid, sizeof(mid) - 1);
    r = write(2, what, strlen(what));
    r = write(2, tail, sizeof(tail) - 1);
    (void)r;
    _exit(127);
}

static void child_reset_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &sa, NULL); /* SIGKILL/SIGSTOP and glibc's reserved ones just fail */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static void close_from(int lo, int hi)
{
    if (lo > hi)
        return;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lo, (unsigned)hi, 0u) == 0)
        return;
#endif
    /* Kernel before 5.9: one by one, bounded by the descriptor limit. */
    struct rlimit rl;
    long max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        max = (long)rl.rlim_cur;
    for (long fd = lo; fd <= hi && fd < max; fd++)
        close((int)fd);
}

/* Close every descriptor above 2 that is not one of the mapped child_fds. */
static void child_close_unmapped(const sb_proc_fd *fds, size_t n_fds)
{
    int cur = 3;
    for (;;) {
        int next = -1;
        for (size_t i = 0; i < n_fds; i++)
            if (fds[i].child_fd >= cur && (next < 0 || fds[i].child_fd < next))
                next = fds[i].child_fd;
        if (next < 0) {
            close_from(cur, 0x7fffffff);
            return;
        }
        close_from(cur, next - 1);
        cur = next + 1;
    }
}

/*
 * Copy every parent_fd to a number above all of the map first, so that a
 * parent_fd equal to another entry's child_fd is not overwritten before it
 * is copied; dup2 from there also clears close-on-exec on the result.
 */
static void child_map_fds(const sb_proc_fd *fds, size_t n_fds, int *high, const char *argv0)
{
    int floor = 3;
    for (size_t i = 0; i < n_fds; i++) {
        if (fds[i].parent_fd >= floor)
            floor = fds[i].parent_fd + 1;
        if (fds[i].child_fd >= floor)
            floor = fds[i].child_fd + 1;
    }
    for (size_t i = 0; i < n_fds; i++) {
        high[i] = fcntl(fds[i].parent_fd, F_DUPFD_CLOEXEC, floor);
        if (high[i] < 0)
            child_fail("dup", argv0);
    }
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0 || dup2(null, 0) < 0)
        child_fail("/dev/null", argv0);
    for (size_t i = 0; i < n_fds; i++)
        if (dup2(high[i], fds[i].child_fd) < 0)
            child_fail("dup2", argv0);
}

static void child_run(const char *const *argv, const char *const *envp, const sb_proc_fd *fds,
                      size_t n_fds, unsigned flags, pid_t parent, int *high)
{
    /* The parent may have died before prctl took effect: then no signal would come. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
        _exit(127);
    if ((flags & SBH_SPAWN_NEW_PGRP) && setpgid(0, 0) < 0)
        child_fail("setpgid", argv[0]);
    child_map_fds(fds, n_fds, high, argv[0]);
    child_close_unmapped(fds, n_fds);
    child_reset_signals();
    execvpe(argv[0], (char *const *)argv, envp ? (char *const *)envp : environ);
    child_fail("exec", argv[0]);
}

/* ---- in the parent ---- */

pid_t sbh_spawn(const char *const *argv, const char *const *envp, const sb_proc_fd *fds,
                size_t n_fds, unsigned flags, char *why, size_t why_len)
{
    if (!argv || !argv[0] || !argv[0][0] || (n_fds && !fds)) {
        snprintf(why, why_len, "no program to run");
        return -1;
    }
    for (size_t i = 0; i < n_fds; i++) {
        if (fds[i].parent_fd < 0 || fds[i].child_fd < 0 || fcntl(fds[i].parent_fd, F_GETFD) < 0) {
            snprintf(why, why_len, "descriptor map entry %zu (%d -> %d) is not usable", i,
                     fds[i].parent_fd, fds[i].child_fd);
            return -1;
        }
    }
    /* Allocated before fork: the child must not call malloc. */
    int *high = calloc(n_fds ? n_fds : 1, sizeof(*high));
    if (!high) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    /* Signals stay blocked across fork so no parent handler runs in the child
     * before its dispositions are reset. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0)
        child_run(argv, envp, fds, n_fds, flags, parent, high);
    int err = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    free(high);
    if (pid < 0) {
        snprintf(why, why_len, "fork: %s", strerror(err));
        return -1;
    }
    /* Also from this side, so a signal to the group right after spawn reaches it. */
    if (flags & SBH_SPAWN_NEW_PGRP)
        setpgid(pid, pid);
    return pid;
}

/* ---- reaper ---- */

struct reaped {
    pid_t pid;
    sbh_exit_fn fn; /* NULL: forgotten, still reaped */
    void *arg;
};

struct sbh_reaper {
    struct event *sigchld;
    struct reaped *kids;
    size_t n, cap;
};

static void on_sigchld(evutil_socket_t sig, short what, void *arg)
{
    sbh_reaper_poll(arg);
}

struct sbh_reaper *sbh_reaper_new(struct event_base *base)
{
    struct sbh_reaper *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->sigchld = evsignal_new(base, SIGCHLD, on_sigchld, r);
    if (!r->sigchld || event_add(r->sigchld, NULL) < 0) {
        if (r->sigchld)
            event_free(r->sigchld);
        free(r);
        return NULL;
    }
    return r;
}

static void remove_at(struct sbh_reaper *r, size_t i)
{
    r->kids[i] = r->kids[--r->n];
}

void sbh_reaper_free(struct sbh_reaper *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++) {
        kill(r->kids[i].pid, SIGKILL);
        while (waitpid(r->kids[i].pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    event_free(r->sigchld);
    free(r->kids);
    free(r);
}

int sbh_reaper_watch(struct sbh_reaper *r, pid_t pid, sbh_exit_fn fn, void *arg)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 8;
        struct reaped *k = realloc(r->kids, cap * sizeof(*k));
        if (!k)
            return -1;
        r->kids = k;
        r->cap = cap;
    }
    r->kids[r->n++] = (struct reaped){pid, fn, arg};
    /* A child that ended before this call is still found: its SIGCHLD event
     * runs on the loop, after we return. */
    return 0;
}

void sbh_reaper_forget(struct sbh_reaper *r, pid_t pid)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->kids[i].pid == pid)
            r->kids[i].fn = NULL;
}

/*
 * Find one ended child, take it off the list and report it; the scan starts
 * over after every callback because the callback may watch or forget others.
 */
static int reap_one(struct sbh_reaper *r)
{
    for (size_t i = 0; i < r->n; i++) {
        int status = 0;
        pid_t got = waitpid(r->kids[i].pid, &status, WNOHANG);
        if (got == 0 || (got < 0 && errno == EINTR))
            continue;
        /* ECHILD: someone else reaped it; it has ended all the same. */
        struct reaped k = r->kids[i];
        remove_at(r, i);
        if (k.fn)
            k.fn(k.arg, k.pid, got < 0 ? 0 : status);
        return 1;
    }
    return 0;
}

void sbh_reaper_poll(struct sbh_reaper *r)
{
    while (reap_one(r))
        ;
}
