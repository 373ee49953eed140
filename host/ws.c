/*
 * The host's WebSocket client (see ws.h).
 *
 * One sb_ws goes CONNECTING (DNS, TCP, TLS) -> HANDSHAKE (our upgrade
 * request written, the 101 awaited) -> OPEN (wslay frames) -> DONE (close
 * frames exchanged, the owner told or gone; we wait for the server to close
 * TCP first, bounded by the close timeout, then free it).
 *
 * Every entry from libevent (read, write, event, timer) and every call from
 * an owner is bracketed by enter()/leave(): owners' callbacks run inside, so
 * an owner may send, close or drop (even through its instance stopping)
 * from its own callback. Nothing is freed until the outermost leave(), which
 * also flushes what wslay has queued and notices the end of the close
 * handshake.
 *
 * Memory: a wslay context is ~8.6 KiB (two fixed 4 KiB buffers), more than
 * everything else a connection holds. An open connection keeps one only
 * while it has something in flight: the outermost leave() lets it go when
 * the input wslay consumed ends on a frame boundary outside a fragmented
 * message, nothing is queued to send and no close frame has been seen or
 * sent (the frames are followed alongside wslay for this, track_frames());
 * the next read, send or close makes a fresh one. Between frames a context
 * holds nothing but its settings, so nothing is lost, and an idle Gateway
 * session costs ~1 KiB of the host's instead of ~10.
 */
#include "ws.h"

#include "log.h"
#include "metrics.h"
#include "runtime.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <wslay/wslay.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define HANDSHAKE_MAX 16384

enum ws_state { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DONE };

struct sb_ws {
    LIST_ENTRY(sb_ws) all;
    LIST_ENTRY(sb_ws) by_gen;
    LIST_ENTRY(sb_ws) by_inst;
    struct sbh_wsc *c;
    struct sb_plugin *gen;
    struct sb_instance *inst;
    sb_ws_fn fn; /* NULL once the owner was told CLOSED, let go, or was dropped */
    void *arg;
    enum ws_state st;
    int tls;
    char *host; /* without brackets */
    int port;
    char *request; /* the upgrade request, until it is written */
    char accept[64];
    struct bufferevent *bev;
    SSL *ssl;                    /* owned by bev once bev exists */
    wslay_event_context_ptr ctx; /* while OPEN: NULL when idle (see the top) */
    uint64_t f_left;             /* payload bytes of the current frame not yet read */
    unsigned char fh[14];        /* the current frame's header, fh_have bytes so far */
    unsigned char fh_have, fh_need;
    unsigned char frag_open; /* a fragmented data message has begun, not ended */
    struct event *timer;     /* connect deadline, deferred failure, close deadline;
                                NULL while OPEN until a close begins */
    char *fail_reason;       /* reported by the timer when set */
    int depth;               /* enter()/leave() nesting */
    int doomed;              /* free at the outermost leave() */
    int linked;
    int close_rcvd, peer_first;
    int peer_code;
};
LIST_HEAD(sbh_ws_all, sb_ws);

struct sbh_wsc {
    struct event_base *base;
    struct evdns_base *dns; /* made on first use */
    SSL_CTX *ssl_ctx;       /* made on first wss:// */
    char *ca_file;
    size_t max_message;
    unsigned connect_ms, close_ms;
    struct sbh_ws_all socks;
    size_t n_socks;
};

static void count(const struct sb_ws *ws, const char *what)
{
    const char *prov =
        ws->gen && ws->gen->slot && ws->gen->slot->name ? ws->gen->slot->name : "host";
    sbh_metrics_add("switchboard_ws_events_total", "WebSocket client events, by provider", 1,
                    "provider", prov, "event", what, SBH_END);
}

/* ---- life cycle ---- */

static void ws_unlink(struct sb_ws *ws)
{
    if (!ws->linked)
        return;
    ws->linked = 0;
    LIST_REMOVE(ws, all);
    if (ws->gen)
        LIST_REMOVE(ws, by_gen);
    if (ws->inst)
        LIST_REMOVE(ws, by_inst);
    ws->c->n_socks--;
}

static void ws_destroy(struct sb_ws *ws)
{
    ws_unlink(ws);
    if (ws->bev)
        bufferevent_free(ws->bev); /* frees ssl too (BEV_OPT_CLOSE_ON_FREE) */
    else if (ws->ssl)
        SSL_free(ws->ssl);
    if (ws->ctx)
        wslay_event_context_free(ws->ctx);
    if (ws->timer)
        event_free(ws->timer);
    free(ws->host);
    free(ws->request);
    free(ws->fail_reason);
    free(ws);
}

static void enter(struct sb_ws *ws)
{
    ws->depth++;
}

/* Free now, or at the outermost leave(). No callback comes after this. */
static void ws_finish(struct sb_ws *ws)
{
    ws->fn = NULL;
    ws->doomed = 1;
    if (ws->depth == 0)
        ws_destroy(ws);
}

static void deliver(struct sb_ws *ws, enum sb_ws_event ev, const unsigned char *data, size_t len,
                    int code)
{
    sb_ws_fn fn = ws->fn;
    if (!fn || ws->doomed)
        return;
    if (ev == SB_WS_CLOSED)
        ws->fn = NULL; /* exactly one CLOSED */
    ws->depth++;
    fn(ws->arg, ev, data ? data : (const unsigned char *)"", len, code);
    ws->depth--;
}

static void deliver_closed(struct sb_ws *ws, int code, const char *reason)
{
    count(ws, code == 1006 ? "abnormal_close" : "close");
    deliver(ws, SB_WS_CLOSED, (const unsigned char *)(reason ? reason : ""),
            reason ? strlen(reason) : 0, code);
}

/* The connection is over: tell the owner (if still there) and free. */
static void ws_end(struct sb_ws *ws, int code, const char *reason)
{
    deliver_closed(ws, code, reason);
    ws_finish(ws);
}

static void on_timer(evutil_socket_t fd, short what, void *arg);

/* -1 when out of memory: the timer is made again for a close. */
static int arm_timer(struct sb_ws *ws, unsigned ms)
{
    if (!ws->timer && !(ws->timer = evtimer_new(ws->c->base, on_timer, ws)))
        return -1;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return evtimer_add(ws->timer, &tv) == 0 ? 0 : -1;
}

/* No deadline while open: an idle session holds no timer (~0.15 KiB). */
static void drop_timer(struct sb_ws *ws)
{
    if (ws->timer) {
        event_free(ws->timer);
        ws->timer = NULL;
    }
}

/* Both sides' close frames are through (or reading stopped after ours). */
static void check_finished(struct sb_ws *ws)
{
    if (ws->st != ST_OPEN || !ws->ctx || ws->doomed)
        return;
    if (wslay_event_want_read(ws->ctx) || wslay_event_want_write(ws->ctx)) {
        if (wslay_event_get_close_sent(ws->ctx) &&
            !(ws->timer && evtimer_pending(ws->timer, NULL)) && arm_timer(ws, ws->c->close_ms) < 0)
            ws_end(ws, wslay_event_get_status_code_sent(ws->ctx), "out of memory");
        return;
    }
    int sent = wslay_event_get_status_code_sent(ws->ctx);
    int code = ws->close_rcvd && (ws->peer_first || sent == WSLAY_CODE_ABNORMAL_CLOSURE)
                   ? ws->peer_code
                   : sent;
    ws->st = ST_DONE;
    deliver_closed(ws, code, NULL);
    if (ws->doomed)
        return;
    ws->fn = NULL;
    if (!ws->bev) {
        ws_finish(ws);
        return;
    }
    /* As RFC 6455 7.1.1 asks, the server closes TCP first: wait for its EOF
     * (discarding whatever else comes), bounded by the close timeout. */
    if (ws->timer)
        evtimer_del(ws->timer);
    if (arm_timer(ws, ws->c->close_ms) < 0)
        ws_finish(ws);
}

/* Nothing in flight in wslay: its context can go (see the top). */
static int framing_idle(struct sb_ws *ws)
{
    return ws->st == ST_OPEN && ws->ctx && !ws->doomed && ws->fh_have == 0 && ws->f_left == 0 &&
           !ws->frag_open && !ws->close_rcvd && ws->bev &&
           evbuffer_get_length(bufferevent_get_input(ws->bev)) == 0 &&
           wslay_event_get_read_enabled(ws->ctx) && wslay_event_get_write_enabled(ws->ctx) &&
           !wslay_event_get_close_sent(ws->ctx) && !wslay_event_get_close_received(ws->ctx) &&
           !wslay_event_want_write(ws->ctx) && wslay_event_get_queued_msg_count(ws->ctx) == 0;
}

static void leave(struct sb_ws *ws)
{
    if (ws->depth == 1 && !ws->doomed && ws->st == ST_OPEN && ws->ctx) {
        if (wslay_event_send(ws->ctx) != 0)
            ws_end(ws, 1006, "cannot write to the connection");
        else
            check_finished(ws);
        if (framing_idle(ws)) {
            wslay_event_context_free(ws->ctx);
            ws->ctx = NULL;
        }
    }
    if (--ws->depth == 0 && ws->doomed)
        ws_destroy(ws);
}

/* ---- wslay callbacks ---- */

/*
 * Follow the frames in the bytes handed to wslay (server frames, RFC 6455
 * 5.2): where the current one ends, and whether a fragmented message is
 * open. Only for knowing when wslay holds nothing; wslay judges the frames.
 */
static void track_frames(struct sb_ws *ws, const unsigned char *p, size_t n)
{
    while (n) {
        if (ws->f_left) {
            size_t k = ws->f_left < n ? (size_t)ws->f_left : n;
            ws->f_left -= k;
            p += k;
            n -= k;
            continue;
        }
        ws->fh[ws->fh_have++] = *p++;
        n--;
        if (ws->fh_have == 2) {
            unsigned l7 = ws->fh[1] & 0x7f;
            ws->fh_need = (unsigned char)(2 +
                                          (l7 == 126   ? 2
                                           : l7 == 127 ? 8
                                                       : 0) +
                                          (ws->fh[1] & 0x80 ? 4 : 0));
        }
        if (ws->fh_have < 2 || ws->fh_have < ws->fh_need)
            continue;
        unsigned l7 = ws->fh[1] & 0x7f;
        uint64_t len = l7;
        if (l7 == 126)
            len = (uint64_t)ws->fh[2] << 8 | ws->fh[3];
        else if (l7 == 127) {
            len = 0;
            for (int i = 2; i < 10; i++)
                len = len << 8 | ws->fh[i];
        }
        if ((ws->fh[0] & 0x0f) < 8) /* continuation, text, binary: FIN ends the message */
            ws->frag_open = !(ws->fh[0] & 0x80);
        ws->f_left = len;
        ws->fh_have = 0;
    }
}

static ssize_t on_wslay_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                             void *user)
{
    struct sb_ws *ws = user;
    int n = evbuffer_remove(bufferevent_get_input(ws->bev), buf, len);
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    track_frames(ws, buf, (size_t)n);
    return n;
}

static ssize_t on_wslay_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                             int flags, void *user)
{
    struct sb_ws *ws = user;
    if (evbuffer_add(bufferevent_get_output(ws->bev), data, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static int on_wslay_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user)
{
    if (RAND_bytes(buf, (int)len) != 1) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return 0;
}

/* RFC 3629 UTF-8: no overlongs, no surrogates, nothing above U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF)
            k = 1;
        else if (b >= 0xE0 && b <= 0xEF) {
            k = 2;
            if (b == 0xE0)
                lo = 0xA0;
            if (b == 0xED)
                hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            k = 3;
            if (b == 0xF0)
                lo = 0x90;
            if (b == 0xF4)
                hi = 0x8F;
        } else
            return 0;
        if (i + k >= n)
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF)
                return 0;
        i += k + 1;
    }
    return 1;
}

static void on_wslay_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *m,
                         void *user)
{
    struct sb_ws *ws = user;
    switch (m->opcode) {
    case WSLAY_TEXT_FRAME:
        if (!utf8_valid(m->msg, m->msg_length)) {
            wslay_event_queue_close(ctx, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA,
                                    (const uint8_t *)"invalid UTF-8", 13);
            return;
        }
        deliver(ws, SB_WS_TEXT, m->msg, m->msg_length, 0);
        break;
    case WSLAY_BINARY_FRAME:
        deliver(ws, SB_WS_BINARY, m->msg, m->msg_length, 0);
        break;
    case WSLAY_CONNECTION_CLOSE:
        ws->close_rcvd = 1;
        ws->peer_code = m->status_code ? m->status_code : WSLAY_CODE_NO_STATUS_RCVD;
        ws->peer_first = !wslay_event_get_close_sent(ctx);
        break;
    default:
        break; /* ping (answered by wslay), pong */
    }
}

/* ---- handshake ---- */

static const char *header_value(char *head, const char *name)
{
    size_t nl = strlen(name);
    for (char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        char *p = line + 2;
        if (!strncasecmp(p, name, nl) && p[nl] == ':') {
            p += nl + 1;
            while (*p == ' ' || *p == '\t')
                p++;
            return p;
        }
    }
    return NULL;
}

/* The header's value up to its CRLF, copied into out. */
static int header_copy(char *head, const char *name, char *out, size_t len)
{
    const char *v = header_value(head, name);
    if (!v)
        return 0;
    const char *end = strstr(v, "\r\n");
    size_t n = end ? (size_t)(end - v) : strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n >= len)
        n = len - 1;
    memcpy(out, v, n);
    out[n] = 0;
    return 1;
}

static int has_token(const char *list, const char *token)
{
    size_t tl = strlen(token);
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        const char *s = p;
        while (*p && *p != ',')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - s) == tl && !strncasecmp(s, token, tl))
            return 1;
    }
    return 0;
}

/* NULL when the answer is a good 101, else why not (static text or into why). */
static const char *check_answer(struct sb_ws *ws, char *head, char *why, size_t wl)
{
    int status = 0;
    if (sscanf(head, "HTTP/1.1 %d", &status) != 1) {
        return "the answer is not HTTP/1.1";
    }
    if (status != 101) {
        snprintf(why, wl, "the server answered %d instead of 101", status);
        return why;
    }
    char v[256];
    if (!header_copy(head, "Upgrade", v, sizeof(v)) || strcasecmp(v, "websocket"))
        return "no Upgrade: websocket in the answer";
    if (!header_copy(head, "Connection", v, sizeof(v)) || !has_token(v, "upgrade"))
        return "no Connection: Upgrade in the answer";
    if (!header_copy(head, "Sec-WebSocket-Accept", v, sizeof(v)) || strcmp(v, ws->accept))
        return "wrong Sec-WebSocket-Accept";
    if (header_value(head, "Sec-WebSocket-Extensions"))
        return "the server chose an extension we did not offer";
    if (header_value(head, "Sec-WebSocket-Protocol"))
        return "the server chose a subprotocol we did not offer";
    return NULL;
}

/* A wslay context for an open connection that has none; -1 when out of memory. */
static int start_framing(struct sb_ws *ws)
{
    if (ws->ctx)
        return 0;
    static const struct wslay_event_callbacks cbs = {
        .recv_callback = on_wslay_recv,
        .send_callback = on_wslay_send,
        .genmask_callback = on_wslay_genmask,
        .on_msg_recv_callback = on_wslay_msg,
    };
    if (wslay_event_context_client_init(&ws->ctx, &cbs, ws) != 0)
        return -1;
    wslay_event_config_set_max_recv_msg_length(ws->ctx, ws->c->max_message);
    return 0;
}

static void on_handshake_data(struct sb_ws *ws)
{
    struct evbuffer *in = bufferevent_get_input(ws->bev);
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0) {
        if (evbuffer_get_length(in) > HANDSHAKE_MAX)
            ws_end(ws, 1006, "handshake answer too long");
        return;
    }
    size_t n = (size_t)end.pos + 4;
    char *head = malloc(n + 1);
    if (!head) {
        ws_end(ws, 1006, "out of memory");
        return;
    }
    evbuffer_remove(in, head, n);
    head[n] = 0;
    char why[128];
    const char *bad = check_answer(ws, head, why, sizeof(why));
    free(head);
    if (bad) {
        ws_end(ws, 1006, bad);
        return;
    }
    if (start_framing(ws) < 0) {
        ws_end(ws, 1006, "out of memory");
        return;
    }
    drop_timer(ws);
    ws->st = ST_OPEN;
    count(ws, "open");
    deliver(ws, SB_WS_OPEN, NULL, 0, 0);
    if (!ws->doomed && evbuffer_get_length(in) && wslay_event_recv(ws->ctx) != 0)
        ws_end(ws, 1006, "cannot read the connection");
}

/* ---- libevent callbacks ---- */

static void on_read(struct bufferevent *bev, void *arg)
{
    struct sb_ws *ws = arg;
    enter(ws);
    if (ws->st == ST_HANDSHAKE)
        on_handshake_data(ws);
    else if (ws->st == ST_OPEN) {
        if (start_framing(ws) < 0)
            ws_end(ws, 1006, "out of memory");
        else if (wslay_event_recv(ws->ctx) != 0)
            ws_end(ws, 1006, "cannot read the connection");
    } else {
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
    }
    leave(ws);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    (void)arg;
}

static void transport_error(struct sb_ws *ws, short what, char *out, size_t len)
{
    unsigned long e;
    if (ws->bev && (e = bufferevent_get_openssl_error(ws->bev)) != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        long v = ws->ssl ? SSL_get_verify_result(ws->ssl) : X509_V_OK;
        if (v != X509_V_OK)
            snprintf(out, len, "TLS: %s (%s)", X509_verify_cert_error_string(v), buf);
        else
            snprintf(out, len, "TLS: %s", buf);
        return;
    }
    int dns = ws->bev ? bufferevent_socket_get_dns_error(ws->bev) : 0;
    if (dns) {
        snprintf(out, len, "cannot resolve %s: %s", ws->host, evutil_gai_strerror(dns));
        return;
    }
    int err = EVUTIL_SOCKET_ERROR();
    if (what & BEV_EVENT_EOF)
        snprintf(out, len, "connection closed by the peer");
    else if (err)
        snprintf(out, len, "%s", evutil_socket_error_to_string(err));
    else
        snprintf(out, len, "connection failed");
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct sb_ws *ws = arg;
    enter(ws);
    if (what & BEV_EVENT_CONNECTED) {
        if (ws->st == ST_CONNECTING) {
            ws->st = ST_HANDSHAKE;
            bufferevent_write(bev, ws->request, strlen(ws->request));
            free(ws->request);
            ws->request = NULL;
        }
    } else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        char why[320];
        if (ws->st == ST_OPEN && (ws->ctx || start_framing(ws) == 0)) {
            /* What arrived before the end still counts (a close frame, say). */
            if (evbuffer_get_length(bufferevent_get_input(bev)))
                wslay_event_recv(ws->ctx);
            wslay_event_shutdown_read(ws->ctx);
            wslay_event_shutdown_write(ws->ctx);
            if (ws->close_rcvd)
                ws_end(ws, ws->peer_code, NULL);
            else
                ws_end(ws, 1006, "connection lost");
        } else if (ws->st == ST_DONE) {
            ws_finish(ws);
        } else {
            transport_error(ws, what, why, sizeof(why));
            ws_end(ws, 1006, why);
        }
    }
    leave(ws);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sb_ws *ws = arg;
    enter(ws);
    if (ws->fail_reason)
        ws_end(ws, 1006, ws->fail_reason);
    else if (ws->st == ST_CONNECTING || ws->st == ST_HANDSHAKE)
        ws_end(ws, 1006, "timed out opening the connection");
    else if (ws->st == ST_OPEN) {
        int sent = ws->ctx ? wslay_event_get_status_code_sent(ws->ctx) : 1006;
        ws_end(ws, sent, "the peer did not answer our close frame");
    } else
        ws_finish(ws);
    leave(ws);
}

/* ---- the client ---- */

struct sbh_wsc *sbh_wsc_new(struct event_base *base)
{
    struct sbh_wsc *c = calloc(1, sizeof(*c));
    if (!c) {
        sbh_error("ws", "out of memory");
        return NULL;
    }
    c->base = base;
    c->max_message = SBH_WS_MAX_MESSAGE;
    c->connect_ms = SBH_WS_CONNECT_TIMEOUT_MS;
    c->close_ms = SBH_WS_CLOSE_TIMEOUT_MS;
    LIST_INIT(&c->socks);
    return c;
}

void sbh_wsc_free(struct sbh_wsc *c)
{
    if (!c)
        return;
    struct sb_ws *ws;
    while ((ws = LIST_FIRST(&c->socks)) != NULL)
        ws_destroy(ws);
    if (c->dns)
        evdns_base_free(c->dns, 0);
    if (c->ssl_ctx)
        SSL_CTX_free(c->ssl_ctx);
    free(c->ca_file);
    free(c);
}

int sbh_wsc_set_ca_file(struct sbh_wsc *c, const char *path)
{
    if (!c || !path)
        return -1;
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    fclose(f);
    char *copy = strdup(path);
    if (!copy)
        return -1;
    free(c->ca_file);
    c->ca_file = copy;
    if (c->ssl_ctx) { /* rebuilt with it on next use */
        SSL_CTX_free(c->ssl_ctx);
        c->ssl_ctx = NULL;
    }
    return 0;
}

void sbh_wsc_set_max_message(struct sbh_wsc *c, size_t bytes)
{
    c->max_message = bytes;
}

void sbh_wsc_set_timeouts(struct sbh_wsc *c, unsigned connect_ms, unsigned close_ms)
{
    if (connect_ms)
        c->connect_ms = connect_ms;
    if (close_ms)
        c->close_ms = close_ms;
}

size_t sbh_wsc_active(const struct sbh_wsc *c)
{
    return c ? c->n_socks : 0;
}

size_t sbh_wsc_framing(const struct sbh_wsc *c)
{
    size_t n = 0;
    const struct sb_ws *ws;
    if (c)
        LIST_FOREACH (ws, &c->socks, all)
            n += ws->ctx != NULL;
    return n;
}

static SSL_CTX *ssl_ctx(struct sbh_wsc *c)
{
    if (c->ssl_ctx)
        return c->ssl_ctx;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* Give the record buffers (~34 KiB a connection) back while idle. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_default_verify_paths(ctx) != 1)
        sbh_log(SB_LOG_WARN, "ws", NULL, NULL, "cannot load the system CA store");
    if (c->ca_file && SSL_CTX_load_verify_locations(ctx, c->ca_file, NULL) != 1) {
        sbh_log(SB_LOG_ERROR, "ws", NULL, NULL, "cannot load CA file %s", c->ca_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    c->ssl_ctx = ctx;
    return ctx;
}

/* RFC 9110 token. */
static int is_token(const char *s)
{
    if (!s || !*s)
        return 0;
    for (; *s; s++)
        if (!(((unsigned char)*s > 0x20 && (unsigned char)*s < 0x7f) &&
              !strchr("\"(),/:;<=>?@[\\]{}", *s)))
            return 0;
    return 1;
}

static int reserved_header(const char *name)
{
    static const char *const names[] = {"Host",
                                        "Upgrade",
                                        "Connection",
                                        "Sec-WebSocket-Key",
                                        "Sec-WebSocket-Version",
                                        "Sec-WebSocket-Extensions",
                                        "Content-Length",
                                        "Transfer-Encoding"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcasecmp(name, names[i]))
            return 1;
    return 0;
}

/* ws[s]://host[:port][/path][?query] -> parts; -1 when unusable. */
static int parse_url(const char *url, int *tls, char **host, int *port, char **target)
{
    const char *p;
    if (!strncasecmp(url, "ws://", 5)) {
        *tls = 0;
        p = url + 5;
    } else if (!strncasecmp(url, "wss://", 6)) {
        *tls = 1;
        p = url + 6;
    } else
        return -1;
    const char *hs, *he;
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (!he)
            return -1;
        p = he + 1;
    } else {
        hs = p;
        while (*p && *p != ':' && *p != '/' && *p != '?' && *p != '#')
            p++;
        he = p;
    }
    if (he == hs)
        return -1;
    for (const char *q = hs; q < he; q++)
        if (!isalnum((unsigned char)*q) && !strchr(".-_:%", *q))
            return -1;
    *port = *tls ? 443 : 80;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v < 1 || v > 65535)
            return -1;
        *port = (int)v;
        p = end;
    }
    if (*p && *p != '/' && *p != '?')
        return -1;
    const char *t = *p ? p : "/";
    size_t tl = strcspn(t, "#");
    for (size_t i = 0; i < tl; i++)
        if ((unsigned char)t[i] <= 0x20 || t[i] == 0x7f)
            return -1;
    *host = strndup(hs, (size_t)(he - hs));
    if (*t == '?') {
        if (asprintf(target, "/%.*s", (int)tl, t) < 0)
            *target = NULL;
    } else
        *target = strndup(t, tl);
    if (!*host || !*target) {
        free(*host);
        free(*target);
        return -1;
    }
    return 0;
}

static int make_request(struct sb_ws *ws, const char *target, const sb_header *headers,
                        size_t n_headers)
{
    unsigned char raw[16];
    char key[32];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
    /* Sec-WebSocket-Accept = base64(SHA-1(key + GUID)) */
    char joined[64];
    unsigned char sha[EVP_MAX_MD_SIZE];
    unsigned sha_len = 0;
    int jl = snprintf(joined, sizeof(joined), "%s%s", key, WS_GUID);
    if (EVP_Digest(joined, (size_t)jl, sha, &sha_len, EVP_sha1(), NULL) != 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)ws->accept, sha, (int)sha_len);

    int v6 = strchr(ws->host, ':') != NULL;
    int default_port = ws->port == (ws->tls ? 443 : 80);
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return -1;
    evbuffer_add_printf(b, "GET %s HTTP/1.1\r\nHost: %s%s%s", target, v6 ? "[" : "", ws->host,
                        v6 ? "]" : "");
    if (!default_port)
        evbuffer_add_printf(b, ":%d", ws->port);
    evbuffer_add_printf(b,
                        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                        "User-Agent: switchboard/" PACKAGE_VERSION "\r\n",
                        key);
    for (size_t i = 0; i < n_headers; i++)
        evbuffer_add_printf(b, "%s: %s\r\n", headers[i].name,
                            headers[i].value ? headers[i].value : "");
    evbuffer_add(b, "\r\n", 2);
    size_t n = evbuffer_get_length(b);
    ws->request = malloc(n + 1);
    if (ws->request) {
        evbuffer_remove(b, ws->request, n);
        ws->request[n] = 0;
    }
    evbuffer_free(b);
    return ws->request ? 0 : -1;
}

static int is_ip_literal(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* Make the bufferevent and start connecting; reason in why on failure. */
static int open_transport(struct sb_ws *ws, char *why, size_t wl)
{
    struct sbh_wsc *c = ws->c;
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (!is_ip_literal(ws->host) && !c->dns) {
        c->dns = evdns_base_new(c->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (!c->dns) {
            snprintf(why, wl, "cannot set up the DNS resolver");
            return -1;
        }
    }
    if (ws->tls) {
        SSL_CTX *ctx = ssl_ctx(c);
        if (!ctx || !(ws->ssl = SSL_new(ctx))) {
            snprintf(why, wl, "cannot set up TLS");
            return -1;
        }
        if (is_ip_literal(ws->host)) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ws->ssl), ws->host);
        } else {
            SSL_set_tlsext_host_name(ws->ssl, ws->host);
            SSL_set1_host(ws->ssl, ws->host);
        }
        ws->bev =
            bufferevent_openssl_socket_new(c->base, -1, ws->ssl, BUFFEREVENT_SSL_CONNECTING, opts);
        if (ws->bev)
            bufferevent_openssl_set_allow_dirty_shutdown(ws->bev, 1);
    } else {
        ws->bev = bufferevent_socket_new(c->base, -1, opts);
    }
    if (!ws->bev) {
        snprintf(why, wl, "cannot create the connection");
        return -1;
    }
    bufferevent_setcb(ws->bev, on_read, on_write, on_event, ws);
    bufferevent_enable(ws->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect_hostname(ws->bev, c->dns, AF_UNSPEC, ws->host, ws->port) < 0) {
        int err = EVUTIL_SOCKET_ERROR();
        snprintf(why, wl, "cannot connect to %s:%d: %s", ws->host, ws->port,
                 err ? evutil_socket_error_to_string(err) : "failed");
        return -1;
    }
    return 0;
}

sb_ws *sbh_ws_connect(struct sbh_wsc *c, struct sb_plugin *gen, struct sb_instance *inst,
                      const char *url, const sb_header *headers, size_t n_headers, sb_ws_fn fn,
                      void *arg)
{
    if (!c || !url || !fn || (n_headers && !headers))
        return NULL;
    for (size_t i = 0; i < n_headers; i++) {
        const char *v = headers[i].value;
        if (!is_token(headers[i].name) || reserved_header(headers[i].name) ||
            (v && strpbrk(v, "\r\n")))
            return NULL;
    }
    struct sb_ws *ws = calloc(1, sizeof(*ws));
    if (!ws)
        return NULL;
    char *target = NULL;
    ws->c = c;
    ws->gen = gen;
    ws->inst = inst;
    ws->fn = fn;
    ws->arg = arg;
    ws->st = ST_CONNECTING;
    if (parse_url(url, &ws->tls, &ws->host, &ws->port, &target) < 0) {
        free(ws);
        return NULL;
    }
    ws->timer = evtimer_new(c->base, on_timer, ws);
    if (!ws->timer || make_request(ws, target, headers, n_headers) < 0) {
        free(target);
        ws_destroy(ws);
        return NULL;
    }
    free(target);
    ws->linked = 1;
    LIST_INSERT_HEAD(&c->socks, ws, all);
    if (gen)
        LIST_INSERT_HEAD(&gen->websockets, ws, by_gen);
    if (inst)
        LIST_INSERT_HEAD(&inst->websockets, ws, by_inst);
    c->n_socks++;
    char why[256];
    if (open_transport(ws, why, sizeof(why)) < 0) {
        /* Reported on a later loop turn, never from in here. */
        ws->fail_reason = strdup(why);
        if (ws->bev) {
            bufferevent_free(ws->bev);
            ws->bev = NULL;
            ws->ssl = NULL;
        }
        if (!ws->fail_reason) {
            ws_destroy(ws);
            return NULL;
        }
        arm_timer(ws, 0);
        return ws;
    }
    arm_timer(ws, c->connect_ms);
    return ws;
}

int sbh_ws_send(sb_ws *ws, int binary, const void *data, size_t len)
{
    if (!ws || (len && !data))
        return SB_EINVAL;
    if (ws->st != ST_OPEN || ws->doomed || !ws->fn)
        return SB_EGONE;
    if (evbuffer_get_length(bufferevent_get_output(ws->bev)) > SBH_WS_MAX_OUTPUT)
        return SB_ENOMEM;
    if (start_framing(ws) < 0)
        return SB_ENOMEM;
    if (wslay_event_get_close_sent(ws->ctx) || !wslay_event_get_write_enabled(ws->ctx))
        return SB_EGONE;
    struct wslay_event_msg msg = {
        .opcode = binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME,
        .msg = data,
        .msg_length = len,
    };
    int rc = wslay_event_queue_msg(ws->ctx, &msg);
    if (rc == WSLAY_ERR_NOMEM)
        return SB_ENOMEM;
    if (rc != 0)
        return SB_EGONE;
    enter(ws);
    leave(ws); /* flushes now unless an outer call will */
    return SB_OK;
}

void sbh_ws_close(sb_ws *ws, int code, const char *reason)
{
    if (!ws || !ws->fn)
        return; /* already let go, or told CLOSED */
    ws->fn = NULL;
    if (ws->st != ST_OPEN || ws->doomed || start_framing(ws) < 0) {
        ws_finish(ws);
        return;
    }
    if (code <= 0)
        code = 1000;
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > 123)
        rl = 123; /* a control frame's payload is at most 125 bytes */
    enter(ws);
    if (!wslay_event_get_close_sent(ws->ctx))
        wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason, rl);
    if (ws->timer)
        evtimer_del(ws->timer);
    if (arm_timer(ws, ws->c->close_ms) < 0)
        ws_finish(ws);
    leave(ws);
}

/* Drop without a callback, abruptly. */
static void ws_drop(struct sb_ws *ws)
{
    ws_unlink(ws);
    ws->fn = NULL;
    ws->doomed = 1;
    if (ws->depth == 0)
        ws_destroy(ws);
}

void sbh_ws_cancel_gen(struct sb_plugin *gen)
{
    struct sb_ws *ws;
    while ((ws = LIST_FIRST(&gen->websockets)) != NULL)
        ws_drop(ws);
}

void sbh_ws_cancel_inst(struct sb_instance *inst)
{
    struct sb_ws *ws;
    while ((ws = LIST_FIRST(&inst->websockets)) != NULL)
        ws_drop(ws);
}
