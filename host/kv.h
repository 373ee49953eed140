/*
 * The per-instance key-value store offered to plugins (update offsets,
 * session ids). Reads come from memory, so kv_get never waits; writes go to
 * memory at once and to instance_kv behind, in order, retried while the
 * database is away.
 */
#ifndef SBH_KV_H
#define SBH_KV_H

#include <event2/event.h>
#include <jansson.h>
#include <mysql.h>

struct sbh_db;
struct sbh_kv;

struct sbh_kv *sbh_kv_new(struct event_base *base);
/* Read every stored pair (start-up, blocking). -1 on a database error. */
int sbh_kv_load(struct sbh_kv *kv, MYSQL *conn);
/* Writes go through db from now on (borrowed; NULL keeps them in memory). */
void sbh_kv_attach(struct sbh_kv *kv, struct sbh_db *db);
void sbh_kv_free(struct sbh_kv *kv);

/* SB_OK with a malloc'd copy in *value, or SB_ENOTFOUND. */
int sbh_kv_get(const struct sbh_kv *kv, const char *instance, const char *key, char **value);
/* SB_OK, or SB_EINVAL for a key over 128 bytes or a value over 64 KiB. */
int sbh_kv_set(struct sbh_kv *kv, const char *instance, const char *key, const char *value);
/* An instance's pairs as a new {"key": "value"} object (empty when none). */
json_t *sbh_kv_dump(const struct sbh_kv *kv, const char *instance);
/* Drop an instance's pairs from memory (its rows go with the instance). */
void sbh_kv_forget(struct sbh_kv *kv, const char *instance);
/* Writes not yet stored (for metrics and drain). */
size_t sbh_kv_unsaved(const struct sbh_kv *kv);

#endif
