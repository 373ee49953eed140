/*
 * The host's live objects: plugin slots, their loaded generations, running
 * instances and pending webhook replies. Everything here lives on the loop
 * thread.
 */
#ifndef SBH_RUNTIME_H
#define SBH_RUNTIME_H

#include <sys/queue.h>
#include <sys/types.h>
#include <time.h>

#include <event2/event.h>
#include <event2/http.h>

#include <switchboard/plugin.h>

#include "config.h"

/* glibc's sys/queue.h predates the _SAFE iterators. */
#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar)                                                 \
    for ((var) = TAILQ_FIRST(head); (var) && ((tvar) = TAILQ_NEXT(var, field), 1); (var) = (tvar))
#endif

struct sbh_registry;
struct sbh_slot;

/* Identity of a plugin file on disk, to notice a replacement. */
struct sbh_file_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

/* A host-owned resource of a plugin (timers now; requests and sockets later). */
struct sb_timer {
    LIST_ENTRY(sb_timer) by_gen;
    LIST_ENTRY(sb_timer) by_inst;
    struct event *ev;
    struct sb_plugin *gen;
    struct sb_instance *inst;
    sb_timer_fn fn;
    void *arg;
    int repeat;
    int firing;    /* inside fn: free after it returns */
    int cancelled; /* cancelled from inside its own fn */
    int detached;  /* already off the lists: timer_fire frees it */
};
LIST_HEAD(sbh_timer_list, sb_timer);

/* Outbound HTTP calls of a plugin (struct sb_http_call is httpc.c's). */
LIST_HEAD(sbh_http_call_list, sb_http_call);

/* WebSockets of a plugin (struct sb_ws is ws.c's). */
LIST_HEAD(sbh_ws_list, sb_ws);

/* A webhook request waiting for its plugin's answer, or held during a swap. */
struct sb_reply {
    TAILQ_ENTRY(sb_reply) link; /* in its instance's pending list or the slot's held queue */
    struct sbh_registry *reg;
    struct evhttp_request *req; /* NULL once the client went away */
    struct sb_instance *inst;   /* set while the plugin holds it */
    int abandoned;              /* the host answered for the plugin, which still holds it */
    json_t *events;             /* emitted while the plugin handled it: stored before the answer */
    int ans_status;             /* the plugin's answer, kept while its events are stored */
    char *ans_type;
    char *ans_body;
    size_t ans_len;
    char *route; /* metrics label */
    char *instance_id;
    char *subpath; /* path after /webhook/<p>/<i>, "" when none */
    char *query;
    char *method;
    sb_header *headers;
    size_t n_headers;
    unsigned char *body;
    size_t body_len;
    sb_http_request view;
};
TAILQ_HEAD(sbh_reply_list, sb_reply);

/* A send handed to a plugin, until its done() comes or the instance stops. */
struct sbh_send {
    TAILQ_ENTRY(sbh_send) link;
    struct sb_instance *inst;
    sb_send_done_fn done; /* the host's caller */
    void *arg;
};
TAILQ_HEAD(sbh_send_list, sbh_send);

/* One loaded generation of a plugin .so. */
struct sb_plugin {
    struct sbh_slot *slot;
    unsigned generation;
    void *dl;
    char *copy_path; /* private copy it was loaded from */
    const sb_plugin_desc *desc;
    struct sbh_iso_gen *iso; /* isolation "process": the proxy's side (isolate.c) */
    struct sbh_file_id file_id;
    int initialised;
    struct sbh_timer_list timers;
    struct sbh_http_call_list http_calls;
    struct sbh_ws_list websockets;
};

struct sb_instance {
    TAILQ_ENTRY(sb_instance) link;
    struct sbh_slot *slot;
    struct sb_plugin *gen; /* generation running it, NULL when stopped */
    char *id;
    json_t *settings;
    void *state;
    enum sb_instance_state conn_state;
    char *detail;
    struct sbh_timer_list timers;
    struct sbh_http_call_list http_calls;
    struct sbh_ws_list websockets;
    struct sbh_reply_list pending;
    unsigned n_pending;
    struct sbh_send_list sends;
    int dynamic; /* managed through the API (database), not the config */
    int enabled; /* 0: kept but not started (stopped through the API) */
};
TAILQ_HEAD(sbh_instance_list, sb_instance);

enum sbh_slot_state { SBH_SLOT_RUNNING, SBH_SLOT_SWAPPING, SBH_SLOT_FAILED };

/* A configured provider: stable across generations and reloads. */
struct sbh_slot {
    TAILQ_ENTRY(sbh_slot) link;
    struct sbh_registry *reg;
    char *name;
    char *file;
    char *webhook_path;
    json_t *plugin_config;
    json_t *host_conf;  /* {"isolation", "process"}: how its instances run */
    json_t *allow_from; /* CIDRs, or NULL */
    enum sbh_slot_state state;
    char *failure; /* why it is FAILED */
    struct sb_plugin *cur;
    struct sb_plugin *next;   /* generation waiting for cur to drain */
    struct event *swap_timer; /* bounds the drain */
    struct sbh_reply_list held;
    struct sbh_instance_list instances;
    struct sbh_file_id refused_id; /* replacement already refused, not retried */
    int has_refused;
};
TAILQ_HEAD(sbh_slot_list, sbh_slot);

struct sbh_registry {
    struct event_base *base;
    char *copy_dir;
    unsigned next_generation;
    unsigned swap_timeout_ms;
    int applied_once;
    struct sbh_slot_list slots;
    struct event *check_ev; /* deferred: finish swaps whose old generation drained */
    void (*sink)(void *, const char *, const char *, const char *, json_t *);
    void *sink_arg;
    void (*swap_done)(void *);
    void *swap_done_arg;
    /* API-managed instances by id: [provider, settings, enabled]. They
     * outlive their plugin's slot and are placed again when it returns. */
    json_t *dynamic;
    struct sbh_map *by_id;            /* instance id -> sb_instance, across slots */
    struct sbh_kv *kv;                /* backs the kv_get/kv_set services; NULL: not offered */
    struct sbh_inbound *inbound;      /* stores emitted events; NULL: only the sink sees them */
    struct sb_reply *current;         /* the webhook a plugin is handling right now */
    size_t storing;                   /* answers waiting for their events to be stored */
    struct sbh_ratelimit *hook_limit; /* per client address on webhook routes */
    struct sbh_httpc *httpc;          /* backs http_request/http_cancel; NULL: not offered */
    struct sbh_wsc *wsc;              /* backs ws_connect/ws_send/ws_close; NULL: not offered */
    struct sbh_supervisor *sv;        /* plugin-host processes; NULL: isolation "process" refused */
};

/* services.c */
const sb_host_services *sbh_services(void);
void sbh_timers_cancel_gen(struct sb_plugin *gen);
void sbh_timers_cancel_inst(struct sb_instance *inst);

/* webhook.c */
struct sb_reply *sbh_reply_new(struct sbh_slot *slot, struct evhttp_request *req, const char *rest);
void sbh_reply_deliver(struct sbh_slot *slot, struct sb_reply *reply);
int sbh_reply_answer(struct sb_reply *reply, int status, const char *content_type, const void *body,
                     size_t len);
void sbh_reply_error(struct sb_reply *reply, int status, const char *code, const char *message);
/*
 * Answer the client now for a plugin that is too slow (drain or swap bound),
 * but keep the sb_reply: the plugin still holds it and may answer later,
 * which then only frees it.
 */
void sbh_reply_abandon(struct sb_reply *reply, const char *code, const char *message);

/* registry.c */
void sbh_registry_reply_done(struct sbh_registry *reg);

#endif
