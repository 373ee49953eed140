"""SIGTERM drain: in-flight webhook replies, refusing new connections, exit bound."""

import http.client
import json
import signal
import threading
import time

from conftest import base_config, free_port, port_refuses, wait_until

EVENTS = "switchboard_events_total"
LAB = dict(provider="echo", instance="echo-demo", type="message.received")


class Slow(threading.Thread):
    def __init__(self, port, n, delay_ms):
        super().__init__(daemon=True)
        self.port = port
        self.n = n
        self.delay_ms = delay_ms
        self.result = None  # ("ok", status, body, t_end) or ("error", exc, t_end)

    def run(self):
        body = {"text": "inflight-%d" % self.n, "delay_ms": self.delay_ms}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", "/webhook/echo/echo-demo", body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            self.result = ("ok", resp.status, data, time.monotonic())
        except Exception as exc:  # noqa: BLE001
            self.result = ("error", exc, time.monotonic())
        finally:
            conn.close()


def send_inflight(d, n, delay_ms):
    before = d.metrics().value(EVENTS, **LAB)
    threads = [Slow(d.port, i, delay_ms) for i in range(n)]
    for t in threads:
        t.start()
    # echo emits the event on receipt, before its delayed reply: poll for it
    wait_until(lambda: d.metrics().value(EVENTS, **LAB) >= before + n, 5,
               what="%d delayed requests to be received" % n)
    return threads


def test_sigterm_drains_inflight(make_daemon):
    cfg = base_config(free_port(), shutdown_timeout_ms=5000)
    d = make_daemon(config=cfg)
    threads = send_inflight(d, 5, 1500)
    mark = d.mark()
    t_term = time.monotonic()
    d.signal(signal.SIGTERM)
    d.expect_exit = True

    # new connections are refused while the old replies are still pending
    wait_until(lambda: port_refuses(d.port), 1.0, interval=0.01,
               what="listener to close after SIGTERM")
    t_refused = time.monotonic()
    still_pending = sum(1 for t in threads if t.result is None)

    rc = d.wait_exit(5.0 + 3.0)
    t_exit = time.monotonic()
    for t in threads:
        t.join(5)
    assert rc == 0, "exit code %r" % rc
    for t in threads:
        assert t.result is not None and t.result[0] == "ok", t.result
        _, status, data, t_end = t.result
        assert status == 200, (status, data)
        doc = json.loads(data)
        assert doc["echo"]["text"] == "inflight-%d" % t.n
        assert t_end <= t_exit + 0.1
    assert still_pending == len(threads), \
        "replies finished before the listener closed; cannot tell drain order"
    assert t_refused - t_term < 1.0
    assert t_exit - t_term < 5.0, "took %.2fs" % (t_exit - t_term)
    d.wait_for_log("shutdown complete", since=mark, timeout=1)


def test_sigterm_idle_exits_quickly(make_daemon):
    d = make_daemon()
    mark = d.mark()
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    d.expect_exit = True
    rc = d.wait_exit(5)
    assert rc == 0, rc
    assert time.monotonic() - t0 < 2.0
    rec = d.wait_for_log("shutdown complete", since=mark, timeout=1)
    assert rec.get("level") == "info", rec
    assert rec["message"] == "shutdown complete", rec
    assert port_refuses(d.port)


def test_sigterm_bounded_by_shutdown_timeout(make_daemon):
    cfg = base_config(free_port(), shutdown_timeout_ms=1000)
    d = make_daemon(config=cfg)
    threads = send_inflight(d, 3, 20000)
    mark = d.mark()
    t_term = time.monotonic()
    d.signal(signal.SIGTERM)
    d.expect_exit = True
    rc = d.wait_exit(1.0 + 4.0)
    t_exit = time.monotonic()
    assert rc == 0, "exit code %r after %.2fs" % (rc, t_exit - t_term)
    assert t_exit - t_term < 1.0 + 2.0, "took %.2fs" % (t_exit - t_term)
    for t in threads:
        t.join(5)
        assert not t.is_alive(), "client still waiting after the daemon exited"
        r = t.result
        # either a 503 answer or the connection closed: never a 200, never a hang
        if r[0] == "ok":
            assert r[1] == 503, r
        else:
            assert isinstance(r[1], (ConnectionError, http.client.HTTPException, OSError)), r
        assert r[-1] - t_term < 1.0 + 2.5
    d.wait_for_log("shutdown complete", since=mark, timeout=1)
