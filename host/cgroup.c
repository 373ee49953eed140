#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Our cgroup path for controller ("" for the v2 line "0::"), from /proc/self/cgroup. */
static int own_path(const char *controller, char *out, size_t len)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    char line[1024];
    int found = -1;
    if (!f)
        return -1;
    while (found < 0 && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = '\0';
        const char *ctrls = c1 + 1;
        int match = *controller ? strstr(ctrls, controller) != NULL && strncmp(ctrls, "name=", 5)
                                : !strcmp(line, "0") && !*ctrls;
        if (match && (size_t)snprintf(out, len, "%s", c2 + 1) < len)
            found = 0;
    }
    fclose(f);
    return found;
}

static int write_file(const char *dir, const char *file, const char *value)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, value, strlen(value));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(value) ? 0 : -1;
}

/* Make base/switchboard-name, cap it, move pid in. 0, or -1 with errno. */
static int cap_in(const char *base, const char *name, const char *limit_file,
                  unsigned long long bytes, pid_t pid, char **dir_out)
{
    char *dir, num[32];
    if (asprintf(&dir, "%s/switchboard-%s", base, name) < 0)
        return -1;
    snprintf(num, sizeof(num), "%llu", bytes);
    if ((mkdir(dir, 0755) < 0 && errno != EEXIST) || write_file(dir, limit_file, num) < 0) {
        int saved = errno;
        rmdir(dir);
        free(dir);
        errno = saved;
        return -1;
    }
    snprintf(num, sizeof(num), "%d", (int)pid);
    if (write_file(dir, "cgroup.procs", num) < 0) {
        int saved = errno;
        rmdir(dir);
        free(dir);
        errno = saved;
        return -1;
    }
    *dir_out = dir;
    return 0;
}

char *sbh_cgroup_memory_cap(pid_t pid, const char *name, unsigned mib, char *why, size_t why_len)
{
    char path[2048], base[4096];
    char *dir = NULL;
    unsigned long long bytes = (unsigned long long)mib * 1024 * 1024;
    if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0) {
        if (own_path("", path, sizeof(path)) < 0) {
            snprintf(why, why_len, "no cgroup v2 entry in /proc/self/cgroup");
            return NULL;
        }
        snprintf(base, sizeof(base), "/sys/fs/cgroup%s", strcmp(path, "/") ? path : "");
        /* The memory controller must be on for our children (fails while we
         * sit in base ourselves, unless systemd delegated it). */
        write_file(base, "cgroup.subtree_control", "+memory");
        if (cap_in(base, name, "memory.max", bytes, pid, &dir) == 0)
            return dir;
        snprintf(why, why_len, "cannot use cgroup v2 under %s: %s", base, strerror(errno));
        return NULL;
    }
    if (own_path("memory", path, sizeof(path)) < 0) {
        snprintf(why, why_len, "no memory cgroup controller");
        return NULL;
    }
    /* A container often mounts its own cgroup as the hierarchy's root. */
    snprintf(base, sizeof(base), "/sys/fs/cgroup/memory%s", strcmp(path, "/") ? path : "");
    if (cap_in(base, name, "memory.limit_in_bytes", bytes, pid, &dir) == 0 ||
        cap_in("/sys/fs/cgroup/memory", name, "memory.limit_in_bytes", bytes, pid, &dir) == 0)
        return dir;
    snprintf(why, why_len, "cannot use the v1 memory cgroup under %s: %s", base, strerror(errno));
    return NULL;
}

void sbh_cgroup_remove(char *dir)
{
    if (dir)
        rmdir(dir); /* fails while a straggler is still inside; it is reused next time */
    free(dir);
}
