/*
 * switchboard-plugin-host: one plugin .so, one instance of it, driven by the
 * daemon over the IPC socket (PROTOCOL.md). There is exactly one of
 * everything here, so the process state is one global, `ph`.
 *
 * The sb_* structs below are this process's own definitions of the objects
 * that are opaque to plugins.
 */
#ifndef PHOST_H
#define PHOST_H

#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

#include <event2/event.h>
#include <jansson.h>

#include <switchboard/plugin.h>

#include "ipc.h"
#include "proc.h"

struct sb_plugin {
    int unused; /* the one generation: everything is in ph */
};

struct sb_instance {
    char *id;
    void *state;
    int running;  /* between instance_start and instance_stop */
    int starting; /* inside instance_start: its state is not ready for status() */
};

/* Who a resource belongs to: the instance, or the plugin as a whole. */
enum ph_owner { PH_OWNER_PLUGIN, PH_OWNER_INSTANCE };

struct sb_timer {
    LIST_ENTRY(sb_timer) link;
    struct event *ev;
    enum ph_owner owner;
    sb_timer_fn fn;
    void *arg;
    int repeat;
    int firing; /* inside fn: freed after it returns */
    int dead;   /* cancelled (off the list) while firing */
};
LIST_HEAD(ph_timer_list, sb_timer);

struct sb_fd_watch {
    LIST_ENTRY(sb_fd_watch) link;
    struct event *ev;
    enum ph_owner owner;
    sb_fd_fn fn;
    void *arg;
    int firing;
    int dead;
};
LIST_HEAD(ph_fd_list, sb_fd_watch);

struct sb_proc {
    LIST_ENTRY(sb_proc) link;
    pid_t pid;
    enum ph_owner owner;
    sb_proc_exit_fn exit;
    void *arg;
    int ended;       /* reaped: signals answer SB_EGONE */
    int terminating; /* left running at release: SIGTERM sent, reaped at exit */
    int firing;      /* inside exit: release is a no-op, it is freed after */
};
LIST_HEAD(ph_proc_list, sb_proc);

/* An http_request the daemon performs for us; id is ours. */
struct sb_http_call {
    LIST_ENTRY(sb_http_call) link;
    uint64_t id;
    enum ph_owner owner;
    sb_http_done_fn done;
    void *arg;
};
LIST_HEAD(ph_http_list, sb_http_call);

/* A WebSocket the daemon holds for us; open is tracked from its events. */
struct sb_ws {
    LIST_ENTRY(sb_ws) link;
    uint64_t id;
    enum ph_owner owner;
    sb_ws_fn fn;
    void *arg;
    int open;
    int firing;
    int dead; /* closed by the plugin while firing */
};
LIST_HEAD(ph_ws_list, sb_ws);

/* A webhook the daemon handed us (id is the daemon's), until reply. */
struct sb_reply {
    LIST_ENTRY(sb_reply) link;
    uint64_t id;
    json_t *frame;   /* the webhook frame: req's strings are borrowed from it */
    json_t *headers; /* reply_header calls, [[name, value], ...] */
    sb_header *req_headers;
    unsigned char *body;
    sb_http_request req;
};
LIST_HEAD(ph_reply_list, sb_reply);

/* A send handed to the plugin (id is the daemon's), until done. */
struct ph_send {
    LIST_ENTRY(ph_send) link;
    uint64_t id;
    int in_call; /* inside the plugin's send(): freed after it returns */
    int done;    /* done() was called */
};
LIST_HEAD(ph_send_list, ph_send);

struct ph {
    struct event_base *base;
    struct sbh_ipc *ipc;
    struct sbh_reaper *reaper;
    struct event *sigterm;
    struct event *status_ev; /* at most one status comparison every 100 ms */
    int status_armed;
    struct timeval status_last;
    json_t *status; /* last sent, or NULL */

    void *dl;
    const sb_plugin_desc *desc;
    char *name;
    struct sb_plugin plugin;
    struct sb_instance inst;
    int initialised; /* init returned 0: shutdown is owed */
    json_t *kv;      /* local copy: key -> string */

    struct ph_timer_list timers;
    struct ph_fd_list fds;
    struct ph_proc_list procs;
    struct ph_http_list http;
    struct ph_ws_list ws;
    struct ph_reply_list replies;
    struct ph_send_list sends;
    uint64_t next_http_id;
    uint64_t next_ws_id;
    struct sb_reply *current; /* webhook whose callback is running */

    int exit_code;  /* -1 while running */
    int stop_asked; /* "stop" received: answer "stopped" after teardown */
};

extern struct ph ph;

/* main.c */
/* Leave the loop; teardown follows in main. code is the exit status. */
void ph_finish(int code);
/* The daemon broke the protocol: say why, then leave with status 1. */
void ph_protocol_error(const char *fmt, ...) SB_PRINTF(1, 2);

/* frames.c: one frame from the daemon. */
void ph_handle_frame(json_t *frame);

/* services.c */
const sb_host_services *ph_services(void);
/* Send a frame (steals it); a dead channel just drops it. */
void ph_send_frame(json_t *frame);
/* A JSON string of s with invalid UTF-8 replaced, or JSON null for NULL. */
json_t *ph_text(const char *s);
/* Compare the plugin's status() soon (and at most every 100 ms). */
void ph_status_poke(void);
/* Compare now and push a "status" frame when it changed. */
void ph_status_check(void);

/* local.c: timers, fd watches and processes kept in this process. */
void ph_local_release(enum ph_owner owner);
/* Wait up to ms for children sent SIGTERM at release to end (exit path). */
void ph_local_drain(unsigned ms);
/* remote.c: HTTP calls and WebSockets the daemon performs for us. */
void ph_remote_release(enum ph_owner owner);
void ph_http_done(json_t *frame);
void ph_ws_event(json_t *frame);
/* Array of [name, value] pairs -> malloc'd sb_header array (strings borrowed). */
int ph_headers_from_json(const json_t *arr, sb_header **out, size_t *n);
json_t *ph_headers_to_json(const sb_header *h, size_t n);

/* Services whose state lives in local.c, remote.c and instance.c. */
sb_timer *ph_timer_start(sb_plugin *self, sb_instance *inst, uint32_t ms, int repeat,
                         sb_timer_fn fn, void *arg);
void ph_timer_cancel(sb_timer *timer);
sb_fd_watch *ph_fd_watch(sb_plugin *self, sb_instance *inst, int fd, int what, sb_fd_fn fn,
                         void *arg);
void ph_fd_unwatch(sb_fd_watch *watch);
sb_proc *ph_proc_spawn(sb_plugin *self, sb_instance *inst, const char *const *argv,
                       const char *const *envp, const sb_proc_fd *fds, size_t n_fds,
                       sb_proc_exit_fn exit, void *arg);
long ph_proc_pid(sb_proc *proc);
int ph_proc_signal(sb_proc *proc, int sig);
void ph_proc_release(sb_proc *proc);
sb_http_call *ph_http_request(sb_plugin *self, sb_instance *inst, const sb_http_request *req,
                              sb_http_done_fn done, void *arg);
void ph_http_cancel(sb_http_call *call);
sb_ws *ph_ws_connect(sb_plugin *self, sb_instance *inst, const char *url, const sb_header *headers,
                     size_t n_headers, sb_ws_fn fn, void *arg);
int ph_ws_send(sb_ws *ws, int binary, const void *data, size_t len);
void ph_ws_close(sb_ws *ws, int code, const char *reason);
int ph_reply(sb_reply *reply, int status, const char *content_type, const void *body, size_t len);
int ph_reply_header(sb_reply *reply, const char *name, const char *value);
struct sb_reply *ph_current_reply(void);

/* instance.c: the plugin and its one instance. */
void ph_init(json_t *frame);
void ph_send(json_t *frame);
void ph_webhook(json_t *frame);
/* instance_stop, release, shutdown, dlclose: whatever of it is owed. */
void ph_teardown(void);

#endif
