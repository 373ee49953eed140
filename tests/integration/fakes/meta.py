"""A fake Graph API for the Meta family: the WhatsApp Cloud API (checked
against the v23.0 OpenAPI schemas in tests/fixtures/providers/
whatsapp-schemas.json) and the Messenger / Instagram Send API, plus a
webhook sender that signs like Meta: X-Hub-Signature-256: sha256=<hex
HMAC-SHA256(app secret, raw body)>.

Errors are Graph's: {"error":{"message","type","code","error_subcode",
"error_data","fbtrace_id"}}. A wrong or missing token is 401 with code 190
(OAuthException); a body the spec does not allow is 400 with code 100 and
lands in .errors.
"""

import hashlib
import hmac
import itertools
import json
import re

from .common import SchemaChecker, Server, fixture, parse_params

WA_SCHEMAS = fixture("whatsapp-schemas.json")
WA_CHECK = SchemaChecker(WA_SCHEMAS)


def graph_error(status, code, message, etype="OAuthException", subcode=None, details=None,
                headers=None):
    err = {"message": message, "type": etype, "code": code, "fbtrace_id": "AbCdEfGh123"}
    if subcode is not None:
        err["error_subcode"] = subcode
    if details is not None:
        err["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return status, dict(headers or {}), {"error": err}


def sign(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_webhook(d, path, payload, secret=None, signature=None):
    """POST a webhook to the daemon the way Meta does; signature overrides."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if signature is None and secret is not None:
        signature = sign(secret, body)
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return d.post(path, body, headers=headers)


class FakeGraph(Server):
    """token: the access token it accepts; phone_number_id: the WhatsApp number;
    page_id: the Messenger page / Instagram account behind /me."""

    def __init__(self, token, phone_number_id="106540352242922", page_id="1357924680"):
        super().__init__()
        self.token = token
        self.phone = phone_number_id
        self.page_id = page_id
        self.scripts = []  # answers for the next /messages requests, in order
        self.ids = itertools.count(1)
        self.profile = None  # last messenger_profile body

    def script(self, *answers):
        with self.lock:
            self.scripts.extend(answers)

    def answer(self, rec):
        status, headers, body = self._answer(rec)
        return status, headers, json.dumps(body).encode()

    def _answer(self, rec):
        auth = rec.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None:
            from urllib.parse import parse_qs, urlsplit
            token = (parse_qs(urlsplit(rec.path).query).get("access_token") or [None])[0]
        if token != self.token:
            return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        m = re.match(r"^/(v\d+\.\d+)/([^/]+)(?:/([a-z_]+))?$", rec.route)
        if not m:
            return graph_error(400, 2500, "Unknown path components: %s" % rec.route)
        node, edge = m.group(2), m.group(3)
        try:
            rec.params = parse_params(rec) if rec.method == "POST" else {}
        except ValueError as exc:
            self.violation(str(exc))
            return graph_error(400, 100, "(#100) Invalid parameter")
        if node == self.phone:
            if rec.method == "GET" and edge is None:
                return 200, {}, {"verified_name": "Test Number", "display_phone_number":
                                 "+1 555-0100", "id": self.phone, "quality_rating": "GREEN"}
            if rec.method == "POST" and edge == "messages":
                return self._wa_message(rec)
            if rec.method == "POST" and edge == "media":
                return self._wa_media(rec)
        if node in ("me", self.page_id):
            if rec.method == "POST" and edge == "messages":
                return self._send_api(rec)
            if rec.method == "POST" and edge == "messenger_profile":
                with self.lock:
                    self.profile = rec.params
                return 200, {}, {"result": "success"}
            if rec.method == "GET" and edge is None:
                return 200, {}, {"id": self.page_id, "name": "Test Page"}
        return graph_error(400, 100, "(#100) Unsupported %s request. Object with ID '%s' does "
                                     "not exist" % (rec.method.lower(), node),
                           etype="GraphMethodException", subcode=33)

    def _scripted(self):
        with self.lock:
            return self.scripts.pop(0) if self.scripts else None

    def _wa_message(self, rec):
        p = rec.params
        errs = WA_CHECK.check(p, {"$ref": "#/components/schemas/Message"})
        if p.get("messaging_product") != "whatsapp":
            errs.append("messaging_product must be whatsapp")
        if errs:
            for e in errs:
                self.violation(e)
            return graph_error(400, 100, "(#100) Invalid parameter", details="; ".join(errs))
        s = self._scripted()
        if s is not None:
            return s
        to = p["to"]
        return 200, {}, {"messaging_product": "whatsapp",
                         "contacts": [{"input": to, "wa_id": re.sub(r"\D", "", to)}],
                         "messages": [{"id": "wamid.FAKE%06d" % next(self.ids)}]}

    def _wa_media(self, rec):
        p = rec.params
        errs = []
        if not rec.headers.get("content-type", "").startswith("multipart/form-data"):
            errs.append("media upload must be multipart/form-data")
        if p.get("messaging_product") != "whatsapp":
            errs.append("media upload: messaging_product must be whatsapp")
        if not isinstance(p.get("file"), dict):
            errs.append("media upload: no file part")
        if errs:
            for e in errs:
                self.violation(e)
            return graph_error(400, 100, "(#100) Invalid parameter", details="; ".join(errs))
        return 200, {}, {"id": "media%d" % next(self.ids)}

    def _send_api(self, rec):
        errs = self._upload_errors(rec) if self._is_upload(rec) else []
        p = rec.params
        if not isinstance(p.get("recipient"), dict) or "id" not in p["recipient"]:
            errs.append("recipient.id is required")
        msg = p.get("message")
        if not isinstance(msg, dict) or not ({"text", "attachment"} & set(msg)):
            errs.append("message needs text or attachment")
        elif "text" in msg and "attachment" in msg:
            errs.append("message has both text and attachment")
        if p.get("messaging_type") not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            errs.append("messaging_type must be RESPONSE, UPDATE or MESSAGE_TAG")
        # Graph API reference, Page Messages: reply_to is a parameter of the request (beside
        # recipient and message), the quoted message's mid; message holds only its content.
        if "reply_to" in p and (not isinstance(p["reply_to"], dict) or
                                set(p["reply_to"]) != {"mid"} or
                                not isinstance(p["reply_to"]["mid"], str)):
            errs.append("reply_to must be {\"mid\": \"<message id>\"}")
        if isinstance(msg, dict):
            extra = set(msg) - {"text", "attachment", "quick_replies", "metadata"}
            if extra:
                errs.append("message has unknown fields %s" % sorted(extra))
        att = msg.get("attachment") if isinstance(msg, dict) else None
        if isinstance(att, dict) and att.get("type") == "template":
            errs += self._template_errors(att.get("payload"))
        elif isinstance(att, dict):
            errs += self._media_errors(att, "filedata" in p)
        for q in (msg or {}).get("quick_replies", []) if isinstance(msg, dict) else []:
            if q.get("content_type") != "text" or not q.get("title") or not q.get("payload"):
                errs.append("quick reply needs content_type text, title and payload: %r" % q)
            if len(q.get("title", "")) > 20:
                errs.append("quick reply title over 20 characters")
        if errs:
            for e in errs:
                self.violation(e)
            return graph_error(400, 100, "(#100) " + "; ".join(errs))
        s = self._scripted()
        if s is not None:
            return s
        answer = {"recipient_id": p["recipient"]["id"], "message_id": "m_FAKE%06d" % next(self.ids)}
        if "filedata" in p:
            answer["attachment_id"] = "%d" % (1857777774821000 + next(self.ids))
        return 200, {}, answer

    @staticmethod
    def _is_upload(rec):
        return rec.headers.get("content-type", "").startswith("multipart/form-data")

    def _upload_errors(self, rec):
        """The Send API with an uploaded file (developers.facebook.com/docs/messenger-platform/
        send-messages/saving-assets, "from your local file system"): multipart/form-data with
        recipient and message as JSON text fields (messaging_type as text) and the file as
        filedata with its Content-Type. The JSON fields are decoded into rec.params here."""
        p = rec.params
        errs = []
        for k in ("recipient", "message", "reply_to"):
            if k in p:
                try:
                    p[k] = json.loads(p[k]) if isinstance(p[k], str) else None
                except ValueError:
                    p[k] = None
                if not isinstance(p[k], dict):
                    errs.append("upload: %s must be a JSON object text field" % k)
        fd = p.get("filedata")
        if not isinstance(fd, dict) or not fd.get("data"):
            errs.append("upload: no filedata file part")
        elif not fd.get("content_type") or not fd.get("filename"):
            errs.append("upload: filedata needs a filename and a Content-Type")
        if not isinstance(p.get("message"), dict) or "attachment" not in p["message"]:
            errs.append("upload: message.attachment is required with filedata")
        return errs

    @staticmethod
    def _media_errors(att, uploaded):
        """A media attachment: type image|video|audio|file; payload url, attachment_id, or
        neither when the file is uploaded as filedata (then not both)."""
        errs = []
        if att.get("type") not in ("image", "video", "audio", "file"):
            errs.append("attachment type %r is not image, video, audio, file or template"
                        % att.get("type"))
        pl = att.get("payload")
        if not isinstance(pl, dict):
            return errs + ["attachment payload must be an object"]
        sources = [k for k in ("url", "attachment_id") if k in pl]
        if uploaded and sources:
            errs.append("an uploaded attachment's payload carries no %s" % sources[0])
        elif not uploaded and len(sources) != 1:
            errs.append("attachment payload needs exactly one of url and attachment_id")
        return errs

    @staticmethod
    def _template_errors(t):
        """Send API templates (developers.facebook.com/docs/messenger-platform/send-messages/
        template/button, .../generic): payload.template_type, button: text (<= 640) and 1-3
        buttons; generic: 1-10 elements, each with a title (<= 80) and at most 3 buttons."""
        if not isinstance(t, dict) or not isinstance(t.get("template_type"), str):
            return ["template payload needs template_type"]
        errs = []

        def buttons(bs, where, need):
            if bs is None and not need:
                return
            if not isinstance(bs, list) or not (1 <= len(bs) <= 3):
                errs.append("%s: 1 to 3 buttons" % where)
                return
            for b in bs:
                kind = b.get("type") if isinstance(b, dict) else None
                if kind == "postback" and not (b.get("title") and b.get("payload")):
                    errs.append("%s: a postback button needs title and payload" % where)
                elif kind == "web_url" and not (b.get("title") and b.get("url")):
                    errs.append("%s: a web_url button needs title and url" % where)
                elif kind not in ("postback", "web_url", "phone_number", "account_link",
                                  "account_unlink", "game_play"):
                    errs.append("%s: unknown button type %r" % (where, kind))

        kind = t["template_type"]
        if kind == "button":
            if not isinstance(t.get("text"), str) or not t["text"] or len(t["text"]) > 640:
                errs.append("button template needs text (1-640)")
            buttons(t.get("buttons"), "button template", True)
        elif kind == "generic":
            els = t.get("elements")
            if not isinstance(els, list) or not (1 <= len(els) <= 10):
                errs.append("generic template needs 1 to 10 elements")
            else:
                for i, e in enumerate(els):
                    if not isinstance(e, dict) or not e.get("title") or len(e["title"]) > 80:
                        errs.append("generic element %d needs a title (1-80)" % i)
                    else:
                        buttons(e.get("buttons"), "generic element %d" % i, False)
        elif kind not in ("media", "receipt", "customer_feedback", "product"):
            errs.append("unknown template_type %r" % kind)
        return errs

    def messages(self):
        return self.all(lambda r: r.route.endswith("/messages") and r.params is not None)
