"""The whatsweb plugin end to end: the real daemon, a switchboard-plugin-host
per instance, a real headless Chromium, and the fixture page of
fakes/whatsweb.py standing in for web.whatsapp.com.

QR shown through GET /v1/instances/{id}/qr (text and PNG) and rotated,
instance.status events, scan -> ready, text and media sends recorded by the
page and moved to delivered/read by its acks, inbound messages, the login kept
in the profile across an instance restart, Chromium killed (SIGKILL) or hung
(SIGSTOP) and restarted, logout, and no browser left after a stop."""

import base64
import os
import signal
import time

import pytest

from cdp import chromium_path
from conftest import base_config, free_port, plugin_dir, wait_until
from fakeprovider import FAST_OUTBOX, SSE, get_message, send, wait_state
from fakes.whatsweb import FakeWhatsWeb
from providers import create_instance, instance_status, wait_inbound, wait_instance_state

HOST = os.environ.get("SB_PLUGIN_HOST")
pytestmark = [
    pytest.mark.skipif(chromium_path() is None,
                       reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(not HOST, reason="SB_PLUGIN_HOST is not set (run through make check)"),
]

PEER = "15557654321@c.us"
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
                           "hQGAhKmMIQAAAABJRU5ErkJggg==")
# Chromium under a sanitizer-built plugin-host starts slower; be generous.
BROWSER_DEADLINE = 60.0


@pytest.fixture
def ww():
    f = FakeWhatsWeb(qr_rotate_ms=1500).start()
    yield f
    f.close()


def ww_daemon(make_daemon, process=None):
    cfg = base_config(free_port())
    cfg["plugin_host"] = HOST
    cfg["plugins"]["whatsweb"] = {"enabled": True, "isolation": "process",
                                  "process": dict(process or {"stop_grace_ms": 10000})}
    cfg["outbox"] = dict(FAST_OUTBOX)
    files = {"echo.so": os.path.join(plugin_dir(), "echo.so"),
             "whatsweb.so": os.path.join(plugin_dir(), "whatsweb.so")}
    return make_daemon(config=cfg, plugins=files)


def ww_instance(d, ww, name="wa", **settings):
    s = {"url": ww.url, "health_interval_ms": 500, "health_timeout_ms": 3000,
         "restart_backoff_ms": 200, "restart_backoff_max_ms": 1000}
    s.update(settings)
    return create_instance(d, "whatsweb", name, s, {})


def provider(d, iid):
    return instance_status(d, iid).get("provider_status", {})


def wait_ready(d, iid, timeout=BROWSER_DEADLINE, pred=None):
    """State connected and the plugin's status caught up (it follows the state frame)."""
    def ok():
        st = instance_status(d, iid)
        ps = st.get("provider_status", {})
        if st.get("state") == "connected" and ps.get("phase") == "ready" and \
                (pred is None or pred(ps)):
            return st
        return None
    return wait_until(ok, timeout, interval=0.1, what="instance %s ready" % iid)


def login(d, ww, iid):
    wait_instance_state(d, iid, "qr", timeout=BROWSER_DEADLINE)
    ww.scan()
    return wait_ready(d, iid)


def browsers_with_profile(profile):
    """pids of processes whose command line names this profile directory."""
    out = []
    needle = ("--user-data-dir=" + profile).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if needle in args:
            out.append(int(pid))
    return out


def status_events(sse, status):
    return [e for e in sse.events if e.get("event") == "instance.status"
            and isinstance(e.get("data"), dict) and e["data"]["data"].get("status") == status]


def wait_events(sse, pred, n=1, timeout=15.0, what="events"):
    return wait_until(lambda: (lambda got: got if len(got) >= n else None)(
        [e for e in list(sse.events) if pred(e)]), timeout, interval=0.05, what=what)


def test_qr_login_send_receive(make_daemon, ww):
    d = ww_daemon(make_daemon)
    sse = SSE(d.port, "/v1/events?types=instance.status,message.received", key=d.admin_key)
    t0 = time.monotonic()
    iid = ww_instance(d, ww)
    wait_instance_state(d, iid, "qr", timeout=BROWSER_DEADLINE)
    print("whatsweb: start to QR %.2f s (plugin: %s ms after chromium started)"
          % (time.monotonic() - t0, provider(d, iid)["browser"]["first_qr_ms"]))

    # The QR as text and image, as the page shows it.
    # The status (with the QR) follows the state frame by up to 100 ms.
    r = wait_until(lambda: (lambda r: r if r.status == 200 else None)(
        d.api("GET", "/v1/instances/%s/qr" % iid)), 5, interval=0.05, what="GET qr 200")
    qr = r.json()
    assert qr["text"].startswith("2@") and qr["state"] == "qr", qr
    assert qr["text"] in [ref for _, ref in ww.qrs], (qr["text"], ww.qrs)
    png = base64.b64decode(qr["png_base64"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 500
    assert qr["data_url"].startswith("data:image/png;base64,")
    r = d.api("GET", "/v1/instances/%s/qr?format=png" % iid)
    assert r.status == 200 and r.headers["content-type"] == "image/png", r
    assert r.body.startswith(b"\x89PNG")
    # It follows the page's rotation.
    first = qr["text"]
    rotated = wait_until(lambda: (lambda q: q if q.get("text") not in (None, first) else None)(
        d.api("GET", "/v1/instances/%s/qr" % iid).json()), 10, interval=0.1,
        what="a rotated QR")
    assert base64.b64decode(rotated["png_base64"]) != png
    wait_events(sse, lambda e: e.get("event") == "instance.status"
                and e["data"]["data"].get("status") == "qr", n=2, what="two qr events")

    # Scan -> authenticated -> ready; the QR is gone.
    ww.scan()
    st = wait_ready(d, iid)
    assert st["provider_status"]["me"] == ww.me and st["provider_status"]["qr"] is None, st
    assert d.api("GET", "/v1/instances/%s/qr" % iid).status == 409
    wait_events(sse, lambda e: e.get("event") == "instance.status"
                and e["data"]["data"].get("status") == "ready", what="ready event")
    seen = [e["data"]["data"]["status"] for e in sse.events if e.get("event") == "instance.status"]
    assert seen.index("authenticated") < seen.index("ready"), seen
    assert seen[seen.index("ready") - 1] == "authenticated", seen

    # Text: the page sends it, then the phone acks it.
    m = send(d, iid, {"to": "15557654321", "text": "hello from switchboard"})
    doc = wait_state(d, m["id"], "sent", timeout=20)
    sent = ww.wait_sent(1)[0]
    assert sent["to"] == PEER and sent["body"] == "hello from switchboard", sent
    assert doc["provider_message_id"] == sent["id"], (doc, sent)
    ww.ack(sent["id"], "delivered")
    wait_state(d, m["id"], "delivered")
    ww.ack(sent["id"], "read")
    wait_state(d, m["id"], "read")

    # Media from data_base64, and from a URL (fetched through the daemon).
    m2 = send(d, iid, {"to": PEER, "text": "a dot", "media": {
        "data_base64": base64.b64encode(PNG_1PX).decode(), "mime_type": "image/png",
        "filename": "dot.png"}})
    wait_state(d, m2["id"], "sent", timeout=20)
    s2 = ww.wait_sent(2)[1]
    assert s2["type"] == "image" and s2["caption"] == "a dot" and s2["filename"] == "dot.png", s2
    assert ww.uploads[s2["url"]] == ("image/png", PNG_1PX)
    url = ww.add_media("report.pdf", b"%PDF-1.4 fixture\n", "application/pdf")
    m3 = send(d, iid, {"to": PEER, "media": {"url": url, "mime_type": "application/pdf",
                                             "caption": "the report"}})
    wait_state(d, m3["id"], "sent", timeout=20)
    s3 = ww.wait_sent(3)[2]
    assert s3["type"] == "document" and s3["mimetype"] == "application/pdf", s3
    assert s3["filename"] == "report.pdf" and s3["caption"] == "the report", s3
    assert ww.uploads[s3["url"]][1] == b"%PDF-1.4 fixture\n"

    # Inbound: a message.received event and a stored inbound message.
    mid = ww.inbound(PEER, "hi, switchboard")
    got = wait_inbound(d, iid, 1, timeout=20)
    assert got[0]["from"] == PEER and got[0]["body"]["text"] == "hi, switchboard", got
    assert got[0]["provider_message_id"] == "false_%s_%s" % (PEER, mid), got
    ev = wait_events(sse, lambda e: e.get("event") == "message.received", what="inbound event")[0]
    data = ev["data"]["data"]
    assert data["from"] == PEER and data["sender"] == {"id": PEER, "name": "Peer"}, data
    assert data["chat"] == {"id": PEER, "type": "private"}, data
    ww.inbound(PEER, "look", media={"type": "image", "mimetype": "image/jpeg", "size": 1234})
    got = wait_inbound(d, iid, 2, timeout=20)
    media = [g for g in got if g["body"].get("media")][0]["body"]
    assert media["text"] == "look" and media["media"]["mime_type"] == "image/jpeg", media

    # A message the page cannot send fails with WhatsApp's reason.
    ww.fail_sends = True
    m4 = send(d, iid, {"to": PEER, "text": "nope"})
    doc = wait_state(d, m4["id"], "failed", timeout=20)
    assert "refused" in (doc.get("last_error") or ""), doc
    assert provider(d, iid)["sent"] == 3
    sse.close() if hasattr(sse, "close") else None


def test_session_kept_across_restart_and_browser_kill(make_daemon, ww):
    d = ww_daemon(make_daemon)
    iid = ww_instance(d, ww)
    login(d, ww, iid)
    profile = provider(d, iid)["profile_dir"]
    pid = provider(d, iid)["browser"]["pid"]
    assert browsers_with_profile(profile) and pid in browsers_with_profile(profile)

    # Restart the instance: its plugin-host and browser go, the login stays.
    scans = len(ww.sessions)
    assert d.api("POST", "/v1/instances/%s/stop" % iid).status in (200, 202)
    wait_until(lambda: not browsers_with_profile(profile), 15, what="browser gone after stop")
    assert d.api("POST", "/v1/instances/%s/start" % iid).status in (200, 202)
    st = wait_ready(d, iid)
    assert len(ww.sessions) == scans, "a new scan was needed"
    assert st["provider_status"]["browser"]["restarts"] == 0, st

    # Chromium killed: restarted by the plugin, back logged in.
    pid = st["provider_status"]["browser"]["pid"]
    os.kill(pid, signal.SIGKILL)
    st = wait_ready(d, iid, pred=lambda ps: ps["browser"]["restarts"] >= 1)
    b = st["provider_status"]["browser"]
    assert b["pid"] != pid and "signal 9" in b["last_exit"], b
    m = send(d, iid, {"to": PEER, "text": "after the crash"})
    wait_state(d, m["id"], "sent", timeout=20)

    # Chromium hung (SIGSTOP): no answer to the health check, killed, restarted.
    pid = b["pid"]
    os.kill(pid, signal.SIGSTOP)
    st = wait_ready(d, iid, pred=lambda ps: ps["browser"]["restarts"] >= 2)
    assert "did not answer" in st["provider_status"]["browser"]["last_exit"], st
    wait_until(lambda: not os.path.exists("/proc/%d" % pid), 10, what="hung browser reaped")

    # Stop: nothing of the browser is left.
    assert d.api("POST", "/v1/instances/%s/stop" % iid).status in (200, 202)
    wait_until(lambda: not browsers_with_profile(profile), 15, what="browser gone after stop")


def test_session_kept_across_plugin_host_kill_and_daemon_restart(make_daemon, ww):
    d = ww_daemon(make_daemon, process={"stop_grace_ms": 10000, "restart_min_ms": 200})
    iid = ww_instance(d, ww)
    login(d, ww, iid)
    scans = len(ww.sessions)
    profile = provider(d, iid)["profile_dir"]
    # Chromium writes a page's storage to the profile a few seconds after it
    # changes (README, WhatsApp Web): a kill right after the scan could lose it.
    time.sleep(7)

    # The plugin-host killed: the daemon restarts it, its browser with it, logged in.
    host_pid = provider(d, iid)["process"]["pid"]
    os.kill(host_pid, signal.SIGKILL)
    st = wait_ready(d, iid, pred=lambda ps: ps["process"].get("pid") not in (None, host_pid))
    assert st["provider_status"]["process"]["restarts"] >= 1, st
    assert len(ww.sessions) == scans, "a new scan was needed after the plugin-host died"

    # The daemon stopped (SIGTERM) and started again on the same state: logged in.
    assert d.stop() == 0
    wait_until(lambda: not browsers_with_profile(profile), 15, what="browser gone with the daemon")
    d.start()
    wait_ready(d, iid)
    assert len(ww.sessions) == scans, "a new scan was needed after the daemon restarted"


def test_logout_shows_a_new_qr(make_daemon, ww):
    d = ww_daemon(make_daemon)
    iid = ww_instance(d, ww)
    login(d, ww, iid)
    profile = provider(d, iid)["profile_dir"]
    r = d.api("POST", "/v1/instances/%s/logout" % iid)
    assert r.status == 200, r
    wait_instance_state(d, iid, "qr", timeout=BROWSER_DEADLINE)
    assert os.path.isdir(profile)  # a fresh one


def test_phone_logout_disconnects(make_daemon, ww):
    d = ww_daemon(make_daemon)
    sse = SSE(d.port, "/v1/events?types=instance.status", key=d.admin_key)
    iid = ww_instance(d, ww)
    login(d, ww, iid)
    ww.logout()
    ev = wait_events(sse, lambda e: e.get("event") == "instance.status"
                     and e["data"]["data"].get("status") == "disconnected", what="disconnected")
    assert ev[0]["data"]["data"]["reason"] == "UNPAIRED", ev
    # The page goes back to its login screen.
    wait_instance_state(d, iid, "qr", timeout=BROWSER_DEADLINE)


def test_missing_chromium_is_reported(make_daemon, ww):
    d = ww_daemon(make_daemon)
    iid = ww_instance(d, ww, chromium="/nonexistent/chromium")
    st = wait_until(lambda: (lambda s: s if "could not be started" in (
        s.get("provider_status", {}).get("browser", {}).get("last_exit") or "") else None)(
        instance_status(d, iid)), 20, interval=0.1, what="start failure reported")
    assert st["state"] in ("disconnected", "connecting"), st
