/*
 * Unit tests of the plugin loader (host/loader.c): private copies, dlopen,
 * entry symbol, ABI and descriptor checks, and file identities.
 *
 * Plugins: $SB_PLUGIN_DIR/echo.so and $SB_TEST_PLUGIN_DIR/{echo_v2,bad_abi,
 * init_fail,no_symbol}.so (set by `make check`; the defaults are the build
 * tree paths relative to tests/). Each test gets a fresh mkdtemp directory
 * with copies/ (the loader's copy_dir) and work/ (files the test replaces).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

#include <switchboard/switchboard.h>

#include "loader.h"

static char g_dir[256];
static char g_copies[PATH_MAX];
static char g_work[PATH_MAX];
static char g_why[512];

/* ---- helpers ---- */

static const char *plugin_path(const char *name)
{
    static char path[4][PATH_MAX];
    static int next;
    int is_echo = !strcmp(name, "echo");
    const char *dir = getenv(is_echo ? "SB_PLUGIN_DIR" : "SB_TEST_PLUGIN_DIR");
    if (!dir || !*dir)
        dir = is_echo ? "../build/plugins" : "plugins/.libs";
    char *out = path[next++ % 4];
    snprintf(out, PATH_MAX, "%s/%s.so", dir, name);
    return out;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
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

/* Install src as g_work/name by copying to a temp name and renaming over. */
static void install(const char *src, const char *name)
{
    char tmp[PATH_MAX + 64], dst[PATH_MAX + 64];
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", g_work, name);
    snprintf(dst, sizeof(dst), "%s/%s", g_work, name);
    CU_ASSERT_EQUAL_FATAL(copy_file(src, tmp), 0);
    CU_ASSERT_EQUAL_FATAL(rename(tmp, dst), 0);
}

static const char *work_path(const char *name)
{
    static char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", g_work, name);
    return path;
}

static size_t count_entries(const char *dir)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static struct sb_plugin *open_plugin(const char *file, const char *expect, unsigned generation)
{
    g_why[0] = '\0';
    return sbh_loader_open(file, g_copies, expect, generation, g_why, sizeof(g_why));
}

/* The open failed, said why (containing part) and left no copy behind. */
static void expect_refused(struct sb_plugin *gen, const char *part)
{
    CU_ASSERT_PTR_NULL(gen);
    CU_ASSERT_PTR_NOT_NULL(strstr(g_why, part));
    if (!strstr(g_why, part))
        fprintf(stderr, "\n  why: %s\n", g_why);
    CU_ASSERT_EQUAL(count_entries(g_copies), 0);
    sbh_loader_close(gen);
}

static void test_setup(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/sbh-test-loader.XXXXXX");
    int made = mkdtemp(g_dir) != NULL;
    snprintf(g_copies, sizeof(g_copies), "%s/copies", g_dir);
    snprintf(g_work, sizeof(g_work), "%s/work", g_dir);
    if (!made || mkdir(g_copies, 0700) < 0 || mkdir(g_work, 0700) < 0) {
        fprintf(stderr, "test_loader: cannot set up %s: %s\n", g_dir, strerror(errno));
        exit(1);
    }
}

static void test_teardown(void)
{
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int suite_init(void)
{
    const char *need[] = {"echo", "echo_v2", "bad_abi", "init_fail", "no_symbol"};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        if (!exists(plugin_path(need[i]))) {
            fprintf(stderr, "test_loader: %s not built\n", plugin_path(need[i]));
            return -1;
        }
    return 0;
}

/* ---- tests ---- */

static void test_open_echo(void)
{
    const char *file = plugin_path("echo");
    struct sb_plugin *gen = open_plugin(file, "echo", 7);
    CU_ASSERT_PTR_NOT_NULL_FATAL(gen);
    CU_ASSERT_PTR_NOT_NULL_FATAL(gen->desc);
    CU_ASSERT_STRING_EQUAL(gen->desc->name, "echo");
    CU_ASSERT_STRING_EQUAL(gen->desc->version, "1.0.0");
    CU_ASSERT_EQUAL(gen->desc->abi_major, 1);
    CU_ASSERT_EQUAL(gen->desc->abi_minor, SB_ABI_MINOR);
    CU_ASSERT_TRUE(gen->desc->capabilities & SB_CAP_WEBHOOK);
    CU_ASSERT_EQUAL(gen->generation, 7);
    CU_ASSERT_PTR_NOT_NULL(gen->dl);
    CU_ASSERT_EQUAL(gen->initialised, 0);
    CU_ASSERT_PTR_NULL(gen->slot);
    struct sbh_file_id now;
    CU_ASSERT_EQUAL_FATAL(sbh_file_id_read(file, &now), 0);
    CU_ASSERT_TRUE(sbh_file_id_equal(&gen->file_id, &now));
    sbh_loader_close(gen);
}

/* No expected name: any valid plugin is accepted. */
static void test_open_without_expect(void)
{
    struct sb_plugin *gen = open_plugin(plugin_path("echo_v2"), NULL, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(gen);
    CU_ASSERT_STRING_EQUAL(gen->desc->version, "2.0.0-test");
    sbh_loader_close(gen);
}

/* The loader never calls init: a plugin whose init fails loads fine. */
static void test_open_does_not_init(void)
{
    struct sb_plugin *gen = open_plugin(plugin_path("init_fail"), "echo", 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(gen);
    CU_ASSERT_STRING_EQUAL(gen->desc->version, "0.0.0-init-fail");
    CU_ASSERT_EQUAL(gen->initialised, 0);
    sbh_loader_close(gen);
}

static void test_private_copy(void)
{
    struct sb_plugin *gen = open_plugin(plugin_path("echo"), "echo", 3);
    CU_ASSERT_PTR_NOT_NULL_FATAL(gen);
    CU_ASSERT_PTR_NOT_NULL_FATAL(gen->copy_path);
    char copy[PATH_MAX];
    snprintf(copy, sizeof(copy), "%s", gen->copy_path);
    CU_ASSERT_EQUAL(strncmp(copy, g_copies, strlen(g_copies)), 0);
    CU_ASSERT_EQUAL(copy[strlen(g_copies)], '/');
    CU_ASSERT_TRUE(exists(copy));
    CU_ASSERT_EQUAL(count_entries(g_copies), 1);
    struct stat a, b;
    CU_ASSERT_EQUAL(stat(copy, &a), 0);
    CU_ASSERT_EQUAL(stat(plugin_path("echo"), &b), 0);
    CU_ASSERT_EQUAL(a.st_size, b.st_size);
    CU_ASSERT_NOT_EQUAL(a.st_ino, b.st_ino);
    sbh_loader_close(gen);
    CU_ASSERT_FALSE(exists(copy));
    CU_ASSERT_EQUAL(count_entries(g_copies), 0);
}

static void test_no_symbol(void)
{
    expect_refused(open_plugin(plugin_path("no_symbol"), "echo", 1), "switchboard_plugin_entry");
}

static void test_bad_abi(void)
{
    expect_refused(open_plugin(plugin_path("bad_abi"), "echo", 1), "ABI major 99");
}

static void test_name_mismatch(void)
{
    expect_refused(open_plugin(plugin_path("echo"), "telegram", 1), "\"telegram\"");
    CU_ASSERT_PTR_NOT_NULL(strstr(g_why, "\"echo\""));
}

static void test_not_elf(void)
{
    FILE *f = fopen(work_path("text.so"), "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("this is not an ELF object\n", f);
    fclose(f);
    expect_refused(open_plugin(work_path("text.so"), "echo", 1), "dlopen failed");
}

static void test_missing_file(void)
{
    expect_refused(open_plugin(work_path("absent.so"), "echo", 1), "cannot open");
    CU_ASSERT_PTR_NOT_NULL(strstr(g_why, "absent.so"));
}

static void test_missing_copy_dir(void)
{
    char why[512] = "";
    char dir[PATH_MAX + 16];
    snprintf(dir, sizeof(dir), "%s/nodir", g_dir);
    struct sb_plugin *gen = sbh_loader_open(plugin_path("echo"), dir, "echo", 1, why, sizeof(why));
    CU_ASSERT_PTR_NULL(gen);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "cannot create"));
    sbh_loader_close(gen);
}

/* Two generations from one path are two objects: glibc would hand back the
 * first for a second dlopen of the same path. */
static void test_two_generations_same_path(void)
{
    install(plugin_path("echo"), "echo.so");
    struct sb_plugin *g1 = open_plugin(work_path("echo.so"), "echo", 1);
    struct sb_plugin *g2 = open_plugin(work_path("echo.so"), "echo", 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g2);
    CU_ASSERT_PTR_NOT_EQUAL(g1->dl, g2->dl);
    CU_ASSERT_PTR_NOT_EQUAL(g1->desc, g2->desc);
    CU_ASSERT_STRING_NOT_EQUAL(g1->copy_path, g2->copy_path);
    CU_ASSERT_EQUAL(count_entries(g_copies), 2);
    sbh_loader_close(g1);
    /* The second generation still works after the first is gone. */
    CU_ASSERT_STRING_EQUAL(g2->desc->version, "1.0.0");
    CU_ASSERT_EQUAL(count_entries(g_copies), 1);
    sbh_loader_close(g2);
    CU_ASSERT_EQUAL(count_entries(g_copies), 0);
}

/* A replaced file at the same path loads as the new code, next to the old. */
static void test_replacement_loads_new_code(void)
{
    install(plugin_path("echo"), "echo.so");
    struct sb_plugin *g1 = open_plugin(work_path("echo.so"), "echo", 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g1);
    install(plugin_path("echo_v2"), "echo.so");
    struct sb_plugin *g2 = open_plugin(work_path("echo.so"), "echo", 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g2);
    CU_ASSERT_STRING_EQUAL(g1->desc->version, "1.0.0");
    CU_ASSERT_STRING_EQUAL(g2->desc->version, "2.0.0-test");
    CU_ASSERT_FALSE(sbh_file_id_equal(&g1->file_id, &g2->file_id));
    sbh_loader_close(g2);
    sbh_loader_close(g1);
}

static void test_file_id(void)
{
    struct sbh_file_id a, b, c, d;
    install(plugin_path("echo"), "p.so");
    CU_ASSERT_EQUAL_FATAL(sbh_file_id_read(work_path("p.so"), &a), 0);
    CU_ASSERT_EQUAL_FATAL(sbh_file_id_read(work_path("p.so"), &b), 0);
    CU_ASSERT_TRUE(sbh_file_id_equal(&a, &b));
    CU_ASSERT_TRUE(sbh_file_id_equal(&a, &a));
    /* The very same bytes, renamed over: a new file all the same. */
    install(plugin_path("echo"), "p.so");
    CU_ASSERT_EQUAL_FATAL(sbh_file_id_read(work_path("p.so"), &c), 0);
    CU_ASSERT_FALSE(sbh_file_id_equal(&a, &c));
    install(plugin_path("echo_v2"), "p.so");
    CU_ASSERT_EQUAL_FATAL(sbh_file_id_read(work_path("p.so"), &d), 0);
    CU_ASSERT_FALSE(sbh_file_id_equal(&c, &d));
    CU_ASSERT_EQUAL(sbh_file_id_read(work_path("absent.so"), &d), -1);
}

/* What the loader records is the file it copied, so a later rename-over shows. */
static void test_loaded_id_notices_rename(void)
{
    struct sbh_file_id now;
    install(plugin_path("echo"), "echo.so");
    struct sb_plugin *gen = open_plugin(work_path("echo.so"), "echo", 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(gen);
    CU_ASSERT_EQUAL(sbh_file_id_read(work_path("echo.so"), &now), 0);
    CU_ASSERT_TRUE(sbh_file_id_equal(&gen->file_id, &now));
    install(plugin_path("bad_abi"), "echo.so");
    CU_ASSERT_EQUAL(sbh_file_id_read(work_path("echo.so"), &now), 0);
    CU_ASSERT_FALSE(sbh_file_id_equal(&gen->file_id, &now));
    sbh_loader_close(gen);
}

static void test_close_null(void)
{
    sbh_loader_close(NULL);
    CU_ASSERT_EQUAL(count_entries(g_copies), 0);
}

/* ---- runner ---- */

static const struct sb_test tests[] = {
    {"open echo.so", test_open_echo},
    {"open without an expected name", test_open_without_expect},
    {"open does not call init", test_open_does_not_init},
    {"private copy made and removed", test_private_copy},
    {"no entry symbol", test_no_symbol},
    {"ABI major 99", test_bad_abi},
    {"expected name mismatch", test_name_mismatch},
    {"not an ELF object", test_not_elf},
    {"missing file", test_missing_file},
    {"missing copy dir", test_missing_copy_dir},
    {"two generations from one path", test_two_generations_same_path},
    {"replacement loads new code", test_replacement_loads_new_code},
    {"file identity", test_file_id},
    {"loaded identity notices a rename-over", test_loaded_id_notices_rename},
    {"close NULL", test_close_null},
};

int main(void)
{
    static const struct sb_suite suite = {.name = "loader",
                                          SB_TESTS(tests),
                                          .init = suite_init,
                                          .setup = test_setup,
                                          .teardown = test_teardown};
    return sb_run("test_loader", &suite, 1);
}
