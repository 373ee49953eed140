/*
 * JSON Schema validation for plugin settings (a practical subset of draft
 * 2020-12): type (string or array), properties, required,
 * additionalProperties (boolean or schema), enum, const, minimum, maximum,
 * exclusiveMinimum, exclusiveMaximum, minLength, maxLength, pattern (POSIX
 * extended regex), format "uri" (scheme://...), items, minItems, maxItems,
 * uniqueItems, default (ignored), description/title (ignored), and the
 * annotation "writeOnly": true, which marks a secret. Unknown keywords are
 * ignored, as the specification says.
 */
#ifndef SBH_JSONSCHEMA_H
#define SBH_JSONSCHEMA_H

#include <stddef.h>

#include <jansson.h>

struct sbh_schema_violation {
    char path[256];    /* where in the instance: "mode", "allowed_updates[2]", "" for the root */
    char message[256]; /* e.g. "must be one of \"webhook\", \"polling\"" */
};

/*
 * Validate doc against schema (both borrowed). Returns 0 when valid, 1 with
 * the first violation in *v when not, -1 when the schema itself uses a
 * keyword wrongly (v->message says how).
 */
int sbh_jsonschema_validate(const json_t *schema, const json_t *doc,
                            struct sbh_schema_violation *v);

/*
 * Names of the top-level properties marked "writeOnly": true, as a new JSON
 * array of strings (the instance API keeps those out of every answer).
 */
json_t *sbh_jsonschema_secret_fields(const json_t *schema);

#endif
