"""Storage start-up: migrations from empty, re-run is a no-op, a tampered
migration is refused, the first admin key is logged once, two daemons
migrating one database together, and the embedded MariaDB."""

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import (START_DEADLINE, base_config, free_port, mariadb_socket, migrations_dir,
                      new_database, sql, wait_until)

EMBEDDED_START = float(os.environ.get("SB_TEST_EMBEDDED_START", "90"))


def components():
    """(component, file) of every migration shipped in $SB_MIGRATIONS_DIR."""
    root = migrations_dir()
    out = []
    for comp in sorted(os.listdir(root)):
        for f in sorted(os.listdir(os.path.join(root, comp))):
            if f.endswith(".sql"):
                out.append((comp, f))
    assert out, "no migrations under %s" % root
    return out


def run_cmd(d, *args, timeout=60):
    """Run `switchboardd <args>` with the daemon's own command line and env."""
    return subprocess.run(d.command(list(args)), capture_output=True, text=True, timeout=timeout,
                          env=d.child_env(), stdin=subprocess.DEVNULL)


def recorded(database):
    rows = sql("SELECT component, version FROM schema_migrations ORDER BY component, version",
               database)
    return [tuple(line.split("\t")) for line in rows.splitlines() if line.strip()]


def key_lines(d, since=0):
    return d.find_logs(lambda r: "api_key" in r, since)


# -- migrations --------------------------------------------------------------------

def test_migrations_from_empty_and_rerun_is_noop(daemon):
    shipped = components()
    rows = recorded(daemon.database)
    comps = {c for c, _ in rows}
    assert comps == {c for c, _ in shipped}, "recorded %r, shipped %r" % (rows, shipped)
    assert "core" in comps
    assert len(rows) == len(shipped), (rows, shipped)
    assert len(set(rows)) == len(rows), "a migration is recorded twice: %r" % rows
    tables = set(sql("SHOW TABLES", daemon.database).split())
    for t in ("instances", "messages", "webhook_events", "outbox", "subscriptions", "api_keys",
              "telegram_instances", "whatsapp_official_instances", "messenger_instances",
              "instagram_instances", "slack_instances", "discord_instances",
              "whatsappweb_instances", "schema_migrations"):
        assert t in tables, "table %s missing after migrations: %r" % (t, sorted(tables))
    # migrate --status (while the daemon runs): every file applied, none pending.
    st = run_cmd(daemon, "migrate", "--status")
    assert st.returncode == 0, st
    for comp, f in shipped:
        lines = [ln for ln in st.stdout.splitlines() if "%s/%s" % (comp, f) in ln]
        assert len(lines) == 1, "status for %s/%s: %r" % (comp, f, st.stdout)
        assert lines[0].split()[0] == "applied", lines
    assert "pending" not in st.stdout and "changed" not in st.stdout, st.stdout
    # migrate again: nothing to do.
    again = run_cmd(daemon, "migrate")
    assert again.returncode == 0, again
    assert again.stdout.strip().startswith("0 migrations applied"), again
    assert recorded(daemon.database) == rows


def test_migrate_command_on_empty_database(make_daemon):
    """`switchboardd migrate` alone prepares an empty database; the daemon
    started afterwards applies nothing."""
    d = make_daemon(start=False)
    st = run_cmd(d, "migrate", "--status")
    assert st.returncode == 0, st
    pending = [ln for ln in st.stdout.splitlines() if ln.startswith("pending")]
    assert len(pending) == len(components()), st.stdout
    r = run_cmd(d, "migrate")
    assert r.returncode == 0, r
    assert r.stdout.strip().startswith("%d migrations applied" % len(components())), r
    d.start()
    assert not d.find_logs(lambda rec: rec.get("message") == "migration applied"), \
        "the daemon re-applied migrations"
    assert len(recorded(d.database)) == len(components())


def test_new_migration_applied_on_restart(make_daemon, tmp_path):
    copy = str(tmp_path / "migrations")
    shutil.copytree(migrations_dir(), copy)
    d = make_daemon(start=False, args=["--migrations-dir", copy])
    d.start()
    before = recorded(d.database)
    assert d.stop() == 0
    d.close()
    with open(os.path.join(copy, "core", "9001_test_extra.sql"), "w") as f:
        f.write("CREATE TABLE sb_test_extra (id INT NOT NULL PRIMARY KEY);\n")
    st = run_cmd(d, "migrate", "--status")
    assert st.returncode == 0, st
    assert [ln.split()[0] for ln in st.stdout.splitlines() if "9001_test_extra" in ln] == \
        ["pending"], st.stdout
    mark = d.mark()
    d.start()
    applied = d.find_logs(lambda r: r.get("message") == "migration applied", mark)
    assert [r.get("migration") for r in applied] == ["9001_test_extra.sql"], applied
    assert len(recorded(d.database)) == len(before) + 1
    assert "sb_test_extra" in sql("SHOW TABLES", d.database).split()


def test_tampered_migration_is_refused(make_daemon, tmp_path):
    copy = str(tmp_path / "migrations")
    shutil.copytree(migrations_dir(), copy)
    d = make_daemon(start=False, args=["--migrations-dir", copy])
    d.start()
    assert d.get("/healthz").status == 200
    assert d.stop() == 0
    d.close()
    core = sorted(f for f in os.listdir(os.path.join(copy, "core")) if f.endswith(".sql"))[0]
    path = os.path.join(copy, "core", core)
    with open(path, "a") as f:
        f.write("-- an innocent-looking edit after the file was applied\n")
    mark = d.mark()
    rc = d.expect_start_failure()
    assert rc == 1, "daemon exit %r with a tampered migration (expected 1)" % rc
    text = "\n".join(str(r) for r in d.logs()[mark:])
    assert "core/" + core in text or path in text, \
        "the log does not name the changed file %s: %s" % (core, text[-3000:])
    # migrate and migrate --status refuse too, and name it.
    st = run_cmd(d, "migrate", "--status")
    assert st.returncode != 0, st
    assert core in st.stdout + st.stderr, st
    changed = [ln for ln in st.stdout.splitlines() if core in ln]
    assert changed and changed[0].split()[0] == "changed", st.stdout
    mg = run_cmd(d, "migrate")
    assert mg.returncode != 0 and core in mg.stderr, mg


# -- the first admin key ------------------------------------------------------------

def test_admin_key_logged_once(make_daemon):
    d = make_daemon()
    first = key_lines(d)
    assert len(first) == 1, first
    key = first[0]["api_key"]
    assert key.startswith("sbk_"), first
    assert d.api("GET", "/v1/keys", key=key).status == 200
    assert d.stop() == 0
    d.close()
    mark = d.mark()
    d.start()
    assert d.get("/healthz").status == 200
    # Wait for start-up to finish (the API answers), then no key line.
    assert d.api("GET", "/v1/instances", key=key).status == 200
    later = key_lines(d, mark)
    assert not later, "a restart logged an API key again: %r" % later
    assert key not in "\n".join(d.raw_log().splitlines()[mark:])
    # Nor does a command.
    for args in (("migrate",), ("migrate", "--status")):
        out = run_cmd(d, *args)
        assert "api_key" not in out.stdout + out.stderr and key not in out.stdout + out.stderr
    rows = sql("SELECT role FROM api_keys", d.database).split()
    assert rows == ["admin"], rows


# -- two daemons, one database -----------------------------------------------------

def test_two_daemons_migrate_one_database_together(make_daemon):
    db, url = new_database()
    ds = []
    for i in range(2):
        d = make_daemon(start=False, env={"DATABASE_URL": url}, config=base_config(free_port()))
        d.database = db
        ds.append(d)
    for d in ds:
        d.start(wait=False)
    for d in ds:
        d.wait_healthy()
    rows = recorded(db)
    assert len(rows) == len(components()) and len(set(rows)) == len(rows), rows
    counts = sql("SELECT component, version, COUNT(*) FROM schema_migrations "
                 "GROUP BY component, version HAVING COUNT(*) > 1", db)
    assert counts.strip() == "", counts
    applied = [r.get("migration_component", "") + "/" + r.get("migration", "")
               for d in ds for r in d.find_logs(lambda r: r.get("message") == "migration applied")]
    assert sorted(applied) == sorted("%s/%s" % cf for cf in components()), \
        "each migration applied by exactly one daemon; got %r" % applied
    for d in ds:
        assert d.get("/readyz").status == 200


def sessions_like(pattern):
    out = sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
              "WHERE INFO LIKE '%s' AND INFO NOT LIKE '%%%%PROCESSLIST%%%%'" % pattern)
    return int(out.strip() or 0)


def test_two_daemons_create_one_admin_key(make_daemon):
    """Started together on a database without keys, only one daemon creates
    (and logs) the first admin key.

    The window between a daemon finding api_keys empty and its insert is
    well under a millisecond here, so the test widens it the way a slow
    database would: it holds a gap lock on the empty api_keys (SELECT ...
    FOR UPDATE in an open transaction; plain reads still go through), which
    makes every insert wait, starts three daemons, and commits once they all
    wait (on that insert, or on a lock of their own), or after 5 s."""
    db, url = new_database()
    ds = []
    for i in range(3):
        d = make_daemon(start=False, env={"DATABASE_URL": url}, config=base_config(free_port()))
        d.database = db
        ds.append(d)
    mg = run_cmd(ds[0], "migrate")  # the schema first, as a deploy step would
    assert mg.returncode == 0, mg
    holder = subprocess.Popen(["mariadb", "--no-defaults", "--socket=" + mariadb_socket(),
                               "-uroot", "-N", "-B", "-n", db], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        holder.stdin.write("SET SESSION innodb_lock_wait_timeout = 60;\nBEGIN;\n"
                           "SELECT COUNT(*) FROM api_keys FOR UPDATE;\n")
        holder.stdin.flush()
        # The client prints the count once the locking read is done (-n: unbuffered).
        ready, _, _ = select.select([holder.stdout], [], [], 10)
        line = holder.stdout.readline() if ready else ""
        assert line.strip() == "0", "the test's locking read gave %r" % line
        for d in ds:
            d.start(wait=False)
        try:
            wait_until(lambda: sessions_like("INSERT INTO api_keys%%") >= 1, START_DEADLINE,
                       what="a daemon inserting the first admin key")
            wait_until(lambda: sessions_like("%%api_keys%%") + sessions_like("%%GET_LOCK%%") >= 3,
                       5, what="all three daemons waiting")
        except AssertionError:
            pass  # a daemon that serialises differently; the result below decides
        holder.stdin.write("COMMIT;\n")
        holder.stdin.close()
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    for d in ds:
        d.wait_healthy()
    for d in ds:  # start-up (and so the key check) is over once the API answers
        wait_until(lambda: d.get("/readyz").status == 200, 10, what="/readyz 200")
    logged = [r for d in ds for r in key_lines(d)]
    keys = sql("SELECT id FROM api_keys", db).split()
    assert len(keys) == 1 and len(logged) == 1, \
        "expected one admin key; api_keys has %d rows (%s), %d key lines logged" \
        % (len(keys), keys, len(logged))


# -- embedded MariaDB ---------------------------------------------------------------

def mariadbd_pids(datadir):
    """Pids of processes whose command line names datadir."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.decode("utf-8", "replace") in ("--datadir=" + datadir, datadir) for a in argv) \
                and any(b"mariadbd" in a or b"mysqld" in a for a in argv[:1]):
            pids.append(int(p))
    return pids


@pytest.fixture
def short_state_dir():
    """A state dir with a short path: the embedded server's unix socket lives
    under it and sun_path holds 108 bytes."""
    path = tempfile.mkdtemp(prefix="sbst", dir="/tmp")
    yield path
    data = os.path.join(path, "mariadb", "data")
    for pid in mariadbd_pids(data):  # left behind by a failed test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while mariadbd_pids(data) and time.monotonic() < deadline:
        time.sleep(0.1)
    shutil.rmtree(path, ignore_errors=True)


def embedded_daemon(make_daemon, state):
    d = make_daemon(start=False, env={"DATABASE_URL": ""})
    assert d.database is None
    d.state = state
    d.start(wait=False)
    d.wait_healthy(timeout=EMBEDDED_START)
    return d


def test_embedded_mariadb(make_daemon, short_state_dir):
    d = embedded_daemon(make_daemon, short_state_dir)
    sock = os.path.join(short_state_dir, "mariadb", "mysqld.sock")
    datadir = os.path.join(short_state_dir, "mariadb", "data")
    assert os.path.exists(sock), "no socket at %s" % sock
    pids = mariadbd_pids(datadir)
    assert len(pids) == 1, "mariadbd processes for %s: %r" % (datadir, pids)
    # No TCP port: the server runs with --skip-networking.
    with open("/proc/%d/cmdline" % pids[0], "rb") as f:
        argv = f.read().split(b"\0")
    assert b"--skip-networking" in argv, argv
    # The API works on it.
    wait_until(lambda: d.get("/readyz").status == 200, 10, what="/readyz 200")
    assert d.get("/readyz").json()["database"] == "up"
    r = d.api("POST", "/v1/instances", {"provider": "echo", "name": "emb"})
    assert r.status == 201, r
    iid = r.json()["id"]
    assert d.api("GET", "/v1/instances/" + iid).status == 200
    # The data is in the embedded server's "switchboard" database.
    out = subprocess.run(["mariadb", "--no-defaults", "--socket=" + sock, "-uroot", "-N", "-B",
                          "switchboard", "-e", "SELECT id FROM instances"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.split() == [iid], out
    # migrate --status against the running daemon's embedded server.
    st = run_cmd(d, "migrate", "--status")
    assert st.returncode == 0, st
    assert len([ln for ln in st.stdout.splitlines() if ln.startswith("applied")]) == \
        len(components()), st.stdout
    # SIGTERM: the daemon exits 0 and takes its server with it.
    assert d.stop(timeout=30) == 0
    wait_until(lambda: not mariadbd_pids(datadir), 10,
               what="embedded mariadbd gone after SIGTERM")
    # A second start reuses the data (no new admin key) and finds the instance.
    key = d.admin_key
    mark = d.mark()
    d.close()
    d.start(wait=False)
    d.wait_healthy(timeout=EMBEDDED_START)
    assert d.api("GET", "/v1/instances/" + iid, key=key).status == 200
    assert not key_lines(d, mark)
    assert len(mariadbd_pids(datadir)) == 1
    assert d.stop(timeout=30) == 0
    wait_until(lambda: not mariadbd_pids(datadir), 10,
               what="embedded mariadbd gone after the second SIGTERM")


def test_embedded_commands_without_daemon(make_daemon, short_state_dir):
    """`migrate` with no daemon running starts the embedded server itself
    and stops it again."""
    d = make_daemon(start=False, env={"DATABASE_URL": ""})
    d.state = short_state_dir
    datadir = os.path.join(short_state_dir, "mariadb", "data")
    r = run_cmd(d, "migrate", timeout=EMBEDDED_START + 30)
    assert r.returncode == 0, r
    assert r.stdout.strip().startswith("%d migrations applied" % len(components())), r
    wait_until(lambda: not mariadbd_pids(datadir), 10, what="command's mariadbd gone")
    st = run_cmd(d, "migrate", "--status", timeout=EMBEDDED_START + 30)
    assert st.returncode == 0, st
    assert "pending" not in st.stdout, st.stdout
    wait_until(lambda: not mariadbd_pids(datadir), 10, what="command's mariadbd gone")
