"""The whatsweb fixture page and the plugin's page script (plugins/whatsweb/
inject.js) in a real headless Chromium driven over the DevTools pipe by
tests/integration/cdp.py, without the daemon: QR shown, drawn and rotated,
scan -> authenticated -> ready, send text and media, acks, inbound messages,
the login kept in the profile across a browser restart, logout."""

import base64
import os

import pytest

from cdp import Browser, chromium_path
from fakes.whatsweb import FakeWhatsWeb

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="chromium is not installed (apt-get install chromium)")

INJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "plugins",
                      "whatsweb", "inject.js")
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
                           "hQGAhKmMIQAAAABJRU5ErkJggg==")


def inject_js():
    with open(INJECT) as f:
        return f.read()


@pytest.fixture
def fake():
    f = FakeWhatsWeb(qr_rotate_ms=700).start()
    yield f
    f.close()


def is_ev(name):
    return lambda e: e.get("ev") == name


def login(b, fake):
    b.wait_binding(is_ev("qr"))
    fake.scan()
    b.wait_binding(is_ev("authenticated"))
    return b.wait_binding(is_ev("ready"))


def test_qr_rotates_and_scan_logs_in(tmp_path, fake):
    with Browser(str(tmp_path / "profile")) as b:
        sid = b.open_page(fake.url, script=inject_js())
        q1 = b.wait_binding(is_ev("qr"))
        assert q1["ref"].startswith("2@") and q1["ref"] == fake.current_qr(), q1
        assert q1["png"].startswith("data:image/png;base64,")
        png = base64.b64decode(q1["png"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 500
        q2 = b.wait_binding(lambda e: e.get("ev") == "qr" and e["ref"] != q1["ref"], timeout=5)
        assert q2["png"] != q1["png"]
        assert b.evaluate(sid, "window.__sb.state().phase") == "qr"
        fake.scan()
        b.wait_binding(is_ev("authenticated"))
        ready = b.wait_binding(is_ev("ready"))
        assert ready["me"] == fake.me, ready
        assert b.evaluate(sid, "window.__sb.state()") == {"phase": "ready", "qr": None,
                                                          "me": fake.me}


def test_send_ack_and_inbound(tmp_path, fake):
    with Browser(str(tmp_path / "profile")) as b:
        sid = b.open_page(fake.url, script=inject_js())
        login(b, fake)
        r = b.evaluate(sid, "window.__sb.send({to: '15557654321', text: 'hi there'})")
        assert r["id"].startswith("true_15557654321@c.us_"), r
        sent = fake.wait_sent(1)[0]
        assert sent["id"] == r["id"] and sent["to"] == "15557654321@c.us", sent
        assert sent["type"] == "chat" and sent["body"] == "hi there", sent
        assert b.wait_binding(is_ev("ack"))["ack"] == 1
        fake.ack(r["id"], "delivered")
        assert b.wait_binding(is_ev("ack")) == {"ev": "ack", "id": r["id"], "ack": 2}
        fake.ack(r["id"], "read")
        assert b.wait_binding(is_ev("ack"))["ack"] == 3

        mid = fake.inbound("15557654321@c.us", "hello back")
        m = b.wait_binding(is_ev("message"))["msg"]
        assert m["id"] == "false_15557654321@c.us_" + mid, m
        assert m["chat"] == "15557654321@c.us" and m["body"] == "hello back", m
        assert m["type"] == "chat" and m["notify_name"] == "Peer", m

        data = base64.b64encode(PNG_1PX).decode()
        r2 = b.evaluate(sid, "window.__sb.send({to: '15557654321@c.us', text: 'a picture', "
                             "media: {data: '%s', mimetype: 'image/png', filename: 'a.png'}})"
                        % data)
        sent = fake.wait_sent(2)[1]
        assert sent["id"] == r2["id"] and sent["type"] == "image", sent
        assert sent["caption"] == "a picture" and sent["mimetype"] == "image/png", sent
        assert sent["filename"] == "a.png" and sent["size"] == len(PNG_1PX), sent
        assert fake.uploads[sent["url"]] == ("image/png", PNG_1PX)

        fake.fail_sends = True
        with pytest.raises(Exception, match="refused"):
            b.evaluate(sid, "window.__sb.send({to: '15557654321', text: 'nope'})")


def test_login_survives_browser_restart_and_logout(tmp_path, fake):
    profile = str(tmp_path / "profile")
    with Browser(profile) as b:
        b.open_page(fake.url, script=inject_js())
        login(b, fake)
    with Browser(profile) as b:
        sid = b.open_page(fake.url, script=inject_js())
        b.wait_binding(is_ev("ready"))
        assert not [e for e in b.binding_log if e["ev"] == "qr"], b.binding_log
        fake.logout()
        assert b.wait_binding(is_ev("disconnected"))["reason"] == "UNPAIRED"
        # The page reloads to the login screen: a new QR.
        b.wait_binding(is_ev("loaded"))
        b.wait_binding(is_ev("qr"))
        assert b.evaluate(sid, "window.__sb.state().phase") == "qr"
