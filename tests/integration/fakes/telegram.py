"""A fake Telegram Bot API (core.telegram.org/bots/api), checked against the
method and type field lists of Bot API 10.1 (tests/fixtures/providers/
telegram-methods.json, from telegram/api.json).

    tg = FakeTelegram(token).start()
    tg.push_update({...})          # queued for getUpdates (update_id assigned)
    tg.script("sendMessage", tg.rate_limited(2), tg.ok_answer())

Answers are the Bot API's: {"ok":true,"result":...} or {"ok":false,
"error_code":N,"description":"...","parameters":{"retry_after":N}}. A wrong
token gets 401 Unauthorized, an unknown method 404 Not Found, getUpdates
while a webhook is set 409 Conflict, a parameter the method does not have or
a missing required one 400 Bad Request (and lands in tg.errors).
"""

import itertools
import json
import re
import time

from .common import Server, fixture, parse_params

SPEC = fixture("telegram-methods.json")
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def _fields(kind, name):
    return {f["name"]: f for f in SPEC[kind][name]}


class FakeTelegram(Server):
    def __init__(self, token):
        super().__init__()
        self.token = token
        self.webhook = None  # {"url", "secret_token", ...} while set
        self.updates = []  # pending updates, update_id ascending
        self.next_update_id = 1000
        self.poll_offsets = []  # offset of every getUpdates, in order
        self.scripts = {}  # method -> [answer, ...]
        self.message_ids = itertools.count(500)

    # -- answers ---------------------------------------------------------------------

    @staticmethod
    def ok_answer(result=True):
        return 200, {"ok": True, "result": result}

    @staticmethod
    def error(code, description, parameters=None):
        body = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return code, body

    def rate_limited(self, seconds):
        return self.error(429, "Too Many Requests: retry after %d" % seconds,
                          {"retry_after": seconds})

    def script(self, method, *answers):
        with self.lock:
            self.scripts.setdefault(method, []).extend(answers)

    def push_update(self, **fields):
        with self.cond:
            self.next_update_id += 1
            upd = dict(fields, update_id=self.next_update_id)
            self.updates.append(upd)
            self.cond.notify_all()
            return upd

    # -- checks ----------------------------------------------------------------------

    def _check_object(self, where, type_name, obj):
        if not isinstance(obj, dict):
            return ["%s must be a %s object" % (where, type_name)]
        fields = _fields("types", type_name)
        errs = ["%s: %s has no field %r" % (where, type_name, k) for k in obj if k not in fields]
        errs += ["%s: required %s.%s missing" % (where, type_name, k)
                 for k, f in fields.items() if f["required"] and k not in obj]
        return errs

    def check(self, method, params):
        fields = _fields("methods", method)
        errs = ["%s has no parameter %r" % (method, k) for k in params if k not in fields]
        errs += ["%s: required parameter %r missing" % (method, k)
                 for k, f in fields.items() if f["required"] and k not in params]
        for k, v in params.items():
            if k not in fields:
                continue
            types = fields[k]["types"]
            # multipart/urlencoded carry JSON-serialised objects and numbers as strings
            if isinstance(v, str) and (k in ("reply_markup", "reply_parameters")
                                       or types == ["Integer"] or types == ["Boolean"]):
                try:
                    v = json.loads(v)
                except ValueError:
                    errs.append("%s: %s is not JSON" % (method, k))
                    continue
            if k == "chat_id" and not isinstance(v, (int, str)):
                errs.append("chat_id must be Integer or String")
            if types == ["Integer"] and not isinstance(v, int):
                errs.append("%s: %s must be an Integer, got %r" % (method, k, v))
            if k == "reply_parameters":
                errs += self._check_object(k, "ReplyParameters", v)
            if k == "reply_markup":
                if isinstance(v, dict) and "inline_keyboard" in v:
                    errs += self._check_object(k, "InlineKeyboardMarkup", v)
                    for row in v.get("inline_keyboard", []):
                        for b in row:
                            errs += self._check_object(k, "InlineKeyboardButton", b)
                            if len(b.get("callback_data", "").encode()) > 64:
                                errs.append("callback_data longer than 64 bytes")
                elif isinstance(v, dict) and "keyboard" in v:
                    errs += self._check_object(k, "ReplyKeyboardMarkup", v)
                    for row in v.get("keyboard", []):
                        for b in row:
                            errs += self._check_object(k, "KeyboardButton", b)
                else:
                    errs.append("unexpected reply_markup %r" % (v,))
            if k == "parse_mode" and v not in ("MarkdownV2", "HTML", "Markdown"):
                errs.append("parse_mode %r" % v)
            if k == "secret_token" and not SECRET_RE.match(v):
                errs.append("secret_token %r: 1-256 of A-Z a-z 0-9 _ -" % v)
        return errs

    # -- serving ---------------------------------------------------------------------

    def answer(self, rec):
        status, body = self._answer(rec)
        return status, {}, json.dumps(body).encode()

    def _answer(self, rec):
        m = re.match(r"^/bot([^/]+)/([A-Za-z]+)$", rec.route)
        if not m:
            return self.error(404, "Not Found")
        token, method = m.group(1), m.group(2)
        if token != self.token:
            return self.error(401, "Unauthorized")
        if method not in SPEC["methods"]:
            return self.error(404, "Not Found: method not found")
        try:
            rec.params = parse_params(rec)
        except ValueError as exc:
            self.violation("%s: %s" % (method, exc))
            return self.error(400, "Bad Request: %s" % exc)
        errs = self.check(method, rec.params)
        if errs:
            for e in errs:
                self.violation(e)
            return self.error(400, "Bad Request: " + "; ".join(errs))
        with self.lock:
            queue = self.scripts.get(method)
            scripted = queue.pop(0) if queue else None
        if scripted is not None:
            return scripted
        return getattr(self, "_m_" + method, self._m_default)(rec, method, rec.params)

    def _m_default(self, rec, method, p):
        return self.ok_answer(True)

    def _m_setWebhook(self, rec, method, p):
        with self.lock:
            self.webhook = dict(p)
        return 200, {"ok": True, "result": True, "description": "Webhook was set"}

    def _m_deleteWebhook(self, rec, method, p):
        with self.lock:
            was = self.webhook
            self.webhook = None
        return 200, {"ok": True, "result": True,
                     "description": "Webhook was deleted" if was else "Webhook is already deleted"}

    def _m_getUpdates(self, rec, method, p):
        offset = int(p.get("offset", 0))
        timeout = int(p.get("timeout", 0))
        limit = int(p.get("limit", 100))
        deadline = time.monotonic() + timeout
        with self.cond:
            self.poll_offsets.append(offset)
            if self.webhook is not None:
                return self.error(409, "Conflict: can't use getUpdates method while webhook is "
                                       "active; use deleteWebhook to delete the webhook first")
            # An offset confirms every update below it: they are gone for good.
            if offset > 0:
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
            while True:
                ready = [u for u in self.updates if u["update_id"] >= offset][:limit]
                left = deadline - time.monotonic()
                if ready or left <= 0 or self.closing.is_set():
                    return self.ok_answer(ready)
                self.cond.wait(min(left, 0.1))

    def _sent(self, p, extra):
        chat = p["chat_id"]
        try:
            chat = int(chat)
        except (TypeError, ValueError):
            pass
        msg = {"message_id": next(self.message_ids), "date": int(time.time()),
               "chat": {"id": chat, "type": "private"}}
        msg.update(extra)
        return self.ok_answer(msg)

    def _m_sendMessage(self, rec, method, p):
        return self._sent(p, {"text": p["text"]})

    def _media(self, kind, p):
        v = p[kind]
        if isinstance(v, dict):
            ref = {"file_id": "upload-%d" % len(v["data"]), "file_unique_id": "u1"}
        else:
            ref = {"file_id": "url:" + v, "file_unique_id": "u1"}
        extra = {kind: [ref] if kind == "photo" else ref}
        if "caption" in p:
            extra["caption"] = p["caption"]
        return self._sent(p, extra)

    def _m_sendPhoto(self, rec, method, p):
        return self._media("photo", p)

    def _m_sendDocument(self, rec, method, p):
        return self._media("document", p)

    def _m_sendVideo(self, rec, method, p):
        return self._media("video", p)

    def _m_sendAudio(self, rec, method, p):
        return self._media("audio", p)

    # -- helpers for tests -----------------------------------------------------------

    def calls(self, method):
        return self.all(lambda r: r.route.endswith("/" + method) and r.params is not None)
