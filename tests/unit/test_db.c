/*
 * Unit tests of host/db.c, host/migrate.c and host/mariadb.c.
 *
 * Suite "url" needs nothing. Suite "server" runs when SB_MARIADB_SOCKET names
 * the socket of a MariaDB server where root has no password (tests/db/
 * test_db.sh starts a private one); it works in databases sbtest_<pid>*,
 * created here and dropped at the end. Suite "embedded" runs with
 * SB_TEST_EMBEDDED=1 and starts sbh_mariadb servers in temp state dirs.
 * Migrations come from $SB_TOP_BUILDDIR/build/migrations (published by the
 * top-level `make`).
 */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "runner.h"
#include <event2/event.h>
#include <jansson.h>

#include "db.h"
#include "mariadb.h"
#include "migrate.h"

/* ---- helpers ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void rm_rf(const char *dir)
{
    if (dir && dir[0])
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    CU_ASSERT_EQUAL_FATAL(fclose(f), 0);
}

/* ---- suite url ---- */

static void test_url_tcp(void)
{
    struct sbh_db_params p;
    char why[256];
    CU_ASSERT_EQUAL_FATAL(
        sbh_db_url_parse("mysql://bob:s3cret@db.example:3307/app", &p, why, sizeof(why)), 0);
    CU_ASSERT_STRING_EQUAL(p.host, "db.example");
    CU_ASSERT_EQUAL(p.port, 3307);
    CU_ASSERT_PTR_NULL(p.socket);
    CU_ASSERT_STRING_EQUAL(p.user, "bob");
    CU_ASSERT_STRING_EQUAL(p.password, "s3cret");
    CU_ASSERT_STRING_EQUAL(p.database, "app");
    sbh_db_params_clear(&p);
    CU_ASSERT_PTR_NULL(p.host);

    /* Default port, no password, IPv6 literal. */
    CU_ASSERT_EQUAL_FATAL(sbh_db_url_parse("mysql://bob@[::1]/app", &p, why, sizeof(why)), 0);
    CU_ASSERT_STRING_EQUAL(p.host, "::1");
    CU_ASSERT_EQUAL(p.port, 3306);
    CU_ASSERT_PTR_NULL(p.password);
    sbh_db_params_clear(&p);
    CU_ASSERT_EQUAL_FATAL(sbh_db_url_parse("mariadb://bob:@[::1]:3310/app", &p, why, sizeof(why)),
                          0);
    CU_ASSERT_EQUAL(p.port, 3310);
    CU_ASSERT_STRING_EQUAL(p.password, "");
    sbh_db_params_clear(&p);
}

static void test_url_socket(void)
{
    struct sbh_db_params p;
    char why[256];
    CU_ASSERT_EQUAL_FATAL(
        sbh_db_url_parse("mysql://sb:pw@localhost/switchboard?socket=/run/mysqld/mysqld.sock", &p,
                         why, sizeof(why)),
        0);
    CU_ASSERT_PTR_NULL(p.host); /* localhost + socket: the socket */
    CU_ASSERT_EQUAL(p.port, 0);
    CU_ASSERT_STRING_EQUAL(p.socket, "/run/mysqld/mysqld.sock");
    CU_ASSERT_STRING_EQUAL(p.database, "switchboard");
    sbh_db_params_clear(&p);

    CU_ASSERT_EQUAL_FATAL(
        sbh_db_url_parse("mysql://sb@/db?socket=%2Ftmp%2Fa%20b.sock", &p, why, sizeof(why)), 0);
    CU_ASSERT_PTR_NULL(p.host);
    CU_ASSERT_STRING_EQUAL(p.user, "sb");
    CU_ASSERT_PTR_NULL(p.password);
    CU_ASSERT_STRING_EQUAL(p.socket, "/tmp/a b.sock");
    sbh_db_params_clear(&p);
}

static void test_url_percent(void)
{
    struct sbh_db_params p;
    char why[256];
    /* Reserved characters in user and password, an unescaped '@' in the
     * password (the last '@' ends the user info) and a literal '+'. */
    CU_ASSERT_EQUAL_FATAL(
        sbh_db_url_parse("mysql://a%40b%3Ac:p%2F%3A%40%25x@y+z@h/d%2Dx", &p, why, sizeof(why)), 0);
    CU_ASSERT_STRING_EQUAL(p.user, "a@b:c");
    CU_ASSERT_STRING_EQUAL(p.password, "p/:@%x@y+z");
    CU_ASSERT_STRING_EQUAL(p.host, "h");
    CU_ASSERT_STRING_EQUAL(p.database, "d-x");
    sbh_db_params_clear(&p);
    CU_ASSERT_EQUAL_FATAL(sbh_db_url_parse("mysql://u:%F0%9F%94%91@h/d", &p, why, sizeof(why)), 0);
    CU_ASSERT_STRING_EQUAL(p.password, "\xF0\x9F\x94\x91");
    sbh_db_params_clear(&p);
}

static void test_url_errors(void)
{
    static const char *bad[] = {
        "",
        "postgres://u:p@h/d",
        "mysql://u:p@h",     /* no database */
        "mysql://u:p@h/",    /* empty database */
        "mysql://u:p@h:0/d", /* bad port */
        "mysql://u:p@h:65536/d",
        "mysql://u:p@h:12a/d",
        "mysql://u:p@h:/d",
        "mysql://u:p%zzword@h/d",   /* bad escape */
        "mysql://u:p%4@h/d",        /* truncated escape */
        "mysql://u:p%00@h/d",       /* NUL */
        "mysql://u:p@/d",           /* no host, no socket */
        "mysql://:p@h/d",           /* no user */
        "mysql://h/d",              /* no user at all */
        "mysql://u@h/d?sslmode=on", /* unknown parameter */
        "mysql://u@otherhost/d?socket=/x.sock",
        "mysql://u@/d?socket=",
        "mysql://u@[::1/d",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sbh_db_params p = {.host = NULL};
        char why[256] = "";
        int rc = sbh_db_url_parse(bad[i], &p, why, sizeof(why));
        if (rc != -1)
            fprintf(stderr, "accepted: %s\n", bad[i]);
        CU_ASSERT_EQUAL(rc, -1);
        CU_ASSERT(why[0] != '\0');
        CU_ASSERT_PTR_NULL(p.user); /* cleared on failure */
        CU_ASSERT_PTR_NULL(strstr(why, "zzword"));
    }
    /* The password never shows up in why. */
    struct sbh_db_params p;
    char why[256];
    CU_ASSERT_EQUAL(sbh_db_url_parse("mysql://u:hunter2@h:99999/d", &p, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NULL(strstr(why, "hunter2"));
}

static void test_error_is_connection(void)
{
    CU_ASSERT_EQUAL(sbh_db_error_is_connection(2006), 1); /* CR_SERVER_GONE_ERROR */
    CU_ASSERT_EQUAL(sbh_db_error_is_connection(2013), 1); /* CR_SERVER_LOST */
    CU_ASSERT_EQUAL(sbh_db_error_is_connection(2002), 1); /* CR_CONNECTION_ERROR */
    CU_ASSERT_EQUAL(sbh_db_error_is_connection(1927), 1); /* ER_CONNECTION_KILLED */
    CU_ASSERT_EQUAL(sbh_db_error_is_connection(1062), 0); /* ER_DUP_ENTRY */
    CU_ASSERT_EQUAL(sbh_db_error_is_connection(1064), 0); /* syntax */
    CU_ASSERT_EQUAL(sbh_db_error_is_connection(0), 0);
}

/* ---- suite server ---- */

static struct sbh_db_params g_params; /* to the test's database */
static char g_db[64];                 /* sbtest_<pid> */
static pthread_t g_main;

/* A connection to the server with no default database. */
static MYSQL *connect_root(const char *database)
{
    struct sbh_db_params p = {
        .socket = getenv("SB_MARIADB_SOCKET"), .user = "root", .database = (char *)database};
    char why[256];
    MYSQL *c = sbh_db_connect(&p, why, sizeof(why));
    if (!c)
        fprintf(stderr, "%s\n", why);
    return c;
}

static int sql(MYSQL *c, const char *text)
{
    if (mysql_query(c, text) != 0) {
        fprintf(stderr, "%s: %s\n", text, mysql_error(c));
        return -1;
    }
    MYSQL_RES *r = mysql_store_result(c);
    if (r)
        mysql_free_result(r);
    return 0;
}

static void drop_databases(MYSQL *c)
{
    const char *suffixes[] = {"", "_m", "_c", "_t"};
    char q[128];
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(q, sizeof(q), "DROP DATABASE IF EXISTS %s%s", g_db, suffixes[i]);
        sql(c, q);
    }
}

static int server_setup(void)
{
    g_main = pthread_self();
    snprintf(g_db, sizeof(g_db), "sbtest_%ld", (long)getpid());
    MYSQL *c = connect_root(NULL);
    if (!c)
        return -1;
    drop_databases(c);
    const char *suffixes[] = {"", "_m", "_c", "_t"};
    char q[128];
    int rc = 0;
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(q, sizeof(q), "CREATE DATABASE %s%s CHARACTER SET utf8mb4", g_db, suffixes[i]);
        rc |= sql(c, q);
    }
    mysql_close(c);
    g_params = (struct sbh_db_params){
        .socket = getenv("SB_MARIADB_SOCKET"), .user = "root", .database = g_db};
    return rc;
}

static int server_teardown(void)
{
    MYSQL *c = connect_root(NULL);
    if (!c)
        return -1;
    drop_databases(c);
    mysql_close(c);
    return 0;
}

static MYSQL *connect_db(const char *suffix)
{
    char name[80];
    snprintf(name, sizeof(name), "%s%s", g_db, suffix);
    return connect_root(name);
}

static void test_exec_query_roundtrip(void)
{
    MYSQL *c = connect_db("");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL_FATAL(
        sql(c, "CREATE TABLE rt (id INT AUTO_INCREMENT PRIMARY KEY, s VARCHAR(100) NULL,"
               " n BIGINT NULL, b BLOB NULL, big LONGBLOB NULL, u BIGINT UNSIGNED NULL,"
               " j JSON NULL, t DATETIME(6) NULL, d DECIMAL(10,2) NULL, k VARCHAR(20) UNIQUE)"),
        0);
    const unsigned char bin[] = {0x00, 0xff, 0x80, 'a', 0x00, '\n', 0xfe};
    size_t big_len = 300000;
    char *big = malloc(big_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)(i * 7);
    unsigned long long affected = 0;
    CU_ASSERT_EQUAL(sbh_db_exec(c, &affected,
                                "INSERT INTO rt (s, n, b, big, j, t, d, k) VALUES "
                                "(?, ?, ?, ?, ?, '2024-05-06 07:08:09.123456', 12.5, ?)",
                                "sibbss", "h\xC3\xA9llo \xF0\x9F\x98\x80", -9223372036854775807LL,
                                (const void *)bin, sizeof(bin), (const void *)big, big_len,
                                "{\"a\": [1, 2]}", "one"),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL(affected, 1);
    /* NULL through every kind of parameter. */
    CU_ASSERT_EQUAL(sbh_db_exec(c, &affected, "INSERT INTO rt (s, b, k) VALUES (?, ?, ?)", "sbs",
                                (const char *)NULL, (const void *)NULL, (size_t)0, "two"),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL(
        sbh_db_exec(c, NULL, "UPDATE rt SET u = 18446744073709551615 WHERE k = ?", "s", "two"),
        SBH_DB_OK);

    json_t *rows = NULL;
    CU_ASSERT_EQUAL_FATAL(sbh_db_query(c, &rows,
                                       "SELECT * FROM rt WHERE n = ? OR k = ? ORDER BY id", "is",
                                       -9223372036854775807LL, "two"),
                          SBH_DB_OK);
    CU_ASSERT_EQUAL_FATAL(json_array_size(rows), 2);
    json_t *r0 = json_array_get(rows, 0), *r1 = json_array_get(rows, 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "s")),
                           "h\xC3\xA9llo \xF0\x9F\x98\x80");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r0, "n")), -9223372036854775807LL);
    json_t *b = json_object_get(r0, "b");
    CU_ASSERT_EQUAL_FATAL(json_string_length(b), sizeof(bin));
    CU_ASSERT_EQUAL(memcmp(json_string_value(b), bin, sizeof(bin)), 0);
    json_t *bg = json_object_get(r0, "big");
    CU_ASSERT_EQUAL_FATAL(json_string_length(bg), big_len);
    CU_ASSERT_EQUAL(memcmp(json_string_value(bg), big, big_len), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "j")), "{\"a\": [1, 2]}");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "t")),
                           "2024-05-06 07:08:09.123456");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "d")), "12.50");
    CU_ASSERT(json_is_integer(json_object_get(r0, "id")));
    CU_ASSERT(json_is_null(json_object_get(r0, "u")));
    CU_ASSERT(json_is_null(json_object_get(r1, "s")));
    CU_ASSERT(json_is_null(json_object_get(r1, "b")));
    CU_ASSERT(json_is_null(json_object_get(r1, "n")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r1, "u")), "18446744073709551615");
    json_decref(rows);

    /* No rows; a statement without a result set; affected counts. */
    CU_ASSERT_EQUAL(sbh_db_query(c, &rows, "SELECT id FROM rt WHERE k = ?", "s", "none"),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL(json_array_size(rows), 0);
    json_decref(rows);
    CU_ASSERT_EQUAL(sbh_db_exec(c, &affected, "UPDATE rt SET n = ? WHERE k IN (?, ?)", "iss", 5LL,
                                "one", "two"),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL(affected, 2);
    /* A parameter is data, never SQL. */
    CU_ASSERT_EQUAL(
        sbh_db_query(c, &rows, "SELECT COUNT(*) AS n FROM rt WHERE k = ?", "s", "x' OR '1'='1"),
        SBH_DB_OK);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(rows, 0), "n")), 0);
    json_decref(rows);
    free(big);
    mysql_close(c);
}

/* Rows for bulk: [k, s, n, b] x n, with nulls, binary and multibyte text. */
static json_t *bulk_values(const char *prefix, size_t n)
{
    json_t *v = json_array();
    for (size_t i = 0; i < n; i++) {
        char k[32];
        snprintf(k, sizeof(k), "%s%zu", prefix, i);
        json_array_append_new(v, json_string(k));
        json_array_append_new(v, i % 3 ? json_string("h\xC3\xA9 \xF0\x9F\x98\x80") : json_null());
        json_array_append_new(v, i % 4 ? json_integer((json_int_t)i * 1000000007LL) : json_null());
        json_array_append_new(v, json_stringn("a\0b", 3));
    }
    return v;
}

/* Count of rows whose values are what bulk_values(prefix, n) put there. */
static long long bulk_matches(MYSQL *c, const char *prefix, size_t n)
{
    json_t *rows = NULL;
    long long good = 0;
    char like[40];
    snprintf(like, sizeof(like), "%s%%", prefix);
    if (sbh_db_query(c, &rows, "SELECT k, s, n, b FROM bk WHERE k LIKE ? ORDER BY id", "s", like) !=
        SBH_DB_OK)
        return -1;
    for (size_t i = 0; i < json_array_size(rows) && i < n; i++) {
        json_t *r = json_array_get(rows, i), *s = json_object_get(r, "s"),
               *num = json_object_get(r, "n"), *b = json_object_get(r, "b");
        char k[32];
        snprintf(k, sizeof(k), "%s%zu", prefix, i);
        int ok = !strcmp(json_string_value(json_object_get(r, "k")), k);
        ok &= i % 3
                  ? json_is_string(s) && !strcmp(json_string_value(s), "h\xC3\xA9 \xF0\x9F\x98\x80")
                  : json_is_null(s);
        ok &= i % 4 ? json_integer_value(num) == (json_int_t)i * 1000000007LL : json_is_null(num);
        ok &= json_string_length(b) == 3 && !memcmp(json_string_value(b), "a\0b", 3);
        good += ok;
    }
    json_decref(rows);
    return good;
}

#define BK_INSERT "INSERT INTO bk (k, s, n, b) VALUES (?, ?, ?, ?)"

static void test_exec_rows(void)
{
    MYSQL *c = connect_db("");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL_FATAL(sql(c, "CREATE TABLE bk (id INT AUTO_INCREMENT PRIMARY KEY, "
                                 "k VARCHAR(40) NOT NULL UNIQUE, s VARCHAR(40) NULL, "
                                 "n BIGINT NULL, b BLOB NULL)"),
                          0);
    unsigned long long affected = 0;
    json_t *v = bulk_values("a", 300);
    CU_ASSERT_EQUAL(sbh_db_exec_rows(c, &affected, BK_INSERT, 300, v), SBH_DB_OK);
    CU_ASSERT_EQUAL(affected, 300);
    CU_ASSERT_EQUAL(bulk_matches(c, "a", 300), 300);
    json_decref(v);

    /* One row, and none. */
    v = bulk_values("one", 1);
    CU_ASSERT_EQUAL(sbh_db_exec_rows(c, &affected, BK_INSERT, 1, v), SBH_DB_OK);
    CU_ASSERT_EQUAL(affected, 1);
    CU_ASSERT_EQUAL(sbh_db_exec_rows(c, &affected, BK_INSERT, 0, v), SBH_DB_OK);
    CU_ASSERT_EQUAL(affected, 0);
    json_decref(v);

    /* UPDATE and DELETE per row; affected is the sum. */
    json_t *u = json_pack("[i, s, i, s, i, s]", 1, "a1", 2, "a2", 3, "nobody");
    CU_ASSERT_EQUAL(sbh_db_exec_rows(c, &affected, "UPDATE bk SET n = ? WHERE k = ?", 3, u),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL(affected, 2);
    json_decref(u);
    u = json_pack("[s, s]", "a5", "a6");
    CU_ASSERT_EQUAL(sbh_db_exec_rows(c, &affected, "DELETE FROM bk WHERE k = ?", 2, u), SBH_DB_OK);
    CU_ASSERT_EQUAL(affected, 2);
    json_decref(u);

    /* A duplicate in the middle: a conflict, and in a transaction nothing stays. */
    json_t *dup = json_pack("[s, n, n, n, s, n, n, n, s, n, n, n]", "dup0", "a7", "dup2");
    CU_ASSERT_EQUAL(sql(c, "START TRANSACTION"), 0);
    CU_ASSERT_EQUAL(sbh_db_exec_rows(c, NULL, BK_INSERT, 3, dup), SBH_DB_CONFLICT);
    CU_ASSERT_EQUAL(sql(c, "ROLLBACK"), 0);
    json_t *rows = NULL;
    CU_ASSERT_EQUAL(sbh_db_query(c, &rows, "SELECT COUNT(*) AS n FROM bk WHERE k LIKE 'dup%'", ""),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(rows, 0), "n")), 0);
    json_decref(rows);

    /* Wrong shapes are refused before the server sees them. */
    CU_ASSERT_EQUAL(sbh_db_exec_rows(c, NULL, BK_INSERT, 4, dup), SBH_DB_ERROR);
    json_t *mixed = json_pack("[s, n, i, n, s, n, s, n]", "m0", 5, "m1", "five");
    CU_ASSERT_EQUAL(sbh_db_exec_rows(c, NULL, BK_INSERT, 2, mixed), SBH_DB_ERROR);
    json_decref(mixed);
    json_decref(dup);
    mysql_close(c);
}

static void test_exec_errors(void)
{
    MYSQL *c = connect_db("");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL_FATAL(sql(c, "CREATE TABLE dup (k VARCHAR(20) PRIMARY KEY)"), 0);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, "INSERT INTO dup VALUES (?)", "s", "a"), SBH_DB_OK);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, "INSERT INTO dup VALUES (?)", "s", "a"), SBH_DB_CONFLICT);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, "INSERT INTO dup VALUES (?)", ""), SBH_DB_ERROR);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, "INSERT INTO dup VALUES (?)", "ss", "a", "b"),
                    SBH_DB_ERROR);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, "INSERT INTO dup VALUES (?)", "x", "a"), SBH_DB_ERROR);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, "SELEKT 1", ""), SBH_DB_ERROR);
    json_t *rows = (json_t *)1;
    CU_ASSERT_EQUAL(sbh_db_query(c, &rows, "SELECT * FROM nosuchtable", ""), SBH_DB_ERROR);
    CU_ASSERT_PTR_NULL(rows);
    /* The connection still works after all that. */
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, "SELECT 1", ""), SBH_DB_OK);
    mysql_close(c);
}

/* ---- pool ---- */

struct pool_run {
    struct event_base *base;
    int want, done, ok, unavailable, other;
    int wrong_thread, work_on_main;
    int timed_out;
};

static struct pool_run g_run;

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    g_run.timed_out = 1;
    event_base_loopexit(g_run.base, NULL);
}

/* Run the loop until g_run.want done callbacks came, or seconds passed. */
static void run_loop(int seconds)
{
    struct event *t = evtimer_new(g_run.base, on_timeout, NULL);
    struct timeval tv = {seconds, 0};
    evtimer_add(t, &tv);
    if (g_run.done < g_run.want)
        event_base_dispatch(g_run.base);
    event_free(t);
}

static void count_done(void *arg, int result)
{
    if (!pthread_equal(pthread_self(), g_main))
        g_run.wrong_thread++;
    g_run.done++;
    if (result == SBH_DB_OK)
        g_run.ok++;
    else if (result == SBH_DB_UNAVAILABLE)
        g_run.unavailable++;
    else
        g_run.other++;
    if (g_run.done >= g_run.want)
        event_base_loopexit(g_run.base, NULL);
}

static int insert_work(MYSQL *conn, void *arg)
{
    if (pthread_equal(pthread_self(), g_main))
        g_run.work_on_main++;
    return sbh_db_exec(conn, NULL, "INSERT INTO pool_rows (v) VALUES (?)", "i",
                       (long long)(intptr_t)arg);
}

static void test_pool_jobs(void)
{
    MYSQL *c = connect_db("");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL_FATAL(sql(c, "CREATE TABLE pool_rows (id INT AUTO_INCREMENT PRIMARY KEY, "
                                 "v INT NOT NULL)"),
                          0);
    g_run = (struct pool_run){.base = event_base_new()};
    CU_ASSERT_PTR_NOT_NULL_FATAL(g_run.base);
    struct sbh_db *db = sbh_db_new(g_run.base, &g_params, 4);
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);

    /* One job first, then many at once. */
    g_run.want = 1;
    CU_ASSERT_EQUAL(sbh_db_submit(db, insert_work, count_done, (void *)(intptr_t)0), 0);
    run_loop(10);
    CU_ASSERT_EQUAL(g_run.ok, 1);
    g_run.want = 1 + 500;
    for (int i = 1; i <= 500; i++)
        CU_ASSERT_EQUAL(sbh_db_submit(db, insert_work, count_done, (void *)(intptr_t)i), 0);
    run_loop(30);
    CU_ASSERT_EQUAL(g_run.timed_out, 0);
    CU_ASSERT_EQUAL(g_run.done, 501);
    CU_ASSERT_EQUAL(g_run.ok, 501);
    CU_ASSERT_EQUAL(g_run.wrong_thread, 0);
    CU_ASSERT_EQUAL(g_run.work_on_main, 0);
    CU_ASSERT_EQUAL(sbh_db_available(db), 1);
    sbh_db_free(db);
    event_base_free(g_run.base);

    json_t *rows = NULL;
    CU_ASSERT_EQUAL(sbh_db_query(c, &rows,
                                 "SELECT COUNT(*) AS n, COUNT(DISTINCT v) AS d "
                                 "FROM pool_rows",
                                 ""),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(rows, 0), "n")), 501);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(rows, 0), "d")), 501);
    json_decref(rows);
    mysql_close(c);
}

/* Through a pool worker, whose cache keeps the statement: bulk, then one row. */
static int bulk_then_single_work(MYSQL *conn, void *arg)
{
    (void)arg;
    json_t *v = bulk_values("p", 50), *w = bulk_values("q", 50);
    int rc = sbh_db_exec_rows(conn, NULL, BK_INSERT, 50, v);
    if (rc == SBH_DB_OK)
        rc = sbh_db_exec_rows(conn, NULL, BK_INSERT, 50, w);
    json_t *one = json_pack("[s, s, i, s]", "single", "x", 7, "y");
    unsigned long long affected = 0;
    if (rc == SBH_DB_OK)
        rc = sbh_db_exec_json(conn, &affected, BK_INSERT, one);
    if (rc == SBH_DB_OK && affected != 1)
        rc = SBH_DB_ERROR;
    json_decref(one);
    json_decref(v);
    json_decref(w);
    return rc;
}

static void test_exec_rows_cached(void)
{
    MYSQL *c = connect_db("");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    g_run = (struct pool_run){.base = event_base_new()};
    CU_ASSERT_PTR_NOT_NULL_FATAL(g_run.base);
    struct sbh_db *db = sbh_db_new(g_run.base, &g_params, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    g_run.want = 1;
    CU_ASSERT_EQUAL(sbh_db_submit(db, bulk_then_single_work, count_done, NULL), 0);
    run_loop(10);
    CU_ASSERT_EQUAL(g_run.ok, 1);
    sbh_db_free(db);
    event_base_free(g_run.base);
    CU_ASSERT_EQUAL(bulk_matches(c, "p", 50), 50);
    CU_ASSERT_EQUAL(bulk_matches(c, "q", 50), 50);
    json_t *rows = NULL;
    CU_ASSERT_EQUAL(sbh_db_query(c, &rows, "SELECT s, n FROM bk WHERE k = 'single'", ""),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL_FATAL(json_array_size(rows), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(rows, 0), "n")), 7);
    json_decref(rows);
    mysql_close(c);
}

/* A job that remembers the worker connection's id. */
static long long g_conn_id;

static int conn_id_work(MYSQL *conn, void *arg)
{
    json_t *rows = NULL;
    int rc = sbh_db_query(conn, &rows, "SELECT CONNECTION_ID() AS id", "");
    if (rc == SBH_DB_OK)
        g_conn_id = json_integer_value(json_object_get(json_array_get(rows, 0), "id"));
    json_decref(rows);
    return rc;
}

static void test_pool_reconnect(void)
{
    g_run = (struct pool_run){.base = event_base_new()};
    struct sbh_db *db = sbh_db_new(g_run.base, &g_params, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    g_run.want = 1;
    sbh_db_submit(db, conn_id_work, count_done, NULL);
    run_loop(10);
    long long first = g_conn_id;
    CU_ASSERT_FATAL(first > 0);

    /* Kill the worker's connection behind its back. */
    MYSQL *c = connect_root(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    char q[64];
    snprintf(q, sizeof(q), "KILL CONNECTION %lld", first);
    CU_ASSERT_EQUAL(sql(c, q), 0);
    mysql_close(c);

    /* The next job sees the dead connection; the one after reconnects. */
    g_run.want = 2;
    sbh_db_submit(db, conn_id_work, count_done, NULL);
    run_loop(10);
    CU_ASSERT_EQUAL(g_run.unavailable, 1);
    usleep(600 * 1000); /* past the fail-fast window */
    g_run.want = 3;
    sbh_db_submit(db, conn_id_work, count_done, NULL);
    run_loop(10);
    CU_ASSERT_EQUAL(g_run.ok, 2);
    CU_ASSERT(g_conn_id != first);
    CU_ASSERT_EQUAL(sbh_db_available(db), 1);
    sbh_db_free(db);
    event_base_free(g_run.base);
}

static int never_work(MYSQL *conn, void *arg)
{
    g_run.other += 1000; /* must not run without a connection */
    return SBH_DB_OK;
}

static void on_check_available(evutil_socket_t fd, short what, void *arg)
{
    if (sbh_db_available(arg))
        event_base_loopexit(g_run.base, NULL);
}

static void test_pool_unavailable(void)
{
    char dir[] = "/tmp/sbtest-nodb-XXXXXX", link_path[PATH_MAX];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(link_path, sizeof(link_path), "%s/mysqld.sock", dir);
    struct sbh_db_params p = g_params;
    p.socket = link_path; /* nothing listens there yet */
    g_run = (struct pool_run){.base = event_base_new()};
    struct sbh_db *db = sbh_db_new(g_run.base, &p, 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    g_run.want = 20;
    for (int i = 0; i < 20; i++)
        CU_ASSERT_EQUAL(sbh_db_submit(db, never_work, count_done, NULL), 0);
    run_loop(20);
    CU_ASSERT_EQUAL(g_run.unavailable, 20);
    CU_ASSERT_EQUAL(g_run.other, 0);
    CU_ASSERT_EQUAL(g_run.wrong_thread, 0);
    CU_ASSERT_EQUAL(sbh_db_available(db), 0);

    /* The server "comes back": the health probe notices without any job. */
    CU_ASSERT_EQUAL_FATAL(symlink(getenv("SB_MARIADB_SOCKET"), link_path), 0);
    struct event *poll = event_new(g_run.base, -1, EV_PERSIST, on_check_available, db);
    struct timeval tv = {0, 50 * 1000};
    event_add(poll, &tv);
    g_run.want = 1000;
    g_run.timed_out = 0;
    run_loop(10);
    event_free(poll);
    CU_ASSERT_EQUAL(g_run.timed_out, 0);
    CU_ASSERT_EQUAL(sbh_db_available(db), 1);
    sbh_db_free(db);
    event_base_free(g_run.base);
    unlink(link_path);
    rmdir(dir);
}

/* ---- migrations ---- */

static char g_migrations[PATH_MAX];

static int count_files(const char *root)
{
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof(cmd), "ls %s/*/[0-9][0-9][0-9][0-9]_*.sql | wc -l", root);
    FILE *f = popen(cmd, "r");
    int n = -1;
    if (f) {
        if (fscanf(f, "%d", &n) != 1)
            n = -1;
        pclose(f);
    }
    return n;
}

static long long scalar(MYSQL *c, const char *q, const char *s)
{
    json_t *rows = NULL;
    long long v = -1;
    if (sbh_db_query(c, &rows, q, s ? "s" : "", s) == SBH_DB_OK)
        v = json_integer_value(json_object_get(json_array_get(rows, 0), "n"));
    json_decref(rows);
    return v;
}

static void test_migrate_from_empty(void)
{
    int files = count_files(g_migrations);
    CU_ASSERT_FATAL(files >= 8);
    MYSQL *c = connect_db("_m");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    char why[512] = "";

    /* Status before anything: all pending, no table needed. */
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    CU_ASSERT_EQUAL(sbh_migrate_status(c, g_migrations, out, why, sizeof(why)), 0);
    fclose(out);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "pending  core/0001_core.sql"));
    free(text);

    int n = sbh_migrate_apply(c, g_migrations, why, sizeof(why));
    if (n < 0)
        fprintf(stderr, "%s\n", why);
    CU_ASSERT_EQUAL(n, files);
    const char *tables[] = {"instances",
                            "instance_kv",
                            "messages",
                            "webhook_events",
                            "outbox",
                            "subscriptions",
                            "subscription_deliveries",
                            "api_keys",
                            "schema_migrations",
                            "telegram_instances",
                            "whatsapp_official_instances",
                            "messenger_instances",
                            "instagram_instances",
                            "slack_instances",
                            "discord_instances",
                            "whatsappweb_instances"};
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        long long have = scalar(c,
                                "SELECT COUNT(*) AS n FROM information_schema.tables WHERE "
                                "table_schema = DATABASE() AND table_name = ?",
                                tables[i]);
        if (have != 1)
            fprintf(stderr, "missing table %s\n", tables[i]);
        CU_ASSERT_EQUAL(have, 1);
    }
    /* core was applied before the plugins. */
    CU_ASSERT_EQUAL(scalar(c,
                           "SELECT COUNT(*) AS n FROM schema_migrations WHERE applied_at < "
                           "(SELECT applied_at FROM schema_migrations WHERE component = ?)",
                           "core"),
                    0);
    /* The schema does what it says: cascade, idempotency, JSON checks. */
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL,
                                "INSERT INTO instances (id, provider, name, settings) "
                                "VALUES (?, 'telegram', 'main', ?)",
                                "ss", "tg1", "{}"),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL,
                                "INSERT INTO instances (id, provider, name, settings) "
                                "VALUES ('tg2', 'telegram', 'main', '{}')",
                                ""),
                    SBH_DB_CONFLICT);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL,
                                "INSERT INTO instances (id, provider, name, settings) "
                                "VALUES ('tg3', 'telegram', 'x', 'not json')",
                                ""),
                    SBH_DB_ERROR);
    const char *msg = "INSERT INTO messages (id, instance_id, direction, state, body, "
                      "idempotency_key) VALUES (?, 'tg1', 'out', 'queued', '{}', ?)";
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, msg, "ss", "m1", "key"), SBH_DB_OK);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, msg, "ss", "m2", "key"), SBH_DB_CONFLICT);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, msg, "ss", "m3", "KEY"), SBH_DB_OK);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, msg, "ss", "m4", (const char *)NULL), SBH_DB_OK);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, msg, "ss", "m5", (const char *)NULL), SBH_DB_OK);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL,
                                "INSERT INTO outbox (message_id, instance_id, due_at) "
                                "VALUES ('m1', 'tg1', NOW(6))",
                                ""),
                    SBH_DB_OK);
    CU_ASSERT_EQUAL(
        sbh_db_exec(c, NULL, "INSERT INTO telegram_instances (instance_id) VALUES ('tg1')", ""),
        SBH_DB_OK);
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, "DELETE FROM instances WHERE id = ?", "s", "tg1"),
                    SBH_DB_OK);
    /* Provider tables follow their instance; messages and the outbox belong
     * to instance ids that need not be rows (config instances) and stay. */
    CU_ASSERT_EQUAL(scalar(c, "SELECT COUNT(*) AS n FROM telegram_instances", NULL), 0);
    CU_ASSERT_EQUAL(scalar(c,
                           "SELECT (SELECT COUNT(*) FROM messages) + (SELECT COUNT(*) FROM "
                           "outbox) AS n",
                           NULL),
                    5);
    /* Deleting a message takes its outbox row with it. */
    CU_ASSERT_EQUAL(sbh_db_exec(c, NULL, "DELETE FROM messages WHERE id = 'm1'", ""), SBH_DB_OK);
    CU_ASSERT_EQUAL(scalar(c, "SELECT COUNT(*) AS n FROM outbox", NULL), 0);

    /* Again: nothing to do. */
    CU_ASSERT_EQUAL(sbh_migrate_apply(c, g_migrations, why, sizeof(why)), 0);
    CU_ASSERT_EQUAL(scalar(c, "SELECT COUNT(*) AS n FROM schema_migrations", NULL), files);
    text = NULL;
    out = open_memstream(&text, &len);
    CU_ASSERT_EQUAL(sbh_migrate_status(c, g_migrations, out, why, sizeof(why)), 0);
    fclose(out);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "applied  core/0001_core.sql"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "applied  telegram/0001_telegram_instances.sql"));
    CU_ASSERT_PTR_NULL(strstr(text, "pending"));
    free(text);
    mysql_close(c);
}

struct mig_thread {
    const char *suffix;
    int applied;
    char why[512];
};

static void *migrate_thread(void *arg)
{
    struct mig_thread *t = arg;
    mysql_thread_init();
    MYSQL *c = connect_db(t->suffix);
    t->applied = c ? sbh_migrate_apply(c, g_migrations, t->why, sizeof(t->why)) : -1;
    if (c)
        mysql_close(c);
    mysql_thread_end();
    return NULL;
}

static void test_migrate_concurrent(void)
{
    int files = count_files(g_migrations);
    struct mig_thread t[2] = {{.suffix = "_c"}, {.suffix = "_c"}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, migrate_thread, &t[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        if (t[i].applied < 0)
            fprintf(stderr, "thread %d: %s\n", i, t[i].why);
        CU_ASSERT(t[i].applied >= 0);
    }
    /* The lock makes one do everything and the other find nothing left. */
    CU_ASSERT_EQUAL(t[0].applied + t[1].applied, files);
    MYSQL *c = connect_db("_c");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(scalar(c, "SELECT COUNT(*) AS n FROM schema_migrations", NULL), files);
    mysql_close(c);
}

static void test_migrate_tamper(void)
{
    char root[] = "/tmp/sbtest-mig-XXXXXX", path[PATH_MAX], why[512] = "";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(root));
    snprintf(path, sizeof(path), "%s/zz", root);
    CU_ASSERT_EQUAL_FATAL(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/aa", root);
    CU_ASSERT_EQUAL_FATAL(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/zz/0001_a.sql", root);
    write_file(path, "-- a comment;\nCREATE TABLE t_a (\n  id INT PRIMARY KEY\n);\n\n"
                     "INSERT INTO t_a VALUES (1);   \nINSERT INTO t_a\n VALUES (2)\n");
    snprintf(path, sizeof(path), "%s/zz/README.md", root);
    write_file(path, "not a migration\n");
    snprintf(path, sizeof(path), "%s/zz/1_bad_name.sql", root);
    write_file(path, "THIS IS IGNORED;\n");
    snprintf(path, sizeof(path), "%s/aa/0002_later.sql", root);
    write_file(path, "CREATE TABLE t_aa2 (id INT);\n");
    snprintf(path, sizeof(path), "%s/aa/0001_first.sql", root);
    write_file(path, "CREATE TABLE t_aa1 (id INT);\n");

    MYSQL *c = connect_db("_t");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    int n = sbh_migrate_apply(c, root, why, sizeof(why));
    if (n < 0)
        fprintf(stderr, "%s\n", why);
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT_EQUAL(scalar(c, "SELECT COUNT(*) AS n FROM t_a", NULL), 2);
    /* Components in name order (no core here), versions in order. */
    CU_ASSERT_EQUAL(scalar(c,
                           "SELECT COUNT(*) AS n FROM schema_migrations a JOIN schema_migrations b "
                           "ON a.applied_at > b.applied_at WHERE a.name = '0001_a.sql' AND "
                           "b.name IN ('0001_first.sql', '0002_later.sql')",
                           NULL),
                    2);

    /* A new pending file, and a change to an applied one: nothing runs. */
    snprintf(path, sizeof(path), "%s/zz/0002_b.sql", root);
    write_file(path, "CREATE TABLE t_b (id INT);\n");
    snprintf(path, sizeof(path), "%s/zz/0001_a.sql", root);
    write_file(path, "CREATE TABLE t_a (id BIGINT PRIMARY KEY);\n");
    why[0] = '\0';
    CU_ASSERT_EQUAL(sbh_migrate_apply(c, root, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "migration zz/0001_a.sql was changed after it was applied"));
    CU_ASSERT_EQUAL(scalar(c,
                           "SELECT COUNT(*) AS n FROM information_schema.tables WHERE "
                           "table_schema = DATABASE() AND table_name = ?",
                           "t_b"),
                    0);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    CU_ASSERT_EQUAL(sbh_migrate_status(c, root, out, why, sizeof(why)), -1);
    fclose(out);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "changed  zz/0001_a.sql"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "pending  zz/0002_b.sql"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "applied  aa/0001_first.sql"));
    free(text);

    /* Removing an applied file is fine; the pending one then applies. */
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(sbh_migrate_apply(c, root, why, sizeof(why)), 1);

    /* A failure half-way names the file and statement; not recorded. */
    snprintf(path, sizeof(path), "%s/zz/0003_bad.sql", root);
    write_file(path, "CREATE TABLE t_c (id INT);\n-- next one fails\nTHIS IS NOT SQL;\n"
                     "CREATE TABLE t_d (id INT);\n");
    why[0] = '\0';
    CU_ASSERT_EQUAL(sbh_migrate_apply(c, root, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "zz/0003_bad.sql"));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "statement 2 (line 3)"));
    CU_ASSERT_EQUAL(
        scalar(c, "SELECT COUNT(*) AS n FROM schema_migrations WHERE name = ?", "0003_bad.sql"), 0);
    /* Two files with one version are refused. */
    snprintf(path, sizeof(path), "%s/aa/0001_dup.sql", root);
    write_file(path, "SELECT 1;\n");
    CU_ASSERT_EQUAL(sbh_migrate_apply(c, root, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "share version 1"));
    /* A missing directory is an error. */
    CU_ASSERT_EQUAL(sbh_migrate_apply(c, "/nonexistent/migrations", why, sizeof(why)), -1);
    mysql_close(c);
    rm_rf(root);
}

/* ---- suite embedded ---- */

static void test_embedded_start_stop(void)
{
    char state[] = "/tmp/sbtest-emb-XXXXXX", why[512] = "";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(state));
    struct sbh_mariadb m;
    struct sbh_db_params p;
    int rc = sbh_mariadb_start(&m, state, &p, why, sizeof(why));
    if (rc < 0)
        fprintf(stderr, "%s\n", why);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT(m.pid > 0);
    CU_ASSERT_STRING_EQUAL(p.database, "switchboard");
    CU_ASSERT_PTR_NOT_NULL(p.socket);
    MYSQL *c = sbh_db_connect(&p, why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(sql(c, "CREATE TABLE marker (id INT)"), 0);
    mysql_close(c);
    struct stat st;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/mariadb", state);
    CU_ASSERT_EQUAL(stat(dir, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);

    /* A second daemon on the same state dir is refused while it runs. */
    struct sbh_mariadb m2;
    struct sbh_db_params p2;
    CU_ASSERT_EQUAL(sbh_mariadb_start(&m2, state, &p2, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "still uses"));

    pid_t pid = m.pid;
    sbh_mariadb_stop(&m);
    CU_ASSERT(kill(pid, 0) < 0 && errno == ESRCH);
    CU_ASSERT_EQUAL(m.pid, 0);
    sbh_db_params_clear(&p);

    /* A stale pid file (a dead pid) and socket do not stop the next start,
     * which reuses the data dir. */
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    waitpid(dead, NULL, 0);
    char pidfile[PATH_MAX];
    snprintf(pidfile, sizeof(pidfile), "%s/mariadb/mariadbd.pid", state);
    char pidtext[32];
    snprintf(pidtext, sizeof(pidtext), "%ld\n", (long)dead);
    write_file(pidfile, pidtext);
    rc = sbh_mariadb_start(&m, state, &p, why, sizeof(why));
    if (rc < 0)
        fprintf(stderr, "%s\n", why);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    c = sbh_db_connect(&p, why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(sql(c, "SELECT * FROM marker"), 0);
    mysql_close(c);
    sbh_mariadb_stop(&m);
    sbh_db_params_clear(&p);
    rm_rf(state);
}

/* ---- main ---- */

int main(void)
{
    static const struct sb_test url[] = {
        {"url tcp", test_url_tcp},
        {"url socket", test_url_socket},
        {"url percent-decoding", test_url_percent},
        {"url errors", test_url_errors},
        {"connection error numbers", test_error_is_connection},
    };
    static const struct sb_test server[] = {
        {"exec/query round trip", test_exec_query_roundtrip},
        {"exec errors and conflict", test_exec_errors},
        {"exec rows (bulk)", test_exec_rows},
        {"exec rows through a worker's cached statement", test_exec_rows_cached},
        {"pool jobs", test_pool_jobs},
        {"pool reconnects", test_pool_reconnect},
        {"pool unavailable and back", test_pool_unavailable},
        {"migrate from empty", test_migrate_from_empty},
        {"migrate concurrently", test_migrate_concurrent},
        {"migrate tampered and failing files", test_migrate_tamper},
    };
    static const struct sb_test embedded[] = {
        {"embedded start, stop, restart", test_embedded_start_stop},
    };
    const char *builddir = getenv("SB_TOP_BUILDDIR");
    snprintf(g_migrations, sizeof(g_migrations), "%s/build/migrations", builddir ? builddir : "..");
    const char *emb = getenv("SB_TEST_EMBEDDED");
    const struct sb_suite suites[] = {
        {.name = "url", SB_TESTS(url)},
        /* Without a server only the URL tests run (tests/db/test_db.sh says SKIP). */
        {.name = getenv("SB_MARIADB_SOCKET") ? "server" : NULL,
         SB_TESTS(server),
         .init = server_setup,
         .clean = server_teardown},
        {.name = emb && !strcmp(emb, "1") ? "embedded" : NULL, SB_TESTS(embedded)},
    };
    int rc = sb_run("test_db", suites, sizeof(suites) / sizeof(suites[0]));
    mysql_library_end();
    return rc;
}
