"""Loopback fakes for the messaging tests (standard library only).

FakeProvider: what tests/plugins/fakeprov.so sends to. Each POST /send is
recorded (monotonic time, headers, body) and answered by the next scripted
action, or by the default action when the script is empty:

    fake = FakeProvider().start()
    fake.script(fail(500), rate_limit(1), ok())   # a queue, one per request
    fake.default = ok()                           # when the queue is empty
    fake.behave = lambda rec: ...                 # or decide per request
    fake.sends()                                  # recorded requests to /send

Actions: ok(id=None, delay=0), fail(status=500, message=..., retry_after=None),
rate_limit(seconds=1, in_body=False), reject(status=400, message=...),
hang(seconds) (answers after `seconds`, long after the client gave up).

Subscriber: a customer webhook endpoint; records every delivery and answers
500 to the first `fail_first` of them (or per a callable), 200 otherwise.
"""

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Record:
    """One request the fake received."""

    def __init__(self, method, path, headers, body):
        self.time = time.monotonic()
        self.wall = time.time()
        self.method = method
        self.path = path
        self.headers = headers  # dict, lower-case names
        self.body = body  # bytes
        self.status = None  # what the fake answered (None: no answer yet / hung)
        self.done = None  # monotonic time the answer was written

    @property
    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError:
            return None

    @property
    def text(self):
        j = self.json
        return j.get("text") if isinstance(j, dict) else None

    def __repr__(self):
        return "<Record %s %s %.3f %r -> %r>" % (self.method, self.path, self.time,
                                                   self.body[:200], self.status)


# -- actions ---------------------------------------------------------------------

def ok(id=None, delay=0.0):
    """200 {"id": id} (a fresh "fp-N" when id is None), after `delay` seconds."""
    return {"kind": "ok", "id": id, "delay": delay}


def fail(status=500, message="internal error", retry_after=None, delay=0.0):
    return {"kind": "status", "status": status, "message": message,
            "retry_after": retry_after, "delay": delay}


def rate_limit(seconds=1, in_body=False):
    """429 with Retry-After: seconds (header) or {"retry_after": seconds} (body)."""
    return {"kind": "status", "status": 429, "message": "slow down",
            "retry_after": seconds, "in_body": in_body, "delay": 0.0}


def reject(status=400, message="bad recipient"):
    return {"kind": "status", "status": status, "message": message, "retry_after": None,
            "delay": 0.0}


def hang(seconds):
    """Hold the request for `seconds`, then answer 200 (to nobody, usually)."""
    return {"kind": "hang", "seconds": seconds}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class _Base:
    """A threaded HTTP server on 127.0.0.1:0 recording every request."""

    def __init__(self):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.requests = []
        self.server = None
        self.thread = None
        self._closing = threading.Event()

    # subclasses: answer(rec) -> (status, headers dict, body bytes, delay seconds)
    def answer(self, rec):
        raise NotImplementedError

    def start(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                rec = Record(self.command, self.path,
                             {k.lower(): v for k, v in self.headers.items()}, body)
                with outer.cond:
                    outer.requests.append(rec)
                    outer.cond.notify_all()
                status, headers, payload, delay = outer.answer(rec)
                if delay:
                    # Sleep in slices so close() does not wait for a long hang.
                    end = time.monotonic() + delay
                    while time.monotonic() < end and not outer._closing.is_set():
                        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                    rec.status = status
                    rec.done = time.monotonic()
                except OSError:
                    self.close_connection = True

            do_POST = _handle
            do_GET = _handle
            do_PUT = _handle

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    @property
    def port(self):
        return self.server.server_address[1]

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def close(self):
        self._closing.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def all(self, path=None):
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_count(self, n, timeout, path=None, what=None):
        """Wait until at least n requests (to path) arrived; returns them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [r for r in self.requests if path is None or r.path == path]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out after %.1fs waiting for %d %s (have %d: %r)"
                                         % (timeout, n, what or "requests", len(got), got[-5:]))
                self.cond.wait(min(left, 0.1))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeProvider(_Base):
    def __init__(self):
        super().__init__()
        self.queue = []
        self.default = ok()
        self.behave = None  # callable(rec) -> action or None (then queue/default)
        self._ids = itertools.count(1)

    def script(self, *actions):
        with self.lock:
            self.queue.extend(actions)
        return self

    def sends(self):
        return self.all("/send")

    def wait_sends(self, n, timeout=10.0):
        return self.wait_count(n, timeout, path="/send", what="sends at the fake")

    def texts(self):
        return [r.text for r in self.sends()]

    def answer(self, rec):
        action = None
        if self.behave is not None:
            action = self.behave(rec)
        if action is None:
            with self.lock:
                action = self.queue.pop(0) if self.queue else self.default
        kind = action["kind"]
        if kind == "hang":
            return 200, {}, json.dumps({"id": "late-%d" % next(self._ids)}).encode(), \
                action["seconds"]
        if kind == "ok":
            mid = action["id"] or "fp-%d" % next(self._ids)
            return 200, {}, json.dumps({"id": mid}).encode(), action["delay"]
        headers = {}
        body = {"error": {"code": "e%d" % action["status"], "message": action["message"]}}
        ra = action.get("retry_after")
        if ra is not None:
            if action.get("in_body"):
                body["retry_after"] = ra
            else:
                headers["Retry-After"] = str(ra)
        return action["status"], headers, json.dumps(body).encode(), action.get("delay", 0.0)


class Subscriber(_Base):
    """Customer webhook endpoint: 500 for the first fail_first deliveries."""

    def __init__(self, fail_first=0):
        super().__init__()
        self.fail_first = fail_first
        self.decide = None  # callable(rec) -> status, or None
        self._seen = 0

    def answer(self, rec):
        with self.lock:
            self._seen += 1
            n = self._seen
        status, delay = None, 0.0
        if self.decide is not None:
            status = self.decide(rec)  # a status, (status, delay seconds), or None
            if isinstance(status, tuple):
                status, delay = status
        if status is None:
            status = 500 if n <= self.fail_first else 200
        return status, {}, b'{"ok":%s}' % (b"true" if status < 300 else b"false"), delay

    def deliveries(self):
        return self.all()

    def wait_deliveries(self, n, timeout=10.0):
        return self.wait_count(n, timeout, what="deliveries at the subscriber")


# -- daemon set-up shared by the messaging tests -----------------------------------

# Outbox timing the tests ask the daemon for (top-level "outbox" config object).
# The breaker is effectively off unless a test turns it on.
FAST_OUTBOX = {"max_attempts": 8, "backoff_base_ms": 50, "backoff_max_ms": 200,
               "breaker_failures": 1000, "breaker_cooldown_ms": 1000, "max_in_flight": 32}

FP_INSTANCE = "fp"
FP_WEBHOOK = "/webhook/fakeprov/" + FP_INSTANCE


def fakeprov_config(fake_url, outbox=None, subscriptions=None, token=None, extra_instances=None):
    """Config with echo (instance echo-demo) and fakeprov (instance fp -> fake_url)."""
    from conftest import base_config, free_port
    cfg = base_config(free_port())
    cfg["plugins"]["fakeprov"] = {"enabled": True}
    settings = {"base_url": fake_url}
    if token is not None:
        settings["token"] = token
    cfg["instances"][FP_INSTANCE] = {"provider": "fakeprov", "settings": settings}
    for name, inst in (extra_instances or {}).items():
        cfg["instances"][name] = inst
    if outbox is not None:
        cfg["outbox"] = dict(outbox)
    if subscriptions is not None:
        cfg["subscriptions"] = dict(subscriptions)
    return cfg


def fakeprov_plugins():
    import os
    from conftest import aux_plugin, plugin_dir
    return {"echo.so": os.path.join(plugin_dir(), "echo.so"),
            "fakeprov.so": aux_plugin("fakeprov.so")}


def start_fp_daemon(make_daemon, fake, outbox=FAST_OUTBOX, **kw):
    """A daemon running echo-demo and fp (fakeprov -> fake); waits for fp to run."""
    from conftest import wait_until
    cfg_kw = {k: kw.pop(k) for k in ("subscriptions", "token", "extra_instances") if k in kw}
    d = make_daemon(config=fakeprov_config(fake.url, outbox=outbox, **cfg_kw),
                    plugins=fakeprov_plugins(), **kw)

    def running():
        r = d.api("GET", "/v1/instances/" + FP_INSTANCE)
        return r.status == 200 and r.json()["status"].get("running") is True
    wait_until(running, 10, what="instance fp running")
    return d


def send(d, instance, body, key=None, idem=None, expect=202):
    headers = {"Idempotency-Key": idem} if idem is not None else None
    r = d.api("POST", "/v1/instances/%s/messages" % instance, body, key=key, headers=headers)
    assert r.status == expect, r
    return r.json()


def get_message(d, mid, key=None):
    r = d.api("GET", "/v1/messages/" + mid, key=key)
    assert r.status == 200, r
    return r.json()


def wait_state(d, mid, states, timeout=10.0):
    """Poll GET /v1/messages/{id} until its state is one of states; returns the doc."""
    from conftest import wait_until
    if isinstance(states, str):
        states = (states,)
    last = {}

    def reached():
        doc = get_message(d, mid)
        last["doc"] = doc
        return doc if doc["state"] in states else None
    try:
        return wait_until(reached, timeout, interval=0.05,
                          what="message %s state in %r" % (mid, states))
    except AssertionError as exc:
        raise AssertionError("%s; last seen %r" % (exc, last.get("doc"))) from None


def delivery(d, instance):
    r = d.api("GET", "/v1/instances/" + instance)
    assert r.status == 200, r
    return r.json()["status"].get("delivery")


# -- Server-Sent Events client -------------------------------------------------------

class SSE:
    """Reads GET /v1/events (or any SSE path) in a thread; collects events.

    events: list of dicts {"id", "event", "data" (parsed JSON or raw), "raw"}.
    comments: comment lines seen (": ping").
    """

    def __init__(self, port, path="/v1/events", key=None, timeout=30.0):
        import http.client
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        headers = {"Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = "Bearer " + key
        self.conn.request("GET", path, headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}
        self.events = []
        self.comments = []
        self.cond = threading.Condition()
        self.closed = False
        self.error = None
        if self.status == 200:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        else:
            self.body = self.resp.read()

    def _run(self):
        buf = b""
        try:
            while True:
                chunk = self.resp.read1(65536)
                if not chunk:
                    break
                buf += chunk
                buf = buf.replace(b"\r\n", b"\n")
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    self._block(block.decode("utf-8", "replace"))
        except Exception as exc:  # noqa: BLE001 - closed under us, or a real error
            self.error = exc
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _block(self, text):
        ev = {"id": None, "event": None, "data": None, "raw": text}
        data_lines = []
        only_comments = True
        for line in text.split("\n"):
            if line.startswith(":"):
                with self.cond:
                    self.comments.append(line)
                continue
            only_comments = False
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                data_lines.append(value)
            elif name in ("id", "event"):
                ev[name] = value
        if only_comments:
            return
        data = "\n".join(data_lines)
        try:
            ev["data"] = json.loads(data)
        except ValueError:
            ev["data"] = data
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def wait_for(self, pred, timeout=5.0, what="SSE event"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.events if pred(e)]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError("no %s in %.1fs (closed=%s error=%r); got %r"
                                         % (what, timeout, self.closed, self.error,
                                            [e["raw"][:200] for e in self.events]))
                self.cond.wait(min(left, 0.1))

    def snapshot(self):
        with self.cond:
            return list(self.events)

    def close(self):
        try:
            if self.conn.sock is not None:
                import socket
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()
