/*
 * API keys in memory: the rows of api_keys (no key material, only hashes),
 * refreshed from the database now and then, so checking a request's key
 * needs no query and keeps working while the database is briefly away.
 */
#ifndef SBH_AUTH_H
#define SBH_AUTH_H

#include <jansson.h>

struct sbh_auth;

/* Who is calling: an admin key, or a key scoped to some instances. */
struct sbh_principal {
    int admin;
    char key_id[48];
    json_t *instance_ids; /* array of ids for a scoped key (owned), NULL for admin */
};

struct sbh_auth *sbh_auth_new(void);
void sbh_auth_free(struct sbh_auth *a);

/*
 * Replace the cache with rows (borrowed): objects with id, prefix, hash,
 * role, instance_ids (JSON text or null) and revoked_at (null when live).
 */
void sbh_auth_load(struct sbh_auth *a, const json_t *rows);
/* Add or replace one row (borrowed), e.g. right after a key was created. */
void sbh_auth_put(struct sbh_auth *a, const json_t *row);
/* Mark a key revoked at once, before the database says so. */
void sbh_auth_revoke(struct sbh_auth *a, const char *id);
size_t sbh_auth_count(const struct sbh_auth *a);

/*
 * Check an Authorization header value. Returns 0 and fills *who (free with
 * sbh_principal_clear), or -1 with *why ("missing", "malformed", "unknown",
 * "revoked") for a 401.
 */
int sbh_auth_check(const struct sbh_auth *a, const char *authorization, struct sbh_principal *who,
                   const char **why);
void sbh_principal_clear(struct sbh_principal *who);

/* 1 when who may touch instance id. */
int sbh_principal_allows(const struct sbh_principal *who, const char *instance_id);

#endif
