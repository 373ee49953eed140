"""In-place plugin swap under load, and refused replacements."""

import http.client
import json
import os
import random
import threading
import time

import pytest

from conftest import (ECHO_V1, ECHO_V2, RELOAD_DEADLINE, aux_plugin, base_config, free_port,
                      msg_is, wait_until)

SWAPS = "switchboard_plugin_swaps_total"


class Worker(threading.Thread):
    """Sends POSTs to one instance's webhook until stopped; records results.

    persistent: reuse one keep-alive connection (reopened only after the
    server closed it cleanly with Connection: close); otherwise a fresh
    connection per request. delay: (lo, hi) delay_ms range, or None.
    """

    def __init__(self, port, wid, instance, persistent, delay=None):
        super().__init__(daemon=True)
        self.port = port
        self.wid = wid
        self.instance = instance
        self.persistent = persistent
        self.delay = delay
        self.stop_evt = threading.Event()
        self.results = []  # (t_start, t_end, status|None, version|None, error|None)
        self.rng = random.Random(wid)

    def run(self):
        conn = None
        n = 0
        while not self.stop_evt.is_set():
            n += 1
            body = {"text": "w%d-%d" % (self.wid, n), "from": "worker%d" % self.wid}
            if self.delay:
                body["delay_ms"] = self.rng.randint(*self.delay)
            t0 = time.monotonic()
            try:
                if conn is None or not self.persistent:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("POST", "/webhook/echo/%s" % self.instance,
                             body=json.dumps(body), headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                t1 = time.monotonic()
                version = err = None
                if resp.status == 200:
                    doc = json.loads(data)
                    version = doc.get("plugin_version")
                    if doc.get("echo") != body or doc.get("instance") != self.instance \
                            or doc.get("ok") is not True:
                        err = "bad body %r for %r" % (data[:200], body)
                else:
                    err = "status %d %r" % (resp.status, data[:200])
                self.results.append((t0, t1, resp.status, version, err))
                if not self.persistent or resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001
                self.results.append((t0, time.monotonic(), None, None, repr(exc)))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def start_workers(port, instances=("echo-demo",)):
    specs = [
        (True, None), (True, None),          # keep-alive, immediate
        (False, None), (False, None),        # fresh connection per request
        (True, (20, 120)), (False, (50, 250)),  # delayed: in flight during the swap
    ]
    workers = []
    for i, (persistent, delay) in enumerate(specs):
        w = Worker(port, i, instances[i % len(instances)], persistent, delay)
        w.start()
        workers.append(w)
    return workers


def stop_workers(workers):
    for w in workers:
        w.stop_evt.set()
    for w in workers:
        w.join(30)
        assert not w.is_alive(), "worker %d hung" % w.wid


def test_swap_under_load(make_daemon):
    cfg = base_config(free_port())
    cfg["instances"]["echo-two"] = {"provider": "echo"}
    d = make_daemon(config=cfg)
    p = d.provider("echo")
    assert p["version"] == ECHO_V1 and p["generation"] == 1
    swaps_before = d.metrics().value(SWAPS, result="ok")

    workers = start_workers(d.port, instances=("echo-demo", "echo-two"))
    try:
        # every worker has had answers from generation 1 before the swap
        wait_until(lambda: all(len(w.results) >= 3 for w in workers), 10,
                   what="workers warmed up")
        mark = d.mark()
        t_swap = time.monotonic()
        d.install_plugin(aux_plugin("echo_v2.so"))

        def swapped():
            p2 = d.provider("echo")
            return p2 if p2["version"] == ECHO_V2 else None

        p2 = wait_until(swapped, RELOAD_DEADLINE + 3, what="/v1/providers to show v2")
        swap_seen = time.monotonic() - t_swap
        # keep the load on until every worker got several v2 answers
        wait_until(lambda: all(sum(1 for r in w.results if r[3] == ECHO_V2) >= 3
                               for w in workers), 15, what="v2 answers on every worker")
    finally:
        stop_workers(workers)

    failures = [(w.wid, r) for w in workers for r in w.results if r[4] is not None]
    total = sum(len(w.results) for w in workers)
    assert not failures, "%d of %d requests failed across the swap: %r" % (
        len(failures), total, failures[:10])

    versions = {r[3] for w in workers for r in w.results}
    assert versions == {ECHO_V1, ECHO_V2}, versions
    # per worker (sequential requests): never back to v1 after a v2 answer
    for w in workers:
        seq = [r[3] for r in w.results]
        first_v2 = seq.index(ECHO_V2)
        assert all(v == ECHO_V2 for v in seq[first_v2:]), \
            "worker %d went back to v1: %r" % (w.wid, seq[first_v2:first_v2 + 20])
    # globally: no request sent after some v2 answer arrived was served by v1
    first_v2_end = min(r[1] for w in workers for r in w.results if r[3] == ECHO_V2)
    late_v1 = [r for w in workers for r in w.results if r[3] == ECHO_V1 and r[0] > first_v2_end]
    assert not late_v1, "v1 answered requests sent after v2 took over: %r" % late_v1[:5]

    assert p2["state"] == "running"
    assert p2["generation"] == 2, p2
    assert sorted(p2["instances"]) == ["echo-demo", "echo-two"], p2
    d.wait_for_log("plugin swapped", since=mark, timeout=2)
    m = d.metrics()
    assert m.value(SWAPS, result="ok") == swaps_before + 1, m.text
    assert m.value("switchboard_plugins_loaded") == 1, m.text
    assert d.get("/readyz").status == 200
    print("swap visible after %.3fs, %d requests, 0 failed" % (swap_seen, total))


def test_swap_idle_then_back(make_daemon):
    """v1 -> v2 -> v1 with nothing in flight; generation counts up."""
    d = make_daemon()
    d.install_plugin(aux_plugin("echo_v2.so"))
    wait_until(lambda: d.provider("echo")["version"] == ECHO_V2, RELOAD_DEADLINE,
               what="v2")
    assert d.webhook().json()["plugin_version"] == ECHO_V2
    d.install_plugin(os.path.join(os.environ["SB_PLUGIN_DIR"], "echo.so"))
    wait_until(lambda: d.provider("echo")["version"] == ECHO_V1, RELOAD_DEADLINE,
               what="back to v1")
    p = d.provider("echo")
    assert p["generation"] == 3, p
    assert d.webhook().json()["plugin_version"] == ECHO_V1
    assert d.metrics().value(SWAPS, result="ok") == 2


def test_swap_pending_delayed_reply_completes(make_daemon):
    """A delayed reply of the old generation is answered (by the old code)
    even though the swap happens while it waits."""
    d = make_daemon()
    res = {}

    def slow():
        try:
            res["r"] = d.webhook(body={"text": "slow", "delay_ms": 800}, timeout=15)
        except Exception as exc:  # noqa: BLE001
            res["r"] = exc

    t = threading.Thread(target=slow)
    t.start()
    lab = dict(provider="echo", instance="echo-demo", type="message.received")
    wait_until(lambda: d.metrics().value("switchboard_events_total", **lab) >= 1, 3,
               what="delayed request received")
    d.install_plugin(aux_plugin("echo_v2.so"))
    t.join(15)
    r = res.get("r")
    assert r is not None and not isinstance(r, Exception), r
    assert r.status == 200, r
    assert r.json()["echo"] == {"text": "slow", "delay_ms": 800}
    wait_until(lambda: d.provider("echo")["version"] == ECHO_V2, RELOAD_DEADLINE + 1,
               what="v2 after drain")
    assert d.webhook().json()["plugin_version"] == ECHO_V2


REFUSALS = [
    ("bad_abi.so", ("abi",)),
    ("no_symbol.so", ("switchboard_plugin_entry", "symbol")),
    ("init_fail.so", ("init",)),
]


@pytest.mark.parametrize("bad,words", REFUSALS, ids=[b for b, _ in REFUSALS])
def test_swap_refused(make_daemon, bad, words):
    d = make_daemon()
    m0 = d.metrics()
    refused_before = m0.value(SWAPS, result="refused")
    ok_before = m0.value(SWAPS, result="ok")
    mark = d.mark()
    d.install_plugin(aux_plugin(bad))
    rec = d.wait_for_log("plugin refused", since=mark, timeout=RELOAD_DEADLINE + 1)
    reason = str(rec.get("reason", ""))
    assert any(w in reason.lower() for w in words), \
        "reason %r should name the problem (%s)" % (reason, " or ".join(words))
    assert rec.get("level") in ("error", "warn"), rec
    wait_until(lambda: d.metrics().value(SWAPS, result="refused") >= refused_before + 1,
               RELOAD_DEADLINE, what="swaps_total{refused} to grow")
    # the old generation keeps serving
    for _ in range(5):
        r = d.webhook()
        assert r.status == 200, r
        assert r.json()["plugin_version"] == ECHO_V1
    p = d.provider("echo")
    assert p["version"] == ECHO_V1 and p["generation"] == 1 and p["state"] == "running", p
    assert d.get("/readyz").status == 200
    assert d.metrics().value(SWAPS, result="ok") == ok_before
    assert not d.find_logs(msg_is("plugin swapped"), since=mark)

    # a good replacement afterwards is still picked up
    d.install_plugin(aux_plugin("echo_v2.so"))
    wait_until(lambda: d.provider("echo")["version"] == ECHO_V2, RELOAD_DEADLINE + 1,
               what="good swap after a refusal")
    assert d.webhook().json()["plugin_version"] == ECHO_V2


def test_swap_log_messages_exact(make_daemon):
    """'plugin swapped' and 'plugin refused' are fixed messages; the version,
    generation and reason travel in fields."""
    d = make_daemon()
    mark = d.mark()
    d.install_plugin(aux_plugin("bad_abi.so"))
    refused = d.wait_for_log("plugin refused", since=mark, timeout=RELOAD_DEADLINE + 1)
    d.install_plugin(aux_plugin("echo_v2.so"))
    swapped = d.wait_for_log("plugin swapped", since=mark, timeout=RELOAD_DEADLINE + 1)
    assert refused["message"] == "plugin refused", refused
    assert "reason" in refused, refused
    assert swapped["message"] == "plugin swapped", swapped
    assert swapped.get("provider") == "echo", swapped


def test_swap_timeout_bounds_old_generation(make_daemon):
    """An old generation's in-flight webhook that outlives swap_timeout_ms does
    not block the swap forever: it is answered (503) or closed, the new
    generation takes over, and the daemon keeps running."""
    cfg = base_config(free_port(), swap_timeout_ms=500)
    d = make_daemon(config=cfg)
    res = {}

    def slow():
        try:
            res["r"] = d.webhook(body={"text": "long", "delay_ms": 20000}, timeout=30)
        except Exception as exc:  # noqa: BLE001
            res["r"] = exc
        res["t"] = time.monotonic()

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    lab = dict(provider="echo", instance="echo-demo", type="message.received")
    wait_until(lambda: d.metrics().value("switchboard_events_total", **lab) >= 1, 3,
               what="delayed request received")
    t0 = time.monotonic()
    d.install_plugin(aux_plugin("echo_v2.so"))
    wait_until(lambda: d.provider("echo")["version"] == ECHO_V2, RELOAD_DEADLINE + 1.5,
               what="v2 within swap_timeout_ms + reload latency")
    t.join(5)
    assert not t.is_alive(), "old generation's webhook still pending after swap_timeout_ms"
    r = res["r"]
    if not isinstance(r, Exception):
        assert r.status == 503, r
    assert res["t"] - t0 < 0.5 + RELOAD_DEADLINE + 1
    assert d.alive(), "daemon died at the swap timeout"
    r2 = d.webhook()
    assert r2.status == 200 and r2.json()["plugin_version"] == ECHO_V2, r2


def test_requests_during_drain_are_held_for_new_generation(make_daemon):
    """While the old generation drains a delayed reply, new requests for the
    plugin are held and then served by the new generation (not by the old
    one, not failed)."""
    d = make_daemon()
    res = {}

    def slow():
        try:
            res["r"] = d.webhook(body={"text": "slow", "delay_ms": 1500}, timeout=15)
        except Exception as exc:  # noqa: BLE001
            res["r"] = exc
        res["t"] = time.monotonic()

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    lab = dict(provider="echo", instance="echo-demo", type="message.received")
    wait_until(lambda: d.metrics().value("switchboard_events_total", **lab) >= 1, 3,
               what="delayed request received")
    mark = d.mark()
    d.install_plugin(aux_plugin("echo_v2.so"))
    # the new generation is loaded (old one now draining)
    d.wait_for_log(lambda r: msg_is("plugin loaded")(r) and ECHO_V2 in json.dumps(r),
                   since=mark, timeout=RELOAD_DEADLINE, what="v2 generation loaded")
    assert t.is_alive(), "delayed reply finished too early to test holding"
    r = d.webhook(body={"text": "during drain"}, timeout=15)
    t_held = time.monotonic()
    assert r.status == 200, r
    assert r.json()["plugin_version"] == ECHO_V2, r
    t.join(15)
    slow_r = res["r"]
    assert not isinstance(slow_r, Exception) and slow_r.status == 200, slow_r
    assert slow_r.json()["plugin_version"] == ECHO_V1
    assert t_held >= res["t"] - 0.05, "request during drain was not held until the drain ended"
