/*
 * Length-prefixed JSON frames over a bufferevent (plugin-host/PROTOCOL.md).
 *
 * A protocol error (oversized or malformed frame) stops reading but leaves
 * the socket writable, so the side that saw it can still send a last "log"
 * frame and flush it before freeing the channel; EOF or an I/O error ends
 * writing too.
 */
#include "ipc.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

struct sbh_ipc {
    struct bufferevent *bev;
    sbh_ipc_frame_fn on_frame;
    sbh_ipc_close_fn on_close;
    void *arg;
    int reading;     /* 0 once on_close was called */
    int writable;    /* 0 after EOF or an I/O error */
    int busy;        /* inside on_frame: sbh_ipc_free only marks */
    int free_marked; /* sbh_ipc_free was called during on_frame */
};

static void real_free(struct sbh_ipc *ipc)
{
    bufferevent_free(ipc->bev);
    free(ipc);
}

static void fail(struct sbh_ipc *ipc, const char *why, int dead)
{
    if (dead)
        ipc->writable = 0;
    if (!ipc->reading)
        return;
    ipc->reading = 0;
    bufferevent_disable(ipc->bev, dead ? EV_READ | EV_WRITE : EV_READ);
    ipc->on_close(ipc->arg, why);
}

/* json_load_callback source: exactly the frame's bytes out of the input buffer. */
struct frame_src {
    struct evbuffer *in;
    size_t left;
};

static size_t frame_read(void *buf, size_t len, void *arg)
{
    struct frame_src *src = arg;
    if (len > src->left)
        len = src->left;
    int got = evbuffer_remove(src->in, buf, len);
    if (got <= 0)
        return 0;
    src->left -= (size_t)got;
    return (size_t)got;
}

/* Parse one whole frame of n bytes at the head of in (consumed either way). */
static json_t *take_frame(struct evbuffer *in, uint32_t n, char *why, size_t why_len)
{
    struct frame_src src = {in, n};
    json_error_t err;
    json_t *frame = json_load_callback(frame_read, &src, 0, &err);
    evbuffer_drain(in, src.left);
    if (!frame) {
        snprintf(why, why_len, "malformed frame: %s", err.text);
        return NULL;
    }
    if (!json_is_object(frame) || !json_is_string(json_object_get(frame, "t"))) {
        json_decref(frame);
        snprintf(why, why_len, "malformed frame: not an object with a string \"t\"");
        return NULL;
    }
    return frame;
}

/* Deliver one frame; 0 to go on, -1 when the channel was closed or freed meanwhile. */
static int deliver(struct sbh_ipc *ipc, json_t *frame)
{
    ipc->busy++;
    ipc->on_frame(ipc->arg, frame);
    ipc->busy--;
    json_decref(frame);
    if (ipc->free_marked && !ipc->busy) {
        real_free(ipc);
        return -1;
    }
    return ipc->reading && !ipc->free_marked ? 0 : -1;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct sbh_ipc *ipc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    char why[256];
    while (ipc->reading && evbuffer_get_length(in) >= 4) {
        unsigned char hdr[4];
        evbuffer_copyout(in, hdr, 4);
        uint32_t n =
            (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
        if (n > SBH_IPC_MAX_FRAME) {
            snprintf(why, sizeof(why), "frame of %u bytes is over the %u byte limit", n,
                     SBH_IPC_MAX_FRAME);
            fail(ipc, why, 0);
            return;
        }
        if (evbuffer_get_length(in) < 4 + (size_t)n)
            return;
        evbuffer_drain(in, 4);
        json_t *frame = take_frame(in, n, why, sizeof(why));
        if (!frame) {
            fail(ipc, why, 0);
            return;
        }
        if (deliver(ipc, frame) < 0)
            return;
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct sbh_ipc *ipc = arg;
    char why[128];
    if (what & BEV_EVENT_EOF) {
        size_t left = evbuffer_get_length(bufferevent_get_input(bev));
        snprintf(why, sizeof(why), left ? "EOF in the middle of a frame" : "EOF");
    } else if (what & BEV_EVENT_ERROR) {
        snprintf(why, sizeof(why), "socket error: %s", strerror(errno));
    } else {
        return;
    }
    fail(ipc, why, 1);
}

struct sbh_ipc *sbh_ipc_new(struct event_base *base, int fd, sbh_ipc_frame_fn on_frame,
                            sbh_ipc_close_fn on_close, void *arg)
{
    struct sbh_ipc *ipc = calloc(1, sizeof(*ipc));
    if (!ipc || evutil_make_socket_nonblocking(fd) < 0)
        goto fail;
    ipc->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!ipc->bev)
        goto fail;
    ipc->on_frame = on_frame;
    ipc->on_close = on_close;
    ipc->arg = arg;
    ipc->reading = 1;
    ipc->writable = 1;
    bufferevent_setcb(ipc->bev, on_read, NULL, on_event, ipc);
    if (bufferevent_enable(ipc->bev, EV_READ | EV_WRITE) < 0) {
        bufferevent_free(ipc->bev);
        free(ipc);
        return NULL;
    }
    return ipc;
fail:
    free(ipc);
    close(fd);
    return NULL;
}

int sbh_ipc_send(struct sbh_ipc *ipc, const json_t *frame)
{
    if (!ipc || !ipc->writable || ipc->free_marked || !json_is_object(frame))
        return -1;
    size_t n = json_dumpb(frame, NULL, 0, JSON_COMPACT);
    if (n == 0 || n > SBH_IPC_MAX_FRAME)
        return -1;
    struct evbuffer *out = bufferevent_get_output(ipc->bev);
    struct evbuffer_iovec vec;
    /* One extent: reserve_space with a single vector is contiguous. */
    if (evbuffer_reserve_space(out, (ev_ssize_t)(n + 4), &vec, 1) != 1)
        return -1;
    unsigned char *p = vec.iov_base;
    p[0] = (unsigned char)(n >> 24);
    p[1] = (unsigned char)(n >> 16);
    p[2] = (unsigned char)(n >> 8);
    p[3] = (unsigned char)n;
    if (json_dumpb(frame, (char *)p + 4, n, JSON_COMPACT) != n)
        return -1; /* not committed: nothing queued */
    vec.iov_len = n + 4;
    return evbuffer_commit_space(out, &vec, 1) == 0 ? 0 : -1;
}

int sbh_ipc_send_new(struct sbh_ipc *ipc, json_t *frame)
{
    int rc = sbh_ipc_send(ipc, frame);
    json_decref(frame);
    return rc;
}

size_t sbh_ipc_pending(const struct sbh_ipc *ipc)
{
    return ipc ? evbuffer_get_length(bufferevent_get_output(ipc->bev)) : 0;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sbh_ipc_flush(struct sbh_ipc *ipc, unsigned ms)
{
    if (!ipc || !ipc->writable)
        return;
    struct evbuffer *out = bufferevent_get_output(ipc->bev);
    int fd = (int)bufferevent_getfd(ipc->bev);
    long deadline = now_ms() + (long)ms;
    while (evbuffer_get_length(out) > 0) {
        long left = deadline - now_ms();
        if (left <= 0)
            return;
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int rc = poll(&pfd, 1, (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0 || (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)))
            return;
        /* A socket bufferevent freezes its output's front; writing past it here is
         * what its own write callback does too. */
        evbuffer_unfreeze(out, 1);
        int w = evbuffer_write(out, fd);
        evbuffer_freeze(out, 1);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return;
    }
}

void sbh_ipc_free(struct sbh_ipc *ipc)
{
    if (!ipc)
        return;
    if (ipc->busy) {
        ipc->free_marked = 1;
        ipc->reading = 0;
        bufferevent_disable(ipc->bev, EV_READ | EV_WRITE);
        return;
    }
    real_free(ipc);
}

/* ---- base64 (RFC 4648, standard alphabet) ---- */

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *sbh_b64_encode(const void *data, size_t len)
{
    const unsigned char *in = data;
    if (len > (SIZE_MAX - 1) / 4 * 3 - 3)
        return NULL;
    char *out = malloc((len + 2) / 3 * 4 + 1);
    if (!out)
        return NULL;
    char *p = out;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *p++ = b64_chars[v >> 18];
        *p++ = b64_chars[(v >> 12) & 63];
        *p++ = b64_chars[(v >> 6) & 63];
        *p++ = b64_chars[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        *p++ = b64_chars[v >> 18];
        *p++ = b64_chars[(v >> 12) & 63];
        *p++ = i + 1 < len ? b64_chars[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    *p = '\0';
    return out;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int sbh_b64_decode(const char *text, unsigned char **out, size_t *out_len)
{
    if (!text || !out || !out_len)
        return -1;
    size_t len = strlen(text);
    /* Padding is optional, but when present it completes a group of four. */
    size_t pad = 0;
    while (pad < 2 && len > 0 && text[len - 1] == '=') {
        len--;
        pad++;
    }
    if (len % 4 == 1 || (pad && (len + pad) % 4 != 0))
        return -1;
    unsigned char *buf = malloc(len / 4 * 3 + 3);
    if (!buf)
        return -1;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)text[i]);
        if (v < 0) {
            free(buf);
            return -1;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}
