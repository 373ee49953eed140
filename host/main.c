/* switchboardd: command line, then the daemon. */
#include "daemon.h"

#include "log.h"

#include <switchboard/plugin.h>

#include <openssl/ssl.h>

#include <sys/resource.h>

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
            "usage: switchboardd [options] [command]\n"
            "commands:\n"
            "  (none)                run the daemon\n"
            "  migrate [--status]    apply pending database migrations (or list them) and exit\n"
            "  rotate-key            re-seal every stored secret under a new master key\n"
            "options:\n"
            "  -c, --config FILE     main config (default %s/switchboard/switchboard.json);\n"
            "                        FILE's directory's conf.d/*.json is merged over it\n"
            "  -p, --port N          listen port (wins over file and MULTI_PROVIDER_PORT)\n"
            "      --plugin-dir DIR  where plugin .so files are\n"
            "      --state-dir DIR   where the daemon keeps its state\n"
            "      --migrations-dir DIR  where the schema migrations are\n"
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

static int run_command(const char *command, const char *path, const struct sbh_config_overrides *ov,
                       int status)
{
    struct sbh_config_error err;
    struct sbh_config *cfg = sbh_config_load(path, ov, environ, &err);
    if (!cfg) {
        sbh_config_log_error(&err);
        return 1;
    }
    int rc = !strcmp(command, "migrate") ? sbh_cmd_migrate(cfg, status) : sbh_cmd_rotate_key(cfg);
    sbh_config_free(cfg);
    return rc;
}

/* Every Gateway or Socket Mode session is a socket: 1,000 of them do not fit
 * the usual soft limit of 1,024 descriptors (systemd's default for services),
 * and then accept() and outbound calls fail. Raise the soft limit towards the
 * hard one, to at most SBH_NOFILE_WANT. */
#define SBH_NOFILE_WANT 65536
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= SBH_NOFILE_WANT)
        return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > SBH_NOFILE_WANT ? SBH_NOFILE_WANT
                                                                                : rl.rlim_max;
    if (want > rl.rlim_cur) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* GnuTLS is in the process only because libcurl's LDAP and RTMP support
 * (libldap, librtmp) link it; curl is limited to http and https here
 * (host/httpc.c), and libssl does the daemon's TLS. Yet GnuTLS's library
 * constructor runs gnutls_global_init() at load, before main: ~1 MiB of RSS
 * (its tables, p11-kit, nettle, gmp). GnuTLS documents GNUTLS_NO_IMPLICIT_INIT=1
 * to skip that; libldap and librtmp call gnutls_global_init() themselves
 * before any use. As the constructor reads it before main, the daemon runs
 * itself again once (same pid, same arguments) with it set, then takes it out
 * of the environment so that its children (mariadbd, plugin-hosts) do not
 * inherit it. GNUTLS_NO_IMPLICIT_INIT set by the caller, to anything, is left
 * alone (0 keeps the implicit init and skips the re-exec). */
#define SBH_REEXEC_MARK "SWITCHBOARD_GNUTLS_REEXEC"
static void skip_gnutls_implicit_init(char **argv)
{
    if (getenv(SBH_REEXEC_MARK)) { /* the second run: the constructor saw it */
        unsetenv(SBH_REEXEC_MARK);
        unsetenv("GNUTLS_NO_IMPLICIT_INIT");
        return;
    }
    if (getenv("GNUTLS_NO_IMPLICIT_INIT"))
        return;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0 || (size_t)n >= sizeof(self) - 1)
        return;
    self[n] = '\0';
    if (setenv("GNUTLS_NO_IMPLICIT_INIT", "1", 1) != 0 || setenv(SBH_REEXEC_MARK, "1", 1) != 0)
        return;
    execv(self, argv);
    /* Could not: run on as we are, with GnuTLS initialised. */
    unsetenv(SBH_REEXEC_MARK);
    unsetenv("GNUTLS_NO_IMPLICIT_INIT");
}

/* OpenSSL's error strings (~3,000 library and reason texts put in a hash
 * table by the first OPENSSL_init_ssl(), as curl_global_init() and
 * libmariadb do) cost ~0.5 MiB of RSS. Without them an OpenSSL error reads
 * "error:0A000086:lib(20)::reason(134)" (`openssl errstr 0A000086` gives the
 * text) instead of "...:SSL routines::certificate verify failed"; the
 * certificate check's own reason (X509_verify_cert_error_string, which the
 * WebSocket client and curl print) stays readable. Done before anything else
 * initialises OpenSSL: the first caller decides, once.
 * SWITCHBOARD_OPENSSL_ERROR_STRINGS=1 keeps them. */
static void skip_openssl_error_strings(void)
{
    const char *e = getenv("SWITCHBOARD_OPENSSL_ERROR_STRINGS");
    if (e && !strcmp(e, "1"))
        return;
    OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_SSL_STRINGS | OPENSSL_INIT_NO_LOAD_CRYPTO_STRINGS, NULL);
}

int main(int argc, char **argv)
{
    enum { OPT_PLUGIN_DIR = 256, OPT_STATE_DIR, OPT_MIGRATIONS_DIR, OPT_CHECK, OPT_STATUS };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"port", required_argument, NULL, 'p'},
        {"plugin-dir", required_argument, NULL, OPT_PLUGIN_DIR},
        {"state-dir", required_argument, NULL, OPT_STATE_DIR},
        {"migrations-dir", required_argument, NULL, OPT_MIGRATIONS_DIR},
        {"check-config", no_argument, NULL, OPT_CHECK},
        {"status", no_argument, NULL, OPT_STATUS},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = SBH_SYSCONFDIR "/switchboard/switchboard.json";
    struct sbh_config_overrides ov = {0};
    int check = 0, status = 0, c;
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
        case OPT_MIGRATIONS_DIR:
            ov.migrations_dir = optarg;
            break;
        case OPT_CHECK:
            check = 1;
            break;
        case OPT_STATUS:
            status = 1;
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
    const char *command = optind < argc ? argv[optind++] : NULL;
    if (optind < argc || (command && strcmp(command, "migrate") && strcmp(command, "rotate-key")) ||
        (status && (!command || strcmp(command, "migrate")))) {
        usage(stderr);
        return 2;
    }
    if (check)
        return check_config(config, &ov);
    if (command)
        return run_command(command, config, &ov, status);

    skip_gnutls_implicit_init(argv);
    skip_openssl_error_strings();
    struct sbh_daemon d;
    int rc = 1;
    raise_nofile();
    if (sbh_daemon_init(&d, config, &ov, environ) == 0)
        rc = sbh_daemon_run(&d);
    sbh_daemon_free(&d);
    if (rc == 0)
        sbh_info("main", "shutdown complete");
    return rc;
}
