/*
 * A memory cap for one plugin-host (and whatever it starts) through a cgroup
 * of its own under the daemon's: cgroup v2 memory.max, or the v1 memory
 * controller's memory.limit_in_bytes. Works only where the daemon may write
 * its cgroup tree (a delegated subtree, a container's writable hierarchy).
 */
#ifndef SBH_CGROUP_H
#define SBH_CGROUP_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Move pid into "<daemon's cgroup>/switchboard-<name>" capped at mib MiB.
 * Returns the cgroup's directory (malloc'd, for sbh_cgroup_remove), or NULL
 * with why.
 */
char *sbh_cgroup_memory_cap(pid_t pid, const char *name, unsigned mib, char *why, size_t why_len);

/* Remove the cgroup once its processes are gone (EBUSY is left alone); frees dir. */
void sbh_cgroup_remove(char *dir);

#endif
