/*
 * The embedded MariaDB server (see mariadb.h).
 *
 * Layout under <state_dir>/mariadb (mode 0700, which is what keeps the
 * password-less root account private):
 *   data/         the data dir, created by mariadb-install-db on first use
 *   mysqld.sock   the only way in: --skip-networking
 *   mariadbd.pid  written by the server; tells a live server from a stale one
 *   mariadb.log   the server's error log (and mariadb-install-db's output)
 *   tmp/          the server's tmpdir: servers sharing /tmp collide on
 *                 temp table names (concurrent mariadb-install-db fails)
 */
#include "mariadb.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define START_TIMEOUT_MS 30000
#define STOP_TIMEOUT_MS 20000
#define POLL_MS 100

/* Debian's paths, then Fedora's (/usr/libexec). */
static const char *const g_servers[] = {"/usr/sbin/mariadbd", "/usr/sbin/mysqld",
                                        "/usr/libexec/mariadbd", "/usr/libexec/mysqld", NULL};
static const char *const g_installers[] = {"/usr/bin/mariadb-install-db",
                                           "/usr/bin/mysql_install_db", NULL};

/* Small enough for a 2-core box with little memory; starts in seconds. */
static const char *const g_server_opts[] = {"--innodb-buffer-pool-size=128M",
                                            "--innodb-log-file-size=256M",
                                            "--innodb-log-buffer-size=8M",
                                            "--key-buffer-size=8M",
                                            "--max-connections=64",
                                            "--performance-schema=OFF",
                                            "--skip-name-resolve",
                                            "--character-set-server=utf8mb4",
                                            NULL};

static const char *find_exe(const char *const *candidates)
{
    for (; *candidates; candidates++)
        if (access(*candidates, X_OK) == 0)
            return *candidates;
    return NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Make dir with mode 0700 if missing, and insist on 0700 and our owner. */
static int private_dir(const char *dir, char *why, size_t why_len)
{
    struct stat st;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(why, why_len, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
        snprintf(why, why_len, "%s is not a directory owned by us", dir);
        return -1;
    }
    if ((st.st_mode & 0777) != 0700 && chmod(dir, 0700) < 0) {
        snprintf(why, why_len, "cannot chmod 0700 %s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* Close every descriptor from 3 up: the daemon's listeners must not live on
 * in the server. Async-signal-safe (runs between fork and exec). */
static void close_from_3(void)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3u, ~0u, 0u) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < (max > 0 ? max : 1024); fd++)
        close((int)fd);
}

/* Move fd above 2 (keeping close-on-exec) so the dup2 calls onto 0-2 in the
 * child neither clobber it nor leave it close-on-exec when a daemon started
 * with a closed stdin got it as fd 0. */
static int open_high(int fd)
{
    if (fd < 0 || fd > 2)
        return fd;
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return high;
}

/*
 * fork + exec argv with stdin on /dev/null, stderr (and stdout with
 * out_to_log, else /dev/null) appended to log_path, in a new session (own process group, no
 * terminal) so terminal signals aimed at the daemon do not reach it. Returns the pid or -1.
 */
static pid_t spawn(char *const argv[], const char *log_path, int out_to_log, char *why,
                   size_t why_len)
{
    /* Opened before fork: only async-signal-safe calls after it. */
    int null = open_high(open("/dev/null", O_RDWR | O_CLOEXEC));
    int log = open_high(open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    pid_t pid = -1;
    if (null < 0 || log < 0) {
        snprintf(why, why_len, "cannot open /dev/null or %s: %s", log_path, strerror(errno));
        goto out;
    }
    pid = fork();
    if (pid < 0) {
        snprintf(why, why_len, "fork: %s", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        setsid();
        dup2(null, 0);
        dup2(out_to_log ? log : null, 1);
        dup2(log, 2);
        close_from_3();
        /* systemd's readiness socket is ours: the server must not say READY. */
        unsetenv("NOTIFY_SOCKET");
        execv(argv[0], argv);
        _exit(127);
    }
out:
    if (null >= 0)
        close(null);
    if (log >= 0)
        close(log);
    return pid;
}

/* waitpid that survives a daemon which ignores SIGCHLD (then ECHILD: the
 * process is gone once kill(pid, 0) says so). 1 exited, 0 running. */
static int child_exited(pid_t pid, int *status)
{
    *status = 0;
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid)
        return 1;
    if (r < 0 && errno == ECHILD)
        return kill(pid, 0) < 0 && errno == ESRCH;
    return 0;
}

static const char *user_name(void)
{
    struct passwd *pw = getpwuid(geteuid());
    return pw ? pw->pw_name : "root";
}

/*
 * First use: mariadb-install-db into data.init, then rename it to data, so
 * a start-up killed half-way leaves no half-initialised data dir behind.
 */
static int init_datadir(const char *base, const char *datadir, const char *log_path, char *why,
                        size_t why_len)
{
    char sys[PATH_MAX], tmp[PATH_MAX], opt_datadir[PATH_MAX + 16], opt_user[300];
    char opt_tmpdir[PATH_MAX + 16];
    snprintf(sys, sizeof(sys), "%s/mysql", datadir);
    struct stat st;
    if (stat(sys, &st) == 0)
        return 0; /* system tables exist: initialised */
    const char *installer = find_exe(g_installers);
    if (!installer) {
        snprintf(why, why_len, "mariadb-install-db not found (apt-get install mariadb-server)");
        return -1;
    }
    snprintf(tmp, sizeof(tmp), "%s/data.init", base);
    nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    snprintf(opt_datadir, sizeof(opt_datadir), "--datadir=%s", tmp);
    snprintf(opt_user, sizeof(opt_user), "--user=%s", user_name());
    snprintf(opt_tmpdir, sizeof(opt_tmpdir), "--tmpdir=%s/tmp", base);
    char *argv[] = {(char *)installer,
                    "--no-defaults",
                    opt_datadir,
                    opt_tmpdir,
                    opt_user,
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                    "--innodb-log-file-size=256M",
                    NULL};
    sbh_info("mariadb", "initialising %s (first start)", datadir);
    /* The installer reports its errors on stdout. */
    pid_t pid = spawn(argv, log_path, 1, why, why_len);
    if (pid < 0)
        return -1;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(why, why_len, "%s failed (status %d); see %s", installer, status, log_path);
        return -1;
    }
    /* An empty data dir left by hand is fine to replace; anything else is
     * not ours to delete, and rename then fails with a clear error. */
    rmdir(datadir);
    if (rename(tmp, datadir) < 0) {
        snprintf(why, why_len, "cannot rename %s to %s: %s", tmp, datadir, strerror(errno));
        return -1;
    }
    return 0;
}

/* Is the process in pid_path alive and a MariaDB server? 1 yes, 0 no (and
 * the stale pid file, socket and socket lock are removed), -1 error. */
static int running_server(const char *pid_path, const char *sock, pid_t *pid_out, char *why,
                          size_t why_len)
{
    FILE *f = fopen(pid_path, "r");
    if (!f)
        return 0;
    long pid = 0;
    int n = fscanf(f, "%ld", &pid);
    fclose(f);
    if (n == 1 && pid > 1 && (kill((pid_t)pid, 0) == 0 || errno == EPERM)) {
        /* The pid may have been reused by something else since. */
        char comm_path[64], comm[64] = "";
        snprintf(comm_path, sizeof(comm_path), "/proc/%ld/comm", pid);
        FILE *c = fopen(comm_path, "r");
        if (c) {
            if (!fgets(comm, sizeof(comm), c))
                comm[0] = '\0';
            fclose(c);
        }
        if (!c || !strncmp(comm, "mariadbd", 8) || !strncmp(comm, "mysqld", 6)) {
            *pid_out = (pid_t)pid;
            return 1;
        }
    }
    char lock[PATH_MAX];
    snprintf(lock, sizeof(lock), "%s.lock", sock);
    if ((unlink(pid_path) < 0 && errno != ENOENT) || (unlink(sock) < 0 && errno != ENOENT) ||
        (unlink(lock) < 0 && errno != ENOENT)) {
        snprintf(why, why_len, "cannot remove the stale %s or %s: %s", pid_path, sock,
                 strerror(errno));
        return -1;
    }
    sbh_info("mariadb", "removed stale pid file and socket of a dead server (pid %ld)", pid);
    return 0;
}

static pid_t start_server(const struct sbh_mariadb *m, const char *base, const char *pid_path,
                          char *why, size_t why_len)
{
    const char *server = find_exe(g_servers);
    if (!server) {
        snprintf(why, why_len, "mariadbd not found (apt-get install mariadb-server)");
        return -1;
    }
    char o_datadir[PATH_MAX + 16], o_socket[PATH_MAX + 16], o_pid[PATH_MAX + 16];
    char o_log[PATH_MAX + 16], o_user[300], o_tmp[PATH_MAX + 16];
    snprintf(o_datadir, sizeof(o_datadir), "--datadir=%s", m->datadir);
    snprintf(o_socket, sizeof(o_socket), "--socket=%s", m->socket);
    snprintf(o_pid, sizeof(o_pid), "--pid-file=%s", pid_path);
    snprintf(o_log, sizeof(o_log), "--log-error=%s", m->log_path);
    snprintf(o_tmp, sizeof(o_tmp), "--tmpdir=%s/tmp", base);
    /* As root mariadbd refuses to start without --user. */
    snprintf(o_user, sizeof(o_user), "--user=%s", user_name());
    char *argv[32] = {(char *)server, "--no-defaults", o_datadir, o_socket, "--skip-networking",
                      o_pid,          o_log,           o_user,    o_tmp};
    size_t n = 9;
    for (size_t i = 0; g_server_opts[i] && n < sizeof(argv) / sizeof(argv[0]) - 1; i++)
        argv[n++] = (char *)g_server_opts[i];
    argv[n] = NULL;
    return spawn(argv, m->log_path, 0, why, why_len);
}

/* Poll until a connection succeeds, then create the database. */
static int wait_ready(struct sbh_mariadb *m, struct sbh_db_params *p, char *why, size_t why_len)
{
    char cwhy[256] = "";
    struct stat st;
    for (long waited = 0; waited < START_TIMEOUT_MS; waited += POLL_MS) {
        int status;
        if (child_exited(m->pid, &status)) {
            m->pid = 0;
            snprintf(why, why_len, "mariadbd exited during start-up (status %d); see %s", status,
                     m->log_path);
            return -1;
        }
        if (stat(m->socket, &st) == 0 && S_ISSOCK(st.st_mode)) {
            MYSQL *conn = sbh_db_connect(p, cwhy, sizeof(cwhy));
            if (conn) {
                int rc = mysql_query(conn, "CREATE DATABASE IF NOT EXISTS switchboard "
                                           "CHARACTER SET utf8mb4");
                if (rc != 0)
                    snprintf(why, why_len, "cannot create database switchboard: %s; see %s",
                             mysql_error(conn), m->log_path);
                mysql_close(conn);
                return rc == 0 ? 0 : -1;
            }
        }
        sleep_ms(POLL_MS);
    }
    snprintf(why, why_len, "mariadbd did not accept connections within %d s (%s); see %s",
             START_TIMEOUT_MS / 1000, cwhy[0] ? cwhy : "no socket yet", m->log_path);
    return -1;
}

static char *path_join(const char *a, const char *b)
{
    char *s = NULL;
    return asprintf(&s, "%s/%s", a, b) < 0 ? NULL : s;
}

int sbh_mariadb_start(struct sbh_mariadb *m, const char *state_dir, struct sbh_db_params *params,
                      char *why, size_t why_len)
{
    *m = (struct sbh_mariadb){0};
    *params = (struct sbh_db_params){0};
    char *base = path_join(state_dir, "mariadb"), *pid_path = NULL, *tmp_path = NULL;
    int rc = -1;
    if (!base || private_dir(state_dir, why, why_len) < 0 || private_dir(base, why, why_len) < 0)
        goto out;
    m->datadir = path_join(base, "data");
    m->socket = path_join(base, "mysqld.sock");
    m->log_path = path_join(base, "mariadb.log");
    pid_path = path_join(base, "mariadbd.pid");
    tmp_path = path_join(base, "tmp");
    if (!m->datadir || !m->socket || !m->log_path || !pid_path || !tmp_path) {
        snprintf(why, why_len, "out of memory");
        goto out;
    }
    if (private_dir(tmp_path, why, why_len) < 0)
        goto out;
    if (strlen(m->socket) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(why, why_len,
                 "socket path %s is too long for a unix socket: use a shorter "
                 "state_dir",
                 m->socket);
        goto out;
    }
    pid_t other = 0;
    int running = running_server(pid_path, m->socket, &other, why, why_len);
    if (running < 0)
        goto out;
    if (running) {
        snprintf(why, why_len,
                 "a MariaDB server (pid %ld) from an earlier run still uses %s; "
                 "stop it (kill %ld) and start again",
                 (long)other, base, (long)other);
        goto out;
    }
    if (init_datadir(base, m->datadir, m->log_path, why, why_len) < 0)
        goto out;
    m->pid = start_server(m, base, pid_path, why, why_len);
    if (m->pid < 0) {
        m->pid = 0;
        goto out;
    }
    params->socket = strdup(m->socket);
    params->user = strdup("root");
    if (!params->socket || !params->user) {
        snprintf(why, why_len, "out of memory");
        goto out;
    }
    if (wait_ready(m, params, why, why_len) < 0)
        goto out;
    params->database = strdup("switchboard");
    if (!params->database) {
        snprintf(why, why_len, "out of memory");
        goto out;
    }
    sbh_info("mariadb", "embedded MariaDB running (pid %ld, socket %s)", (long)m->pid, m->socket);
    rc = 0;
out:
    if (rc < 0) {
        sbh_mariadb_stop(m);
        sbh_db_params_clear(params);
    }
    free(tmp_path);
    free(pid_path);
    free(base);
    return rc;
}

void sbh_mariadb_stop(struct sbh_mariadb *m)
{
    if (!m)
        return;
    if (m->pid > 0) {
        int status;
        kill(m->pid, SIGTERM);
        long waited = 0;
        while (!child_exited(m->pid, &status) && waited < STOP_TIMEOUT_MS) {
            sleep_ms(50);
            waited += 50;
        }
        if (waited >= STOP_TIMEOUT_MS) {
            sbh_warn("mariadb", "mariadbd (pid %ld) ignored SIGTERM for %d s: killing it",
                     (long)m->pid, STOP_TIMEOUT_MS / 1000);
            kill(-m->pid, SIGKILL);
            while (waitpid(m->pid, &status, 0) < 0 && errno == EINTR)
                ;
        }
    }
    free(m->datadir);
    free(m->socket);
    free(m->log_path);
    *m = (struct sbh_mariadb){0};
}
