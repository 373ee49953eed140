/*
 * The host's asynchronous HTTP client: one libcurl multi handle driven by the
 * libevent loop (socket and timer callbacks), so connections are kept alive
 * and reused across requests, multiplexed over HTTP/2 where a TLS server
 * offers it, and capped per host.
 *
 * Every call belongs to a plugin generation and optionally an instance (both
 * NULL for the host's own requests); sbh_httpc_cancel_gen/_inst take them
 * back without calling their callbacks. A done callback is called exactly
 * once, on the loop thread, never from inside sbh_httpc_request (even an
 * immediate failure is reported on a later loop turn). After it returns the
 * call is gone. Everything here runs on the loop thread; sbh_httpc_free must
 * not be called from inside a done callback.
 *
 * Redirects are not followed (a 3xx is reported as it is), no Content-Type or
 * Expect header is added, and the environment's proxy variables are honoured
 * as libcurl does.
 */
#ifndef SBH_HTTPC_H
#define SBH_HTTPC_H

#include <stddef.h>

#include <event2/event.h>

#include <switchboard/services.h>

struct sbh_httpc;

#define SBH_HTTPC_DEFAULT_TIMEOUT_MS 30000u
#define SBH_HTTPC_CONNECT_TIMEOUT_MS 10000u
#define SBH_HTTPC_MAX_HOST_CONNECTIONS 16
#define SBH_HTTPC_BODY_CAP ((size_t)16 << 20)

/*
 * A client on base. The first one also initialises libcurl (curl_global_init);
 * call it before any other thread starts. NULL (logged) on failure.
 */
struct sbh_httpc *sbh_httpc_new(struct event_base *base);

/*
 * Drop every call still open (no callbacks) and free the client; the last one
 * also cleans libcurl up. NULL is ignored.
 */
void sbh_httpc_free(struct sbh_httpc *c);

/* Connections kept open to one host:port at most (default 16). */
void sbh_httpc_set_max_host_connections(struct sbh_httpc *c, long n);

/* Largest response body accepted; a longer one fails the call (default 16 MiB). */
void sbh_httpc_set_body_cap(struct sbh_httpc *c, size_t bytes);

/*
 * Start req (everything in it is copied). gen and inst may be NULL (a host
 * request, counted as provider "host"). Returns NULL, without calling done,
 * when an argument is unusable: no URL or callback, a method that is not an
 * HTTP token, a header name that is not a token or a value holding CR, LF or
 * NUL, or out of memory.
 */
sb_http_call *sbh_httpc_request(struct sbh_httpc *c, struct sb_plugin *gen,
                                struct sb_instance *inst, const sb_http_request *req,
                                sb_http_done_fn done, void *arg);

/* Abandon a call: its callback is not called. A no-op inside its own callback. */
void sbh_httpc_cancel(sb_http_call *call);

/* Abandon every call of a generation / an instance (no callbacks). */
void sbh_httpc_cancel_gen(struct sb_plugin *gen);
void sbh_httpc_cancel_inst(struct sb_instance *inst);

/* Calls open (started, not yet reported or cancelled). */
size_t sbh_httpc_active(const struct sbh_httpc *c);

#endif
