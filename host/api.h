/*
 * The /v1 API: bearer-key authentication, JSON bodies, and calls that wait
 * on the database without blocking the loop. Resource handlers live in
 * api_<resource>.c and share the plumbing declared here.
 */
#ifndef SBH_API_H
#define SBH_API_H

#include <event2/http.h>
#include <jansson.h>

#include "auth.h"
#include "daemon.h"
#include "db.h"

/* One API request in flight. */
struct sbh_call {
    struct sbh_daemon *d;
    struct evhttp_request *req; /* NULL once the client went away */
    char route[64];             /* metrics label, e.g. "/v1/instances/{id}" */
    struct sbh_principal who;
    json_t *body; /* parsed JSON body, or NULL */
    char id[80];  /* the {id} in the path, "" when none */
    /* Database job: work runs on a worker with only in/out; then on the loop. */
    json_t *in;
    json_t *out;
    int (*work)(MYSQL *conn, struct sbh_call *call);
    void (*then)(struct sbh_call *call, int result);
};

/*
 * Route /v1/... and /openapi.json; returns 1 when the path is ours (the
 * request is then answered, now or later), 0 otherwise.
 */
int sbh_api_dispatch(struct sbh_daemon *d, struct evhttp_request *req, const char *path);

/* Free the call without answering: the request was handed on (a stream). */
void sbh_call_detach(struct sbh_call *call);
/* Answer and free the call. reply steals doc. */
void sbh_call_reply(struct sbh_call *call, int status, json_t *doc);
/* Error shape; field (may be NULL) goes into details.field. */
/* Answer with a non-JSON body (copied) and free the call. */
void sbh_call_reply_raw(struct sbh_call *call, int status, const char *content_type,
                        const void *body, size_t len);
void sbh_call_error(struct sbh_call *call, int status, const char *code, const char *field,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Run work on the database, then `then` on the loop (503 when it is down). */
void sbh_call_db(struct sbh_call *call, int (*work)(MYSQL *, struct sbh_call *),
                 void (*then)(struct sbh_call *, int));
/* Answer a database result that is not SBH_DB_OK with the matching error. */
void sbh_call_db_error(struct sbh_call *call, int result);

/*
 * Body checks: the body must be a JSON object whose keys are all in allowed
 * (NULL-terminated). On failure the call is answered (400 naming the field)
 * and -1 returned.
 */
int sbh_call_body_object(struct sbh_call *call, const char *const *allowed);

/* Handlers. method is the evhttp command; action is "", "start", ... */
void sbh_api_instances(struct sbh_call *call, enum evhttp_cmd_type method, const char *action);
/* GET /v1/instances/{id}/qr and POST /v1/instances/{id}/logout (api_session.c). */
void sbh_api_instance_qr(struct sbh_call *call);
void sbh_api_instance_logout(struct sbh_call *call);
void sbh_api_keys(struct sbh_call *call, enum evhttp_cmd_type method);
void sbh_api_instance_messages(struct sbh_call *call, enum evhttp_cmd_type method);
void sbh_api_messages(struct sbh_call *call, enum evhttp_cmd_type method);
void sbh_api_subscriptions(struct sbh_call *call, enum evhttp_cmd_type method);

/* Start-up work on a synchronous connection (before the loop runs). */
int sbh_api_bootstrap_admin_key(MYSQL *conn, struct sbh_auth *auth, char *why, size_t why_len);
int sbh_api_load_instances(struct sbh_daemon *d, MYSQL *conn, char *why, size_t why_len);
/* Refresh the key cache from the database (periodic). */
void sbh_api_refresh_keys(struct sbh_daemon *d);

#endif
