"""A stand-in for web.whatsapp.com on 127.0.0.1 (standard library only).

It serves the page in tests/fixtures/whatsweb/ (login screen with a rotating
QR in div[data-ref] and a canvas, chat screen, the window.require modules the
plugin's inject.js hooks) and the small API that page talks to with fetch.
The test drives it from Python (FakeWhatsWeb.scan(), .inbound(), .ack(),
.logout()) or over HTTP (POST /control/scan, /control/inbound, /control/ack,
/control/logout; GET /control/sent, /control/qr), and reads back what the
page sent. The plugin never talks to it: only Chromium does.

GET /control/qr?ref=TEXT also says whether a page ever showed TEXT ("shown").

Standalone (bench/whatsweb.sh): python3 whatsweb.py [--port N] [--rotate-ms MS]
prints its URL on one line and serves until SIGTERM/SIGINT.

Page API: GET /api/hello, GET /api/resume?session=, GET /api/events?since=N
(long poll, 2 s), POST /api/qr {ref}, POST /api/send {...}, POST
/api/upload?type=&mimetype= (raw bytes), POST /api/logout {session}.
Media the tests want sent by URL: add_media(name, data, ctype) serves
GET /media/<name>.
"""

import base64
import hashlib
import json
import os
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures",
                        "whatsweb")

ACKS = {"sent": 1, "server": 1, "delivered": 2, "device": 2, "read": 3, "played": 4}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeWhatsWeb:
    def __init__(self, qr_rotate_ms=1500, me="15550001111@c.us"):
        self.qr_rotate_ms = qr_rotate_ms
        self.me = me
        self.lock = threading.Condition()
        self.events = []          # (seq, event) for the page
        self.seq = 0
        self.sessions = set()     # valid logins
        self.qrs = []             # (time, ref) as the page showed them
        self.sent = []            # what the page sent (dicts)
        self.uploads = {}         # url -> (mimetype, bytes)
        self.media = {}           # name -> (ctype, bytes), served at /media/<name>
        self.requests = []        # (method, path) seen
        self.fail_sends = False
        self._ids = 0
        self.httpd = None
        self.thread = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self, port=0):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def do_GET(self):
                fake._dispatch(self, "GET")

            def do_POST(self):
                fake._dispatch(self, "POST")

        self.httpd = _Server(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def close(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def port(self):
        return self.httpd.server_address[1]

    @property
    def url(self):
        return "http://127.0.0.1:%d/" % self.port

    # -- test controls -----------------------------------------------------------

    def _push(self, ev):
        with self.lock:
            self.seq += 1
            self.events.append((self.seq, ev))
            self.lock.notify_all()

    def scan(self):
        """The phone scans the QR shown now: the page logs in."""
        session = secrets.token_hex(16)
        with self.lock:
            self.sessions.add(session)
        self._push({"type": "scan", "session": session, "me": self.me})
        return session

    def inbound(self, from_="15557654321@c.us", text="hello", media=None, msg_id=None):
        """A message arrives on the phone; returns its id (the remote part)."""
        with self.lock:
            self._ids += 1
            mid = msg_id or "3A%014X" % (int(time.time() * 1000) * 100 + self._ids)
        msg = {"id": mid, "type": "chat", "body": text, "notifyName": "Peer"}
        if media:
            msg.update({"type": media.get("type", "image"), "caption": text, "body": None,
                        "mimetype": media.get("mimetype", "image/png"),
                        "filename": media.get("filename"), "size": media.get("size", 0)})
        self._push({"type": "inbound", "from": from_, "msg": msg})
        return mid

    def ack(self, msg_id, state):
        """Mark a message the page sent as delivered/read (its serialized id)."""
        self._push({"type": "ack", "id": msg_id, "ack": ACKS[state]})

    def logout(self):
        """The phone unlinks this device: every session ends."""
        with self.lock:
            gone = list(self.sessions)
            self.sessions.clear()
        for s in gone:
            self._push({"type": "logout", "session": s})

    def add_media(self, name, data, ctype):
        self.media[name] = (ctype, data)
        return self.url + "media/" + name

    def current_qr(self):
        with self.lock:
            return self.qrs[-1][1] if self.qrs else None

    def wait_sent(self, n, timeout=15.0):
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.sent) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the page sent %d messages, expected %d: %r"
                                         % (len(self.sent), n, self.sent))
                self.lock.wait(left)
            return list(self.sent)

    # -- HTTP --------------------------------------------------------------------

    def _reply(self, h, status, body, ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "no-store")
        h.end_headers()
        h.wfile.write(body)

    def _body(self, h):
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def _dispatch(self, h, method):
        u = urllib.parse.urlsplit(h.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        path = u.path
        raw = self._body(h) if method == "POST" else b""
        with self.lock:
            self.requests.append((method, path))
        try:
            doc = json.loads(raw) if raw and not path.startswith("/api/upload") else {}
        except ValueError:
            return self._reply(h, 400, {"error": "bad json"})

        if method == "GET" and path in ("/", "/index.html"):
            with open(os.path.join(PAGE_DIR, "index.html"), "rb") as f:
                return self._reply(h, 200, f.read(), "text/html; charset=utf-8")
        if method == "GET" and path == "/app.js":
            with open(os.path.join(PAGE_DIR, "app.js"), "rb") as f:
                return self._reply(h, 200, f.read(), "text/javascript; charset=utf-8")
        if method == "GET" and path.startswith("/media/"):
            item = self.media.get(path[len("/media/"):])
            if not item:
                return self._reply(h, 404, {"error": "no such media"})
            return self._reply(h, 200, item[1], item[0])

        # the page's API
        if method == "GET" and path == "/api/hello":
            with self.lock:
                return self._reply(h, 200, {"seq": self.seq, "qr_rotate_ms": self.qr_rotate_ms})
        if method == "GET" and path == "/api/resume":
            with self.lock:
                ok = q.get("session") in self.sessions
            return self._reply(h, 200 if ok else 401, {"me": self.me} if ok else {"error": "gone"})
        if method == "GET" and path == "/api/events":
            since = int(q.get("since", "0"))
            deadline = time.monotonic() + 2.0
            with self.lock:
                while self.seq <= since and time.monotonic() < deadline:
                    self.lock.wait(deadline - time.monotonic())
                evs = [e for s, e in self.events if s > since]
                return self._reply(h, 200, {"seq": self.seq, "events": evs})
        if method == "POST" and path == "/api/qr":
            with self.lock:
                self.qrs.append((time.time(), doc.get("ref")))
                self.lock.notify_all()
            return self._reply(h, 200, {"ok": True})
        if method == "POST" and path == "/api/send":
            if self.fail_sends:
                return self._reply(h, 500, {"error": "send failed"})
            with self.lock:
                doc["received_at"] = time.time()
                self.sent.append(doc)
                self.lock.notify_all()
            return self._reply(h, 200, {"ok": True})
        if method == "POST" and path == "/api/upload":
            with self.lock:
                self._ids += 1
                url = "https://mmg.fixture.invalid/m/%d" % self._ids
                self.uploads[url] = (q.get("mimetype"), raw)
            return self._reply(h, 200, {"url": url, "direct_path": "/m/%d" % self._ids,
                                        "media_key": base64.b64encode(os.urandom(32)).decode(),
                                        "enc_filehash": base64.b64encode(
                                            hashlib.sha256(raw).digest()).decode()})
        if method == "POST" and path == "/api/logout":
            with self.lock:
                self.sessions.discard(doc.get("session"))
            self._push({"type": "logout", "session": doc.get("session")})
            return self._reply(h, 200, {"ok": True})

        # test controls over HTTP (the same as the methods above)
        if method == "POST" and path == "/control/scan":
            return self._reply(h, 200, {"session": self.scan()})
        if method == "POST" and path == "/control/inbound":
            mid = self.inbound(doc.get("from", "15557654321@c.us"), doc.get("text", ""),
                               doc.get("media"), doc.get("id"))
            return self._reply(h, 200, {"id": mid})
        if method == "POST" and path == "/control/ack":
            self.ack(doc["id"], doc["state"])
            return self._reply(h, 200, {"ok": True})
        if method == "POST" and path == "/control/logout":
            self.logout()
            return self._reply(h, 200, {"ok": True})
        if method == "GET" and path == "/control/sent":
            with self.lock:
                return self._reply(h, 200, {"sent": self.sent})
        if method == "GET" and path == "/control/qr":
            with self.lock:
                doc = {"qr": self.qrs[-1][1] if self.qrs else None, "count": len(self.qrs)}
                if "ref" in q:  # was this text ever shown by a page?
                    doc["shown"] = any(ref == q["ref"] for _, ref in self.qrs)
                return self._reply(h, 200, doc)
        return self._reply(h, 404, {"error": "not found"})


if __name__ == "__main__":  # python3 whatsweb.py [--port N] [--rotate-ms MS]
    import argparse
    import signal
    import sys
    ap = argparse.ArgumentParser(description="the WhatsApp Web fixture on 127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--rotate-ms", type=int, default=1500, help="QR rotation period")
    args = ap.parse_args()
    f = FakeWhatsWeb(qr_rotate_ms=args.rotate_ms).start(args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        f.close()
