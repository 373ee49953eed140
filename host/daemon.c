#include "daemon.h"

#include "supervisor.h"

#include "auth.h"
#include "httpc.h"
#include "ws.h"
#include "log.h"
#include "inbound.h"
#include "outbox.h"
#include "ratelimit.h"
#include "subscriptions.h"
#include "secrets.h"
#include "metrics.h"
#include "notify.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int mkdir_p(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, mode) < 0 && errno != EEXIST ? -1 : 0;
}

/* Private plugin copies of daemons that are gone; ours are named <pid>.<gen>.<file>. */
static void remove_stale_copies(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (end == de->d_name || *end != '.' || (kill((pid_t)pid, 0) == 0 || errno == EPERM))
            continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) < (int)sizeof(path))
            unlink(path);
    }
    closedir(d);
}

static void count_reload(const char *result)
{
    sbh_metrics_add("switchboard_reloads_total", "Config reloads by result", 1, "result", result,
                    NULL);
}

void sbh_daemon_apply_limits(struct sbh_daemon *d, const struct sbh_config *cfg)
{
    unsigned api = sbh_config_uint(cfg, "limits", "api_per_key_rps", 0);
    unsigned hook = sbh_config_uint(cfg, "limits", "webhook_per_ip_rps", 0);
    if (!d->api_limit)
        d->api_limit = sbh_ratelimit_new(0, 0);
    if (!d->hook_limit)
        d->hook_limit = sbh_ratelimit_new(0, 0);
    if (d->api_limit)
        sbh_ratelimit_set(d->api_limit, api, sbh_config_uint(cfg, "limits", "api_burst", 0));
    if (d->hook_limit)
        sbh_ratelimit_set(d->hook_limit, hook, sbh_config_uint(cfg, "limits", "webhook_burst", 0));
    if (d->http)
        evhttp_set_max_body_size(d->http,
                                 sbh_config_uint(cfg, "limits", "max_body_bytes", 1024 * 1024));
}

static void on_swaps_done(void *arg)
{
    struct sbh_daemon *d = arg;
    /* A reload that came in during the swap, or a file that changed again. */
    d->reload_wanted = 0;
    sbh_daemon_reload(d);
}

/* A rotation adds a key to the file; read it so new rows seal with it. */
static void reload_keyring(struct sbh_daemon *d, const struct sbh_config *cfg)
{
    char why[512];
    if (!d->ring || getenv("SWITCHBOARD_MASTER_KEY"))
        return;
    struct sbh_keyring *ring = sbh_keyring_load_file(cfg->master_key_file, why, sizeof(why));
    if (!ring) {
        sbh_warn("secrets", "master key file not reloaded, keeping the old keys: %s", why);
        return;
    }
    sbh_keyring_free(d->ring);
    d->ring = ring;
}

static int listen_changed(const struct sbh_config *a, const struct sbh_config *b)
{
    return a->port != b->port || strcmp(a->listen_address, b->listen_address) != 0;
}

int sbh_daemon_reload(struct sbh_daemon *d)
{
    struct sbh_config_error err;
    char why[sizeof(err.reason)];
    if (d->stopping)
        return 0;
    if (sbh_registry_swapping(d->reg)) {
        d->reload_wanted = 1;
        return 0;
    }
    sbh_notify("RELOADING=1");
    struct sbh_config *cfg = sbh_config_load(d->config_path, &d->ov, d->env, &err);
    if (!cfg) {
        sbh_config_log_error(&err);
        count_reload("failed");
        sbh_notify("READY=1");
        return -1;
    }
    struct evhttp_bound_socket *listener = NULL;
    if (listen_changed(cfg, d->cfg)) {
        listener = sbh_http_bind(d, cfg->listen_address, cfg->port);
        if (!listener) {
            snprintf(why, sizeof(why), "cannot listen on %s:%d", cfg->listen_address, cfg->port);
            goto reject;
        }
    }
    sbh_registry_set_swap_timeout(d->reg, cfg->swap_timeout_ms);
    if (sbh_supervisor_set_host(d->sv, cfg->plugin_host) < 0) {
        snprintf(why, sizeof(why), "out of memory");
        goto reject;
    }
    if (sbh_registry_apply(d->reg, cfg, why, sizeof(why)) < 0)
        goto reject;
    if (listener) {
        evhttp_del_accept_socket(d->http, d->listener);
        d->listener = listener;
    }
    if (strcmp(cfg->state_dir, d->cfg->state_dir) != 0)
        sbh_warn("reload", "state_dir changes take effect at the next start");
    reload_keyring(d, cfg);
    sbh_daemon_apply_limits(d, cfg);
    sbh_config_free(d->cfg);
    d->cfg = cfg;
    sbh_log_set_level((enum sb_log_level)cfg->log_level);
    if (d->watch)
        sbh_watch_update(d->watch);
    count_reload("ok");
    sbh_info("reload", "config reloaded");
    sbh_notify("READY=1");
    return 0;
reject:
    if (listener)
        evhttp_del_accept_socket(d->http, listener);
    snprintf(err.file, sizeof(err.file), "%s", d->config_path);
    err.line = err.column = 0;
    err.key[0] = '\0';
    memcpy(err.reason, why, sizeof(err.reason));
    sbh_config_log_error(&err);
    sbh_config_free(cfg);
    count_reload("failed");
    sbh_notify("READY=1");
    return -1;
}

static void finish_shutdown(struct sbh_daemon *d)
{
    if (d->drain_poll)
        event_del(d->drain_poll);
    if (d->drain_deadline)
        event_del(d->drain_deadline);
    /* Let the last answers flush before the loop ends. */
    struct timeval tv = {0, 50 * 1000};
    event_base_loopexit(d->base, &tv);
}

static void on_drain_poll(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_daemon *d = arg;
    if (sbh_registry_pending(d->reg) == 0 && d->api_inflight == 0 &&
        (!d->outbox || sbh_outbox_unsaved(d->outbox) == 0) &&
        (!d->inbound || sbh_inbound_unsaved(d->inbound) == 0) &&
        (!d->subs || sbh_subs_unsaved(d->subs) == 0))
        finish_shutdown(d);
}

static void on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_daemon *d = arg;
    sbh_warn("main", "drain timed out; answering %zu outstanding requests with 503",
             sbh_registry_pending(d->reg));
    sbh_registry_abort_pending(d->reg);
    finish_shutdown(d);
}

void sbh_daemon_shutdown(struct sbh_daemon *d)
{
    if (d->stopping)
        return;
    d->stopping = 1;
    sbh_notify("STOPPING=1");
    if (d->listener) {
        evhttp_del_accept_socket(d->http, d->listener);
        d->listener = NULL;
    }
    size_t pending = sbh_registry_pending(d->reg) + d->api_inflight +
                     (d->outbox ? sbh_outbox_unsaved(d->outbox) : 0);
    sbh_info("main", "shutting down: draining %zu requests", pending);
    if (pending == 0) {
        finish_shutdown(d);
        return;
    }
    d->drain_poll = event_new(d->base, -1, EV_PERSIST, on_drain_poll, d);
    d->drain_deadline = evtimer_new(d->base, on_drain_deadline, d);
    struct timeval poll = {0, 10 * 1000};
    struct timeval deadline = {d->cfg->shutdown_timeout_ms / 1000,
                               (d->cfg->shutdown_timeout_ms % 1000) * 1000};
    event_add(d->drain_poll, &poll);
    evtimer_add(d->drain_deadline, &deadline);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct sbh_daemon *d = arg;
    if (sig == SIGHUP) {
        sbh_info("reload", "SIGHUP: reloading");
        sbh_daemon_reload(d);
        return;
    }
    sbh_info("main", "signal %d: stopping", (int)sig);
    sbh_daemon_shutdown(d);
}

static int setup_signals(struct sbh_daemon *d)
{
    const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        d->signals[i] = evsignal_new(d->base, sigs[i], on_signal, d);
        if (!d->signals[i] || evsignal_add(d->signals[i], NULL) < 0)
            return -1;
    }
    return 0;
}

static void on_event(void *arg, const char *provider, const char *instance, const char *type,
                     json_t *payload)
{
    /* Until storage exists, inbound events are visible in debug logs and metrics. */
    if (sbh_log_get_level() >= SB_LOG_DEBUG)
        sbh_log_fields(SB_LOG_DEBUG, "events", provider, instance,
                       json_pack("{s:s, s:O}", "type", type, "payload", payload), "event");
    json_decref(payload);
}

/* Counters present from the first scrape, so rate() and alerts work at once. */
static void declare_counters(void)
{
    static const char *const results[][2] = {{"switchboard_reloads_total", "ok"},
                                             {"switchboard_reloads_total", "failed"},
                                             {"switchboard_plugin_swaps_total", "ok"},
                                             {"switchboard_plugin_swaps_total", "refused"}};
    for (size_t i = 0; i < sizeof(results) / sizeof(results[0]); i++)
        sbh_metrics_add(results[i][0],
                        i < 2 ? "Config reloads by result" : "Plugin generations swapped in place",
                        0, "result", results[i][1], SBH_END);
}

int sbh_daemon_init(struct sbh_daemon *d, const char *path, const struct sbh_config_overrides *ov,
                    char *const *env)
{
    struct sbh_config_error err;
    char copy_dir[PATH_MAX];
    memset(d, 0, sizeof(*d));
    clock_gettime(CLOCK_MONOTONIC, &d->started);
    declare_counters();
    d->config_path = path;
    d->ov = *ov;
    d->env = env;
    d->cfg = sbh_config_load(path, ov, env, &err);
    if (!d->cfg) {
        sbh_config_log_error(&err);
        return -1;
    }
    sbh_log_set_level((enum sb_log_level)d->cfg->log_level);
    snprintf(copy_dir, sizeof(copy_dir), "%s/plugins", d->cfg->state_dir);
    if (mkdir_p(d->cfg->state_dir, 0750) < 0 || mkdir_p(copy_dir, 0700) < 0) {
        sbh_error("main", "cannot create state directory %s: %s", d->cfg->state_dir,
                  strerror(errno));
        return -1;
    }
    remove_stale_copies(copy_dir);
    d->base = event_base_new();
    if (!d->base || sbh_http_setup(d) < 0 || setup_signals(d) < 0) {
        sbh_error("main", "cannot set up the event loop");
        return -1;
    }
    d->listener = sbh_http_bind(d, d->cfg->listen_address, d->cfg->port);
    d->reg = sbh_registry_new(d->base, copy_dir);
    d->httpc = sbh_httpc_new(d->base);
    d->wsc = sbh_wsc_new(d->base);
    d->sv = sbh_supervisor_new(d->base, d->cfg->plugin_host, d->cfg->state_dir);
    if (!d->listener || !d->reg || !d->httpc || !d->wsc || !d->sv)
        return -1;
    sbh_registry_set_supervisor(d->reg, d->sv);
    sbh_registry_set_httpc(d->reg, d->httpc);
    sbh_registry_set_wsc(d->reg, d->wsc);
    sbh_registry_set_event_sink(d->reg, on_event, d);
    sbh_daemon_apply_limits(d, d->cfg);
    sbh_registry_set_webhook_limit(d->reg, d->hook_limit);
    sbh_registry_set_swap_done(d->reg, on_swaps_done, d);
    sbh_registry_set_swap_timeout(d->reg, d->cfg->swap_timeout_ms);
    char why[1024];
    if (sbh_registry_apply(d->reg, d->cfg, why, sizeof(why)) < 0) {
        sbh_error("main", "%s", why);
        return -1;
    }
    if (sbh_storage_open(d, why, sizeof(why)) < 0) {
        sbh_log_fields(SB_LOG_ERROR, "storage", NULL, NULL, json_pack("{s:s}", "reason", why),
                       "cannot open the database");
        return -1;
    }
    d->watch = sbh_watch_new(d);
    return 0;
}

int sbh_daemon_run(struct sbh_daemon *d)
{
    sbh_notify("READY=1");
    event_base_dispatch(d->base);
    return d->exit_code;
}

void sbh_daemon_free(struct sbh_daemon *d)
{
    /* Stops instances and shuts plugins down before the loop objects go. */
    sbh_registry_free(d->reg);
    d->reg = NULL;
    /* Stopped plugin-hosts get their grace to end (a browser saves its profile). */
    sbh_supervisor_free(d->sv, d->cfg ? d->cfg->shutdown_timeout_ms : 0);
    d->sv = NULL;
    sbh_httpc_free(d->httpc); /* after the registry: what plugins left open is gone */
    d->httpc = NULL;
    sbh_wsc_free(d->wsc);
    d->wsc = NULL;
    sbh_storage_close(d);
    sbh_watch_free(d->watch);
    sbh_ratelimit_free(d->api_limit);
    sbh_ratelimit_free(d->hook_limit);
    for (size_t i = 0; i < sizeof(d->signals) / sizeof(d->signals[0]); i++)
        if (d->signals[i])
            event_free(d->signals[i]);
    if (d->drain_poll)
        event_free(d->drain_poll);
    if (d->drain_deadline)
        event_free(d->drain_deadline);
    if (d->http)
        evhttp_free(d->http);
    if (d->base)
        event_base_free(d->base);
    sbh_config_free(d->cfg);
    sbh_metrics_reset();
}
