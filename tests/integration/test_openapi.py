"""The OpenAPI document served at /openapi.json covers every route, and the
running daemon's answers match the response schema documented for their
status code (checked with a small JSON Schema validator written here)."""

import json
import os
import re

import pytest

from conftest import wait_until

ROUTES = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/providers", "/v1/instances",
          "/v1/instances/{id}", "/v1/instances/{id}/start", "/v1/instances/{id}/stop",
          "/v1/instances/{id}/restart", "/v1/instances/{id}/qr", "/v1/instances/{id}/logout",
          "/v1/keys", "/v1/keys/{id}",
          "/webhook/{provider}/{instance}"]


# -- a small JSON Schema checker ---------------------------------------------------

class Checker:
    """Enough of JSON Schema (2020-12 as OpenAPI 3.1 uses it) for this
    document: type (string or list, with "null" and "integer"), required,
    properties, additionalProperties (false or a schema), items, enum, const,
    pattern, minLength/maxLength, minimum/maximum, minItems, oneOf, anyOf,
    allOf, and $ref to #/components/schemas/... Unknown keywords are
    reported, so the checker cannot silently skip what the document says."""

    KNOWN = {"type", "required", "properties", "additionalProperties", "items", "enum", "const",
             "pattern", "oneOf", "anyOf", "allOf", "$ref", "minLength", "maxLength", "minimum",
             "maximum", "minItems", "maxItems", "description", "default", "format", "title",
             "example", "examples", "writeOnly", "readOnly", "nullable"}

    def __init__(self, doc):
        self.doc = doc

    def resolve(self, ref):
        assert ref.startswith("#/"), "only local $ref: %r" % ref
        node = self.doc
        for part in ref[2:].split("/"):
            assert part in node, "unresolvable $ref %r" % ref
            node = node[part]
        return node

    @staticmethod
    def type_ok(value, t):
        if t == "null":
            return value is None
        if t == "boolean":
            return isinstance(value, bool)
        if t == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if t == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if t == "string":
            return isinstance(value, str)
        if t == "array":
            return isinstance(value, list)
        if t == "object":
            return isinstance(value, dict)
        raise AssertionError("unknown type %r in schema" % t)

    def errors(self, schema, value, path="$"):
        """List of 'path: problem' strings; empty when value matches."""
        out = []
        if schema is True or schema == {}:
            return out
        if schema is False:
            return ["%s: no value allowed" % path]
        unknown = set(schema) - self.KNOWN
        if unknown:
            out.append("%s: schema uses keywords the checker does not know: %s"
                       % (path, sorted(unknown)))
        if "$ref" in schema:
            out += self.errors(self.resolve(schema["$ref"]), value, path)
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(self.type_ok(value, t) for t in types):
                out.append("%s: %r is not of type %s" % (path, value, types))
                return out
        if "const" in schema and value != schema["const"]:
            out.append("%s: %r is not %r" % (path, value, schema["const"]))
        if "enum" in schema and value not in schema["enum"]:
            out.append("%s: %r not in %r" % (path, value, schema["enum"]))
        if isinstance(value, str):
            if "pattern" in schema and not re.search(schema["pattern"], value):
                out.append("%s: %r does not match %r" % (path, value, schema["pattern"]))
            if "minLength" in schema and len(value) < schema["minLength"]:
                out.append("%s: shorter than %d" % (path, schema["minLength"]))
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                out.append("%s: longer than %d" % (path, schema["maxLength"]))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                out.append("%s: %r < %r" % (path, value, schema["minimum"]))
            if "maximum" in schema and value > schema["maximum"]:
                out.append("%s: %r > %r" % (path, value, schema["maximum"]))
        if isinstance(value, dict):
            for k in schema.get("required", []):
                if k not in value:
                    out.append("%s: required property %r missing" % (path, k))
            props = schema.get("properties", {})
            for k, v in value.items():
                if k in props:
                    out += self.errors(props[k], v, "%s.%s" % (path, k))
                elif "additionalProperties" in schema:
                    ap = schema["additionalProperties"]
                    if ap is False:
                        out.append("%s: property %r not allowed" % (path, k))
                    elif isinstance(ap, dict):
                        out += self.errors(ap, v, "%s.%s" % (path, k))
        if isinstance(value, list):
            if "minItems" in schema and len(value) < schema["minItems"]:
                out.append("%s: fewer than %d items" % (path, schema["minItems"]))
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                out.append("%s: more than %d items" % (path, schema["maxItems"]))
            if "items" in schema:
                for i, v in enumerate(value):
                    out += self.errors(schema["items"], v, "%s[%d]" % (path, i))
        if "allOf" in schema:
            for i, sub in enumerate(schema["allOf"]):
                out += self.errors(sub, value, "%s(allOf %d)" % (path, i))
        if "anyOf" in schema:
            if not any(not self.errors(sub, value, path) for sub in schema["anyOf"]):
                out.append("%s: matches none of anyOf" % path)
        if "oneOf" in schema:
            matching = [i for i, sub in enumerate(schema["oneOf"])
                        if not self.errors(sub, value, path)]
            if len(matching) != 1:
                detail = "; ".join("branch %d: %s" % (i, self.errors(sub, value, path)[:3])
                                   for i, sub in enumerate(schema["oneOf"]))
                out.append("%s: matches %d of oneOf (%s)" % (path, len(matching), detail))
        return out


# -- the checker checks itself -----------------------------------------------------

def test_checker_catches_mismatches():
    doc = {"components": {"schemas": {
        "A": {"type": "object", "required": ["x"], "additionalProperties": False,
              "properties": {"x": {"type": ["string", "null"], "pattern": "^a"},
                             "n": {"type": "integer"}, "e": {"enum": ["p", "q"]},
                             "c": {"const": True},
                             "l": {"type": "array", "items": {"$ref": "#/components/schemas/B"}}}},
        "B": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        "C": {"allOf": [{"$ref": "#/components/schemas/A"},
                        {"type": "object", "required": ["n"]}]}}}}
    c = Checker(doc)
    a = {"$ref": "#/components/schemas/A"}
    assert c.errors(a, {"x": "abc"}) == []
    assert c.errors(a, {"x": None, "l": ["s", 1]}) == []
    assert c.errors(a, {}), "missing required"
    assert c.errors(a, {"x": "b"}), "pattern"
    assert c.errors(a, {"x": 1}), "type list"
    assert c.errors(a, {"x": "a", "y": 1}), "additionalProperties false"
    assert c.errors(a, {"x": "a", "n": True}), "bool is not integer"
    assert c.errors(a, {"x": "a", "n": 1.5}), "float is not integer"
    assert c.errors(a, {"x": "a", "e": "r"}), "enum"
    assert c.errors(a, {"x": "a", "c": False}), "const"
    assert c.errors(a, {"x": "a", "l": [1.5]}), "items/oneOf"
    assert c.errors({"$ref": "#/components/schemas/C"}, {"x": "a"}), "allOf"
    assert c.errors({"$ref": "#/components/schemas/C"}, {"x": "a", "n": 2}) == []
    assert c.errors({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 1), \
        "oneOf must match exactly one"
    assert c.errors({"type": "string", "frobnicate": 1}, "x"), "unknown keyword"


# -- the document ------------------------------------------------------------------

@pytest.fixture
def spec(daemon):
    r = daemon.get("/openapi.json")
    assert r.status == 200, r
    assert "application/json" in r.headers.get("content-type", ""), r.headers
    return r.json()


def test_document_served_without_auth_and_parses(daemon, spec):
    assert spec["openapi"].startswith("3."), spec.get("openapi")
    assert isinstance(spec.get("paths"), dict) and isinstance(spec.get("components"), dict)
    # The file in the repo is what is served.
    top = os.environ.get("SB_TOP_SRCDIR")
    if top and os.path.exists(os.path.join(top, "host", "openapi.json")):
        with open(os.path.join(top, "host", "openapi.json")) as f:
            assert json.load(f) == spec, "served document differs from host/openapi.json"


def test_every_route_documented(spec):
    missing = [r for r in ROUTES if r not in spec["paths"]]
    assert not missing, "routes without a path entry: %r" % missing
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    for path, item in spec["paths"].items():
        ops = [m for m in item if m in methods]
        assert ops, "path %s has no operation" % path
        for m in ops:
            assert item[m].get("responses"), "%s %s has no responses" % (m, path)


def test_every_ref_resolves(spec):
    c = Checker(spec)
    refs = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    refs.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(spec)
    assert refs
    for ref in refs:
        c.resolve(ref)
    # Every schema in components is itself something the checker understands.
    for name, schema in spec["components"]["schemas"].items():
        errs = [e for e in c.errors(schema, None) if "keywords" in e]
        assert not errs, (name, errs)


# -- answers against the document ------------------------------------------------

class Conformance:
    def __init__(self, daemon, spec):
        self.d = daemon
        self.spec = spec
        self.c = Checker(spec)
        self.checked = []

    def check(self, template, method, resp):
        op = self.spec["paths"][template].get(method.lower())
        assert op, "%s %s is not documented" % (method, template)
        responses = op["responses"]
        code = str(resp.status)
        assert code in responses, "%s %s answered %d, which is not documented (%s)" % (
            method, template, resp.status, sorted(responses))
        content = responses[code].get("content")
        if not content:
            # No schema: the body is free (a plugin's webhook answer), except
            # that 204 has none.
            if resp.status == 204:
                assert resp.body == b"", "%s %s 204 with a body %r" % (method, template,
                                                                       resp.body)
            self.checked.append((method, template, code))
            return
        ctype = resp.headers.get("content-type", "").split(";")[0].strip()
        assert ctype in content, "%s %s %d: content-type %r, documented %r" % (
            method, template, resp.status, ctype, sorted(content))
        schema = content[ctype].get("schema", {})
        value = resp.json() if ctype == "application/json" else resp.text
        errs = self.c.errors(schema, value)
        assert not errs, "%s %s %d does not match its schema:\n  %s\nbody: %s" % (
            method, template, resp.status, "\n  ".join(errs[:10]), resp.text[:1500])
        self.checked.append((method, template, code))
        return value


@pytest.fixture
def conf(daemon, spec):
    return Conformance(daemon, spec)


def test_health_and_readiness_answers(conf):
    d = conf.d
    conf.check("/healthz", "GET", d.get("/healthz"))
    wait_until(lambda: d.get("/readyz").status == 200, 10, what="/readyz 200")
    conf.check("/readyz", "GET", d.get("/readyz"))
    conf.check("/metrics", "GET", d.get("/metrics"))
    conf.check("/openapi.json", "GET", d.get("/openapi.json"))
    conf.check("/v1/providers", "GET", d.api("GET", "/v1/providers"))


def test_instance_answers(conf):
    d = conf.d
    r = d.api("POST", "/v1/instances", {"provider": "echo", "name": "oa",
                                        "settings": {"prefix": "o: "},
                                        "secrets": {"token": "openapi-token"}})
    created = conf.check("/v1/instances", "POST", r)
    iid = created["id"]
    conf.check("/v1/instances/{id}", "GET", d.api("GET", "/v1/instances/" + iid))
    conf.check("/v1/instances/{id}", "GET", d.api("GET", "/v1/instances/echo-demo"))
    d.api("POST", "/v1/instances", {"provider": "echo", "name": "oa2"})
    conf.check("/v1/instances", "GET", d.api("GET", "/v1/instances"))
    page = conf.check("/v1/instances", "GET", d.api("GET", "/v1/instances?limit=1"))
    assert page["next_cursor"] is not None, page
    conf.check("/v1/instances", "GET",
               d.api("GET", "/v1/instances?limit=1&cursor=" + page["next_cursor"]))
    conf.check("/v1/instances/{id}", "PATCH",
               d.api("PATCH", "/v1/instances/" + iid, {"settings": {"prefix": "p: "}}))
    conf.check("/v1/instances/{id}/stop", "POST", d.api("POST", "/v1/instances/%s/stop" % iid))
    conf.check("/v1/instances/{id}/start", "POST", d.api("POST", "/v1/instances/%s/start" % iid))
    conf.check("/v1/instances/{id}/restart", "POST",
               d.api("POST", "/v1/instances/%s/restart" % iid))
    conf.check("/v1/instances/{id}/stop", "POST", d.api("POST", "/v1/instances/echo-demo/stop"))
    conf.check("/v1/instances/{id}/start", "POST",
               d.api("POST", "/v1/instances/echo-demo/start"))
    wh = d.post("/webhook/echo/" + iid, {"text": "x"}, headers={"X-Echo-Token": "openapi-token"})
    conf.check("/webhook/{provider}/{instance}", "POST", wh)
    conf.check("/webhook/{provider}/{instance}", "POST", d.post("/webhook/echo/in_nosuch",
                                                                 {"text": "x"}))
    d.api("POST", "/v1/instances/%s/stop" % iid)
    conf.check("/webhook/{provider}/{instance}", "POST",
               d.post("/webhook/echo/" + iid, {"text": "x"},
                      headers={"X-Echo-Token": "openapi-token"}))
    conf.check("/v1/instances/{id}", "DELETE", d.api("DELETE", "/v1/instances/" + iid))


def test_key_answers(conf):
    d = conf.d
    k = conf.check("/v1/keys", "POST", d.api("POST", "/v1/keys", {"label": "oa", "role": "admin"}))
    inst = d.api("POST", "/v1/instances", {"provider": "echo", "name": "scoped"}).json()["id"]
    conf.check("/v1/keys", "POST", d.api("POST", "/v1/keys", {"label": "oa-scoped",
                                                              "role": "instance",
                                                              "instance_ids": [inst]}))
    conf.check("/v1/keys", "GET", d.api("GET", "/v1/keys"))
    conf.check("/v1/keys/{id}", "DELETE", d.api("DELETE", "/v1/keys/" + k["id"]))
    listed = conf.check("/v1/keys", "GET", d.api("GET", "/v1/keys"))
    assert any(x["id"] == k["id"] and x["revoked_at"] for x in listed["keys"]), listed


def test_error_answers(conf):
    d = conf.d
    inst = d.api("POST", "/v1/instances", {"provider": "echo", "name": "err"}).json()["id"]
    scoped = d.api("POST", "/v1/keys", {"label": "s", "role": "instance",
                                        "instance_ids": [inst]}).json()["key"]
    cases = [
        # 400
        ("/v1/instances", "POST", d.api("POST", "/v1/instances",
                                        {"provider": "echo", "name": "x", "bogus": 1}), 400),
        ("/v1/instances", "POST", d.request("POST", "/v1/instances", body=b"{not json",
                                            headers=d.auth()), 400),
        ("/v1/instances", "GET", d.api("GET", "/v1/instances?limit=0"), 400),
        ("/v1/instances/{id}", "PATCH", d.api("PATCH", "/v1/instances/" + inst, {"x": 1}), 400),
        ("/v1/keys", "POST", d.api("POST", "/v1/keys", {"label": "x", "role": "god"}), 400),
        # 401
        ("/v1/instances", "GET", d.get("/v1/instances"), 401),
        ("/v1/providers", "GET", d.get("/v1/providers",
                                       headers={"Authorization": "Bearer nope"}), 401),
        ("/v1/keys", "GET", d.get("/v1/keys", headers={"Authorization": "Basic eDp5"}), 401),
        ("/v1/instances/{id}", "GET", d.get("/v1/instances/" + inst), 401),
        # 403
        ("/v1/instances", "POST", d.api("POST", "/v1/instances",
                                        {"provider": "echo", "name": "y"}, key=scoped), 403),
        ("/v1/keys", "GET", d.api("GET", "/v1/keys", key=scoped), 403),
        ("/v1/keys", "POST", d.api("POST", "/v1/keys", {"label": "x", "role": "admin"},
                                   key=scoped), 403),
        ("/v1/keys/{id}", "DELETE", d.api("DELETE", "/v1/keys/key_x", key=scoped), 403),
        ("/v1/instances/{id}", "DELETE", d.api("DELETE", "/v1/instances/" + inst, key=scoped),
         403),
        # 404
        ("/v1/instances/{id}", "GET", d.api("GET", "/v1/instances/in_nosuch"), 404),
        ("/v1/instances/{id}", "PATCH", d.api("PATCH", "/v1/instances/in_nosuch",
                                              {"name": "z"}), 404),
        ("/v1/instances/{id}", "DELETE", d.api("DELETE", "/v1/instances/in_nosuch"), 404),
        ("/v1/instances/{id}/start", "POST", d.api("POST", "/v1/instances/in_nosuch/start"),
         404),
        ("/v1/instances/{id}/stop", "POST", d.api("POST", "/v1/instances/in_nosuch/stop"), 404),
        ("/v1/instances/{id}/restart", "POST",
         d.api("POST", "/v1/instances/in_nosuch/restart"), 404),
        ("/v1/keys/{id}", "DELETE", d.api("DELETE", "/v1/keys/key_nosuch"), 404),
        # 409
        ("/v1/instances", "POST", d.api("POST", "/v1/instances",
                                        {"provider": "echo", "name": "err"}), 409),
        ("/v1/instances/{id}", "PATCH", d.api("PATCH", "/v1/instances/echo-demo",
                                              {"name": "z"}), 409),
        ("/v1/instances/{id}", "DELETE", d.api("DELETE", "/v1/instances/echo-demo"), 409),
        # 422
        ("/v1/instances", "POST", d.api("POST", "/v1/instances",
                                        {"provider": "echo", "name": "q",
                                         "settings": {"prefix": 1}}), 422),
        ("/v1/instances", "POST", d.api("POST", "/v1/instances",
                                        {"provider": "nosuch", "name": "q"}), 422),
        ("/v1/instances/{id}", "PATCH", d.api("PATCH", "/v1/instances/" + inst,
                                              {"secrets": {"token": "short"}}), 422),
    ]
    # Restart of a stopped instance: 409 (documented for restart).
    assert d.api("POST", "/v1/instances/%s/stop" % inst).status == 200
    cases.append(("/v1/instances/{id}/restart", "POST",
                  d.api("POST", "/v1/instances/%s/restart" % inst), 409))
    failures = []
    for template, method, resp, want in cases:
        if resp.status != want:
            failures.append("%s %s: expected %d, got %r" % (method, template, want, resp))
            continue
        try:
            conf.check(template, method, resp)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)
    codes = {c for _, _, c in conf.checked}
    assert {"400", "401", "403", "404", "409", "422"} <= codes, codes

