#include "log.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static enum sb_log_level current_level = SB_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void sbh_log_set_level(enum sb_log_level level)
{
    current_level = level;
}

enum sb_log_level sbh_log_get_level(void)
{
    return current_level;
}

int sbh_log_level_parse(const char *s)
{
    for (int i = 0; i <= SB_LOG_DEBUG; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

static void format_time(char *buf, size_t len)
{
    struct timeval tv;
    struct tm tm;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03dZ", (int)(tv.tv_usec / 1000));
}

void sbh_log_fields(enum sb_log_level level, const char *component, const char *provider,
                    const char *instance, json_t *fields, const char *message)
{
    if (level > current_level) {
        json_decref(fields);
        return;
    }
    char ts[40];
    format_time(ts, sizeof(ts));
    json_t *line = json_pack("{s:s, s:s, s:s}", "time", ts, "level", level_names[level],
                             "component", component ? component : "main");
    if (!line) {
        json_decref(fields);
        return;
    }
    if (provider)
        json_object_set_new(line, "provider", json_string(provider));
    if (instance)
        json_object_set_new(line, "instance", json_string(instance));
    /* json_string refuses invalid UTF-8; keep the line rather than lose it. */
    json_t *msg = json_string(message);
    json_object_set_new(line, "message", msg ? msg : json_string("(message not UTF-8)"));
    if (fields)
        json_object_update_missing(line, fields);
    json_decref(fields);

    char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(line);
    if (!text)
        return;
    /* One write per line so lines from concurrent processes do not interleave. */
    size_t n = strlen(text);
    text[n] = '\n';
    fwrite(text, 1, n + 1, stderr);
    fflush(stderr);
    text[n] = '\0';
    free(text);
}

void sbh_logv(enum sb_log_level level, const char *component, const char *provider,
              const char *instance, const char *fmt, va_list ap)
{
    if (level > current_level)
        return;
    char buf[2048];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    sbh_log_fields(level, component, provider, instance, NULL, buf);
}

void sbh_log(enum sb_log_level level, const char *component, const char *provider,
             const char *instance, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sbh_logv(level, component, provider, instance, fmt, ap);
    va_end(ap);
}
