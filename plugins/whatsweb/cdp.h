/*
 * The Chrome DevTools Protocol over --remote-debugging-pipe: Chromium reads
 * commands on its fd 3 and writes answers and events on its fd 4, each
 * message one JSON text followed by a NUL byte. This side holds the other
 * ends of the two pipes, non-blocking, watched on the host's loop
 * (fd_watch): reads are split at NULs and dispatched, writes go through a
 * queue that waits for SB_FD_WRITE while the pipe is full.
 *
 * Callbacks run on the loop. A callback may call ww_cdp_call/ww_cdp_cancel,
 * and may free the channel (ww_cdp_free): the channel finishes the current
 * dispatch and then goes away. ww_cdp_free never calls a callback.
 */
#ifndef WW_CDP_H
#define WW_CDP_H

#include <stddef.h>

#include <switchboard/switchboard.h>

/* Most bytes of one message from Chromium (a QR PNG is ~10 KiB, screenshots more). */
#define WW_CDP_MAX_MESSAGE (64u * 1024u * 1024u)

struct ww_cdp;

/* An answer: result on success, else error ({"code","message"}); both borrowed. */
typedef void (*ww_cdp_reply_fn)(void *arg, const json_t *result, const json_t *error);
/* An event (a message without id); session is NULL for the browser's own. */
typedef void (*ww_cdp_event_fn)(void *arg, const char *method, const json_t *params,
                                const char *session);
/* The channel broke (EOF, read/write error, a message that is not JSON or too big). */
typedef void (*ww_cdp_closed_fn)(void *arg, const char *why);

/*
 * Take over rfd (Chromium's fd 4, read here) and wfd (its fd 3, written
 * here); both are made non-blocking and closed by ww_cdp_free. NULL when the
 * watch cannot be set up (the descriptors are then closed too).
 */
struct ww_cdp *ww_cdp_new(const sb_host_services *host, sb_plugin *self, sb_instance *inst, int rfd,
                          int wfd, ww_cdp_event_fn on_event, ww_cdp_closed_fn on_closed, void *arg);

/*
 * Queue one command (params is stolen; NULL means {}); session NULL talks to
 * the browser. fn (may be NULL) gets the answer. Returns the command id (> 0),
 * or -1 when the channel is broken or out of memory (fn is then never called).
 */
long ww_cdp_call(struct ww_cdp *c, const char *session, const char *method, json_t *params,
                 ww_cdp_reply_fn fn, void *arg);

/* Forget the answer to command id: its fn is not called. */
void ww_cdp_cancel(struct ww_cdp *c, long id);

/* Bytes waiting to be written. */
size_t ww_cdp_pending_out(const struct ww_cdp *c);

/* Unwatch and close both descriptors, drop unanswered commands (no callbacks). */
void ww_cdp_free(struct ww_cdp *c);

#endif
