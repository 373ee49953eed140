/*
 * The plugin registry: which plugins are loaded, which instances run, and
 * the webhook traffic between HTTP and plugins. It applies a validated config
 * as a difference against what runs, and swaps a replaced .so in place.
 */
#ifndef SBH_REGISTRY_H
#define SBH_REGISTRY_H

#include <stddef.h>

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#include <switchboard/plugin.h>

#include "config.h"

struct sbh_registry;

/* Called for every event a plugin emits; steals payload. */
typedef void (*sbh_event_sink_fn)(void *arg, const char *provider, const char *instance,
                                  const char *type, json_t *payload);

/*
 * A registry loading plugin copies into copy_dir (created if missing).
 * Returns NULL if copy_dir cannot be made.
 */
struct sbh_registry *sbh_registry_new(struct event_base *base, const char *copy_dir);

/* Stop every instance, shut every plugin down, unload, free. */
void sbh_registry_free(struct sbh_registry *reg);

void sbh_registry_set_event_sink(struct sbh_registry *reg, sbh_event_sink_fn fn, void *arg);

/* The store behind the kv services (borrowed; NULL: not offered). */
struct sbh_kv;
void sbh_registry_set_kv(struct sbh_registry *reg, struct sbh_kv *kv);
/* Where emitted events are stored (borrowed; NULL: only the event sink). */
struct sbh_inbound;
void sbh_registry_set_inbound(struct sbh_registry *reg, struct sbh_inbound *inbound);

/* The client behind the http_request service (borrowed; NULL: not offered). */
struct sbh_httpc;
void sbh_registry_set_httpc(struct sbh_registry *reg, struct sbh_httpc *httpc);
struct sbh_wsc;
void sbh_registry_set_wsc(struct sbh_registry *reg, struct sbh_wsc *wsc);

/* Plugin-host processes for isolation "process" (borrowed; NULL: refused). */
struct sbh_supervisor;
void sbh_registry_set_supervisor(struct sbh_registry *reg, struct sbh_supervisor *sv);

/* The per-address limiter of webhook routes (borrowed; NULL: unlimited). */
struct sbh_ratelimit;
void sbh_registry_set_webhook_limit(struct sbh_registry *reg, struct sbh_ratelimit *rl);

/* Bound on how long an old generation may drain during a swap. */
void sbh_registry_set_swap_timeout(struct sbh_registry *reg, unsigned ms);

/*
 * Make what runs match cfg (borrowed). Newly enabled plugins are loaded and
 * initialised first; if one fails nothing changes and -1 is returned with
 * why. A plugin whose file changed on disk is swapped; a refused replacement
 * is logged and counted but does not fail the apply.
 */
int sbh_registry_apply(struct sbh_registry *reg, const struct sbh_config *cfg, char *why,
                       size_t why_len);

/* 1 while any plugin is between generations. */
int sbh_registry_swapping(const struct sbh_registry *reg);

/* Called when the last swap finishes (to run a reload that waited). */
void sbh_registry_set_swap_done(struct sbh_registry *reg, void (*fn)(void *), void *arg);

/*
 * Route an HTTP request to a plugin's webhook. Returns 1 when the path
 * belongs to a plugin (the request is then answered, now or later), 0 when it
 * is not a webhook path.
 */
int sbh_registry_webhook(struct sbh_registry *reg, struct evhttp_request *req, const char *path);

/* Webhook replies outstanding (held or with a plugin). */
size_t sbh_registry_pending(const struct sbh_registry *reg);

/* Answer every outstanding webhook with 503 (end of drain). */
void sbh_registry_abort_pending(struct sbh_registry *reg);

/* JSON for /v1/providers and /readyz (new references). */
json_t *sbh_registry_providers(const struct sbh_registry *reg);
/* 1 when every configured enabled plugin is initialised and serving. */
int sbh_registry_ready(const struct sbh_registry *reg, json_t **plugins);
size_t sbh_registry_loaded(const struct sbh_registry *reg);

/*
 * API-managed instances. put creates or updates one (settings stolen, with
 * secrets already opened), restarting it when its settings change; it waits,
 * kept, while its plugin is not loaded. Returns -1 when a config instance
 * owns the id. remove stops and forgets it.
 */
int sbh_registry_instance_put(struct sbh_registry *reg, const char *id, const char *provider,
                              json_t *settings, int enabled);
void sbh_registry_instance_remove(struct sbh_registry *reg, const char *id);
/* start: mark enabled and start; stop: stop and mark disabled; both: restart
 * (-2 when the instance is disabled). Works on config instances too (not
 * persisted). -1 when unknown. */
int sbh_registry_instance_control(struct sbh_registry *reg, const char *id, int start, int stop);
/* 1 when the instance runs (or would run) in a plugin-host, 0 in process,
 * -1 when unknown. */
int sbh_registry_instance_isolated(const struct sbh_registry *reg, const char *id);
/* Runtime view of an instance (new reference), NULL when unknown. */
json_t *sbh_registry_instance_status(const struct sbh_registry *reg, const char *id);
/*
 * Hand message (borrowed) to the instance's plugin; done gets the result
 * exactly once (maybe before this returns), a retryable failure if the
 * instance stops first. Returns 0, or one of the codes below (done is then
 * not called).
 */
#define SBH_SEND_NOT_RUNNING (-1)
#define SBH_SEND_UNSUPPORTED (-2)
#define SBH_SEND_REFUSED (-3)
int sbh_registry_send(struct sbh_registry *reg, const char *id, const json_t *message,
                      sb_send_done_fn done, void *arg);
/* Capability bits and provider name (borrowed) of an instance; -1 when unknown. */
int sbh_registry_instance_caps(const struct sbh_registry *reg, const char *id, uint32_t *caps,
                               const char **provider);

/* Descriptor of a loaded provider (borrowed until the next reload), or NULL. */
const sb_plugin_desc *sbh_registry_provider(const struct sbh_registry *reg, const char *name);

#endif
