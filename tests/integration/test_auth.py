"""API keys: missing, malformed, unknown and revoked keys; key management;
instance-scoped keys; keys stored hashed."""

import hashlib
import re
import subprocess

from conftest import mariadb_socket

KEY_RE = re.compile(r"^sbk_[a-z0-9]{12}_[A-Za-z0-9_-]{43}$")


def assert_error(resp, status, code=None):
    assert resp.status == status, resp
    assert "application/json" in resp.headers.get("content-type", ""), resp.headers
    doc = resp.json()
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err.get("code"), str) and err["code"], doc
    assert isinstance(err.get("message"), str) and err["message"], doc
    if code:
        assert err["code"] == code, doc
    return err


def assert_401(resp):
    assert_error(resp, 401)
    www = resp.headers.get("www-authenticate", "")
    assert www.lower().startswith("bearer"), "WWW-Authenticate %r" % www


def make_key(d, label, role="admin", instance_ids=None):
    body = {"label": label, "role": role}
    if instance_ids is not None:
        body["instance_ids"] = instance_ids
    r = d.api("POST", "/v1/keys", body)
    assert r.status == 201, r
    doc = r.json()
    assert KEY_RE.match(doc["key"]), doc
    assert doc["label"] == label and doc["role"] == role, doc
    assert doc["key"].startswith("sbk_" + doc["prefix"]) or doc["prefix"] in doc["key"], doc
    assert "hash" not in doc, doc
    return doc


def new_instance(d, name):
    r = d.api("POST", "/v1/instances", {"provider": "echo", "name": name})
    assert r.status == 201, r
    return r.json()["id"]


def dump_table(database, table):
    out = subprocess.run(["mariadb-dump", "--no-defaults", "--socket=" + mariadb_socket(),
                          "-uroot", "--skip-extended-insert", database, table],
                         check=True, capture_output=True, text=True)
    return out.stdout


ROUTES = [("GET", "/v1/providers"), ("GET", "/v1/instances"), ("POST", "/v1/instances"),
          ("GET", "/v1/instances/echo-demo"), ("POST", "/v1/instances/echo-demo/stop"),
          ("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/key_x")]


def test_no_key_401_everywhere(daemon):
    for method, path in ROUTES:
        r = daemon.request(method, path, body={"label": "x", "role": "admin"}
                           if method == "POST" else None)
        assert_401(r)
    # Public routes need none.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert daemon.get(path).status == 200, path
    # The config instance was not stopped by the unauthenticated POST.
    assert daemon.webhook().status == 200


def test_malformed_and_unknown_keys(daemon):
    real = daemon.admin_key
    assert KEY_RE.match(real), real
    bad_headers = [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "bearer-" + real,
        "Bearer not-a-key",
        "Bearer sbk_short",
        "Bearer " + real[:-1],                              # truncated
        "Bearer " + real[:-1] + ("A" if real[-1] != "A" else "B"),  # right prefix, wrong secret
        "Bearer sbk_%s_%s" % ("a" * 12, "B" * 43),          # well formed, unknown prefix
        real,                                                # no scheme
    ]
    for h in bad_headers:
        r = daemon.get("/v1/instances", headers={"Authorization": h})
        assert r.status == 401, (h, r)
        assert_401(r)
        assert real not in r.text
    assert daemon.api("GET", "/v1/instances").status == 200


def test_key_lifecycle_create_list_revoke(daemon):
    created = make_key(daemon, "ci robot")
    key = created["key"]
    assert created["instance_ids"] is None and created["revoked_at"] is None, created
    assert daemon.api("GET", "/v1/instances", key=key).status == 200
    # The list shows prefix and label, never the key or its hash.
    r = daemon.api("GET", "/v1/keys")
    assert r.status == 200, r
    keys = r.json()["keys"]
    assert len(keys) == 2, keys  # the initial admin key and ours
    mine = [k for k in keys if k["id"] == created["id"]]
    assert len(mine) == 1, keys
    assert mine[0]["prefix"] == created["prefix"] and mine[0]["label"] == "ci robot", mine
    for k in keys:
        assert "key" not in k and "hash" not in k, k
    assert key not in r.text and daemon.admin_key not in r.text
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert digest not in r.text.lower()
    # Shown once: nothing later returns it.
    assert key not in daemon.api("GET", "/v1/keys", key=key).text
    # Revoke: 204, then the key is refused, and listed as revoked.
    r = daemon.api("DELETE", "/v1/keys/" + created["id"])
    assert r.status == 204, r
    assert_401(daemon.api("GET", "/v1/instances", key=key))
    assert_401(daemon.api("GET", "/v1/keys", key=key))
    listed = {k["id"]: k for k in daemon.api("GET", "/v1/keys").json()["keys"]}
    assert listed[created["id"]]["revoked_at"], listed
    assert_error(daemon.api("DELETE", "/v1/keys/" + created["id"]), 404)
    assert_error(daemon.api("DELETE", "/v1/keys/key_nosuch"), 404)
    # The admin key still works.
    assert daemon.api("GET", "/v1/keys").status == 200


def test_revoked_key_stays_revoked_after_restart(make_daemon):
    d = make_daemon()
    admin = d.admin_key
    k = make_key(d, "temp")
    assert d.api("DELETE", "/v1/keys/" + k["id"]).status == 204
    assert d.stop() == 0
    d.close()
    d.start()
    assert_401(d.api("GET", "/v1/instances", key=k["key"]))
    assert d.api("GET", "/v1/instances", key=admin).status == 200


def test_bad_key_bodies(daemon):
    post = lambda body: daemon.api("POST", "/v1/keys", body)  # noqa: E731
    assert_error(post({"role": "admin"}), 400)
    assert_error(post({"label": "x"}), 400)
    assert_error(post({"label": "x", "role": "root"}), 400)
    assert_error(post({"label": "x", "role": "instance"}), 400)
    assert_error(post({"label": "x", "role": "instance", "instance_ids": []}), 400)
    assert_error(post({"label": "x", "role": "admin", "instance_ids": ["a"]}), 400)
    assert_error(post({"label": "x", "role": "admin", "extra": 1}), 400)
    assert len(daemon.api("GET", "/v1/keys").json()["keys"]) == 1


def test_instance_scoped_key(daemon):
    mine = new_instance(daemon, "mine")
    other = new_instance(daemon, "other")
    scoped = make_key(daemon, "tenant", role="instance", instance_ids=[mine])
    assert scoped["instance_ids"] == [mine], scoped
    key = scoped["key"]
    # The list shows only its instance.
    r = daemon.api("GET", "/v1/instances", key=key)
    assert r.status == 200, r
    assert [i["id"] for i in r.json()["instances"]] == [mine], r.json()
    r = daemon.api("GET", "/v1/instances?limit=1", key=key)
    assert [i["id"] for i in r.json()["instances"]] == [mine], r.json()
    # Another instance does not exist for it.
    assert daemon.api("GET", "/v1/instances/" + mine, key=key).status == 200
    assert_error(daemon.api("GET", "/v1/instances/" + other, key=key), 404)
    assert_error(daemon.api("GET", "/v1/instances/echo-demo", key=key), 404)
    assert_error(daemon.api("PATCH", "/v1/instances/" + other, {"name": "x"}, key=key), 404)
    assert_error(daemon.api("POST", "/v1/instances/%s/stop" % other, key=key), 404)
    assert_error(daemon.api("POST", "/v1/instances/echo-demo/stop", key=key), 404)
    assert_error(daemon.api("DELETE", "/v1/instances/" + other, key=key), 404)
    # Admin-only routes.
    assert_error(daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "n"}, key=key),
                 403)
    assert_error(daemon.api("GET", "/v1/keys", key=key), 403)
    assert_error(daemon.api("POST", "/v1/keys", {"label": "x", "role": "admin"}, key=key), 403)
    assert_error(daemon.api("DELETE", "/v1/keys/" + scoped["id"], key=key), 403)
    assert_error(daemon.api("DELETE", "/v1/instances/" + mine, key=key), 403)
    # Its own instance: patch, stop, start, restart.
    r = daemon.api("PATCH", "/v1/instances/" + mine, {"settings": {"prefix": "T: "}}, key=key)
    assert r.status == 200 and r.json()["settings"] == {"prefix": "T: "}, r
    r = daemon.api("POST", "/v1/instances/%s/stop" % mine, key=key)
    assert r.status == 200 and r.json()["status"]["running"] is False, r
    r = daemon.api("POST", "/v1/instances/%s/start" % mine, key=key)
    assert r.status == 200 and r.json()["status"]["running"] is True, r
    r = daemon.api("POST", "/v1/instances/%s/restart" % mine, key=key)
    assert r.status == 200 and r.json()["status"]["running"] is True, r
    # The other instance was never touched.
    g = daemon.api("GET", "/v1/instances/" + other).json()
    assert g["name"] == "other" and g["status"]["running"] is True, g
    assert daemon.webhook().status == 200
    # Providers are readable with any valid key.
    assert daemon.api("GET", "/v1/providers", key=key).status == 200


def test_keys_stored_hashed(daemon):
    admin = daemon.admin_key
    extra = make_key(daemon, "hashed")["key"]
    dump = dump_table(daemon.database, "api_keys")
    assert "INSERT INTO" in dump, dump
    for key in (admin, extra):
        # sbk_<prefix>_<secret>: the secret is base64url and may itself hold "_".
        secret_part = key.split("_", 2)[2]
        assert key not in dump, "a full API key is in the api_keys table"
        assert secret_part not in dump, "the secret part of an API key is in the api_keys table"
        assert hashlib.sha256(key.encode()).hexdigest() in dump.lower(), \
            "expected SHA-256 of the key in api_keys (keys stored hashed)"
