"""Secrets are write-only and sealed at rest: never in an API answer, a log
line, /metrics or the database in plaintext; `rotate-key` re-seals them under
a new key while the daemon runs; a readable master key file is refused."""

import base64
import os
import re
import secrets as pysecrets
import stat
import subprocess

import pytest

from conftest import base_config, free_port, mariadb_socket, sql, wait_until


def distinctive():
    """A random token nobody else would write (>= 8 chars for echo's schema)."""
    return "Sx" + pysecrets.token_hex(12) + "Qz"


def key_file(d):
    return os.path.join(d.etc, "master.key")


def key_lines(path):
    with open(path) as f:
        return [ln.split() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


def dump_db(database):
    out = subprocess.run(["mariadb-dump", "--no-defaults", "--socket=" + mariadb_socket(),
                          "-uroot", "--skip-extended-insert", "--hex-blob", database],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "CREATE TABLE `instances`" in out.stdout, out.stdout[:2000]
    return out.stdout


def sealed_column(d, iid):
    return sql("SELECT secrets FROM instances WHERE id = '%s'" % iid, d.database).strip()


def key_id_of(sealed):
    m = re.match(r"^sb1:([^:]+):", sealed)
    assert m, "sealed secrets %r not of the form sb1:<key id>:..." % sealed[:40]
    return m.group(1)


def variants(value):
    """The value and simple encodings of it that would still be a leak."""
    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), raw.hex(), value[::-1]]


def assert_absent(value, text, where):
    for v in variants(value):
        assert v not in text, "secret (%s) found in %s" % ("form %r" % v if v != value
                                                           else "plain", where)


def hook(d, iid, token=None):
    headers = {"X-Echo-Token": token} if token else None
    return d.post("/webhook/echo/%s" % iid, {"text": "hi", "from": "me"}, headers=headers)


def debug_daemon(make_daemon, **kw):
    cfg = base_config(free_port(), log_level="debug")
    return make_daemon(config=cfg, **kw)


def test_secret_never_leaves(make_daemon):
    d = debug_daemon(make_daemon)
    s1, s2, s3 = distinctive(), distinctive(), distinctive()
    answers = []

    def call(method, path, body=None):
        r = d.api(method, path, body)
        answers.append((method, path, r))
        return r

    r = call("POST", "/v1/instances", {"provider": "echo", "name": "leaky",
                                       "settings": {"prefix": "L: "}, "secrets": {"token": s1}})
    assert r.status == 201, r
    iid = r.json()["id"]
    assert r.json()["secrets"] == ["token"], r
    wait_until(lambda: hook(d, iid, s1).status == 200, 5, what="webhook with token")
    assert hook(d, iid).status == 401
    call("GET", "/v1/instances/" + iid)
    call("GET", "/v1/instances")
    call("GET", "/v1/instances?provider=echo&limit=1")
    r = call("PATCH", "/v1/instances/" + iid, {"secrets": {"token": s2}})
    assert r.status == 200, r
    wait_until(lambda: hook(d, iid, s2).status == 200, 5, what="webhook with the new token")
    call("PATCH", "/v1/instances/" + iid, {"settings": {"prefix": "M: "}})
    # Rejected secrets are not echoed back either.
    bad = call("PATCH", "/v1/instances/" + iid, {"secrets": {"token": s3[:7]}})
    assert bad.status == 422, bad
    bad = call("POST", "/v1/instances", {"provider": "echo", "name": "leaky2",
                                         "settings": {"token": s3}})
    assert bad.status == 400, bad
    bad = call("POST", "/v1/instances", {"provider": "echo", "name": "leaky3",
                                         "secrets": {"token": s3, "prefix": s3}})
    assert bad.status == 400, bad
    call("POST", "/v1/instances/%s/restart" % iid)
    call("POST", "/v1/instances/%s/stop" % iid)
    call("POST", "/v1/instances/%s/start" % iid)
    call("GET", "/v1/providers")
    wait_until(lambda: hook(d, iid, s2).status == 200, 5, what="webhook after restart")
    for method, path, r in answers:
        assert r.status < 500, (method, path, r)
        for s in (s1, s2, s3, s3[:7]):
            assert_absent(s, r.text, "the answer to %s %s" % (method, path))
            assert_absent(s, str(r.headers), "the headers of %s %s" % (method, path))
    metrics = d.get("/metrics").text
    for s in (s1, s2, s3):
        assert_absent(s, metrics, "/metrics")
    dump = dump_db(d.database)
    for s in (s1, s2, s3):
        assert_absent(s, dump, "a dump of the database")
    col = sealed_column(d, iid)
    assert col.startswith("sb1:"), col[:40]
    # Stop the daemon so every log line is written, then search the log.
    assert d.stop() == 0
    log = d.raw_log()
    assert "message" in log
    for s in (s1, s2, s3, s3[:7]):
        assert_absent(s, log, "the daemon log")


def test_sealed_column_shape(daemon):
    s = distinctive()
    r = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "sealed",
                                             "secrets": {"token": s}})
    assert r.status == 201, r
    iid = r.json()["id"]
    col = sealed_column(daemon, iid)
    kid = key_id_of(col)
    assert [ln[0] for ln in key_lines(key_file(daemon))] == [kid]
    assert len(col) > len(s), col
    # Without secrets, nothing is stored.
    r = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "nosecret"})
    assert sealed_column(daemon, r.json()["id"]) in ("NULL", ""), sealed_column(daemon,
                                                                                r.json()["id"])
    # Sealing is randomised: the same secret sealed twice differs.
    r2 = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "sealed2",
                                              "secrets": {"token": s}})
    assert sealed_column(daemon, r2.json()["id"]) != col
    # The master key file is private.
    mode = stat.S_IMODE(os.stat(key_file(daemon)).st_mode)
    assert mode & 0o077 == 0, "master key file mode %o" % mode


def test_moved_ciphertext_does_not_open(daemon):
    """The instance id is bound into the ciphertext: a sealed value copied to
    another row is not accepted as that row's secrets."""
    s = distinctive()
    a = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "a",
                                             "secrets": {"token": s}}).json()["id"]
    b = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "b"}).json()["id"]
    sql("UPDATE instances SET secrets = (SELECT secrets FROM (SELECT secrets FROM instances "
        "WHERE id = '%s') t) WHERE id = '%s'" % (a, b), daemon.database)
    r = daemon.api("GET", "/v1/instances/" + b)
    assert r.status in (200, 500), r
    if r.status == 200:
        assert r.json()["secrets"] == [], "a moved ciphertext opened under another id: %r" % r
    assert_absent(s, r.text, "GET of the row with a moved ciphertext")


def test_rotate_key_while_running(make_daemon):
    d = make_daemon()
    toks = [distinctive() for _ in range(3)]
    ids = []
    for i, t in enumerate(toks):
        r = d.api("POST", "/v1/instances", {"provider": "echo", "name": "rot%d" % i,
                                            "secrets": {"token": t}})
        assert r.status == 201, r
        ids.append(r.json()["id"])
    plain = d.api("POST", "/v1/instances", {"provider": "echo", "name": "rot-plain"}).json()["id"]
    before = {i: sealed_column(d, i) for i in ids}
    old_ids = {key_id_of(v) for v in before.values()}
    assert len(old_ids) == 1, before
    old_kid = old_ids.pop()
    assert [ln[0] for ln in key_lines(key_file(d))] == [old_kid]

    out = subprocess.run(d.command(["rotate-key"]), capture_output=True, text=True, timeout=120,
                         env=d.child_env(), stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out
    for t in toks:
        assert_absent(t, out.stdout + out.stderr, "rotate-key's output")

    lines = key_lines(key_file(d))
    assert len(lines) == 1, "key file has %d keys after rotation" % len(lines)
    new_kid = lines[0][0]
    assert new_kid != old_kid, lines
    mode = stat.S_IMODE(os.stat(key_file(d)).st_mode)
    assert mode & 0o077 == 0, "master key file mode %o after rotation" % mode
    after = {i: sealed_column(d, i) for i in ids}
    for i in ids:
        assert after[i] != before[i], "row %s not re-sealed" % i
        assert key_id_of(after[i]) == new_kid, (i, after[i][:40], new_kid)
    assert sealed_column(d, plain) in ("NULL", "")
    dump = dump_db(d.database)
    for t in toks:
        assert_absent(t, dump, "the database after rotation")

    # The running daemon still serves them: webhooks with the token, a
    # restart through the API, and reading the secrets (names) back.
    for i, t in zip(ids, toks):
        assert hook(d, i, t).status == 200
        assert hook(d, i).status == 401
    r = d.api("POST", "/v1/instances/%s/restart" % ids[0])
    assert r.status == 200 and r.json()["status"]["running"] is True, r
    assert hook(d, ids[0], toks[0]).status == 200
    for i in ids:
        g = d.api("GET", "/v1/instances/" + i)
        assert g.status == 200 and g.json()["secrets"] == ["token"], \
            "running daemon cannot open %s after rotation: %r" % (i, g)
    # A patch opens, merges and re-seals: still the token, now under the new key.
    r = d.api("PATCH", "/v1/instances/" + ids[1], {"settings": {"prefix": "R: "}})
    assert r.status == 200 and r.json()["secrets"] == ["token"], r
    assert key_id_of(sealed_column(d, ids[1])) == new_kid
    wait_until(lambda: hook(d, ids[1], toks[1]).status == 200, 5, what="patched instance serves")
    assert hook(d, ids[1]).status == 401
    # What the daemon seals after the rotation uses the new key.
    t4 = distinctive()
    r = d.api("POST", "/v1/instances", {"provider": "echo", "name": "rot-new",
                                        "secrets": {"token": t4}})
    assert r.status == 201, r
    new_row = r.json()["id"]
    assert key_id_of(sealed_column(d, new_row)) == new_kid, \
        "a row created after the rotation is sealed under %s (key file holds only %s)" % (
            key_id_of(sealed_column(d, new_row)), new_kid)
    # And after a restart (only the new key is left) everything still opens.
    key = d.admin_key
    assert d.stop() == 0
    d.close()
    d.start()
    for i, t in list(zip(ids, toks)) + [(new_row, t4)]:
        g = d.api("GET", "/v1/instances/" + i, key=key)
        assert g.status == 200 and g.json()["secrets"] == ["token"], (i, g)
        wait_until(lambda: hook(d, i, t).status == 200, 5, what="%s serves after restart" % i)
        assert hook(d, i).status == 401
    assert not d.find_logs(lambda rec: "cannot open" in str(rec.get("message", "")))


def test_rotate_key_twice_and_idle(make_daemon):
    """Rotating with no daemon running, twice, leaves one key that opens everything."""
    d = make_daemon()
    t = distinctive()
    iid = d.api("POST", "/v1/instances", {"provider": "echo", "name": "r2",
                                          "secrets": {"token": t}}).json()["id"]
    key = d.admin_key
    assert d.stop() == 0
    d.close()
    kids = set()
    for _ in range(2):
        out = subprocess.run(d.command(["rotate-key"]), capture_output=True, text=True,
                             timeout=120, env=d.child_env(), stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out
        lines = key_lines(key_file(d))
        assert len(lines) == 1, lines
        kids.add(lines[0][0])
        assert key_id_of(sealed_column(d, iid)) == lines[0][0]
    assert len(kids) == 2, kids
    d.start()
    g = d.api("GET", "/v1/instances/" + iid, key=key)
    assert g.status == 200 and g.json()["secrets"] == ["token"], g
    assert hook(d, iid, t).status == 200
    assert hook(d, iid).status == 401


def test_world_readable_master_key_refused(make_daemon):
    d = make_daemon()
    path = key_file(d)
    assert os.path.exists(path)
    assert d.stop() == 0
    d.close()
    os.chmod(path, 0o644)
    mark = d.mark()
    rc = d.expect_start_failure()
    assert rc == 1, "daemon exit %r with a 0644 master key file (expected 1)" % rc
    text = "\n".join(str(r) for r in d.logs()[mark:])
    assert path in text, "the refusal does not name %s: %s" % (path, text[-2000:])
    # Fixing the mode lets it start again.
    os.chmod(path, 0o600)
    d.expect_exit = False
    d.close()
    d.start()
    assert d.get("/healthz").status == 200


def test_master_key_from_environment(make_daemon):
    """SWITCHBOARD_MASTER_KEY="<id>:<base64>" replaces the file."""
    raw = base64.b64encode(os.urandom(32)).decode()
    d = make_daemon(env={"SWITCHBOARD_MASTER_KEY": "envk1:" + raw}, start=False)
    # make_daemon made a database only when DATABASE_URL was not given.
    assert d.database is not None
    d.start()
    t = distinctive()
    r = d.api("POST", "/v1/instances", {"provider": "echo", "name": "envkey",
                                        "secrets": {"token": t}})
    assert r.status == 201, r
    assert key_id_of(sealed_column(d, r.json()["id"])) == "envk1"
    assert not os.path.exists(key_file(d)), "a key file was made although the env gives the key"
    assert raw not in d.raw_log()
    # rotate-key refuses: the key lives where the environment comes from.
    out = subprocess.run(d.command(["rotate-key"]), capture_output=True, text=True, timeout=60,
                         env=d.child_env(), stdin=subprocess.DEVNULL)
    assert out.returncode != 0, out
    assert raw not in out.stdout + out.stderr


@pytest.mark.parametrize("where", ["config_dir", "elsewhere"])
def test_rotate_key_under_writes(make_daemon, tmp_path, where):
    """Instances created and patched while rotate-key runs all end up under
    the new key: none is left sealed with the dropped one. Also with the key
    file outside the config directory (master_key_file)."""
    import threading
    cfg = base_config(free_port())
    kf = None
    if where == "elsewhere":
        os.makedirs(str(tmp_path / "keys"), mode=0o700)
        kf = str(tmp_path / "keys" / "master.key")
        cfg["master_key_file"] = kf
    d = make_daemon(config=cfg)
    if kf:
        assert os.path.exists(kf), "master_key_file %s not created" % kf
    key_path = kf or key_file(d)
    key = d.admin_key
    stop = threading.Event()
    made = []
    errors = []

    def writer():
        i = 0
        while not stop.is_set():
            t = distinctive()
            try:
                r = d.api("POST", "/v1/instances", {"provider": "echo", "name": "w%d" % i,
                                                    "secrets": {"token": t}}, key=key)
                if r.status != 201:
                    errors.append(r)
                else:
                    made.append((r.json()["id"], t))
                    if made and i % 3 == 0:
                        old_id = made[len(made) // 2][0]
                        t2 = distinctive()
                        p = d.api("PATCH", "/v1/instances/" + old_id,
                                  {"secrets": {"token": t2}}, key=key)
                        if p.status == 200:
                            made[len(made) // 2] = (old_id, t2)
                        elif p.status != 409:
                            errors.append(p)
            except OSError as exc:
                errors.append(exc)
            i += 1

    th = threading.Thread(target=writer)
    th.start()
    try:
        wait_until(lambda: len(made) >= 5, 10, what="a few instances written")
        out = subprocess.run(d.command(["rotate-key"]), capture_output=True, text=True,
                             timeout=120, env=d.child_env(), stdin=subprocess.DEVNULL)
        n_at_rotation_end = len(made)
        wait_until(lambda: len(made) >= n_at_rotation_end + 5, 10,
                   what="writes after the rotation")
    finally:
        stop.set()
        th.join(timeout=30)
    assert out.returncode == 0, out
    lines = key_lines(key_path)
    assert len(lines) == 1, lines
    new_kid = lines[0][0]
    rows = sql("SELECT id, secrets FROM instances", d.database).splitlines()
    stale = [ln.split("\t")[0] for ln in rows if key_id_of(ln.split("\t")[1]) != new_kid]
    problems = []
    if errors:
        problems.append("%d API writes failed during/after the rotation, e.g. %r"
                        % (len(errors), errors[:2]))
    if stale:
        problems.append("%d of %d rows sealed under a key the file no longer has (%s)"
                        % (len(stale), len(rows), stale[:3]))
    assert not problems, "; ".join(problems)
    assert d.stop() == 0
    d.close()
    d.start()
    for iid, t in made:
        g = d.api("GET", "/v1/instances/" + iid, key=key)
        assert g.status == 200 and g.json()["secrets"] == ["token"], (iid, g)
    for iid, t in made[:3] + made[-3:]:
        wait_until(lambda: hook(d, iid, t).status == 200, 5, what="%s serves" % iid)
