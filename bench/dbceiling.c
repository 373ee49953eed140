/*
 * The storage ceiling: what the database alone takes per second on this
 * machine, written in the shape switchboardd writes it, with no HTTP, no
 * JSON and no daemon in the way. A benchmark, not a test: prints figures.
 *
 *   dbceiling SOCKET DATABASE MODE SECONDS CONNECTIONS BATCH
 *
 * MODE inbound: per webhook one webhook_events row and one messages row
 * ('in'), a batch per transaction (bulk INSERTs), as host/inbound.c does.
 * MODE sends: per message the accept (messages + outbox rows) in one
 * transaction and its result (UPDATE messages, DELETE outbox) in another,
 * as host/outbox.c does. MODE sends-joined: the same rows in one
 * transaction per batch (what merging a batch's results into the next
 * batch's accept transaction could save at best). CONNECTIONS threads each run transactions back to
 * back, durable (the server's own flush settings), for SECONDS.
 * Prints one line: "<items>/s <mean transaction ms> <items per transaction>".
 */
#include <mysql.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct worker {
    pthread_t thread;
    const char *socket, *database, *mode;
    double seconds;
    unsigned batch, index;
    unsigned long long items, txns;
    double txn_seconds;
    int failed;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Column-wise string arrays for one bulk statement. */
struct cols {
    unsigned n, rows;
    char **v;           /* n * rows strings, column after column */
    unsigned long *len; /* their lengths */
    MYSQL_BIND *bind;
};

static void cols_init(struct cols *c, unsigned n, unsigned rows)
{
    c->n = n;
    c->rows = rows;
    c->v = calloc((size_t)n * rows, sizeof(*c->v));
    c->len = calloc((size_t)n * rows, sizeof(*c->len));
    c->bind = calloc(n, sizeof(*c->bind));
    for (unsigned i = 0; i < n; i++) {
        c->bind[i].buffer_type = MYSQL_TYPE_STRING;
        c->bind[i].buffer = &c->v[(size_t)i * rows];
        c->bind[i].length = &c->len[(size_t)i * rows];
    }
}

static void cols_set(struct cols *c, unsigned col, unsigned row, char *s)
{
    size_t at = (size_t)col * c->rows + row;
    free(c->v[at]);
    c->v[at] = s;
    c->len[at] = (unsigned long)strlen(s);
}

static void cols_free(struct cols *c)
{
    for (size_t i = 0; i < (size_t)c->n * c->rows; i++)
        free(c->v[i]);
    free(c->v);
    free(c->len);
    free(c->bind);
}

static char *fmt(const char *f, unsigned a, unsigned long long b)
{
    char *s = malloc(700);
    snprintf(s, 700, f, a, b);
    return s;
}

static int bulk(MYSQL_STMT *st, struct cols *c)
{
    unsigned size = c->rows;
    return mysql_stmt_attr_set(st, STMT_ATTR_ARRAY_SIZE, &size) ||
           mysql_stmt_bind_param(st, c->bind) || mysql_stmt_execute(st);
}

static MYSQL_STMT *prepare(MYSQL *m, const char *sql)
{
    MYSQL_STMT *st = mysql_stmt_init(m);
    if (st && mysql_stmt_prepare(st, sql, strlen(sql)) == 0)
        return st;
    fprintf(stderr, "dbceiling: %s: %s\n", sql, st ? mysql_stmt_error(st) : mysql_error(m));
    return NULL;
}

/* A Slack-like envelope (about 600 bytes) and message body, as the bench's webhooks. */
#define ENVELOPE                                                                                   \
    "{\"id\":\"evt_%08x%016llx\",\"type\":\"message.received\",\"provider\":\"slackish\","       \
    "\"instance\":\"in_ceiling\",\"created_at\":\"2026-11-26T18:00:00.000000Z\",\"data\":{"     \
    "\"event_id\":\"Ev%08x%016llx\",\"from\":\"U0123456789\",\"chat\":\"C0123456789\",\"text\":" \
    "\"hello from the storage ceiling bench, a message of ordinary length\",\"message_id\":"    \
    "\"1700000000.000100\",\"thread\":null,\"raw\":{\"type\":\"message\",\"channel\":"          \
    "\"C0123456789\",\"user\":\"U0123456789\",\"team\":\"T0123456789\",\"ts\":"                 \
    "\"1700000000.000100\"}}}"

static int run_inbound(MYSQL *m, struct worker *w, unsigned long long seq)
{
    static const char *ev_sql = "INSERT INTO webhook_events (instance_id, provider, "
                                "provider_event_id, payload, received_at) VALUES (?, ?, ?, ?, "
                                "UTC_TIMESTAMP(6))";
    static const char *msg_sql = "INSERT INTO messages (id, instance_id, direction, state, sender, "
                                 "body, provider_message_id, created_at, updated_at) VALUES (?, ?, "
                                 "'in', 'received', ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))";
    MYSQL_STMT *ev = prepare(m, ev_sql), *msg = prepare(m, msg_sql);
    struct cols e, g;
    cols_init(&e, 4, w->batch);
    cols_init(&g, 5, w->batch);
    double end = now() + w->seconds;
    int rc = !ev || !msg;
    while (!rc && now() < end) {
        for (unsigned r = 0; r < w->batch; r++, seq++) {
            cols_set(&e, 0, r, fmt("in_ceiling", 0, 0));
            cols_set(&e, 1, r, fmt("slackish", 0, 0));
            cols_set(&e, 2, r, fmt("Ev%08x%016llx", w->index, seq));
            char *env = malloc(700);
            snprintf(env, 700, ENVELOPE, w->index, seq, w->index, seq);
            cols_set(&e, 3, r, env);
            cols_set(&g, 0, r, fmt("msg_%08x%016llx", w->index, seq));
            cols_set(&g, 1, r, fmt("in_ceiling", 0, 0));
            cols_set(&g, 2, r, fmt("U0123456789", 0, 0));
            cols_set(&g, 3, r, fmt("{\"text\":\"hello from the storage ceiling bench\"}", 0, 0));
            cols_set(&g, 4, r, fmt("1700000000.%06x%llx", w->index, seq));
        }
        double t0 = now();
        rc = mysql_query(m, "START TRANSACTION") || bulk(ev, &e) || bulk(msg, &g) ||
             mysql_commit(m);
        w->txn_seconds += now() - t0;
        w->txns++;
        w->items += w->batch;
    }
    if (rc)
        fprintf(stderr, "dbceiling: %s\n", ev && mysql_stmt_errno(ev) ? mysql_stmt_error(ev)
                                           : msg && mysql_stmt_errno(msg) ? mysql_stmt_error(msg)
                                                                           : mysql_error(m));
    cols_free(&e);
    cols_free(&g);
    if (ev)
        mysql_stmt_close(ev);
    if (msg)
        mysql_stmt_close(msg);
    return rc;
}

/* One transaction per batch: this batch's accepts with the last batch's results. */
static int run_sends(MYSQL *m, struct worker *w, unsigned long long seq, int joined)
{
    MYSQL_STMT *mi = prepare(m, "INSERT INTO messages (id, instance_id, direction, state, "
                                "recipient, body, degraded, idempotency_key, created_at, "
                                "updated_at) VALUES (?, ?, 'out', 'queued', ?, ?, NULL, NULL, "
                                "UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))");
    MYSQL_STMT *oi = prepare(m, "INSERT INTO outbox (message_id, instance_id, due_at) VALUES (?, "
                                "?, UTC_TIMESTAMP(6))");
    MYSQL_STMT *mu = prepare(m, "UPDATE messages SET state = ?, provider_message_id = ?, attempts "
                                "= ?, last_error = NULL, updated_at = UTC_TIMESTAMP(6) WHERE id = ?");
    MYSQL_STMT *od = prepare(m, "DELETE FROM outbox WHERE message_id = ?");
    struct cols a, o, u, d;
    cols_init(&a, 4, w->batch);
    cols_init(&o, 2, w->batch);
    cols_init(&u, 4, w->batch);
    cols_init(&d, 1, w->batch);
    double end = now() + w->seconds;
    int rc = !mi || !oi || !mu || !od;
    while (!rc && now() < end) {
        for (unsigned r = 0; r < w->batch; r++, seq++) {
            char *id = fmt("msg_%08x%016llx", w->index, seq);
            cols_set(&a, 0, r, strdup(id));
            cols_set(&a, 1, r, fmt("in_ceiling", 0, 0));
            cols_set(&a, 2, r, fmt("C0123456789", 0, 0));
            cols_set(&a, 3, r, fmt("{\"to\":\"C0123456789\",\"text\":\"bench %u %llu\"}", w->index, seq));
            cols_set(&o, 0, r, strdup(id));
            cols_set(&o, 1, r, fmt("in_ceiling", 0, 0));
            cols_set(&u, 0, r, fmt("sent", 0, 0));
            cols_set(&u, 1, r, fmt("1700000000.%06x%llx", w->index, seq));
            cols_set(&u, 2, r, fmt("1", 0, 0));
            cols_set(&u, 3, r, strdup(id));
            cols_set(&d, 0, r, id);
        }
        double t0 = now();
        if (joined) /* the results are this batch's own: the same rows, the same work */
            rc = mysql_query(m, "START TRANSACTION") || bulk(mi, &a) || bulk(oi, &o) ||
                 bulk(mu, &u) || bulk(od, &d) || mysql_commit(m);
        else
            rc = mysql_query(m, "START TRANSACTION") || bulk(mi, &a) || bulk(oi, &o) ||
                 mysql_commit(m) || mysql_query(m, "START TRANSACTION") || bulk(mu, &u) ||
                 bulk(od, &d) || mysql_commit(m);
        w->txn_seconds += now() - t0;
        w->txns += joined ? 1 : 2;
        w->items += w->batch;
    }
    if (rc)
        fprintf(stderr, "dbceiling: %s\n", mysql_error(m));
    cols_free(&a);
    cols_free(&o);
    cols_free(&u);
    cols_free(&d);
    MYSQL_STMT *all[] = {mi, oi, mu, od};
    for (int i = 0; i < 4; i++)
        if (all[i])
            mysql_stmt_close(all[i]);
    return rc;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    MYSQL *m = mysql_init(NULL);
    if (!mysql_real_connect(m, NULL, "root", NULL, w->database, 0, w->socket, 0)) {
        fprintf(stderr, "dbceiling: %s\n", mysql_error(m));
        w->failed = 1;
        mysql_close(m);
        return NULL;
    }
    /* Far apart per run and worker, so reruns never collide on a key. */
    unsigned long long seq = ((unsigned long long)time(NULL) << 24);
    if (!strcmp(w->mode, "inbound"))
        w->failed = run_inbound(m, w, seq);
    else
        w->failed = run_sends(m, w, seq, !strcmp(w->mode, "sends-joined"));
    mysql_close(m);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: dbceiling SOCKET DATABASE inbound|sends|sends-joined SECONDS CONNECTIONS "
                        "BATCH\n");
        return 2;
    }
    unsigned conns = (unsigned)atoi(argv[5]), batch = (unsigned)atoi(argv[6]);
    if (conns < 1 || conns > 64 || batch < 1 || batch > 10000) {
        fprintf(stderr, "dbceiling: 1..64 connections, 1..10000 per batch\n");
        return 2;
    }
    mysql_library_init(0, NULL, NULL);
    struct worker *w = calloc(conns, sizeof(*w));
    double t0 = now();
    for (unsigned i = 0; i < conns; i++) {
        w[i] = (struct worker){.socket = argv[1], .database = argv[2], .mode = argv[3],
                               .seconds = atof(argv[4]), .batch = batch, .index = i};
        pthread_create(&w[i].thread, NULL, worker_main, &w[i]);
    }
    unsigned long long items = 0, txns = 0;
    double txn_s = 0;
    int failed = 0;
    for (unsigned i = 0; i < conns; i++) {
        pthread_join(w[i].thread, NULL);
        items += w[i].items;
        txns += w[i].txns;
        txn_s += w[i].txn_seconds;
        failed |= w[i].failed;
    }
    double secs = now() - t0;
    printf("%.0f %.2f %.1f\n", (double)items / secs, txns ? txn_s / (double)txns * 1000 : 0,
           txns ? (double)items / (double)txns : 0);
    free(w);
    mysql_library_end();
    return failed;
}
