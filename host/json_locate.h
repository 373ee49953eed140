/*
 * Jansson keeps no source positions for values, so config errors that are
 * found after parsing (unknown key, wrong type) are located again in the raw
 * text with this small scanner.
 */
#ifndef SBH_JSON_LOCATE_H
#define SBH_JSON_LOCATE_H

#include <stddef.h>

/*
 * Find the object key named by path[0..depth-1] (each an object key) in text
 * and store its 1-based line and column. With depth 0 the answer is 1:1.
 * Returns 0 when found, -1 when the path is not in the text (line/column then
 * point at the deepest object found).
 */
int sbh_json_locate(const char *text, size_t len, const char *const *path, size_t depth, int *line,
                    int *column);

#endif
