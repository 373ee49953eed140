"""/v1/instances: CRUD with good and bad input, start/stop/restart, config
instances, and persistence across a daemon restart (same database)."""

import re
import shutil
import urllib.parse

from conftest import base_config, free_port, sql, wait_until

INSTANCE_KEYS = {"id", "provider", "name", "settings", "secrets", "enabled", "created_at",
                 "updated_at", "status"}
TOKEN = "tok-3f9a1c77"


def check_instance_shape(doc):
    """The Instance schema of the API document, by hand."""
    assert isinstance(doc, dict), doc
    missing = INSTANCE_KEYS - set(doc)
    assert not missing, "instance lacks %s: %r" % (sorted(missing), doc)
    assert re.match(r"^in_[0-9a-zA-Z]+$", doc["id"]), doc["id"]
    for k in ("provider", "name", "created_at", "updated_at"):
        assert isinstance(doc[k], str) and doc[k], (k, doc)
    assert isinstance(doc["settings"], dict), doc
    assert isinstance(doc["secrets"], list) and all(isinstance(s, str) for s in doc["secrets"]), doc
    assert isinstance(doc["enabled"], bool), doc
    assert isinstance(doc["status"], dict) and isinstance(doc["status"].get("running"), bool), doc


def assert_error(resp, status, field=None, code=None):
    assert resp.status == status, resp
    assert "application/json" in resp.headers.get("content-type", ""), resp.headers
    doc = resp.json()
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err.get("code"), str) and err["code"], doc
    assert isinstance(err.get("message"), str) and err["message"], doc
    assert isinstance(err.get("details"), dict), doc
    if field is not None:
        assert err["details"].get("field") == field, \
            "details.field %r, expected %r: %r" % (err["details"].get("field"), field, doc)
    if code is not None:
        assert err["code"] == code, doc
    return err


def create(d, name, settings=None, secrets=None, expect=201, **extra):
    body = {"provider": "echo", "name": name}
    if settings is not None:
        body["settings"] = settings
    if secrets is not None:
        body["secrets"] = secrets
    body.update(extra)
    r = d.api("POST", "/v1/instances", body)
    assert r.status == expect, r
    return r.json() if r.body else None


def hook(d, inst_id, token=None, text="hi"):
    headers = {"X-Echo-Token": token} if token is not None else None
    return d.post("/webhook/echo/%s" % inst_id, {"text": text, "from": "t"}, headers=headers)


def wait_running(d, inst_id, running=True, timeout=5.0, key=None):
    def ok():
        r = d.api("GET", "/v1/instances/" + inst_id, key=key)
        return r.status == 200 and r.json()["status"].get("running") is running and r.json()
    return wait_until(ok, timeout, what="instance %s running=%s" % (inst_id, running))


# -- CRUD ----------------------------------------------------------------------

def test_create_get_and_webhook_with_token(daemon):
    doc = create(daemon, "alpha", settings={"prefix": "A: "}, secrets={"token": TOKEN})
    check_instance_shape(doc)
    assert doc["provider"] == "echo" and doc["name"] == "alpha", doc
    assert doc["settings"] == {"prefix": "A: "}, doc
    assert doc["secrets"] == ["token"], doc
    assert doc["enabled"] is True, doc
    assert TOKEN not in daemon.api("GET", "/v1/instances/" + doc["id"]).text
    got = daemon.api("GET", "/v1/instances/" + doc["id"])
    assert got.status == 200, got
    g = got.json()
    check_instance_shape(g)
    for k in ("id", "provider", "name", "settings", "secrets", "enabled", "created_at"):
        assert g[k] == doc[k], (k, g, doc)
    wait_running(daemon, doc["id"])
    # Webhooks reach the new instance, and the secret token is enforced.
    r = hook(daemon, doc["id"], TOKEN)
    assert r.status == 200, r
    assert r.json()["instance"] == doc["id"], r
    assert hook(daemon, doc["id"]).status == 401
    assert hook(daemon, doc["id"], "wrong-token-x").status == 401
    # The config instance is untouched.
    assert daemon.webhook().status == 200


def test_create_without_settings_defaults(daemon):
    doc = create(daemon, "bare")
    check_instance_shape(doc)
    assert doc["settings"] == {} and doc["secrets"] == [], doc
    wait_running(daemon, doc["id"])
    assert hook(daemon, doc["id"]).status == 200


def test_create_disabled_does_not_run(daemon):
    doc = create(daemon, "off", enabled=False)
    assert doc["enabled"] is False, doc
    assert doc["status"]["running"] is False, doc
    assert hook(daemon, doc["id"]).status == 503


def test_list_pagination_and_provider_filter(daemon):
    ids = set()
    for i in range(5):
        ids.add(create(daemon, "page-%d" % i)["id"])
    seen = []
    cursor = None
    pages = 0
    while True:
        q = {"limit": "2"}
        if cursor:
            q["cursor"] = cursor
        r = daemon.api("GET", "/v1/instances?" + urllib.parse.urlencode(q))
        assert r.status == 200, r
        page = r.json()
        assert set(page) >= {"instances", "next_cursor"}, page
        assert len(page["instances"]) <= 2, page
        for inst in page["instances"]:
            check_instance_shape(inst)
        seen += [i["id"] for i in page["instances"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and pages < 10, page
    assert sorted(seen) == sorted(ids), "pages gave %r, created %r" % (seen, ids)
    assert len(seen) == len(set(seen)), "an instance appeared twice: %r" % seen
    assert pages == 3, pages
    # Default page holds them all; config instances are not API-managed.
    r = daemon.api("GET", "/v1/instances")
    assert r.status == 200, r
    assert {i["id"] for i in r.json()["instances"]} == ids, r.json()
    assert r.json()["next_cursor"] is None, r.json()
    # Filter by provider: another provider's row (written straight into the
    # table; only echo is loaded here) shows up only under its own name.
    sql("INSERT INTO instances (id, provider, name, settings) "
        "VALUES ('in_zzother', 'slack', 'other', '{}')", daemon.database)
    echo = daemon.api("GET", "/v1/instances?provider=echo").json()["instances"]
    assert {i["id"] for i in echo} == ids, echo
    slack = daemon.api("GET", "/v1/instances?provider=slack").json()["instances"]
    assert [i["id"] for i in slack] == ["in_zzother"], slack
    none = daemon.api("GET", "/v1/instances?provider=telegram")
    assert none.status == 200 and none.json()["instances"] == [], none
    every = daemon.api("GET", "/v1/instances?limit=500").json()["instances"]
    assert {i["id"] for i in every} == ids | {"in_zzother"}, every


def test_list_bad_limit(daemon):
    for bad in ("0", "501", "x", "-1"):
        assert_error(daemon.api("GET", "/v1/instances?limit=" + bad), 400, field="limit")


def test_patch_settings_and_secrets(daemon):
    doc = create(daemon, "patchme", settings={"prefix": "old: "}, secrets={"token": TOKEN})
    iid = doc["id"]
    wait_running(daemon, iid)
    r = daemon.api("PATCH", "/v1/instances/" + iid, {"settings": {"prefix": "new: "}})
    assert r.status == 200, r
    p = r.json()
    check_instance_shape(p)
    assert p["settings"] == {"prefix": "new: "}, p
    assert p["secrets"] == ["token"], p

    def prefix_applied():
        g = daemon.api("GET", "/v1/instances/" + iid).json()
        return g["status"].get("provider_status", {}).get("prefix") == "new: " and g
    wait_until(prefix_applied, 5, what="provider_status.prefix == 'new: '")
    r = hook(daemon, iid, TOKEN, text="x")
    assert r.status == 200, r
    # The token is still required after a settings-only patch.
    assert hook(daemon, iid).status == 401
    # A new token replaces the old one.
    r = daemon.api("PATCH", "/v1/instances/" + iid, {"secrets": {"token": "second-token-42"}})
    assert r.status == 200, r
    wait_until(lambda: hook(daemon, iid, "second-token-42").status == 200, 5,
               what="new token accepted")
    assert hook(daemon, iid, TOKEN).status == 401
    # null removes the secret: webhooks need no token any more.
    r = daemon.api("PATCH", "/v1/instances/" + iid, {"secrets": {"token": None}})
    assert r.status == 200, r
    assert r.json()["secrets"] == [], r
    wait_until(lambda: hook(daemon, iid).status == 200, 5, what="webhook without token")
    assert daemon.api("GET", "/v1/instances/" + iid).json()["secrets"] == []
    # Rename, and null removes a setting.
    r = daemon.api("PATCH", "/v1/instances/" + iid,
                   {"name": "renamed", "settings": {"prefix": None}})
    assert r.status == 200, r
    assert r.json()["name"] == "renamed" and r.json()["settings"] == {}, r
    # Bad patches.
    assert_error(daemon.api("PATCH", "/v1/instances/" + iid, {"nope": 1}), 400, field="nope")
    assert_error(daemon.api("PATCH", "/v1/instances/" + iid, {"settings": {"prefix": 5}}), 422,
                 field="settings.prefix")
    assert_error(daemon.api("PATCH", "/v1/instances/" + iid, {"secrets": {"token": "short"}}),
                 422, field="secrets.token")
    assert_error(daemon.api("PATCH", "/v1/instances/" + iid, {"settings": {"token": TOKEN}}),
                 400, field="settings.token")
    assert_error(daemon.api("PATCH", "/v1/instances/in_nosuch", {"name": "x"}), 404)


def test_delete(daemon):
    doc = create(daemon, "doomed")
    iid = doc["id"]
    wait_running(daemon, iid)
    assert hook(daemon, iid).status == 200
    r = daemon.api("DELETE", "/v1/instances/" + iid)
    assert r.status == 204, r
    assert r.body == b"", r
    assert_error(daemon.api("GET", "/v1/instances/" + iid), 404)
    assert hook(daemon, iid).status == 404
    assert_error(daemon.api("DELETE", "/v1/instances/" + iid), 404)
    assert iid not in [i["id"] for i in daemon.api("GET", "/v1/instances").json()["instances"]]
    # The name is free again.
    create(daemon, "doomed")


# -- bad input -------------------------------------------------------------------

def test_bad_create_bodies(daemon):
    post = lambda body: daemon.api("POST", "/v1/instances", body)  # noqa: E731
    assert_error(post({"provider": "echo", "name": "x", "colour": "red"}), 400, field="colour")
    assert_error(post({"name": "x"}), 400, field="provider")
    assert_error(post({"provider": "echo"}), 400, field="name")
    assert_error(post({"provider": "echo", "name": ""}), 400, field="name")
    assert_error(post({"provider": "echo", "name": "x", "settings": "prefix"}), 400,
                 field="settings")
    assert_error(post({"provider": "echo", "name": "x", "settings": [1]}), 400, field="settings")
    assert_error(post({"provider": "echo", "name": "x", "secrets": 7}), 400, field="secrets")
    assert_error(post({"provider": "echo", "name": "x", "settings": {"prefix": 3}}), 422,
                 field="settings.prefix")
    assert_error(post({"provider": "echo", "name": "x", "settings": {"bogus": "1"}}), 422)
    assert_error(post({"provider": "echo", "name": "x", "settings": {"token": TOKEN}}), 400,
                 field="settings.token")
    assert_error(post({"provider": "echo", "name": "x", "secrets": {"prefix": "a"}}), 400,
                 field="secrets.prefix")
    assert_error(post({"provider": "echo", "name": "x", "secrets": {"token": "short"}}), 422,
                 field="secrets.token")
    assert_error(post({"provider": "nosuch", "name": "x"}), 422, field="provider")
    assert_error(post({"provider": "echo", "name": "x", "enabled": "yes"}), 400, field="enabled")
    assert_error(post([1, 2]), 400)
    bad_json = daemon.request("POST", "/v1/instances", body=b'{"provider": "echo", "name": ',
                              headers=dict(daemon.auth(), **{"Content-Type": "application/json"}))
    assert_error(bad_json, 400)
    # None of those created anything.
    assert daemon.api("GET", "/v1/instances").json()["instances"] == []


def test_duplicate_name_conflicts(daemon):
    create(daemon, "twin")
    r = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "twin"})
    assert_error(r, 409)
    assert len(daemon.api("GET", "/v1/instances").json()["instances"]) == 1
    # Renaming onto a taken name conflicts too.
    other = create(daemon, "single")
    assert_error(daemon.api("PATCH", "/v1/instances/" + other["id"], {"name": "twin"}), 409)


def test_unknown_methods_and_paths(daemon):
    assert_error(daemon.api("PUT", "/v1/instances"), 405)
    assert_error(daemon.api("GET", "/v1/instances/in_nosuch"), 404)
    assert_error(daemon.api("POST", "/v1/instances/in_nosuch/start"), 404)
    assert_error(daemon.api("POST", "/v1/instances/in_nosuch/stop"), 404)


# -- start / stop / restart ----------------------------------------------------

def test_stop_start_restart_persisted(make_daemon):
    d = make_daemon()
    doc = create(d, "ctl", secrets={"token": TOKEN})
    iid = doc["id"]
    wait_running(d, iid)
    r = d.api("POST", "/v1/instances/%s/stop" % iid)
    assert r.status == 200, r
    assert r.json()["id"] == iid and r.json()["status"]["running"] is False, r
    assert hook(d, iid, TOKEN).status == 503
    g = d.api("GET", "/v1/instances/" + iid).json()
    assert g["status"]["running"] is False and g["enabled"] is False, g
    # Persisted: a restarted daemon on the same database keeps it stopped.
    key = d.admin_key
    assert d.stop() == 0
    d.close()
    d.start()
    g = d.api("GET", "/v1/instances/" + iid, key=key)
    assert g.status == 200, g
    assert g.json()["status"]["running"] is False and g.json()["enabled"] is False, g
    assert hook(d, iid, TOKEN).status == 503
    r = d.api("POST", "/v1/instances/%s/start" % iid, key=key)
    assert r.status == 200, r
    assert r.json()["status"]["running"] is True, r
    assert hook(d, iid, TOKEN).status == 200
    assert d.api("GET", "/v1/instances/" + iid, key=key).json()["enabled"] is True
    # Restart keeps it running and serving.
    r = d.api("POST", "/v1/instances/%s/restart" % iid, key=key)
    assert r.status == 200, r
    assert r.json()["status"]["running"] is True, r
    assert hook(d, iid, TOKEN).status == 200
    # Start of a running instance is harmless.
    assert d.api("POST", "/v1/instances/%s/start" % iid, key=key).status == 200
    assert hook(d, iid, TOKEN).status == 200
    assert_error(d.api("POST", "/v1/instances/%s/frobnicate" % iid, key=key), 404)
    assert_error(d.api("GET", "/v1/instances/%s/stop" % iid, key=key), 405)


# -- config instances --------------------------------------------------------------

def test_config_instance_readable_not_writable(daemon):
    r = daemon.api("GET", "/v1/instances/echo-demo")
    assert r.status == 200, r
    doc = r.json()
    assert doc["id"] == "echo-demo" and doc["provider"] == "echo", doc
    assert doc["config_managed"] is True, doc
    assert doc["status"]["running"] is True, doc
    assert_error(daemon.api("PATCH", "/v1/instances/echo-demo", {"name": "x"}), 409)
    assert_error(daemon.api("PATCH", "/v1/instances/echo-demo",
                            {"settings": {"prefix": "x"}}), 409)
    assert_error(daemon.api("DELETE", "/v1/instances/echo-demo"), 409)
    assert daemon.webhook().status == 200
    # Stop and start work in memory.
    r = daemon.api("POST", "/v1/instances/echo-demo/stop")
    assert r.status == 200 and r.json()["status"]["running"] is False, r
    assert daemon.webhook().status == 503
    r = daemon.api("POST", "/v1/instances/echo-demo/start")
    assert r.status == 200 and r.json()["status"]["running"] is True, r
    assert daemon.webhook().status == 200


def test_config_instance_name_not_shadowed(daemon):
    """An API instance may share a config instance's name: it gets its own id."""
    doc = create(daemon, "echo-demo")
    assert doc["id"] != "echo-demo", doc
    wait_running(daemon, doc["id"])
    assert daemon.webhook().status == 200
    assert hook(daemon, doc["id"]).status == 200


# -- persistence -----------------------------------------------------------------

def test_instances_survive_restart(make_daemon, tmp_path):
    d = make_daemon()
    key = d.admin_key
    a = create(d, "keep-a", settings={"prefix": "K: "}, secrets={"token": TOKEN})
    b = create(d, "keep-b")
    c = create(d, "keep-off", enabled=False)
    assert d.stop() == 0
    d.close()
    # A second daemon (fresh tree, fresh port and state) on the same database
    # and master key file.
    cfg = base_config(free_port())
    d2 = make_daemon(config=cfg, start=False, env={"DATABASE_URL": d.env["DATABASE_URL"]})
    d2.database = d.database
    shutil.copy2(d.config_path.replace("switchboard.json", "master.key"),
                 d2.config_path.replace("switchboard.json", "master.key"))
    d2.start()
    for inst in (a, b):
        g = wait_running(d2, inst["id"], key=key)
        assert g["name"] == inst["name"] and g["settings"] == inst["settings"], g
        assert g["secrets"] == inst["secrets"], g
    assert hook(d2, a["id"], TOKEN).status == 200
    assert hook(d2, a["id"]).status == 401
    assert hook(d2, b["id"]).status == 200
    assert hook(d2, c["id"]).status == 503
    g = d2.api("GET", "/v1/instances/" + a["id"], key=key).json()
    assert g["status"]["provider_status"]["prefix"] == "K: ", g
    listed = {i["id"] for i in d2.api("GET", "/v1/instances", key=key).json()["instances"]}
    assert listed == {a["id"], b["id"], c["id"]}, listed


def test_restart_of_stopped_instance_is_consistent(daemon):
    """restart on a stopped (disabled) instance must not leave it running in
    memory while the stored row says disabled: what GET reports as enabled
    and as running agree, and survive a daemon restart the same way."""
    iid = create(daemon, "stopped-then-restarted")["id"]
    wait_running(daemon, iid)
    assert daemon.api("POST", "/v1/instances/%s/stop" % iid).status == 200
    r = daemon.api("POST", "/v1/instances/%s/restart" % iid)
    assert r.status in (200, 409), r
    g = daemon.api("GET", "/v1/instances/" + iid).json()
    assert g["enabled"] == g["status"]["running"], \
        "after stop + restart: enabled=%r but running=%r" % (g["enabled"], g["status"]["running"])
    webhook_ok = hook(daemon, iid).status == 200
    assert webhook_ok == g["enabled"], (webhook_ok, g)
