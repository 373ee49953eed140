"""The database goes away while the daemon runs: API calls that need it get
503 with a JSON error and Retry-After, /readyz says not ready, webhooks keep
working, nothing crashes; when the database is back everything works again
without restarting the daemon. Both with a server of the test's own
(DATABASE_URL) and with the daemon's embedded server killed with SIGKILL."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import wait_until

EMBEDDED_START = float(os.environ.get("SB_TEST_EMBEDDED_START", "90"))
BACK_DEADLINE = float(os.environ.get("SB_TEST_DB_BACK_DEADLINE", "10"))


def top_srcdir():
    val = os.environ.get("SB_TOP_SRCDIR")
    if not val:
        pytest.skip("SB_TOP_SRCDIR is not set")
    return val


def proc_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class PrivateMariaDB:
    """A MariaDB server of the test's own, started with tests/db/mariadb.sh."""

    def __init__(self):
        # Short path: the socket lives here (sun_path is 108 bytes).
        self.dir = tempfile.mkdtemp(prefix="sbo", dir="/tmp")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.pid = None

    def start(self):
        script = '. "$1/tests/db/mariadb.sh"; sb_mariadb_start "$2"'
        out = subprocess.run(["sh", "-c", script, "sh", top_srcdir(), self.dir],
                             capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, "sb_mariadb_start failed: %s" % out.stderr
        with open(os.path.join(self.dir, "mariadbd.pid")) as f:
            self.pid = int(f.read().strip())
        assert proc_alive(self.pid)

    def stop(self):
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while proc_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            wait_until(lambda: not proc_alive(self.pid), 10, what="mariadbd killed")
        self.pid = None

    def sql(self, statement, database=None):
        cmd = ["mariadb", "--no-defaults", "--socket=" + self.socket, "-uroot", "-N", "-B"]
        if database:
            cmd.append(database)
        return subprocess.run(cmd + ["-e", statement], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_db():
    db = PrivateMariaDB()
    try:
        db.start()
        yield db
    finally:
        db.cleanup()


def assert_503(resp, what):
    assert resp.status == 503, "%s: %r" % (what, resp)
    assert "application/json" in resp.headers.get("content-type", ""), (what, resp.headers)
    doc = resp.json()
    assert set(doc) == {"error"} and isinstance(doc["error"].get("code"), str), (what, doc)
    assert isinstance(doc["error"].get("message"), str), (what, doc)
    ra = resp.headers.get("retry-after")
    assert ra is not None and ra.strip().isdigit(), "%s: Retry-After %r" % (what, ra)


def timed(fn, limit, what):
    t0 = time.monotonic()
    r = fn()
    took = time.monotonic() - t0
    assert took < limit, "%s took %.1fs while the database is down (limit %.1fs)" % (what, took,
                                                                                    limit)
    return r


def check_down(d, iid, token=None):
    """Everything a client sees while the database is down."""
    calls = [
        ("GET", "/v1/instances", None),
        ("GET", "/v1/instances/" + iid, None),
        ("POST", "/v1/instances", {"provider": "echo", "name": "during-outage"}),
        ("PATCH", "/v1/instances/" + iid, {"settings": {"prefix": "outage: "}}),
        ("DELETE", "/v1/instances/" + iid, None),
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {"label": "outage", "role": "admin"}),
    ]
    for method, path, body in calls:
        r = timed(lambda: d.api(method, path, body, timeout=15), 5.0, "%s %s" % (method, path))
        assert_503(r, "%s %s" % (method, path))
    r = d.get("/readyz")
    assert r.status == 503, r
    assert r.json().get("database") == "down" and r.json().get("ready") is False, r.json()
    assert d.get("/healthz").status == 200
    # A webhook is acknowledged only once its events are stored: while the
    # database is away the provider is told to send it again.
    r = d.webhook()
    assert_503(r, "webhook")
    hdr = {"X-Echo-Token": token} if token else None
    r = d.post("/webhook/echo/" + iid, {"text": "x", "from": "y"}, headers=hdr)
    assert_503(r, "webhook to the API instance")
    m = d.get("/metrics")
    assert m.status == 200, m
    assert d.alive(), "daemon died while the database was down"


def check_back(d, iid, pid):
    wait_until(lambda: d.get("/readyz").status == 200, BACK_DEADLINE,
               what="/readyz 200 after the database came back")
    assert d.get("/readyz").json()["database"] == "up"
    wait_until(lambda: d.api("GET", "/v1/instances/" + iid).status == 200, BACK_DEADLINE,
               what="GET instance 200 after the database came back")
    r = d.api("GET", "/v1/instances")
    assert r.status == 200 and iid in [i["id"] for i in r.json()["instances"]], r
    # Nothing half-done from the outage: the create and delete did not happen.
    names = [i["name"] for i in r.json()["instances"]]
    assert "during-outage" not in names, names
    r = d.api("PATCH", "/v1/instances/" + iid, {"settings": {"prefix": "back: "}})
    assert r.status == 200 and r.json()["settings"] == {"prefix": "back: "}, r
    r = d.api("POST", "/v1/instances", {"provider": "echo", "name": "after-outage"})
    assert r.status == 201, r
    assert d.api("DELETE", "/v1/instances/" + r.json()["id"]).status == 204
    wait_until(lambda: d.webhook().status == 200, BACK_DEADLINE,
               what="webhooks acknowledged again once events can be stored")
    assert d.pid == pid and d.alive(), "the daemon restarted"


def test_external_database_stopped_and_restarted(make_daemon, private_db):
    private_db.sql("CREATE DATABASE sbo CHARACTER SET utf8mb4")
    url = "mysql://root@localhost/sbo?socket=" + private_db.socket
    d = make_daemon(env={"DATABASE_URL": url})
    pid = d.pid
    token = "outage-token-1"
    r = d.api("POST", "/v1/instances", {"provider": "echo", "name": "survivor",
                                        "secrets": {"token": token}})
    assert r.status == 201, r
    iid = r.json()["id"]
    assert d.get("/readyz").status == 200
    for cycle in range(2):
        private_db.stop()
        # The first calls may be what notices; soon every one is a fast 503.
        wait_until(lambda: d.api("GET", "/v1/instances", timeout=15).status == 503, 10,
                   what="503 once the database is stopped")
        check_down(d, iid, token)
        # Still down on a second round of calls (nothing half-recovered).
        check_down(d, iid, token)
        private_db.start()
        check_back(d, iid, pid)
    assert not d.find_logs(lambda rec: rec.get("level") == "fatal")


def test_database_down_for_new_connections_keeps_keys(make_daemon, private_db):
    """Authentication does not need the database: a valid key is still
    accepted (503, not 401) and a bad one refused (401) during an outage."""
    private_db.sql("CREATE DATABASE sbo CHARACTER SET utf8mb4")
    url = "mysql://root@localhost/sbo?socket=" + private_db.socket
    d = make_daemon(env={"DATABASE_URL": url})
    key = d.admin_key
    private_db.stop()
    wait_until(lambda: d.api("GET", "/v1/instances", timeout=15).status == 503, 10,
               what="503 once the database is stopped")
    r = d.get("/v1/instances", headers={"Authorization": "Bearer sbk_%s_%s" % ("a" * 12,
                                                                               "B" * 43)})
    assert r.status == 401, r
    r = d.api("GET", "/v1/providers", key=key)
    assert r.status == 200, r
    private_db.start()
    wait_until(lambda: d.api("GET", "/v1/instances", key=key).status == 200, BACK_DEADLINE,
               what="API back")


# -- embedded ----------------------------------------------------------------------

def mariadbd_pids(datadir):
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                argv = f.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if "--datadir=" + datadir in argv and proc_alive(int(p)):
            pids.append(int(p))
    return pids


@pytest.fixture
def short_state_dir():
    path = tempfile.mkdtemp(prefix="sbe", dir="/tmp")
    yield path
    data = os.path.join(path, "mariadb", "data")
    for pid in mariadbd_pids(data):  # only if the test failed half-way
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_server_killed_comes_back(make_daemon, short_state_dir):
    d = make_daemon(start=False, env={"DATABASE_URL": ""})
    d.state = short_state_dir
    d.start(wait=False)
    d.wait_healthy(timeout=EMBEDDED_START)
    pid = d.pid
    datadir = os.path.join(short_state_dir, "mariadb", "data")
    wait_until(lambda: d.get("/readyz").status == 200, 10, what="/readyz 200")
    r = d.api("POST", "/v1/instances", {"provider": "echo", "name": "emb"})
    assert r.status == 201, r
    iid = r.json()["id"]
    servers = mariadbd_pids(datadir)
    assert len(servers) == 1, servers
    os.kill(servers[0], signal.SIGKILL)
    # The outage is short (the daemon restarts its server), but visible.
    seen = {"api": None, "ready": None}

    def saw_outage():
        r = d.api("GET", "/v1/instances/" + iid, timeout=15)
        if r.status == 503:
            seen["api"] = r
        rz = d.get("/readyz")
        if rz.status == 503:
            seen["ready"] = rz
        return seen["api"] is not None
    wait_until(saw_outage, 10, interval=0.01, what="a 503 while the embedded server is down")
    assert_503(seen["api"], "GET instance with the embedded server killed")
    # The webhook is answered either way: 503 while events cannot be stored,
    # 200 if the server is already back.
    assert d.webhook().status in (200, 503)
    assert d.alive()
    # Back on its own, with the data.
    check_back(d, iid, pid)
    now = mariadbd_pids(datadir)
    assert len(now) == 1 and now[0] != servers[0], (servers, now)
    assert d.find_logs(lambda rec: "embedded MariaDB" in str(rec.get("message", ""))
                       and "exited" in str(rec.get("message", ""))), \
        "the server's death was not logged"
    assert d.stop(timeout=30) == 0
    wait_until(lambda: not mariadbd_pids(datadir), 10, what="embedded mariadbd gone")
