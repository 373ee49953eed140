/*
 * The database at start-up and for the commands: which server (embedded or
 * DATABASE_URL), migrations, the master key ring, the first admin key and
 * the stored instances. All blocking, all before the loop runs.
 */
#include "daemon.h"

#include "api.h"
#include "auth.h"
#include "kv.h"
#include "log.h"
#include "events.h"
#include "inbound.h"
#include "migrate.h"
#include "subscriptions.h"
#include "outbox.h"
#include "secrets.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define CONNECT_TRIES 30 /* one a second: a database starting beside us */
#define POOL_WORKERS 4   /* accepts, results, inbound and the API overlap */
#define KEY_REFRESH_S 10

/* The master key ring: SWITCHBOARD_MASTER_KEY, else the key file (made on first use). */
static struct sbh_keyring *open_ring(const struct sbh_config *cfg, char *why, size_t why_len)
{
    const char *env = getenv("SWITCHBOARD_MASTER_KEY");
    if (env && *env)
        return sbh_keyring_from_env(env, why, why_len);
    if (access(cfg->master_key_file, F_OK) < 0 && errno == ENOENT) {
        if (sbh_keyring_create_file(cfg->master_key_file, why, why_len) < 0)
            return NULL;
        sbh_log_fields(SB_LOG_WARN, "secrets", NULL, NULL,
                       json_pack("{s:s}", "file", cfg->master_key_file),
                       "created a new master key file; back it up: secrets cannot be read "
                       "without it");
    }
    return sbh_keyring_load_file(cfg->master_key_file, why, why_len);
}

/* Where the database is: DATABASE_URL, or the embedded server (started if need be). */
static int locate_db(const struct sbh_config *cfg, struct sbh_mariadb *m, struct sbh_db_params *p,
                     char *why, size_t why_len)
{
    memset(m, 0, sizeof(*m));
    if (cfg->database_url)
        return sbh_db_url_parse(cfg->database_url, p, why, why_len);
    /* A running daemon's embedded server serves the commands too. */
    char sock[4096];
    snprintf(sock, sizeof(sock), "%s/mariadb/mysqld.sock", cfg->state_dir);
    struct sbh_db_params probe = {
        .socket = sock, .user = "root", .password = "", .database = "switchboard"};
    char ignored[256];
    MYSQL *conn = access(sock, F_OK) == 0 ? sbh_db_connect(&probe, ignored, sizeof(ignored)) : NULL;
    if (conn) {
        mysql_close(conn);
        memset(p, 0, sizeof(*p));
        p->socket = strdup(sock);
        p->user = strdup("root");
        p->password = strdup("");
        p->database = strdup("switchboard");
        return p->socket && p->user && p->password && p->database ? 0 : -1;
    }
    sbh_info("storage", "no DATABASE_URL: starting the embedded MariaDB under %s/mariadb",
             cfg->state_dir);
    return sbh_mariadb_start(m, cfg->state_dir, p, why, why_len);
}

static MYSQL *connect_retrying(const struct sbh_db_params *p, char *why, size_t why_len)
{
    for (int i = 0; i < CONNECT_TRIES; i++) {
        MYSQL *conn = sbh_db_connect(p, why, why_len);
        if (conn)
            return conn;
        if (i == 0)
            sbh_warn("storage", "database not reachable yet (%s); retrying for %d s", why,
                     CONNECT_TRIES);
        sleep(1);
    }
    return NULL;
}

static void on_key_refresh(evutil_socket_t fd, short what, void *arg)
{
    sbh_api_refresh_keys(arg);
}

/* ---- the embedded server's supervisor ---- */

/* Restarting waits on the server; that happens on a thread, not the loop. */
struct sbh_db_restart {
    pthread_t thread;
    char *state_dir;
    struct sbh_mariadb m;
    struct sbh_db_params params;
    int rc;
    char why[512];
    atomic_int done;
};

static void *restart_thread(void *arg)
{
    struct sbh_db_restart *r = arg;
    r->rc = sbh_mariadb_start(&r->m, r->state_dir, &r->params, r->why, sizeof(r->why));
    atomic_store(&r->done, 1);
    return NULL;
}

static void restart_begin(struct sbh_daemon *d)
{
    struct sbh_db_restart *r = calloc(1, sizeof(*r));
    if (!r || !(r->state_dir = strdup(d->cfg->state_dir)) ||
        pthread_create(&r->thread, NULL, restart_thread, r) != 0) {
        if (r)
            free(r->state_dir);
        free(r);
        return;
    }
    d->db_restart = r;
}

static void restart_collect(struct sbh_daemon *d)
{
    struct sbh_db_restart *r = d->db_restart;
    pthread_join(r->thread, NULL);
    if (r->rc == 0) {
        d->mariadb = r->m;
        d->db_backoff_s = 1;
        sbh_info("storage", "embedded MariaDB is back");
    } else {
        sbh_log_fields(SB_LOG_ERROR, "storage", NULL, NULL, json_pack("{s:s}", "reason", r->why),
                       "embedded MariaDB did not restart");
        d->db_next_try = time(NULL) + d->db_backoff_s;
        d->db_backoff_s = d->db_backoff_s < 60 ? d->db_backoff_s * 2 : 60;
    }
    sbh_db_params_clear(&r->params);
    free(r->state_dir);
    free(r);
    d->db_restart = NULL;
}

/* Once a second: reap the server if it exited and start it again (backoff). */
static void on_db_watch(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_daemon *d = arg;
    int status;
    if (d->db_restart) {
        if (atomic_load(&d->db_restart->done))
            restart_collect(d);
        return;
    }
    if (d->mariadb.pid && waitpid(d->mariadb.pid, &status, WNOHANG) == d->mariadb.pid) {
        sbh_log_fields(SB_LOG_ERROR, "storage", NULL, NULL,
                       json_pack("{s:i, s:i}", "exit_status",
                                 WIFEXITED(status) ? WEXITSTATUS(status) : -1, "signal",
                                 WIFSIGNALED(status) ? WTERMSIG(status) : 0),
                       "embedded MariaDB exited; restarting it");
        free(d->mariadb.datadir);
        free(d->mariadb.socket);
        free(d->mariadb.log_path);
        memset(&d->mariadb, 0, sizeof(d->mariadb));
        d->db_next_try = 0;
    }
    if (!d->mariadb.pid && d->db_embedded && time(NULL) >= d->db_next_try)
        restart_begin(d);
}

int sbh_storage_open(struct sbh_daemon *d, char *why, size_t why_len)
{
    MYSQL *conn = NULL;
    int rc = -1;
    d->ring = open_ring(d->cfg, why, why_len);
    if (!d->ring)
        goto out;
    if (locate_db(d->cfg, &d->mariadb, &d->db_params, why, why_len) < 0)
        goto out;
    d->db_embedded = d->mariadb.pid != 0;
    d->db_backoff_s = 1;
    conn = connect_retrying(&d->db_params, why, why_len);
    if (!conn)
        goto out;
    int applied = sbh_migrate_apply(conn, d->cfg->migrations_dir, why, why_len);
    if (applied < 0)
        goto out;
    if (applied > 0)
        sbh_info("storage", "%d migrations applied", applied);
    d->auth = sbh_auth_new();
    if (!d->auth || sbh_api_bootstrap_admin_key(conn, d->auth, why, why_len) < 0)
        goto out;
    d->kv = sbh_kv_new(d->base);
    if (!d->kv || sbh_kv_load(d->kv, conn) < 0) {
        snprintf(why, why_len, "cannot read instance_kv: %s", mysql_error(conn));
        goto out;
    }
    sbh_registry_set_kv(d->reg, d->kv);
    if (sbh_api_load_instances(d, conn, why, why_len) < 0)
        goto out;
    d->db = sbh_db_new(d->base, &d->db_params, POOL_WORKERS);
    if (!d->db) {
        snprintf(why, why_len, "cannot start the database workers");
        goto out;
    }
    sbh_kv_attach(d->kv, d->db);
    struct sbh_outbox_conf oc;
    sbh_outbox_conf_default(&oc);
    oc.max_attempts = sbh_config_uint(d->cfg, "outbox", "max_attempts", oc.max_attempts);
    oc.backoff_base_ms = sbh_config_uint(d->cfg, "outbox", "backoff_base_ms", oc.backoff_base_ms);
    oc.backoff_max_ms = sbh_config_uint(d->cfg, "outbox", "backoff_max_ms", oc.backoff_max_ms);
    oc.breaker_failures =
        sbh_config_uint(d->cfg, "outbox", "breaker_failures", oc.breaker_failures);
    oc.breaker_cooldown_ms =
        sbh_config_uint(d->cfg, "outbox", "breaker_cooldown_ms", oc.breaker_cooldown_ms);
    oc.max_in_flight = sbh_config_uint(d->cfg, "outbox", "max_in_flight", oc.max_in_flight);
    oc.batch_max = sbh_config_uint(d->cfg, "outbox", "batch_max", oc.batch_max);
    d->inbound = sbh_inbound_new(d->base, d->db);
    d->events = sbh_events_new(d->base);
    if (!d->inbound || !d->events) {
        snprintf(why, why_len, "out of memory");
        goto out;
    }
    sbh_inbound_on_event(d->inbound, sbh_events_publish, d->events);
    struct sbh_subs_conf sc = {
        .retry_base_ms = sbh_config_uint(d->cfg, "subscriptions", "retry_base_ms", 1000),
        .max_attempts = sbh_config_uint(d->cfg, "subscriptions", "max_attempts", 8),
        .timeout_ms = sbh_config_uint(d->cfg, "subscriptions", "timeout_ms", 10000)};
    d->subs = sbh_subs_new(d->base, d->db, d->httpc, &sc);
    if (!d->subs || sbh_subs_load(d->subs, conn, d->ring, why, why_len) < 0)
        goto out;
    sbh_inbound_set_fanout(d->inbound, &(struct sbh_inbound_fanout){.snapshot = sbh_subs_filters,
                                                                    .match = sbh_subs_match,
                                                                    .write = sbh_subs_write,
                                                                    .stored = sbh_subs_stored,
                                                                    .arg = d->subs});
    sbh_registry_set_inbound(d->reg, d->inbound);
    d->outbox = sbh_outbox_new(d->base, d->db, d->reg, &oc);
    if (d->outbox)
        sbh_inbound_on_early_status(d->inbound, sbh_outbox_early_status, d->outbox);
    if (!d->outbox || sbh_outbox_recover(d->outbox, conn, why, why_len) < 0)
        goto out;
    d->key_refresh = event_new(d->base, -1, EV_PERSIST, on_key_refresh, d);
    struct timeval tv = {KEY_REFRESH_S, 0};
    if (d->key_refresh)
        event_add(d->key_refresh, &tv);
    if (d->db_embedded) {
        struct timeval second = {1, 0};
        d->db_watch = event_new(d->base, -1, EV_PERSIST, on_db_watch, d);
        if (d->db_watch)
            event_add(d->db_watch, &second);
    }
    rc = 0;
out:
    if (conn)
        mysql_close(conn);
    return rc;
}

void sbh_storage_close(struct sbh_daemon *d)
{
    if (d->key_refresh)
        event_free(d->key_refresh);
    d->key_refresh = NULL;
    if (d->db_watch)
        event_free(d->db_watch);
    d->db_watch = NULL;
    if (d->db_restart) {
        pthread_join(d->db_restart->thread, NULL);
        if (d->db_restart->rc == 0)
            d->mariadb = d->db_restart->m;
        sbh_db_params_clear(&d->db_restart->params);
        free(d->db_restart->state_dir);
        free(d->db_restart);
        d->db_restart = NULL;
    }
    if (d->reg)
        sbh_registry_set_kv(d->reg, NULL);
    sbh_db_free(d->db);
    d->db = NULL;
    sbh_outbox_free(d->outbox);
    d->outbox = NULL;
    sbh_inbound_free(d->inbound);
    d->inbound = NULL;
    sbh_events_free(d->events);
    d->events = NULL;
    sbh_subs_free(d->subs);
    d->subs = NULL;
    sbh_kv_free(d->kv);
    d->kv = NULL;
    if (d->mariadb.pid)
        sbh_mariadb_stop(&d->mariadb);
    sbh_db_params_clear(&d->db_params);
    sbh_auth_free(d->auth);
    d->auth = NULL;
    sbh_keyring_free(d->ring);
    d->ring = NULL;
}

/* ---- commands ---- */

static MYSQL *command_connect(const struct sbh_config *cfg, struct sbh_mariadb *m,
                              struct sbh_db_params *p, char *why, size_t why_len)
{
    if (locate_db(cfg, m, p, why, why_len) < 0)
        return NULL;
    return connect_retrying(p, why, why_len);
}

static void command_close(MYSQL *conn, struct sbh_mariadb *m, struct sbh_db_params *p)
{
    if (conn)
        mysql_close(conn);
    if (m->pid)
        sbh_mariadb_stop(m);
    sbh_db_params_clear(p);
}

int sbh_cmd_migrate(const struct sbh_config *cfg, int status_only)
{
    char why[1024];
    struct sbh_mariadb m = {0};
    struct sbh_db_params p = {0};
    MYSQL *conn = command_connect(cfg, &m, &p, why, sizeof(why));
    int rc = 1;
    if (!conn)
        goto out;
    if (status_only) {
        rc = sbh_migrate_status(conn, cfg->migrations_dir, stdout, why, sizeof(why)) < 0;
        goto out;
    }
    int applied = sbh_migrate_apply(conn, cfg->migrations_dir, why, sizeof(why));
    if (applied >= 0) {
        printf("%d migrations applied\n", applied);
        rc = 0;
    }
out:
    if (rc)
        fprintf(stderr, "switchboardd migrate: %s\n", why);
    command_close(conn, &m, &p);
    return rc;
}

/* Re-seal one table's secrets under the ring's current key. */
static int reseal_table(MYSQL *conn, const struct sbh_keyring *ring, const char *select_sql,
                        const char *update_sql, int *count, char *why, size_t why_len)
{
    json_t *rows = NULL, *row;
    size_t i;
    if (sbh_db_query(conn, &rows, select_sql, "") != SBH_DB_OK) {
        snprintf(why, why_len, "%s", mysql_error(conn));
        return -1;
    }
    json_array_foreach (rows, i, row) {
        const char *id = json_string_value(json_object_get(row, "id"));
        const char *sealed = json_string_value(json_object_get(row, "secret"));
        char key_id[64];
        size_t len;
        if (!sealed || sbh_secret_key_id(sealed, key_id, sizeof(key_id)) < 0 ||
            !strcmp(key_id, sbh_keyring_current_id(ring)))
            continue;
        unsigned char *plain = sbh_secret_open(ring, id, sealed, &len, why, why_len);
        char *resealed = plain ? sbh_secret_seal(ring, id, plain, len) : NULL;
        if (plain) {
            OPENSSL_cleanse(plain, len);
            free(plain);
        }
        /* Compare-and-set: a row changed meanwhile keeps its newer value. */
        int rc = resealed ? sbh_db_exec(conn, NULL, update_sql, "sss", resealed, id, sealed) : -1;
        free(resealed);
        if (rc != SBH_DB_OK) {
            json_decref(rows);
            if (!*why)
                snprintf(why, why_len, "cannot re-seal %s: %s", id, mysql_error(conn));
            return -1;
        }
        (*count)++;
    }
    json_decref(rows);
    return 0;
}

int sbh_cmd_rotate_key(const struct sbh_config *cfg)
{
    char why[1024] = "", new_id[64];
    struct sbh_mariadb m = {0};
    struct sbh_db_params p = {0};
    struct sbh_keyring *ring = NULL;
    MYSQL *conn = NULL;
    int rc = 1, count = 0;
    if (getenv("SWITCHBOARD_MASTER_KEY")) {
        snprintf(why, sizeof(why),
                 "the master key comes from SWITCHBOARD_MASTER_KEY; rotate it "
                 "where it is kept, not with this command");
        goto out;
    }
    conn = command_connect(cfg, &m, &p, why, sizeof(why));
    if (!conn)
        goto out;
    /* The new key goes in front; the running daemon reloads the file and reads both. */
    if (sbh_keyring_file_add_key(cfg->master_key_file, new_id, sizeof(new_id), why, sizeof(why)) <
        0)
        goto out;
    /* Give the daemon a moment to read the new key file, so what it seals from
     * now on uses the new key; then re-seal until a pass finds nothing old. */
    sleep(1);
    ring = sbh_keyring_load_file(cfg->master_key_file, why, sizeof(why));
    if (!ring)
        goto out;
    for (int pass = 0, before = -1; pass < 5 && count != before; pass++) {
        before = count;
        if (reseal_table(conn, ring,
                         "SELECT id, secrets AS secret FROM instances WHERE secrets IS NOT NULL",
                         "UPDATE instances SET secrets = ? WHERE id = ? AND secrets = ?", &count,
                         why, sizeof(why)) < 0 ||
            reseal_table(conn, ring,
                         "SELECT id, secret FROM subscriptions WHERE secret IS NOT NULL",
                         "UPDATE subscriptions SET secret = ? WHERE id = ? AND secret = ?", &count,
                         why, sizeof(why)) < 0)
            goto out;
    }
    if (sbh_keyring_file_drop_old(cfg->master_key_file, why, sizeof(why)) < 0)
        goto out;
    printf("rotated to key %s: %d secrets re-sealed\n", new_id, count);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "switchboardd rotate-key: %s\n", why);
    sbh_keyring_free(ring);
    command_close(conn, &m, &p);
    return rc;
}
