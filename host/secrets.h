/*
 * Secrets at rest: AES-256-GCM (OpenSSL EVP) under a master key ring. Each
 * ciphertext carries the id of the key that sealed it, so a ring holding the
 * old and the new key reads both while a rotation runs.
 *
 * Sealed form (ASCII, safe in a TEXT column):
 *   sb1:<key id>:<base64(12-byte nonce | ciphertext | 16-byte tag)>
 * The key id and the given associated data (e.g. the instance id) are
 * authenticated, so a ciphertext moved to another row does not open.
 *
 * Key file: one key per line, "<id> <base64 of 32 bytes>", first line is the
 * current key; '#' comments. Must be mode 0600 (or stricter) and owned by the
 * daemon's user. Environment alternative: SWITCHBOARD_MASTER_KEY="<id>:<base64>"
 * (a ring of one key).
 */
#ifndef SBH_SECRETS_H
#define SBH_SECRETS_H

#include <stddef.h>

struct sbh_keyring;

/* Load a ring from a key file; NULL with why (never containing key bytes). */
struct sbh_keyring *sbh_keyring_load_file(const char *path, char *why, size_t why_len);
/* Load a one-key ring from "<id>:<base64>"; NULL with why. */
struct sbh_keyring *sbh_keyring_from_env(const char *value, char *why, size_t why_len);
/*
 * Create a key file with one fresh random key (id "k" + unix time), mode
 * 0600, refusing to overwrite. Returns 0, or -1 with why.
 */
int sbh_keyring_create_file(const char *path, char *why, size_t why_len);
/*
 * Rotation helpers: add a fresh key in front of the file (it becomes
 * current; the old keys stay readable), and later drop every key but the
 * current one. Both rewrite the file atomically (temp + rename, 0600).
 */
int sbh_keyring_file_add_key(const char *path, char *new_id, size_t new_id_len, char *why,
                             size_t why_len);
int sbh_keyring_file_drop_old(const char *path, char *why, size_t why_len);
void sbh_keyring_free(struct sbh_keyring *ring);
/* Id of the current key (borrowed). */
const char *sbh_keyring_current_id(const struct sbh_keyring *ring);

/*
 * Seal plaintext under the current key; returns a malloc'd NUL-terminated
 * sealed string (caller frees), or NULL.
 */
char *sbh_secret_seal(const struct sbh_keyring *ring, const char *aad, const void *plain,
                      size_t len);
/*
 * Open a sealed string; returns malloc'd plaintext (NUL-terminated, *len set;
 * caller frees and should clear it with OPENSSL_cleanse first), or NULL when
 * the key id is unknown, the data was altered or aad differs. why says which
 * (never containing secret bytes).
 */
unsigned char *sbh_secret_open(const struct sbh_keyring *ring, const char *aad, const char *sealed,
                               size_t *len, char *why, size_t why_len);
/* Key id of a sealed string, copied into id; -1 when malformed. */
int sbh_secret_key_id(const char *sealed, char *id, size_t id_len);

/*
 * API keys: "sbk_<prefix 12 chars>_<secret 43 chars base64url>". The prefix
 * identifies the row; only SHA-256(full key) is stored.
 * sbh_apikey_new fills key (>= 80 bytes), prefix (>= 16) and hash_hex (65).
 */
int sbh_apikey_new(char *key, size_t key_len, char *prefix, size_t prefix_len, char *hash_hex);
/* Split a presented key into its prefix; -1 when it is not of our form. */
int sbh_apikey_prefix(const char *key, char *prefix, size_t prefix_len);
/* SHA-256 hex of key into hash_hex (65 bytes). */
void sbh_apikey_hash(const char *key, char *hash_hex);
/* Constant-time comparison of two hex hashes; 1 when equal. */
int sbh_apikey_hash_equal(const char *a, const char *b);

#endif
