/*
 * Checking a plugin's descriptor (ABI, size, name, required callbacks,
 * settings schema) before anything else of it is used.
 */
#ifndef SBH_DESC_H
#define SBH_DESC_H

#include <stddef.h>

#include <switchboard/plugin.h>

/*
 * 0 when d can be used; -1 with why filled in. expect_name, when not NULL,
 * must equal the descriptor's name.
 */
int sbh_desc_check(const sb_plugin_desc *d, const char *expect_name, char *why, size_t why_len);

#endif
