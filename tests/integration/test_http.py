"""HTTP surface: /healthz, /readyz, /metrics, /v1/providers, errors, echo webhook."""

import json
import subprocess

import pytest

from conftest import (ECHO_V1, RELOAD_DEADLINE, aux_plugin, base_config, daemon_path,
                      free_port, port_refuses, wait_until)

DOCUMENTED_SERIES = [
    "switchboard_uptime_seconds",
    "switchboard_http_requests_total",
    "switchboard_plugins_loaded",
    "switchboard_reloads_total",
    "switchboard_plugin_swaps_total",
    "switchboard_events_total",
]


def assert_json_error(resp, status, code=None):
    assert resp.status == status, resp
    ctype = resp.headers.get("content-type", "")
    assert "application/json" in ctype, "error content-type %r" % ctype
    doc = resp.json()
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err, dict), doc
    assert isinstance(err.get("code"), str) and err["code"], doc
    assert isinstance(err.get("message"), str) and err["message"], doc
    if "details" in err:
        assert isinstance(err["details"], dict), doc
    if code is not None:
        assert err["code"] == code, doc
    return err


# -- CLI basics --------------------------------------------------------------

def test_version_flag():
    out = subprocess.run([daemon_path(), "--version"], capture_output=True, timeout=10)
    assert out.returncode == 0, out
    text = (out.stdout + out.stderr).decode()
    assert any(ch.isdigit() for ch in text), text


def test_check_config_accepts_good_and_rejects_bad(make_daemon):
    d = make_daemon(start=False)
    ok = subprocess.run(d.command(["--check-config"]), capture_output=True, timeout=20,
                        env=d.child_env())
    assert ok.returncode == 0, ok
    cfg = base_config(d.port)
    cfg["no_such_key"] = 1
    d.write_config(cfg)
    bad = subprocess.run(d.command(["--check-config"]), capture_output=True, timeout=20,
                         env=d.child_env())
    assert bad.returncode == 1, bad
    assert b"config rejected" in bad.stderr, bad.stderr


def test_cli_port_overrides_file(make_daemon):
    port = free_port()
    d = make_daemon(start=False, args=["--port", str(port)], port=port)
    file_port = d.config["listen"]["port"]
    d.start()
    assert d.get("/healthz").status == 200
    assert d.get("/healthz", port=port).status == 200
    assert port_refuses(file_port), "file port %d answers although --port was given" % file_port


# -- health / readiness ------------------------------------------------------

def test_healthz(daemon):
    r = daemon.get("/healthz")
    assert r.status == 200, r
    assert "application/json" in r.headers.get("content-type", "")
    assert r.json() == {"status": "ok"}


def test_listening_logged_with_port(daemon):
    rec = daemon.wait_for_log(lambda r: r.get("message") == "listening", timeout=2)
    assert rec.get("port") == daemon.port, rec
    for field in ("time", "level", "message"):
        assert field in rec, rec
    # Every line on stderr is one JSON object.
    raw = [r["_raw"] for r in daemon.logs() if "_raw" in r]
    assert not raw, "non-JSON log lines: %r" % raw[:5]


def test_readyz_running(daemon):
    r = daemon.get("/readyz")
    assert r.status == 200, r
    assert r.json() == {"ready": True, "plugins": {"echo": "running"}, "database": "up"}


def test_readyz_503_when_enabled_plugin_fails_init(make_daemon):
    """An enabled plugin whose init fails is not a config error (the file
    exists and the config is valid): the daemon runs and /readyz answers 503
    with that plugin not "running". Disabling it by reload makes it ready."""
    cfg = base_config(free_port())
    cfg["instances"] = {}
    d = make_daemon(config=cfg, start=False, plugins={"echo.so": aux_plugin("init_fail.so")})
    d.start()
    assert d.get("/healthz").status == 200
    r = d.get("/readyz")
    assert r.status == 503, r
    doc = r.json()
    assert doc["ready"] is False, doc
    assert "echo" in doc["plugins"] and doc["plugins"]["echo"] != "running", doc
    p = d.provider("echo")
    assert p is None or p.get("state") != "running", p
    cfg["plugins"]["echo"]["enabled"] = False
    d.write_config(cfg)
    wait_until(lambda: d.get("/readyz").status == 200, RELOAD_DEADLINE,
               what="/readyz 200 after disabling the failed plugin")
    assert d.get("/readyz").json()["ready"] is True


def test_readyz_503_plugin_fails_init_with_instance(make_daemon):
    """Same with an instance configured for the failed plugin: still running,
    not ready, and the instance's webhook does not answer 200."""
    d = make_daemon(start=False, plugins={"echo.so": aux_plugin("init_fail.so")})
    d.start()
    r = d.get("/readyz")
    assert r.status == 503, r
    assert r.json()["plugins"].get("echo") not in (None, "running"), r
    w = d.webhook()
    assert w.status in (404, 503), w


# -- metrics -------------------------------------------------------------------

def test_metrics_documented_series(daemon):
    daemon.webhook()  # make sure an event exists
    r = daemon.get("/metrics")
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    m = daemon.metrics()
    for name in DOCUMENTED_SERIES:
        assert m.has(name), "metric %s missing:\n%s" % (name, m.text)
    assert m.value("switchboard_plugins_loaded") == 1, m.text
    assert m.value("switchboard_uptime_seconds") >= 0
    for lab, _ in m.find("switchboard_http_requests_total"):
        assert "route" in lab and "status" in lab, lab


def test_metrics_count_requests_by_route_and_status(daemon):
    before = daemon.metrics()
    for _ in range(7):
        assert daemon.get("/healthz").status == 200
    for _ in range(3):
        assert daemon.get("/readyz").status == 200
    after = daemon.metrics()
    name = "switchboard_http_requests_total"
    assert after.value(name, route="/healthz", status="200") - \
        before.value(name, route="/healthz", status="200") == 7, after.text
    assert after.value(name, route="/readyz", status="200") - \
        before.value(name, route="/readyz", status="200") == 3, after.text
    # the first /metrics scrape itself was counted by the time of the second
    assert after.value(name, route="/metrics", status="200") >= 1, after.text


def test_metrics_uptime_grows(daemon):
    a = daemon.metrics().value("switchboard_uptime_seconds")
    wait_until(lambda: daemon.metrics().value("switchboard_uptime_seconds") > a, 3,
               what="uptime to grow")


def test_metrics_404_counted_with_status(daemon):
    name = "switchboard_http_requests_total"
    before = sum(v for lab, v in daemon.metrics().find(name) if lab.get("status") == "404")
    for _ in range(4):
        assert daemon.get("/definitely/not/here").status == 404
    after = sum(v for lab, v in daemon.metrics().find(name) if lab.get("status") == "404")
    assert after - before == 4


# -- /v1/providers ---------------------------------------------------------------

def test_providers_needs_a_key(daemon):
    assert_json_error(daemon.get("/v1/providers"), 401)
    r = daemon.get("/v1/providers", headers={"Authorization": "Bearer sbk_nope"})
    assert_json_error(r, 401)


def test_providers_shape(daemon):
    r = daemon.get("/v1/providers", headers=daemon.auth())
    assert r.status == 200, r
    assert "application/json" in r.headers.get("content-type", "")
    doc = r.json()
    assert set(doc) == {"providers"}, doc
    assert isinstance(doc["providers"], list) and len(doc["providers"]) == 1, doc
    p = doc["providers"][0]
    assert p["name"] == "echo"
    assert p["version"] == ECHO_V1
    assert p["abi"] == "1.1"
    assert sorted(p["capabilities"]) == sorted(["media", "buttons", "threads", "webhook"])
    assert p["state"] == "running"
    assert p["generation"] == 1
    assert p["instances"] == ["echo-demo"]
    schema = p["settings_schema"]
    assert isinstance(schema, dict), p
    assert schema.get("type") == "object"
    assert schema.get("properties", {}).get("prefix") == {"type": "string"}
    assert schema["properties"]["token"].get("writeOnly") is True
    assert schema.get("additionalProperties") is False


def test_providers_lists_all_instances(make_daemon):
    cfg = base_config(free_port())
    cfg["instances"]["b-second"] = {"provider": "echo"}
    cfg["instances"]["a-first"] = {"provider": "echo", "enabled": True}
    cfg["instances"]["c-off"] = {"provider": "echo", "enabled": False}
    d = make_daemon(config=cfg)
    p = d.provider("echo")
    assert {"a-first", "b-second", "echo-demo"} <= set(p["instances"]), p
    assert d.webhook("a-first").status == 200
    assert d.webhook("b-second").json()["instance"] == "b-second"
    # a disabled instance does not take webhooks
    r = d.webhook("c-off")
    assert r.status in (404, 503), r
    assert_json_error(r, r.status)


# -- errors ----------------------------------------------------------------------

def test_unknown_route_404_json(daemon):
    for path in ("/nope", "/v1/nothing", "/healthzz"):
        assert_json_error(daemon.get(path), 404)


def test_unknown_instance_404_json(daemon):
    assert_json_error(daemon.webhook("no-such-instance"), 404)


def test_unknown_provider_path_404_json(daemon):
    assert_json_error(daemon.webhook("echo-demo", path="/webhook/nope"), 404)
    assert_json_error(daemon.post("/webhook/", {"text": "x"}), 404)


# -- echo webhook ------------------------------------------------------------------

def test_echo_round_trip(daemon):
    body = {"text": "hello world", "from": "alice"}
    r = daemon.webhook("echo-demo", body)
    assert r.status == 200, r
    assert "application/json" in r.headers.get("content-type", "")
    doc = r.json()
    assert doc == {"ok": True, "instance": "echo-demo", "plugin_version": ECHO_V1,
                   "echo": body}, doc


def test_echo_subpath_and_query(daemon):
    r = daemon.post("/webhook/echo/echo-demo/more/parts?x=1", {"text": "sub"})
    assert r.status == 200, r
    assert r.json()["echo"] == {"text": "sub"}


def test_echo_event_counted(daemon):
    name = "switchboard_events_total"
    lab = dict(provider="echo", instance="echo-demo", type="message.received")
    before = daemon.metrics().value(name, **lab)
    for i in range(5):
        assert daemon.webhook(body={"text": "m%d" % i}).status == 200
    after = daemon.metrics().value(name, **lab)
    assert after - before == 5, daemon.metrics().text


def test_echo_delay(daemon):
    import time
    t0 = time.monotonic()
    r = daemon.webhook(body={"text": "slow", "delay_ms": 300})
    dt = time.monotonic() - t0
    assert r.status == 200, r
    assert r.json()["echo"] == {"text": "slow", "delay_ms": 300}
    assert dt >= 0.29, dt
    assert dt < 3.0, dt


def test_echo_delayed_does_not_block_others(daemon):
    """Delayed replies use a host timer: other requests are served meanwhile."""
    import threading
    import time
    res = {}

    def slow():
        res["slow"] = daemon.webhook(body={"text": "slow", "delay_ms": 1500})
        res["slow_t"] = time.monotonic()

    t = threading.Thread(target=slow)
    t.start()
    # wait for the slow request to be received (its event is emitted at once)
    lab = dict(provider="echo", instance="echo-demo", type="message.received")
    wait_until(lambda: daemon.metrics().value("switchboard_events_total", **lab) >= 1, 3,
               what="slow request to be received")
    fast = daemon.webhook(body={"text": "fast"})
    fast_t = time.monotonic()
    assert fast.status == 200
    assert daemon.get("/healthz").status == 200
    t.join(10)
    assert res["slow"].status == 200
    assert fast_t < res["slow_t"], "fast request was answered after the delayed one"


def test_echo_wrong_method_405(daemon):
    assert_json_error(daemon.get("/webhook/echo/echo-demo"), 405)
    assert_json_error(daemon.request("PUT", "/webhook/echo/echo-demo", body={"text": "x"}), 405)


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b'"str"', b"", b"{"])
def test_echo_invalid_json_400(daemon, body):
    r = daemon.post("/webhook/echo/echo-demo", body,
                    headers={"Content-Type": "application/json"})
    assert_json_error(r, 400, "invalid_json")


@pytest.mark.parametrize("body", [{"from": "x"}, {"text": 5}, {"text": None}, {"text": ["a"]}])
def test_echo_invalid_text_400(daemon, body):
    err = assert_json_error(daemon.webhook(body=body), 400, "invalid_field")
    assert err.get("details") == {"field": "text"}, err


def test_echo_errors_not_counted_as_events(daemon):
    name = "switchboard_events_total"
    before = daemon.metrics().value(name)
    daemon.post("/webhook/echo/echo-demo", b"junk")
    daemon.webhook(body={"from": "x"})
    daemon.get("/webhook/echo/echo-demo")
    assert daemon.metrics().value(name) == before


def test_many_keepalive_requests_one_connection(daemon):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        for i in range(50):
            r = daemon.webhook(body={"text": "k%d" % i}, conn=conn)
            assert r.status == 200
            assert json.loads(r.body)["echo"]["text"] == "k%d" % i
    finally:
        conn.close()


def test_notable_log_messages_exact(daemon):
    """The contract's notable messages are fixed strings (details go in
    fields), so log consumers can match them exactly."""
    msgs = [r.get("message") for r in daemon.logs()]
    assert "listening" in msgs, msgs
    assert "plugin loaded" in msgs, msgs
