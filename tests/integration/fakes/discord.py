"""A fake Discord (standard library only): REST (messages, command
registration, interaction callbacks) and the Gateway, on 127.0.0.1, plus
Ed25519 signing of interaction webhooks with a key made per test (through
the openssl command line tool).

REST follows the documentation: `Authorization: Bot <token>`; each channel's
POST /channels/{id}/messages is a bucket of `limit` requests per `window`
seconds, announced with X-RateLimit-Limit/-Remaining/-Reset/-Reset-After/
-Bucket; a request over the limit gets 429 with Retry-After,
X-RateLimit-Scope and {"message","retry_after","global"} (and is counted in
`violations`: a well-behaved client makes none).

Gateway: Hello (op 10) with heartbeat_interval; Identify (op 2) -> READY
with session_id and resume_gateway_url (this server, path /resume);
Heartbeat (op 1) -> ACK (op 11) unless `ack` is False; Resume (op 6) ->
the dispatches the session missed after `seq`, then RESUMED; an unknown
session -> Invalid Session (op 9, false). `dispatch(t, d)` sends (or, while
no connection is up, keeps for the resume) a numbered dispatch.
"""

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fakeprovider import _Base  # noqa: E402

from .wsserver import WSServer  # noqa: E402

BOT_TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.GfakeT.fake-bot-token-for-tests"
BOT_ID = "1098765432109876543"
APP_ID = "1098765432109876000"


class Ed25519Key:
    """An Ed25519 key pair made with `openssl genpkey`; signs like Discord does."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sb-ed25519-")
        self.path = os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", self.path],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "pkey", "-in", self.path, "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.public_hex = der[-32:].hex()

    def sign(self, message):
        msg = os.path.join(self.dir, "msg")
        with open(msg, "wb") as f:
            f.write(message)
        sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", self.path, "-rawin",
                              "-in", msg], check=True, capture_output=True).stdout
        assert len(sig) == 64
        return sig.hex()

    def headers(self, body, timestamp=None):
        ts = str(int(time.time()) if timestamp is None else timestamp)
        return {"X-Signature-Ed25519": self.sign(ts.encode() + body),
                "X-Signature-Timestamp": ts, "Content-Type": "application/json"}


class FakeDiscord(_Base):
    def __init__(self, limit=5, window=1.0, heartbeat_interval=45000):
        super().__init__()
        self.limit = limit
        self.window = window
        self.buckets = {}  # channel -> [window_end, count]
        self.violations = 0
        self.queue = []  # scripted answers for message posts
        self.ids = itertools.count(1)
        self.heartbeat_interval = heartbeat_interval
        self.ack = True
        self.sessions = {}  # session_id -> {"seq": n, "log": [(s, t, d)]}
        self.session_ids = itertools.count(1)
        self.current = None  # (conn, session_id) of the live identified connection
        self.identifies = []
        self.resumes = []
        self.heartbeats = []  # (monotonic time, d)
        self.gw_lock = threading.RLock()
        self.gw = WSServer(on_connect=self._hello, on_message=self._on_gateway)

    # -- lifecycle ----------------------------------------------------------
    def start(self):
        self.gw.start()
        return super().start()

    def close(self):
        self.gw.close()
        super().close()

    @property
    def api_base(self):
        return self.url + "/api/v10"

    def script(self, *answers):
        with self.lock:
            self.queue.extend(answers)

    def posts(self, channel=None):
        return [r for r in self.all() if r.method == "POST" and
                re.match(r"^/api/v10/channels/%s/messages$" % (channel or r"\d+"), r.path)]

    # -- REST -----------------------------------------------------------------
    @staticmethod
    def _json(status, obj, headers=None):
        return status, dict(headers or {}), json.dumps(obj).encode(), 0.0

    def answer(self, rec):
        if rec.headers.get("authorization") != "Bot " + BOT_TOKEN:
            return self._json(401, {"message": "401: Unauthorized", "code": 0})
        m = re.match(r"^/api/v10/channels/(\d+)/messages$", rec.path)
        if m and rec.method == "POST":
            return self._message(rec, m.group(1))
        if re.match(r"^/api/v10/applications/%s/commands$" % APP_ID, rec.path) and \
                rec.method == "PUT":
            cmds = rec.json
            return self._json(200, [dict(c, id=str(900 + i), application_id=APP_ID)
                                    for i, c in enumerate(cmds or [])])
        if re.match(r"^/api/v10/interactions/\d+/[^/]+/callback$", rec.path):
            return 204, {}, b"", 0.0
        return self._json(404, {"message": "404: Not Found", "code": 0})

    def _message(self, rec, channel):
        now = time.monotonic()
        with self.lock:
            b = self.buckets.get(channel)
            if b is None or now >= b[0]:
                b = self.buckets[channel] = [now + self.window, 0]
            b[1] += 1
            count, end = b[1], b[0]
            scripted = self.queue.pop(0) if self.queue else None
        bucket_headers = {"X-RateLimit-Limit": str(self.limit),
                          "X-RateLimit-Remaining": str(max(0, self.limit - count)),
                          "X-RateLimit-Reset": "%.3f" % (time.time() + (end - now)),
                          "X-RateLimit-Reset-After": "%.3f" % (end - now),
                          "X-RateLimit-Bucket": "fakebucket%s" % channel[-4:]}
        if count > self.limit:
            with self.lock:
                self.violations += 1
            ra = round(end - now, 3)
            h = dict(bucket_headers, **{"Retry-After": str(max(1, int(ra + 0.999))),
                                        "X-RateLimit-Scope": "user"})
            return self._json(429, {"message": "You are being rate limited.", "retry_after": ra,
                                    "global": False}, h)
        if scripted is not None:
            if scripted["kind"] == "429":
                h = {"Retry-After": str(int(scripted["retry_after"] + 0.999)),
                     "X-RateLimit-Scope": "global" if scripted["global"] else "user"}
                if scripted["global"]:
                    h["X-RateLimit-Global"] = "true"
                return self._json(429, {"message": "You are being rate limited.",
                                        "retry_after": scripted["retry_after"],
                                        "global": scripted["global"]}, h)
            return self._json(scripted["status"], {"message": scripted["message"],
                                                   "code": scripted["code"]}, bucket_headers)
        body = rec.json or {}
        msg = {"id": str(1200000000000000000 + next(self.ids)), "channel_id": channel,
               "content": body.get("content", ""), "author": {"id": BOT_ID, "bot": True},
               "embeds": body.get("embeds", []), "components": body.get("components", []),
               "type": 19 if body.get("message_reference") else 0}
        return self._json(200, msg, bucket_headers)

    # -- Gateway ----------------------------------------------------------------
    def _hello(self, conn):
        conn.send_json({"op": 10, "s": None, "t": None,
                        "d": {"heartbeat_interval": self.heartbeat_interval}})

    def _send_dispatch(self, conn, session, t, d):
        session["seq"] += 1
        s = session["seq"]
        session["log"].append((s, t, d))
        if conn is not None:
            conn.send_json({"op": 0, "s": s, "t": t, "d": d})
        return s

    def _on_gateway(self, conn, text):
        msg = json.loads(text)
        op, d = msg.get("op"), msg.get("d")
        with self.gw_lock:
            if op == 1:
                self.heartbeats.append((time.monotonic(), d))
                if self.ack:
                    conn.send_json({"op": 11})
            elif op == 2:
                self.identifies.append((conn, d))
                sid = "sess-%d" % next(self.session_ids)
                session = self.sessions[sid] = {"seq": 0, "log": []}
                self.current = (conn, sid)
                self._send_dispatch(conn, session, "READY", {
                    "v": 10, "user": {"id": BOT_ID, "username": "fakebot", "bot": True},
                    "guilds": [], "session_id": sid,
                    "resume_gateway_url": self.gw.url + "/resume",
                    "application": {"id": APP_ID, "flags": 0}})
            elif op == 6:
                self.resumes.append((conn, d))
                session = self.sessions.get(d.get("session_id"))
                if session is None or d.get("token") != BOT_TOKEN:
                    conn.send_json({"op": 9, "d": False})
                    return
                for s, t, dd in session["log"]:
                    if s > d.get("seq", 0):
                        conn.send_json({"op": 0, "s": s, "t": t, "d": dd})
                self.current = (conn, d["session_id"])
                self._send_dispatch(conn, session, "RESUMED", {})

    def dispatch(self, t, d):
        """Send a dispatch on the live session (kept for a resume if it is down)."""
        with self.gw_lock:
            conn, sid = self.current
            live = conn if not conn.closed else None
            return self._send_dispatch(live, self.sessions[sid], t, d)

    def live_conn(self):
        with self.gw_lock:
            return self.current[0] if self.current else None

    def wait_identified(self, n=1, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.identifies) < n:
            if time.monotonic() > deadline:
                raise AssertionError("no Identify #%d (have %d)" % (n, len(self.identifies)))
            time.sleep(0.02)
        return self.identifies[n - 1]

    def wait_resumed(self, n=1, timeout=15.0):
        deadline = time.monotonic() + timeout
        while len(self.resumes) < n:
            if time.monotonic() > deadline:
                raise AssertionError("no Resume #%d (have %d)" % (n, len(self.resumes)))
            time.sleep(0.02)
        return self.resumes[n - 1]


def rest_429(retry_after=1.0, global_=False):
    return {"kind": "429", "retry_after": retry_after, "global": global_}


def rest_error(status=403, message="Missing Permissions", code=50013):
    return {"kind": "error", "status": status, "message": message, "code": code}


def message_create(content="hello", mid="1300000000000000001", author_id="2000000000000000001",
                   channel="1100000000000000001"):
    return {"id": mid, "channel_id": channel, "guild_id": "1000000000000000001",
            "author": {"id": author_id, "username": "alice", "discriminator": "0",
                       "global_name": "Alice"},
            "content": content, "timestamp": "2026-11-26T12:00:00.000000+00:00",
            "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": False, "type": 0}


def command_interaction(iid="1400000000000000001", name="weather", token="itok-1"):
    return {"id": iid, "application_id": APP_ID, "type": 2, "token": token, "version": 1,
            "channel_id": "1100000000000000001", "guild_id": "1000000000000000001",
            "member": {"user": {"id": "2000000000000000001", "username": "alice"}},
            "data": {"id": "900", "name": name, "type": 1,
                     "options": [{"name": "city", "type": 3, "value": "Paris"}]}}


def component_interaction(iid="1400000000000000002", custom_id="y", token="itok-2"):
    return {"id": iid, "application_id": APP_ID, "type": 3, "token": token, "version": 1,
            "channel_id": "1100000000000000001", "guild_id": "1000000000000000001",
            "member": {"user": {"id": "2000000000000000001", "username": "alice"}},
            "message": {"id": "1200000000000000001", "channel_id": "1100000000000000001"},
            "data": {"custom_id": custom_id, "component_type": 2}}
