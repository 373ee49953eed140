/*
 * systemd readiness (sd_notify protocol) without linking libsystemd: one
 * datagram to $NOTIFY_SOCKET. A no-op when not started by systemd.
 */
#ifndef SBH_NOTIFY_H
#define SBH_NOTIFY_H

/* Send state, e.g. "READY=1"; errors are ignored, as sd_notify's callers do. */
void sbh_notify(const char *state);

#endif
