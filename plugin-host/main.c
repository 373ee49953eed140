/*
 * switchboard-plugin-host: command line, the loop, and the one way out
 * (teardown, then exit with the status ph_finish chose).
 */
#include "phost.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ph ph;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: switchboard-plugin-host --ipc-fd N\n"
            "       switchboard-plugin-host --version | --help\n"
            "\n"
            "Runs one switchboard plugin instance for switchboardd, which starts it\n"
            "and speaks the plugin-host IPC protocol (version %d) on descriptor N.\n",
            SBH_IPC_VERSION);
}

/* -1 for a bad command line; 1 when it was --help/--version (already answered). */
static int parse_args(int argc, char **argv, int *fd)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("switchboard-plugin-host %s (IPC %d, ABI %u.%u)\n", PACKAGE_VERSION,
                   SBH_IPC_VERSION, SB_ABI_MAJOR, SB_ABI_MINOR);
            return 1;
        }
        if (!strcmp(argv[i], "--ipc-fd") && i + 1 < argc) {
            char *end;
            errno = 0;
            long v = strtol(argv[++i], &end, 10);
            if (errno || *end || end == argv[i] || v < 0 || v > INT_MAX)
                return -1;
            *fd = (int)v;
            continue;
        }
        return -1;
    }
    return *fd >= 0 ? 0 : -1;
}

void ph_finish(int code)
{
    if (ph.exit_code < 0)
        ph.exit_code = code;
    event_base_loopbreak(ph.base);
}

void ph_protocol_error(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "switchboard-plugin-host: protocol error: %s\n", msg);
    ph_send_frame(
        json_pack("{s:s, s:i, s:o}", "t", "log", "level", SB_LOG_ERROR, "msg", ph_text(msg)));
    ph_finish(1);
}

static void on_frame(void *arg, json_t *frame)
{
    ph_handle_frame(frame);
    ph_status_poke();
}

static void on_close(void *arg, const char *why)
{
    if (!strcmp(why, "EOF")) {
        ph_finish(1); /* the daemon went away: nobody to tell */
        return;
    }
    ph_protocol_error("%s", why);
}

static void on_sigterm(evutil_socket_t sig, short what, void *arg)
{
    fprintf(stderr, "switchboard-plugin-host: signal %d, stopping\n", (int)sig);
    ph_finish(1);
}

/* How long children left running at stop get after SIGTERM. */
#define PH_TERM_GRACE_MS 5000

static int setup(int fd)
{
    LIST_INIT(&ph.timers);
    LIST_INIT(&ph.fds);
    LIST_INIT(&ph.procs);
    LIST_INIT(&ph.http);
    LIST_INIT(&ph.ws);
    LIST_INIT(&ph.replies);
    LIST_INIT(&ph.sends);
    ph.exit_code = -1;
    ph.kv = json_object();
    /* A vanished daemon must show up as EPIPE on the socket, not kill us silently. */
    signal(SIGPIPE, SIG_IGN);
    ph.base = event_base_new();
    if (!ph.base || !ph.kv)
        return -1;
    ph.reaper = sbh_reaper_new(ph.base);
    ph.sigterm = evsignal_new(ph.base, SIGTERM, on_sigterm, NULL);
    if (!ph.reaper || !ph.sigterm || event_add(ph.sigterm, NULL) < 0)
        return -1;
    ph.ipc = sbh_ipc_new(ph.base, fd, on_frame, on_close, NULL);
    return ph.ipc ? 0 : -1;
}

static void cleanup(void)
{
    sbh_ipc_free(ph.ipc);
    /* Children not yet reaped (released ones among them) are killed and waited for. */
    sbh_reaper_free(ph.reaper);
    if (ph.status_ev)
        event_free(ph.status_ev);
    if (ph.sigterm)
        event_free(ph.sigterm);
    json_decref(ph.status);
    json_decref(ph.kv);
    free(ph.name);
    free(ph.inst.id);
    if (ph.base)
        event_base_free(ph.base);
    libevent_global_shutdown();
}

int main(int argc, char **argv)
{
    int fd = -1;
    int rc = parse_args(argc, argv, &fd);
    if (rc != 0) {
        if (rc < 0)
            usage(stderr);
        return rc < 0 ? 2 : 0;
    }
    if (setup(fd) < 0) {
        fprintf(stderr, "switchboard-plugin-host: cannot set up the loop or fd %d\n", fd);
        cleanup();
        return 1;
    }
    ph_send_frame(json_pack("{s:s, s:i, s:I, s:[i,i]}", "t", "hello", "v", SBH_IPC_VERSION, "pid",
                            (json_int_t)getpid(), "abi", (int)SB_ABI_MAJOR, (int)SB_ABI_MINOR));
    event_base_dispatch(ph.base);
    if (ph.exit_code < 0)
        ph.exit_code = 1; /* the loop ran dry: nothing can reach us any more */
    ph_teardown();
    if (ph.stop_asked && ph.exit_code == 0)
        ph_send_frame(json_pack("{s:s}", "t", "stopped"));
    sbh_ipc_flush(ph.ipc, 2000);
    /* Within the daemon's stop_grace_ms (10 s by default); then SIGKILL. */
    ph_local_drain(PH_TERM_GRACE_MS);
    int code = ph.exit_code;
    cleanup();
    return code;
}
