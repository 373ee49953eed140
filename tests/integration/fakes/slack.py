"""A fake Slack (standard library only): the Web API methods the plugin calls
and the Socket Mode WebSocket, on 127.0.0.1.

Wire format as documented (api.slack.com): chat.postMessage takes JSON with
`Authorization: Bearer xoxb-...` and answers {"ok":true,"channel","ts",
"message"} or {"ok":false,"error"}; rate limits are HTTP 429 with
Retry-After seconds. apps.connections.open takes the app-level token
(xapp-...) and answers {"ok":true,"url":"wss://..."}; the socket says
{"type":"hello",...} first, then sends envelopes and wants each acked with
{"envelope_id"}; {"type":"disconnect","reason":...} asks for a new
connection. Events reaching a webhook are signed like Slack signs them.

File uploads (the flow that replaced files.upload): files.getUploadURLExternal
takes `filename` and `length` (form fields or query parameters, bot token)
and answers {"ok":true,"upload_url","file_id"}; the bytes are POSTed to
upload_url (answered "OK - <length>"; here a length other than the one
declared is refused with 400); files.completeUploadExternal takes
`files` (a JSON array of {"id","title"}), `channel_id`, `initial_comment`,
`thread_ts` (or `blocks`) and answers {"ok":true,"files":[{"id","title"}]};
a file id that was never uploaded is "file_not_found".
"""

import hashlib
import hmac
import itertools
import json
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fakeprovider import _Base  # noqa: E402

from .wsserver import WSServer  # noqa: E402

BOT_TOKEN = "xoxb-1111-2222-faketoken"
APP_TOKEN = "xapp-1-A111-3333-fakeapptoken"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def sign(secret, timestamp, body):
    """X-Slack-Signature for body (bytes) at timestamp (int or str)."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signed_headers(body, secret=SIGNING_SECRET, timestamp=None, content_type="application/json"):
    ts = int(time.time()) if timestamp is None else timestamp
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sign(secret, ts, body),
            "Content-Type": content_type}


def slack_ok(**fields):
    return {"kind": "ok", "fields": fields}


def slack_error(error, status=200, retry_after=None):
    return {"kind": "error", "error": error, "status": status, "retry_after": retry_after}


def http_429(retry_after=1):
    return {"kind": "429", "retry_after": retry_after}


class FakeSlack(_Base):
    def __init__(self):
        super().__init__()
        self.queue = []  # answers for chat.postMessage, in order
        # scripted answers for other methods, in order: method name -> list
        self.method_queues = {"files.getUploadURLExternal": [],
                              "files.completeUploadExternal": []}
        self.files = {}  # file id -> {"filename", "length", "data" (bytes or None), "shared"}
        self.file_ids = itertools.count(1)
        self.ts = itertools.count(1)
        self.tickets = itertools.count(1)
        self.open_error = None  # e.g. "invalid_auth": apps.connections.open fails
        self.ws = WSServer(on_connect=self._hello)
        self.send_hello = True

    def start(self):
        self.ws.start()
        return super().start()

    def close(self):
        self.ws.close()
        super().close()

    def script(self, *answers):
        with self.lock:
            self.queue.extend(answers)

    def script_method(self, method, *answers):
        with self.lock:
            self.method_queues[method].extend(answers)

    def posts(self):
        return self.all("/api/chat.postMessage")

    def calls(self, method):
        """Requests to a Web API method, query string or not."""
        with self.lock:
            return [r for r in self.requests
                    if urllib.parse.urlsplit(r.path).path == "/api/" + method]

    def uploads(self):
        with self.lock:
            return [r for r in self.requests if r.path.startswith("/upload/")]

    @staticmethod
    def params(rec):
        """A Web API request's arguments: query parameters, then form or JSON body fields."""
        out = {k: v[-1] for k, v in
               urllib.parse.parse_qs(urllib.parse.urlsplit(rec.path).query).items()}
        ctype = rec.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            out.update({k: v[-1] for k, v in
                        urllib.parse.parse_qs(rec.body.decode("utf-8"),
                                              keep_blank_values=True).items()})
        elif ctype.startswith("application/json") and isinstance(rec.json, dict):
            out.update(rec.json)
        return out

    def _scripted(self, method):
        """The next scripted answer for method as a response, or None (go on normally)."""
        with self.lock:
            q = self.method_queues[method]
            action = q.pop(0) if q else None
        if action is None or action["kind"] == "ok":
            return None
        if action["kind"] == "429":
            return self._json(429, {"ok": False, "error": "ratelimited"},
                              {"Retry-After": str(action["retry_after"])})
        headers = {}
        if action["retry_after"] is not None:
            headers["Retry-After"] = str(action["retry_after"])
        return self._json(action["status"], {"ok": False, "error": action["error"]}, headers)

    def _get_upload_url(self, rec):
        if rec.headers.get("authorization", "") != "Bearer " + BOT_TOKEN:
            return self._json(200, {"ok": False, "error": "invalid_auth"})
        args = self.params(rec)
        scripted = self._scripted("files.getUploadURLExternal")
        if scripted:
            return scripted
        if not args.get("filename") or not str(args.get("length", "")).isdigit():
            return self._json(200, {"ok": False, "error": "invalid_arguments"})
        length = int(args["length"])
        if length <= 0:
            return self._json(200, {"ok": False, "error": "invalid_arguments"})
        file_id = "F%09d" % next(self.file_ids)
        with self.lock:
            self.files[file_id] = {"filename": args["filename"], "length": length,
                                   "data": None, "shared": None}
        return self._json(200, {"ok": True, "upload_url": "%s/upload/v1/%s" % (self.url, file_id),
                                "file_id": file_id})

    def _upload(self, rec):
        file_id = urllib.parse.urlsplit(rec.path).path.rsplit("/", 1)[-1]
        with self.lock:
            f = self.files.get(file_id)
            if f is None:
                return 404, {}, b"not found", 0.0
            if len(rec.body) != f["length"]:
                return 400, {}, b"length mismatch", 0.0
            f["data"] = rec.body
        return 200, {}, ("OK - %d" % len(rec.body)).encode(), 0.0

    def _complete(self, rec):
        if rec.headers.get("authorization", "") != "Bearer " + BOT_TOKEN:
            return self._json(200, {"ok": False, "error": "invalid_auth"})
        scripted = self._scripted("files.completeUploadExternal")
        if scripted:
            return scripted
        args = self.params(rec)
        try:
            files = json.loads(args["files"]) if isinstance(args.get("files"), str) \
                else args.get("files")
        except ValueError:
            files = None
        if not isinstance(files, list) or not files or \
                not all(isinstance(f, dict) and f.get("id") for f in files):
            return self._json(200, {"ok": False, "error": "invalid_arguments"})
        out = []
        with self.lock:
            for f in files:
                known = self.files.get(f["id"])
                if known is None or known["data"] is None:
                    return self._json(200, {"ok": False, "error": "file_not_found"})
            for f in files:
                self.files[f["id"]]["shared"] = args.get("channel_id")
                out.append({"id": f["id"], "title": f.get("title") or
                            self.files[f["id"]]["filename"]})
        return self._json(200, {"ok": True, "files": out})

    def opens(self):
        return self.all("/api/apps.connections.open")

    def _hello(self, conn):
        if self.send_hello:
            conn.send_json({"type": "hello", "num_connections": 1,
                            "debug_info": {"host": "applink-fake", "build_number": 1,
                                           "approximate_connection_time": 18060},
                            "connection_info": {"app_id": "A111"}})

    @staticmethod
    def _json(status, obj, headers=None):
        return status, dict(headers or {}), json.dumps(obj).encode(), 0.0

    def answer(self, rec):
        auth = rec.headers.get("authorization", "")
        path = urllib.parse.urlsplit(rec.path).path
        if path == "/api/files.getUploadURLExternal":
            return self._get_upload_url(rec)
        if path == "/api/files.completeUploadExternal":
            return self._complete(rec)
        if path.startswith("/upload/v1/"):
            return self._upload(rec)
        if rec.path == "/api/apps.connections.open":
            if auth != "Bearer " + APP_TOKEN:
                return self._json(200, {"ok": False, "error": "invalid_auth"})
            if self.open_error:
                return self._json(200, {"ok": False, "error": self.open_error})
            return self._json(200, {"ok": True, "url": "%s/link/?ticket=%d&app_id=A111"
                                    % (self.ws.url, next(self.tickets))})
        if rec.path == "/api/chat.postMessage":
            if auth != "Bearer " + BOT_TOKEN:
                return self._json(200, {"ok": False, "error": "invalid_auth"})
            body = rec.json
            if not rec.headers.get("content-type", "").startswith("application/json") or \
                    not isinstance(body, dict):
                return self._json(200, {"ok": False, "error": "invalid_arguments"})
            if not body.get("channel"):
                return self._json(200, {"ok": False, "error": "channel_not_found"})
            if not body.get("text") and not body.get("blocks"):
                return self._json(200, {"ok": False, "error": "no_text"})
            with self.lock:
                action = self.queue.pop(0) if self.queue else slack_ok()
            if action["kind"] == "429":
                return self._json(429, {"ok": False, "error": "ratelimited"},
                                  {"Retry-After": str(action["retry_after"])})
            if action["kind"] == "error":
                headers = {}
                if action["retry_after"] is not None:
                    headers["Retry-After"] = str(action["retry_after"])
                return self._json(action["status"], {"ok": False, "error": action["error"]},
                                  headers)
            ts = "1700000000.%06d" % next(self.ts)
            msg = {"type": "message", "text": body.get("text", ""), "user": "U0BOT", "ts": ts,
                   "bot_id": "B0BOT"}
            if body.get("thread_ts"):
                msg["thread_ts"] = body["thread_ts"]
            out = {"ok": True, "channel": body["channel"], "ts": ts, "message": msg}
            out.update(action.get("fields", {}))
            return self._json(200, out)
        return self._json(404, {"ok": False, "error": "unknown_method"})


def event_callback(text="hello", user="U123", channel="C123", event_id="Ev0001", ts=None,
                   **event_fields):
    ev = {"type": "message", "channel": channel, "user": user, "text": text,
          "ts": ts or "1700000100.000100", "event_ts": ts or "1700000100.000100",
          "channel_type": "channel"}
    ev.update(event_fields)
    return {"token": "verification-token-unused", "team_id": "T123", "api_app_id": "A111",
            "event": ev, "type": "event_callback", "event_id": event_id,
            "event_time": int(time.time()), "authorizations": [], "is_ext_shared_channel": False}


def slash_command_form(command="/weather", text="94070", trigger_id="13345224609.738474920.8088"):
    return urllib.parse.urlencode({
        "token": "unused", "team_id": "T123", "team_domain": "example", "channel_id": "C123",
        "channel_name": "general", "user_id": "U123", "user_name": "alice", "command": command,
        "text": text, "api_app_id": "A111",
        "response_url": "https://hooks.slack.com/commands/T123/1/abc", "trigger_id": trigger_id,
    }).encode()


def block_actions_payload(action_id="y", value="y", trigger_id="1111.2222.aaaa"):
    return {"type": "block_actions", "user": {"id": "U123", "username": "alice"},
            "api_app_id": "A111", "token": "unused", "trigger_id": trigger_id,
            "team": {"id": "T123", "domain": "example"}, "channel": {"id": "C123"},
            "message": {"type": "message", "ts": "1700000000.000001", "text": "Pick one"},
            "response_url": "https://hooks.slack.com/actions/T123/1/abc",
            "actions": [{"action_id": action_id, "block_id": "b1", "value": value,
                         "type": "button", "action_ts": "1700000200.000001",
                         "text": {"type": "plain_text", "text": "Yes"}}]}
