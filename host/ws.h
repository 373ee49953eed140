/*
 * The host's WebSocket client (RFC 6455) on the libevent loop.
 *
 * TCP through bufferevent_socket, TLS through bufferevent_openssl (SNI, the
 * peer's chain verified against the system CA store, or SSL_CERT_FILE /
 * SSL_CERT_DIR as OpenSSL reads them, plus an optional extra CA file, and
 * the host name checked), the HTTP/1.1 upgrade with a random
 * Sec-WebSocket-Key and its Sec-WebSocket-Accept checked, framing by wslay:
 * fragmented messages reassembled, pings answered, client frames masked,
 * messages above the size cap refused with close 1009, text checked for
 * UTF-8 (close 1007).
 *
 * Every socket belongs to a plugin generation and optionally an instance
 * (both NULL for the host's own); sbh_ws_cancel_gen/_inst drop them without
 * callbacks. The callback gets SB_WS_OPEN, then messages, then exactly one
 * SB_WS_CLOSED: the peer's close code after a close handshake it started
 * (1005 when its close frame had none), the code we sent when wslay closed
 * for a protocol reason (1002, 1007, 1009), 1006 when the connection broke
 * or could not be made (data then carries a reason text). No callback is
 * ever called from inside sbh_ws_connect, sbh_ws_send or sbh_ws_close.
 *
 * sbh_ws_close is the owner letting go: no callback comes after it; the host
 * finishes the close handshake (bounded by the close timeout) on its own.
 * Reconnecting, with backoff, is the caller's business.
 */
#ifndef SBH_WS_H
#define SBH_WS_H

#include <stddef.h>

#include <event2/event.h>

#include <switchboard/services.h>

struct sbh_wsc;
struct sb_plugin;
struct sb_instance;

#define SBH_WS_MAX_MESSAGE ((size_t)16 << 20)
#define SBH_WS_CONNECT_TIMEOUT_MS 10000u     /* TCP + TLS + upgrade */
#define SBH_WS_CLOSE_TIMEOUT_MS 3000u        /* waiting for the peer's close frame */
#define SBH_WS_MAX_OUTPUT ((size_t)64 << 20) /* unsent bytes before sends are refused */

/* A client on base; NULL (logged) on failure. */
struct sbh_wsc *sbh_wsc_new(struct event_base *base);

/* Drop every socket (no callbacks) and free the client. NULL is ignored. */
void sbh_wsc_free(struct sbh_wsc *c);

/*
 * Trust the certificates in path (PEM) too, for wss:// (tests, private CAs).
 * Applies to connections made afterwards. 0, or -1 when the file is unusable.
 */
int sbh_wsc_set_ca_file(struct sbh_wsc *c, const char *path);

/* Largest message accepted (default 16 MiB): a longer one is closed with 1009. */
void sbh_wsc_set_max_message(struct sbh_wsc *c, size_t bytes);

void sbh_wsc_set_timeouts(struct sbh_wsc *c, unsigned connect_ms, unsigned close_ms);

/*
 * Open url (ws:// or wss://). headers are added to the upgrade request (the
 * handshake's own headers cannot be overridden). NULL, without a callback,
 * when an argument is unusable (bad URL or header, no fn); a failure to
 * connect is reported as CLOSED 1006 on a later loop turn.
 */
sb_ws *sbh_ws_connect(struct sbh_wsc *c, struct sb_plugin *gen, struct sb_instance *inst,
                      const char *url, const sb_header *headers, size_t n_headers, sb_ws_fn fn,
                      void *arg);

/* Queue one message. SB_OK, SB_EGONE when not open (or closing), SB_ENOMEM. */
int sbh_ws_send(sb_ws *ws, int binary, const void *data, size_t len);

/* Close (code 0 means 1000) and let go: no callback comes after this. */
void sbh_ws_close(sb_ws *ws, int code, const char *reason);

/* Drop every socket of a generation / an instance, abruptly, no callbacks. */
void sbh_ws_cancel_gen(struct sb_plugin *gen);
void sbh_ws_cancel_inst(struct sb_instance *inst);

/* Sockets alive (including ones closing after their owner let go). */
size_t sbh_wsc_active(const struct sbh_wsc *c);

/* Sockets holding a wslay context now (open ones let it go when idle). */
size_t sbh_wsc_framing(const struct sbh_wsc *c);

#endif
