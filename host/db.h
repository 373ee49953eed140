/*
 * Database access that never blocks the loop: a small pool of worker
 * threads, each with its own MariaDB connection. The loop submits a job; the
 * job's work function runs on a worker with that worker's connection; its
 * done function runs afterwards on the loop thread. Prepared statements only.
 */
#ifndef SBH_DB_H
#define SBH_DB_H

#include <stddef.h>

#include <event2/event.h>
#include <mysql.h>

/* Results of work functions and of sbh_db_submit. */
#define SBH_DB_OK 0
#define SBH_DB_ERROR (-1)       /* the statement failed (constraint, bad data) */
#define SBH_DB_UNAVAILABLE (-2) /* no connection to the server: answer 503 */
#define SBH_DB_NOTFOUND (-3)
#define SBH_DB_CONFLICT (-4) /* duplicate key */

struct sbh_db_params {
    char *host; /* NULL with a socket */
    unsigned port;
    char *socket; /* unix socket path, or NULL */
    char *user;
    char *password;
    char *database;
};

/*
 * Parse DATABASE_URL: mysql://user:pass@host:port/db,
 * mysql://user:pass@localhost/db?socket=/run/mysqld/mysqld.sock, or
 * mysql://user@/db?socket=... (user and password percent-decoded). Returns 0,
 * or -1 with why (which never contains the password).
 */
int sbh_db_url_parse(const char *url, struct sbh_db_params *out, char *why, size_t why_len);
void sbh_db_params_clear(struct sbh_db_params *p);

/*
 * Connect synchronously (start-up, migrate, rotate-key; never on the loop).
 * utf8mb4, autocommit on. Returns NULL with why on failure.
 */
MYSQL *sbh_db_connect(const struct sbh_db_params *p, char *why, size_t why_len);

/* 1 when a MySQL error number means the connection is gone (retry later). */
int sbh_db_error_is_connection(unsigned err);

struct sbh_db;

typedef int (*sbh_db_work_fn)(MYSQL *conn, void *arg); /* worker thread */
typedef void (*sbh_db_done_fn)(void *arg, int result); /* loop thread */

/*
 * Pool of `workers` threads for params (copied). Connections are made lazily
 * and remade after a connection error. done callbacks are run by base.
 */
struct sbh_db *sbh_db_new(struct event_base *base, const struct sbh_db_params *params,
                          unsigned workers);

/*
 * Queue a job. work gets a live connection (or is not called: done then
 * gets SBH_DB_UNAVAILABLE); its return value is handed to done. A work
 * function that sees a connection error returns SBH_DB_UNAVAILABLE and the
 * worker reconnects before its next job. Returns 0, or -1 when queuing
 * failed (done is then not called).
 */
int sbh_db_submit(struct sbh_db *db, sbh_db_work_fn work, sbh_db_done_fn done, void *arg);

/* 1 while the last job or health probe reached the server. */
int sbh_db_available(const struct sbh_db *db);

/* Finish the jobs already queued, stop the workers and free. done callbacks
 * that have not run yet are dropped: call it when nothing waits for them,
 * and not from inside a done callback. */
void sbh_db_free(struct sbh_db *db);

/*
 * Prepared-statement helpers for work functions.
 * sbh_db_exec: prepare sql, bind params described by types ('s' const char*,
 * may be NULL for SQL NULL; 'i' long long; 'b' const void* + size_t length),
 * execute. *affected (may be NULL) gets the affected row count. Returns an
 * SBH_DB_* code (duplicate key -> SBH_DB_CONFLICT; a lost connection ->
 * SBH_DB_UNAVAILABLE). Pass exactly those C types: write (const char *)NULL,
 * (long long)n and (size_t)len, since varargs do not convert.
 */
int sbh_db_exec(MYSQL *conn, unsigned long long *affected, const char *sql, const char *types, ...);

/*
 * sbh_db_query: like sbh_db_exec, then fetch every row into a new JSON array
 * of objects keyed by column name (strings, integers or null; JSON columns as
 * strings). *rows receives the array (caller decrefs). Binary columns (BLOB,
 * VARBINARY) come back as jansson strings holding the raw bytes (read them
 * with json_string_value + json_string_length; they need not be UTF-8, so
 * never dump them as JSON). DECIMAL, floats and dates are strings; an
 * unsigned BIGINT above LLONG_MAX is a decimal string.
 */
#include <jansson.h>
int sbh_db_query(MYSQL *conn, json_t **rows, const char *sql, const char *types, ...);

/*
 * Like sbh_db_exec with the parameters in a JSON array (strings, integers,
 * booleans as 0/1, null), for statements whose placeholder count is built at
 * run time, such as a multi-row INSERT of a batch.
 */
int sbh_db_exec_json(MYSQL *conn, unsigned long long *affected, const char *sql,
                     const json_t *values);

/*
 * Run sql, an INSERT, UPDATE or DELETE with the placeholders of one row, for
 * n rows: values holds n * (placeholders) parameters, row after row (as
 * sbh_db_exec_json; a column is strings or integers throughout, nulls
 * anywhere). With MariaDB's bulk execution this is one round trip and one
 * prepared statement whatever n; a server without it gets the rows one by
 * one. *affected (may be NULL) gets the total. A duplicate key in any row
 * gives SBH_DB_CONFLICT: run it in a transaction to undo the rows before.
 */
int sbh_db_exec_rows(MYSQL *conn, unsigned long long *affected, const char *sql, size_t n,
                     const json_t *values);

/* "prefix row, row, ... suffix" with n rows; malloc'd (caller frees), NULL
 * when out of memory. */
char *sbh_db_rows_sql(const char *prefix, const char *row, size_t n, const char *suffix);

/* sbh_db_query with the parameters in a JSON array (as sbh_db_exec_json). */
int sbh_db_query_json(MYSQL *conn, json_t **rows, const char *sql, const json_t *values);

/* Run fn inside one transaction: committed when it returns SBH_DB_OK,
 * rolled back otherwise; returns fn's (or the commit's) result. */
int sbh_db_transaction(MYSQL *conn, int (*fn)(MYSQL *conn, void *arg), void *arg);

#endif
