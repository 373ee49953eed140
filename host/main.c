/* switchboardd: command line, then the daemon. */
#include "daemon.h"

#include "log.h"

#include <switchboard/plugin.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef SBH_SYSCONFDIR
#define SBH_SYSCONFDIR "/etc"
#endif
#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0"
#endif

extern char **environ;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: switchboardd [options]\n"
            "  -c, --config FILE     main config (default %s/switchboard/switchboard.json);\n"
            "                        FILE's directory's conf.d/*.json is merged over it\n"
            "  -p, --port N          listen port (wins over file and MULTI_PROVIDER_PORT)\n"
            "      --plugin-dir DIR  where plugin .so files are\n"
            "      --state-dir DIR   where the daemon keeps its state\n"
            "      --check-config    validate the config and exit\n"
            "  -V, --version         print the version and exit\n"
            "  -h, --help            this text\n",
            SBH_SYSCONFDIR);
}

static int check_config(const char *path, const struct sbh_config_overrides *ov)
{
    struct sbh_config_error err;
    struct sbh_config *cfg = sbh_config_load(path, ov, environ, &err);
    if (!cfg) {
        sbh_config_log_error(&err);
        fprintf(stdout, "%s:%d:%d: %s%s%s\n", err.file, err.line, err.column, err.key,
                err.key[0] ? ": " : "", err.reason);
        return 1;
    }
    fprintf(stdout, "%s: OK (%zu plugins, %zu instances)\n", path, cfg->n_plugins,
            cfg->n_instances);
    sbh_config_free(cfg);
    return 0;
}

int main(int argc, char **argv)
{
    enum { OPT_PLUGIN_DIR = 256, OPT_STATE_DIR, OPT_CHECK };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"port", required_argument, NULL, 'p'},
        {"plugin-dir", required_argument, NULL, OPT_PLUGIN_DIR},
        {"state-dir", required_argument, NULL, OPT_STATE_DIR},
        {"check-config", no_argument, NULL, OPT_CHECK},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = SBH_SYSCONFDIR "/switchboard/switchboard.json";
    struct sbh_config_overrides ov = {0};
    int check = 0, c;
    char *end;

    while ((c = getopt_long(argc, argv, "c:p:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'p':
            ov.port = (int)strtol(optarg, &end, 10);
            if (*end || ov.port < 1 || ov.port > 65535) {
                fprintf(stderr, "switchboardd: --port must be 1-65535\n");
                return 2;
            }
            break;
        case OPT_PLUGIN_DIR:
            ov.plugin_dir = optarg;
            break;
        case OPT_STATE_DIR:
            ov.state_dir = optarg;
            break;
        case OPT_CHECK:
            check = 1;
            break;
        case 'V':
            printf("switchboardd %s (plugin ABI %d.%d)\n", PACKAGE_VERSION, SB_ABI_MAJOR,
                   SB_ABI_MINOR);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    if (check)
        return check_config(config, &ov);

    struct sbh_daemon d;
    int rc = 1;
    if (sbh_daemon_init(&d, config, &ov, environ) == 0)
        rc = sbh_daemon_run(&d);
    sbh_daemon_free(&d);
    if (rc == 0)
        sbh_info("main", "shutdown complete");
    return rc;
}
