/*
 * Schema migrations (see migrate.h).
 *
 * Order of work in sbh_migrate_apply: take the server-wide named lock, make
 * sure schema_migrations exists, read what is recorded, check every recorded
 * file's checksum (any mismatch stops everything before anything runs), then
 * run the pending files in order and record each after its last statement.
 *
 * Migration files are trusted, shipped with the daemon and its plugins, not
 * input: they are the one place SQL runs through mysql_real_query instead of
 * a prepared statement (DDL mostly cannot be prepared anyway).
 */
#include "migrate.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "db.h"
#include "log.h"

#define LOCK_NAME "switchboard.migrate"
#define LOCK_TIMEOUT_S 60

struct migration {
    char component[65];
    int version;
    char file[256]; /* NNNN_name.sql */
    char *path;
    char *text; /* the file's bytes, NUL-terminated */
    size_t len;
    char sha[65]; /* hex SHA-256 of the bytes */
    int recorded; /* found in schema_migrations */
    char recorded_sha[65];
    char applied_at[32];
};

struct plan {
    struct migration *m;
    size_t n, cap;
};

static void plan_free(struct plan *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->m[i].path);
        free(p->m[i].text);
    }
    free(p->m);
    *p = (struct plan){0};
}

/* NNNN_name.sql with name [A-Za-z0-9_-]+; returns the version or -1. */
static int parse_file_name(const char *name)
{
    size_t len = strlen(name);
    if (len < 10 || strcmp(name + len - 4, ".sql") != 0 || name[4] != '_')
        return -1;
    for (int i = 0; i < 4; i++)
        if (!isdigit((unsigned char)name[i]))
            return -1;
    for (size_t i = 5; i < len - 4; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '_' && name[i] != '-')
            return -1;
    return atoi(name);
}

static int read_file(const char *path, char **text, size_t *len, char *why, size_t why_len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;
    if (!f) {
        snprintf(why, why_len, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 16384;
            char *grown = realloc(buf, cap);
            if (!grown)
                break;
            buf = grown;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f) || !buf || n + 1 > cap;
    fclose(f);
    if (bad) {
        free(buf);
        snprintf(why, why_len, "cannot read %s", path);
        return -1;
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

static int sha256_hex(const char *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return -1;
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

static int migration_cmp(const void *a, const void *b)
{
    const struct migration *x = a, *y = b;
    int cx = strcmp(x->component, "core") != 0, cy = strcmp(y->component, "core") != 0;
    if (cx != cy)
        return cx - cy; /* core first */
    int c = strcmp(x->component, y->component);
    if (c)
        return c;
    return (x->version > y->version) - (x->version < y->version);
}

static int plan_add(struct plan *p, const char *component, const char *dir, const char *file,
                    int version, char *why, size_t why_len)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        struct migration *m = realloc(p->m, cap * sizeof(*m));
        if (!m) {
            snprintf(why, why_len, "out of memory");
            return -1;
        }
        p->m = m;
        p->cap = cap;
    }
    struct migration *m = &p->m[p->n];
    *m = (struct migration){.version = version};
    snprintf(m->component, sizeof(m->component), "%s", component);
    snprintf(m->file, sizeof(m->file), "%s", file);
    if (asprintf(&m->path, "%s/%s", dir, file) < 0) {
        m->path = NULL;
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    p->n++;
    if (read_file(m->path, &m->text, &m->len, why, why_len) < 0 ||
        sha256_hex(m->text, m->len, m->sha) < 0) {
        if (!why[0])
            snprintf(why, why_len, "cannot hash %s", m->path);
        return -1;
    }
    return 0;
}

/* Add every NNNN_name.sql of one component directory. */
static int scan_component(struct plan *p, const char *root, const char *component, char *why,
                          size_t why_len)
{
    char *dir = NULL;
    int rc = -1;
    if (strlen(component) > 64) {
        snprintf(why, why_len, "migration component name too long: %s", component);
        return -1;
    }
    if (asprintf(&dir, "%s/%s", root, component) < 0)
        return -1;
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(why, why_len, "cannot open %s: %s", dir, strerror(errno));
        goto out;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        int version = parse_file_name(e->d_name);
        if (version < 0)
            continue;
        if (plan_add(p, component, dir, e->d_name, version, why, why_len) < 0)
            goto out;
    }
    rc = 0;
out:
    if (d)
        closedir(d);
    free(dir);
    return rc;
}

/* Build the ordered list of migration files under root. */
static int plan_load(struct plan *p, const char *root, char *why, size_t why_len)
{
    why[0] = '\0';
    DIR *d = opendir(root);
    if (!d) {
        snprintf(why, why_len, "cannot open migrations dir %s: %s", root, strerror(errno));
        return -1;
    }
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        char *sub = NULL;
        struct stat st;
        if (e->d_name[0] == '.' || asprintf(&sub, "%s/%s", root, e->d_name) < 0)
            continue;
        if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            rc = scan_component(p, root, e->d_name, why, why_len);
        free(sub);
    }
    closedir(d);
    if (rc < 0)
        return -1;
    if (p->n > 1)
        qsort(p->m, p->n, sizeof(*p->m), migration_cmp);
    for (size_t i = 1; i < p->n; i++)
        if (!strcmp(p->m[i].component, p->m[i - 1].component) &&
            p->m[i].version == p->m[i - 1].version) {
            snprintf(why, why_len, "migrations %s/%s and %s/%s share version %d", p->m[i].component,
                     p->m[i - 1].file, p->m[i].component, p->m[i].file, p->m[i].version);
            return -1;
        }
    return 0;
}

static struct migration *plan_find(struct plan *p, const char *component, int version)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->m[i].version == version && !strcmp(p->m[i].component, component))
            return &p->m[i];
    return NULL;
}

/* Mark what schema_migrations records. A missing table means nothing is. */
static int plan_mark_recorded(struct plan *p, MYSQL *conn, char *why, size_t why_len)
{
    json_t *rows = NULL, *row;
    size_t i;
    int rc = sbh_db_query(conn, &rows,
                          "SELECT COUNT(*) AS n FROM information_schema.tables "
                          "WHERE table_schema = DATABASE() AND table_name = 'schema_migrations'",
                          "");
    long long exists =
        rc == SBH_DB_OK ? json_integer_value(json_object_get(json_array_get(rows, 0), "n")) : 0;
    json_decref(rows);
    rows = NULL;
    if (rc == SBH_DB_OK && !exists)
        return 0; /* never migrated: everything is pending */
    if (rc == SBH_DB_OK)
        rc = sbh_db_query(conn, &rows,
                          "SELECT component, version, checksum, "
                          "DATE_FORMAT(applied_at, '%Y-%m-%d %H:%i:%s') AS applied_at "
                          "FROM schema_migrations",
                          "");
    if (rc != SBH_DB_OK) {
        snprintf(why, why_len, "cannot read schema_migrations: %s", mysql_error(conn));
        return -1;
    }
    json_array_foreach (rows, i, row) {
        const char *comp = json_string_value(json_object_get(row, "component"));
        struct migration *m =
            comp ? plan_find(p, comp, (int)json_integer_value(json_object_get(row, "version")))
                 : NULL;
        if (!m)
            continue; /* recorded but its file is gone: that is fine */
        const char *sum = json_string_value(json_object_get(row, "checksum"));
        const char *at = json_string_value(json_object_get(row, "applied_at"));
        m->recorded = 1;
        snprintf(m->recorded_sha, sizeof(m->recorded_sha), "%s", sum ? sum : "");
        snprintf(m->applied_at, sizeof(m->applied_at), "%s", at ? at : "");
    }
    json_decref(rows);
    return 0;
}

static int changed(const struct migration *m)
{
    return m->recorded && strcmp(m->recorded_sha, m->sha) != 0;
}

static void changed_why(const struct migration *m, char *why, size_t why_len)
{
    snprintf(why, why_len,
             "migration %s/%s was changed after it was applied (checksum recorded %.12s..., "
             "file now %.12s...)",
             m->component, m->file, m->recorded_sha, m->sha);
}

/*
 * Split text into statements, calling run for each: a statement ends at a
 * line whose last non-blank character is ';' (the ';' is dropped); lines
 * whose first non-blank characters are "--" are skipped. Text after the
 * last ';' is one more statement. Returns 0 or run's first non-zero value.
 */
typedef int (*stmt_fn)(const char *sql, size_t len, int number, int line, void *arg);

static int split_statements(const char *text, stmt_fn run, void *arg)
{
    size_t cap = strlen(text) + 1, n = 0;
    char *buf = malloc(cap);
    int number = 0, line = 0, first_line = 0, rc = 0;
    if (!buf)
        return -1;
    for (const char *p = text; *p && rc == 0;) {
        size_t len = strcspn(p, "\n");
        const char *s = p, *e = p + len;
        line++;
        p = *e ? e + 1 : e;
        while (s < e && isspace((unsigned char)*s))
            s++;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        if (s == e || (e - s >= 2 && s[0] == '-' && s[1] == '-'))
            continue;
        if (!n)
            first_line = line;
        int ends = e[-1] == ';';
        memcpy(buf + n, s, (size_t)(e - s - ends));
        n += (size_t)(e - s - ends);
        buf[n++] = '\n';
        if (ends) {
            buf[n] = '\0';
            rc = run(buf, n, ++number, first_line, arg);
            n = 0;
        }
    }
    if (rc == 0 && n) {
        buf[n] = '\0';
        rc = run(buf, n, ++number, first_line, arg);
    }
    free(buf);
    return rc;
}

struct run_ctx {
    MYSQL *conn;
    const struct migration *m;
    char *why;
    size_t why_len;
    int count;
};

static int run_statement(const char *sql, size_t len, int number, int line, void *arg)
{
    struct run_ctx *c = arg;
    c->count = number;
    if (mysql_real_query(c->conn, sql, len) == 0) {
        /* Drain a result set (a SELECT in a migration) so the next runs. */
        MYSQL_RES *res = mysql_store_result(c->conn);
        if (res)
            mysql_free_result(res);
        return 0;
    }
    /* MariaDB commits DDL as it goes: earlier statements stay applied. */
    snprintf(c->why, c->why_len,
             "migration %s/%s failed at statement %d (line %d): %s; statements before it "
             "stay applied (DDL cannot be rolled back) and the migration is not recorded: "
             "repair the schema by hand, then run migrations again",
             c->m->component, c->m->file, number, line, mysql_error(c->conn));
    return -1;
}

static int apply_one(MYSQL *conn, const struct migration *m, char *why, size_t why_len)
{
    struct run_ctx ctx = {conn, m, why, why_len, 0};
    if (split_statements(m->text, run_statement, &ctx) != 0) {
        if (!why[0])
            snprintf(why, why_len, "out of memory splitting %s", m->path);
        return -1;
    }
    int rc = sbh_db_exec(conn, NULL,
                         "INSERT INTO schema_migrations (component, version, name, checksum, "
                         "applied_at) VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6))",
                         "siss", m->component, (long long)m->version, m->file, m->sha);
    if (rc != SBH_DB_OK) {
        snprintf(why, why_len, "migration %s/%s ran but could not be recorded: %s", m->component,
                 m->file, mysql_error(conn));
        return -1;
    }
    json_t *f = json_pack("{s:s, s:s, s:i}", "migration_component", m->component, "migration",
                          m->file, "statements", ctx.count);
    sbh_log_fields(SB_LOG_INFO, "migrate", NULL, NULL, f, "migration applied");
    return 0;
}

static const char *g_create_table = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                    " component VARCHAR(64) NOT NULL,"
                                    " version INT NOT NULL,"
                                    " name VARCHAR(255) NOT NULL,"
                                    " checksum CHAR(64) NOT NULL,"
                                    " applied_at DATETIME(6) NOT NULL,"
                                    " PRIMARY KEY (component, version)"
                                    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/* GET_LOCK: 1 got it; 0 timed out; NULL error. */
static int lock_take(MYSQL *conn, char *why, size_t why_len)
{
    json_t *rows = NULL;
    int rc = sbh_db_query(conn, &rows, "SELECT GET_LOCK(?, ?) AS got", "si", LOCK_NAME,
                          (long long)LOCK_TIMEOUT_S);
    json_t *got = json_object_get(json_array_get(rows, 0), "got");
    int ok = rc == SBH_DB_OK && json_integer_value(got) == 1;
    if (!ok)
        snprintf(why, why_len, "cannot take the migration lock %s: %s", LOCK_NAME,
                 rc != SBH_DB_OK ? mysql_error(conn) : "another node held it for 60 s");
    json_decref(rows);
    return ok ? 0 : -1;
}

static void lock_release(MYSQL *conn)
{
    json_t *rows = NULL;
    if (sbh_db_query(conn, &rows, "SELECT RELEASE_LOCK(?) AS released", "s", LOCK_NAME) ==
        SBH_DB_OK)
        json_decref(rows);
}

int sbh_migrate_apply(MYSQL *conn, const char *dir, char *why, size_t why_len)
{
    struct plan p = {0};
    int rc = -1, locked = 0, applied = 0;
    if (plan_load(&p, dir, why, why_len) < 0)
        goto out;
    if (lock_take(conn, why, why_len) < 0)
        goto out;
    locked = 1;
    if (mysql_query(conn, g_create_table) != 0) {
        snprintf(why, why_len, "cannot create schema_migrations: %s", mysql_error(conn));
        goto out;
    }
    if (plan_mark_recorded(&p, conn, why, why_len) < 0)
        goto out;
    for (size_t i = 0; i < p.n; i++)
        if (changed(&p.m[i])) {
            changed_why(&p.m[i], why, why_len);
            goto out;
        }
    for (size_t i = 0; i < p.n; i++) {
        if (p.m[i].recorded)
            continue;
        why[0] = '\0';
        if (apply_one(conn, &p.m[i], why, why_len) < 0)
            goto out;
        applied++;
    }
    rc = applied;
out:
    if (locked)
        lock_release(conn);
    plan_free(&p);
    return rc;
}

int sbh_migrate_status(MYSQL *conn, const char *dir, FILE *out, char *why, size_t why_len)
{
    struct plan p = {0};
    int rc = -1;
    const struct migration *bad = NULL;
    if (plan_load(&p, dir, why, why_len) < 0 || plan_mark_recorded(&p, conn, why, why_len) < 0)
        goto out;
    for (size_t i = 0; i < p.n; i++) {
        const struct migration *m = &p.m[i];
        if (changed(m)) {
            fprintf(out, "changed  %s/%s  checksum recorded %s, file %s\n", m->component, m->file,
                    m->recorded_sha, m->sha);
            bad = bad ? bad : m;
        } else if (m->recorded) {
            fprintf(out, "applied  %s/%s  %s\n", m->component, m->file, m->applied_at);
        } else {
            fprintf(out, "pending  %s/%s\n", m->component, m->file);
        }
    }
    if (bad) {
        changed_why(bad, why, why_len);
        goto out;
    }
    rc = 0;
out:
    plan_free(&p);
    return rc;
}
