/*
 * switchboard plugin ABI: the descriptor a provider plugin exports.
 *
 * A plugin is a shared object that exports exactly one symbol,
 * switchboard_plugin_entry(), returning a pointer to a const sb_plugin_desc
 * that lives as long as the object is loaded. The host reads abi_major,
 * abi_minor and struct_size before anything else: a different major, or a
 * newer minor than the host knows, is refused. Fields are only ever appended,
 * so a plugin built against an older minor has a smaller struct_size and the
 * host treats the missing tail as NULL.
 *
 * Threading: the host calls every callback on its one event-loop thread, and
 * plugins call host services on that thread only. No callback may block: use
 * the host's timers and async HTTP/WebSocket services instead.
 *
 * JSON crossing the ABI is Jansson json_t. Unless a comment says "steals",
 * the caller keeps its reference; a callee that wants to keep a value past the
 * call takes its own reference (json_incref) or a copy.
 */
#ifndef SWITCHBOARD_PLUGIN_H
#define SWITCHBOARD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <switchboard/services.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SB_ABI_MAJOR 1u
#define SB_ABI_MINOR 1u

/* What a provider can render or do; the host degrades what is missing. */
enum sb_capability {
    SB_CAP_MEDIA = 1u << 0,
    SB_CAP_BUTTONS = 1u << 1,
    SB_CAP_THREADS = 1u << 2,
    SB_CAP_EDITS = 1u << 3,
    SB_CAP_REACTIONS = 1u << 4,
    SB_CAP_WEBHOOK = 1u << 5,      /* receives provider webhooks */
    SB_CAP_POLLING = 1u << 6,      /* pulls updates itself */
    SB_CAP_PROCESS_ONLY = 1u << 7, /* must run in a plugin-host process */
};

/* Outcome of a send, handed to sb_send_done_fn. */
typedef struct sb_send_result {
    int ok;                      /* 1 sent, 0 failed */
    int retryable;               /* on failure: 1 transient (retry), 0 permanent */
    uint32_t retry_after_ms;     /* provider's retry hint, 0 if none */
    const char *provider_msg_id; /* on success; borrowed for the call only */
    const char *error_code;      /* on failure; borrowed */
    const char *error_message;   /* on failure; borrowed */
} sb_send_result;

/*
 * Completion of sb_plugin_desc.send. Call it exactly once, on the loop thread,
 * possibly before send() returns. The result's strings are only read during
 * the call.
 */
typedef void (*sb_send_done_fn)(void *done_arg, const sb_send_result *result);

typedef struct sb_plugin_desc {
    /* Checked before anything else is read; never move these three. */
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t struct_size; /* sizeof(sb_plugin_desc) the plugin was built with */

    const char *name;    /* provider name, [a-z0-9-]+, e.g. "telegram" */
    const char *version; /* plugin's own version string */
    const char *description;
    uint32_t capabilities;       /* enum sb_capability bits */
    const char *settings_schema; /* JSON Schema (text) of an instance's settings */

    /*
     * Required. Called once per loaded generation before any instance starts.
     * services outlives the plugin; keep the pointer. config is the plugin's
     * section of the daemon config (borrowed). Return 0, or -1 with a reason
     * logged through services->log: the host then refuses the plugin.
     */
    int (*const init)(const sb_host_services *services, sb_plugin *self, const json_t *config);

    /*
     * Required. Called after every instance of this generation has stopped.
     * The host cancels whatever timers, requests and sockets remain afterwards.
     */
    void (*const shutdown)(sb_plugin *self);

    /*
     * Required. Start one instance with its settings (borrowed; validated
     * against settings_schema by the host). Store per-instance state in
     * *state; the host passes it back to every per-instance callback.
     * Return 0, or -1 after sb_host_services.set_state(..., SB_STATE_ERROR, why).
     */
    int (*const instance_start)(sb_instance *inst, const json_t *settings, void **state);

    /*
     * Required. Stop the instance and free state. Synchronous: when it returns
     * the plugin has forgotten the instance; the host then cancels anything
     * still registered to it and answers its unanswered webhooks with 503.
     */
    void (*const instance_stop)(sb_instance *inst, void *state);

    /*
     * Optional (NULL: sending is refused). Send one provider-neutral message
     * (borrowed; see README "Message format"). Return 0 when accepted, in which
     * case done() is called exactly once later or immediately; return -1 when
     * refused synchronously, in which case done() is never called.
     */
    int (*const send)(sb_instance *inst, void *state, const json_t *message, sb_send_done_fn done,
                      void *done_arg);

    /*
     * Optional (NULL: webhooks for this provider get 404). Verify and parse a
     * raw inbound request. The plugin must answer it exactly once through
     * services->reply(), now or later; inbound events go through
     * services->emit_event(). req and everything it points to is valid until
     * reply() is called.
     */
    void (*const webhook)(sb_instance *inst, void *state, const sb_http_request *req,
                          sb_reply *reply);

    /*
     * Optional. Provider-specific status shown with the instance; a new
     * reference the host releases, or NULL.
     */
    json_t *(*const status)(sb_instance *inst, void *state);
} sb_plugin_desc;

/* Visible even when a plugin builds with -fvisibility=hidden. */
#if defined(__GNUC__)
#define SB_EXPORT __attribute__((visibility("default")))
#else
#define SB_EXPORT
#endif

/* The one symbol a plugin exports. */
typedef const sb_plugin_desc *(*sb_plugin_entry_fn)(void);
#define SB_PLUGIN_ENTRY_SYMBOL "switchboard_plugin_entry"

/*
 * Define the entry point with designated initialisers; members left out are
 * NULL/0, and the ABI header fields are filled in (do not set them yourself:
 * -Woverride-init rejects it). Example:
 *
 *   SWITCHBOARD_PLUGIN_INIT(.name = "echo", .version = "1.0.0",
 *                           .init = echo_init, ...)
 */
#define SWITCHBOARD_PLUGIN_INIT(...)                                                               \
    SB_EXPORT const sb_plugin_desc *switchboard_plugin_entry(void);                                \
    SB_EXPORT const sb_plugin_desc *switchboard_plugin_entry(void)                                 \
    {                                                                                              \
        static const sb_plugin_desc desc = {.abi_major = SB_ABI_MAJOR,                             \
                                            .abi_minor = SB_ABI_MINOR,                             \
                                            .struct_size = sizeof(sb_plugin_desc),                 \
                                            __VA_ARGS__};                                          \
        return &desc;                                                                              \
    }

#ifdef __cplusplus
}
#endif

#endif
