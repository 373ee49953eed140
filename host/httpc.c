/*
 * The host's asynchronous HTTP client (see httpc.h): libcurl's multi
 * interface on the libevent loop.
 *
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to
 * wake it (CURLMOPT_TIMERFUNCTION); each socket gets a libevent event, the
 * timer one evtimer, and both hand control back through
 * curl_multi_socket_action, after which finished transfers are collected with
 * curl_multi_info_read. Callbacks of plugins are only ever called from there
 * (or from a deferred-failure event), never from inside a curl callback, so a
 * done callback may start, cancel or take back any call, itself included.
 */
#include "httpc.h"

#include "log.h"
#include "metrics.h"
#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#define REQUESTS_METRIC "switchboard_http_client_requests_total"
#define REQUESTS_HELP "Outbound HTTP requests made by the host, by provider and status class"

/* One socket curl asked us to watch. */
struct sbh_sock {
    LIST_ENTRY(sbh_sock) link;
    struct sbh_httpc *c;
    curl_socket_t fd;
    struct event *ev;
};
LIST_HEAD(sbh_sock_list, sbh_sock);

struct sb_http_call {
    LIST_ENTRY(sb_http_call) all;
    LIST_ENTRY(sb_http_call) by_gen;
    LIST_ENTRY(sb_http_call) by_inst;
    struct sbh_httpc *c;
    struct sb_plugin *gen;
    struct sb_instance *inst;
    char *provider; /* metrics label */
    sb_http_done_fn done;
    void *arg;
    CURL *easy;
    struct curl_slist *req_headers;
    unsigned char *req_body; /* our copy: curl only borrows POSTFIELDS */
    struct event *fail_ev;   /* an immediate failure, reported on a later loop turn */
    char *fail_text;
    int in_multi;
    int linked;    /* on the lists (not finished, not cancelled) */
    int finishing; /* inside its done callback */
    int too_big;
    unsigned char *body;
    size_t body_len, body_alloc;
    sb_header *resp_headers; /* names and values malloc'd */
    size_t n_resp_headers, resp_headers_alloc;
    char errbuf[CURL_ERROR_SIZE];
};
LIST_HEAD(sbh_call_all_list, sb_http_call);

struct sbh_httpc {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct sbh_call_all_list calls;
    struct sbh_sock_list socks;
    size_t n_calls;
    size_t body_cap;
};

static int g_curl_users; /* clients alive: curl_global_init/cleanup around them */

/* ---- calls ---- */

static void resp_headers_clear(struct sb_http_call *call)
{
    for (size_t i = 0; i < call->n_resp_headers; i++) {
        free((char *)call->resp_headers[i].name);
        free((char *)call->resp_headers[i].value);
    }
    call->n_resp_headers = 0;
}

/* Take the call off its client's and owners' lists (it is then no one's to cancel). */
static void call_unlink(struct sb_http_call *call)
{
    if (!call->linked)
        return;
    call->linked = 0;
    LIST_REMOVE(call, all);
    if (call->gen)
        LIST_REMOVE(call, by_gen);
    if (call->inst)
        LIST_REMOVE(call, by_inst);
    call->c->n_calls--;
}

static void call_free(struct sb_http_call *call)
{
    call_unlink(call);
    if (call->easy) {
        if (call->in_multi)
            curl_multi_remove_handle(call->c->multi, call->easy);
        curl_easy_cleanup(call->easy);
    }
    if (call->fail_ev)
        event_free(call->fail_ev);
    curl_slist_free_all(call->req_headers);
    resp_headers_clear(call);
    free(call->resp_headers);
    free(call->req_body);
    free(call->body);
    free(call->fail_text);
    free(call->provider);
    free(call);
}

static void count(const struct sb_http_call *call, int status)
{
    char cls[8];
    if (status >= 100 && status <= 999)
        snprintf(cls, sizeof(cls), "%dxx", status / 100);
    else
        snprintf(cls, sizeof(cls), "error");
    sbh_metrics_add(REQUESTS_METRIC, REQUESTS_HELP, 1, "provider", call->provider, "status_class",
                    cls, SBH_END);
}

/* Report resp to the call's owner, then free the call. */
static void call_report(struct sb_http_call *call, const sb_http_response *resp)
{
    call_unlink(call);
    call->finishing = 1;
    count(call, resp->status);
    call->done(call->arg, resp);
    call_free(call);
}

static void call_report_error(struct sb_http_call *call, const char *text)
{
    sb_http_response resp = {.status = 0, .error = text};
    call_report(call, &resp);
}

static void on_fail_later(evutil_socket_t fd, short what, void *arg)
{
    struct sb_http_call *call = arg;
    call_report_error(call, call->fail_text ? call->fail_text : "request failed");
}

/* An immediate failure: reported on a later loop turn. -1 when even that fails. */
static int call_fail_later(struct sb_http_call *call, const char *text)
{
    call->fail_text = strdup(text);
    call->fail_ev = evtimer_new(call->c->base, on_fail_later, call);
    if (!call->fail_ev)
        return -1;
    struct timeval now = {0, 0};
    evtimer_add(call->fail_ev, &now);
    return 0;
}

static void call_finish(struct sb_http_call *call, CURLcode res)
{
    struct sbh_httpc *c = call->c;
    curl_multi_remove_handle(c->multi, call->easy);
    call->in_multi = 0;
    if (res != CURLE_OK) {
        char text[CURL_ERROR_SIZE + 64];
        if (call->too_big || res == CURLE_FILESIZE_EXCEEDED)
            snprintf(text, sizeof(text), "response body larger than %zu bytes", c->body_cap);
        else
            snprintf(text, sizeof(text), "%s",
                     call->errbuf[0] ? call->errbuf : curl_easy_strerror(res));
        call_report_error(call, text);
        return;
    }
    long status = 0;
    curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
    sb_http_response resp = {
        .status = (int)status,
        .error = status ? NULL : "no HTTP status in the answer",
        .headers = call->resp_headers,
        .n_headers = call->n_resp_headers,
        .body = call->body ? call->body : (const unsigned char *)"",
        .body_len = call->body_len,
    };
    call_report(call, &resp);
}

/* Everything curl has finished since we last looked. */
static void check_done(struct sbh_httpc *c)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode res = msg->data.result; /* msg dies with remove_handle */
        struct sb_http_call *call = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&call);
        if (call)
            call_finish(call, res);
    }
}

/* ---- curl callbacks: they only record, never call plugins ---- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct sb_http_call *call = arg;
    size_t len = size * nmemb, cap = call->c->body_cap;
    if (len > cap - call->body_len) {
        call->too_big = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (call->body_len + len + 1 > call->body_alloc) {
        size_t want = call->body_alloc ? call->body_alloc : 16384;
        while (want < call->body_len + len + 1)
            want *= 2;
        if (want > cap + 1)
            want = cap + 1;
        unsigned char *p = realloc(call->body, want);
        if (!p)
            return 0;
        call->body = p;
        call->body_alloc = want;
    }
    memcpy(call->body + call->body_len, data, len);
    call->body_len += len;
    call->body[call->body_len] = 0; /* a text body can be read as a string */
    return len;
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

static char *trimmed_dup(const char *s, size_t len)
{
    while (len && is_space(*s))
        s++, len--;
    while (len && is_space(s[len - 1]))
        len--;
    return strndup(s, len);
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *arg)
{
    struct sb_http_call *call = arg;
    size_t len = size * nmemb;
    if (len >= 5 && !memcmp(line, "HTTP/", 5)) {
        /* A new response (after a 1xx): only the last one's headers count. */
        resp_headers_clear(call);
        return len;
    }
    size_t end = len;
    while (end && (line[end - 1] == '\r' || line[end - 1] == '\n'))
        end--;
    if (!end)
        return len;
    if ((line[0] == ' ' || line[0] == '\t') && call->n_resp_headers) {
        /* obsolete line folding: continue the previous value */
        sb_header *h = &call->resp_headers[call->n_resp_headers - 1];
        char *more = trimmed_dup(line, end);
        char *joined = NULL;
        if (!more || asprintf(&joined, "%s %s", h->value, more) < 0)
            joined = NULL;
        free(more);
        if (!joined)
            return 0;
        free((char *)h->value);
        h->value = joined;
        return len;
    }
    const char *colon = memchr(line, ':', end);
    if (!colon || colon == line)
        return len;
    if (call->n_resp_headers == call->resp_headers_alloc) {
        size_t want = call->resp_headers_alloc ? call->resp_headers_alloc * 2 : 16;
        sb_header *p = realloc(call->resp_headers, want * sizeof(*p));
        if (!p)
            return 0;
        call->resp_headers = p;
        call->resp_headers_alloc = want;
    }
    char *name = trimmed_dup(line, (size_t)(colon - line));
    char *value = trimmed_dup(colon + 1, end - (size_t)(colon + 1 - line));
    if (!name || !value) {
        free(name);
        free(value);
        return 0;
    }
    call->resp_headers[call->n_resp_headers++] = (sb_header){name, value};
    return len;
}

static void on_sock_event(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_sock *sock = arg;
    struct sbh_httpc *c = sock->c; /* sock may be freed by socket_action */
    int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(c->multi, fd, flags, &running);
    check_done(c);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct sbh_httpc *c = userp;
    struct sbh_sock *sock = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sock) {
            curl_multi_assign(c->multi, fd, NULL);
            LIST_REMOVE(sock, link);
            event_free(sock->ev);
            free(sock);
        }
        return 0;
    }
    short events =
        EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!sock) {
        sock = calloc(1, sizeof(*sock));
        if (!sock)
            return -1;
        sock->c = c;
        sock->fd = fd;
        sock->ev = event_new(c->base, fd, events, on_sock_event, sock);
        if (!sock->ev) {
            free(sock);
            return -1;
        }
        LIST_INSERT_HEAD(&c->socks, sock, link);
        curl_multi_assign(c->multi, fd, sock);
    } else {
        event_del(sock->ev);
        event_assign(sock->ev, c->base, fd, events, on_sock_event, sock);
    }
    return event_add(sock->ev, NULL) == 0 ? 0 : -1;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_httpc *c = arg;
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

static int on_timer_change(CURLM *multi, long timeout_ms, void *userp)
{
    struct sbh_httpc *c = userp;
    if (timeout_ms < 0) {
        evtimer_del(c->timer);
        return 0;
    }
    /* Even 0 goes through the loop: curl must not be re-entered from here. */
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    return evtimer_add(c->timer, &tv) == 0 ? 0 : -1;
}

/* ---- the client ---- */

static int curl_acquire(void)
{
    if (g_curl_users == 0) {
        CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        if (rc != CURLE_OK) {
            sbh_error("httpc", "cannot initialise libcurl: %s", curl_easy_strerror(rc));
            return -1;
        }
    }
    g_curl_users++;
    return 0;
}

static void curl_release(void)
{
    if (g_curl_users > 0 && --g_curl_users == 0)
        curl_global_cleanup();
}

struct sbh_httpc *sbh_httpc_new(struct event_base *base)
{
    if (curl_acquire() < 0)
        return NULL;
    struct sbh_httpc *c = calloc(1, sizeof(*c));
    if (!c) {
        curl_release();
        sbh_error("httpc", "cannot create the HTTP client");
        return NULL;
    }
    c->base = base;
    c->body_cap = SBH_HTTPC_BODY_CAP;
    LIST_INIT(&c->calls);
    LIST_INIT(&c->socks);
    c->multi = curl_multi_init();
    c->timer = evtimer_new(base, on_timer, c);
    if (!c->multi || !c->timer) {
        sbh_httpc_free(c);
        sbh_error("httpc", "cannot create the HTTP client");
        return NULL;
    }
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      (long)SBH_HTTPC_MAX_HOST_CONNECTIONS);
    return c;
}

void sbh_httpc_free(struct sbh_httpc *c)
{
    if (!c)
        return;
    struct sb_http_call *call;
    while ((call = LIST_FIRST(&c->calls)) != NULL)
        call_free(call);
    if (c->multi)
        curl_multi_cleanup(c->multi); /* closes the cached connections */
    struct sbh_sock *sock;
    while ((sock = LIST_FIRST(&c->socks)) != NULL) {
        LIST_REMOVE(sock, link);
        event_free(sock->ev);
        free(sock);
    }
    if (c->timer)
        event_free(c->timer);
    free(c);
    curl_release();
}

void sbh_httpc_set_max_host_connections(struct sbh_httpc *c, long n)
{
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, n);
}

void sbh_httpc_set_body_cap(struct sbh_httpc *c, size_t bytes)
{
    c->body_cap = bytes;
}

size_t sbh_httpc_active(const struct sbh_httpc *c)
{
    return c ? c->n_calls : 0;
}

/* RFC 9110 token: what a method or a header name may be made of. */
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

static int has_header(const sb_http_request *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (!strcasecmp(req->headers[i].name, name))
            return 1;
    return 0;
}

static int add_header(struct sb_http_call *call, const char *line)
{
    struct curl_slist *l = curl_slist_append(call->req_headers, line);
    if (!l)
        return -1;
    call->req_headers = l;
    return 0;
}

static int build_headers(struct sb_http_call *call, const sb_http_request *req)
{
    for (size_t i = 0; i < req->n_headers; i++) {
        const char *value = req->headers[i].value ? req->headers[i].value : "";
        char *line;
        /* "Name;" is curl's way to send a header with an empty value. */
        if (asprintf(&line, *value ? "%s: %s" : "%s;", req->headers[i].name, value) < 0)
            return -1;
        int rc = add_header(call, line);
        free(line);
        if (rc < 0)
            return -1;
    }
    /* No hidden defaults: no 100-continue round trip, no form content type. */
    if (!has_header(req, "Expect") && add_header(call, "Expect:") < 0)
        return -1;
    if (!has_header(req, "Content-Type") && add_header(call, "Content-Type:") < 0)
        return -1;
    return 0;
}

static CURLcode set_method(struct sb_http_call *call, const char *method,
                           const sb_http_request *req)
{
    CURL *e = call->easy;
    CURLcode rc = CURLE_OK;
    int is_get = !strcmp(method, "GET"), is_head = !strcmp(method, "HEAD");
    int is_post = !strcmp(method, "POST");
    int with_body =
        req->body_len > 0 || is_post || !strcmp(method, "PUT") || !strcmp(method, "PATCH");
    if (is_head) {
        /* no body comes: a large Content-Length is no reason to fail */
        rc = curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)0);
        return rc == CURLE_OK ? curl_easy_setopt(e, CURLOPT_NOBODY, 1L) : rc;
    }
    if (is_get && !with_body)
        return curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    if (with_body) {
        if (req->body_len) {
            call->req_body = malloc(req->body_len);
            if (!call->req_body)
                return CURLE_OUT_OF_MEMORY;
            memcpy(call->req_body, req->body, req->body_len);
        }
        rc = curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(e, CURLOPT_POSTFIELDS,
                                  call->req_body ? (char *)call->req_body : "");
    }
    if (rc == CURLE_OK && !is_post)
        rc = curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    return rc;
}

static CURLcode set_options(struct sb_http_call *call, const char *method,
                            const sb_http_request *req)
{
    CURL *e = call->easy;
    long timeout = req->timeout_ms ? (long)req->timeout_ms : (long)SBH_HTTPC_DEFAULT_TIMEOUT_MS;
    long connect =
        timeout < (long)SBH_HTTPC_CONNECT_TIMEOUT_MS ? timeout : (long)SBH_HTTPC_CONNECT_TIMEOUT_MS;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_PRIVATE, (void *)call);
    SET(CURLOPT_ERRORBUFFER, call->errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* Over TLS, wait for ALPN to tell whether the open connection multiplexes
     * (HTTP/2) before opening another; over plain HTTP there is nothing to
     * learn, and waiting would queue requests behind a slow answer. */
    SET(CURLOPT_PIPEWAIT, (long)!strncasecmp(req->url, "https://", 8));
    SET(CURLOPT_TIMEOUT_MS, timeout);
    SET(CURLOPT_CONNECTTIMEOUT_MS, connect);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)call->c->body_cap);
    SET(CURLOPT_USERAGENT, "switchboard/" PACKAGE_VERSION);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)call);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, (void *)call);
    SET(CURLOPT_HTTPHEADER, call->req_headers);
#undef SET
    if (rc == CURLE_OK)
        rc = set_method(call, method, req);
    return rc;
}

sb_http_call *sbh_httpc_request(struct sbh_httpc *c, struct sb_plugin *gen,
                                struct sb_instance *inst, const sb_http_request *req,
                                sb_http_done_fn done, void *arg)
{
    if (!c || !req || !req->url || !*req->url || !done)
        return NULL;
    if (req->body_len && !req->body)
        return NULL;
    const char *method = req->method && *req->method ? req->method : "GET";
    if (!is_token(method))
        return NULL;
    for (size_t i = 0; i < req->n_headers; i++) {
        const char *v = req->headers[i].value;
        if (!is_token(req->headers[i].name) || (v && strpbrk(v, "\r\n")))
            return NULL;
    }
    struct sb_http_call *call = calloc(1, sizeof(*call));
    if (!call)
        return NULL;
    call->c = c;
    call->gen = gen;
    call->inst = inst;
    call->done = done;
    call->arg = arg;
    call->provider = strdup(gen && gen->slot && gen->slot->name ? gen->slot->name : "host");
    call->easy = curl_easy_init();
    if (!call->provider || !call->easy || build_headers(call, req) < 0) {
        call_free(call);
        return NULL;
    }
    CURLcode rc = set_options(call, method, req);
    CURLMcode mrc = CURLM_OK;
    if (rc == CURLE_OK) {
        mrc = curl_multi_add_handle(c->multi, call->easy);
        call->in_multi = mrc == CURLM_OK;
    }
    if (rc != CURLE_OK || mrc != CURLM_OK) {
        const char *why = rc != CURLE_OK ? curl_easy_strerror(rc) : curl_multi_strerror(mrc);
        if (call_fail_later(call, why) < 0) {
            call_free(call);
            return NULL;
        }
    }
    call->linked = 1;
    LIST_INSERT_HEAD(&c->calls, call, all);
    if (gen)
        LIST_INSERT_HEAD(&gen->http_calls, call, by_gen);
    if (inst)
        LIST_INSERT_HEAD(&inst->http_calls, call, by_inst);
    c->n_calls++;
    return call;
}

void sbh_httpc_cancel(sb_http_call *call)
{
    if (!call || call->finishing)
        return;
    call_free(call);
}

void sbh_httpc_cancel_gen(struct sb_plugin *gen)
{
    struct sb_http_call *call;
    while ((call = LIST_FIRST(&gen->http_calls)) != NULL)
        call_free(call);
}

void sbh_httpc_cancel_inst(struct sb_instance *inst)
{
    struct sb_http_call *call;
    while ((call = LIST_FIRST(&inst->http_calls)) != NULL)
        call_free(call);
}
