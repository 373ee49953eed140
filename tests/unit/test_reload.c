/*
 * Unit tests of the registry's config diffing and in-place swaps
 * (host/registry.c), with a real event_base and configs loaded by
 * sbh_config_load from temp files.
 *
 * Each test gets a mkdtemp directory: switchboard.json, plugins/ (the
 * plugin_dir, holding copies of the built plugins, replaced by rename the
 * way a deploy does) and copies/ (the registry's private copies). Webhook
 * traffic is covered by the black-box tests, not here.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "runner.h"
#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "metrics.h"
#include "registry.h"
#include "runtime.h"

#define SWAPS "switchboard_plugin_swaps_total"

static char g_dir[256];
static char g_plugins[PATH_MAX];
static char g_copies[PATH_MAX];
static char g_path[PATH_MAX];
static char g_why[512];
static struct event_base *g_base;
static struct sbh_registry *g_reg;
static int g_swap_done_calls;

/* ---- files ---- */

static const char *built_plugin(const char *name)
{
    static char path[2][PATH_MAX];
    static int next;
    int is_echo = !strcmp(name, "echo");
    const char *dir = getenv(is_echo ? "SB_PLUGIN_DIR" : "SB_TEST_PLUGIN_DIR");
    if (!dir || !*dir)
        dir = is_echo ? "../build/plugins" : "plugins/.libs";
    char *out = path[next++ % 2];
    snprintf(out, PATH_MAX, "%s/%s.so", dir, name);
    return out;
}

static int copy_file(const char *src, const char *dst)
{
    char buf[65536];
    ssize_t n = 0;
    int in = open(src, O_RDONLY), out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0700);
    int rc = in >= 0 && out >= 0 ? 0 : -1;
    while (rc == 0 && (n = read(in, buf, sizeof(buf))) > 0)
        rc = write(out, buf, (size_t)n) == n ? 0 : -1;
    if (n < 0)
        rc = -1;
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) < 0)
        rc = -1;
    return rc;
}

/* Put the built plugin `built` into the plugin dir as `name`, by rename. */
static int install(const char *built, const char *name)
{
    char tmp[PATH_MAX + 64], dst[PATH_MAX + 64];
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", g_plugins, name);
    snprintf(dst, sizeof(dst), "%s/%s", g_plugins, name);
    if (copy_file(built_plugin(built), tmp) < 0)
        return -1;
    return rename(tmp, dst);
}

static size_t count_copies(void)
{
    size_t n = 0;
    DIR *d = opendir(g_copies);
    struct dirent *de;
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* ---- fixture ---- */

static void on_swap_done(void *arg)
{
    (*(int *)arg)++;
}

static int setup_dirs(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/sbh-test-reload.XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_plugins, sizeof(g_plugins), "%s/plugins", g_dir);
    snprintf(g_copies, sizeof(g_copies), "%s/copies", g_dir);
    snprintf(g_path, sizeof(g_path), "%s/switchboard.json", g_dir);
    if (mkdir(g_plugins, 0700) < 0 || install("echo", "echo.so") < 0 ||
        install("init_fail", "init_fail.so") < 0)
        return -1;
    return 0;
}

static void test_setup(void)
{
    g_base = NULL;
    g_reg = NULL;
    if (setup_dirs() == 0 && (g_base = event_base_new()) != NULL)
        g_reg = sbh_registry_new(g_base, g_copies);
    if (!g_reg) {
        fprintf(stderr, "test_reload: cannot set up the registry in %s: %s\n", g_dir,
                strerror(errno));
        exit(1);
    }
    g_swap_done_calls = 0;
    sbh_registry_set_swap_done(g_reg, on_swap_done, &g_swap_done_calls);
    sbh_metrics_reset();
}

static void test_teardown(void)
{
    sbh_registry_free(g_reg);
    g_reg = NULL;
    if (g_base)
        event_base_free(g_base);
    g_base = NULL;
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    sbh_metrics_reset();
}

static int suite_init(void)
{
    const char *need[] = {"echo", "echo_v2", "bad_abi", "init_fail", "no_symbol"};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        if (access(built_plugin(need[i]), R_OK) < 0) {
            fprintf(stderr, "test_reload: %s not built\n", built_plugin(need[i]));
            return -1;
        }
    return 0;
}

/* ---- configs and the registry ---- */

/* Load text as the config (it must be valid) and apply it; returns apply's result. */
static int apply_text(const char *text)
{
    char *env[] = {NULL};
    struct sbh_config_error err;
    FILE *f = fopen(g_path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    CU_ASSERT_EQUAL_FATAL(fclose(f), 0);
    struct sbh_config *cfg = sbh_config_load(g_path, NULL, env, &err);
    if (!cfg)
        fprintf(stderr, "\n  config rejected: %s:%d:%d %s: %s\n", err.file, err.line, err.column,
                err.key, err.reason);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    g_why[0] = '\0';
    int rc = sbh_registry_apply(g_reg, cfg, g_why, sizeof(g_why));
    sbh_config_free(cfg);
    return rc;
}

/* A config with echo (enabled or not, from file) and instance demo with prefix. */
static int apply_echo(int enabled, const char *file, const char *prefix)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "{\"plugin_dir\": \"plugins\",\n"
             " \"plugins\": {\"echo\": {\"enabled\": %s, \"file\": \"%s\"}},\n"
             " \"instances\": {\"demo\": {\"provider\": \"echo\", \"enabled\": %s,\n"
             "   \"settings\": {\"prefix\": \"%s\"}}}}\n",
             enabled ? "true" : "false", file, enabled ? "true" : "false", prefix);
    return apply_text(text);
}

static void pump(void)
{
    for (int i = 0; i < 5; i++)
        event_base_loop(g_base, EVLOOP_NONBLOCK);
}

/* The providers entry named name (a new reference), or NULL. */
static json_t *provider(const char *name)
{
    json_t *all = sbh_registry_providers(g_reg), *found = NULL, *p;
    size_t i;
    json_array_foreach (all, i, p) {
        if (!strcmp(json_string_value(json_object_get(p, "name")), name))
            found = json_incref(p);
    }
    json_decref(all);
    return found;
}

static size_t n_providers(void)
{
    json_t *all = sbh_registry_providers(g_reg);
    size_t n = json_array_size(all);
    json_decref(all);
    return n;
}

static json_int_t echo_generation(void)
{
    json_t *p = provider("echo");
    json_int_t g = json_integer_value(json_object_get(p, "generation"));
    json_decref(p);
    return g;
}

/* Whether echo's provider entry has field equal to the string want. */
static int echo_has(const char *field, const char *want)
{
    json_t *p = provider("echo");
    const char *got = json_string_value(json_object_get(p, field));
    int same = got && !strcmp(got, want);
    if (!same)
        fprintf(stderr, "\n  echo %s: %s, expected %s\n", field, got ? got : "(none)", want);
    json_decref(p);
    return same;
}

/* Echo's instance ids, comma-separated, into out. */
static const char *echo_instances(char *out, size_t len)
{
    json_t *p = provider("echo"), *id;
    size_t i, off = 0;
    out[0] = '\0';
    json_array_foreach (json_object_get(p, "instances"), i, id) {
        off += (size_t)snprintf(out + off, len - off, "%s%s", i ? "," : "", json_string_value(id));
        if (off >= len)
            break;
    }
    json_decref(p);
    return out;
}

/* The live instance (white box: registry internals from runtime.h). */
static struct sb_instance *live_instance(const char *id)
{
    struct sbh_slot *slot;
    struct sb_instance *inst;
    TAILQ_FOREACH (slot, &g_reg->slots, link)
        TAILQ_FOREACH (inst, &slot->instances, link)
            if (!strcmp(inst->id, id))
                return inst;
    return NULL;
}

static double swaps(const char *result)
{
    return sbh_metrics_get(SWAPS, "result", result, NULL);
}

static int ready(char *state, size_t len)
{
    json_t *plugins = NULL;
    int r = sbh_registry_ready(g_reg, &plugins);
    const char *s = json_string_value(json_object_get(plugins, "echo"));
    snprintf(state, len, "%s", s ? s : "");
    json_decref(plugins);
    return r;
}

/* ---- tests ---- */

static void test_first_apply(void)
{
    char buf[256];
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    CU_ASSERT_EQUAL_FATAL(n_providers(), 1);
    CU_ASSERT_TRUE(echo_has("state", "running"));
    CU_ASSERT_TRUE(echo_has("version", "1.0.0"));
    CU_ASSERT_TRUE(echo_has("abi", "1.1"));
    CU_ASSERT_TRUE(echo_has("webhook_path", "/webhook/echo"));
    CU_ASSERT_TRUE(echo_generation() >= 1);
    CU_ASSERT_STRING_EQUAL(echo_instances(buf, sizeof(buf)), "demo");
    CU_ASSERT_EQUAL(sbh_registry_loaded(g_reg), 1);
    CU_ASSERT_EQUAL(ready(buf, sizeof(buf)), 1);
    CU_ASSERT_STRING_EQUAL(buf, "running");
    struct sb_instance *inst = live_instance("demo");
    CU_ASSERT_PTR_NOT_NULL_FATAL(inst);
    CU_ASSERT_PTR_NOT_NULL(inst->gen);
    CU_ASSERT_EQUAL(count_copies(), 1);
    CU_ASSERT_EQUAL(sbh_registry_swapping(g_reg), 0);
}

static void test_unchanged_apply_keeps_generation(void)
{
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    json_int_t gen = echo_generation();
    struct sb_plugin *code = live_instance("demo")->gen;
    CU_ASSERT_EQUAL(apply_echo(1, "echo.so", "a"), 0);
    pump();
    CU_ASSERT_EQUAL(echo_generation(), gen);
    CU_ASSERT_PTR_EQUAL(live_instance("demo")->gen, code);
    CU_ASSERT_EQUAL(count_copies(), 1);
    CU_ASSERT_EQUAL(swaps("ok") + swaps("refused"), 0);
}

static void test_instance_changes_keep_generation(void)
{
    char buf[256];
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    json_int_t gen = echo_generation();
    CU_ASSERT_EQUAL(apply_echo(1, "echo.so", "b"), 0);
    CU_ASSERT_EQUAL(echo_generation(), gen);
    struct sb_instance *inst = live_instance("demo");
    CU_ASSERT_PTR_NOT_NULL_FATAL(inst);
    CU_ASSERT_PTR_NOT_NULL(inst->gen);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(inst->settings, "prefix")), "b");
    /* Another instance comes and goes; the plugin stays. */
    CU_ASSERT_EQUAL(apply_text("{\"plugin_dir\": \"plugins\", \"plugins\": {\"echo\": {}},\n"
                               " \"instances\": {\"demo\": {\"provider\": \"echo\"},\n"
                               "   \"two\": {\"provider\": \"echo\"}}}"),
                    0);
    CU_ASSERT_STRING_EQUAL(echo_instances(buf, sizeof(buf)), "demo,two");
    CU_ASSERT_EQUAL(apply_text("{\"plugin_dir\": \"plugins\", \"plugins\": {\"echo\": {}},\n"
                               " \"instances\": {\"two\": {\"provider\": \"echo\"}}}"),
                    0);
    CU_ASSERT_STRING_EQUAL(echo_instances(buf, sizeof(buf)), "two");
    CU_ASSERT_EQUAL(echo_generation(), gen);
    CU_ASSERT_PTR_NULL(live_instance("demo"));
}

static void test_disable_and_enable(void)
{
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    json_int_t gen = echo_generation();
    CU_ASSERT_EQUAL(apply_echo(0, "echo.so", "a"), 0);
    CU_ASSERT_EQUAL(n_providers(), 0);
    CU_ASSERT_EQUAL(sbh_registry_loaded(g_reg), 0);
    CU_ASSERT_EQUAL(count_copies(), 0);
    CU_ASSERT_PTR_NULL(live_instance("demo"));
    CU_ASSERT_EQUAL(apply_echo(1, "echo.so", "a"), 0);
    CU_ASSERT_EQUAL_FATAL(n_providers(), 1);
    CU_ASSERT_TRUE(echo_generation() > gen);
    CU_ASSERT_TRUE(echo_has("state", "running"));
    CU_ASSERT_PTR_NOT_NULL(live_instance("demo"));
}

/* A changed webhook_path is taken over without reloading the plugin. */
static void test_webhook_path_change(void)
{
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    json_int_t gen = echo_generation();
    CU_ASSERT_EQUAL(apply_text("{\"plugin_dir\": \"plugins\",\n"
                               " \"plugins\": {\"echo\": {\"webhook_path\": \"/in/e\"}}}"),
                    0);
    CU_ASSERT_TRUE(echo_has("webhook_path", "/in/e"));
    CU_ASSERT_EQUAL(echo_generation(), gen);
}

/* A changed plugin config section reloads the plugin. */
static void test_plugin_config_change_reloads(void)
{
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    json_int_t gen = echo_generation();
    CU_ASSERT_EQUAL(apply_text("{\"plugin_dir\": \"plugins\",\n"
                               " \"plugins\": {\"echo\": {\"config\": {\"x\": 1}}}}"),
                    0);
    pump();
    CU_ASSERT_TRUE(echo_generation() > gen);
    CU_ASSERT_TRUE(echo_has("state", "running"));
}

static void test_swap(void)
{
    char buf[256];
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    json_int_t gen = echo_generation();
    CU_ASSERT_EQUAL_FATAL(install("echo_v2", "echo.so"), 0);
    CU_ASSERT_EQUAL(apply_echo(1, "echo.so", "a"), 0);
    pump();
    CU_ASSERT_EQUAL(sbh_registry_swapping(g_reg), 0);
    CU_ASSERT_TRUE(echo_has("version", "2.0.0-test"));
    CU_ASSERT_TRUE(echo_has("state", "running"));
    CU_ASSERT_TRUE(echo_generation() > gen);
    CU_ASSERT_STRING_EQUAL(echo_instances(buf, sizeof(buf)), "demo");
    struct sb_instance *inst = live_instance("demo");
    CU_ASSERT_PTR_NOT_NULL_FATAL(inst);
    CU_ASSERT_PTR_NOT_NULL_FATAL(inst->gen);
    CU_ASSERT_STRING_EQUAL(inst->gen->desc->version, "2.0.0-test");
    CU_ASSERT_EQUAL(swaps("ok"), 1);
    CU_ASSERT_EQUAL(swaps("refused"), 0);
    CU_ASSERT_EQUAL(g_swap_done_calls, 1);
    CU_ASSERT_EQUAL(count_copies(), 1);
    /* Applying again after the swap changes nothing more. */
    gen = echo_generation();
    CU_ASSERT_EQUAL(apply_echo(1, "echo.so", "a"), 0);
    pump();
    CU_ASSERT_EQUAL(echo_generation(), gen);
    CU_ASSERT_EQUAL(swaps("ok"), 1);
}

/* A refused replacement keeps the old generation and is counted once. */
static void expect_refused_swap(const char *bad, double refused_before)
{
    json_int_t gen = echo_generation();
    CU_ASSERT_EQUAL_FATAL(install(bad, "echo.so"), 0);
    CU_ASSERT_EQUAL(apply_echo(1, "echo.so", "a"), 0);
    pump();
    CU_ASSERT_EQUAL(echo_generation(), gen);
    CU_ASSERT_TRUE(echo_has("version", "1.0.0"));
    CU_ASSERT_TRUE(echo_has("state", "running"));
    CU_ASSERT_EQUAL(swaps("refused"), refused_before + 1);
    CU_ASSERT_PTR_NOT_NULL(live_instance("demo") ? live_instance("demo")->gen : NULL);
    /* The same file is not retried on the next apply. */
    CU_ASSERT_EQUAL(apply_echo(1, "echo.so", "a"), 0);
    pump();
    CU_ASSERT_EQUAL(swaps("refused"), refused_before + 1);
    CU_ASSERT_EQUAL(count_copies(), 1);
}

static void test_refused_swaps(void)
{
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    expect_refused_swap("bad_abi", 0);
    expect_refused_swap("init_fail", 1);
    expect_refused_swap("no_symbol", 2);
    CU_ASSERT_EQUAL(swaps("ok"), 0);
    /* A good replacement afterwards is swapped in. */
    CU_ASSERT_EQUAL_FATAL(install("echo_v2", "echo.so"), 0);
    CU_ASSERT_EQUAL(apply_echo(1, "echo.so", "a"), 0);
    pump();
    CU_ASSERT_TRUE(echo_has("version", "2.0.0-test"));
    CU_ASSERT_EQUAL(swaps("ok"), 1);
}

/* After the first apply, a newly enabled plugin that fails fails the apply. */
static void test_new_plugin_init_fails(void)
{
    CU_ASSERT_EQUAL_FATAL(apply_echo(0, "echo.so", "a"), 0);
    CU_ASSERT_EQUAL(apply_echo(1, "init_fail.so", "a"), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(g_why, "echo"));
    CU_ASSERT_PTR_NOT_NULL(strstr(g_why, "init failed"));
    CU_ASSERT_EQUAL(n_providers(), 0);
    CU_ASSERT_EQUAL(sbh_registry_loaded(g_reg), 0);
    CU_ASSERT_EQUAL(count_copies(), 0);
    CU_ASSERT_PTR_NULL(live_instance("demo"));
}

/* A running plugin pointed at a failing file: the apply fails, nothing moves. */
static void test_changed_file_init_fails(void)
{
    char buf[256];
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    json_int_t gen = echo_generation();
    CU_ASSERT_EQUAL(apply_text("{\"plugin_dir\": \"plugins\",\n"
                               " \"plugins\": {\"echo\": {\"file\": \"init_fail.so\"}},\n"
                               " \"instances\": {\"demo\": {\"provider\": \"echo\"},\n"
                               "   \"more\": {\"provider\": \"echo\"}}}"),
                    -1);
    pump();
    CU_ASSERT_PTR_NOT_NULL(strstr(g_why, "init failed"));
    CU_ASSERT_EQUAL(echo_generation(), gen);
    CU_ASSERT_TRUE(echo_has("version", "1.0.0"));
    CU_ASSERT_STRING_EQUAL(echo_instances(buf, sizeof(buf)), "demo");
    CU_ASSERT_EQUAL(count_copies(), 1);
    /* The old config still applies as a no-op. */
    CU_ASSERT_EQUAL(apply_echo(1, "echo.so", "a"), 0);
    CU_ASSERT_EQUAL(echo_generation(), gen);
}

/* A failed apply must not leave a half-applied plugin config behind: echo's
 * new config is loaded in phase one, then "other" fails. */
static void test_failed_apply_forgets_prepared_config(void)
{
    CU_ASSERT_EQUAL_FATAL(install("echo", "other.so"), 0);
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "echo.so", "a"), 0);
    json_int_t gen = echo_generation();
    CU_ASSERT_EQUAL(apply_text("{\"plugin_dir\": \"plugins\", \"plugins\": {\n"
                               "  \"echo\": {\"config\": {\"x\": 1}},\n"
                               "  \"other\": {\"enabled\": true}}}"),
                    -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(g_why, "other"));
    CU_ASSERT_EQUAL(echo_generation(), gen);
    CU_ASSERT_PTR_NULL(provider("other"));
    /* The same echo change without the bad plugin must now reload echo. */
    CU_ASSERT_EQUAL(apply_text("{\"plugin_dir\": \"plugins\",\n"
                               " \"plugins\": {\"echo\": {\"config\": {\"x\": 1}}}}"),
                    0);
    pump();
    CU_ASSERT_TRUE(echo_generation() > gen);
}

/* At first start a plugin that fails stays as a failed slot; not ready. */
static void test_first_apply_failure(void)
{
    char buf[256];
    CU_ASSERT_EQUAL_FATAL(apply_echo(1, "init_fail.so", "a"), 0);
    CU_ASSERT_EQUAL_FATAL(n_providers(), 1);
    CU_ASSERT_TRUE(echo_has("state", "failed"));
    json_t *p = provider("echo");
    CU_ASSERT_PTR_NOT_NULL(strstr(json_string_value(json_object_get(p, "error")) ?: "", "init"));
    json_decref(p);
    CU_ASSERT_EQUAL(ready(buf, sizeof(buf)), 0);
    CU_ASSERT_STRING_EQUAL(buf, "failed");
    CU_ASSERT_EQUAL(sbh_registry_loaded(g_reg), 0);
    CU_ASSERT_EQUAL(count_copies(), 0);
    struct sb_instance *inst = live_instance("demo");
    CU_ASSERT_PTR_NOT_NULL_FATAL(inst);
    CU_ASSERT_PTR_NULL(inst->gen);
    /* A good file put in its place brings it up. */
    CU_ASSERT_EQUAL_FATAL(install("echo", "init_fail.so"), 0);
    CU_ASSERT_EQUAL(apply_echo(1, "init_fail.so", "a"), 0);
    pump();
    CU_ASSERT_TRUE(echo_has("state", "running"));
    CU_ASSERT_EQUAL(ready(buf, sizeof(buf)), 1);
    CU_ASSERT_PTR_NOT_NULL(live_instance("demo")->gen);
}

/* ---- runner ---- */

static const struct sb_test tests[] = {
    {"first apply runs echo with its instance", test_first_apply},
    {"unchanged apply keeps the generation", test_unchanged_apply_keeps_generation},
    {"instance changes keep the generation", test_instance_changes_keep_generation},
    {"disable then enable", test_disable_and_enable},
    {"webhook_path change", test_webhook_path_change},
    {"plugin config change reloads", test_plugin_config_change_reloads},
    {"replaced .so is swapped", test_swap},
    {"refused replacements keep the old generation", test_refused_swaps},
    {"newly enabled plugin failing fails the apply", test_new_plugin_init_fails},
    {"changed file failing fails the apply", test_changed_file_init_fails},
    {"failed apply forgets prepared config", test_failed_apply_forgets_prepared_config},
    {"first apply failure: failed slot, not ready", test_first_apply_failure},
};

int main(void)
{
    static const struct sb_suite suite = {.name = "reload",
                                          SB_TESTS(tests),
                                          .init = suite_init,
                                          .setup = test_setup,
                                          .teardown = test_teardown};
    return sb_run("test_reload", &suite, 1);
}
