/*
 * Database access: DATABASE_URL parsing, synchronous connections, the worker
 * pool and the prepared-statement helpers (see db.h).
 *
 * Threads: each worker owns one MYSQL handle and is the only thread touching
 * it. Jobs go to workers through a mutex+condvar queue; finished jobs come
 * back through a second list and an eventfd that an event on the loop's base
 * watches, so done callbacks, the availability log and the health probe
 * timer all live on the loop thread and libevent needs no locking.
 */
#include "db.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <errmsg.h>
#include <mysqld_error.h>

#include "log.h"

#define DB_CONNECT_TIMEOUT_S 3u
/* A stopped or wedged server must not hold a worker forever. */
#define DB_IO_TIMEOUT_S 10u
#define DB_PROBE_INTERVAL_MS 1000
/* A connection idle this long is pinged before use: the server may have
 * dropped it (wait_timeout, restart) and the job should not pay for that. */
#define DB_IDLE_PING_S 30
/* While the server is down, a worker without a connection fails jobs fast
 * instead of retrying the connect for each of them. */
#define DB_RETRY_MS 500

/* ---- library initialisation ---- */

static pthread_once_t g_lib_once = PTHREAD_ONCE_INIT;
static int g_lib_rc;

static void lib_init_once(void)
{
    g_lib_rc = mysql_library_init(0, NULL, NULL);
}

/* mysql_library_init is not thread-safe and mysql_init calls it implicitly:
 * every entry point runs it once here before any thread can race. */
static int lib_init(void)
{
    pthread_once(&g_lib_once, lib_init_once);
    return g_lib_rc;
}

/* ---- DATABASE_URL ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..len) into a new string; NULL on a bad escape or an
 * escaped NUL (which could not survive as a C string). '+' stays '+'. */
static char *pct_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        int hi = i + 2 < len ? hexval(s[i + 1]) : -1;
        int lo = i + 2 < len ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *o = '\0';
    return out;
}

void sbh_db_params_clear(struct sbh_db_params *p)
{
    if (!p)
        return;
    free(p->host);
    free(p->socket);
    free(p->user);
    free(p->password);
    free(p->database);
    *p = (struct sbh_db_params){0};
}

/* Parse "?socket=...&..." (q points past '?'). Only socket is known. */
static int parse_query(const char *q, struct sbh_db_params *out, char *why, size_t why_len)
{
    while (*q) {
        size_t len = strcspn(q, "&");
        const char *eq = memchr(q, '=', len);
        if (eq && (size_t)(eq - q) == 6 && !strncmp(q, "socket", 6)) {
            free(out->socket);
            out->socket = pct_decode(eq + 1, len - 7);
            if (!out->socket || !out->socket[0]) {
                snprintf(why, why_len, "DATABASE_URL: bad socket parameter");
                return -1;
            }
        } else if (len) {
            snprintf(why, why_len, "DATABASE_URL: unknown parameter '%.*s'",
                     (int)(eq ? (size_t)(eq - q) : len), q);
            return -1;
        }
        q += len;
        if (*q == '&')
            q++;
    }
    return 0;
}

/* host[:port] or [v6]:port from auth[0..len). */
static int parse_hostport(const char *s, size_t len, struct sbh_db_params *out, char *why,
                          size_t why_len)
{
    const char *host = s, *colon = NULL;
    size_t hlen = len;
    if (len && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close) {
            snprintf(why, why_len, "DATABASE_URL: unterminated [ in host");
            return -1;
        }
        host = s + 1;
        hlen = (size_t)(close - host);
        if (close + 1 < s + len) {
            if (close[1] != ':') {
                snprintf(why, why_len, "DATABASE_URL: junk after ] in host");
                return -1;
            }
            colon = close + 1;
        }
    } else {
        colon = memchr(s, ':', len);
        if (colon)
            hlen = (size_t)(colon - s);
    }
    if (colon) {
        const char *p = colon + 1, *end = s + len;
        unsigned long port = 0;
        if (p == end) {
            snprintf(why, why_len, "DATABASE_URL: empty port");
            return -1;
        }
        for (; p < end; p++) {
            if (*p < '0' || *p > '9' || (port = port * 10 + (unsigned)(*p - '0')) > 65535) {
                snprintf(why, why_len, "DATABASE_URL: bad port");
                return -1;
            }
        }
        if (port == 0) {
            snprintf(why, why_len, "DATABASE_URL: bad port");
            return -1;
        }
        out->port = (unsigned)port;
    }
    if (hlen) {
        out->host = pct_decode(host, hlen);
        if (!out->host) {
            snprintf(why, why_len, "DATABASE_URL: bad host");
            return -1;
        }
    }
    return 0;
}

int sbh_db_url_parse(const char *url, struct sbh_db_params *out, char *why, size_t why_len)
{
    *out = (struct sbh_db_params){0};
    const char *p;
    if (!url || !*url) {
        snprintf(why, why_len, "DATABASE_URL is empty");
        return -1;
    }
    if (!strncmp(url, "mysql://", 8))
        p = url + 8;
    else if (!strncmp(url, "mariadb://", 10))
        p = url + 10;
    else {
        snprintf(why, why_len, "DATABASE_URL must start with mysql:// or mariadb://");
        return -1;
    }
    /* Authority ends at the path; the last '@' in it ends the user info, so
     * an unescaped '@' in a password still parses. */
    size_t alen = strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *c = p; c < p + alen; c++)
        if (*c == '@')
            at = c;
    const char *hp = p;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
        out->user = pct_decode(p, ulen);
        if (colon)
            out->password = pct_decode(colon + 1, (size_t)(at - colon - 1));
        if (!out->user || !out->user[0] || (colon && !out->password)) {
            snprintf(why, why_len, "DATABASE_URL: bad user or password (check %% escapes)");
            goto fail;
        }
        hp = at + 1;
    }
    if (parse_hostport(hp, (size_t)(p + alen - hp), out, why, why_len) < 0)
        goto fail;
    p += alen;
    if (*p != '/') {
        snprintf(why, why_len, "DATABASE_URL: no database name (.../dbname)");
        goto fail;
    }
    p++;
    size_t dlen = strcspn(p, "?#");
    out->database = pct_decode(p, dlen);
    if (!out->database || !out->database[0] || strchr(out->database, '/')) {
        snprintf(why, why_len, "DATABASE_URL: bad or missing database name");
        goto fail;
    }
    p += dlen;
    if (*p == '?') {
        size_t qlen = strcspn(p + 1, "#");
        char *q = strndup(p + 1, qlen);
        int rc = q ? parse_query(q, out, why, why_len) : -1;
        free(q);
        if (rc < 0)
            goto fail;
    }
    if (!out->user) {
        snprintf(why, why_len, "DATABASE_URL: no user (mysql://user@...)");
        goto fail;
    }
    if (out->socket) {
        /* The client library only uses the socket for "localhost" or no
         * host; anything else would silently go over TCP instead. */
        if (out->host && strcmp(out->host, "localhost") != 0) {
            snprintf(why, why_len, "DATABASE_URL: socket= needs host localhost or none");
            goto fail;
        }
        free(out->host);
        out->host = NULL;
        out->port = 0;
    } else if (!out->host) {
        snprintf(why, why_len, "DATABASE_URL: no host and no ?socket=");
        goto fail;
    } else if (!out->port) {
        out->port = 3306;
    }
    return 0;
fail:
    sbh_db_params_clear(out);
    return -1;
}

/* ---- connections ---- */

int sbh_db_error_is_connection(unsigned err)
{
    switch (err) {
    case CR_SOCKET_CREATE_ERROR:
    case CR_CONNECTION_ERROR:
    case CR_CONN_HOST_ERROR:
    case CR_IPSOCK_ERROR:
    case CR_UNKNOWN_HOST:
    case CR_SERVER_GONE_ERROR:
    case CR_SERVER_HANDSHAKE_ERR:
    case CR_SERVER_LOST:
    case CR_SERVER_LOST_EXTENDED:
    case CR_ERR_NET_READ:
    case CR_ERR_NET_WRITE:
    case ER_CON_COUNT_ERROR:
    case ER_SERVER_SHUTDOWN:
    case ER_ABORTING_CONNECTION:
    case ER_NET_READ_ERROR:
    case ER_NET_READ_INTERRUPTED:
    case ER_NET_ERROR_ON_WRITE:
    case ER_NET_WRITE_INTERRUPTED:
    case ER_NEW_ABORTING_CONNECTION:
    case ER_CONNECTION_KILLED:
        return 1;
    default:
        return 0;
    }
}

MYSQL *sbh_db_connect(const struct sbh_db_params *p, char *why, size_t why_len)
{
    if (lib_init() != 0) {
        snprintf(why, why_len, "cannot initialise the MariaDB client library");
        return NULL;
    }
    MYSQL *conn = mysql_init(NULL);
    if (!conn) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    unsigned connect_timeout = DB_CONNECT_TIMEOUT_S, io_timeout = DB_IO_TIMEOUT_S;
    my_bool no = 0;
    mysql_options(conn, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    mysql_options(conn, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
    mysql_options(conn, MYSQL_OPT_READ_TIMEOUT, &io_timeout);
    mysql_options(conn, MYSQL_OPT_WRITE_TIMEOUT, &io_timeout);
    /* Reconnecting behind our back would lose session state (GET_LOCK);
     * the pool reconnects itself. */
    mysql_options(conn, MYSQL_OPT_RECONNECT, &no);
    /* NOW() and CURRENT_TIMESTAMP in UTC whatever the server's zone is. */
    mysql_options(conn, MYSQL_INIT_COMMAND, "SET time_zone = '+00:00'");
    /* Batches from several workers touch neighbouring outbox rows: without gap
     * locks (READ COMMITTED) they deadlock far less. */
    mysql_options(conn, MYSQL_INIT_COMMAND,
                  "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
    if (!mysql_real_connect(conn, p->host, p->user, p->password, p->database, p->port, p->socket,
                            0)) {
        /* The server's messages name user and host, never the password. */
        snprintf(why, why_len, "cannot connect to MariaDB at %s: %s",
                 p->socket ? p->socket : (p->host ? p->host : "localhost"), mysql_error(conn));
        mysql_close(conn);
        return NULL;
    }
    mysql_autocommit(conn, 1);
    return conn;
}

/* ---- prepared statements ---- */

/* The last connection error a statement helper saw on this thread: the
 * pool names it when it drops the connection (statement errors live on the
 * statement, which is closed by then). */
static __thread char t_conn_error[200];
/* The error number of the last failed statement on this thread. */
static __thread unsigned t_last_errno;

/* Map a failed statement's error to a result code and log what is news. */
static int stmt_fail(MYSQL_STMT *stmt, MYSQL *conn, const char *sql)
{
    unsigned err = stmt ? mysql_stmt_errno(stmt) : mysql_errno(conn);
    const char *msg = stmt ? mysql_stmt_error(stmt) : mysql_error(conn);
    t_last_errno = err;
    if (err == ER_LOCK_DEADLOCK || err == ER_LOCK_WAIT_TIMEOUT)
        return SBH_DB_ERROR; /* the transaction is retried; not news for the log */
    if (err == ER_DUP_ENTRY || err == ER_DUP_ENTRY_WITH_KEY_NAME)
        return SBH_DB_CONFLICT; /* an expected answer; the message quotes data */
    if (sbh_db_error_is_connection(err)) {
        snprintf(t_conn_error, sizeof(t_conn_error), "%s", msg);
        sbh_debug("db", "connection error %u: %s", err, msg);
        return SBH_DB_UNAVAILABLE;
    }
    /* Parameters may hold secrets: log the SQL text and the error only. */
    json_t *f = json_pack("{s:s, s:i}", "sql", sql, "mysql_errno", (int)err);
    sbh_log_fields(SB_LOG_WARN, "db", NULL, NULL, f, msg);
    return SBH_DB_ERROR;
}

/*
 * Per-worker statement cache. Preparing costs the server a parse and the
 * worker a round trip for every statement of every batch (about a seventh
 * of the server's CPU under load); a pool worker keeps what it prepared on
 * its connection instead, keyed by the SQL text. Only pool workers have a
 * cache (t_cache); other connections prepare and close as before. Any
 * failure drops the statement, so a retry starts from a fresh prepare.
 */
#define STMT_CACHE_SIZE 64

struct stmt_cache {
    MYSQL *conn; /* the worker's connection the statements belong to */
    uint64_t clock;
    struct cached_stmt {
        char *sql;
        uint64_t hash;
        uint64_t used; /* clock at the last use: the least recent is evicted */
        MYSQL_STMT *stmt;
    } e[STMT_CACHE_SIZE];
};

static __thread struct stmt_cache *t_cache;

static uint64_t sql_hash(const char *sql)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (const unsigned char *c = (const unsigned char *)sql; *c; c++)
        h = (h ^ *c) * 1099511628211ull;
    return h;
}

static void cached_drop(struct cached_stmt *e)
{
    mysql_stmt_close(e->stmt);
    free(e->sql);
    *e = (struct cached_stmt){0};
}

/* Before its connection is closed or replaced. */
static void stmt_cache_clear(struct stmt_cache *c)
{
    for (size_t i = 0; i < STMT_CACHE_SIZE; i++)
        if (c->e[i].stmt)
            cached_drop(&c->e[i]);
    c->conn = NULL;
}

static struct stmt_cache *cache_for(MYSQL *conn)
{
    return t_cache && t_cache->conn == conn ? t_cache : NULL;
}

/* A prepared statement for sql: from the cache, else prepared (and kept when
 * there is a cache). NULL on failure, with the error logged and in *rc. */
static MYSQL_STMT *stmt_get(MYSQL *conn, const char *sql, int *rc)
{
    struct stmt_cache *c = cache_for(conn);
    uint64_t h = c ? sql_hash(sql) : 0;
    struct cached_stmt *slot = NULL;
    for (size_t i = 0; c && i < STMT_CACHE_SIZE; i++) {
        struct cached_stmt *e = &c->e[i];
        if (e->stmt && e->hash == h && !strcmp(e->sql, sql)) {
            e->used = ++c->clock;
            return e->stmt;
        }
        if (!slot || !e->stmt || (slot->stmt && e->used < slot->used))
            slot = e;
    }
    MYSQL_STMT *stmt = mysql_stmt_init(conn);
    if (!stmt) {
        *rc = stmt_fail(NULL, conn, sql);
        return NULL;
    }
    if (mysql_stmt_prepare(stmt, sql, strlen(sql)) != 0) {
        *rc = stmt_fail(stmt, conn, sql);
        mysql_stmt_close(stmt);
        return NULL;
    }
    char *copy = c ? strdup(sql) : NULL;
    if (copy) {
        if (slot->stmt)
            cached_drop(slot);
        *slot = (struct cached_stmt){.sql = copy, .hash = h, .used = ++c->clock, .stmt = stmt};
    }
    return stmt;
}

/* Done with a statement from stmt_get: a cached one stays prepared unless
 * it failed; any other is closed. */
static void stmt_put(MYSQL *conn, MYSQL_STMT *stmt, int failed)
{
    struct stmt_cache *c = cache_for(conn);
    for (size_t i = 0; c && i < STMT_CACHE_SIZE; i++) {
        if (c->e[i].stmt != stmt)
            continue;
        if (failed)
            cached_drop(&c->e[i]);
        else
            mysql_stmt_free_result(stmt);
        return;
    }
    mysql_stmt_close(stmt);
}

/* Storage behind the MYSQL_BIND array of one statement's parameters. */
struct params {
    MYSQL_BIND *bind;
    long long *ints;
    unsigned long *lens;
};

static void params_free(struct params *ps)
{
    free(ps->bind);
    free(ps->ints);
    free(ps->lens);
}

/* Fill ps from types and ap; -1 on an unknown type letter. */
static int params_bind(struct params *ps, const char *types, va_list ap)
{
    size_t n = strlen(types);
    ps->bind = calloc(n ? n : 1, sizeof(*ps->bind));
    ps->ints = calloc(n ? n : 1, sizeof(*ps->ints));
    ps->lens = calloc(n ? n : 1, sizeof(*ps->lens));
    if (!ps->bind || !ps->ints || !ps->lens)
        return -1;
    for (size_t i = 0; i < n; i++) {
        MYSQL_BIND *b = &ps->bind[i];
        if (types[i] == 's') {
            const char *s = va_arg(ap, const char *);
            b->buffer_type = s ? MYSQL_TYPE_STRING : MYSQL_TYPE_NULL;
            b->buffer = (void *)s;
            ps->lens[i] = s ? strlen(s) : 0;
        } else if (types[i] == 'i') {
            ps->ints[i] = va_arg(ap, long long);
            b->buffer_type = MYSQL_TYPE_LONGLONG;
            b->buffer = &ps->ints[i];
        } else if (types[i] == 'b') {
            const void *data = va_arg(ap, const void *);
            size_t len = va_arg(ap, size_t);
            b->buffer_type = data ? MYSQL_TYPE_BLOB : MYSQL_TYPE_NULL;
            b->buffer = (void *)data;
            ps->lens[i] = data ? len : 0;
        } else {
            sbh_error("db", "bad parameter type '%c' in \"%s\"", types[i], types);
            return -1;
        }
        b->buffer_length = ps->lens[i];
        b->length = &ps->lens[i];
    }
    return 0;
}

/* Prepare, bind and execute; *out gets the statement on SBH_DB_OK. */
static int stmt_run(MYSQL *conn, MYSQL_STMT **out, const char *sql, const char *types, va_list ap)
{
    struct params ps = {0};
    int rc = SBH_DB_ERROR;
    MYSQL_STMT *stmt = stmt_get(conn, sql, &rc);
    if (!stmt)
        goto out;
    if (mysql_stmt_param_count(stmt) != strlen(types)) {
        sbh_error("db", "\"%s\" has %lu placeholders but %zu parameters were given", sql,
                  mysql_stmt_param_count(stmt), strlen(types));
        goto out;
    }
    if (params_bind(&ps, types, ap) < 0)
        goto out;
    if (strlen(types) && mysql_stmt_bind_param(stmt, ps.bind) != 0) {
        rc = stmt_fail(stmt, conn, sql);
        goto out;
    }
    if (mysql_stmt_execute(stmt) != 0) {
        rc = stmt_fail(stmt, conn, sql);
        goto out;
    }
    *out = stmt;
    stmt = NULL;
    rc = SBH_DB_OK;
out:
    params_free(&ps);
    if (stmt)
        stmt_put(conn, stmt, 1);
    return rc;
}

int sbh_db_exec(MYSQL *conn, unsigned long long *affected, const char *sql, const char *types, ...)
{
    MYSQL_STMT *stmt = NULL;
    va_list ap;
    va_start(ap, types);
    int rc = stmt_run(conn, &stmt, sql, types ? types : "", ap);
    va_end(ap);
    if (rc != SBH_DB_OK)
        return rc;
    if (affected)
        *affected = mysql_stmt_affected_rows(stmt);
    stmt_put(conn, stmt, 0);
    return SBH_DB_OK;
}

/* Bind a JSON array (strings, integers, booleans, null) as parameters. */
static int params_bind_json(struct params *ps, const json_t *values)
{
    size_t n = json_array_size(values);
    ps->bind = calloc(n ? n : 1, sizeof(*ps->bind));
    ps->ints = calloc(n ? n : 1, sizeof(*ps->ints));
    ps->lens = calloc(n ? n : 1, sizeof(*ps->lens));
    if (!ps->bind || !ps->ints || !ps->lens)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(values, i);
        MYSQL_BIND *b = &ps->bind[i];
        if (json_is_string(v)) {
            b->buffer_type = MYSQL_TYPE_STRING;
            b->buffer = (void *)json_string_value(v);
            ps->lens[i] = json_string_length(v);
        } else if (json_is_integer(v) || json_is_boolean(v)) {
            ps->ints[i] = json_is_integer(v) ? json_integer_value(v) : json_is_true(v);
            b->buffer_type = MYSQL_TYPE_LONGLONG;
            b->buffer = &ps->ints[i];
        } else if (json_is_null(v)) {
            b->buffer_type = MYSQL_TYPE_NULL;
        } else {
            sbh_error("db", "parameter %zu is neither string, integer, boolean nor null", i);
            return -1;
        }
        b->buffer_length = ps->lens[i];
        b->length = &ps->lens[i];
    }
    return 0;
}

/* Prepare, bind a JSON array and execute; *out gets the statement on SBH_DB_OK. */
static int stmt_run_json(MYSQL *conn, MYSQL_STMT **out, const char *sql, const json_t *values)
{
    struct params ps = {0};
    int rc = SBH_DB_ERROR;
    MYSQL_STMT *stmt = stmt_get(conn, sql, &rc);
    if (!stmt)
        goto out;
    if (mysql_stmt_param_count(stmt) != json_array_size(values)) {
        sbh_error("db", "statement has %lu placeholders but %zu values were given",
                  mysql_stmt_param_count(stmt), json_array_size(values));
        goto out;
    }
    if (params_bind_json(&ps, values) < 0)
        goto out;
    if (json_array_size(values) && mysql_stmt_bind_param(stmt, ps.bind) != 0) {
        rc = stmt_fail(stmt, conn, sql);
        goto out;
    }
    if (mysql_stmt_execute(stmt) != 0) {
        rc = stmt_fail(stmt, conn, sql);
        goto out;
    }
    *out = stmt;
    stmt = NULL;
    rc = SBH_DB_OK;
out:
    params_free(&ps);
    if (stmt)
        stmt_put(conn, stmt, 1);
    return rc;
}

int sbh_db_exec_json(MYSQL *conn, unsigned long long *affected, const char *sql,
                     const json_t *values)
{
    MYSQL_STMT *stmt = NULL;
    int rc = stmt_run_json(conn, &stmt, sql, values);
    if (rc != SBH_DB_OK)
        return rc;
    if (affected)
        *affected = mysql_stmt_affected_rows(stmt);
    stmt_put(conn, stmt, 0);
    return SBH_DB_OK;
}

char *sbh_db_rows_sql(const char *prefix, const char *row, size_t n, const char *suffix)
{
    size_t len = strlen(prefix) + n * (strlen(row) + 2) + strlen(suffix) + 1;
    char *sql = malloc(len);
    if (!sql)
        return NULL;
    size_t off = (size_t)snprintf(sql, len, "%s", prefix);
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(sql + off, len - off, "%s%s", i ? ", " : "", row);
    snprintf(sql + off, len - off, "%s", suffix);
    return sql;
}

/*
 * Column-wise arrays for MariaDB's bulk execution: per placeholder one
 * array of n values (string pointers or integers), lengths and indicators.
 * A column is strings or integers throughout; nulls may appear in either.
 */
struct bulk {
    size_t cols, n;
    MYSQL_BIND *bind;
    const char **strs; /* cols * n, column after column */
    long long *ints;
    unsigned long *lens;
    char *ind;
};

static void bulk_free(struct bulk *b)
{
    free(b->bind);
    free(b->strs);
    free(b->ints);
    free(b->lens);
    free(b->ind);
}

static int bulk_column(struct bulk *b, size_t c, const json_t *values)
{
    MYSQL_BIND *bind = &b->bind[c];
    int strings = -1; /* unknown until a value that is not null */
    for (size_t r = 0; r < b->n; r++) {
        const json_t *v = json_array_get(values, r * b->cols + c);
        size_t at = c * b->n + r;
        b->ind[at] = json_is_null(v) ? STMT_INDICATOR_NULL : STMT_INDICATOR_NONE;
        if (json_is_null(v))
            continue;
        int is_string = json_is_string(v);
        if (!is_string && !json_is_integer(v) && !json_is_boolean(v))
            return -1;
        if (strings >= 0 && strings != is_string)
            return -1;
        strings = is_string;
        if (is_string) {
            b->strs[at] = json_string_value(v);
            b->lens[at] = json_string_length(v);
        } else {
            b->ints[at] = json_is_boolean(v) ? json_is_true(v) : json_integer_value(v);
        }
    }
    bind->buffer_type = strings == 0 ? MYSQL_TYPE_LONGLONG : MYSQL_TYPE_STRING;
    bind->buffer = strings == 0 ? (void *)&b->ints[c * b->n] : (void *)&b->strs[c * b->n];
    bind->length = &b->lens[c * b->n];
    bind->u.indicator = &b->ind[c * b->n];
    return 0;
}

static int bulk_bind(struct bulk *b, size_t cols, size_t n, const json_t *values)
{
    b->cols = cols;
    b->n = n;
    b->bind = calloc(cols, sizeof(*b->bind));
    b->strs = calloc(cols * n, sizeof(*b->strs));
    b->ints = calloc(cols * n, sizeof(*b->ints));
    b->lens = calloc(cols * n, sizeof(*b->lens));
    b->ind = calloc(cols * n, sizeof(*b->ind));
    if (!b->bind || !b->strs || !b->ints || !b->lens || !b->ind)
        return -1;
    for (size_t c = 0; c < cols; c++)
        if (bulk_column(b, c, values) < 0) {
            sbh_error("db", "bulk column %zu mixes value types or holds an object", c);
            return -1;
        }
    return 0;
}

/* One round trip for n rows of stmt (prepared for one row). */
static int stmt_run_bulk(MYSQL *conn, MYSQL_STMT *stmt, const char *sql, size_t n,
                         const json_t *values, unsigned long long *affected)
{
    struct bulk b = {0};
    unsigned int size = (unsigned int)n;
    int rc = SBH_DB_ERROR;
    if (bulk_bind(&b, mysql_stmt_param_count(stmt), n, values) < 0)
        goto out;
    if (mysql_stmt_attr_set(stmt, STMT_ATTR_ARRAY_SIZE, &size) != 0 ||
        mysql_stmt_bind_param(stmt, b.bind) != 0 || mysql_stmt_execute(stmt) != 0) {
        rc = stmt_fail(stmt, conn, sql);
        goto out;
    }
    if (affected)
        *affected = mysql_stmt_affected_rows(stmt);
    rc = SBH_DB_OK;
out:
    /* The statement may be cached: the next user binds one row again. */
    size = 0;
    mysql_stmt_attr_set(stmt, STMT_ATTR_ARRAY_SIZE, &size);
    bulk_free(&b);
    return rc;
}

/* MariaDB 10.2 and later execute an array of parameter rows at once. */
static int bulk_supported(MYSQL *conn)
{
    unsigned long caps = 0;
    if (mariadb_get_infov(conn, MARIADB_CONNECTION_EXTENDED_SERVER_CAPABILITIES, &caps) != 0)
        return 0;
    return (caps & (MARIADB_CLIENT_STMT_BULK_OPERATIONS >> 32)) != 0;
}

/* Without bulk execution (MySQL, old MariaDB): the same statement row by row. */
static int exec_rows_singly(MYSQL *conn, unsigned long long *affected, const char *sql, size_t n,
                            size_t cols, const json_t *values)
{
    int rc = SBH_DB_OK;
    for (size_t r = 0; r < n && rc == SBH_DB_OK; r++) {
        json_t *row = json_array();
        unsigned long long one = 0;
        for (size_t c = 0; c < cols; c++)
            json_array_append(row, json_array_get(values, r * cols + c));
        rc = row ? sbh_db_exec_json(conn, &one, sql, row) : SBH_DB_ERROR;
        if (affected)
            *affected += one;
        json_decref(row);
    }
    return rc;
}

int sbh_db_exec_rows(MYSQL *conn, unsigned long long *affected, const char *sql, size_t n,
                     const json_t *values)
{
    if (affected)
        *affected = 0;
    if (n == 0)
        return SBH_DB_OK;
    int rc = SBH_DB_ERROR;
    MYSQL_STMT *stmt = stmt_get(conn, sql, &rc);
    if (!stmt)
        return rc;
    size_t cols = mysql_stmt_param_count(stmt);
    if (json_array_size(values) != n * cols || n > UINT_MAX) {
        sbh_error("db", "\"%s\": %zu values do not make %zu rows", sql, json_array_size(values), n);
        stmt_put(conn, stmt, 0);
        return SBH_DB_ERROR;
    }
    if (n > 1 && cols > 0 && bulk_supported(conn)) {
        rc = stmt_run_bulk(conn, stmt, sql, n, values, affected);
        stmt_put(conn, stmt, rc != SBH_DB_OK);
        return rc;
    }
    stmt_put(conn, stmt, 0);
    return exec_rows_singly(conn, affected, sql, n, cols, values);
}

/* A transaction around fn: committed when it returns SBH_DB_OK, else rolled back. */
#define TRANSACTION_TRIES 5

int sbh_db_transaction(MYSQL *conn, int (*fn)(MYSQL *conn, void *arg), void *arg)
{
    int rc = SBH_DB_ERROR;
    static const char begin[] = "START TRANSACTION";
    for (int attempt = 0; attempt < TRANSACTION_TRIES; attempt++) {
        /* Autocommit stays on: an explicit transaction costs no round trip to undo. */
        if (mysql_real_query(conn, begin, sizeof(begin) - 1) != 0)
            return stmt_fail(NULL, conn, begin);
        t_last_errno = 0;
        rc = fn(conn, arg);
        if (rc == SBH_DB_OK && mysql_commit(conn) != 0)
            rc = stmt_fail(NULL, conn, "COMMIT");
        if (rc != SBH_DB_OK)
            mysql_rollback(conn);
        /* InnoDB chose this transaction as a deadlock victim: it is safe to redo. */
        if (rc != SBH_DB_ERROR ||
            (t_last_errno != ER_LOCK_DEADLOCK && t_last_errno != ER_LOCK_WAIT_TIMEOUT))
            break;
    }
    return rc;
}

static int is_integer_type(enum enum_field_types t)
{
    return t == MYSQL_TYPE_TINY || t == MYSQL_TYPE_SHORT || t == MYSQL_TYPE_LONG ||
           t == MYSQL_TYPE_INT24 || t == MYSQL_TYPE_LONGLONG || t == MYSQL_TYPE_YEAR;
}

/* Per-column fetch buffers. */
struct columns {
    unsigned n;
    MYSQL_FIELD *fields;
    MYSQL_BIND *bind;
    char **bufs;
    unsigned long *lens;
    my_bool *nulls;
    my_bool *errors;
    long long *ints;
};

static void columns_free(struct columns *c)
{
    for (unsigned i = 0; c->bufs && i < c->n; i++)
        free(c->bufs[i]);
    free(c->bind);
    free(c->bufs);
    free(c->lens);
    free(c->nulls);
    free(c->errors);
    free(c->ints);
}

/* Integers bind as long long, everything else as text sized from the
 * result's max_length (a rare overflow is refetched in column_value). */
static int columns_bind(struct columns *c, MYSQL_RES *meta)
{
    c->n = mysql_num_fields(meta);
    c->fields = mysql_fetch_fields(meta);
    size_t n = c->n ? c->n : 1;
    c->bind = calloc(n, sizeof(*c->bind));
    c->bufs = calloc(n, sizeof(*c->bufs));
    c->lens = calloc(n, sizeof(*c->lens));
    c->nulls = calloc(n, sizeof(*c->nulls));
    c->errors = calloc(n, sizeof(*c->errors));
    c->ints = calloc(n, sizeof(*c->ints));
    if (!c->bind || !c->bufs || !c->lens || !c->nulls || !c->errors || !c->ints)
        return -1;
    for (unsigned i = 0; i < c->n; i++) {
        MYSQL_BIND *b = &c->bind[i];
        b->length = &c->lens[i];
        b->is_null = &c->nulls[i];
        b->error = &c->errors[i];
        if (is_integer_type(c->fields[i].type)) {
            b->buffer_type = MYSQL_TYPE_LONGLONG;
            b->buffer = &c->ints[i];
            b->is_unsigned = (c->fields[i].flags & UNSIGNED_FLAG) != 0;
            continue;
        }
        size_t size = c->fields[i].max_length < 64 ? 64 : c->fields[i].max_length + 1;
        c->bufs[i] = malloc(size);
        if (!c->bufs[i])
            return -1;
        b->buffer_type = MYSQL_TYPE_STRING;
        b->buffer = c->bufs[i];
        b->buffer_length = size;
    }
    return 0;
}

/* Binary columns (charset 63) keep their raw bytes in a jansson string;
 * text that is not UTF-8 is kept the same way rather than dropped. */
static json_t *bytes_value(const char *data, size_t len, const MYSQL_FIELD *f)
{
    json_t *v = f->charsetnr == 63 ? NULL : json_stringn(data, len);
    return v ? v : json_stringn_nocheck(data, len);
}

static json_t *column_value(MYSQL_STMT *stmt, struct columns *c, unsigned i)
{
    if (c->nulls[i])
        return json_null();
    MYSQL_BIND *b = &c->bind[i];
    if (b->buffer_type == MYSQL_TYPE_LONGLONG) {
        if (b->is_unsigned && (unsigned long long)c->ints[i] > (unsigned long long)LLONG_MAX) {
            char text[24];
            snprintf(text, sizeof(text), "%llu", (unsigned long long)c->ints[i]);
            return json_string(text);
        }
        return json_integer(c->ints[i]);
    }
    if (c->lens[i] < b->buffer_length)
        return bytes_value(c->bufs[i], c->lens[i], &c->fields[i]);
    /* Truncated: fetch this column again into a buffer of the full size. */
    unsigned long full = c->lens[i];
    char *big = malloc(full + 1);
    if (!big)
        return NULL;
    MYSQL_BIND one = {.buffer_type = MYSQL_TYPE_STRING, .buffer = big, .buffer_length = full + 1};
    unsigned long got = 0;
    one.length = &got;
    json_t *v = NULL;
    if (mysql_stmt_fetch_column(stmt, &one, i, 0) == 0)
        v = bytes_value(big, got < full ? got : full, &c->fields[i]);
    free(big);
    return v;
}

/* Read an executed statement's rows into a JSON array, then put it back. */
static int fetch_rows(MYSQL *conn, MYSQL_STMT *stmt, const char *sql, json_t **rows)
{
    MYSQL_RES *meta = NULL;
    struct columns c = {0};
    int rc = SBH_DB_ERROR;
    json_t *arr = json_array();
    if (!arr)
        goto out;
    meta = mysql_stmt_result_metadata(stmt);
    if (!meta) {
        /* No result set (an INSERT through sbh_db_query): no rows. */
        rc = mysql_stmt_errno(stmt) ? stmt_fail(stmt, conn, sql) : SBH_DB_OK;
        goto out;
    }
    my_bool update_max = 1;
    mysql_stmt_attr_set(stmt, STMT_ATTR_UPDATE_MAX_LENGTH, &update_max);
    if (mysql_stmt_store_result(stmt) != 0) {
        rc = stmt_fail(stmt, conn, sql);
        goto out;
    }
    if (columns_bind(&c, meta) < 0 || mysql_stmt_bind_result(stmt, c.bind) != 0)
        goto out;
    int f;
    while ((f = mysql_stmt_fetch(stmt)) == 0 || f == MYSQL_DATA_TRUNCATED) {
        json_t *row = json_object();
        if (!row || json_array_append_new(arr, row) < 0)
            goto out;
        for (unsigned i = 0; i < c.n; i++) {
            json_t *v = column_value(stmt, &c, i);
            if (!v || json_object_set_new(row, c.fields[i].name, v) < 0)
                goto out;
        }
    }
    if (f != MYSQL_NO_DATA) {
        rc = stmt_fail(stmt, conn, sql);
        goto out;
    }
    rc = SBH_DB_OK;
out:
    columns_free(&c);
    if (meta)
        mysql_free_result(meta);
    stmt_put(conn, stmt, rc != SBH_DB_OK);
    if (rc == SBH_DB_OK)
        *rows = arr;
    else
        json_decref(arr);
    return rc;
}

int sbh_db_query(MYSQL *conn, json_t **rows, const char *sql, const char *types, ...)
{
    *rows = NULL;
    MYSQL_STMT *stmt = NULL;
    va_list ap;
    va_start(ap, types);
    int rc = stmt_run(conn, &stmt, sql, types ? types : "", ap);
    va_end(ap);
    return rc == SBH_DB_OK ? fetch_rows(conn, stmt, sql, rows) : rc;
}

int sbh_db_query_json(MYSQL *conn, json_t **rows, const char *sql, const json_t *values)
{
    *rows = NULL;
    MYSQL_STMT *stmt = NULL;
    int rc = stmt_run_json(conn, &stmt, sql, values);
    return rc == SBH_DB_OK ? fetch_rows(conn, stmt, sql, rows) : rc;
}

/* ---- the pool ---- */

struct job {
    sbh_db_work_fn work;
    sbh_db_done_fn done;
    void *arg;
    int result;
    int probe; /* the health probe: always tries to connect */
    struct job *next;
};

struct jobq {
    struct job *head, *tail;
};

static void jobq_push(struct jobq *q, struct job *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
}

static struct job *jobq_pop(struct jobq *q)
{
    struct job *j = q->head;
    if (j) {
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
    }
    return j;
}

struct sbh_db {
    struct event_base *base;
    struct sbh_db_params params;

    pthread_mutex_t mu; /* guards everything down to last_why */
    pthread_cond_t cv;
    struct jobq pending;
    struct jobq finished;
    int stopping;
    struct timespec last_fail; /* last failed connect (CLOCK_MONOTONIC) */
    char last_why[256];        /* why the server was last unreachable */

    atomic_int available;
    pthread_t *threads;
    unsigned nthreads;
    int efd;
    struct event *ev_done;
    struct event *ev_probe;

    /* Loop thread only. */
    int probe_inflight;
    int logged_available;
};

static long ms_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* Worker side: record a failed connect for the fail-fast window. */
static void note_unavailable(struct sbh_db *db, const char *why)
{
    pthread_mutex_lock(&db->mu);
    clock_gettime(CLOCK_MONOTONIC, &db->last_fail);
    snprintf(db->last_why, sizeof(db->last_why), "%s", why);
    pthread_mutex_unlock(&db->mu);
    atomic_store(&db->available, 0);
}

/* Worker side: close *conn and forget the statements prepared on it. */
static void worker_close(MYSQL **conn)
{
    stmt_cache_clear(t_cache);
    mysql_close(*conn);
    *conn = NULL;
}

/* Worker side: make sure *conn is usable; 0, or -1 (job gets UNAVAILABLE). */
static int worker_conn(struct sbh_db *db, MYSQL **conn, const time_t *last_used, int probe)
{
    if (*conn && time(NULL) - *last_used >= DB_IDLE_PING_S && mysql_ping(*conn) != 0)
        worker_close(conn);
    if (*conn)
        return 0;
    if (!probe && !atomic_load(&db->available)) {
        pthread_mutex_lock(&db->mu);
        long since = ms_since(&db->last_fail);
        pthread_mutex_unlock(&db->mu);
        if (since < DB_RETRY_MS)
            return -1;
    }
    char why[256];
    *conn = sbh_db_connect(&db->params, why, sizeof(why));
    if (!*conn) {
        note_unavailable(db, why);
        return -1;
    }
    t_cache->conn = *conn;
    return 0;
}

static void worker_run(struct sbh_db *db, struct job *j, MYSQL **conn, time_t *last_used)
{
    if (worker_conn(db, conn, last_used, j->probe) < 0) {
        j->result = SBH_DB_UNAVAILABLE;
        return;
    }
    t_conn_error[0] = '\0';
    j->result = j->work(*conn, j->arg);
    *last_used = time(NULL);
    /* A work function may map a dead connection to its own code; the
     * handle's error number still tells. */
    if (j->result == SBH_DB_UNAVAILABLE ||
        (j->result < 0 && sbh_db_error_is_connection(mysql_errno(*conn)))) {
        char why[256];
        snprintf(why, sizeof(why), "lost the connection: %s",
                 mysql_errno(*conn) ? mysql_error(*conn) : t_conn_error);
        worker_close(conn);
        note_unavailable(db, why);
        return;
    }
    atomic_store(&db->available, 1);
}

static void *worker_main(void *p)
{
    struct sbh_db *db = p;
    MYSQL *conn = NULL;
    time_t last_used = 0;
    struct stmt_cache cache = {0};
    t_cache = &cache;
    mysql_thread_init();
    for (;;) {
        pthread_mutex_lock(&db->mu);
        while (!db->pending.head && !db->stopping)
            pthread_cond_wait(&db->cv, &db->mu);
        struct job *j = jobq_pop(&db->pending);
        pthread_mutex_unlock(&db->mu);
        if (!j)
            break; /* stopping and the queue is drained */
        worker_run(db, j, &conn, &last_used);
        pthread_mutex_lock(&db->mu);
        jobq_push(&db->finished, j);
        pthread_mutex_unlock(&db->mu);
        uint64_t one = 1;
        /* Only fails when the counter would overflow: it is read already. */
        (void)!write(db->efd, &one, sizeof(one));
    }
    if (conn)
        worker_close(&conn);
    t_cache = NULL;
    mysql_thread_end();
    return NULL;
}

static int probe_work(MYSQL *conn, void *arg)
{
    return sbh_db_exec(conn, NULL, "SELECT 1", "");
}

static void probe_arm(struct sbh_db *db)
{
    struct timeval tv = {DB_PROBE_INTERVAL_MS / 1000, (DB_PROBE_INTERVAL_MS % 1000) * 1000};
    if (!db->probe_inflight && !evtimer_pending(db->ev_probe, NULL))
        evtimer_add(db->ev_probe, &tv);
}

/* Loop side: log availability changes once each, and keep probing while
 * the server is away so availability comes back without traffic. */
static void availability_check(struct sbh_db *db)
{
    int now = atomic_load(&db->available);
    if (now != db->logged_available) {
        db->logged_available = now;
        if (now) {
            sbh_info("db", "database available again");
        } else {
            char why[256];
            pthread_mutex_lock(&db->mu);
            snprintf(why, sizeof(why), "%s", db->last_why);
            pthread_mutex_unlock(&db->mu);
            sbh_warn("db", "database unavailable: %s", why);
        }
    }
    if (!now)
        probe_arm(db);
}

static int queue_job(struct sbh_db *db, sbh_db_work_fn work, sbh_db_done_fn done, void *arg,
                     int probe)
{
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return -1;
    *j = (struct job){.work = work, .done = done, .arg = arg, .probe = probe};
    pthread_mutex_lock(&db->mu);
    jobq_push(&db->pending, j);
    pthread_cond_signal(&db->cv);
    pthread_mutex_unlock(&db->mu);
    return 0;
}

static void probe_done(void *arg, int result)
{
    struct sbh_db *db = arg;
    db->probe_inflight = 0;
    availability_check(db);
}

static void on_probe_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_db *db = arg;
    if (atomic_load(&db->available) || db->probe_inflight)
        return;
    if (queue_job(db, probe_work, probe_done, db, 1) == 0)
        db->probe_inflight = 1;
    else
        probe_arm(db);
}

/* Loop side: run done callbacks of finished jobs. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_db *db = arg;
    uint64_t n;
    if (read(db->efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        sbh_warn("db", "reading the completion eventfd: %s", strerror(errno));
    pthread_mutex_lock(&db->mu);
    struct job *list = db->finished.head;
    db->finished = (struct jobq){0};
    pthread_mutex_unlock(&db->mu);
    while (list) {
        struct job *j = list;
        list = j->next;
        if (j->done)
            j->done(j->arg, j->result);
        free(j);
    }
    availability_check(db);
}

static int params_copy(struct sbh_db_params *dst, const struct sbh_db_params *src)
{
    *dst = (struct sbh_db_params){.port = src->port};
    const char *from[] = {src->host, src->socket, src->user, src->password, src->database};
    char **to[] = {&dst->host, &dst->socket, &dst->user, &dst->password, &dst->database};
    for (size_t i = 0; i < sizeof(from) / sizeof(from[0]); i++)
        if (from[i] && !(*to[i] = strdup(from[i])))
            return -1;
    return 0;
}

/* Start the workers with every signal blocked: signals belong to the loop. */
static int start_threads(struct sbh_db *db, unsigned workers)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (; db->nthreads < workers; db->nthreads++)
        if (pthread_create(&db->threads[db->nthreads], NULL, worker_main, db) != 0)
            break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return db->nthreads == workers ? 0 : -1;
}

struct sbh_db *sbh_db_new(struct event_base *base, const struct sbh_db_params *params,
                          unsigned workers)
{
    if (lib_init() != 0) {
        sbh_error("db", "cannot initialise the MariaDB client library");
        return NULL;
    }
    if (!workers)
        workers = 1;
    struct sbh_db *db = calloc(1, sizeof(*db));
    if (!db)
        return NULL;
    db->base = base;
    db->efd = -1;
    pthread_mutex_init(&db->mu, NULL);
    pthread_cond_init(&db->cv, NULL);
    /* Optimistic until told otherwise: the caller has normally just
     * connected to run migrations. The first probe below confirms it. */
    atomic_init(&db->available, 1);
    db->logged_available = 1;
    if (params_copy(&db->params, params) < 0)
        goto fail;
    db->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    db->threads = calloc(workers, sizeof(*db->threads));
    if (db->efd < 0 || !db->threads)
        goto fail;
    db->ev_done = event_new(base, db->efd, EV_READ | EV_PERSIST, on_done, db);
    db->ev_probe = evtimer_new(base, on_probe_timer, db);
    if (!db->ev_done || !db->ev_probe || event_add(db->ev_done, NULL) < 0)
        goto fail;
    if (start_threads(db, workers) < 0)
        goto fail;
    if (queue_job(db, probe_work, probe_done, db, 1) == 0)
        db->probe_inflight = 1;
    return db;
fail:
    sbh_error("db", "cannot start the database pool: %s", strerror(errno));
    sbh_db_free(db);
    return NULL;
}

int sbh_db_submit(struct sbh_db *db, sbh_db_work_fn work, sbh_db_done_fn done, void *arg)
{
    if (!db || !work)
        return -1;
    pthread_mutex_lock(&db->mu);
    int stopping = db->stopping;
    pthread_mutex_unlock(&db->mu);
    if (stopping)
        return -1;
    return queue_job(db, work, done, arg, 0);
}

int sbh_db_available(const struct sbh_db *db)
{
    return db && atomic_load(&((struct sbh_db *)db)->available);
}

void sbh_db_free(struct sbh_db *db)
{
    if (!db)
        return;
    pthread_mutex_lock(&db->mu);
    db->stopping = 1;
    pthread_cond_broadcast(&db->cv);
    pthread_mutex_unlock(&db->mu);
    for (unsigned i = 0; i < db->nthreads; i++)
        pthread_join(db->threads[i], NULL);
    /* Workers finished every queued job; their done callbacks are dropped. */
    struct job *j;
    while ((j = jobq_pop(&db->finished)))
        free(j);
    while ((j = jobq_pop(&db->pending)))
        free(j);
    if (db->ev_done)
        event_free(db->ev_done);
    if (db->ev_probe)
        event_free(db->ev_probe);
    if (db->efd >= 0)
        close(db->efd);
    free(db->threads);
    sbh_db_params_clear(&db->params);
    pthread_cond_destroy(&db->cv);
    pthread_mutex_destroy(&db->mu);
    free(db);
}
