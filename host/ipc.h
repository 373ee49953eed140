/*
 * Length-prefixed JSON frames over a stream socket (plugin-host IPC,
 * plugin-host/PROTOCOL.md): 4-byte big-endian length, then one JSON object
 * with a string "t". Used by both ends, on their own libevent loops.
 */
#ifndef SBH_IPC_H
#define SBH_IPC_H

#include <stddef.h>

#include <event2/event.h>
#include <jansson.h>

#define SBH_IPC_VERSION 1
#define SBH_IPC_MAX_FRAME (16u * 1024u * 1024u)

struct sbh_ipc;
/* One received frame (borrowed for the call). The callback may send, and may
 * free the channel (then no further callback comes). */
typedef void (*sbh_ipc_frame_fn)(void *arg, json_t *frame);
/* The channel is dead (EOF, I/O error, oversized or malformed frame); why is
 * borrowed. No callback follows; the owner still calls sbh_ipc_free. */
typedef void (*sbh_ipc_close_fn)(void *arg, const char *why);

/* Take ownership of fd (made non-blocking). NULL on failure (fd closed). */
struct sbh_ipc *sbh_ipc_new(struct event_base *base, int fd, sbh_ipc_frame_fn on_frame,
                            sbh_ipc_close_fn on_close, void *arg);
/* Queue one frame (borrowed). 0, or -1 when closed, not an object, or too big. */
int sbh_ipc_send(struct sbh_ipc *ipc, const json_t *frame);
/* Convenience: send and drop the reference (steals frame). */
int sbh_ipc_send_new(struct sbh_ipc *ipc, json_t *frame);
/* Bytes queued and not yet written. */
size_t sbh_ipc_pending(const struct sbh_ipc *ipc);
/* Write what is queued, blocking for at most ms (for a last frame before exit). */
void sbh_ipc_flush(struct sbh_ipc *ipc, unsigned ms);
/* Close the socket and free; no callback afterwards. NULL is fine. */
void sbh_ipc_free(struct sbh_ipc *ipc);

/* Standard base64 with padding; malloc'd NUL-terminated text, NULL on ENOMEM. */
char *sbh_b64_encode(const void *data, size_t len);
/* Decode standard base64 (padding optional); malloc'd bytes (NUL-terminated
 * for convenience) and their length, or -1 for bad input. */
int sbh_b64_decode(const char *text, unsigned char **out, size_t *out_len);

#endif
