/*
 * Unit tests of config loading (host/config.c) and of the raw-text key
 * locator (host/json_locate.c).
 *
 * Every test gets a fresh mkdtemp directory holding switchboard.json, an
 * optional conf.d/ and a plugins/ dir with empty stand-in .so files (the
 * config only checks that an enabled plugin's file exists). The environment
 * is a fake array passed to sbh_config_load, never the process's own.
 */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "runner.h"
#include <jansson.h>

#include <switchboard/switchboard.h>

#include "config.h"
#include "json_locate.h"

static char g_dir[256];          /* the test's temp dir, the config's directory */
static char g_path[PATH_MAX];    /* g_dir/switchboard.json */
static char g_plugins[PATH_MAX]; /* g_dir/plugins */
static char *g_no_env[] = {NULL};

/* ---- fixture helpers ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void rm_rf(const char *dir)
{
    if (dir[0])
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Write text to g_dir/rel (creating conf.d/ when rel lives there). */
static void write_text(const char *rel, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/conf.d", g_dir);
    if (!strncmp(rel, "conf.d/", 7))
        mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/%s", g_dir, rel);
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(fputs(text, f) >= 0, 1);
    CU_ASSERT_EQUAL_FATAL(fclose(f), 0);
}

static int test_setup_dirs(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/sbh-test-config.XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_path, sizeof(g_path), "%s/switchboard.json", g_dir);
    snprintf(g_plugins, sizeof(g_plugins), "%s/plugins", g_dir);
    if (mkdir(g_plugins, 0700) < 0)
        return -1;
    /* Stand-ins: config loading only stat()s the file. */
    const char *fakes[] = {"echo.so", "other.so", "whatsapp-official.so"};
    for (size_t i = 0; i < sizeof(fakes) / sizeof(fakes[0]); i++) {
        char p[PATH_MAX + 32];
        snprintf(p, sizeof(p), "%s/%s", g_plugins, fakes[i]);
        FILE *f = fopen(p, "w");
        if (!f)
            return -1;
        fclose(f);
    }
    return 0;
}

static void test_setup(void)
{
    if (test_setup_dirs() < 0) {
        fprintf(stderr, "test_config: cannot set up %s: %s\n", g_dir, strerror(errno));
        exit(1);
    }
}

static void test_teardown(void)
{
    rm_rf(g_dir);
    g_dir[0] = '\0';
}

/* Write text as the main config and load it. */
static struct sbh_config *load_text(const char *text, char *const *env,
                                    const struct sbh_config_overrides *ov,
                                    struct sbh_config_error *err)
{
    write_text("switchboard.json", text);
    return sbh_config_load(g_path, ov, env ? env : g_no_env, err);
}

/* 1-based line and column of the first occurrence of needle in text. */
static void pos_of(const char *text, const char *needle, int *line, int *column)
{
    const char *at = strstr(text, needle);
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    *line = 1;
    *column = 1;
    for (const char *p = text; p < at; p++) {
        if (*p == '\n') {
            (*line)++;
            *column = 1;
        } else {
            (*column)++;
        }
    }
}

/* The load failed with exactly this file, key and reason fragment, and the
 * position of needle in text (needle NULL: line and column not checked). */
static void expect_error(const struct sbh_config *cfg, const struct sbh_config_error *err,
                         const char *file, const char *text, const char *needle, const char *key,
                         const char *reason_part)
{
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_STRING_EQUAL(err->file, file);
    CU_ASSERT_STRING_EQUAL(err->key, key);
    CU_ASSERT_PTR_NOT_NULL(strstr(err->reason, reason_part));
    if (needle) {
        int line, column;
        pos_of(text, needle, &line, &column);
        CU_ASSERT_EQUAL(err->line, line);
        CU_ASSERT_EQUAL(err->column, column);
    }
    if (cfg || strcmp(err->key, key) != 0 || !strstr(err->reason, reason_part))
        fprintf(stderr, "\n  got: %s:%d:%d key=%s reason=%s\n", err->file, err->line, err->column,
                err->key, err->reason);
}

static void join(char *out, size_t len, const char *dir, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

/* ---- good files ---- */

static void test_defaults(void)
{
    struct sbh_config_error err;
    struct sbh_config *cfg =
        load_text("{\"plugin_dir\": \"plugins\", \"plugins\": {\"echo\": {}}}", NULL, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    char want[PATH_MAX * 2];
    CU_ASSERT_EQUAL(cfg->port, 3000);
    CU_ASSERT_STRING_EQUAL(cfg->listen_address, "127.0.0.1");
    CU_ASSERT_EQUAL(cfg->log_level, SB_LOG_INFO);
    CU_ASSERT_EQUAL(cfg->shutdown_timeout_ms, 5000);
    CU_ASSERT_EQUAL(cfg->swap_timeout_ms, 5000);
    CU_ASSERT_PTR_NULL(cfg->database_url);
    CU_ASSERT_EQUAL_FATAL(cfg->n_plugins, 1);
    CU_ASSERT_EQUAL(cfg->n_instances, 0);
    const struct sbh_plugin_conf *pc = sbh_config_plugin(cfg, "echo");
    CU_ASSERT_PTR_NOT_NULL_FATAL(pc);
    CU_ASSERT_EQUAL(pc->enabled, 1);
    join(want, sizeof(want), g_plugins, "echo.so");
    CU_ASSERT_STRING_EQUAL(pc->file, want);
    CU_ASSERT_STRING_EQUAL(pc->webhook_path, "/webhook/echo");
    CU_ASSERT_EQUAL(pc->isolation, SBH_ISOLATION_INPROC);
    CU_ASSERT_TRUE(json_is_object(pc->config) && json_object_size(pc->config) == 0);
    CU_ASSERT_PTR_NULL(sbh_config_plugin(cfg, "nope"));
    join(want, sizeof(want), g_dir, "conf.d");
    CU_ASSERT_STRING_EQUAL(cfg->confd_dir, want);
    sbh_config_free(cfg);
}

/* A disabled plugin needs no file; the default plugin_dir is absolute. */
static void test_default_plugin_dir(void)
{
    struct sbh_config_error err;
    struct sbh_config *cfg =
        load_text("{\"plugins\": {\"nothere\": {\"enabled\": false}}}", NULL, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    const struct sbh_plugin_conf *pc = sbh_config_plugin(cfg, "nothere");
    CU_ASSERT_PTR_NOT_NULL_FATAL(pc);
    CU_ASSERT_EQUAL(pc->enabled, 0);
    CU_ASSERT_EQUAL(cfg->plugin_dir[0], '/');
    CU_ASSERT_EQUAL(strncmp(pc->file, cfg->plugin_dir, strlen(cfg->plugin_dir)), 0);
    CU_ASSERT_STRING_EQUAL(pc->file + strlen(cfg->plugin_dir), "/nothere.so");
    sbh_config_free(cfg);
}

static void test_full_file(void)
{
    struct sbh_config_error err;
    const char *text = "{\"listen\": {\"address\": \"0.0.0.0\", \"port\": 8080},\n"
                       " \"state_dir\": \"/srv/state\", \"plugin_dir\": \"plugins\",\n"
                       " \"log_level\": \"debug\", \"shutdown_timeout_ms\": 0,\n"
                       " \"swap_timeout_ms\": 250, \"database_url\": \"sqlite:///x.db\",\n"
                       " \"plugins\": {\"echo\": {\"enabled\": true, \"file\": \"other.so\",\n"
                       "   \"webhook_path\": \"/in/echo\", \"isolation\": \"inproc\",\n"
                       "   \"config\": {\"k\": [1, 2]}}},\n"
                       " \"instances\": {\"Demo_1.x\": {\"provider\": \"echo\",\n"
                       "   \"enabled\": false, \"settings\": {\"prefix\": \">\"}}}}\n";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_STRING_EQUAL(cfg->listen_address, "0.0.0.0");
    CU_ASSERT_EQUAL(cfg->port, 8080);
    CU_ASSERT_STRING_EQUAL(cfg->state_dir, "/srv/state");
    CU_ASSERT_EQUAL(cfg->log_level, SB_LOG_DEBUG);
    CU_ASSERT_EQUAL(cfg->shutdown_timeout_ms, 0);
    CU_ASSERT_EQUAL(cfg->swap_timeout_ms, 250);
    CU_ASSERT_STRING_EQUAL(cfg->database_url, "sqlite:///x.db");
    const struct sbh_plugin_conf *pc = sbh_config_plugin(cfg, "echo");
    CU_ASSERT_PTR_NOT_NULL_FATAL(pc);
    char want[PATH_MAX * 2];
    join(want, sizeof(want), g_plugins, "other.so");
    CU_ASSERT_STRING_EQUAL(pc->file, want);
    CU_ASSERT_STRING_EQUAL(pc->webhook_path, "/in/echo");
    CU_ASSERT_EQUAL(json_array_size(json_object_get(pc->config, "k")), 2);
    const struct sbh_instance_conf *ic = sbh_config_instance(cfg, "Demo_1.x");
    CU_ASSERT_PTR_NOT_NULL_FATAL(ic);
    CU_ASSERT_STRING_EQUAL(ic->provider, "echo");
    CU_ASSERT_EQUAL(ic->enabled, 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ic->settings, "prefix")), ">");
    CU_ASSERT_PTR_NULL(sbh_config_instance(cfg, "demo"));
    sbh_config_free(cfg);
}

static void test_relative_dirs(void)
{
    struct sbh_config_error err;
    struct sbh_config *cfg = load_text(
        "{\"state_dir\": \"var/state\", \"plugin_dir\": \"./plugins\"}", NULL, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    char want[PATH_MAX * 2];
    join(want, sizeof(want), g_dir, "var/state");
    CU_ASSERT_STRING_EQUAL(cfg->state_dir, want);
    join(want, sizeof(want), g_dir, "./plugins");
    CU_ASSERT_STRING_EQUAL(cfg->plugin_dir, want);
    sbh_config_free(cfg);

    cfg = load_text("{\"state_dir\": \"/abs/state\", \"plugin_dir\": \"/abs/plugins\"}", NULL, NULL,
                    &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_STRING_EQUAL(cfg->state_dir, "/abs/state");
    CU_ASSERT_STRING_EQUAL(cfg->plugin_dir, "/abs/plugins");
    sbh_config_free(cfg);
}

/* conf.d files merge over the main file in name order, objects deeply. */
static void test_confd_merge(void)
{
    struct sbh_config_error err;
    /* Written out of order: readdir order must not matter. */
    write_text("conf.d/20-b.json",
               "{\"listen\": {\"port\": 3003}, \"plugins\": {\"echo\": {\"config\": {\"z\": 3}}}}");
    write_text("conf.d/10-a.json", "{\"listen\": {\"port\": 3002, \"address\": \"::1\"},\n"
                                   " \"plugins\": {\"echo\": {\"config\": {\"y\": 2}}},\n"
                                   " \"log_level\": \"warn\"}");
    write_text("conf.d/30-c.json.bak", "not json at all");
    write_text("conf.d/.99-hidden.json", "not json either");
    write_text("conf.d/README", "{");
    struct sbh_config *cfg = load_text(
        "{\"listen\": {\"port\": 3001}, \"plugin_dir\": \"plugins\", \"log_level\": \"error\",\n"
        " \"plugins\": {\"echo\": {\"webhook_path\": \"/a\", \"config\": {\"x\": 1, \"y\": 1}}}}",
        NULL, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->port, 3003);
    CU_ASSERT_STRING_EQUAL(cfg->listen_address, "::1");
    CU_ASSERT_EQUAL(cfg->log_level, SB_LOG_WARN);
    const struct sbh_plugin_conf *pc = sbh_config_plugin(cfg, "echo");
    CU_ASSERT_PTR_NOT_NULL_FATAL(pc);
    CU_ASSERT_STRING_EQUAL(pc->webhook_path, "/a");
    json_t *want = json_pack("{s:i, s:i, s:i}", "x", 1, "y", 2, "z", 3);
    CU_ASSERT_TRUE(json_equal(pc->config, want));
    json_decref(want);
    sbh_config_free(cfg);
}

/* conf.d can add a whole plugin and an instance of it. */
static void test_confd_adds_sections(void)
{
    struct sbh_config_error err;
    write_text("conf.d/50-other.json", "{\"plugins\": {\"other\": {\"webhook_path\": \"/o\"}},\n"
                                       " \"instances\": {\"o1\": {\"provider\": \"other\"}}}");
    struct sbh_config *cfg =
        load_text("{\"plugin_dir\": \"plugins\", \"plugins\": {\"echo\": {}}}", NULL, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->n_plugins, 2);
    CU_ASSERT_PTR_NOT_NULL(sbh_config_plugin(cfg, "echo"));
    CU_ASSERT_PTR_NOT_NULL(sbh_config_plugin(cfg, "other"));
    const struct sbh_instance_conf *ic = sbh_config_instance(cfg, "o1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(ic);
    CU_ASSERT_STRING_EQUAL(ic->provider, "other");
    CU_ASSERT_EQUAL(ic->enabled, 1);
    sbh_config_free(cfg);
}

/* ---- precedence and environment ---- */

static const char *const PORT_FILE = "{\"listen\": {\"port\": 3001}, \"plugin_dir\": \"plugins\",\n"
                                     " \"state_dir\": \"/file/state\"}";

static void test_env_port_beats_file(void)
{
    struct sbh_config_error err;
    char *env[] = {"PATH=/bin", "MULTI_PROVIDER_PORT=4000", NULL};
    struct sbh_config *cfg = load_text(PORT_FILE, env, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->port, 4000);
    CU_ASSERT_EQUAL(
        json_integer_value(json_object_get(json_object_get(cfg->merged, "listen"), "port")), 4000);
    sbh_config_free(cfg);
}

static void test_cli_beats_env_and_file(void)
{
    struct sbh_config_error err;
    char *env[] = {"MULTI_PROVIDER_PORT=4000", NULL};
    struct sbh_config_overrides ov = {
        .plugin_dir = "/cli/plugins", .state_dir = "/cli/state", .port = 5000};
    struct sbh_config *cfg = load_text(PORT_FILE, env, &ov, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->port, 5000);
    CU_ASSERT_STRING_EQUAL(cfg->plugin_dir, "/cli/plugins");
    CU_ASSERT_STRING_EQUAL(cfg->state_dir, "/cli/state");
    sbh_config_free(cfg);

    /* Unset overrides leave file values alone. */
    struct sbh_config_overrides none = {0};
    cfg = load_text(PORT_FILE, NULL, &none, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->port, 3001);
    CU_ASSERT_STRING_EQUAL(cfg->state_dir, "/file/state");
    sbh_config_free(cfg);
}

/* The plugin dir from the command line is where plugin files are looked for. */
static void test_cli_plugin_dir_used_for_files(void)
{
    struct sbh_config_error err;
    struct sbh_config_overrides ov = {.plugin_dir = g_plugins};
    struct sbh_config *cfg = load_text(
        "{\"plugin_dir\": \"/no/such/dir\", \"plugins\": {\"echo\": {}}}", NULL, &ov, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    char want[PATH_MAX * 2];
    join(want, sizeof(want), g_plugins, "echo.so");
    CU_ASSERT_STRING_EQUAL(sbh_config_plugin(cfg, "echo")->file, want);
    sbh_config_free(cfg);
}

static const char *const TWO_PLUGINS =
    "{\"plugin_dir\": \"plugins\",\n"
    " \"plugins\": {\"echo\": {\"enabled\": true},\n"
    "   \"whatsapp-official\": {\"enabled\": false, \"webhook_path\": \"/wa\"}}}";

static void test_env_enable(void)
{
    struct sbh_config_error err;
    char *env[] = {"ENABLE_ECHO=false", "ENABLE_WHATSAPP_OFFICIAL=true", NULL};
    struct sbh_config *cfg = load_text(TWO_PLUGINS, env, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(sbh_config_plugin(cfg, "echo")->enabled, 0);
    const struct sbh_plugin_conf *wa = sbh_config_plugin(cfg, "whatsapp-official");
    CU_ASSERT_PTR_NOT_NULL_FATAL(wa);
    CU_ASSERT_EQUAL(wa->enabled, 1);
    CU_ASSERT_STRING_EQUAL(wa->webhook_path, "/wa");
    sbh_config_free(cfg);

    char *env2[] = {"ENABLE_ECHO=0", "ENABLE_WHATSAPP_OFFICIAL=1", NULL};
    cfg = load_text(TWO_PLUGINS, env2, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(sbh_config_plugin(cfg, "echo")->enabled, 0);
    CU_ASSERT_EQUAL(sbh_config_plugin(cfg, "whatsapp-official")->enabled, 1);
    sbh_config_free(cfg);
}

/* ENABLE_<P>=true for a provider the files do not mention adds it with defaults. */
static void test_env_enable_new_provider(void)
{
    struct sbh_config_error err;
    char *env[] = {"ENABLE_WHATSAPP_OFFICIAL=true", NULL};
    struct sbh_config *cfg = load_text("{\"plugin_dir\": \"plugins\"}", env, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    const struct sbh_plugin_conf *wa = sbh_config_plugin(cfg, "whatsapp-official");
    CU_ASSERT_PTR_NOT_NULL_FATAL(wa);
    CU_ASSERT_EQUAL(wa->enabled, 1);
    CU_ASSERT_STRING_EQUAL(wa->webhook_path, "/webhook/whatsapp-official");
    sbh_config_free(cfg);
}

static void test_env_webhook_path_and_db(void)
{
    struct sbh_config_error err;
    char *env[] = {"ECHO_WEBHOOK_PATH=/hooks/env-echo", "WHATSAPP_OFFICIAL_WEBHOOK_PATH=/hooks/wa",
                   "DATABASE_URL=postgres://db/sb", NULL};
    struct sbh_config *cfg = load_text(TWO_PLUGINS, env, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_STRING_EQUAL(sbh_config_plugin(cfg, "echo")->webhook_path, "/hooks/env-echo");
    CU_ASSERT_STRING_EQUAL(sbh_config_plugin(cfg, "whatsapp-official")->webhook_path, "/hooks/wa");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg->database_url);
    CU_ASSERT_STRING_EQUAL(cfg->database_url, "postgres://db/sb");
    sbh_config_free(cfg);
}

static void expect_env_error(char **env, const char *key)
{
    struct sbh_config_error err;
    struct sbh_config *cfg = load_text(TWO_PLUGINS, env, NULL, &err);
    expect_error(cfg, &err, "environment", NULL, NULL, key, "");
    CU_ASSERT_NOT_EQUAL(err.reason[0], '\0');
    sbh_config_free(cfg);
}

static void test_env_bad_values(void)
{
    const char *ports[] = {"abc", "", "0", "65536", "80x", "-1"};
    for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
        char var[64];
        snprintf(var, sizeof(var), "MULTI_PROVIDER_PORT=%s", ports[i]);
        char *env[] = {var, NULL};
        expect_env_error(env, "MULTI_PROVIDER_PORT");
    }
    char *env[] = {"ENABLE_ECHO=maybe", NULL};
    expect_env_error(env, "ENABLE_ECHO");
    char *env2[] = {"ECHO_WEBHOOK_PATH=no-slash", NULL};
    expect_env_error(env2, "ECHO_WEBHOOK_PATH");
}

/* Names too long to be ours are ignored, not read past their buffer. */
static void test_env_long_names(void)
{
    struct sbh_config_error err;
    char a[400], b[400];
    snprintf(a, sizeof(a), "ENABLE_%0300d=true", 0);
    snprintf(b, sizeof(b), "%0300d_WEBHOOK_PATH=/x", 0);
    char *env[] = {a, b, NULL};
    struct sbh_config *cfg = load_text(TWO_PLUGINS, env, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->n_plugins, 2);
    sbh_config_free(cfg);
}

/* ---- rejected files: where and why ---- */

/* The sample from the contract: the second ',' on line 3 is column 23. */
static void test_invalid_json(void)
{
    struct sbh_config_error err;
    const char *text = "{\n"
                       "  \"listen\": {\"address\": \"127.0.0.1\", \"port\": 3000},\n"
                       "  \"log_level\": \"info\",,\n"
                       "  \"plugins\": {\"echo\": {\"enabled\": true}}\n"
                       "}\n";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, NULL, NULL, "", "invalid JSON");
    CU_ASSERT_EQUAL(err.line, 3);
    CU_ASSERT_EQUAL(err.column, 23);
}

static void test_not_an_object(void)
{
    struct sbh_config_error err;
    struct sbh_config *cfg = load_text("[1, 2]", NULL, NULL, &err);
    expect_error(cfg, &err, g_path, NULL, NULL, "", "object");
    CU_ASSERT_EQUAL(err.line, 1);
    CU_ASSERT_EQUAL(err.column, 1);
}

static void test_missing_file(void)
{
    struct sbh_config_error err;
    char path[PATH_MAX * 2];
    join(path, sizeof(path), g_dir, "absent.json");
    struct sbh_config *cfg = sbh_config_load(path, NULL, g_no_env, &err);
    expect_error(cfg, &err, path, NULL, NULL, "", "cannot open");
}

static void test_unknown_top_level_key(void)
{
    struct sbh_config_error err;
    const char *text = "{\n  \"listen\": {\"port\": 3000},\n  \"instancez\": {}\n}\n";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"instancez\"", "instancez", "unknown key");
}

static void test_unknown_nested_key(void)
{
    struct sbh_config_error err;
    const char *text = "{\"plugin_dir\": \"plugins\",\n"
                       " \"plugins\": {\n"
                       "   \"other\": {\"enabeld\": 1},\n"
                       "   \"echo\": {\"file\": \"echo.so\",\n"
                       "            \"enabeld\": true}}}\n";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    /* "other" comes first: its typo is the one reported. */
    expect_error(cfg, &err, g_path, text, "\"enabeld\"", "plugins.other.enabeld", "unknown key");

    const char *text2 = "{\"plugins\": {\"echo\": {\"file\": \"echo.so\",\n"
                        "                     \"enabeld\": true}}}\n";
    cfg = load_text(text2, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text2, "\"enabeld\"", "plugins.echo.enabeld", "unknown key");

    const char *text3 = "{\"listen\": {\"port\": 3000,\n   \"prot\": 1}}";
    cfg = load_text(text3, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text3, "\"prot\"", "listen.prot", "unknown key");
}

/* A provider name with an escaped quote is still found in the text. */
static void test_unknown_key_under_escaped_name(void)
{
    struct sbh_config_error err;
    const char *text = "{\"plugins\": {\"x\": {},\n"
                       "  \"we\\\"ird\": {\n"
                       "     \"enabeld\": true}}}\n";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"enabeld\"", "plugins.we\"ird.enabeld", "unknown key");
}

static void test_wrong_types(void)
{
    struct sbh_config_error err;
    const char *text = "{\"listen\": {\"address\": \"127.0.0.1\",\n  \"port\": \"3000\"}}";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"port\"", "listen.port", "must be an integer");

    text = "{\"shutdown_timeout_ms\": \"soon\"}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"shutdown", "shutdown_timeout_ms", "integer");

    text = "{\"log_level\": 3}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"log_level\"", "log_level", "must be a string");

    text = "{\"plugins\": {\"echo\": {\"enabled\": \"yes\"}}}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"enabled\"", "plugins.echo.enabled", "true or false");

    text = "{\"plugins\": {\"echo\": 1}}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"echo\"", "plugins.echo", "must be an object");

    text = "{\"instances\": {\"a\": {\"settings\": []}}}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"settings\"", "instances.a.settings", "object");

    text = "{\"listen\": 3000}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"listen\"", "listen", "must be an object");
}

static void test_port_range(void)
{
    struct sbh_config_error err;
    const char *bad[] = {"{\"listen\": {\"port\": 70000}}", "{\"listen\": {\"port\": 0}}",
                         "{\"listen\": {\"port\": -80}}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sbh_config *cfg = load_text(bad[i], NULL, NULL, &err);
        expect_error(cfg, &err, g_path, bad[i], "\"port\"", "listen.port", "1..65535");
    }
    struct sbh_config *cfg = load_text("{\"listen\": {\"port\": 65535}}", NULL, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL(cfg);
    CU_ASSERT_EQUAL(cfg ? cfg->port : 0, 65535);
    sbh_config_free(cfg);
}

static void test_unknown_log_level(void)
{
    struct sbh_config_error err;
    const char *text = "{\n\n   \"log_level\": \"verbose\"}";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"log_level\"", "log_level", "\"verbose\"");

    text = "{\"plugins\": {\"echo\": {\"isolation\": \"thread\"}}}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"isolation\"", "plugins.echo.isolation", "thread");
}

static void test_missing_plugin_file(void)
{
    struct sbh_config_error err;
    const char *text = "{\"plugin_dir\": \"plugins\",\n"
                       " \"plugins\": {\"echo\": {},\n"
                       "   \"ghost\": {\"enabled\": true}}}";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"ghost\"", "ghost", "plugin file missing");
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "ghost.so"));

    /* With an explicit file the error points at that key. */
    text = "{\"plugin_dir\": \"plugins\",\n"
           " \"plugins\": {\"echo\": {\"file\": \"gone.so\"}}}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"file\"", "echo", "plugin file missing");
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "gone.so"));
}

static void test_instance_unknown_provider(void)
{
    struct sbh_config_error err;
    const char *text = "{\"plugin_dir\": \"plugins\", \"plugins\": {\"echo\": {}},\n"
                       " \"instances\": {\"ok\": {\"provider\": \"echo\"},\n"
                       "   \"bad\": {\"enabled\": true,\n"
                       "            \"provider\": \"telegram\"}}}";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"provider\": \"telegram\"", "provider",
                 "no such plugin");

    text = "{\"instances\": {\"np\": {\"settings\": {}}}}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"np\"", "provider", "needs a provider");
}

/*
 * Turning a provider off (ENABLE_<P>=false) must not make the daemon refuse to
 * start because instances of it exist: they are kept, and do not run.
 */
static void test_instance_disabled_provider(void)
{
    struct sbh_config_error err;
    const char *text = "{\"plugin_dir\": \"plugins\", \"plugins\": {\"echo\": {}},\n"
                       " \"instances\": {\"echo-demo\": {\"provider\": \"echo\"}}}";
    char *env[] = {"ENABLE_ECHO=false", NULL};
    struct sbh_config *cfg = load_text(text, env, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(sbh_config_plugin(cfg, "echo")->enabled, 0);
    CU_ASSERT_PTR_NOT_NULL(sbh_config_instance(cfg, "echo-demo"));
    sbh_config_free(cfg);

    /* An instance of a provider that is not configured at all stays an error. */
    text = "{\"instances\": {\"x\": {\"provider\": \"nope\"}}}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"provider\"", "provider", "no such plugin");
}

static void test_bad_names(void)
{
    struct sbh_config_error err;
    const char *text = "{\"plugins\": {\"Echo\": {\"enabled\": false}}}";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"Echo\"", "Echo", "[a-z0-9-]");

    text = "{\"plugins\": {\"echo\": {\"enabled\": false}},\n"
           " \"instances\": {\"a b\": {\"provider\": \"echo\"}}}";
    cfg = load_text(text, NULL, NULL, &err);
    expect_error(cfg, &err, g_path, text, "\"a b\"", "a b", "instance id");
}

static void test_bad_webhook_path(void)
{
    const char *bad[] = {"webhook/echo", "/webhook/echo/", "/", "/web hook", "/a?b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sbh_config_error err;
        char text[256];
        snprintf(text, sizeof(text),
                 "{\"plugin_dir\": \"plugins\",\n \"plugins\": {\"echo\": {\n"
                 "   \"webhook_path\": \"%s\"}}}",
                 bad[i]);
        struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
        expect_error(cfg, &err, g_path, text, "\"webhook_path\"", "webhook_path", "webhook_path");
    }
}

static void test_duplicate_webhook_path(void)
{
    struct sbh_config_error err;
    const char *text = "{\"plugin_dir\": \"plugins\", \"plugins\": {\n"
                       "  \"echo\": {\"webhook_path\": \"/hook\"},\n"
                       "  \"other\": {\"enabled\": true,\n"
                       "     \"webhook_path\": \"/hook\"}}}";
    struct sbh_config *cfg = load_text(text, NULL, NULL, &err);
    int line, column;
    pos_of(text, "\"other\"", &line, &column);
    expect_error(cfg, &err, g_path, NULL, NULL, "webhook_path", "already used");
    CU_ASSERT_EQUAL(err.line, line + 1);
    CU_ASSERT_EQUAL(err.column, 6);

    /* A disabled plugin does not claim its path. */
    text = "{\"plugin_dir\": \"plugins\", \"plugins\": {\n"
           "  \"echo\": {\"webhook_path\": \"/hook\"},\n"
           "  \"other\": {\"enabled\": false, \"webhook_path\": \"/hook\"}}}";
    cfg = load_text(text, NULL, NULL, &err);
    CU_ASSERT_PTR_NOT_NULL(cfg);
    sbh_config_free(cfg);
}

/* An error in a conf.d file names that file and its position. */
static void test_bad_confd_file(void)
{
    struct sbh_config_error err;
    char confd[PATH_MAX * 2];
    const char *text = "{\"plugins\": {\"echo\": {\n   \"enabeld\": true}}}";
    write_text("conf.d/10-good.json", "{\"log_level\": \"warn\"}");
    write_text("conf.d/20-bad.json", text);
    struct sbh_config *cfg = load_text("{\"plugin_dir\": \"plugins\"}", NULL, NULL, &err);
    join(confd, sizeof(confd), g_dir, "conf.d/20-bad.json");
    expect_error(cfg, &err, confd, text, "\"enabeld\"", "plugins.echo.enabeld", "unknown key");

    write_text("conf.d/20-bad.json", "{\n  \"log_level\": }");
    cfg = load_text("{\"plugin_dir\": \"plugins\"}", NULL, NULL, &err);
    expect_error(cfg, &err, confd, NULL, NULL, "", "invalid JSON");
    CU_ASSERT_EQUAL(err.line, 2);
}

/* A semantic error found after merging names the file that set the value. */
static void test_merged_error_names_confd_file(void)
{
    struct sbh_config_error err;
    char confd[PATH_MAX * 2];
    const char *text = "{\"plugins\": {\"echo\": {\"enabled\": true,\n"
                       "   \"webhook_path\": \"bad\"}}}";
    write_text("conf.d/50-hook.json", text);
    struct sbh_config *cfg = load_text(
        "{\"plugin_dir\": \"plugins\", \"plugins\": {\"echo\": {\"webhook_path\": \"/ok\"}}}", NULL,
        NULL, &err);
    join(confd, sizeof(confd), g_dir, "conf.d/50-hook.json");
    expect_error(cfg, &err, confd, text, "\"webhook_path\"", "webhook_path", "webhook_path");
}

/* ---- sbh_json_locate ---- */

static int locate(const char *text, const char *const *path, size_t depth, int *line, int *col)
{
    return sbh_json_locate(text, strlen(text), path, depth, line, col);
}

static void expect_located(const char *text, const char *const *path, size_t depth,
                           const char *needle)
{
    int line = 0, col = 0, want_line, want_col;
    CU_ASSERT_EQUAL(locate(text, path, depth, &line, &col), 0);
    pos_of(text, needle, &want_line, &want_col);
    CU_ASSERT_EQUAL(line, want_line);
    CU_ASSERT_EQUAL(col, want_col);
}

static void test_locate_nested(void)
{
    const char *text = "{\n"
                       "  \"b\": [1, {\"c\": 0}, \"c\"],\n"
                       "  \"a\": {\"x\": {\"c\": 1}, \"b\": {\n"
                       "\t\"c\" : {\"d\": null}}},\n"
                       "  \"c\": true\n"
                       "}";
    const char *abc[] = {"a", "b", "c"};
    expect_located(text, abc, 3, "\"c\" :");
    const char *c[] = {"c"};
    expect_located(text, c, 1, "\"c\": true");
    const char *a[] = {"a"};
    expect_located(text, a, 1, "\"a\"");
    int line = 0, col = 0;
    CU_ASSERT_EQUAL(locate(text, NULL, 0, &line, &col), 0);
    CU_ASSERT_EQUAL(line, 1);
    CU_ASSERT_EQUAL(col, 1);
}

static void test_locate_escaped_quotes(void)
{
    const char *text = "{\"s\": \"a \\\"}\\\" {\\\"t\\\": b\",\n"
                       " \"k\\\"ey\": {\"x\": 1},\n"
                       " \"k\\\\\": 2,\n"
                       " \"k\": {\"q\\\"\": 0,\n"
                       "   \"q\": 3}}";
    const char *t[] = {"t"};
    int line, col;
    CU_ASSERT_EQUAL(locate(text, t, 1, &line, &col), -1);
    const char *kq[] = {"k", "q"};
    expect_located(text, kq, 2, "\"q\":");
    const char *quoted[] = {"k\"ey", "x"};
    expect_located(text, quoted, 2, "\"x\"");
    const char *backslash[] = {"k\\"};
    expect_located(text, backslash, 1, "\"k\\\\\"");
    const char *qq[] = {"k", "q\""};
    expect_located(text, qq, 2, "\"q\\\"\"");
}

static void test_locate_unicode_escape(void)
{
    const char *text = "{\"caf\\u00e9\": {\"\\ud83d\\ude00\": 1}}";
    const char *path[] = {"caf\xc3\xa9", "\xf0\x9f\x98\x80"};
    expect_located(text, path, 2, "\"\\ud83d");
}

static void test_locate_missing(void)
{
    const char *text = "{\"a\": {\"b\": 1},\n \"n\": 5,\n \"s\": {\"x\": {}}}";
    int line = 0, col = 0;
    const char *nope[] = {"zz"};
    CU_ASSERT_EQUAL(locate(text, nope, 1, &line, &col), -1);
    const char *deep[] = {"s", "x", "y"};
    CU_ASSERT_EQUAL(locate(text, deep, 3, &line, &col), -1);
    /* Points at the deepest object found: the value of s.x. */
    int want_line, want_col;
    pos_of(text, "{}", &want_line, &want_col);
    CU_ASSERT_EQUAL(line, want_line);
    CU_ASSERT_EQUAL(col, want_col);
    const char *through_scalar[] = {"n", "m"};
    CU_ASSERT_EQUAL(locate(text, through_scalar, 2, &line, &col), -1);
    const char *nested_only[] = {"b"};
    CU_ASSERT_EQUAL(locate(text, nested_only, 1, &line, &col), -1);
    const char *truncated[] = {"a", "b"};
    CU_ASSERT_EQUAL(sbh_json_locate(text, 4, truncated, 2, &line, &col), -1);
}

/* ---- runner ---- */

static const struct sb_test tests[] = {
    {"defaults", test_defaults},
    {"default plugin_dir", test_default_plugin_dir},
    {"every key read", test_full_file},
    {"relative dirs resolved against the config dir", test_relative_dirs},
    {"conf.d deep merge in name order", test_confd_merge},
    {"conf.d adds plugins and instances", test_confd_adds_sections},
    {"env port beats file", test_env_port_beats_file},
    {"CLI beats env and file", test_cli_beats_env_and_file},
    {"CLI plugin_dir locates plugin files", test_cli_plugin_dir_used_for_files},
    {"ENABLE_<P> with '-' mapping", test_env_enable},
    {"ENABLE_<P> adds a provider", test_env_enable_new_provider},
    {"<P>_WEBHOOK_PATH and DATABASE_URL", test_env_webhook_path_and_db},
    {"bad env values", test_env_bad_values},
    {"overlong env names", test_env_long_names},
    {"invalid JSON position", test_invalid_json},
    {"top level not an object", test_not_an_object},
    {"missing config file", test_missing_file},
    {"unknown top-level key", test_unknown_top_level_key},
    {"unknown nested key", test_unknown_nested_key},
    {"unknown key under an escaped name", test_unknown_key_under_escaped_name},
    {"wrong types", test_wrong_types},
    {"port out of range", test_port_range},
    {"unknown enum values", test_unknown_log_level},
    {"enabled plugin file missing", test_missing_plugin_file},
    {"instance of unknown provider", test_instance_unknown_provider},
    {"instance of disabled provider", test_instance_disabled_provider},
    {"bad plugin and instance names", test_bad_names},
    {"bad webhook_path", test_bad_webhook_path},
    {"duplicate webhook_path", test_duplicate_webhook_path},
    {"bad conf.d file", test_bad_confd_file},
    {"merged error names the conf.d file", test_merged_error_names_confd_file},
    {"locate nested keys", test_locate_nested},
    {"locate keys with escaped quotes", test_locate_escaped_quotes},
    {"locate keys with \\u escapes", test_locate_unicode_escape},
    {"locate missing paths", test_locate_missing},
};

int main(void)
{
    static const struct sb_suite suite = {
        .name = "config", SB_TESTS(tests), .setup = test_setup, .teardown = test_teardown};
    return sb_run("test_config", &suite, 1);
}
