/*
 * switchboard host services: the one const table the host hands a plugin at
 * init. Plugins reach the outside world only through it: they never include
 * host headers, link libcurl or OpenSSL for I/O, touch the database, or block.
 *
 * Ownership: every timer, HTTP request and WebSocket a plugin opens belongs to
 * the host and is tied to the plugin generation and (when given) the instance
 * that opened it. When an instance stops, the host cancels what is tied to it;
 * when a generation is unloaded, everything of it. A cancelled operation's
 * callback is never called. Handles returned here are valid until their
 * callback reports the end, or until cancelled.
 *
 * Threading: call these on the loop thread only (the thread that calls the
 * plugin's callbacks).
 *
 * The table is versioned by struct_size; members are only appended. A service
 * the running host does not offer yet is a non-NULL function that fails with
 * SB_ENOTAVAIL, so plugins need not test for NULL.
 */
#ifndef SWITCHBOARD_SERVICES_H
#define SWITCHBOARD_SERVICES_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SB_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define SB_PRINTF(fmt, args)
#endif

/* Opaque host objects. */
typedef struct sb_plugin sb_plugin;     /* one loaded generation of a plugin */
typedef struct sb_instance sb_instance; /* one running instance */
typedef struct sb_reply sb_reply;       /* one pending webhook answer */
typedef struct sb_timer sb_timer;
typedef struct sb_http_call sb_http_call;
typedef struct sb_ws sb_ws;
typedef struct sb_fd_watch sb_fd_watch; /* ABI 1.1 */
typedef struct sb_proc sb_proc;         /* ABI 1.1 */

/* Return codes of services (0 is success). */
#define SB_OK 0
#define SB_EINVAL (-1)    /* bad argument */
#define SB_ENOTAVAIL (-2) /* service not offered by this host */
#define SB_ENOTFOUND (-3) /* key or object absent */
#define SB_ENOMEM (-4)
#define SB_EGONE (-5) /* the instance or request no longer exists */

enum sb_log_level { SB_LOG_ERROR = 0, SB_LOG_WARN, SB_LOG_INFO, SB_LOG_DEBUG };

enum sb_instance_state {
    SB_STATE_STOPPED = 0,
    SB_STATE_CONNECTING,
    SB_STATE_QR, /* waiting for a QR scan (browser providers) */
    SB_STATE_CONNECTED,
    SB_STATE_DISCONNECTED,
    SB_STATE_ERROR,
};

/* One HTTP header, borrowed. */
typedef struct sb_header {
    const char *name;
    const char *value;
} sb_header;

/*
 * A raw request (inbound webhook, or outbound through http_request). All
 * pointers are borrowed from whoever built it.
 */
typedef struct sb_http_request {
    const char *method; /* "GET", "POST", ... */
    const char *url;    /* outbound: absolute URL; inbound: path after <webhook_path>/<instance>,
                           "" when there is none */
    const char *query;  /* inbound: raw query string without '?', or NULL */
    const sb_header *headers;
    size_t n_headers;
    const unsigned char *body;
    size_t body_len;
    uint32_t timeout_ms; /* outbound only; 0 means the host default */
} sb_http_request;

/* An outbound response, borrowed for the duration of the callback. */
typedef struct sb_http_response {
    int status;        /* HTTP status, or 0 when no answer came */
    const char *error; /* transport error text when status is 0 */
    const sb_header *headers;
    size_t n_headers;
    const unsigned char *body;
    size_t body_len;
} sb_http_response;

typedef void (*sb_timer_fn)(void *arg);
typedef void (*sb_http_done_fn)(void *arg, const sb_http_response *resp);

enum sb_ws_event { SB_WS_OPEN, SB_WS_TEXT, SB_WS_BINARY, SB_WS_CLOSED };
/* data/len carry the message for TEXT/BINARY, the close reason for CLOSED. */
typedef void (*sb_ws_fn)(void *arg, enum sb_ws_event ev, const unsigned char *data, size_t len,
                         int close_code);

/* fd_watch interest and readiness bits (ABI 1.1). */
#define SB_FD_READ 1
#define SB_FD_WRITE 2
/* what: SB_FD_READ and/or SB_FD_WRITE, whichever is ready now. */
typedef void (*sb_fd_fn)(void *arg, int fd, int what);

/* One descriptor handed to a child process: parent_fd becomes child_fd there. */
typedef struct sb_proc_fd {
    int parent_fd;
    int child_fd;
} sb_proc_fd;
/* status is the wait status (WIFEXITED/WEXITSTATUS/WIFSIGNALED/WTERMSIG). */
typedef void (*sb_proc_exit_fn)(void *arg, int status);

typedef struct sb_host_services {
    uint32_t struct_size; /* sizeof(sb_host_services) of the host */
    uint32_t abi_major;   /* the host's SB_ABI_MAJOR */
    uint32_t abi_minor;   /* the host's SB_ABI_MINOR */

    /* Structured log line; inst may be NULL. Never pass secrets. */
    void (*log)(sb_plugin *self, sb_instance *inst, enum sb_log_level level, const char *fmt, ...)
        SB_PRINTF(4, 5);

    /* The instance's id (borrowed, lives as long as the instance). */
    const char *(*instance_id)(sb_instance *inst);

    /* Report the instance's connection state; detail (borrowed) may be NULL. */
    void (*set_state)(sb_instance *inst, enum sb_instance_state state, const char *detail);

    /*
     * Hand one normalised inbound event to the host. type is one of
     * "message.received", "message.status", "interaction", "instance.status".
     * Steals the reference to payload. Returns SB_OK once the host has taken it.
     */
    int (*emit_event)(sb_instance *inst, const char *type, json_t *payload);

    /*
     * Answer a webhook exactly once. body is copied; content_type NULL means
     * application/json. After this call the sb_reply and its request are gone.
     */
    int (*reply)(sb_reply *reply, int status, const char *content_type, const void *body,
                 size_t len);

    /*
     * One-shot (repeat 0) or repeating timer. inst may be NULL for a
     * plugin-wide timer. Returns NULL on failure.
     */
    sb_timer *(*timer_start)(sb_plugin *self, sb_instance *inst, uint32_t ms, int repeat,
                             sb_timer_fn fn, void *arg);
    /* Cancel a timer; a one-shot timer that already fired must not be passed. */
    void (*timer_cancel)(sb_timer *timer);

    /*
     * Asynchronous HTTP(S) request; done is called exactly once unless the
     * call is cancelled. Returns NULL on failure (and done is not called).
     */
    sb_http_call *(*http_request)(sb_plugin *self, sb_instance *inst, const sb_http_request *req,
                                  sb_http_done_fn done, void *arg);
    void (*http_cancel)(sb_http_call *call);

    /*
     * WebSocket client (ws:// or wss://, RFC 6455); fn gets OPEN, then
     * messages (whole: fragments are reassembled; text is valid UTF-8), then
     * exactly one CLOSED, never from inside ws_connect/ws_send/ws_close.
     * CLOSED's close_code is the server's code after a close it started
     * (1005 when it gave none), the code the host sent when it closed for a
     * protocol reason (1002, 1007 bad UTF-8, 1009 message over 16 MiB), or
     * 1006 when the connection broke or could not be opened (data then holds
     * a reason text). headers (borrowed) are sent with the upgrade request;
     * the handshake's own (Host, Upgrade, Connection, Sec-WebSocket-*) cannot
     * be set. Returns NULL, without a callback, for an unusable URL or header.
     * wss:// verifies the server's certificate and name against the system CA
     * store (SSL_CERT_FILE/SSL_CERT_DIR are honoured). Reconnecting, with
     * backoff, is the plugin's job (timers): the host never reconnects.
     *
     * ws_send queues one message: SB_OK, SB_EGONE when the socket is not (or
     * no longer) open, SB_ENOMEM when 64 MiB are already waiting to go out.
     * ws_close (code 0 means 1000; reason at most 123 bytes) lets go of the
     * socket: no callback comes for it afterwards, like http_cancel, and the
     * host finishes the close handshake on its own. Call it at most once, and
     * not after CLOSED was delivered. Both may be called from inside fn.
     */
    sb_ws *(*ws_connect)(sb_plugin *self, sb_instance *inst, const char *url,
                         const sb_header *headers, size_t n_headers, sb_ws_fn fn, void *arg);
    int (*ws_send)(sb_ws *ws, int binary, const void *data, size_t len);
    void (*ws_close)(sb_ws *ws, int code, const char *reason);

    /*
     * Small persistent per-instance key-value store (update offsets, session
     * ids). kv_get returns a malloc'd NUL-terminated copy in *value that the
     * caller frees with free().
     */
    int (*kv_get)(sb_instance *inst, const char *key, char **value);
    int (*kv_set)(sb_instance *inst, const char *key, const char *value);

    /*
     * Add delta to a counter exported on /metrics as
     * switchboard_plugin_<name>_total{provider,instance}. name is [a-z0-9_]+.
     */
    void (*metric_add)(sb_plugin *self, sb_instance *inst, const char *name, double delta);

    /* The generation running inst, for callbacks that only get the instance. */
    sb_plugin *(*instance_plugin)(sb_instance *inst);

    /*
     * Add a response header (copied) to a webhook answer before reply();
     * e.g. Allow on a 405 or Retry-After on a 503.
     */
    int (*reply_header)(sb_reply *reply, const char *name, const char *value);

    /* ---- ABI 1.1: present when struct_size reaches them ---- */

    /*
     * Watch a descriptor the plugin owns (the host never closes it) on the
     * loop: fn is called whenever it is ready for any bit of what
     * (level-triggered) until fd_unwatch. Returns NULL for a bad argument.
     * Call fd_unwatch before closing fd; it may be called from inside fn.
     */
    sb_fd_watch *(*fd_watch)(sb_plugin *self, sb_instance *inst, int fd, int what, sb_fd_fn fn,
                             void *arg);
    void (*fd_unwatch)(sb_fd_watch *watch);

    /*
     * Start a child process: argv[0] is searched in PATH; envp NULL keeps the
     * host's environment. The child gets /dev/null as stdin, the host's
     * stdout/stderr, and for each fds[i] a copy of parent_fd as child_fd; no
     * other descriptor of the host leaks into it. The plugin still owns (and
     * closes) its parent_fd ends. The child is killed with SIGKILL when the
     * process hosting the plugin dies, so no child outlives its host. exit is
     * called once with the wait status when the child ends, unless released.
     * Returns NULL (no callback) when it could not be started.
     *
     * proc_pid tells the child's process id. proc_signal sends it a signal
     * (SB_EGONE once it has ended). proc_release lets go of the handle: the
     * host sends SIGKILL if the child still runs, reaps it, and never calls
     * exit for it; call it at most once, not after exit was delivered. When
     * an instance stops, whatever it still has running gets SIGTERM (a
     * browser then saves its profile) and SIGKILL five seconds later.
     *
     * fd_watch and proc_* are offered where the plugin runs in its own
     * switchboard-plugin-host (isolation "process"). Inside the daemon they
     * fail (NULL, SB_ENOTAVAIL): descriptors and children of a plugin there
     * would share the daemon's fate. A plugin that needs them declares
     * SB_CAP_PROCESS_ONLY.
     */
    sb_proc *(*proc_spawn)(sb_plugin *self, sb_instance *inst, const char *const *argv,
                           const char *const *envp, const sb_proc_fd *fds, size_t n_fds,
                           sb_proc_exit_fn exit, void *arg);
    long (*proc_pid)(sb_proc *proc);
    int (*proc_signal)(sb_proc *proc, int sig);
    void (*proc_release)(sb_proc *proc);
} sb_host_services;

#ifdef __cplusplus
}
#endif

#endif
