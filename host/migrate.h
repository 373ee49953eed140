/*
 * Schema migrations: numbered SQL files per component (core, and each
 * plugin's own), applied in order, each recorded in schema_migrations with
 * its SHA-256. A changed applied file stops everything with an error naming
 * it. Concurrent daemons serialise on GET_LOCK.
 *
 * Layout: <dir>/<component>/<NNNN>_<name>.sql, component "core" first, then
 * the others in name order.
 */
#ifndef SBH_MIGRATE_H
#define SBH_MIGRATE_H

#include <stdio.h>

#include <mysql.h>

/*
 * Apply every pending migration under dir. Blocking (start-up and the
 * `migrate` command). Returns the number applied (>= 0), or -1 with why.
 */
int sbh_migrate_apply(MYSQL *conn, const char *dir, char *why, size_t why_len);

/* Print applied and pending migrations to out; -1 with why on failure
 * (including a changed applied file, which is also listed). */
int sbh_migrate_status(MYSQL *conn, const char *dir, FILE *out, char *why, size_t why_len);

#endif
