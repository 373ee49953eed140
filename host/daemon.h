/*
 * The daemon: one event loop owning the HTTP server, the plugin registry,
 * the config and its watchers. Reload and shutdown are driven from here.
 */
#ifndef SBH_DAEMON_H
#define SBH_DAEMON_H

#include <time.h>

#include <event2/event.h>
#include <event2/http.h>

#include "config.h"
#include "db.h"
#include "mariadb.h"
#include "registry.h"

struct sbh_auth;
struct sbh_httpc;
struct sbh_wsc;
struct sbh_supervisor;
struct sbh_db_restart;
struct sbh_outbox;
struct sbh_inbound;
struct sbh_events;
struct sbh_subs;
struct sbh_ratelimit;
struct sbh_keyring;

struct sbh_watch;

struct sbh_daemon {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    struct sbh_config *cfg; /* what runs */
    struct sbh_registry *reg;
    struct sbh_config_overrides ov;
    const char *config_path;
    char *const *env;
    struct timespec started;
    struct sbh_watch *watch;
    struct event *signals[4];
    struct event *drain_poll;
    struct event *drain_deadline;
    struct sbh_db *db;
    struct sbh_db_params db_params;
    struct sbh_mariadb mariadb; /* the embedded server, when pid != 0 */
    int db_embedded;            /* we run the server: restart it when it dies */
    struct event *db_watch;
    struct sbh_db_restart *db_restart; /* a restart in progress */
    time_t db_next_try;
    int db_backoff_s;
    struct sbh_auth *auth;
    struct sbh_keyring *ring;
    struct sbh_kv *kv;
    struct sbh_outbox *outbox;
    struct sbh_inbound *inbound;
    struct sbh_events *events;
    struct sbh_subs *subs;
    struct sbh_httpc *httpc; /* outbound HTTP for plugins (and the host) */
    struct sbh_wsc *wsc;       /* WebSocket client for plugins */
    struct sbh_supervisor *sv; /* plugin-host processes */
    struct event *key_refresh;
    unsigned api_inflight;
    struct sbh_ratelimit *api_limit;  /* per API key */
    struct sbh_ratelimit *hook_limit; /* per client address on webhooks */
    int reload_wanted;                /* a reload waits for a swap to end */
    int stopping;
    int exit_code;
};

/* Build everything from the config at path; returns -1 (logged) on failure. */
int sbh_daemon_init(struct sbh_daemon *d, const char *path, const struct sbh_config_overrides *ov,
                    char *const *env);
/* Run the loop until shutdown; returns the exit code. */
int sbh_daemon_run(struct sbh_daemon *d);
void sbh_daemon_free(struct sbh_daemon *d);

/* Re-read the config and apply it; 0 applied, -1 rejected (logged). */
int sbh_daemon_reload(struct sbh_daemon *d);
/* Begin a bounded drain, then stop. */
void sbh_daemon_shutdown(struct sbh_daemon *d);

/*
 * storage.c: the database at start-up (embedded server or DATABASE_URL,
 * migrations, master key, first admin key, stored instances) and the worker
 * pool afterwards. Blocking; before the loop runs. -1 with why on failure.
 */
int sbh_storage_open(struct sbh_daemon *d, char *why, size_t why_len);
void sbh_storage_close(struct sbh_daemon *d);
/* Commands: `switchboardd migrate [--status]` and `switchboardd rotate-key`. */
int sbh_cmd_migrate(const struct sbh_config *cfg, int status_only);
int sbh_cmd_rotate_key(const struct sbh_config *cfg);

/* Apply the "limits" section: rates and the body cap (start-up and reload). */
void sbh_daemon_apply_limits(struct sbh_daemon *d, const struct sbh_config *cfg);

/* http.c: serve the API on d->http. */
int sbh_http_setup(struct sbh_daemon *d);
/* Bind address:port; NULL (logged) on failure. */
struct evhttp_bound_socket *sbh_http_bind(struct sbh_daemon *d, const char *address, int port);

/* watch.c: inotify on config and plugin dirs, debounced into reloads. */
struct sbh_watch *sbh_watch_new(struct sbh_daemon *d);
/* Point the watches at the current config's directories. */
void sbh_watch_update(struct sbh_watch *w);
void sbh_watch_free(struct sbh_watch *w);

#endif
