"""Pieces the provider fakes share: the spec fixtures, a small JSON Schema
checker, request body parsing, and a recording HTTP server."""

import email.parser
import email.policy
import json
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures",
                        "providers")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


# -- a JSON Schema checker for the OpenAPI subset the WhatsApp spec uses ---------------

class SchemaChecker:
    """$ref, allOf (merged: properties and required of every branch, so an
    additionalProperties:false branch sees the base properties as the spec
    means it), oneOf (with discriminator, else any branch), type, enum,
    required, properties, additionalProperties:false, items, min/maxItems,
    maxLength. Returns a list of "path: problem" strings."""

    def __init__(self, schemas):
        self.schemas = schemas

    def resolve(self, s):
        while isinstance(s, dict) and "$ref" in s:
            s = self.schemas[s["$ref"].rsplit("/", 1)[1]]
        return s

    def merged(self, s):
        s = self.resolve(s)
        if "allOf" not in s:
            return s
        out = {"properties": {}, "required": []}
        for part in s["allOf"]:
            p = self.merged(part)
            out["properties"].update(p.get("properties", {}))
            out["required"] += p.get("required", [])
            for k, v in p.items():
                if k not in ("properties", "required"):
                    out[k] = v
        return out

    def check(self, doc, schema, path="$"):
        s = self.merged(schema)
        errs = []
        if "oneOf" in s:
            branches = s["oneOf"]
            disc = s.get("discriminator")
            if disc and isinstance(doc, dict):
                ref = disc.get("mapping", {}).get(doc.get(disc["propertyName"]))
                if ref is None:
                    return ["%s: %s %r is not one of %s" % (path, disc["propertyName"],
                                                          doc.get(disc["propertyName"]),
                                                          sorted(disc.get("mapping", {})))]
                errs += self.check(doc, {"$ref": ref}, path)
            else:
                results = [self.check(doc, b, path) for b in branches]
                if not any(not r for r in results):
                    errs.append("%s: matches no oneOf branch: %s" % (path, results))
        t = s.get("type")
        types = {"object": dict, "array": list, "string": str, "boolean": bool,
                 "integer": int, "number": (int, float)}
        if t in types and not isinstance(doc, types[t]):
            return errs + ["%s: expected %s, got %r" % (path, t, doc)]
        if "enum" in s and doc not in s["enum"]:
            errs.append("%s: %r not in %r" % (path, doc, s["enum"]))
        if isinstance(doc, str) and "maxLength" in s and len(doc) > s["maxLength"]:
            errs.append("%s: longer than %d" % (path, s["maxLength"]))
        if isinstance(doc, dict):
            for r in s.get("required", []):
                if r not in doc:
                    errs.append("%s: required %r missing" % (path, r))
            props = s.get("properties", {})
            for k, v in doc.items():
                if k in props:
                    errs += self.check(v, props[k], "%s.%s" % (path, k))
                elif s.get("additionalProperties") is False:
                    errs.append("%s: unknown property %r" % (path, k))
        if isinstance(doc, list):
            if "maxItems" in s and len(doc) > s["maxItems"]:
                errs.append("%s: more than %d items" % (path, s["maxItems"]))
            if "minItems" in s and len(doc) < s["minItems"]:
                errs.append("%s: fewer than %d items" % (path, s["minItems"]))
            if "items" in s:
                for i, v in enumerate(doc):
                    errs += self.check(v, s["items"], "%s[%d]" % (path, i))
        return errs


# -- request bodies ----------------------------------------------------------------

def parse_params(rec):
    """Query, urlencoded, JSON or multipart parameters as a dict; file parts
    become {"filename", "content_type", "data"}. Raises ValueError."""
    params = {}
    q = urllib.parse.urlsplit(rec.path).query
    for k, v in urllib.parse.parse_qsl(q):
        params[k] = v
    ct = rec.headers.get("content-type", "")
    if not rec.body:
        return params
    if ct.startswith("application/json"):
        doc = json.loads(rec.body.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("JSON body is not an object")
        params.update(doc)
    elif ct.startswith("application/x-www-form-urlencoded"):
        params.update(dict(urllib.parse.parse_qsl(rec.body.decode("utf-8"))))
    elif ct.startswith("multipart/form-data"):
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ct.encode() + b"\r\n\r\n" + rec.body)
        if not msg.is_multipart():
            raise ValueError("not a multipart body")
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            data = part.get_payload(decode=True)
            if filename is not None:
                params[name] = {"filename": filename, "content_type": part.get_content_type(),
                                "data": data}
            else:
                params[name] = data.decode("utf-8")
    else:
        raise ValueError("unsupported Content-Type %r" % ct)
    return params


class Record:
    def __init__(self, method, path, headers, body):
        self.time = time.monotonic()
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.params = None  # filled by the fake
        self.status = None

    @property
    def route(self):
        return urllib.parse.urlsplit(self.path).path

    def __repr__(self):
        return "<%s %s %r -> %r>" % (self.method, self.path, self.body[:300], self.status)


class Server:
    """Threaded HTTP server on 127.0.0.1 recording requests; subclasses
    implement answer(rec) -> (status, headers, body bytes)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.requests = []
        self.errors = []  # protocol violations the fake saw: tests assert it stays empty
        self.closing = threading.Event()
        self.server = None

    def start(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                rec = Record(self.command, self.path,
                             {k.lower(): v for k, v in self.headers.items()}, body)
                with outer.cond:
                    outer.requests.append(rec)
                    outer.cond.notify_all()
                try:
                    status, headers, payload = outer.answer(rec)
                except Exception as exc:  # noqa: BLE001 - a fake bug shows as a 500
                    outer.violation("fake crashed on %r: %r" % (rec, exc))
                    status, headers, payload = 500, {}, b"{}"
                try:
                    self.send_response(status)
                    headers = dict(headers)
                    headers.setdefault("Content-Type", "application/json")
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    rec.status = status
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = _handle

        class S(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.server = S(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def close(self):
        self.closing.set()
        with self.cond:
            self.cond.notify_all()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def violation(self, text):
        with self.lock:
            self.errors.append(text)

    def all(self, pred=None):
        with self.lock:
            return [r for r in self.requests if pred is None or pred(r)]

    def wait_for(self, pred, n=1, timeout=10.0, what="requests"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [r for r in self.requests if pred(r)]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for %d %s (have %d; last %r)"
                                         % (n, what, len(got), self.requests[-5:]))
                self.cond.wait(min(left, 0.1))
