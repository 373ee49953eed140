"""Isolation "process": a plugin instance run in its own switchboard-plugin-host.

The echo plugin (webhooks, sends, events) and the fakeprov test plugin (sends
over the daemon's HTTP client, proxied from the child) run isolated end to
end; then supervision: a plugin-host killed with SIGKILL or stopped with
SIGSTOP is restarted with backoff, a crash loop is cut off with the instance
in `error`, a stop leaves no process or zombie, the daemon killed with SIGKILL
takes its plugin-hosts with it, and logout throws the state directory away.
"""

import json
import os
import signal
import time

import pytest

from conftest import base_config, free_port, sql, wait_until
from fakeprovider import FakeProvider, fakeprov_config, fakeprov_plugins, send, wait_state

HOST = os.environ.get("SB_PLUGIN_HOST")
pytestmark = pytest.mark.skipif(not HOST, reason="SB_PLUGIN_HOST is not set")

FAST = {"heartbeat_ms": 200, "heartbeat_timeout_ms": 1500, "restart_min_ms": 100,
        "restart_max_ms": 400, "max_restarts": 3, "healthy_after_ms": 60000,
        "stop_grace_ms": 2000}


def isolated_config(process=None, **kw):
    cfg = base_config(free_port(), **kw)
    cfg["plugin_host"] = HOST
    cfg["plugins"]["echo"] = {"enabled": True, "isolation": "process",
                              "process": dict(process or FAST)}
    return cfg


def status(d, inst="echo-demo"):
    r = d.api("GET", "/v1/instances/" + inst)
    assert r.status == 200, r
    return r.json()["status"]


def child_pid(d, inst="echo-demo", timeout=10.0):
    def running():
        st = status(d, inst)
        proc = st.get("provider_status", {}).get("process", {})
        return proc.get("pid") if proc.get("phase") == "running" else None
    return wait_until(running, timeout, interval=0.05, what="plugin-host of %s running" % inst)


def proc_state(pid):
    """The process's state letter, or None when it no longer exists."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read().split(b"\0")


def ppid(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def gone(pid, timeout=5.0):
    wait_until(lambda: proc_state(pid) is None, timeout, what="process %d gone" % pid)


def test_echo_isolated_end_to_end(make_daemon):
    d = make_daemon(config=isolated_config())
    pid = child_pid(d)
    # It is a plugin-host, a child of the daemon, leading its own process group.
    assert cmdline(pid)[0].endswith(b"switchboard-plugin-host"), cmdline(pid)
    assert ppid(pid) == d.pid
    assert os.getpgid(pid) == pid
    # A webhook goes through the child and its event is stored before the 200.
    r = d.webhook(body={"text": "hi", "from": "alice", "event_id": "iso-1"})
    assert r.status == 200, r
    body = r.json()
    assert body["ok"] is True and body["instance"] == "echo-demo", body
    assert body["echo"]["text"] == "hi", body
    out = sql("SELECT payload FROM webhook_events WHERE provider_event_id = 'iso-1'", d.database)
    env = json.loads(out.strip())
    assert env["type"] == "message.received" and env["data"]["text"] == "echo: hi", env
    # A send goes through the child too.
    m = send(d, "echo-demo", {"to": "bob", "text": "out"})
    doc = wait_state(d, m["id"], ("sent", "delivered"))
    assert doc["provider_message_id"], doc
    st = status(d)
    assert st["provider_status"]["process"]["isolation"] == "process", st
    assert st["state"] in ("connected", "connecting"), st


def test_proxied_http_send(make_daemon):
    fake = FakeProvider().start()
    try:
        cfg = fakeprov_config(fake.url)
        cfg["plugin_host"] = HOST
        cfg["plugins"]["fakeprov"]["isolation"] = "process"
        cfg["plugins"]["fakeprov"]["process"] = dict(FAST)
        d = make_daemon(config=cfg, plugins=fakeprov_plugins())
        child_pid(d, "fp")
        m = send(d, "fp", {"to": "carol", "text": "through the child"})
        wait_state(d, m["id"], ("sent", "delivered"))
        assert "through the child" in fake.texts()
    finally:
        fake.close()


def test_sigkill_restarts_with_backoff(make_daemon):
    d = make_daemon(config=isolated_config())
    pid = child_pid(d)
    mark = d.mark()
    os.kill(pid, signal.SIGKILL)
    new = wait_until(lambda: (lambda p: p if p and p != pid else None)(
        status(d).get("provider_status", {}).get("process", {}).get("pid")), 10,
        what="a new plugin-host")
    assert new != pid
    child_pid(d)
    d.wait_for_log(lambda r: "killed by signal 9" in r.get("message", ""), since=mark)
    assert proc_state(pid) is None, "the killed plugin-host was not reaped"
    assert d.webhook(body={"text": "again", "from": "a"}).status == 200
    st = status(d)["provider_status"]["process"]
    assert st["restarts"] >= 1, st
    assert d.metrics().value("switchboard_plugin_host_failures_total", provider="echo",
                             instance="echo-demo") >= 1


def test_hung_plugin_host_is_killed_and_restarted(make_daemon):
    d = make_daemon(config=isolated_config())
    pid = child_pid(d)
    mark = d.mark()
    os.kill(pid, signal.SIGSTOP)
    d.wait_for_log(lambda r: "silent for" in r.get("message", ""), timeout=8, since=mark)
    new = child_pid(d)
    assert new != pid
    gone(pid)


def test_crash_loop_is_cut_off(make_daemon, tmp_path):
    # A plugin-host that dies at once, every time.
    broken = tmp_path / "broken-host"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    cfg = isolated_config()
    cfg["plugin_host"] = str(broken)
    d = make_daemon(config=cfg)
    st = wait_until(lambda: (lambda s: s if s["state"] == "error" else None)(status(d)), 10,
                    what="instance in error")
    assert "gave up after 4 failed runs" in st.get("detail", ""), st
    assert "exited with status 3" in st.get("detail", ""), st
    # Given up: no more restarts.
    restarts = st["provider_status"]["process"]["restarts"]
    time.sleep(1.0)
    assert status(d)["provider_status"]["process"]["restarts"] == restarts
    # A send is refused for good while it is failed, a webhook gets 503.
    assert d.webhook(body={"text": "x", "from": "a"}).status == 503
    # Restarting through the API tries again (and fails again the same way).
    assert d.api("POST", "/v1/instances/echo-demo/restart").status == 200


def test_stop_leaves_no_process_and_start_comes_back(make_daemon):
    d = make_daemon(config=isolated_config())
    pid = child_pid(d)
    r = d.api("POST", "/v1/instances/echo-demo/stop")
    assert r.status == 200, r
    gone(pid)  # ended by itself after "stop", and reaped: no zombie
    assert d.webhook(body={"text": "x", "from": "a"}).status in (404, 503)
    assert d.api("POST", "/v1/instances/echo-demo/start").status == 200
    assert child_pid(d) != pid
    assert d.webhook(body={"text": "back", "from": "a"}).status == 200


def test_daemon_sigkill_takes_plugin_hosts_along(make_daemon):
    d = make_daemon(config=isolated_config())
    pid = child_pid(d)
    d.expect_exit = True
    os.kill(d.pid, signal.SIGKILL)
    d.proc.wait(5)
    gone(pid)


def test_sigterm_stops_plugin_hosts(make_daemon):
    d = make_daemon(config=isolated_config())
    pid = child_pid(d)
    assert d.stop() == 0
    gone(pid, timeout=1.0)


def test_logout_wipes_state_dir_and_restarts(make_daemon):
    d = make_daemon(config=isolated_config())
    pid = child_pid(d)
    sdir = os.path.join(d.state, "instances", "echo-demo")
    assert os.path.isdir(sdir)
    with open(os.path.join(sdir, "session"), "w") as f:
        f.write("logged in")
    r = d.api("POST", "/v1/instances/echo-demo/logout")
    assert r.status == 200, r
    assert r.json()["logged_out"] is True
    new = child_pid(d)
    assert new != pid
    assert not os.path.exists(os.path.join(sdir, "session"))
    # The old profile is renamed away at once and removed off the loop.
    parent = os.path.dirname(sdir)
    wait_until(lambda: not [n for n in os.listdir(parent) if ".deleted." in n], 10,
               what="the logged-out state directory removed")
    # An instance that runs in the daemon has no session to log out of.
    r = d.api("GET", "/v1/instances/echo-demo/qr")
    assert r.status == 409 and r.json()["error"]["code"] == "no_qr", r


def test_logout_in_process_instance_is_409(make_daemon):
    d = make_daemon()
    r = d.api("POST", "/v1/instances/echo-demo/logout")
    assert r.status == 409 and r.json()["error"]["code"] == "no_session", r
    assert d.api("GET", "/v1/instances/nope/qr").status == 404


def test_max_processes_caps_children(make_daemon):
    cfg = isolated_config(process=dict(FAST, max_processes=1))
    cfg["instances"]["echo-two"] = {"provider": "echo", "settings": {"prefix": "2: "}}
    d = make_daemon(config=cfg)
    states = wait_until(lambda: (lambda a, b: (a, b) if {a["state"], b["state"]} & {"error"}
                                 else None)(status(d), status(d, "echo-two")), 10,
                        what="one instance refused")
    refused = [s for s in states if s["state"] == "error"]
    assert len(refused) == 1 and "max_processes (1)" in refused[0]["detail"], states


def test_switch_isolation_on_reload(make_daemon):
    d = make_daemon()
    assert "process" not in status(d).get("provider_status", {})
    cfg = isolated_config()
    cfg["listen"] = d.config["listen"]
    d.write_config(cfg)
    pid = child_pid(d)
    assert cmdline(pid)[0].endswith(b"switchboard-plugin-host")
    assert d.webhook(body={"text": "now isolated", "from": "a"}).status == 200


def test_memory_cap_through_a_cgroup(make_daemon):
    d = make_daemon(config=isolated_config(process=dict(FAST, memory_max_mib=300)))
    pid = child_pid(d)
    if d.find_logs(lambda r: "memory_max_mib not enforced" in r.get("message", "")):
        pytest.skip("this machine does not let the daemon write its cgroup tree")
    with open("/proc/%d/cgroup" % pid) as f:
        lines = [l.strip().split(":", 2) for l in f]
    mine = [l for l in lines if l[2].endswith("/switchboard-echo-demo")]
    assert mine, lines
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    candidates = (["/sys/fs/cgroup" + mine[0][2] + "/memory.max"] if v2 else
                  ["/sys/fs/cgroup/memory" + mine[0][2] + "/memory.limit_in_bytes",
                   "/sys/fs/cgroup/memory/switchboard-echo-demo/memory.limit_in_bytes"])
    limits = [open(p).read().strip() for p in candidates if os.path.exists(p)]
    assert str(300 * 1024 * 1024) in limits, (candidates, limits)


def test_providers_show_isolation(make_daemon):
    d = make_daemon(config=isolated_config())
    assert d.provider("echo")["isolation"] == "process"
