#include "registry.h"

#include "isolate.h"

#include "httpc.h"
#include "ws.h"
#include "cidr.h"
#include "loader.h"
#include "ratelimit.h"
#include "respond.h"
#include "map.h"
#include "log.h"
#include "metrics.h"
#include "runtime.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const cap_names[] = {"media",     "buttons", "threads", "edits",
                                        "reactions", "webhook", "polling", "process-only"};

static void check_swaps(evutil_socket_t fd, short what, void *arg);

struct sbh_registry *sbh_registry_new(struct event_base *base, const char *copy_dir)
{
    if (mkdir(copy_dir, 0700) < 0 && errno != EEXIST) {
        sbh_log(SB_LOG_ERROR, "plugins", NULL, NULL, "cannot create %s: %s", copy_dir,
                strerror(errno));
        return NULL;
    }
    struct sbh_registry *reg = calloc(1, sizeof(*reg));
    if (!reg)
        return NULL;
    reg->base = base;
    reg->copy_dir = strdup(copy_dir);
    reg->next_generation = 1;
    reg->swap_timeout_ms = 5000;
    TAILQ_INIT(&reg->slots);
    reg->check_ev = event_new(base, -1, 0, check_swaps, reg);
    reg->dynamic = json_object();
    reg->by_id = sbh_map_new();
    if (!reg->copy_dir || !reg->check_ev || !reg->dynamic || !reg->by_id) {
        sbh_registry_free(reg);
        return NULL;
    }
    return reg;
}

void sbh_registry_set_event_sink(struct sbh_registry *reg, sbh_event_sink_fn fn, void *arg)
{
    reg->sink = fn;
    reg->sink_arg = arg;
}

void sbh_registry_set_kv(struct sbh_registry *reg, struct sbh_kv *kv)
{
    reg->kv = kv;
}

void sbh_registry_set_httpc(struct sbh_registry *reg, struct sbh_httpc *httpc)
{
    reg->httpc = httpc;
}

void sbh_registry_set_wsc(struct sbh_registry *reg, struct sbh_wsc *wsc)
{
    reg->wsc = wsc;
}

void sbh_registry_set_inbound(struct sbh_registry *reg, struct sbh_inbound *inbound)
{
    reg->inbound = inbound;
}

void sbh_registry_set_webhook_limit(struct sbh_registry *reg, struct sbh_ratelimit *rl)
{
    reg->hook_limit = rl;
}

void sbh_registry_set_supervisor(struct sbh_registry *reg, struct sbh_supervisor *sv)
{
    reg->sv = sv;
}

void sbh_registry_set_swap_timeout(struct sbh_registry *reg, unsigned ms)
{
    reg->swap_timeout_ms = ms;
}

void sbh_registry_set_swap_done(struct sbh_registry *reg, void (*fn)(void *), void *arg)
{
    reg->swap_done = fn;
    reg->swap_done_arg = arg;
}

/* ---- generations ---- */

static void gen_unload(struct sb_plugin *gen)
{
    if (!gen)
        return;
    sbh_timers_cancel_gen(gen);
    sbh_httpc_cancel_gen(gen);
    sbh_ws_cancel_gen(gen);
    if (gen->initialised)
        gen->desc->shutdown(gen);
    /* shutdown may have started timers or requests of its own; they die with the code. */
    sbh_timers_cancel_gen(gen);
    sbh_httpc_cancel_gen(gen);
    sbh_ws_cancel_gen(gen);
    sbh_isolate_unwrap(gen);
    sbh_loader_close(gen);
}

/*
 * Isolation "process" (configured, or demanded by the plugin): the
 * generation becomes a proxy to plugin-host children.
 */
static int isolate(struct sbh_registry *reg, struct sbh_slot *slot, struct sb_plugin *gen,
                   char *why, size_t why_len)
{
    const char *mode = json_string_value(json_object_get(slot->host_conf, "isolation"));
    int process =
        (mode && !strcmp(mode, "process")) || (gen->desc->capabilities & SB_CAP_PROCESS_ONLY);
    if (!process)
        return 0;
    if (!reg->sv) {
        snprintf(why, why_len, "isolation \"process\" is not available in this daemon");
        return -1;
    }
    struct sbh_isolate_conf conf;
    sbh_isolate_conf_read(&conf, json_object_get(slot->host_conf, "process"));
    if (sbh_isolate_wrap(gen, reg->sv, &conf) < 0) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    return 0;
}

/* Load and initialise a generation for slot (which need not be linked yet). */
static struct sb_plugin *gen_load(struct sbh_registry *reg, struct sbh_slot *slot, char *why,
                                  size_t why_len)
{
    struct sb_plugin *gen =
        sbh_loader_open(slot->file, reg->copy_dir, slot->name, reg->next_generation, why, why_len);
    if (!gen)
        return NULL;
    reg->next_generation++;
    gen->slot = slot;
    if (isolate(reg, slot, gen, why, why_len) < 0) {
        sbh_loader_close(gen);
        return NULL;
    }
    if (gen->desc->init(sbh_services(), gen, slot->plugin_config) < 0) {
        snprintf(why, why_len, "init failed (see the plugin's log lines above)");
        gen_unload(gen);
        return NULL;
    }
    gen->initialised = 1;
    sbh_log_fields(
        SB_LOG_INFO, "plugins", slot->name, NULL,
        json_pack("{s:s, s:i}", "version", gen->desc->version, "generation", (int)gen->generation),
        "plugin loaded");
    return gen;
}

/* ---- instances ---- */

static void instance_start(struct sb_instance *inst, struct sb_plugin *gen)
{
    inst->gen = gen;
    inst->state = NULL;
    if (gen->desc->instance_start(inst, inst->settings, &inst->state) < 0) {
        sbh_timers_cancel_inst(inst);
        sbh_httpc_cancel_inst(inst);
        sbh_ws_cancel_inst(inst);
        inst->gen = NULL;
        inst->conn_state = SB_STATE_ERROR;
        sbh_log(SB_LOG_ERROR, "instance", inst->slot->name, inst->id, "instance failed to start");
        return;
    }
    sbh_log(SB_LOG_INFO, "instance", inst->slot->name, inst->id, "instance started");
}

/* Sends the plugin forgot when it stopped: the caller retries them. */
static void fail_sends(struct sb_instance *inst)
{
    struct sbh_send *snd;
    static const sb_send_result stopped = {.ok = 0,
                                           .retryable = 1,
                                           .error_code = "instance_stopped",
                                           .error_message = "the instance stopped while sending"};
    while ((snd = TAILQ_FIRST(&inst->sends)) != NULL) {
        TAILQ_REMOVE(&inst->sends, snd, link);
        snd->done(snd->arg, &stopped);
        free(snd);
    }
}

static void instance_stop(struct sb_instance *inst)
{
    if (!inst->gen)
        return;
    inst->gen->desc->instance_stop(inst, inst->state);
    inst->state = NULL;
    sbh_timers_cancel_inst(inst);
    sbh_httpc_cancel_inst(inst);
    sbh_ws_cancel_inst(inst);
    fail_sends(inst);
    /* What the plugin forgot to answer is answered for it. */
    struct sb_reply *r;
    while ((r = TAILQ_FIRST(&inst->pending)) != NULL)
        sbh_reply_error(r, 503, "instance_stopped", "the instance stopped before answering");
    inst->gen = NULL;
    inst->conn_state = SB_STATE_STOPPED;
    sbh_log(SB_LOG_INFO, "instance", inst->slot->name, inst->id, "instance stopped");
}

static struct sb_instance *instance_new(struct sbh_slot *slot, const char *id,
                                        const json_t *settings, int dynamic, int enabled)
{
    struct sb_instance *inst = calloc(1, sizeof(*inst));
    if (!inst)
        return NULL;
    inst->slot = slot;
    inst->id = strdup(id);
    /* Shared, not copied (a copy was ~0.7 KiB per instance): settings trees
     * are never changed in place, whoever changes them puts a new one. */
    inst->settings = json_incref((json_t *)settings);
    inst->dynamic = dynamic;
    inst->enabled = enabled;
    LIST_INIT(&inst->timers);
    LIST_INIT(&inst->http_calls);
    LIST_INIT(&inst->websockets);
    TAILQ_INIT(&inst->pending);
    TAILQ_INIT(&inst->sends);
    if (!inst->id || !inst->settings) {
        free(inst->id);
        json_decref(inst->settings);
        free(inst);
        return NULL;
    }
    TAILQ_INSERT_TAIL(&slot->instances, inst, link);
    sbh_map_put(slot->reg->by_id, inst->id, inst);
    return inst;
}

static void instance_free(struct sb_instance *inst)
{
    instance_stop(inst);
    TAILQ_REMOVE(&inst->slot->instances, inst, link);
    if (sbh_map_get(inst->slot->reg->by_id, inst->id) == inst)
        sbh_map_del(inst->slot->reg->by_id, inst->id);
    free(inst->id);
    free(inst->detail);
    json_decref(inst->settings);
    free(inst);
}

static struct sb_instance *instance_find(struct sbh_slot *slot, const char *id)
{
    struct sb_instance *inst = sbh_map_get(slot->reg->by_id, id);
    return inst && inst->slot == slot ? inst : NULL;
}

static void start_all(struct sbh_slot *slot)
{
    struct sb_instance *inst;
    TAILQ_FOREACH (inst, &slot->instances, link)
        if (!inst->gen && inst->enabled)
            instance_start(inst, slot->cur);
}

static void stop_all(struct sbh_slot *slot)
{
    struct sb_instance *inst;
    TAILQ_FOREACH (inst, &slot->instances, link)
        instance_stop(inst);
}

/* ---- slots ---- */

static struct sbh_slot *slot_find(struct sbh_registry *reg, const char *name)
{
    struct sbh_slot *slot;
    TAILQ_FOREACH (slot, &reg->slots, link)
        if (!strcmp(slot->name, name))
            return slot;
    return NULL;
}

static json_t *host_conf(const struct sbh_plugin_conf *pc)
{
    return json_pack("{s:s, s:O}", "isolation",
                     pc->isolation == SBH_ISOLATION_PROCESS ? "process" : "inproc", "process",
                     pc->process);
}

static struct sbh_slot *slot_new(struct sbh_registry *reg, const struct sbh_plugin_conf *pc)
{
    struct sbh_slot *slot = calloc(1, sizeof(*slot));
    if (!slot)
        return NULL;
    slot->reg = reg;
    slot->name = strdup(pc->name);
    slot->file = strdup(pc->file);
    slot->webhook_path = strdup(pc->webhook_path);
    slot->plugin_config = json_deep_copy(pc->config);
    slot->host_conf = host_conf(pc);
    TAILQ_INIT(&slot->held);
    TAILQ_INIT(&slot->instances);
    return slot;
}

static void slot_free(struct sbh_slot *slot)
{
    struct sb_instance *inst;
    struct sb_reply *r;
    while ((inst = TAILQ_FIRST(&slot->instances)) != NULL)
        instance_free(inst);
    while ((r = TAILQ_FIRST(&slot->held)) != NULL) {
        TAILQ_REMOVE(&slot->held, r, link);
        sbh_reply_error(r, 503, "provider_unloaded", "the provider was unloaded");
    }
    gen_unload(slot->cur);
    gen_unload(slot->next);
    if (slot->swap_timer)
        event_free(slot->swap_timer);
    free(slot->name);
    free(slot->file);
    free(slot->webhook_path);
    free(slot->failure);
    json_decref(slot->plugin_config);
    json_decref(slot->host_conf);
    json_decref(slot->allow_from);
    free(slot);
}

static void slot_fail(struct sbh_slot *slot, const char *why)
{
    free(slot->failure);
    slot->failure = strdup(why);
    slot->state = SBH_SLOT_FAILED;
}

static size_t slot_pending(const struct sbh_slot *slot)
{
    size_t n = 0;
    struct sb_instance *inst;
    TAILQ_FOREACH (inst, &slot->instances, link)
        n += inst->n_pending;
    return n;
}

/* ---- swaps ---- */

static void finish_swap(struct sbh_slot *slot)
{
    struct sb_plugin *old = slot->cur;
    const char *old_version = old->desc->version;
    stop_all(slot);
    sbh_log_fields(SB_LOG_INFO, "plugins", slot->name, NULL,
                   json_pack("{s:s, s:i, s:s, s:i}", "version", slot->next->desc->version,
                             "generation", (int)slot->next->generation, "old_version", old_version,
                             "old_generation", (int)old->generation),
                   "plugin swapped");
    gen_unload(old);
    slot->cur = slot->next;
    slot->next = NULL;
    slot->state = SBH_SLOT_RUNNING;
    event_del(slot->swap_timer);
    sbh_metrics_add("switchboard_plugin_swaps_total", "Plugin generations swapped in place", 1,
                    "result", "ok", SBH_END);
    start_all(slot);
    struct sb_reply *r;
    while ((r = TAILQ_FIRST(&slot->held)) != NULL) {
        TAILQ_REMOVE(&slot->held, r, link);
        sbh_reply_deliver(slot, r);
    }
}

static void check_swaps(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_registry *reg = arg;
    struct sbh_slot *slot;
    int finished = 0;
    TAILQ_FOREACH (slot, &reg->slots, link)
        if (slot->state == SBH_SLOT_SWAPPING && slot_pending(slot) == 0) {
            finish_swap(slot);
            finished = 1;
        }
    if (finished && !sbh_registry_swapping(reg) && reg->swap_done)
        reg->swap_done(reg->swap_done_arg);
}

/* The old generation did not drain in time: answer its leftovers, move on. */
static void swap_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_slot *slot = arg;
    struct sb_instance *inst;
    sbh_log(SB_LOG_WARN, "plugins", slot->name, NULL,
            "old generation did not drain in time; answering its requests with 503");
    TAILQ_FOREACH (inst, &slot->instances, link) {
        struct sb_reply *r;
        TAILQ_FOREACH (r, &inst->pending, link)
            sbh_reply_abandon(r, "swap_timeout", "the provider was being replaced");
    }
    event_active(slot->reg->check_ev, EV_TIMEOUT, 0);
}

static void begin_swap(struct sbh_slot *slot, struct sb_plugin *gen)
{
    if (!slot->cur) {
        /* Nothing to drain: a failed slot just gets its first generation. */
        slot->cur = gen;
        slot->state = SBH_SLOT_RUNNING;
        free(slot->failure);
        slot->failure = NULL;
        start_all(slot);
        return;
    }
    slot->next = gen;
    slot->state = SBH_SLOT_SWAPPING;
    if (!slot->swap_timer)
        slot->swap_timer = evtimer_new(slot->reg->base, swap_timeout, slot);
    struct timeval tv = {slot->reg->swap_timeout_ms / 1000,
                         (slot->reg->swap_timeout_ms % 1000) * 1000};
    evtimer_add(slot->swap_timer, &tv);
    event_active(slot->reg->check_ev, EV_TIMEOUT, 0);
}

int sbh_registry_swapping(const struct sbh_registry *reg)
{
    const struct sbh_slot *slot;
    TAILQ_FOREACH (slot, &reg->slots, link)
        if (slot->state == SBH_SLOT_SWAPPING)
            return 1;
    return 0;
}

void sbh_registry_reply_done(struct sbh_registry *reg)
{
    if (sbh_registry_swapping(reg))
        event_active(reg->check_ev, EV_TIMEOUT, 0);
}

/* ---- apply ---- */

struct prepared {
    const struct sbh_plugin_conf *pc;
    struct sbh_slot *slot; /* existing slot, or a new unlinked one */
    struct sb_plugin *gen;
    int is_new;
    /* slot->file/plugin_config hold pc's values; the old ones are below */
    int has_old;
    char *old_file;
    json_t *old_conf;
    json_t *old_host;
};

/* Put the slot's file and config back as they were before prepare(). */
static void restore_old(struct prepared *p)
{
    if (!p->has_old)
        return;
    free(p->slot->file);
    json_decref(p->slot->plugin_config);
    json_decref(p->slot->host_conf);
    p->slot->file = p->old_file;
    p->slot->plugin_config = p->old_conf;
    p->slot->host_conf = p->old_host;
    p->has_old = 0;
}

/* The apply commits: the old file and config are no longer needed. */
static void drop_old(struct prepared *p)
{
    if (!p->has_old)
        return;
    free(p->old_file);
    json_decref(p->old_conf);
    json_decref(p->old_host);
    p->has_old = 0;
}

static int file_changed(const struct sbh_slot *slot, struct sbh_file_id *now)
{
    if (sbh_file_id_read(slot->file, now) < 0)
        return 0; /* config validation reports a missing file */
    if (slot->has_refused && sbh_file_id_equal(&slot->refused_id, now))
        return 0;
    return !slot->cur || !sbh_file_id_equal(&slot->cur->file_id, now);
}

static void refuse(struct sbh_slot *slot, const struct sbh_file_id *id, const char *why)
{
    json_t *fields = json_pack("{s:s, s:s}", "reason", why, "file", slot->file);
    sbh_log_fields(SB_LOG_ERROR, "plugins", slot->name, NULL, fields, "plugin refused");
    sbh_metrics_add("switchboard_plugin_swaps_total", "Plugin generations swapped in place", 1,
                    "result", "refused", SBH_END);
    slot->refused_id = *id;
    slot->has_refused = 1;
    if (slot->state == SBH_SLOT_FAILED)
        slot_fail(slot, why);
}

/* Phase one: load what must be loaded; nothing running changes. */
static int prepare(struct sbh_registry *reg, const struct sbh_config *cfg, struct prepared *prep,
                   size_t *n_prep, char *why, size_t why_len)
{
    for (size_t i = 0; i < cfg->n_plugins; i++) {
        const struct sbh_plugin_conf *pc = &cfg->plugins[i];
        struct sbh_slot *slot = slot_find(reg, pc->name);
        struct sbh_file_id now = {0};
        if (!pc->enabled || (slot && slot->state == SBH_SLOT_SWAPPING))
            continue;
        json_t *hc = host_conf(pc);
        int config_driven = !slot || strcmp(slot->file, pc->file) != 0 ||
                            !json_equal(slot->plugin_config, pc->config) ||
                            !json_equal(slot->host_conf, hc);
        json_decref(hc);
        if (!config_driven && !file_changed(slot, &now))
            continue;
        struct prepared *p = &prep[(*n_prep)++];
        p->pc = pc;
        p->is_new = !slot;
        p->slot = slot ? slot : slot_new(reg, pc);
        if (!p->slot) {
            snprintf(why, why_len, "out of memory");
            (*n_prep)--;
            return -1;
        }
        /* Load with the new file and config; the slot is restored on failure
         * and when the apply fails later (unprepare). */
        p->has_old = 1;
        p->old_file = p->slot->file;
        p->old_conf = p->slot->plugin_config;
        p->old_host = p->slot->host_conf;
        p->slot->file = strdup(pc->file);
        p->slot->plugin_config = json_deep_copy(pc->config);
        p->slot->host_conf = host_conf(pc);
        char reason[512];
        p->gen = gen_load(reg, p->slot, reason, sizeof(reason));
        if (p->gen)
            continue;
        restore_old(p);
        if (!reg->applied_once && p->is_new) {
            /* First start: keep the slot, failed, so /readyz can say why. */
            sbh_log_fields(SB_LOG_ERROR, "plugins", pc->name, NULL,
                           json_pack("{s:s}", "reason", reason), "plugin refused");
            slot_fail(p->slot, reason);
            continue;
        }
        if (config_driven) {
            snprintf(why, why_len, "plugin %s: %s", pc->name, reason);
            if (p->is_new)
                slot_free(p->slot);
            (*n_prep)--;
            return -1;
        }
        sbh_file_id_read(p->slot->file, &now);
        refuse(p->slot, &now, reason);
        (*n_prep)--;
    }
    return 0;
}

static void unprepare(struct prepared *prep, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        gen_unload(prep[i].gen);
        restore_old(&prep[i]);
        if (prep[i].is_new)
            slot_free(prep[i].slot);
    }
}

/* Make inst run settings; restarts it only when they differ. */
static void instance_set(struct sb_instance *inst, const json_t *settings, int enabled)
{
    if (!json_equal(inst->settings, settings)) {
        instance_stop(inst);
        json_decref(inst->settings);
        inst->settings = json_incref((json_t *)settings);
    }
    if (!enabled)
        instance_stop(inst);
    inst->enabled = enabled;
}

/* An API-managed instance's entry in reg->dynamic: [provider, settings,
 * enabled] (an array: ~0.2 KiB less per instance than an object). */
enum { SPEC_PROVIDER, SPEC_SETTINGS, SPEC_ENABLED };

/* Place the API-managed instances of slot's provider. */
static void place_dynamic(struct sbh_slot *slot)
{
    const char *id;
    json_t *spec;
    json_object_foreach (slot->reg->dynamic, id, spec) {
        if (strcmp(json_string_value(json_array_get(spec, SPEC_PROVIDER)), slot->name) != 0)
            continue;
        json_t *settings = json_array_get(spec, SPEC_SETTINGS);
        int enabled = json_is_true(json_array_get(spec, SPEC_ENABLED));
        struct sb_instance *inst = instance_find(slot, id);
        if (inst)
            instance_set(inst, settings, enabled);
        else
            instance_new(slot, id, settings, 1, enabled);
    }
}

static void sync_instances(struct sbh_slot *slot, const struct sbh_config *cfg)
{
    struct sb_instance *inst, *tmp;
    TAILQ_FOREACH_SAFE (inst, &slot->instances, link, tmp) {
        if (inst->dynamic)
            continue;
        const struct sbh_instance_conf *ic = sbh_config_instance(cfg, inst->id);
        if (!ic || !ic->enabled || strcmp(ic->provider, slot->name) != 0) {
            instance_free(inst);
            continue;
        }
        instance_set(inst, ic->settings, inst->enabled);
    }
    for (size_t i = 0; i < cfg->n_instances; i++) {
        const struct sbh_instance_conf *ic = &cfg->instances[i];
        if (ic->enabled && !strcmp(ic->provider, slot->name) && !instance_find(slot, ic->id))
            instance_new(slot, ic->id, ic->settings, 0, 1);
    }
    place_dynamic(slot);
    if (slot->state == SBH_SLOT_RUNNING)
        start_all(slot);
}

int sbh_registry_apply(struct sbh_registry *reg, const struct sbh_config *cfg, char *why,
                       size_t why_len)
{
    struct prepared *prep = calloc(cfg->n_plugins + 1, sizeof(*prep));
    size_t n_prep = 0;
    if (!prep) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    if (prepare(reg, cfg, prep, &n_prep, why, why_len) < 0) {
        unprepare(prep, n_prep);
        free(prep);
        return -1;
    }
    /* Phase two: commit. Drop what is no longer wanted first. */
    struct sbh_slot *slot, *tmp;
    TAILQ_FOREACH_SAFE (slot, &reg->slots, link, tmp) {
        const struct sbh_plugin_conf *pc = sbh_config_plugin(cfg, slot->name);
        if (pc && pc->enabled)
            continue;
        TAILQ_REMOVE(&reg->slots, slot, link);
        sbh_log(SB_LOG_INFO, "plugins", slot->name, NULL, "plugin unloaded");
        slot_free(slot);
    }
    for (size_t i = 0; i < n_prep; i++) {
        drop_old(&prep[i]);
        if (prep[i].is_new) {
            TAILQ_INSERT_TAIL(&reg->slots, prep[i].slot, link);
            if (prep[i].gen) {
                prep[i].slot->cur = prep[i].gen;
                prep[i].slot->state = SBH_SLOT_RUNNING;
            }
        } else {
            begin_swap(prep[i].slot, prep[i].gen);
        }
    }
    TAILQ_FOREACH (slot, &reg->slots, link) {
        const struct sbh_plugin_conf *pc = sbh_config_plugin(cfg, slot->name);
        json_decref(slot->allow_from);
        slot->allow_from = pc->allow_from ? json_incref(pc->allow_from) : NULL;
        if (strcmp(slot->webhook_path, pc->webhook_path) != 0) {
            free(slot->webhook_path);
            slot->webhook_path = strdup(pc->webhook_path);
        }
        sync_instances(slot, cfg);
    }
    reg->applied_once = 1;
    free(prep);
    return 0;
}

/* ---- webhooks ---- */

/* Allow-list and per-address rate limit; 1 when the request was refused. */
static int webhook_gate(struct sbh_slot *slot, struct evhttp_request *req)
{
    char *addr = NULL, route[160];
    ev_uint16_t port = 0;
    unsigned wait = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr, &port);
    snprintf(route, sizeof(route), "%s/{instance}", slot->webhook_path);
    if (slot->allow_from && (!addr || !sbh_cidr_match(slot->allow_from, addr))) {
        sbh_metrics_add("switchboard_webhooks_refused_total", "Webhook requests refused", 1,
                        "provider", slot->name, "reason", "not_allowed", SBH_END);
        sbh_respond_error(req, route, 403, "forbidden_address",
                          "this address may not call this webhook", NULL);
        return 1;
    }
    if (addr && !sbh_ratelimit_take(slot->reg->hook_limit, addr, &wait)) {
        char after[16];
        snprintf(after, sizeof(after), "%u", wait);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", after);
        sbh_metrics_add("switchboard_webhooks_refused_total", "Webhook requests refused", 1,
                        "provider", slot->name, "reason", "rate_limited", SBH_END);
        sbh_respond_error(req, route, 429, "rate_limited", "too many requests from this address",
                          json_pack("{s:i}", "retry_after", (int)wait));
        return 1;
    }
    return 0;
}

int sbh_registry_webhook(struct sbh_registry *reg, struct evhttp_request *req, const char *path)
{
    struct sbh_slot *slot;
    const char *rest = NULL;
    TAILQ_FOREACH (slot, &reg->slots, link) {
        size_t n = strlen(slot->webhook_path);
        if (!strncmp(path, slot->webhook_path, n) && path[n] == '/' && path[n + 1] &&
            path[n + 1] != '/') {
            rest = path + n + 1;
            break;
        }
    }
    if (!slot)
        return 0;
    if (webhook_gate(slot, req))
        return 1;
    struct sb_reply *r = sbh_reply_new(slot, req, rest);
    if (!r) {
        evhttp_send_error(req, 500, "out of memory");
        return 1;
    }
    if (slot->state == SBH_SLOT_FAILED) {
        sbh_reply_error(r, 503, "provider_failed", slot->failure ? slot->failure : "failed");
        return 1;
    }
    if (slot->state == SBH_SLOT_SWAPPING) {
        TAILQ_INSERT_TAIL(&slot->held, r, link);
        return 1;
    }
    sbh_reply_deliver(slot, r);
    return 1;
}

size_t sbh_registry_pending(const struct sbh_registry *reg)
{
    size_t n = reg->storing;
    const struct sbh_slot *slot;
    const struct sb_reply *r;
    TAILQ_FOREACH (slot, &reg->slots, link) {
        n += slot_pending(slot);
        TAILQ_FOREACH (r, &slot->held, link)
            n++;
    }
    return n;
}

void sbh_registry_abort_pending(struct sbh_registry *reg)
{
    struct sbh_slot *slot;
    TAILQ_FOREACH (slot, &reg->slots, link) {
        struct sb_instance *inst;
        struct sb_reply *r;
        while ((r = TAILQ_FIRST(&slot->held)) != NULL) {
            TAILQ_REMOVE(&slot->held, r, link);
            sbh_reply_error(r, 503, "shutting_down", "the daemon is shutting down");
        }
        TAILQ_FOREACH (inst, &slot->instances, link)
            TAILQ_FOREACH (r, &inst->pending, link)
                sbh_reply_abandon(r, "shutting_down", "the daemon is shutting down");
    }
}

/* ---- views ---- */

static const char *slot_state_name(const struct sbh_slot *slot)
{
    switch (slot->state) {
    case SBH_SLOT_RUNNING:
        return "running";
    case SBH_SLOT_SWAPPING:
        return "swapping";
    default:
        return "failed";
    }
}

static json_t *slot_json(const struct sbh_slot *slot)
{
    const sb_plugin_desc *d = slot->cur ? slot->cur->desc : NULL;
    json_t *o = json_pack("{s:s, s:s}", "name", slot->name, "state", slot_state_name(slot));
    json_t *caps = json_array(), *ids = json_array();
    const struct sb_instance *inst;
    TAILQ_FOREACH (inst, &slot->instances, link)
        json_array_append_new(ids, json_string(inst->id));
    for (size_t i = 0; d && i < sizeof(cap_names) / sizeof(cap_names[0]); i++)
        if (d->capabilities & (1u << i))
            json_array_append_new(caps, json_string(cap_names[i]));
    if (d) {
        char abi[32];
        snprintf(abi, sizeof(abi), "%u.%u", d->abi_major, d->abi_minor);
        json_object_set_new(o, "version", json_string(d->version));
        json_object_set_new(o, "abi", json_string(abi));
        json_object_set_new(o, "description", json_string(d->description ? d->description : ""));
        json_object_set_new(o, "generation", json_integer(slot->cur->generation));
        json_t *schema = d->settings_schema ? json_loads(d->settings_schema, 0, NULL) : NULL;
        json_object_set_new(o, "settings_schema", schema ? schema : json_object());
    }
    json_object_set_new(o, "capabilities", caps);
    json_object_set_new(o, "webhook_path", json_string(slot->webhook_path));
    json_object_set_new(o, "isolation",
                        json_string(slot->cur && slot->cur->iso ? "process" : "inproc"));
    json_object_set_new(o, "instances", ids);
    if (slot->failure)
        json_object_set_new(o, "error", json_string(slot->failure));
    return o;
}

json_t *sbh_registry_providers(const struct sbh_registry *reg)
{
    json_t *arr = json_array();
    const struct sbh_slot *slot;
    TAILQ_FOREACH (slot, &reg->slots, link)
        json_array_append_new(arr, slot_json(slot));
    return arr;
}

int sbh_registry_ready(const struct sbh_registry *reg, json_t **plugins)
{
    int ready = 1;
    const struct sbh_slot *slot;
    *plugins = json_object();
    TAILQ_FOREACH (slot, &reg->slots, link) {
        json_object_set_new(*plugins, slot->name, json_string(slot_state_name(slot)));
        if (slot->state == SBH_SLOT_FAILED)
            ready = 0;
    }
    return ready;
}

size_t sbh_registry_loaded(const struct sbh_registry *reg)
{
    size_t n = 0;
    const struct sbh_slot *slot;
    TAILQ_FOREACH (slot, &reg->slots, link)
        n += slot->cur != NULL;
    return n;
}

void sbh_registry_free(struct sbh_registry *reg)
{
    if (!reg)
        return;
    struct sbh_slot *slot;
    while ((slot = TAILQ_FIRST(&reg->slots)) != NULL) {
        TAILQ_REMOVE(&reg->slots, slot, link);
        slot_free(slot);
    }
    if (reg->check_ev)
        event_free(reg->check_ev);
    json_decref(reg->dynamic);
    sbh_map_free(reg->by_id);
    free(reg->copy_dir);
    free(reg);
}

/* ---- API-managed instances ---- */

static struct sb_instance *instance_lookup(const struct sbh_registry *reg, const char *id)
{
    return sbh_map_get(reg->by_id, id);
}

int sbh_registry_instance_put(struct sbh_registry *reg, const char *id, const char *provider,
                              json_t *settings, int enabled)
{
    json_t *spec = json_pack("[s, o, b]", provider, settings, enabled); /* SPEC_* */
    if (!spec)
        return -1;
    struct sb_instance *inst = instance_lookup(reg, id);
    if (inst && (!inst->dynamic || strcmp(inst->slot->name, provider) != 0)) {
        if (!inst->dynamic) {
            json_decref(spec);
            return -1; /* a config instance owns this id */
        }
        instance_free(inst);
    }
    json_object_set_new(reg->dynamic, id, spec);
    struct sbh_slot *slot = slot_find(reg, provider);
    if (!slot)
        return 0; /* placed when the plugin is loaded */
    inst = instance_find(slot, id);
    if (inst)
        instance_set(inst, settings, enabled);
    else
        inst = instance_new(slot, id, settings, 1, enabled);
    if (inst && slot->state == SBH_SLOT_RUNNING && enabled && !inst->gen)
        instance_start(inst, slot->cur);
    return 0;
}

void sbh_registry_instance_remove(struct sbh_registry *reg, const char *id)
{
    struct sb_instance *inst = instance_lookup(reg, id);
    if (inst && inst->dynamic)
        instance_free(inst);
    json_object_del(reg->dynamic, id);
}

int sbh_registry_instance_control(struct sbh_registry *reg, const char *id, int start, int stop)
{
    struct sb_instance *inst = instance_lookup(reg, id);
    if (!inst)
        return -1;
    if (start && stop && !inst->enabled)
        return -2; /* a restart does not start what was stopped on purpose */
    if (stop)
        instance_stop(inst);
    inst->enabled = start || !stop;
    json_t *spec = json_object_get(reg->dynamic, id);
    if (spec)
        json_array_set_new(spec, SPEC_ENABLED, json_boolean(inst->enabled));
    if (start && !inst->gen && inst->slot->state == SBH_SLOT_RUNNING)
        instance_start(inst, inst->slot->cur);
    return 0;
}

int sbh_registry_instance_isolated(const struct sbh_registry *reg, const char *id)
{
    const struct sb_instance *inst = instance_lookup(reg, id);
    if (!inst)
        return -1;
    return inst->slot->cur && inst->slot->cur->iso ? 1 : 0;
}

static const char *const conn_state_names[] = {"stopped",   "connecting",   "qr",
                                               "connected", "disconnected", "error"};

json_t *sbh_registry_instance_status(const struct sbh_registry *reg, const char *id)
{
    const struct sb_instance *inst = instance_lookup(reg, id);
    if (!inst)
        return NULL;
    json_t *st =
        json_pack("{s:s, s:b, s:s, s:b, s:i}", "provider", inst->slot->name, "running",
                  inst->gen != NULL, "state", conn_state_names[inst->conn_state], "config_managed",
                  !inst->dynamic, "pending_webhooks", (int)inst->n_pending);
    if (inst->detail)
        json_object_set_new(st, "detail", json_string(inst->detail));
    if (inst->gen) {
        json_object_set_new(st, "plugin_version", json_string(inst->gen->desc->version));
        json_object_set_new(st, "generation", json_integer(inst->gen->generation));
        json_t *extra = inst->gen->desc->status
                            ? inst->gen->desc->status((sb_instance *)inst, inst->state)
                            : NULL;
        if (extra)
            json_object_set_new(st, "provider_status", extra);
    }
    return st;
}

const sb_plugin_desc *sbh_registry_provider(const struct sbh_registry *reg, const char *name)
{
    const struct sbh_slot *slot = slot_find((struct sbh_registry *)reg, name);
    return slot && slot->cur ? slot->cur->desc : NULL;
}

/* ---- sending ---- */

static void send_done(void *arg, const sb_send_result *res)
{
    struct sbh_send *snd = arg;
    TAILQ_REMOVE(&snd->inst->sends, snd, link);
    sb_send_done_fn done = snd->done;
    void *done_arg = snd->arg;
    free(snd);
    done(done_arg, res);
}

int sbh_registry_send(struct sbh_registry *reg, const char *id, const json_t *message,
                      sb_send_done_fn done, void *arg)
{
    struct sb_instance *inst = instance_lookup(reg, id);
    if (!inst || !inst->gen || inst->slot->state != SBH_SLOT_RUNNING)
        return SBH_SEND_NOT_RUNNING;
    if (!inst->gen->desc->send)
        return SBH_SEND_UNSUPPORTED;
    struct sbh_send *snd = calloc(1, sizeof(*snd));
    if (!snd)
        return SBH_SEND_NOT_RUNNING;
    *snd = (struct sbh_send){.inst = inst, .done = done, .arg = arg};
    TAILQ_INSERT_TAIL(&inst->sends, snd, link);
    if (inst->gen->desc->send(inst, inst->state, message, send_done, snd) < 0) {
        /* Refused synchronously: done() is not called by the plugin. */
        TAILQ_REMOVE(&inst->sends, snd, link);
        free(snd);
        return SBH_SEND_REFUSED;
    }
    return 0;
}

int sbh_registry_instance_caps(const struct sbh_registry *reg, const char *id, uint32_t *caps,
                               const char **provider)
{
    const struct sb_instance *inst = instance_lookup(reg, id);
    if (!inst)
        return -1;
    *provider = inst->slot->name;
    *caps = inst->slot->cur ? inst->slot->cur->desc->capabilities : 0;
    return 0;
}
