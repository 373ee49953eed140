/*
 * The embedded default: a private MariaDB server the daemon runs itself when
 * no DATABASE_URL is given. Data dir <state_dir>/mariadb, a unix socket
 * inside it, no TCP port, root reachable only through that socket.
 */
#ifndef SBH_MARIADB_H
#define SBH_MARIADB_H

#include <stddef.h>
#include <sys/types.h>

#include "db.h"

struct sbh_mariadb {
    pid_t pid;
    char *datadir;
    char *socket;
    char *log_path;
};

/*
 * Initialise the data dir on first use (mariadb-install-db), start mariadbd
 * in its own process group, wait (bounded) until it accepts connections and
 * make sure database `switchboard` exists. Blocking: call before the loop
 * runs. Fills params to reach it. Returns 0, or -1 with why (the server's
 * log path is named in why).
 */
int sbh_mariadb_start(struct sbh_mariadb *m, const char *state_dir, struct sbh_db_params *params,
                      char *why, size_t why_len);

/* SIGTERM the server, wait for it (bounded, then SIGKILL), free. */
void sbh_mariadb_stop(struct sbh_mariadb *m);

#endif
