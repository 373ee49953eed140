"""switchboard-plugin-host alone, driven the way switchboardd drives it.

Each test starts the built plugin-host with one end of a socketpair as its
fd 3 and speaks IPC protocol v1 (plugin-host/PROTOCOL.md) on the other:
hello, init, started, send/webhook round trips, ping, stop and EOF, refusals
of bad frames, and the proctest plugin (tests/plugins/proctest.c) for timers,
fd_watch, proc_*, kv and the proxied HTTP/WebSocket services.

Environment: SB_PLUGIN_HOST (the binary; the tests skip without it),
SB_PLUGIN_DIR (echo.so), SB_TEST_PLUGIN_DIR (proctest.so, init_fail.so,
bad_abi.so). No database is needed. SB_PLUGIN_HOST_VALGRIND=1 runs the
plugin-host under valgrind, where a leak or memory error fails the exit-code
checks (exit status 99).
"""

import base64
import json
import os
import socket
import struct
import subprocess
import tempfile
import time

import pytest

TIMEOUT = float(os.environ.get("SB_TEST_PLUGIN_HOST_TIMEOUT", "15"))


def _host_path():
    path = os.environ.get("SB_PLUGIN_HOST")
    if not path:
        pytest.skip("SB_PLUGIN_HOST is not set (run through `make check` or set it by hand)")
    if not os.access(path, os.X_OK):
        pytest.fail("SB_PLUGIN_HOST=%s is not an executable (plugin-host not built?)" % path)
    return path


def _plugin(env, name):
    d = os.environ.get(env)
    if not d:
        pytest.skip("%s is not set" % env)
    path = os.path.join(d, name)
    if not os.path.exists(path):
        pytest.fail("plugin %s not built" % path)
    return path


def echo_so():
    return _plugin("SB_PLUGIN_DIR", "echo.so")


def aux_so(name):
    return _plugin("SB_TEST_PLUGIN_DIR", name + ".so")


class Host:
    """One plugin-host child and the daemon's end of its socket."""

    def __init__(self, tmp_path):
        cmd = [_host_path(), "--ipc-fd", "3"]
        if os.environ.get("SB_PLUGIN_HOST_VALGRIND"):
            cmd = ["valgrind", "-q", "--leak-check=full", "--show-leak-kinds=definite,indirect",
                   "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99"] + cmd
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fd = child.fileno()
        self.state_dir = str(tmp_path)
        self.log = open(os.path.join(self.state_dir, "plugin-host.log"), "w+b")
        # The daemon hands the socket over as fd 3; Python's descriptors are
        # close-on-exec, so nothing else leaks into the child.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=self.log,
                                     close_fds=False, preexec_fn=lambda: os.dup2(child_fd, 3))
        child.close()
        self.sock.settimeout(TIMEOUT)
        self.frames = []  # everything received, in order
        self.unseen = []  # received and not yet returned by expect()
        self.buf = b""

    # -- wire --

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, frame):
        data = json.dumps(frame).encode()
        self.send_raw(struct.pack(">I", len(data)) + data)

    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("plugin-host closed the socket")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        (n,) = struct.unpack(">I", self._read_exact(4))
        assert n <= 16 * 1024 * 1024
        frame = json.loads(self._read_exact(n))
        assert isinstance(frame, dict) and isinstance(frame.get("t"), str)
        self.frames.append(frame)
        self.unseen.append(frame)
        return frame

    def expect(self, t, pred=None):
        """The first frame of type t (matching pred) not returned before, waiting for it.

        Frames arrive in order; ones skipped here stay in self.frames for later checks.
        """
        deadline = time.monotonic() + TIMEOUT
        while True:
            for i, f in enumerate(self.unseen):
                if f["t"] == t and (pred is None or pred(f)):
                    del self.unseen[i]
                    return f
            if time.monotonic() > deadline:
                raise AssertionError("no %s frame; got %r" % (t, self.frames))
            self.recv()

    def until_eof(self):
        """Read frames until the plugin-host closes the socket."""
        try:
            while True:
                self.recv()
        except EOFError:
            return self.frames

    def barrier(self, n=4242):
        """Everything the child sent before answering this ping is in self.frames."""
        self.send({"t": "ping", "n": n})
        self.expect("pong", lambda f: f["n"] == n)

    def of_type(self, t):
        return [f for f in self.frames if f["t"] == t]

    def events(self, kind=None):
        evs = self.of_type("event")
        return [e for e in evs if kind is None or e["payload"].get("kind") == kind]

    # -- protocol steps --

    def hello(self):
        f = self.expect("hello")
        assert f["v"] == 1
        assert f["abi"] == [1, 1]
        assert f["pid"] == self.proc.pid
        return f

    def init(self, plugin, name, settings=None, config=None, kv=None, instance="inst-1"):
        self.send({"t": "init", "plugin": plugin, "name": name, "config": config or {},
                   "instance": instance, "settings": settings or {}, "kv": kv or {},
                   "state_dir": self.state_dir})
        return self.expect("started")

    def start(self, plugin, name, **kw):
        self.hello()
        started = self.init(plugin, name, **kw)
        assert started["ok"] is True, started
        return started

    def wait(self):
        try:
            return self.proc.wait(timeout=TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stop(self):
        self.send({"t": "stop"})
        self.expect("stopped")
        assert self.wait() == 0, self.stderr()

    def stderr(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self):
        try:
            self.sock.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path)
    yield h
    h.close()


def b64(data):
    return base64.b64encode(data).decode()


def gone(pid, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True  # a zombie of someone else's: dead all the same
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


# ---- command line ----


def test_version_and_help():
    path = _host_path()
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "switchboard-plugin-host" in out.stdout
    out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "--ipc-fd" in out.stdout
    out = subprocess.run([path, "--bogus"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "usage" in out.stderr


# ---- echo: handshake, send, webhook, ping, stop, EOF ----


def test_handshake_and_stop(host):
    host.start(echo_so(), "echo", settings={"prefix": "> "})
    status = host.expect("status")
    assert status["status"]["prefix"] == "> "
    assert any(f["t"] == "state" and f["state"] == "connected" for f in host.frames)
    assert any(f["t"] == "log" and "initialised" in f["msg"] for f in host.frames)
    host.stop()


def test_send_round_trip(host):
    host.start(echo_so(), "echo", settings={"prefix": "> "})
    host.send({"t": "send", "id": 1, "message": {"to": "u1", "text": "hi"}})
    done = host.expect("send_done")
    assert done["id"] == 1 and done["ok"] == 1 and done["provider_msg_id"] == "echo-1"
    assert done["error_code"] is None
    ev = host.events()[0]
    assert ev["type"] == "message.received" and ev["payload"]["text"] == "> hi"
    assert "webhook" not in ev
    # The echo's status counts sends: a change is pushed.
    host.expect("status", lambda f: f["status"]["sent"] == 1)
    host.send({"t": "send", "id": 2, "message": {"to": 5}})
    done = host.expect("send_done")
    assert done["id"] == 2 and done["ok"] == 0 and done["error_code"] == "invalid_message"
    host.stop()


def test_webhook_round_trip(host):
    host.start(echo_so(), "echo")
    body = json.dumps({"text": "hello", "from": "u9"}).encode()
    host.send({"t": "webhook", "id": 7, "method": "POST", "url": "", "query": None,
               "headers": [["Content-Type", "application/json"]], "body_b64": b64(body)})
    reply = host.expect("reply")
    assert reply["id"] == 7 and reply["status"] == 200
    assert reply["content_type"] == "application/json"
    assert json.loads(base64.b64decode(reply["body_b64"]))["ok"] is True
    evs = host.events()
    assert len(evs) == 1 and evs[0]["webhook"] == 7
    assert evs[0]["payload"]["text"] == "hello"
    # Stored before the answer: the event came first on the wire.
    assert host.frames.index(evs[0]) < host.frames.index(reply)
    # A refusal from the plugin is a reply too.
    host.send({"t": "webhook", "id": 8, "method": "GET", "url": "", "headers": [],
               "body_b64": ""})
    reply = host.expect("reply", lambda f: f["id"] == 8)
    assert reply["status"] == 405
    host.stop()


def test_ping_pong(host):
    host.hello()
    host.send({"t": "ping", "n": 1})
    assert host.expect("pong")["n"] == 1
    host.init(echo_so(), "echo")
    host.send({"t": "ping", "n": 2})
    assert host.expect("pong")["n"] == 2
    host.stop()


def test_eof_exits_nonzero(host):
    host.start(aux_so("proctest"), "proctest", settings={"sleeper": True})
    pid = host.expect("event")["payload"]["pid"]
    host.sock.shutdown(socket.SHUT_RDWR)
    assert host.wait() == 1, host.stderr()
    assert gone(pid), "the plugin's child outlived the plugin-host"


def test_stop_before_init(host):
    host.hello()
    host.stop()


# ---- refusals ----


def _refused(host, why):
    frames = host.until_eof()
    logs = [f for f in frames if f["t"] == "log" and f["level"] == 0]
    assert logs and why in logs[-1]["msg"], frames
    assert host.wait() == 1, host.stderr()


def test_unknown_frame_type(host):
    host.start(echo_so(), "echo")
    host.send({"t": "bogus"})
    _refused(host, "unknown frame type")


def test_malformed_json(host):
    host.hello()
    host.send_raw(struct.pack(">I", 5) + b"{bad}")
    _refused(host, "malformed")


def test_frame_without_type(host):
    host.hello()
    data = b'{"v":1}'
    host.send_raw(struct.pack(">I", len(data)) + data)
    _refused(host, "malformed")


def test_oversized_frame(host):
    host.start(echo_so(), "echo")
    host.send_raw(struct.pack(">I", 16 * 1024 * 1024 + 1) + b"{}")
    _refused(host, "over")


def test_send_before_init(host):
    host.hello()
    host.send({"t": "send", "id": 1, "message": {"to": "a", "text": "b"}})
    _refused(host, "before the instance started")


def test_bad_init_frame(host):
    host.hello()
    host.send({"t": "init", "plugin": echo_so()})
    started = host.expect("started")
    assert started["ok"] is False and "lacks" in started["error"]
    assert host.wait() == 1


def test_init_fails(host):
    host.hello()
    started = host.init(aux_so("init_fail"), "echo")
    assert started["ok"] is False
    assert "init failed" in started["error"]
    assert any("deliberate init failure" in f.get("msg", "") for f in host.of_type("log"))
    assert host.wait() == 1, host.stderr()


def test_bad_abi_refused(host):
    host.hello()
    started = host.init(aux_so("bad_abi"), "echo")
    assert started["ok"] is False and "ABI" in started["error"]
    assert host.wait() == 1


def test_name_mismatch_refused(host):
    host.hello()
    started = host.init(echo_so(), "telegram")
    assert started["ok"] is False and "expected \"telegram\"" in started["error"]
    assert host.wait() == 1


def test_missing_plugin_file(host):
    host.hello()
    started = host.init("/nonexistent/x.so", "x")
    assert started["ok"] is False and "dlopen" in started["error"]
    assert host.wait() == 1


def test_instance_start_fails(host):
    host.hello()
    started = host.init(aux_so("proctest"), "proctest", settings={"fail_start": True})
    assert started["ok"] is False and "failed to start" in started["error"]
    assert any(f["t"] == "state" and f["state"] == "error" for f in host.frames)
    assert host.wait() == 1


# ---- proctest: local services ----


def test_spawn_fd_watch_and_exit_status(host):
    host.start(aux_so("proctest"), "proctest", settings={"spawn": True})
    ev = host.expect("event", lambda f: f["payload"]["kind"] == "spawn")
    assert ev["payload"]["read"] == "hi\n"
    assert ev["payload"]["exit_code"] == 0 and ev["payload"]["signaled"] is False
    assert "webhook" not in ev
    host.expect("status", lambda f: f["status"]["events"] >= 1)
    host.stop()


def test_timer(host):
    host.start(aux_so("proctest"), "proctest", settings={"timer_ms": 50})
    host.expect("event", lambda f: f["payload"]["kind"] == "timer")
    host.stop()


def test_children_killed_on_stop(host):
    host.start(aux_so("proctest"), "proctest", settings={"sleeper": True})
    pid = host.expect("event", lambda f: f["payload"]["kind"] == "sleeper")["payload"]["pid"]
    assert not gone(pid, timeout=0.2)
    host.stop()
    assert gone(pid)


def test_settings_get_state_dir_and_kv(host):
    host.start(aux_so("proctest"), "proctest", settings={"kv": True},
               kv={"greeting": "hello"})
    ev = host.expect("event", lambda f: f["payload"]["kind"] == "kv")
    assert ev["payload"]["greeting"] == "hello" and ev["payload"]["rc"] == 0
    kv = host.expect("kv_set")
    assert kv["key"] == "seen" and kv["value"] == "yes"
    host.stop()


def test_send_refused_done_and_failed_on_stop(host):
    host.start(aux_so("proctest"), "proctest")
    host.send({"t": "send", "id": 1, "message": {"text": "refuse"}})
    done = host.expect("send_done")
    assert done == {"t": "send_done", "id": 1, "refused": True}
    host.send({"t": "send", "id": 2, "message": {"text": "later"}})
    done = host.expect("send_done")
    assert done["id"] == 2 and done["ok"] == 1 and done["provider_msg_id"] == "pt-1"
    # One more, stopped before its 10 ms timer: failed for the plugin, retryable.
    host.send({"t": "send", "id": 3, "message": {"text": "slow"}})
    host.send({"t": "stop"})
    done = host.expect("send_done")
    assert done["id"] == 3 and done["ok"] == 0 and done["retryable"] == 1
    assert done["error_code"] == "instance_stopped"
    host.expect("stopped")
    assert host.wait() == 0


def test_webhook_headers_query_and_tag(host):
    host.start(aux_so("proctest"), "proctest")
    host.send({"t": "webhook", "id": 3, "method": "POST", "url": "sub/path", "query": "a=b",
               "headers": [["X-A", "1"]], "body_b64": b64(b"raw\x00body")})
    reply = host.expect("reply")
    assert reply["status"] == 202 and reply["content_type"] == "text/plain"
    assert reply["headers"] == [["X-Proctest", "1"]]
    assert base64.b64decode(reply["body_b64"]) == b"accepted"
    ev = host.events("webhook")[0]
    assert ev["webhook"] == 3
    assert ev["payload"]["url"] == "sub/path" and ev["payload"]["query"] == "a=b"
    assert ev["payload"]["body"] == "raw\x00body"
    host.stop()


# ---- proctest: proxied HTTP and WebSocket ----


def test_http_proxied(host):
    host.start(aux_so("proctest"), "proctest", settings={"http_url": "http://127.0.0.1:9/x"})
    req = host.expect("http")
    assert req["id"] == 1 and req["method"] == "GET" and req["url"] == "http://127.0.0.1:9/x"
    assert ["X-Proctest", "1"] in req["headers"]
    assert req["body_b64"] == "" and req["timeout_ms"] == 0
    host.send({"t": "http_done", "id": 1, "status": 201, "error": None,
               "headers": [["Content-Type", "text/plain"]], "body_b64": b64(b"made")})
    ev = host.expect("event", lambda f: f["payload"]["kind"] == "http")
    assert ev["payload"]["status"] == 201 and ev["payload"]["body"] == "made"
    assert ev["payload"]["headers"] == {"Content-Type": "text/plain"}
    # A second answer for the same id finds no one.
    host.send({"t": "http_done", "id": 1, "status": 500, "headers": [], "body_b64": ""})
    host.barrier()
    assert len(host.events("http")) == 1
    host.stop()


def test_http_cancelled_on_stop(host):
    host.start(aux_so("proctest"), "proctest", settings={"http_url": "http://127.0.0.1:9/x"})
    host.expect("http")
    host.send({"t": "stop"})
    cancel = host.expect("http_cancel")
    assert cancel["id"] == 1
    host.expect("stopped")
    assert host.wait() == 0


def test_http_transport_error(host):
    host.start(aux_so("proctest"), "proctest", settings={"http_url": "http://127.0.0.1:9/x"})
    host.expect("http")
    host.send({"t": "http_done", "id": 1, "status": 0, "error": "connection refused",
               "headers": [], "body_b64": ""})
    ev = host.expect("event", lambda f: f["payload"]["kind"] == "http")
    assert ev["payload"]["status"] == 0 and ev["payload"]["error"] == "connection refused"
    host.stop()


def test_ws_proxied_plugin_closes(host):
    host.start(aux_so("proctest"), "proctest", settings={"ws_url": "ws://127.0.0.1:9/s"})
    conn = host.expect("ws_connect")
    assert conn["id"] == 1 and conn["url"] == "ws://127.0.0.1:9/s"
    host.send({"t": "ws_event", "id": 1, "ev": "open"})
    sent = host.expect("ws_send")
    assert sent["id"] == 1 and sent["binary"] is False
    assert base64.b64decode(sent["data_b64"]) == b"ping"
    opened = host.expect("event", lambda f: f["payload"]["kind"] == "ws_open")
    assert opened["payload"]["send_rc"] == 0
    host.send({"t": "ws_event", "id": 1, "ev": "text", "data_b64": b64(b"pong")})
    close = host.expect("ws_close")
    assert close["id"] == 1 and close["code"] == 1000 and close["reason"] == "done"
    assert host.events("ws")[0]["payload"]["text"] == "pong"
    # Closed by the plugin: the daemon's late events go nowhere.
    host.send({"t": "ws_event", "id": 1, "ev": "closed", "code": 1000, "data_b64": ""})
    host.barrier()
    assert not host.events("ws_closed")
    host.stop()


def test_ws_closed_by_server(host):
    host.start(aux_so("proctest"), "proctest", settings={"ws_url": "wss://127.0.0.1:9/s"})
    host.expect("ws_connect")
    host.send({"t": "ws_event", "id": 1, "ev": "open"})
    host.expect("ws_send")
    host.send({"t": "ws_event", "id": 1, "ev": "closed", "code": 1001, "data_b64": b64(b"bye")})
    ev = host.expect("event", lambda f: f["payload"]["kind"] == "ws_closed")
    # Not open any more: ws_send answers SB_EGONE (-5).
    assert ev["payload"]["code"] == 1001 and ev["payload"]["send_rc"] == -5
    host.stop()
    assert not host.of_type("ws_close")


def test_ws_closed_on_stop(host):
    host.start(aux_so("proctest"), "proctest", settings={"ws_url": "ws://127.0.0.1:9/s"})
    host.expect("ws_connect")
    host.send({"t": "stop"})
    close = host.expect("ws_close")
    assert close["id"] == 1
    host.expect("stopped")
    assert host.wait() == 0
