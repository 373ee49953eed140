#include "loader.h"

#include "desc.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int sbh_file_id_read(const char *path, struct sbh_file_id *id)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return -1;
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->size = st.st_size;
    id->mtime = st.st_mtim;
    return 0;
}

int sbh_file_id_equal(const struct sbh_file_id *a, const struct sbh_file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Copy src to dst; the identity of what was copied goes to *id. */
static int copy_file(const char *src, const char *dst, struct sbh_file_id *id, char *why,
                     size_t why_len)
{
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = -1;
    struct stat st;
    if (in < 0 || fstat(in, &st) < 0) {
        snprintf(why, why_len, "cannot open %s: %s", src, strerror(errno));
        goto out;
    }
    /* Identity from the open descriptor: what we copy is what we record. */
    *id = (struct sbh_file_id){st.st_dev, st.st_ino, st.st_size, st.st_mtim};
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) {
        snprintf(why, why_len, "cannot create %s: %s", dst, strerror(errno));
        goto out;
    }
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, (size_t)n) != n) {
            snprintf(why, why_len, "cannot write %s: %s", dst, strerror(errno));
            goto out;
        }
    if (n < 0) {
        snprintf(why, why_len, "cannot read %s: %s", src, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) < 0 && rc == 0) {
        snprintf(why, why_len, "cannot write %s: %s", dst, strerror(errno));
        rc = -1;
    }
    return rc;
}

struct sb_plugin *sbh_loader_open(const char *file, const char *copy_dir, const char *expect_name,
                                  unsigned generation, char *why, size_t why_len)
{
    struct sb_plugin *gen = calloc(1, sizeof(*gen));
    if (!gen) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    LIST_INIT(&gen->timers);
    gen->generation = generation;
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (asprintf(&gen->copy_path, "%s/%d.%u.%s", copy_dir, (int)getpid(), generation, base) < 0) {
        gen->copy_path = NULL;
        snprintf(why, why_len, "out of memory");
        goto fail;
    }
    if (copy_file(file, gen->copy_path, &gen->file_id, why, why_len) < 0)
        goto fail;
    gen->dl = dlopen(gen->copy_path, RTLD_NOW | RTLD_LOCAL);
    if (!gen->dl) {
        snprintf(why, why_len, "dlopen failed: %s", dlerror());
        goto fail;
    }
    sb_plugin_entry_fn entry;
    *(void **)&entry = dlsym(gen->dl, SB_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        snprintf(why, why_len, "no %s symbol: not a switchboard plugin", SB_PLUGIN_ENTRY_SYMBOL);
        goto fail;
    }
    gen->desc = entry();
    if (!gen->desc) {
        snprintf(why, why_len, "%s returned NULL", SB_PLUGIN_ENTRY_SYMBOL);
        goto fail;
    }
    if (sbh_desc_check(gen->desc, expect_name, why, why_len) < 0)
        goto fail;
    return gen;
fail:
    gen->desc = NULL;
    sbh_loader_close(gen);
    return NULL;
}

void sbh_loader_close(struct sb_plugin *gen)
{
    if (!gen)
        return;
    if (gen->dl)
        dlclose(gen->dl);
    if (gen->copy_path)
        unlink(gen->copy_path);
    free(gen->copy_path);
    free(gen);
}
