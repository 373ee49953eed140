/*
 * Loading one generation of a plugin .so: private copy, dlopen, entry
 * symbol, ABI and descriptor checks. Nothing here calls into the plugin
 * beyond its entry function.
 */
#ifndef SBH_LOADER_H
#define SBH_LOADER_H

#include <stddef.h>

#include "runtime.h"

/* Identity of the file at path now; -1 when it cannot be stat'ed. */
int sbh_file_id_read(const char *path, struct sbh_file_id *id);
int sbh_file_id_equal(const struct sbh_file_id *a, const struct sbh_file_id *b);

/*
 * Copy file into copy_dir under a name of its own (glibc hands back an
 * already-loaded object when the path matches, and a file rewritten in place
 * would crash whoever maps it), dlopen it RTLD_NOW|RTLD_LOCAL and check its
 * descriptor. expect_name, when not NULL, must equal the descriptor's name.
 * Returns a new generation (not initialised), or NULL with why filled in.
 */
struct sb_plugin *sbh_loader_open(const char *file, const char *copy_dir, const char *expect_name,
                                  unsigned generation, char *why, size_t why_len);

/* dlclose and delete the private copy. The generation must be shut down. */
void sbh_loader_close(struct sb_plugin *gen);

#endif
