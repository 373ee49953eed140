#include "config.h"

#include "cidr.h"
#include "config_schema.h"
#include "json_locate.h"
#include "log.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef SBH_PLUGINDIR
#define SBH_PLUGINDIR "/usr/lib/switchboard/plugins"
#endif
#ifndef SBH_MIGRATIONSDIR
#define SBH_MIGRATIONSDIR "/usr/share/switchboard/migrations"
#endif
#ifndef SBH_STATEDIR
#define SBH_STATEDIR "/var/lib/switchboard"
#endif

/* One source document with its raw text, kept to locate errors. */
struct source {
    char *file;
    char *text;
    size_t len;
};

struct sources {
    struct source *v;
    size_t n;
};

static void sources_free(struct sources *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].file);
        free(s->v[i].text);
    }
    free(s->v);
}

static void set_error(struct sbh_config_error *err, const char *file, int line, int column,
                      const char *key, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void set_error(struct sbh_config_error *err, const char *file, int line, int column,
                      const char *key, const char *fmt, ...)
{
    va_list ap;

    snprintf(err->file, sizeof(err->file), "%s", file);
    err->line = line;
    err->column = column;
    snprintf(err->key, sizeof(err->key), "%s", key ? key : "");
    va_start(ap, fmt);
    vsnprintf(err->reason, sizeof(err->reason), fmt, ap);
    va_end(ap);
}

static char *read_file(const char *path, size_t *len, struct sbh_config_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_error(err, path, 0, 0, NULL, "cannot open: %s", strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1)
            break;
        cap *= 2;
        char *bigger = realloc(buf, cap);
        if (!bigger) {
            free(buf);
            buf = NULL;
        }
        buf = bigger;
    }
    int failed = ferror(f);
    fclose(f);
    if (!buf || failed) {
        free(buf);
        set_error(err, path, 0, 0, NULL, "cannot read");
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Parse and check one file on its own, so every error names its file. */
static json_t *load_source(const char *path, struct sources *srcs, struct sbh_config_error *err)
{
    struct source src = {strdup(path), NULL, 0};
    src.text = read_file(path, &src.len, err);
    if (!src.text) {
        free(src.file);
        return NULL;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(src.text, src.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        set_error(err, path, jerr.line, jerr.column, NULL, "invalid JSON: %s", jerr.text);
        goto fail;
    }
    if (!json_is_object(doc)) {
        set_error(err, path, 1, 1, NULL, "top level must be an object");
        goto fail;
    }
    struct sbh_schema_error serr;
    if (sbh_config_schema_check(doc, &serr) < 0) {
        int line, col;
        sbh_json_locate(src.text, src.len, (const char *const *)serr.path, serr.depth, &line, &col);
        set_error(err, path, line, col, serr.key, "%s", serr.reason);
        goto fail;
    }
    struct source *grown = realloc(srcs->v, (srcs->n + 1) * sizeof(*grown));
    if (!grown)
        goto fail;
    srcs->v = grown;
    srcs->v[srcs->n++] = src;
    return doc;
fail:
    json_decref(doc);
    free(src.file);
    free(src.text);
    return NULL;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The conf.d JSON files, sorted by name. Returns a NULL-terminated array or NULL. */
static char **list_confd(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return calloc(1, sizeof(char *));
    size_t n = 0;
    char **names = calloc(1, sizeof(char *));
    struct dirent *de;
    while (names && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".json") != 0)
            continue;
        char **grown = realloc(names, (n + 2) * sizeof(char *));
        if (!grown)
            break;
        names = grown;
        if (asprintf(&names[n], "%s/%s", dir, de->d_name) < 0)
            break;
        names[++n] = NULL;
    }
    closedir(d);
    if (names)
        qsort(names, n, sizeof(char *), name_cmp);
    return names;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Relative paths in files are relative to the main config's directory. */
static char *resolve_path(const char *base_dir, const char *p)
{
    char *out = NULL;
    if (p[0] == '/')
        return strdup(p);
    if (asprintf(&out, "%s/%s", base_dir, p) < 0)
        return NULL;
    return out;
}

/* Find which source last set a path, for errors found after merging. */
static void locate_merged(const struct sources *srcs, const char *const *path, size_t depth,
                          const char *key, struct sbh_config_error *err, const char *reason)
{
    for (size_t i = srcs->n; i-- > 0;) {
        int line, col;
        if (sbh_json_locate(srcs->v[i].text, srcs->v[i].len, path, depth, &line, &col) == 0) {
            set_error(err, srcs->v[i].file, line, col, key, "%s", reason);
            return;
        }
    }
    set_error(err, srcs->n ? srcs->v[0].file : "?", 0, 0, key, "%s", reason);
}

static int env_bool(const char *v, int *out)
{
    if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") ||
        !strcasecmp(v, "on")) {
        *out = 1;
        return 0;
    }
    if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") ||
        !strcasecmp(v, "off")) {
        *out = 0;
        return 0;
    }
    return -1;
}

/* "WHATSAPP_OFFICIAL" -> "whatsapp-official" */
static void env_to_provider(const char *s, size_t len, char *out, size_t outlen)
{
    size_t i;
    for (i = 0; i < len && i + 1 < outlen; i++)
        out[i] = s[i] == '_' ? '-' : (char)tolower((unsigned char)s[i]);
    out[i] = '\0';
}

static json_t *plugin_section(json_t *doc, const char *name, int create)
{
    json_t *plugins = json_object_get(doc, "plugins");
    if (!plugins) {
        if (!create)
            return NULL;
        plugins = json_object();
        json_object_set_new(doc, "plugins", plugins);
    }
    json_t *p = json_object_get(plugins, name);
    if (!p && create) {
        p = json_object();
        json_object_set_new(plugins, name, p);
    }
    return p;
}

static int valid_webhook_path(const char *p);

static int apply_env_one(json_t *doc, const char *var, struct sbh_config_error *err)
{
    const char *eq = strchr(var, '=');
    if (!eq)
        return 0;
    size_t klen = (size_t)(eq - var);
    const char *val = eq + 1;
    char key[128], provider[128];
    if (klen >= sizeof(key))
        return 0; /* longer than any variable of ours; key would be cut short */
    snprintf(key, sizeof(key), "%.*s", (int)klen, var);

    if (!strcmp(key, "MULTI_PROVIDER_PORT")) {
        char *end;
        long port = strtol(val, &end, 10);
        if (*val == '\0' || *end || port < 1 || port > 65535) {
            set_error(err, "environment", 0, 0, key, "must be a port number 1-65535");
            return -1;
        }
        json_t *listen = json_object_get(doc, "listen");
        if (!listen) {
            listen = json_object();
            json_object_set_new(doc, "listen", listen);
        }
        json_object_set_new(listen, "port", json_integer(port));
        return 0;
    }
    if (!strcmp(key, "DATABASE_URL")) {
        json_object_set_new(doc, "database_url", json_string(val));
        return 0;
    }
    if (!strcmp(key, "SWITCHBOARD_PLUGIN_HOST")) {
        json_object_set_new(doc, "plugin_host", json_string(val));
        return 0;
    }
    if (!strncmp(key, "ENABLE_", 7) && klen > 7) {
        int on;
        if (env_bool(val, &on) < 0) {
            set_error(err, "environment", 0, 0, key, "must be true or false");
            return -1;
        }
        env_to_provider(key + 7, klen - 7, provider, sizeof(provider));
        json_t *p = plugin_section(doc, provider, on);
        if (p)
            json_object_set_new(p, "enabled", json_boolean(on));
        return 0;
    }
    const char *suffix = "_WEBHOOK_PATH";
    size_t slen = strlen(suffix);
    if (klen > slen && !strcmp(key + klen - slen, suffix)) {
        if (!valid_webhook_path(val)) {
            set_error(err, "environment", 0, 0, key,
                      "webhook_path must start with '/', not end with '/', and use only "
                      "letters, digits and -_.~/");
            return -1;
        }
        env_to_provider(key, klen - slen, provider, sizeof(provider));
        json_t *p = plugin_section(doc, provider, 0);
        if (p)
            json_object_set_new(p, "webhook_path", json_string(val));
    }
    return 0;
}

static int apply_env(json_t *doc, char *const *env, struct sbh_config_error *err)
{
    for (size_t i = 0; env && env[i]; i++)
        if (apply_env_one(doc, env[i], err) < 0)
            return -1;
    return 0;
}

static int valid_name(const char *s, int allow_upper)
{
    if (!*s || strlen(s) > 64)
        return 0;
    for (; *s; s++) {
        int ok = islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '-' ||
                 (allow_upper && (isupper((unsigned char)*s) || *s == '_' || *s == '.'));
        if (!ok)
            return 0;
    }
    return 1;
}

static int valid_webhook_path(const char *p)
{
    if (p[0] != '/' || strlen(p) < 2 || p[strlen(p) - 1] == '/')
        return 0;
    for (; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("/-_.~", *p))
            return 0;
    return 1;
}

static const char *str_or(json_t *obj, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : dflt;
}

static int bool_or(json_t *obj, const char *key, int dflt)
{
    json_t *v = json_object_get(obj, key);
    return v ? json_is_true(v) : dflt;
}

static int build_plugins(struct sbh_config *cfg, const struct sources *srcs,
                         struct sbh_config_error *err)
{
    json_t *plugins = json_object_get(cfg->merged, "plugins");
    cfg->plugins = calloc(json_object_size(plugins) + 1, sizeof(*cfg->plugins));
    if (!cfg->plugins)
        return -1;
    const char *name;
    json_t *p;
    json_object_foreach (plugins, name, p) {
        const char *path[] = {"plugins", name, "file"};
        if (!valid_name(name, 0)) {
            locate_merged(srcs, path, 2, name, err, "plugin name must match [a-z0-9-]+");
            return -1;
        }
        struct sbh_plugin_conf *pc = &cfg->plugins[cfg->n_plugins++];
        char deflt_file[96], deflt_hook[96];
        snprintf(deflt_file, sizeof(deflt_file), "%s.so", name);
        snprintf(deflt_hook, sizeof(deflt_hook), "/webhook/%s", name);
        pc->name = strdup(name);
        pc->enabled = bool_or(p, "enabled", 1);
        pc->file = resolve_path(cfg->plugin_dir, str_or(p, "file", deflt_file));
        pc->webhook_path = strdup(str_or(p, "webhook_path", deflt_hook));
        pc->isolation = !strcmp(str_or(p, "isolation", "inproc"), "process") ? SBH_ISOLATION_PROCESS
                                                                             : SBH_ISOLATION_INPROC;
        json_t *conf = json_object_get(p, "config");
        pc->config = conf ? json_incref(conf) : json_object();
        json_t *proc = json_object_get(p, "process");
        pc->process = proc ? json_incref(proc) : json_object();
        json_t *allow = json_object_get(p, "allow_from");
        pc->allow_from = allow ? json_incref(allow) : NULL;
        size_t ai;
        json_t *net;
        json_array_foreach (allow, ai, net) {
            if (sbh_cidr_valid(json_string_value(net)) == 0)
                continue;
            path[2] = "allow_from";
            locate_merged(srcs, path, 3, "allow_from", err,
                          "allow_from holds something that is not an address or CIDR network");
            return -1;
        }

        struct stat st;
        if (!valid_webhook_path(pc->webhook_path)) {
            path[2] = "webhook_path";
            locate_merged(srcs, path, 3, "webhook_path", err,
                          "webhook_path must start with '/', not end with '/', and use only "
                          "letters, digits and -_.~/");
            return -1;
        }
        if (pc->enabled && stat(pc->file, &st) < 0) {
            char why[PATH_MAX + 64];
            snprintf(why, sizeof(why), "plugin file missing: %s (%s)", pc->file, strerror(errno));
            locate_merged(srcs, path, json_object_get(p, "file") ? 3 : 2, name, err, why);
            return -1;
        }
    }
    /* Two plugins answering on one path would make routing ambiguous. */
    for (size_t i = 0; i < cfg->n_plugins; i++)
        for (size_t j = i + 1; j < cfg->n_plugins; j++)
            if (cfg->plugins[i].enabled && cfg->plugins[j].enabled &&
                !strcmp(cfg->plugins[i].webhook_path, cfg->plugins[j].webhook_path)) {
                const char *path[] = {"plugins", cfg->plugins[j].name, "webhook_path"};
                locate_merged(srcs, path, 3, "webhook_path", err,
                              "webhook_path is already used by another plugin");
                return -1;
            }
    return 0;
}

static int build_instances(struct sbh_config *cfg, const struct sources *srcs,
                           struct sbh_config_error *err)
{
    json_t *insts = json_object_get(cfg->merged, "instances");
    cfg->instances = calloc(json_object_size(insts) + 1, sizeof(*cfg->instances));
    if (!cfg->instances)
        return -1;
    const char *id;
    json_t *v;
    json_object_foreach (insts, id, v) {
        const char *path[] = {"instances", id, "provider"};
        if (!valid_name(id, 1)) {
            locate_merged(srcs, path, 2, id, err, "instance id must match [A-Za-z0-9._-]+");
            return -1;
        }
        const char *provider = json_string_value(json_object_get(v, "provider"));
        if (!provider) {
            locate_merged(srcs, path, 2, "provider", err, "instance needs a provider");
            return -1;
        }
        struct sbh_instance_conf *ic = &cfg->instances[cfg->n_instances++];
        ic->id = strdup(id);
        ic->provider = strdup(provider);
        ic->enabled = bool_or(v, "enabled", 1);
        json_t *settings = json_object_get(v, "settings");
        ic->settings = settings ? json_incref(settings) : json_object();
        const struct sbh_plugin_conf *pc = sbh_config_plugin(cfg, provider);
        if (!pc) {
            locate_merged(srcs, path, 3, "provider", err, "no such plugin configured");
            return -1;
        }
    }
    return 0;
}

static int build_scalars(struct sbh_config *cfg, const struct sbh_config_overrides *ov)
{
    json_t *doc = cfg->merged;
    json_t *listen = json_object_get(doc, "listen");
    char *base = dir_of(cfg->config_path);
    if (!base)
        return -1;
    cfg->listen_address = strdup(str_or(listen, "address", "127.0.0.1"));
    json_t *port = json_object_get(listen, "port");
    cfg->port = port ? (int)json_integer_value(port) : 3000;
    if (ov && ov->port)
        cfg->port = ov->port;
    if (ov && ov->state_dir)
        cfg->state_dir = strdup(ov->state_dir);
    else
        cfg->state_dir = resolve_path(base, str_or(doc, "state_dir", SBH_STATEDIR));
    if (ov && ov->plugin_dir)
        cfg->plugin_dir = strdup(ov->plugin_dir);
    else
        cfg->plugin_dir = resolve_path(base, str_or(doc, "plugin_dir", SBH_PLUGINDIR));
    cfg->plugin_host = resolve_path(base, str_or(doc, "plugin_host", SBH_PLUGINHOST));
    cfg->log_level = sbh_log_level_parse(str_or(doc, "log_level", "info"));
    json_t *t = json_object_get(doc, "shutdown_timeout_ms");
    cfg->shutdown_timeout_ms = t ? (unsigned)json_integer_value(t) : 5000;
    t = json_object_get(doc, "swap_timeout_ms");
    cfg->swap_timeout_ms = t ? (unsigned)json_integer_value(t) : 5000;
    const char *db = str_or(doc, "database_url", NULL);
    cfg->database_url = db && *db ? strdup(db) : NULL;
    if (ov && ov->migrations_dir)
        cfg->migrations_dir = strdup(ov->migrations_dir);
    else
        cfg->migrations_dir = resolve_path(base, str_or(doc, "migrations_dir", SBH_MIGRATIONSDIR));
    /* Beside the main config by default: /etc/switchboard/master.key. */
    cfg->master_key_file = resolve_path(base, str_or(doc, "master_key_file", "master.key"));
    free(base);
    return cfg->listen_address && cfg->state_dir && cfg->plugin_dir && cfg->plugin_host &&
                   cfg->migrations_dir && cfg->master_key_file
               ? 0
               : -1;
}

static json_t *load_all(const char *path, struct sbh_config *cfg, struct sources *srcs,
                        struct sbh_config_error *err)
{
    json_t *doc = load_source(path, srcs, err);
    if (!doc)
        return NULL;
    char **files = list_confd(cfg->confd_dir);
    for (size_t i = 0; files && files[i]; i++) {
        json_t *part = doc ? load_source(files[i], srcs, err) : NULL;
        if (doc && !part) {
            json_decref(doc);
            doc = NULL;
        }
        if (doc)
            json_object_update_recursive(doc, part);
        json_decref(part);
        free(files[i]);
    }
    free(files);
    return doc;
}

struct sbh_config *sbh_config_load(const char *path, const struct sbh_config_overrides *ov,
                                   char *const *env, struct sbh_config_error *err)
{
    struct sources srcs = {NULL, 0};
    struct sbh_config *cfg = calloc(1, sizeof(*cfg));
    memset(err, 0, sizeof(*err));
    if (!cfg)
        return NULL;
    cfg->config_path = strdup(path);
    char *dir = dir_of(path);
    if (!cfg->config_path || !dir || asprintf(&cfg->confd_dir, "%s/conf.d", dir) < 0) {
        cfg->confd_dir = NULL;
        free(dir);
        set_error(err, path, 0, 0, NULL, "out of memory");
        goto fail;
    }
    free(dir);
    cfg->merged = load_all(path, cfg, &srcs, err);
    if (!cfg->merged)
        goto fail;
    if (apply_env(cfg->merged, env, err) < 0)
        goto fail;
    struct sbh_schema_error serr;
    if (sbh_config_schema_check(cfg->merged, &serr) < 0) {
        /* Only an environment override can break a document checked per file. */
        set_error(err, "environment", 0, 0, serr.key, "%s", serr.reason);
        goto fail;
    }
    if (build_scalars(cfg, ov) < 0) {
        set_error(err, path, 0, 0, NULL, "out of memory");
        goto fail;
    }
    if (build_plugins(cfg, &srcs, err) < 0 || build_instances(cfg, &srcs, err) < 0)
        goto fail;
    sources_free(&srcs);
    return cfg;
fail:
    if (!err->reason[0])
        set_error(err, path, 0, 0, NULL, "out of memory");
    sources_free(&srcs);
    sbh_config_free(cfg);
    return NULL;
}

void sbh_config_free(struct sbh_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->n_plugins; i++) {
        free(cfg->plugins[i].name);
        free(cfg->plugins[i].file);
        free(cfg->plugins[i].webhook_path);
        json_decref(cfg->plugins[i].config);
        json_decref(cfg->plugins[i].allow_from);
        json_decref(cfg->plugins[i].process);
    }
    for (size_t i = 0; i < cfg->n_instances; i++) {
        free(cfg->instances[i].id);
        free(cfg->instances[i].provider);
        json_decref(cfg->instances[i].settings);
    }
    free(cfg->plugins);
    free(cfg->instances);
    free(cfg->config_path);
    free(cfg->confd_dir);
    free(cfg->listen_address);
    free(cfg->state_dir);
    free(cfg->plugin_dir);
    free(cfg->plugin_host);
    free(cfg->database_url);
    free(cfg->migrations_dir);
    free(cfg->master_key_file);
    json_decref(cfg->merged);
    free(cfg);
}

const struct sbh_plugin_conf *sbh_config_plugin(const struct sbh_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_plugins; i++)
        if (!strcmp(cfg->plugins[i].name, name))
            return &cfg->plugins[i];
    return NULL;
}

const struct sbh_instance_conf *sbh_config_instance(const struct sbh_config *cfg, const char *id)
{
    for (size_t i = 0; i < cfg->n_instances; i++)
        if (!strcmp(cfg->instances[i].id, id))
            return &cfg->instances[i];
    return NULL;
}

unsigned sbh_config_uint(const struct sbh_config *cfg, const char *section, const char *key,
                         unsigned dflt)
{
    json_t *v = json_object_get(json_object_get(cfg->merged, section), key);
    return json_is_integer(v) ? (unsigned)json_integer_value(v) : dflt;
}

void sbh_config_log_error(const struct sbh_config_error *err)
{
    json_t *fields = json_pack("{s:s, s:i, s:i, s:s, s:s}", "file", err->file, "line", err->line,
                               "column", err->column, "key", err->key, "reason", err->reason);
    sbh_log_fields(SB_LOG_ERROR, "config", NULL, NULL, fields, "config rejected");
}
