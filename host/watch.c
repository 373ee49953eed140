/*
 * inotify on the config file's directory, its conf.d and the plugin
 * directory. Package managers and editors touch files in bursts (temp file,
 * write, rename), so events only arm a short timer and the reload runs once
 * the burst is over.
 */
#include "daemon.h"

#include "log.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#define DEBOUNCE_MS 150
#define MAX_WATCHES 4

struct sbh_watch {
    struct sbh_daemon *d;
    int fd;
    int wd[MAX_WATCHES];
    struct event *read_ev;
    struct event *debounce;
};

static int relevant(const struct inotify_event *ev)
{
    if (ev->mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF))
        return 1;
    /* Kubernetes swaps a mounted ConfigMap by renaming its ..data link. */
    if (ev->len && !strcmp(ev->name, "..data"))
        return 1;
    if (!ev->len || ev->name[0] == '.')
        return 0; /* hidden temp files: the rename that follows counts */
    size_t n = strlen(ev->name);
    if (!strcmp(ev->name, "conf.d"))
        return 1;
    return (n > 5 && !strcmp(ev->name + n - 5, ".json")) ||
           (n > 3 && !strcmp(ev->name + n - 3, ".so")) ||
           (n > 4 && !strcmp(ev->name + n - 4, ".key"));
}

static void on_debounce(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_watch *w = arg;
    sbh_daemon_reload(w->d);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct sbh_watch *w = arg;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    int hit = 0;
    ssize_t n;
    while ((n = read(w->fd, buf, sizeof(buf))) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            hit |= relevant(ev);
            p += sizeof(*ev) + ev->len;
        }
    }
    if (!hit)
        return;
    struct timeval tv = {0, DEBOUNCE_MS * 1000};
    evtimer_add(w->debounce, &tv);
}

void sbh_watch_update(struct sbh_watch *w)
{
    const struct sbh_config *cfg = w->d->cfg;
    char main_dir[PATH_MAX];
    snprintf(main_dir, sizeof(main_dir), "%s", cfg->config_path);
    char *slash = strrchr(main_dir, '/');
    if (!slash)
        snprintf(main_dir, sizeof(main_dir), ".");
    else
        slash[slash == main_dir ? 1 : 0] = '\0';
    /* The key file may live elsewhere; rotate-key rewrites it there. */
    char key_dir[PATH_MAX];
    snprintf(key_dir, sizeof(key_dir), "%s", cfg->master_key_file);
    char *key_slash = strrchr(key_dir, '/');
    if (key_slash)
        key_slash[key_slash == key_dir ? 1 : 0] = '\0';
    const char *dirs[MAX_WATCHES] = {main_dir, cfg->confd_dir, cfg->plugin_dir,
                                     key_slash ? key_dir : "."};
    const uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE |
                          IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF;
    /* Remove all first: two entries naming one directory share a descriptor. */
    for (int i = 0; i < MAX_WATCHES; i++)
        if (w->wd[i] >= 0)
            inotify_rm_watch(w->fd, w->wd[i]);
    for (int i = 0; i < MAX_WATCHES; i++) {
        w->wd[i] = inotify_add_watch(w->fd, dirs[i], mask);
        /* conf.d may not exist yet; its creation in the parent is watched. */
        if (w->wd[i] < 0 && errno != ENOENT)
            sbh_log(SB_LOG_WARN, "reload", NULL, NULL, "cannot watch %s: %s", dirs[i],
                    strerror(errno));
    }
}

struct sbh_watch *sbh_watch_new(struct sbh_daemon *d)
{
    struct sbh_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->d = d;
    for (int i = 0; i < MAX_WATCHES; i++)
        w->wd[i] = -1;
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd < 0) {
        sbh_log(SB_LOG_WARN, "reload", NULL, NULL,
                "inotify unavailable (%s): reload on SIGHUP only", strerror(errno));
        free(w);
        return NULL;
    }
    w->read_ev = event_new(d->base, w->fd, EV_READ | EV_PERSIST, on_readable, w);
    w->debounce = evtimer_new(d->base, on_debounce, w);
    if (!w->read_ev || !w->debounce) {
        sbh_watch_free(w);
        return NULL;
    }
    event_add(w->read_ev, NULL);
    sbh_watch_update(w);
    return w;
}

void sbh_watch_free(struct sbh_watch *w)
{
    if (!w)
        return;
    if (w->read_ev)
        event_free(w->read_ev);
    if (w->debounce)
        event_free(w->debounce);
    close(w->fd);
    free(w);
}
