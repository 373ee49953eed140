/* A string-keyed hash map of pointers, for lookups on hot paths. */
#ifndef SBH_MAP_H
#define SBH_MAP_H

#include <stddef.h>

struct sbh_map;

struct sbh_map *sbh_map_new(void);
/* Frees the map and its key copies; values are the caller's. */
void sbh_map_free(struct sbh_map *m);
/* NULL when absent. */
void *sbh_map_get(const struct sbh_map *m, const char *key);
/* Insert or replace (the key is copied); -1 when out of memory. */
int sbh_map_put(struct sbh_map *m, const char *key, void *value);
/* Remove and return the value, NULL when absent. */
void *sbh_map_del(struct sbh_map *m, const char *key);
size_t sbh_map_size(const struct sbh_map *m);
/* Call fn for every entry; fn must not change the map. */
void sbh_map_each(const struct sbh_map *m, void (*fn)(const char *key, void *value, void *arg),
                  void *arg);

#endif
