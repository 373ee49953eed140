#include "secrets.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define KEY_LEN 32
#define ID_MAX 32
#define NONCE_LEN 12
#define TAG_LEN 16
#define SEAL_TAG "sb1:"
/* Base64 text of n bytes, with padding and the NUL EVP_EncodeBlock writes. */
#define B64_SIZE(n) (((n) + 2) / 3 * 4 + 1)
/* A key file is a handful of short lines; anything bigger is not one. */
#define KEYFILE_MAX 65536
/* "<id> <base64 of 32 bytes>\n" */
#define KEY_LINE_MAX (ID_MAX + 1 + B64_SIZE(KEY_LEN) + 1)

#define APIKEY_TAG "sbk_"
#define APIKEY_PREFIX_LEN 12
#define APIKEY_SECRET_BYTES 32
#define APIKEY_SECRET_LEN 43
#define APIKEY_LEN (4 + APIKEY_PREFIX_LEN + 1 + APIKEY_SECRET_LEN)

struct sbh_key {
    char id[ID_MAX + 1];
    unsigned char bytes[KEY_LEN];
};

/* One allocation, cleared on free, so key bytes never linger in the heap. */
struct sbh_keyring {
    size_t n, cap;
    struct sbh_key keys[];
};

__attribute__((format(printf, 3, 4))) static void say(char *why, size_t why_len, const char *fmt,
                                                      ...)
{
    if (!why || !why_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

/* ---- base64 ---- */

static int b64_value(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/*
 * Decode padded base64 into out (cap bytes); returns the byte count or -1.
 * Only the canonical text is accepted: EVP_DecodeBlock alone skips
 * whitespace and ignores the bits padding leaves over, so a changed
 * character could otherwise decode to the same bytes.
 */
static long b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    if (n == 0 || n % 4 || n > INT_MAX || n / 4 * 3 > cap)
        return -1;
    size_t pad = in[n - 1] == '=' ? (in[n - 2] == '=' ? 2 : 1) : 0;
    for (size_t i = 0; i < n - pad; i++)
        if (b64_value((unsigned char)in[i]) < 0)
            return -1;
    if (pad && (b64_value((unsigned char)in[n - pad - 1]) & (pad == 1 ? 0x3 : 0xf)))
        return -1;
    int got = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    /* EVP_DecodeBlock counts the padding as zero bytes. */
    return got < 0 ? -1 : got - (long)pad;
}

/* out holds B64_SIZE(n); n <= INT_MAX is the caller's business. */
static void b64_encode(const unsigned char *in, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

/* ---- key ring ---- */

static int valid_id(const char *id, size_t n)
{
    if (n < 1 || n > ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static struct sbh_keyring *ring_new(size_t cap)
{
    struct sbh_keyring *ring = OPENSSL_zalloc(sizeof(*ring) + cap * sizeof(ring->keys[0]));
    if (ring)
        ring->cap = cap;
    return ring;
}

void sbh_keyring_free(struct sbh_keyring *ring)
{
    if (ring)
        OPENSSL_clear_free(ring, sizeof(*ring) + ring->cap * sizeof(ring->keys[0]));
}

const char *sbh_keyring_current_id(const struct sbh_keyring *ring)
{
    return ring && ring->n ? ring->keys[0].id : NULL;
}

static const struct sbh_key *find_key(const struct sbh_keyring *ring, const char *id)
{
    for (size_t i = 0; ring && i < ring->n; i++)
        if (!strcmp(ring->keys[i].id, id))
            return &ring->keys[i];
    return NULL;
}

/* Append a key given as text; -1 with *what saying what is wrong (never the key). */
static int ring_add(struct sbh_keyring *ring, const char *id, size_t id_len, const char *b64,
                    size_t b64_len, const char **what)
{
    unsigned char buf[B64_SIZE(KEY_LEN)];
    if (!valid_id(id, id_len)) {
        *what = "key id must be 1-32 characters of A-Za-z0-9_-";
        return -1;
    }
    struct sbh_key *k = &ring->keys[ring->n];
    memcpy(k->id, id, id_len);
    k->id[id_len] = '\0';
    if (find_key(ring, k->id)) {
        *what = "duplicate key id";
        return -1;
    }
    long got = b64_decode(b64, b64_len, buf, sizeof(buf));
    if (got == KEY_LEN)
        memcpy(k->bytes, buf, KEY_LEN);
    OPENSSL_cleanse(buf, sizeof(buf));
    if (got != KEY_LEN) {
        *what = "key must be base64 of exactly 32 bytes";
        return -1;
    }
    ring->n++;
    return 0;
}

/* Next line of text from *pos; its length excludes the '\n'. 0 at the end. */
static int next_line(const char *text, size_t len, size_t *pos, const char **line, size_t *n)
{
    if (*pos >= len)
        return 0;
    const char *start = text + *pos, *nl = memchr(start, '\n', len - *pos);
    *line = start;
    *n = nl ? (size_t)(nl - start) : len - *pos;
    *pos += *n + (nl ? 1 : 0);
    return 1;
}

struct key_line {
    const char *id, *b64;
    size_t id_len, b64_len;
};

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* 0: blank or comment, 1: "<id> <key>" (fields in *kl), -1: anything else. */
static int split_line(const char *s, size_t n, struct key_line *kl)
{
    size_t i = 0;
    while (i < n && is_blank(s[i]))
        i++;
    if (i == n || s[i] == '#')
        return 0;
    kl->id = s + i;
    while (i < n && !is_blank(s[i]))
        i++;
    kl->id_len = (size_t)(s + i - kl->id);
    while (i < n && is_blank(s[i]))
        i++;
    kl->b64 = s + i;
    while (i < n && !is_blank(s[i]))
        i++;
    kl->b64_len = (size_t)(s + i - kl->b64);
    while (i < n && is_blank(s[i]))
        i++;
    return i == n && kl->b64_len ? 1 : -1;
}

static struct sbh_keyring *parse_ring(const char *text, size_t len, const char *path, char *why,
                                      size_t why_len)
{
    size_t cap = 1, pos = 0, n;
    for (size_t i = 0; i < len; i++)
        cap += text[i] == '\n';
    struct sbh_keyring *ring = ring_new(cap);
    if (!ring) {
        say(why, why_len, "out of memory");
        return NULL;
    }
    const char *line, *what = NULL;
    struct key_line kl;
    for (int lineno = 1; next_line(text, len, &pos, &line, &n); lineno++) {
        int kind = split_line(line, n, &kl);
        if (kind < 0)
            what = "expected \"<id> <base64 of 32 bytes>\"";
        else if (!kind || !ring_add(ring, kl.id, kl.id_len, kl.b64, kl.b64_len, &what))
            continue;
        say(why, why_len, "%s: line %d: %s", path, lineno, what);
        sbh_keyring_free(ring);
        return NULL;
    }
    if (!ring->n) {
        say(why, why_len, "%s: no keys", path);
        sbh_keyring_free(ring);
        return NULL;
    }
    return ring;
}

/*
 * Read a key file after checking who else may read it. Returns a
 * NUL-terminated buffer of KEYFILE_MAX + 1 bytes for free_text.
 */
static char *read_key_file(const char *path, size_t *len, char *why, size_t why_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    char *text = NULL;
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        say(why, why_len, "cannot open %s: %s", path, strerror(errno));
        goto out;
    }
    /* Checked on the open descriptor, so the file we judge is the file we read. */
    if (!S_ISREG(st.st_mode)) {
        say(why, why_len, "%s is not a regular file", path);
        goto out;
    }
    if (st.st_mode & 077) {
        say(why, why_len,
            "%s has mode %04o: group or others may read or write it; run chmod 600 %s", path,
            (unsigned)(st.st_mode & 07777), path);
        goto out;
    }
    if (st.st_uid != geteuid()) {
        say(why, why_len, "%s is owned by uid %u, not by the daemon's user (uid %u)", path,
            (unsigned)st.st_uid, (unsigned)geteuid());
        goto out;
    }
    text = OPENSSL_zalloc(KEYFILE_MAX + 1);
    if (!text) {
        say(why, why_len, "out of memory");
        goto out;
    }
    size_t got = 0;
    ssize_t r = 0;
    while (got <= KEYFILE_MAX && (r = read(fd, text + got, KEYFILE_MAX + 1 - got)) > 0)
        got += (size_t)r;
    if (r < 0 || got > KEYFILE_MAX) {
        say(why, why_len, r < 0 ? "cannot read %s" : "%s is too large for a key file", path);
        OPENSSL_clear_free(text, KEYFILE_MAX + 1);
        text = NULL;
        goto out;
    }
    text[got] = '\0';
    *len = got;
out:
    if (fd >= 0)
        close(fd);
    return text;
}

static void free_text(char *text)
{
    OPENSSL_clear_free(text, KEYFILE_MAX + 1);
}

struct sbh_keyring *sbh_keyring_load_file(const char *path, char *why, size_t why_len)
{
    size_t len;
    char *text = read_key_file(path, &len, why, why_len);
    if (!text)
        return NULL;
    struct sbh_keyring *ring = parse_ring(text, len, path, why, why_len);
    free_text(text);
    return ring;
}

struct sbh_keyring *sbh_keyring_from_env(const char *value, char *why, size_t why_len)
{
    const char *colon = value ? strchr(value, ':') : NULL, *what;
    if (!colon) {
        say(why, why_len, "SWITCHBOARD_MASTER_KEY: expected \"<id>:<base64 of 32 bytes>\"");
        return NULL;
    }
    struct sbh_keyring *ring = ring_new(1);
    if (!ring) {
        say(why, why_len, "out of memory");
        return NULL;
    }
    if (ring_add(ring, value, (size_t)(colon - value), colon + 1, strlen(colon + 1), &what) < 0) {
        say(why, why_len, "SWITCHBOARD_MASTER_KEY: %s", what);
        sbh_keyring_free(ring);
        return NULL;
    }
    return ring;
}

/* ---- key files ---- */

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* "<id> <base64 of 32 fresh random bytes>\n" into line (KEY_LINE_MAX + 1). */
static int fresh_key_line(const char *id, char *line, size_t line_len)
{
    unsigned char key[KEY_LEN];
    char b64[B64_SIZE(KEY_LEN)];
    int rc = -1;
    if (RAND_bytes(key, sizeof(key)) != 1)
        goto out;
    b64_encode(key, sizeof(key), b64);
    int n = snprintf(line, line_len, "%s %s\n", id, b64);
    rc = n > 0 && (size_t)n < line_len ? 0 : -1;
out:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(b64, sizeof(b64));
    return rc;
}

/* "k<unix time>", or "k<unix time>-<n>" when a key of this second exists. */
static void pick_id(const struct sbh_keyring *ring, char *id, size_t id_len)
{
    long long now = (long long)time(NULL);
    snprintf(id, id_len, "k%lld", now);
    for (int i = 2; find_key(ring, id); i++)
        snprintf(id, id_len, "k%lld-%d", now, i);
}

/* The rename is only durable once the directory entry is on disk. */
static void sync_dir(const char *path)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof(copy), "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    fsync(fd);
    close(fd);
}

/* Replace path by text: a 0600 temp file in the same directory, fsync, rename. */
static int write_atomic(const char *path, const char *text, size_t len, char *why, size_t why_len)
{
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp)) {
        say(why, why_len, "%s: path too long", path);
        return -1;
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        say(why, why_len, "cannot create a temporary file next to %s: %s", path, strerror(errno));
        return -1;
    }
    if (fchmod(fd, 0600) < 0 || write_all(fd, text, len) < 0 || fsync(fd) < 0) {
        say(why, why_len, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        say(why, why_len, "cannot replace %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    sync_dir(path);
    return 0;
}

int sbh_keyring_create_file(const char *path, char *why, size_t why_len)
{
    char id[ID_MAX + 1], line[KEY_LINE_MAX + 1];
    int rc = -1;
    pick_id(NULL, id, sizeof(id));
    if (fresh_key_line(id, line, sizeof(line)) < 0) {
        say(why, why_len, "cannot generate a key");
        goto out;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        say(why, why_len, "cannot create %s: %s", path, strerror(errno));
        goto out;
    }
    if (write_all(fd, line, strlen(line)) < 0 || fsync(fd) < 0) {
        say(why, why_len, "cannot write %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        goto out;
    }
    if (close(fd) < 0) {
        say(why, why_len, "cannot write %s: %s", path, strerror(errno));
        unlink(path);
        goto out;
    }
    sync_dir(path);
    rc = 0;
out:
    OPENSSL_cleanse(line, sizeof(line));
    return rc;
}

int sbh_keyring_file_add_key(const char *path, char *new_id, size_t new_id_len, char *why,
                             size_t why_len)
{
    char id[ID_MAX + 1], *out_text = NULL;
    size_t len, out_cap = KEY_LINE_MAX + 1 + KEYFILE_MAX + 1;
    struct sbh_keyring *ring = NULL;
    int rc = -1;
    char *text = read_key_file(path, &len, why, why_len);
    if (!text)
        goto out;
    ring = parse_ring(text, len, path, why, why_len);
    if (!ring)
        goto out;
    pick_id(ring, id, sizeof(id));
    if (new_id && strlen(id) >= new_id_len) {
        say(why, why_len, "no room for the new key id");
        goto out;
    }
    out_text = OPENSSL_zalloc(out_cap);
    if (!out_text || fresh_key_line(id, out_text, KEY_LINE_MAX + 1) < 0) {
        say(why, why_len, "cannot generate a key");
        goto out;
    }
    /* In front, so it is current; the rest (old keys, comments) stays as it was. */
    size_t head = strlen(out_text);
    memcpy(out_text + head, text, len);
    if (write_atomic(path, out_text, head + len, why, why_len) < 0)
        goto out;
    if (new_id)
        snprintf(new_id, new_id_len, "%s", id);
    rc = 0;
out:
    if (out_text)
        OPENSSL_clear_free(out_text, out_cap);
    if (text)
        free_text(text);
    sbh_keyring_free(ring);
    return rc;
}

int sbh_keyring_file_drop_old(const char *path, char *why, size_t why_len)
{
    size_t len, pos = 0, n, out_len = 0;
    struct sbh_keyring *ring = NULL;
    char *out_text = NULL;
    int rc = -1, seen_key = 0;
    char *text = read_key_file(path, &len, why, why_len);
    if (!text)
        goto out;
    /* Parsed first so a malformed file is refused, not half rewritten. */
    ring = parse_ring(text, len, path, why, why_len);
    if (!ring)
        goto out;
    out_text = OPENSSL_zalloc(len + 1);
    if (!out_text) {
        say(why, why_len, "out of memory");
        goto out;
    }
    const char *line;
    struct key_line kl;
    while (next_line(text, len, &pos, &line, &n)) {
        int kind = split_line(line, n, &kl);
        if (kind > 0 && seen_key++)
            continue;
        memcpy(out_text + out_len, line, n);
        out_len += n;
        if (line + n < text + len)
            out_text[out_len++] = '\n';
    }
    if (write_atomic(path, out_text, out_len, why, why_len) < 0)
        goto out;
    rc = 0;
out:
    if (out_text)
        OPENSSL_clear_free(out_text, len + 1);
    if (text)
        free_text(text);
    sbh_keyring_free(ring);
    return rc;
}

/* ---- sealing ---- */

/*
 * AES-256-GCM in one go. The AAD is the key id, a NUL, then the caller's aad:
 * the NUL keeps ("a", "bc") and ("ab", "c") apart. Sealing writes the tag,
 * opening checks it.
 */
static int gcm(int enc, const struct sbh_key *k, const char *aad, const unsigned char *nonce,
               const unsigned char *in, size_t n, unsigned char *out, unsigned char *tag)
{
    unsigned char fin[TAG_LEN];
    size_t aad_len = aad ? strlen(aad) : 0;
    int outl;
    if (n > INT_MAX || aad_len > INT_MAX)
        return -1;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return -1;
    int ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) == 1 &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) == 1 &&
             EVP_CipherInit_ex(ctx, NULL, NULL, k->bytes, nonce, enc) == 1 &&
             EVP_CipherUpdate(ctx, NULL, &outl, (const unsigned char *)k->id,
                              (int)strlen(k->id) + 1) == 1 &&
             (!aad_len ||
              EVP_CipherUpdate(ctx, NULL, &outl, (const unsigned char *)aad, (int)aad_len) == 1) &&
             (!n || EVP_CipherUpdate(ctx, out, &outl, in, (int)n) == 1) &&
             (enc || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1) &&
             EVP_CipherFinal_ex(ctx, fin, &outl) == 1 &&
             (!enc || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) == 1);
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

char *sbh_secret_seal(const struct sbh_keyring *ring, const char *aad, const void *plain,
                      size_t len)
{
    if (!ring || !ring->n || (!plain && len) || len > INT_MAX / 2)
        return NULL;
    const struct sbh_key *k = &ring->keys[0];
    size_t raw_len = NONCE_LEN + len + TAG_LEN, prefix = strlen(SEAL_TAG) + strlen(k->id) + 1;
    unsigned char *raw = malloc(raw_len);
    char *sealed = malloc(prefix + B64_SIZE(raw_len));
    if (!raw || !sealed || RAND_bytes(raw, NONCE_LEN) != 1 ||
        gcm(1, k, aad, raw, plain, len, raw + NONCE_LEN, raw + NONCE_LEN + len) < 0) {
        free(sealed);
        sealed = NULL;
        goto out;
    }
    snprintf(sealed, prefix + 1, "%s%s:", SEAL_TAG, k->id);
    b64_encode(raw, raw_len, sealed + prefix);
out:
    free(raw);
    return sealed;
}

/* Split "sb1:<id>:<payload>"; -1 when it is not of that form. */
static int split_sealed(const char *sealed, char *id, const char **payload)
{
    size_t tag = strlen(SEAL_TAG);
    if (!sealed || strncmp(sealed, SEAL_TAG, tag))
        return -1;
    const char *start = sealed + tag, *colon = strchr(start, ':');
    if (!colon || !valid_id(start, (size_t)(colon - start)))
        return -1;
    memcpy(id, start, (size_t)(colon - start));
    id[colon - start] = '\0';
    *payload = colon + 1;
    return 0;
}

int sbh_secret_key_id(const char *sealed, char *id, size_t id_len)
{
    char buf[ID_MAX + 1];
    const char *payload;
    if (split_sealed(sealed, buf, &payload) < 0 || strlen(buf) >= id_len)
        return -1;
    memcpy(id, buf, strlen(buf) + 1);
    return 0;
}

unsigned char *sbh_secret_open(const struct sbh_keyring *ring, const char *aad, const char *sealed,
                               size_t *len, char *why, size_t why_len)
{
    char id[ID_MAX + 1];
    const char *b64;
    unsigned char *raw = NULL, *plain = NULL;
    if (split_sealed(sealed, id, &b64) < 0) {
        say(why, why_len, "not a sealed secret (want sb1:<key id>:<base64>)");
        return NULL;
    }
    const struct sbh_key *k = find_key(ring, id);
    if (!k) {
        say(why, why_len, "unknown key id \"%s\"", id);
        return NULL;
    }
    size_t n = strlen(b64), cap = n / 4 * 3;
    raw = malloc(cap ? cap : 1);
    long got = raw ? b64_decode(b64, n, raw, cap) : -1;
    if (got < NONCE_LEN + TAG_LEN) {
        say(why, why_len, "sealed data is not base64 of nonce, ciphertext and tag");
        goto out;
    }
    size_t clen = (size_t)got - NONCE_LEN - TAG_LEN;
    plain = malloc(clen + 1);
    if (!plain || gcm(0, k, aad, raw, raw + NONCE_LEN, clen, plain, raw + NONCE_LEN + clen) < 0) {
        say(why, why_len,
            "cannot open: data altered, or associated data differs, under key id \"%s\"", id);
        /* What GCM produced before the tag check failed is unauthenticated. */
        if (plain)
            OPENSSL_clear_free(plain, clen + 1);
        plain = NULL;
        goto out;
    }
    plain[clen] = '\0';
    if (len)
        *len = clen;
out:
    free(raw);
    return plain;
}

/* ---- API keys ---- */

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}

/* n characters of [a-z0-9], unbiased: bytes >= 252 (7 * 36) are drawn again. */
static int random_prefix(char *out, size_t n)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char buf[32];
    size_t done = 0;
    while (done < n) {
        if (RAND_bytes(buf, sizeof(buf)) != 1)
            return -1;
        for (size_t i = 0; i < sizeof(buf) && done < n; i++)
            if (buf[i] < 252)
                out[done++] = alphabet[buf[i] % 36];
    }
    out[n] = '\0';
    return 0;
}

/* base64url without padding: APIKEY_SECRET_LEN characters + NUL. */
static int random_secret(char *out)
{
    unsigned char bytes[APIKEY_SECRET_BYTES];
    char b64[B64_SIZE(APIKEY_SECRET_BYTES)];
    int rc = -1;
    if (RAND_bytes(bytes, sizeof(bytes)) != 1)
        goto out;
    b64_encode(bytes, sizeof(bytes), b64);
    for (size_t i = 0; i < APIKEY_SECRET_LEN; i++)
        out[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
    out[APIKEY_SECRET_LEN] = '\0';
    rc = 0;
out:
    OPENSSL_cleanse(bytes, sizeof(bytes));
    OPENSSL_cleanse(b64, sizeof(b64));
    return rc;
}

int sbh_apikey_new(char *key, size_t key_len, char *prefix, size_t prefix_len, char *hash_hex)
{
    char pre[APIKEY_PREFIX_LEN + 1], secret[APIKEY_SECRET_LEN + 1];
    int rc = -1;
    if (!key || key_len <= APIKEY_LEN || !prefix || prefix_len <= APIKEY_PREFIX_LEN || !hash_hex)
        return -1;
    if (random_prefix(pre, APIKEY_PREFIX_LEN) < 0 || random_secret(secret) < 0)
        goto out;
    snprintf(key, key_len, "%s%s_%s", APIKEY_TAG, pre, secret);
    snprintf(prefix, prefix_len, "%s", pre);
    sbh_apikey_hash(key, hash_hex);
    rc = 0;
out:
    OPENSSL_cleanse(secret, sizeof(secret));
    return rc;
}

static int is_prefix_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_b64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

int sbh_apikey_prefix(const char *key, char *prefix, size_t prefix_len)
{
    size_t tag = strlen(APIKEY_TAG);
    if (!key || strnlen(key, APIKEY_LEN + 1) != APIKEY_LEN || strncmp(key, APIKEY_TAG, tag) ||
        key[tag + APIKEY_PREFIX_LEN] != '_' || prefix_len <= APIKEY_PREFIX_LEN)
        return -1;
    for (size_t i = 0; i < APIKEY_PREFIX_LEN; i++)
        if (!is_prefix_char(key[tag + i]))
            return -1;
    for (size_t i = tag + APIKEY_PREFIX_LEN + 1; i < APIKEY_LEN; i++)
        if (!is_b64url_char(key[i]))
            return -1;
    memcpy(prefix, key + tag, APIKEY_PREFIX_LEN);
    prefix[APIKEY_PREFIX_LEN] = '\0';
    return 0;
}

void sbh_apikey_hash(const char *key, char *hash_hex)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(key, strlen(key), md, &md_len, EVP_sha256(), NULL) != 1) {
        hash_hex[0] = '\0';
        return;
    }
    hex_encode(md, md_len, hash_hex);
}

int sbh_apikey_hash_equal(const char *a, const char *b)
{
    /* The length of a hash is no secret; its bytes are compared in constant time. */
    if (!a || !b || strnlen(a, 65) != 64 || strnlen(b, 65) != 64)
        return 0;
    return CRYPTO_memcmp(a, b, 64) == 0;
}
