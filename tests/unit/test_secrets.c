/*
 * Unit tests of secrets at rest and API keys (host/secrets.c).
 *
 * Rings come from the environment form with fixed keys, or from key files in
 * a fresh mkdtemp directory per test, removed afterwards.
 */
#include <dirent.h>
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
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "secrets.h"

/* Bytes 0..31 and 100..131, and 31 bytes (one short). */
#define KEY_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY_B "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="
#define KEY_SHORT "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="

static char g_dir[256];
static char g_keys[PATH_MAX]; /* g_dir/keys */

/* ---- fixture helpers ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void test_setup(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/sbh-test-secrets.XXXXXX");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "test_secrets: mkdtemp: %s\n", strerror(errno));
        exit(1);
    }
    snprintf(g_keys, sizeof(g_keys), "%s/keys", g_dir);
}

static void test_teardown(void)
{
    if (g_dir[0])
        nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    g_dir[0] = '\0';
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT(fputs(text, f) >= 0);
    CU_ASSERT_EQUAL_FATAL(fclose(f), 0);
    CU_ASSERT_EQUAL_FATAL(chmod(path, mode), 0);
}

/* Whole file into buf; its length, or -1. */
static long read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (long)n;
}

static unsigned file_mode(const char *path)
{
    struct stat st;
    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    return (unsigned)(st.st_mode & 07777);
}

static struct sbh_keyring *env_ring(const char *value)
{
    char why[256] = "";
    struct sbh_keyring *ring = sbh_keyring_from_env(value, why, sizeof(why));
    if (!ring)
        fprintf(stderr, "\n  from_env: %s\n", why);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ring);
    return ring;
}

static struct sbh_keyring *file_ring(const char *path)
{
    char why[256] = "";
    struct sbh_keyring *ring = sbh_keyring_load_file(path, why, sizeof(why));
    if (!ring)
        fprintf(stderr, "\n  load_file: %s\n", why);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ring);
    return ring;
}

/* Open must fail; why is returned in buf. */
static void expect_no_open(const struct sbh_keyring *ring, const char *aad, const char *sealed,
                           char *why, size_t why_len)
{
    size_t len = 12345;
    why[0] = '\0';
    unsigned char *plain = sbh_secret_open(ring, aad, sealed, &len, why, why_len);
    CU_ASSERT_PTR_NULL(plain);
    CU_ASSERT(why[0] != '\0');
    free(plain);
}

/* Open must give back exactly want[0..want_len). */
static void expect_open(const struct sbh_keyring *ring, const char *aad, const char *sealed,
                        const void *want, size_t want_len)
{
    char why[256] = "";
    size_t len = 0;
    unsigned char *plain = sbh_secret_open(ring, aad, sealed, &len, why, sizeof(why));
    if (!plain)
        fprintf(stderr, "\n  open: %s\n", why);
    CU_ASSERT_PTR_NOT_NULL_FATAL(plain);
    CU_ASSERT_EQUAL(len, want_len);
    CU_ASSERT(len == want_len && memcmp(plain, want, want_len) == 0);
    CU_ASSERT_EQUAL(plain[len], '\0');
    OPENSSL_cleanse(plain, len);
    free(plain);
}

/* The base64 payload after "sb1:<id>:". */
static const char *payload_of(const char *sealed)
{
    const char *p = strchr(sealed + 4, ':');
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    return p + 1;
}

/* Decode the payload of sealed into raw; the byte count. */
static size_t decode_payload(const char *sealed, unsigned char *raw, size_t cap)
{
    const char *b64 = payload_of(sealed);
    size_t n = strlen(b64);
    CU_ASSERT_FATAL(n % 4 == 0 && n / 4 * 3 <= cap);
    int got = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)n);
    CU_ASSERT_FATAL(got >= 0);
    while (n && b64[n - 1] == '=') {
        n--;
        got--;
    }
    return (size_t)got;
}

/* Entries in dir other than "." and "..". */
static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

/* ---- sealing ---- */

static void round_trip(size_t len)
{
    struct sbh_keyring *ring = env_ring("main:" KEY_A);
    unsigned char *plain = malloc(len ? len : 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(plain);
    for (size_t i = 0; i < len; i++)
        plain[i] = (unsigned char)(i * 7 + 3);
    char *sealed = sbh_secret_seal(ring, "instance-1", plain, len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sealed);
    CU_ASSERT_EQUAL(strncmp(sealed, "sb1:main:", 9), 0);
    /* ASCII only: it goes in a TEXT column. */
    for (const char *p = sealed; *p; p++)
        CU_ASSERT(*p > ' ' && *p < 127);
    unsigned char raw[12 + 65536 + 16 + 3];
    CU_ASSERT_EQUAL(decode_payload(sealed, raw, sizeof(raw)), 12 + len + 16);
    expect_open(ring, "instance-1", sealed, plain, len);
    free(sealed);
    free(plain);
    sbh_keyring_free(ring);
}

static void test_round_trip_empty(void)
{
    round_trip(0);
}

static void test_round_trip_one_byte(void)
{
    round_trip(1);
}

static void test_round_trip_64k(void)
{
    round_trip(65536);
}

static void test_nonce_differs(void)
{
    struct sbh_keyring *ring = env_ring("main:" KEY_A);
    char *s1 = sbh_secret_seal(ring, "x", "same text", 9);
    char *s2 = sbh_secret_seal(ring, "x", "same text", 9);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s2);
    CU_ASSERT_STRING_NOT_EQUAL(s1, s2);
    unsigned char r1[64], r2[64];
    CU_ASSERT_EQUAL(decode_payload(s1, r1, sizeof(r1)), 12 + 9 + 16);
    CU_ASSERT_EQUAL(decode_payload(s2, r2, sizeof(r2)), 12 + 9 + 16);
    CU_ASSERT_NOT_EQUAL(memcmp(r1, r2, 12), 0);
    expect_open(ring, "x", s1, "same text", 9);
    expect_open(ring, "x", s2, "same text", 9);
    free(s1);
    free(s2);
    sbh_keyring_free(ring);
}

/* Flip one bit in every byte of nonce, ciphertext and tag in turn. */
static void test_tamper_payload_bytes(void)
{
    struct sbh_keyring *ring = env_ring("main:" KEY_A);
    char *sealed = sbh_secret_seal(ring, "row-7", "secret!", 7);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sealed);
    unsigned char raw[64];
    size_t n = decode_payload(sealed, raw, sizeof(raw));
    CU_ASSERT_EQUAL_FATAL(n, 12 + 7 + 16);
    for (size_t i = 0; i < n; i++) {
        char forged[128], why[256];
        int head = snprintf(forged, sizeof(forged), "sb1:main:");
        raw[i] ^= 0x01;
        EVP_EncodeBlock((unsigned char *)forged + head, raw, (int)n);
        raw[i] ^= 0x01;
        expect_no_open(ring, "row-7", forged, why, sizeof(why));
    }
    /* Untouched, it still opens: the failures above were the tampering. */
    expect_open(ring, "row-7", sealed, "secret!", 7);
    free(sealed);
    sbh_keyring_free(ring);
}

/* The next character of the alphabet after c, wrapping round; '=' becomes 'A'. */
static char other_char(const char *alphabet, char c)
{
    const char *at = strchr(alphabet, c);
    return at && at[1] ? at[1] : alphabet[0];
}

/* Any other character in the text, including ones only padding bits depend on. */
static void test_tamper_text_chars(void)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    struct sbh_keyring *ring = env_ring("main:" KEY_A);
    /* 12 + 0 + 16 = 28 bytes: the text ends in "==", leaving 4 spare bits. */
    char *sealed = sbh_secret_seal(ring, "", "", 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sealed);
    size_t start = (size_t)(payload_of(sealed) - sealed), len = strlen(sealed);
    CU_ASSERT_EQUAL(sealed[len - 1], '=');
    for (size_t i = start; i < len; i++) {
        char forged[128], why[256];
        snprintf(forged, sizeof(forged), "%s", sealed);
        forged[i] = other_char(alphabet, sealed[i]);
        expect_no_open(ring, "", forged, why, sizeof(why));
    }
    char why[256], cut[128];
    snprintf(cut, sizeof(cut), "%.*s", (int)(len - 4), sealed);
    expect_no_open(ring, "", cut, why, sizeof(why));
    expect_no_open(ring, "", "sb1:main:", why, sizeof(why));
    expect_no_open(ring, "", "sb2:main:AAAA", why, sizeof(why));
    expect_open(ring, "", sealed, "", 0);
    free(sealed);
    sbh_keyring_free(ring);
}

/* A ciphertext relabelled with another key id of the same ring does not open. */
static void test_changed_key_id(void)
{
    write_file(g_keys, "a " KEY_A "\nb " KEY_A "\n", 0600);
    struct sbh_keyring *ring = file_ring(g_keys);
    char *sealed = sbh_secret_seal(ring, "row", "text", 4);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sealed);
    CU_ASSERT_EQUAL_FATAL(strncmp(sealed, "sb1:a:", 6), 0);
    char forged[256], why[256];
    snprintf(forged, sizeof(forged), "sb1:b:%s", sealed + 6);
    /* Same key bytes under both ids: only the authenticated id tells them apart. */
    expect_no_open(ring, "row", forged, why, sizeof(why));
    CU_ASSERT_PTR_NULL(strstr(why, "unknown"));
    expect_open(ring, "row", sealed, "text", 4);
    free(sealed);
    sbh_keyring_free(ring);
}

static void test_changed_aad(void)
{
    struct sbh_keyring *ring = env_ring("main:" KEY_A);
    char *sealed = sbh_secret_seal(ring, "instance-1", "token", 5);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sealed);
    char why[256];
    expect_no_open(ring, "instance-2", sealed, why, sizeof(why));
    expect_no_open(ring, "instance-", sealed, why, sizeof(why));
    expect_no_open(ring, "", sealed, why, sizeof(why));
    expect_no_open(ring, NULL, sealed, why, sizeof(why));
    expect_open(ring, "instance-1", sealed, "token", 5);
    free(sealed);
    sbh_keyring_free(ring);
}

static void test_unknown_key_id(void)
{
    struct sbh_keyring *mine = env_ring("main:" KEY_A);
    struct sbh_keyring *theirs = env_ring("other-key_7:" KEY_A);
    char *sealed = sbh_secret_seal(theirs, "", "x", 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sealed);
    char why[256], id[64];
    CU_ASSERT_EQUAL(sbh_secret_key_id(sealed, id, sizeof(id)), 0);
    CU_ASSERT_STRING_EQUAL(id, "other-key_7");
    CU_ASSERT_EQUAL(sbh_secret_key_id(sealed, id, 5), -1);
    CU_ASSERT_EQUAL(sbh_secret_key_id("sb1:bad id:AAAA", id, sizeof(id)), -1);
    CU_ASSERT_EQUAL(sbh_secret_key_id("plain text", id, sizeof(id)), -1);
    expect_no_open(mine, "", sealed, why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "\"other-key_7\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "unknown"));
    free(sealed);
    sbh_keyring_free(mine);
    sbh_keyring_free(theirs);
}

static void test_two_key_ring(void)
{
    write_file(g_keys,
               "# rotated 2024-05-01\n"
               "new " KEY_B "\n"
               "\n"
               "  old\t" KEY_A "  \n",
               0600);
    struct sbh_keyring *both = file_ring(g_keys);
    struct sbh_keyring *old = env_ring("old:" KEY_A);
    struct sbh_keyring *new = env_ring("new:" KEY_B);
    CU_ASSERT_STRING_EQUAL(sbh_keyring_current_id(both), "new");
    char *by_old = sbh_secret_seal(old, "r", "from old", 8);
    char *by_new = sbh_secret_seal(new, "r", "from new", 8);
    char *by_both = sbh_secret_seal(both, "r", "from both", 9);
    CU_ASSERT_PTR_NOT_NULL_FATAL(by_old);
    CU_ASSERT_PTR_NOT_NULL_FATAL(by_new);
    CU_ASSERT_PTR_NOT_NULL_FATAL(by_both);
    expect_open(both, "r", by_old, "from old", 8);
    expect_open(both, "r", by_new, "from new", 8);
    char id[64];
    CU_ASSERT_EQUAL(sbh_secret_key_id(by_both, id, sizeof(id)), 0);
    CU_ASSERT_STRING_EQUAL(id, "new");
    expect_open(new, "r", by_both, "from both", 9);
    free(by_old);
    free(by_new);
    free(by_both);
    sbh_keyring_free(both);
    sbh_keyring_free(old);
    sbh_keyring_free(new);
}

/* ---- key files ---- */

static void expect_load_fails(const char *text, mode_t mode, const char *part1, const char *part2)
{
    char why[256] = "";
    write_file(g_keys, text, mode);
    struct sbh_keyring *ring = sbh_keyring_load_file(g_keys, why, sizeof(why));
    CU_ASSERT_PTR_NULL(ring);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, part1));
    if (part2)
        CU_ASSERT_PTR_NOT_NULL(strstr(why, part2));
    /* Never the key text itself. */
    CU_ASSERT_PTR_NULL(strstr(why, "AAECAwQF"));
    if (ring || !strstr(why, part1) || (part2 && !strstr(why, part2)))
        fprintf(stderr, "\n  got: %s\n", why);
    sbh_keyring_free(ring);
    unlink(g_keys);
}

static void test_key_file_mode(void)
{
    expect_load_fails("k1 " KEY_A "\n", 0644, "0644", "chmod 600");
    expect_load_fails("k1 " KEY_A "\n", 0640, "0640", "chmod 600");
    expect_load_fails("k1 " KEY_A "\n", 0602, "0602", "chmod 600");
    write_file(g_keys, "k1 " KEY_A "\n", 0400);
    struct sbh_keyring *ring = file_ring(g_keys);
    sbh_keyring_free(ring);
}

static void test_key_file_malformed(void)
{
    expect_load_fails("# keys\nk1 " KEY_A "\nk2\n", 0600, "line 3", NULL);
    expect_load_fails("k1 " KEY_A " extra\n", 0600, "line 1", NULL);
    expect_load_fails("\n\nk1 " KEY_SHORT "\n", 0600, "line 3", "32 bytes");
    expect_load_fails("k1 AAECAwQF*gcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", 0600, "line 1",
                      "32 bytes");
    expect_load_fails("k1 " KEY_A "\nk.2 " KEY_A "\n", 0600, "line 2", "key id");
    expect_load_fails("abcdefghijklmnopqrstuvwxyz0123456 " KEY_A "\n", 0600, "line 1", "key id");
    expect_load_fails("k1 " KEY_A "\nk1 " KEY_B "\n", 0600, "line 2", "duplicate");
    expect_load_fails("# nothing here\n\n", 0600, "no keys", NULL);
    char why[256] = "";
    CU_ASSERT_PTR_NULL(sbh_keyring_load_file("/nonexistent/keys", why, sizeof(why)));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "/nonexistent/keys"));
}

static void test_key_file_good(void)
{
    /* A 32-character id is the longest allowed; no trailing newline. */
    write_file(g_keys, "# master keys\n\nabcdefghijklmnopqrstuvwxyz-_0123 " KEY_A "\r\nk2 " KEY_B,
               0600);
    struct sbh_keyring *ring = file_ring(g_keys);
    CU_ASSERT_STRING_EQUAL(sbh_keyring_current_id(ring), "abcdefghijklmnopqrstuvwxyz-_0123");
    /* The file's key is the env key's: what one seals, the other opens. */
    struct sbh_keyring *same = env_ring("abcdefghijklmnopqrstuvwxyz-_0123:" KEY_A);
    char *sealed = sbh_secret_seal(same, "a", "b", 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sealed);
    expect_open(ring, "a", sealed, "b", 1);
    free(sealed);
    sbh_keyring_free(same);
    sbh_keyring_free(ring);
}

static void test_env_form(void)
{
    struct sbh_keyring *ring = env_ring("prod-1:" KEY_A);
    CU_ASSERT_STRING_EQUAL(sbh_keyring_current_id(ring), "prod-1");
    sbh_keyring_free(ring);
    const char *bad[] = {"",
                         "prod-1",
                         "prod-1:",
                         ":" KEY_A,
                         "pr od:" KEY_A,
                         "p:" KEY_SHORT,
                         "p:" KEY_A "\n",
                         "p:" KEY_A "AAAA"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char why[256] = "";
        ring = sbh_keyring_from_env(bad[i], why, sizeof(why));
        CU_ASSERT_PTR_NULL(ring);
        CU_ASSERT_PTR_NOT_NULL(strstr(why, "SWITCHBOARD_MASTER_KEY"));
        CU_ASSERT_PTR_NULL(strstr(why, "AAECAwQF"));
        sbh_keyring_free(ring);
    }
}

static void test_create_file(void)
{
    char why[256] = "", before[512], after[512];
    CU_ASSERT_EQUAL_FATAL(sbh_keyring_create_file(g_keys, why, sizeof(why)), 0);
    CU_ASSERT_EQUAL(file_mode(g_keys), 0600);
    struct sbh_keyring *ring = file_ring(g_keys);
    const char *id = sbh_keyring_current_id(ring);
    CU_ASSERT_EQUAL(id[0], 'k');
    CU_ASSERT(strlen(id) > 8 && strspn(id + 1, "0123456789") == strlen(id) - 1);
    char *sealed = sbh_secret_seal(ring, "", "hi", 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sealed);
    expect_open(ring, "", sealed, "hi", 2);
    free(sealed);
    sbh_keyring_free(ring);

    CU_ASSERT_FATAL(read_file(g_keys, before, sizeof(before)) > 0);
    CU_ASSERT_EQUAL(sbh_keyring_create_file(g_keys, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, g_keys));
    CU_ASSERT_FATAL(read_file(g_keys, after, sizeof(after)) > 0);
    CU_ASSERT_STRING_EQUAL(before, after);
    OPENSSL_cleanse(before, sizeof(before));
    OPENSSL_cleanse(after, sizeof(after));
}

/* create, seal, add_key: the new key is current, the old ciphertext opens. */
static void test_add_key(void)
{
    char why[256] = "", new_id[40] = "", text[1024];
    write_file(g_keys, "# keep me\nold " KEY_A "\n", 0600);
    struct sbh_keyring *ring = file_ring(g_keys);
    char *s_old = sbh_secret_seal(ring, "i", "old secret", 10);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s_old);
    sbh_keyring_free(ring);

    if (sbh_keyring_file_add_key(g_keys, new_id, sizeof(new_id), why, sizeof(why)) < 0)
        fprintf(stderr, "\n  add_key: %s\n", why);
    CU_ASSERT_EQUAL(file_mode(g_keys), 0600);
    CU_ASSERT(new_id[0] == 'k' && strcmp(new_id, "old") != 0);
    ring = file_ring(g_keys);
    CU_ASSERT_STRING_EQUAL(sbh_keyring_current_id(ring), new_id);
    expect_open(ring, "i", s_old, "old secret", 10);
    char *s_new = sbh_secret_seal(ring, "i", "new secret", 10);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s_new);
    char id[64];
    CU_ASSERT_EQUAL(sbh_secret_key_id(s_new, id, sizeof(id)), 0);
    CU_ASSERT_STRING_EQUAL(id, new_id);
    sbh_keyring_free(ring);
    CU_ASSERT_FATAL(read_file(g_keys, text, sizeof(text)) > 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "# keep me\nold " KEY_A "\n"));

    /* A second rotation within the same second still gets a fresh id. */
    char second[40] = "";
    CU_ASSERT_EQUAL(sbh_keyring_file_add_key(g_keys, second, sizeof(second), why, sizeof(why)), 0);
    CU_ASSERT_STRING_NOT_EQUAL(second, new_id);
    ring = file_ring(g_keys);
    CU_ASSERT_STRING_EQUAL(sbh_keyring_current_id(ring), second);
    expect_open(ring, "i", s_old, "old secret", 10);
    expect_open(ring, "i", s_new, "new secret", 10);
    sbh_keyring_free(ring);

    CU_ASSERT_EQUAL(count_files(g_dir), 1); /* no temp file left behind */
    free(s_old);
    free(s_new);
    OPENSSL_cleanse(text, sizeof(text));
}

static void test_add_key_refuses_bad_file(void)
{
    char why[256] = "", id[40] = "", text[256];
    write_file(g_keys, "old " KEY_A "\n", 0644);
    CU_ASSERT_EQUAL(sbh_keyring_file_add_key(g_keys, id, sizeof(id), why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "chmod 600"));
    CU_ASSERT_EQUAL(sbh_keyring_file_drop_old(g_keys, why, sizeof(why)), -1);
    write_file(g_keys, "old " KEY_A "\nbroken\n", 0600);
    CU_ASSERT_EQUAL(sbh_keyring_file_add_key(g_keys, id, sizeof(id), why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "line 2"));
    CU_ASSERT_EQUAL(sbh_keyring_file_drop_old(g_keys, why, sizeof(why)), -1);
    CU_ASSERT_FATAL(read_file(g_keys, text, sizeof(text)) > 0);
    CU_ASSERT_STRING_EQUAL(text, "old " KEY_A "\nbroken\n");
}

/* After drop_old only the current key remains: old ciphertexts stop opening. */
static void test_drop_old(void)
{
    char why[256] = "", new_id[40] = "", text[1024];
    write_file(g_keys, "# keep me\nold " KEY_A "\n", 0600);
    struct sbh_keyring *ring = file_ring(g_keys);
    char *s_old = sbh_secret_seal(ring, "i", "old secret", 10);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s_old);
    sbh_keyring_free(ring);
    CU_ASSERT_EQUAL_FATAL(
        sbh_keyring_file_add_key(g_keys, new_id, sizeof(new_id), why, sizeof(why)), 0);
    ring = file_ring(g_keys);
    char *s_new = sbh_secret_seal(ring, "i", "new secret", 10);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s_new);
    sbh_keyring_free(ring);

    if (sbh_keyring_file_drop_old(g_keys, why, sizeof(why)) < 0)
        fprintf(stderr, "\n  drop_old: %s\n", why);
    CU_ASSERT_EQUAL(file_mode(g_keys), 0600);
    ring = file_ring(g_keys);
    CU_ASSERT_STRING_EQUAL(sbh_keyring_current_id(ring), new_id);
    expect_open(ring, "i", s_new, "new secret", 10);
    expect_no_open(ring, "i", s_old, why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "\"old\""));
    sbh_keyring_free(ring);
    CU_ASSERT_FATAL(read_file(g_keys, text, sizeof(text)) > 0);
    CU_ASSERT_PTR_NULL(strstr(text, KEY_A));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "# keep me\n"));
    CU_ASSERT_EQUAL(strncmp(text, new_id, strlen(new_id)), 0);
    CU_ASSERT_EQUAL(count_files(g_dir), 1);
    free(s_old);
    free(s_new);
    OPENSSL_cleanse(text, sizeof(text));
}

/* ---- API keys ---- */

static int all_of(const char *s, size_t n, const char *set)
{
    return strspn(s, set) >= n;
}

#define LOWER_DIGITS "abcdefghijklmnopqrstuvwxyz0123456789"
#define B64URL "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

static void test_apikey_format(void)
{
    char key[80], prefix[16], hash[65], again[65], got[16];
    CU_ASSERT_EQUAL_FATAL(sbh_apikey_new(key, sizeof(key), prefix, sizeof(prefix), hash), 0);
    CU_ASSERT_EQUAL(strlen(key), 4 + 12 + 1 + 43);
    CU_ASSERT_EQUAL(strncmp(key, "sbk_", 4), 0);
    CU_ASSERT(all_of(key + 4, 12, LOWER_DIGITS));
    CU_ASSERT_EQUAL(key[16], '_');
    CU_ASSERT(all_of(key + 17, 43, B64URL));
    CU_ASSERT_EQUAL(strlen(prefix), 12);
    CU_ASSERT_EQUAL(strncmp(key + 4, prefix, 12), 0);
    CU_ASSERT_EQUAL(strlen(hash), 64);
    CU_ASSERT(all_of(hash, 64, "0123456789abcdef"));
    sbh_apikey_hash(key, again);
    CU_ASSERT_STRING_EQUAL(hash, again);
    CU_ASSERT_EQUAL(sbh_apikey_prefix(key, got, sizeof(got)), 0);
    CU_ASSERT_STRING_EQUAL(got, prefix);
    CU_ASSERT_EQUAL(sbh_apikey_new(key, 60, prefix, sizeof(prefix), hash), -1);
    CU_ASSERT_EQUAL(sbh_apikey_new(key, sizeof(key), prefix, 12, hash), -1);
}

static void test_apikey_prefix(void)
{
    char got[16];
    const char *good = "sbk_abc123def456_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh0123456-_";
    CU_ASSERT_EQUAL(sbh_apikey_prefix(good, got, sizeof(got)), 0);
    CU_ASSERT_STRING_EQUAL(got, "abc123def456");
    CU_ASSERT_EQUAL(sbh_apikey_prefix(good, got, 12), -1);
    const char *bad[] = {
        "",
        "sbk_",
        "sbk_abc123def456",
        "sbx_abc123def456_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh0123456-_",
        "sbk_ABC123def456_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh0123456-_",
        "sbk_abc123def45_-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh0123456-_",
        "sbk_abc123def456-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh0123456-_",
        "sbk_abc123def456_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh0123456+/",
        "sbk_abc123def456_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh0123456-",
        "sbk_abc123def456_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh0123456-_A",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(sbh_apikey_prefix(bad[i], got, sizeof(got)), -1);
        if (sbh_apikey_prefix(bad[i], got, sizeof(got)) != -1)
            fprintf(stderr, "\n  accepted: %s\n", bad[i]);
    }
}

static void test_apikey_hash(void)
{
    char h1[65], h2[65];
    /* The FIPS 180-2 test vector: the hash is plain SHA-256 of the text. */
    sbh_apikey_hash("abc", h1);
    CU_ASSERT_STRING_EQUAL(h1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    sbh_apikey_hash("abc", h2);
    CU_ASSERT_EQUAL(sbh_apikey_hash_equal(h1, h2), 1);
    h2[63] = h2[63] == 'd' ? 'e' : 'd';
    CU_ASSERT_EQUAL(sbh_apikey_hash_equal(h1, h2), 0);
    sbh_apikey_hash("abd", h2);
    CU_ASSERT_EQUAL(sbh_apikey_hash_equal(h1, h2), 0);
    CU_ASSERT_EQUAL(sbh_apikey_hash_equal(h1, h1), 1);
    CU_ASSERT_EQUAL(sbh_apikey_hash_equal(h1, ""), 0);
    CU_ASSERT_EQUAL(sbh_apikey_hash_equal("", ""), 0);
    char shorter[65];
    snprintf(shorter, sizeof(shorter), "%.63s", h1);
    CU_ASSERT_EQUAL(sbh_apikey_hash_equal(h1, shorter), 0);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_apikey_distinct(void)
{
    enum { N = 1000 };
    static char keys[N][80], prefixes[N][16], hashes[N][65];
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL_FATAL(
            sbh_apikey_new(keys[i], sizeof(keys[i]), prefixes[i], sizeof(prefixes[i]), hashes[i]),
            0);
    qsort(keys, N, sizeof(keys[0]), cmp_str);
    qsort(prefixes, N, sizeof(prefixes[0]), cmp_str);
    qsort(hashes, N, sizeof(hashes[0]), cmp_str);
    int dup_keys = 0, dup_prefixes = 0, dup_hashes = 0;
    for (int i = 1; i < N; i++) {
        dup_keys += !strcmp(keys[i - 1], keys[i]);
        dup_prefixes += !strcmp(prefixes[i - 1], prefixes[i]);
        dup_hashes += !strcmp(hashes[i - 1], hashes[i]);
    }
    CU_ASSERT_EQUAL(dup_keys, 0);
    CU_ASSERT_EQUAL(dup_prefixes, 0);
    CU_ASSERT_EQUAL(dup_hashes, 0);
    /* Every prefix character value turns up: the alphabet is used in full. */
    int seen[256] = {0}, kinds = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < 12; j++)
            seen[(unsigned char)prefixes[i][j]]++;
    for (int c = 0; c < 256; c++)
        kinds += seen[c] > 0;
    CU_ASSERT_EQUAL(kinds, 36);
}

static const struct sb_test tests[] = {
    {"seal/open empty", test_round_trip_empty},
    {"seal/open 1 byte", test_round_trip_one_byte},
    {"seal/open 64 KiB", test_round_trip_64k},
    {"nonce differs per seal", test_nonce_differs},
    {"tampered payload bytes", test_tamper_payload_bytes},
    {"tampered text characters", test_tamper_text_chars},
    {"changed key id", test_changed_key_id},
    {"changed aad", test_changed_aad},
    {"unknown key id", test_unknown_key_id},
    {"ring of two keys", test_two_key_ring},
    {"key file mode", test_key_file_mode},
    {"key file malformed", test_key_file_malformed},
    {"key file good", test_key_file_good},
    {"env form", test_env_form},
    {"create_file", test_create_file},
    {"add_key", test_add_key},
    {"add_key/drop_old refuse bad files", test_add_key_refuses_bad_file},
    {"drop_old", test_drop_old},
    {"apikey format", test_apikey_format},
    {"apikey prefix", test_apikey_prefix},
    {"apikey hash", test_apikey_hash},
    {"apikey 1000 distinct", test_apikey_distinct},
};

int main(void)
{
    static const struct sb_suite suite = {
        .name = "secrets", SB_TESTS(tests), .setup = test_setup, .teardown = test_teardown};
    return sb_run("test_secrets", &suite, 1);
}
