/*
 * Daemon configuration: switchboard.json, then the conf.d JSON files in name order,
 * then environment overrides, then command-line overrides. Loading either
 * yields a complete validated sbh_config or an error naming file, line,
 * column and key; it never changes anything that is running.
 */
#ifndef SBH_CONFIG_H
#define SBH_CONFIG_H

#include <limits.h>
#include <stddef.h>

#include <jansson.h>

enum sbh_isolation { SBH_ISOLATION_INPROC = 0, SBH_ISOLATION_PROCESS };

struct sbh_plugin_conf {
    char *name;
    int enabled;
    char *file; /* absolute path of the .so */
    char *webhook_path;
    enum sbh_isolation isolation;
    json_t *config;     /* the plugin's own section, handed to init() */
    json_t *allow_from; /* CIDRs allowed to call its webhooks, or NULL for anyone */
    json_t *process;    /* supervision of its plugin-hosts ("process" section, maybe {}) */
};

struct sbh_instance_conf {
    char *id;
    char *provider;
    int enabled;
    json_t *settings;
};

struct sbh_config {
    char *config_path; /* main file */
    char *confd_dir;
    char *listen_address;
    int port;
    char *state_dir;
    char *plugin_dir;
    char *plugin_host; /* the switchboard-plugin-host binary */
    int log_level; /* enum sb_log_level */
    unsigned shutdown_timeout_ms;
    unsigned swap_timeout_ms;
    char *database_url; /* NULL: run the embedded server */
    char *migrations_dir;
    char *master_key_file;
    struct sbh_plugin_conf *plugins;
    size_t n_plugins;
    struct sbh_instance_conf *instances;
    size_t n_instances;
    json_t *merged; /* the effective document, for diffing and display */
};

/* Where a config was rejected. file is "environment" or "command line" when
 * the bad value came from there. */
struct sbh_config_error {
    char file[PATH_MAX];
    int line;
    int column;
    char key[256];
    char reason[512];
};

/* Command-line values that win over files and environment; NULL/0 = unset. */
struct sbh_config_overrides {
    const char *plugin_dir;
    const char *state_dir;
    const char *migrations_dir;
    int port;
};

/*
 * Load and validate. Returns a new config the caller frees with
 * sbh_config_free(), or NULL with *err filled in. env is an environ-style
 * array (NULL-terminated) so tests can pass their own.
 */
struct sbh_config *sbh_config_load(const char *path, const struct sbh_config_overrides *ov,
                                   char *const *env, struct sbh_config_error *err);
void sbh_config_free(struct sbh_config *cfg);

/* Lookups into a loaded config; NULL when absent. Borrowed pointers. */
const struct sbh_plugin_conf *sbh_config_plugin(const struct sbh_config *cfg, const char *name);
const struct sbh_instance_conf *sbh_config_instance(const struct sbh_config *cfg, const char *id);

/*
 * An unsigned setting section.key of the effective document, or dflt when
 * unset (the schema has already checked its type and range).
 */
unsigned sbh_config_uint(const struct sbh_config *cfg, const char *section, const char *key,
                         unsigned dflt);

/* The error as one log line (level error, message "config rejected"). */
void sbh_config_log_error(const struct sbh_config_error *err);

#endif
