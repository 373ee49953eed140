/*
 * Unit tests of host/proc.c: spawn with a descriptor map (including two
 * entries that swap numbers), nothing else leaking into the child, exec
 * failure as 127, and the reaper (exit status, forget, free kills).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "runner.h"

#include <event2/event.h>

#include "proc.h"

static char g_why[256];

/* Read everything until EOF (the child closed its end). */
static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return n;
}

static int wait_status(pid_t pid)
{
    int st = -1;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return st;
}

static void test_spawn_fd_map(void)
{
    int p[2];
    CU_ASSERT_EQUAL_FATAL(pipe2(p, O_CLOEXEC), 0);
    const char *argv[] = {"sh", "-c", "echo hi >&3", NULL};
    sb_proc_fd map[] = {{p[1], 3}};
    pid_t pid = sbh_spawn(argv, NULL, map, 1, 0, g_why, sizeof(g_why));
    CU_ASSERT_FATAL(pid > 0);
    close(p[1]);
    char buf[64];
    read_all(p[0], buf, sizeof(buf));
    close(p[0]);
    CU_ASSERT_STRING_EQUAL(buf, "hi\n");
    int st = wait_status(pid);
    CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* parent 7 -> child 8 and parent 8 -> child 7: a naive dup2 loop loses one. */
static void test_spawn_swapped_fds(void)
{
    int a[2], b[2];
    CU_ASSERT_EQUAL_FATAL(pipe(a), 0);
    CU_ASSERT_EQUAL_FATAL(pipe(b), 0);
    CU_ASSERT_EQUAL_FATAL(dup2(a[1], 7), 7);
    CU_ASSERT_EQUAL_FATAL(dup2(b[1], 8), 8);
    close(a[1]);
    close(b[1]);
    const char *argv[] = {"/bin/sh", "-c", "echo to-a >&8; echo to-b >&7", NULL};
    sb_proc_fd map[] = {{7, 8}, {8, 7}};
    pid_t pid = sbh_spawn(argv, NULL, map, 2, 0, g_why, sizeof(g_why));
    CU_ASSERT_FATAL(pid > 0);
    close(7);
    close(8);
    char buf[64];
    read_all(a[0], buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "to-a\n");
    read_all(b[0], buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "to-b\n");
    close(a[0]);
    close(b[0]);
    CU_ASSERT_EQUAL(WEXITSTATUS(wait_status(pid)), 0);
}

/* An inheritable descriptor that is not in the map must not reach the child. */
static void test_spawn_closes_unmapped(void)
{
    int p[2];
    CU_ASSERT_EQUAL_FATAL(pipe2(p, O_CLOEXEC), 0);
    int leak = open("/dev/null", O_WRONLY); /* no O_CLOEXEC on purpose */
    CU_ASSERT_FATAL(leak >= 0);
    CU_ASSERT_EQUAL_FATAL(dup2(leak, 9), 9);
    char script[128];
    snprintf(script, sizeof(script),
             "if (: >&9) 2>/dev/null; then echo leaked >&3; else echo closed >&3; fi; "
             "read x; echo \"stdin:$x\" >&3");
    const char *argv[] = {"sh", "-c", script, NULL};
    sb_proc_fd map[] = {{p[1], 3}};
    pid_t pid = sbh_spawn(argv, NULL, map, 1, 0, g_why, sizeof(g_why));
    CU_ASSERT_FATAL(pid > 0);
    close(p[1]);
    close(9);
    close(leak);
    char buf[64];
    read_all(p[0], buf, sizeof(buf));
    close(p[0]);
    CU_ASSERT_STRING_EQUAL(buf, "closed\nstdin:\n");
    wait_status(pid);
}

static void test_spawn_exec_failure(void)
{
    const char *argv[] = {"/nonexistent/switchboard-test-program", NULL};
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    sb_proc_fd map[] = {{devnull, 2}}; /* keep the expected complaint off the test log */
    pid_t pid = sbh_spawn(argv, NULL, map, 1, 0, g_why, sizeof(g_why));
    close(devnull);
    CU_ASSERT_FATAL(pid > 0);
    int st = wait_status(pid);
    CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 127);
}

static void test_spawn_bad_args(void)
{
    const char *empty[] = {NULL};
    CU_ASSERT_EQUAL(sbh_spawn(empty, NULL, NULL, 0, 0, g_why, sizeof(g_why)), -1);
    const char *argv[] = {"true", NULL};
    sb_proc_fd map[] = {{12345, 3}};
    CU_ASSERT_EQUAL(sbh_spawn(argv, NULL, map, 1, 0, g_why, sizeof(g_why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(g_why, "12345"));
}

static void test_spawn_new_pgrp(void)
{
    const char *argv[] = {"sleep", "30", NULL};
    pid_t pid = sbh_spawn(argv, NULL, NULL, 0, SBH_SPAWN_NEW_PGRP, g_why, sizeof(g_why));
    CU_ASSERT_FATAL(pid > 0);
    CU_ASSERT_EQUAL(getpgid(pid), pid);
    kill(pid, SIGKILL);
    wait_status(pid);
}

/* ---- reaper ---- */

struct exit_seen {
    int calls;
    pid_t pid;
    int status;
    struct event_base *base;
};

static void on_exit_cb(void *arg, pid_t pid, int status)
{
    struct exit_seen *s = arg;
    s->calls++;
    s->pid = pid;
    s->status = status;
    event_base_loopbreak(s->base);
}

/* Run the loop until loopbreak or ms pass. */
static void run_for(struct event_base *base, unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void test_reaper_exit_status(void)
{
    struct event_base *base = event_base_new();
    struct sbh_reaper *r = sbh_reaper_new(base);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    const char *argv[] = {"sh", "-c", "exit 7", NULL};
    pid_t pid = sbh_spawn(argv, NULL, NULL, 0, 0, g_why, sizeof(g_why));
    CU_ASSERT_FATAL(pid > 0);
    struct exit_seen s = {.base = base};
    CU_ASSERT_EQUAL(sbh_reaper_watch(r, pid, on_exit_cb, &s), 0);
    run_for(base, 5000);
    CU_ASSERT_EQUAL(s.calls, 1);
    CU_ASSERT_EQUAL(s.pid, pid);
    CU_ASSERT_TRUE(WIFEXITED(s.status) && WEXITSTATUS(s.status) == 7);
    sbh_reaper_free(r);
    event_base_free(base);
}

static void test_reaper_signal_status(void)
{
    struct event_base *base = event_base_new();
    struct sbh_reaper *r = sbh_reaper_new(base);
    const char *argv[] = {"sleep", "30", NULL};
    pid_t pid = sbh_spawn(argv, NULL, NULL, 0, 0, g_why, sizeof(g_why));
    CU_ASSERT_FATAL(pid > 0);
    struct exit_seen s = {.base = base};
    sbh_reaper_watch(r, pid, on_exit_cb, &s);
    kill(pid, SIGTERM);
    run_for(base, 5000);
    CU_ASSERT_EQUAL(s.calls, 1);
    CU_ASSERT_TRUE(WIFSIGNALED(s.status) && WTERMSIG(s.status) == SIGTERM);
    sbh_reaper_free(r);
    event_base_free(base);
}

static void test_reaper_forget_still_reaps(void)
{
    struct event_base *base = event_base_new();
    struct sbh_reaper *r = sbh_reaper_new(base);
    const char *argv[] = {"sh", "-c", "exit 3", NULL};
    pid_t pid = sbh_spawn(argv, NULL, NULL, 0, 0, g_why, sizeof(g_why));
    CU_ASSERT_FATAL(pid > 0);
    struct exit_seen s = {.base = base};
    sbh_reaper_watch(r, pid, on_exit_cb, &s);
    sbh_reaper_forget(r, pid);
    /* Poll until the pid is gone from the kernel: reaped by the reaper, not by us. */
    int gone = 0;
    for (int i = 0; i < 100 && !gone; i++) {
        run_for(base, 50);
        gone = kill(pid, 0) < 0 && errno == ESRCH;
    }
    CU_ASSERT_TRUE(gone);
    CU_ASSERT_EQUAL(waitpid(pid, NULL, WNOHANG), -1);
    CU_ASSERT_EQUAL(errno, ECHILD);
    CU_ASSERT_EQUAL(s.calls, 0);
    sbh_reaper_free(r);
    event_base_free(base);
}

/* Children the reaper was not told about are left to whoever owns them. */
static void test_reaper_leaves_strangers(void)
{
    struct event_base *base = event_base_new();
    struct sbh_reaper *r = sbh_reaper_new(base);
    const char *argv[] = {"sh", "-c", "exit 5", NULL};
    pid_t pid = sbh_spawn(argv, NULL, NULL, 0, 0, g_why, sizeof(g_why));
    CU_ASSERT_FATAL(pid > 0);
    run_for(base, 300);
    sbh_reaper_poll(r);
    int st = wait_status(pid);
    CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 5);
    sbh_reaper_free(r);
    event_base_free(base);
}

static void test_reaper_free_kills(void)
{
    struct event_base *base = event_base_new();
    struct sbh_reaper *r = sbh_reaper_new(base);
    const char *argv[] = {"sleep", "30", NULL};
    pid_t pid = sbh_spawn(argv, NULL, NULL, 0, 0, g_why, sizeof(g_why));
    CU_ASSERT_FATAL(pid > 0);
    struct exit_seen s = {.base = base};
    sbh_reaper_watch(r, pid, on_exit_cb, &s);
    sbh_reaper_free(r);
    CU_ASSERT_EQUAL(kill(pid, 0), -1);
    CU_ASSERT_EQUAL(errno, ESRCH);
    CU_ASSERT_EQUAL(s.calls, 0);
    event_base_free(base);
}

/* ---- runner ---- */

static const struct sb_test tests[] = {
    {"spawn with a descriptor map", test_spawn_fd_map},
    {"spawn with swapped descriptor numbers", test_spawn_swapped_fds},
    {"unmapped descriptors closed, stdin /dev/null", test_spawn_closes_unmapped},
    {"exec failure is exit 127", test_spawn_exec_failure},
    {"bad arguments refused", test_spawn_bad_args},
    {"new process group", test_spawn_new_pgrp},
    {"reaper delivers the exit status", test_reaper_exit_status},
    {"reaper delivers a signal death", test_reaper_signal_status},
    {"forget still reaps", test_reaper_forget_still_reaps},
    {"unknown children left alone", test_reaper_leaves_strangers},
    {"free kills and reaps", test_reaper_free_kills},
};

int main(void)
{
    static const struct sb_suite suite = {.name = "proc", SB_TESTS(tests)};
    return sb_run("test_proc", &suite, 1);
}
