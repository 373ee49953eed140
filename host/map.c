#include "map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    struct entry *next;
    char *key;
    void *value;
    uint32_t hash;
};

struct sbh_map {
    struct entry **buckets;
    size_t n_buckets; /* a power of two */
    size_t size;
};

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

struct sbh_map *sbh_map_new(void)
{
    struct sbh_map *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->n_buckets = 64;
    m->buckets = calloc(m->n_buckets, sizeof(*m->buckets));
    if (!m->buckets) {
        free(m);
        return NULL;
    }
    return m;
}

void sbh_map_free(struct sbh_map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_buckets; i++) {
        struct entry *e = m->buckets[i];
        while (e) {
            struct entry *next = e->next;
            free(e->key);
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    free(m);
}

static struct entry **slot_of(const struct sbh_map *m, const char *key, uint32_t hash)
{
    struct entry **p = &m->buckets[hash & (m->n_buckets - 1)];
    while (*p && ((*p)->hash != hash || strcmp((*p)->key, key) != 0))
        p = &(*p)->next;
    return p;
}

void *sbh_map_get(const struct sbh_map *m, const char *key)
{
    struct entry *e = *slot_of(m, key, fnv1a(key));
    return e ? e->value : NULL;
}

/* Double the table when it averages more than one entry a bucket. */
static void grow(struct sbh_map *m)
{
    size_t n = m->n_buckets * 2;
    struct entry **b = calloc(n, sizeof(*b));
    if (!b)
        return; /* still correct, only slower */
    for (size_t i = 0; i < m->n_buckets; i++) {
        struct entry *e = m->buckets[i];
        while (e) {
            struct entry *next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = n;
}

int sbh_map_put(struct sbh_map *m, const char *key, void *value)
{
    uint32_t h = fnv1a(key);
    struct entry **p = slot_of(m, key, h);
    if (*p) {
        (*p)->value = value;
        return 0;
    }
    struct entry *e = calloc(1, sizeof(*e));
    if (!e || !(e->key = strdup(key))) {
        free(e);
        return -1;
    }
    e->hash = h;
    e->value = value;
    *p = e;
    if (++m->size > m->n_buckets)
        grow(m);
    return 0;
}

void *sbh_map_del(struct sbh_map *m, const char *key)
{
    struct entry **p = slot_of(m, key, fnv1a(key));
    struct entry *e = *p;
    if (!e)
        return NULL;
    void *value = e->value;
    *p = e->next;
    free(e->key);
    free(e);
    m->size--;
    return value;
}

size_t sbh_map_size(const struct sbh_map *m)
{
    return m->size;
}

void sbh_map_each(const struct sbh_map *m, void (*fn)(const char *key, void *value, void *arg),
                  void *arg)
{
    for (size_t i = 0; i < m->n_buckets; i++)
        for (struct entry *e = m->buckets[i]; e; e = e->next)
            fn(e->key, e->value, arg);
}
