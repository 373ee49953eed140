/*
 * Structured logs: one JSON object per line on stderr, with time, level,
 * component, provider, instance and message, plus any extra fields.
 */
#ifndef SBH_LOG_H
#define SBH_LOG_H

#include <stdarg.h>

#include <jansson.h>

#include <switchboard/services.h>

void sbh_log_set_level(enum sb_log_level level);
enum sb_log_level sbh_log_get_level(void);
/* Parse "error|warn|info|debug"; returns -1 for anything else. */
int sbh_log_level_parse(const char *s);

/* provider and instance may be NULL. */
void sbh_log(enum sb_log_level level, const char *component, const char *provider,
             const char *instance, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void sbh_logv(enum sb_log_level level, const char *component, const char *provider,
              const char *instance, const char *fmt, va_list ap);
/* Same, with extra fields merged into the line; steals fields (may be NULL). */
void sbh_log_fields(enum sb_log_level level, const char *component, const char *provider,
                    const char *instance, json_t *fields, const char *message);

#define sbh_error(comp, ...) sbh_log(SB_LOG_ERROR, comp, NULL, NULL, __VA_ARGS__)
#define sbh_warn(comp, ...) sbh_log(SB_LOG_WARN, comp, NULL, NULL, __VA_ARGS__)
#define sbh_info(comp, ...) sbh_log(SB_LOG_INFO, comp, NULL, NULL, __VA_ARGS__)
#define sbh_debug(comp, ...) sbh_log(SB_LOG_DEBUG, comp, NULL, NULL, __VA_ARGS__)

#endif
