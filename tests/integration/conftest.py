"""Black-box harness for switchboardd integration tests.

Every test starts its own daemon in a private temporary tree:

    <tmp>/etc/switchboard.json   the main config (written by the test)
    <tmp>/etc/conf.d/            drop-in snippets
    <tmp>/plugins/echo.so        a private copy of $SB_PLUGIN_DIR/echo.so
    <tmp>/state/                 state dir
    <tmp>/daemon.log             the daemon's stderr (JSON log lines)

Environment (set by tests/Makefile.am): SB_DAEMON, SB_PLUGIN_DIR,
SB_TEST_PLUGIN_DIR, SB_TOP_SRCDIR, SB_TOP_BUILDDIR, SB_FIXTURES.
Only the Python standard library and pytest are used.
"""

import copy
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

# Deadline for "applied within 1 s" checks; generous for sanitizer builds.
RELOAD_DEADLINE = float(os.environ.get("SB_TEST_RELOAD_DEADLINE", "2.0"))
START_DEADLINE = float(os.environ.get("SB_TEST_START_DEADLINE", "15.0"))

ECHO_V1 = "1.0.0"
ECHO_V2 = "2.0.0-test"

# Variables the daemon reads as overrides: never leak them from the caller.
_OVERRIDE_RE = re.compile(r"^(MULTI_PROVIDER_PORT|ENABLE_[A-Z0-9_]+|[A-Z0-9_]+_WEBHOOK_PATH"
                          r"|DATABASE_URL|SWITCHBOARD_MASTER_KEY|SWITCHBOARD_PLUGIN_HOST)$")

_db_counter = [0]


def mariadb_socket():
    """The run's private MariaDB (started by run-pytest.sh)."""
    return _env_path("SB_MARIADB_SOCKET")


def sql(statement, database=None):
    """Run one statement as root through the test server's socket; returns stdout."""
    cmd = ["mariadb", "--no-defaults", "--socket=" + mariadb_socket(), "-uroot", "-N", "-B",
           "-e", statement]
    if database:
        cmd.insert(-2, database)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def new_database():
    """A fresh database on the test server: (name, DATABASE_URL)."""
    _db_counter[0] += 1
    name = "sbt_%d_%d" % (os.getpid(), _db_counter[0])
    sql("CREATE DATABASE %s CHARACTER SET utf8mb4" % name)
    return name, "mysql://root@localhost/%s?socket=%s" % (name, mariadb_socket())


def _env_path(name):
    val = os.environ.get(name)
    if not val:
        pytest.skip("%s is not set (run through `make check` or set it by hand)" % name)
    return val


def daemon_path():
    path = _env_path("SB_DAEMON")
    if not os.access(path, os.X_OK):
        pytest.fail("SB_DAEMON=%s is not an executable (daemon not built?)" % path)
    return path


def plugin_dir():
    return _env_path("SB_PLUGIN_DIR")


def migrations_dir():
    return _env_path("SB_MIGRATIONS_DIR")


def aux_plugin_dir():
    return _env_path("SB_TEST_PLUGIN_DIR")


def aux_plugin(name):
    path = os.path.join(aux_plugin_dir(), name)
    if not os.path.exists(path):
        pytest.fail("test plugin %s not built" % path)
    return path


def free_port():
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_refuses(port, host="127.0.0.1"):
    """True when a TCP connect to the port is refused."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Poll pred() until it returns a truthy value; return it, or fail."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            val = pred()
            if val:
                return val
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        if time.monotonic() >= deadline:
            msg = "timed out after %.1fs waiting for %s" % (timeout, what)
            if last_exc is not None:
                msg += " (last error: %r)" % (last_exc,)
            raise AssertionError(msg)
        time.sleep(interval)


def base_config(port, **overrides):
    cfg = {
        "listen": {"address": "127.0.0.1", "port": port},
        "log_level": "info",
        "shutdown_timeout_ms": 5000,
        "swap_timeout_ms": 5000,
        "plugins": {"echo": {"enabled": True}},
        "instances": {"echo-demo": {"provider": "echo", "settings": {"prefix": "echo: "}}},
    }
    cfg.update(overrides)
    return cfg


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # dict, lower-case names
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:300])


def http_request(port, method, path, body=None, headers=None, timeout=10.0, conn=None):
    """One HTTP/1.1 request. Returns Response. Raises on transport errors."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        if own:
            conn.close()


def parse_metrics(text):
    """Prometheus text format -> list of (name, labels dict, float value)."""
    out = []
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$", line)
        if not m:
            raise AssertionError("unparsable metrics line: %r" % line)
        labels = {}
        if m.group(3):
            for k, v in label_re.findall(m.group(3)):
                labels[k] = v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        out.append((m.group(1), labels, float(m.group(4))))
    return out


class Metrics:
    def __init__(self, text):
        self.text = text
        self.samples = parse_metrics(text)

    def has(self, name):
        return any(n == name for n, _, _ in self.samples)

    def value(self, name, **labels):
        """Sum of samples named `name` whose labels include `labels` (0 if none)."""
        total = 0.0
        for n, lab, val in self.samples:
            if n == name and all(lab.get(k) == v for k, v in labels.items()):
                total += val
        return total

    def find(self, name, **labels):
        return [(lab, val) for n, lab, val in self.samples
                if n == name and all(lab.get(k) == v for k, v in labels.items())]


class Daemon:
    """One switchboardd process with a private config tree."""

    def __init__(self, tmp_path, config=None, env=None, args=None, port=None,
                 plugins=None, confd=None):
        self.root = str(tmp_path)
        self.etc = os.path.join(self.root, "etc")
        self.confd = os.path.join(self.etc, "conf.d")
        self.plugins = os.path.join(self.root, "plugins")
        self.state = os.path.join(self.root, "state")
        self.config_path = os.path.join(self.etc, "switchboard.json")
        self.log_path = os.path.join(self.root, "daemon.log")
        for d in (self.etc, self.confd, self.plugins, self.state):
            os.makedirs(d, exist_ok=True)
        # Plugins: {"echo.so": source path}; default the built echo.
        if plugins is None:
            plugins = {"echo.so": os.path.join(plugin_dir(), "echo.so")}
        for name, src in plugins.items():
            if not os.path.exists(src):
                pytest.fail("plugin %s not built" % src)
            shutil.copy2(src, os.path.join(self.plugins, name))
        self.config = copy.deepcopy(config) if config is not None else base_config(free_port())
        self.write_config(self.config, mode="plain")
        for name, obj in (confd or {}).items():
            self.write_confd(name, obj)
        self.env = dict(env or {})
        # A database of its own on the run's server, unless the test picks one.
        self.database = None
        if "DATABASE_URL" not in self.env:
            self.database, self.env["DATABASE_URL"] = new_database()
        self.args = list(args or [])
        # Port the tests talk to: explicit, else the config's.
        self.port = port if port is not None else self.config["listen"]["port"]
        self.proc = None
        self.returncode = None
        self.expect_exit = False
        self._log_file = None

    # -- process ---------------------------------------------------------

    def command(self, extra=None):
        return [daemon_path(), "--config", self.config_path, "--plugin-dir", self.plugins,
                "--state-dir", self.state, "--migrations-dir", migrations_dir()] + self.args + \
            list(extra or [])

    def child_env(self):
        env = {k: v for k, v in os.environ.items() if not _OVERRIDE_RE.match(k)}
        env.update(self.env)
        return env

    def start(self, wait=True):
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=self._log_file,
                                     env=self.child_env())
        if wait:
            self.wait_healthy()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout=START_DEADLINE, port=None):
        port = port or self.port

        def ok():
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited with %s during start-up" % self.proc.returncode)
            try:
                return self.get("/healthz", port=port, timeout=2).status == 200
            except OSError:
                return False

        deadline = time.monotonic() + timeout
        while True:
            try:
                if ok():
                    return
            except AssertionError:
                raise
            if time.monotonic() >= deadline:
                raise AssertionError("daemon not healthy on port %d after %.1fs" % (port, timeout))
            time.sleep(0.02)

    def expect_start_failure(self, timeout=START_DEADLINE):
        """Start and expect the process to exit on its own; returns the exit
        code. Fails fast if it comes up healthy instead."""
        self.expect_exit = True
        self.start(wait=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                return rc
            try:
                if self.get("/healthz", timeout=1).status == 200:
                    raise AssertionError("daemon started and serves /healthz; expected it to exit")
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError("daemon neither exited nor became healthy in %.1fs" % timeout)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout=10.0):
        """SIGTERM, wait, SIGKILL if needed. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = "killed after SIGTERM timeout"
                return self.returncode
        self.returncode = self.proc.returncode
        return self.returncode

    def close(self):
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    # -- config ----------------------------------------------------------

    @staticmethod
    def _write(path, text, mode):
        if mode == "rename":
            d, base = os.path.split(path)
            tmp = os.path.join(d, "." + base + ".tmp")
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        elif mode in ("inplace", "plain"):
            with open(path, "w") as f:
                f.write(text)
        else:
            raise ValueError(mode)

    def write_config(self, cfg, mode="rename"):
        """Write the main config. mode: 'rename' (temp + rename) or 'inplace'."""
        if not isinstance(cfg, str):
            self.config = copy.deepcopy(cfg)
            cfg = json.dumps(cfg, indent=2) + "\n"
        self._write(self.config_path, cfg, mode)

    def write_confd(self, name, obj, mode="rename"):
        text = obj if isinstance(obj, str) else json.dumps(obj, indent=2) + "\n"
        path = os.path.join(self.confd, name)
        self._write(path, text, mode)
        return path

    def install_plugin(self, src, name="echo.so"):
        """Replace a plugin the way a package upgrade does: copy + rename."""
        tmp = os.path.join(self.plugins, "." + name + ".dpkg-new")
        shutil.copy2(src, tmp)
        os.rename(tmp, os.path.join(self.plugins, name))

    # -- HTTP ------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, port=None, timeout=10.0, conn=None):
        return http_request(port or self.port, method, path, body=body, headers=headers,
                            timeout=timeout, conn=conn)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body=body, **kw)

    def webhook(self, instance="echo-demo", body=None, path="/webhook/echo", **kw):
        if body is None:
            body = {"text": "hello", "from": "tester"}
        return self.post("%s/%s" % (path, instance), body, **kw)

    def metrics(self, **kw):
        r = self.get("/metrics", **kw)
        assert r.status == 200, r
        return Metrics(r.text)

    @property
    def admin_key(self):
        """The admin key the daemon printed on its first start."""
        rec = self.wait_for_log(lambda r: "api_key" in r, timeout=START_DEADLINE,
                                what="the admin key log line")
        return rec["api_key"]

    def auth(self, key=None):
        return {"Authorization": "Bearer " + (key or self.admin_key)}

    def api(self, method, path, body=None, key=None, **kw):
        """An authenticated /v1 request (admin key unless key is given)."""
        headers = dict(kw.pop("headers", {}) or {})
        headers.update(self.auth(key))
        return self.request(method, path, body=body, headers=headers, **kw)

    def providers(self, **kw):
        kw.setdefault("headers", self.auth())
        r = self.get("/v1/providers", **kw)
        assert r.status == 200, r
        return r.json()["providers"]

    def provider(self, name="echo", **kw):
        for p in self.providers(**kw):
            if p.get("name") == name:
                return p
        return None

    # -- logs ------------------------------------------------------------

    def raw_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def logs(self):
        """Parsed complete log lines; non-JSON lines become {'_raw': line}."""
        out = []
        text = self.raw_log()
        lines = text.split("\n")
        for line in lines[:-1]:  # last element is an incomplete line (or "")
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    rec = {"_raw": line}
            except ValueError:
                rec = {"_raw": line}
            out.append(rec)
        return out

    def mark(self):
        """Number of log lines so far: pass as `since` to only see later lines."""
        return len(self.logs())

    def find_logs(self, pred, since=0):
        return [r for r in self.logs()[since:] if "_raw" not in r and pred(r)]

    def wait_for_log(self, pred, timeout=5.0, since=0, what=None):
        if isinstance(pred, str):
            msg = pred
            pred = lambda r: msg_matches(r, msg)  # noqa: E731
            what = what or "log message %r" % msg
        found = wait_until(lambda: self.find_logs(pred, since), timeout,
                           what=what or "log line")
        return found[0]


def msg_matches(rec, message):
    """The record's message is `message`, or `message` followed by ':' or ' '
    and detail (tolerated; test_*_exact checks the plain form)."""
    m = rec.get("message")
    return isinstance(m, str) and (m == message or m.startswith(message + ":")
                                   or m.startswith(message + " "))


def msg_is(message, **fields):
    """Log predicate: message matches (see msg_matches) and fields equal."""
    def pred(r):
        return msg_matches(r, message) and all(r.get(k) == v for k, v in fields.items())
    return pred


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def make_daemon(tmp_path, request):
    """Factory: make_daemon(config=..., env=..., start=True) -> Daemon.

    Teardown stops every daemon with SIGTERM (SIGKILL after 10 s), checks it
    exited 0, and prints each daemon's log when the test failed.
    """
    daemons = []

    def factory(config=None, start=True, sub=None, **kw):
        root = tmp_path / (sub or ("d%d" % len(daemons)))
        root.mkdir(parents=True, exist_ok=True)
        d = Daemon(root, config=config, **kw)
        daemons.append(d)
        if start:
            d.start()
        return d

    yield factory

    problems = []
    for d in daemons:
        was_running = d.alive()
        rc = d.stop()
        d.close()
        if was_running and rc != 0 and not d.expect_exit:
            problems.append("daemon %s: SIGTERM at teardown gave exit %r (expected 0)"
                            % (d.root, rc))
    failed = any(getattr(request.node, "rep_" + w, None) is not None
                 and getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    if failed or problems:
        for d in daemons:
            print("\n===== daemon log %s (exit %r) =====" % (d.log_path, d.returncode))
            text = d.raw_log()
            if len(text) > 20000:
                text = "...[truncated]...\n" + text[-20000:]
            print(text)
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture
def daemon(make_daemon):
    """A running daemon with the default config (echo + instance echo-demo)."""
    return make_daemon()
