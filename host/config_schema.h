/* The shape of switchboard.json and conf.d files: known keys and their types. */
#ifndef SBH_CONFIG_SCHEMA_H
#define SBH_CONFIG_SCHEMA_H

#include <stddef.h>

#include <jansson.h>

#define SBH_SCHEMA_MAX_DEPTH 8

struct sbh_schema_error {
    char *path[SBH_SCHEMA_MAX_DEPTH]; /* keys leading to the bad one; borrowed from the doc */
    size_t depth;
    char key[256]; /* dotted path, e.g. "plugins.echo.enabled" */
    char reason[256];
};

/* Check doc against the config shape; 0 when it fits, else -1 and *err. */
int sbh_config_schema_check(json_t *doc, struct sbh_schema_error *err);

#endif
