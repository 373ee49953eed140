"""The slack plugin end to end: Events API requests (signatures good, bad,
stale; url_verification; retries deduplicated), slash commands and
interactive payloads, Socket Mode (envelopes acked, disconnect and
reconnect), chat.postMessage sends (bodies, 429, Slack errors) and file
uploads (getUploadURLExternal, the bytes, completeUploadExternal), all
against the fake Slack of fakes/slack.py."""

import base64
import json
import os
import time
import urllib.parse

import pytest

from conftest import base_config, free_port, plugin_dir, wait_until
from fakeprovider import SSE, FAST_OUTBOX, Subscriber, get_message, send, wait_state
from fakes.slack import (APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack, block_actions_payload,
                         event_callback, http_429, sign, signed_headers, slack_error,
                         slash_command_form)

HOOK = "/webhook/slack/sl"


@pytest.fixture
def fake():
    f = FakeSlack().start()
    yield f
    f.close()


def slack_plugins():
    return {"echo.so": os.path.join(plugin_dir(), "echo.so"),
            "slack.so": os.path.join(plugin_dir(), "slack.so")}


def start(make_daemon, fake, mode="http", **settings):
    cfg = base_config(free_port())
    cfg["plugins"]["slack"] = {"enabled": True}
    s = {"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET, "api_base": fake.url + "/api",
         "mode": mode}
    if mode == "socket":
        s["app_token"] = APP_TOKEN
    s.update(settings)
    cfg["instances"]["sl"] = {"provider": "slack", "settings": s}
    cfg["outbox"] = dict(FAST_OUTBOX)
    d = make_daemon(config=cfg, plugins=slack_plugins())

    def running():
        r = d.api("GET", "/v1/instances/sl")
        return r.status == 200 and r.json()["status"].get("running") is True
    wait_until(running, 10, what="instance sl running")
    return d


def post_signed(d, body, **kw):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = signed_headers(raw, **kw)
    return d.post(HOOK, raw, headers=headers)


def inbound(d):
    r = d.api("GET", "/v1/instances/sl/messages")
    assert r.status == 200, r
    doc = r.json()
    items = doc.get("messages", doc.get("items", doc.get("data")))
    return [m for m in items if m["direction"] == "in"]


# -- Events API over HTTP ------------------------------------------------------------------

def test_url_verification(make_daemon, fake):
    d = start(make_daemon, fake)
    body = {"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification"}
    r = post_signed(d, body)
    assert r.status == 200, r
    assert r.json() == {"challenge": body["challenge"]}
    # Unsigned, it is refused like anything else.
    r = d.post(HOOK, body)
    assert r.status == 401, r


def test_signatures_bad_stale_missing(make_daemon, fake):
    d = start(make_daemon, fake)
    raw = json.dumps(event_callback(event_id="EvSig1")).encode()
    now = int(time.time())
    cases = [
        {"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": sign("wrong-secret", now, raw)},
        {"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": sign(SIGNING_SECRET, now, raw + b" ")},
        {"X-Slack-Request-Timestamp": str(now - 301),
         "X-Slack-Signature": sign(SIGNING_SECRET, now - 301, raw)},
        {"X-Slack-Request-Timestamp": str(now + 301),
         "X-Slack-Signature": sign(SIGNING_SECRET, now + 301, raw)},
        {"X-Slack-Request-Timestamp": str(now)},
        {"X-Slack-Signature": sign(SIGNING_SECRET, now, raw)},
        {"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": sign(SIGNING_SECRET, "abc", raw)},
    ]
    for h in cases:
        h["Content-Type"] = "application/json"
        r = d.post(HOOK, raw, headers=h)
        assert r.status == 401, (h, r)
    # Four minutes old is still fine.
    r = d.post(HOOK, raw, headers=signed_headers(raw, timestamp=now - 240))
    assert r.status == 200, r
    time.sleep(0.3)
    assert len(inbound(d)) == 1
    st = d.api("GET", "/v1/instances/sl").json()["status"]
    assert st["provider_status"]["refused"] == len(cases), st


def test_event_to_subscription_and_retries_deduplicated(make_daemon, fake):
    d = start(make_daemon, fake)
    sub = Subscriber().start()
    try:
        r = d.api("POST", "/v1/subscriptions", {"url": sub.url, "events": ["message.received"]})
        assert r.status == 201, r
        ev = event_callback(text="hi there", event_id="Ev0TEST1", ts="1700000100.000200",
                            thread_ts="1700000000.000001")
        r = post_signed(d, ev)
        assert r.status == 200, r
        got = sub.wait_deliveries(1)[0].json
        assert got["type"] == "message.received" and got["provider"] == "slack", got
        data = got["data"]
        assert data["event_id"] == "Ev0TEST1" and data["message_id"] == "1700000100.000200", data
        assert data["from"] == "U123" and data["chat"] == "C123" and data["text"] == "hi there"
        assert data["thread"] == "1700000000.000001" and data["team"] == "T123", data
        # Slack's retry of the same event: answered 200, not delivered again.
        raw = json.dumps(ev).encode()
        h = signed_headers(raw)
        h.update({"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
        r = d.post(HOOK, raw, headers=h)
        assert r.status == 200, r
        # Bot messages and subtypes are not messages to relay.
        assert post_signed(d, event_callback(event_id="EvBot", bot_id="B1")).status == 200
        assert post_signed(d, event_callback(event_id="EvEdit",
                                             subtype="message_changed")).status == 200
        assert post_signed(d, event_callback(event_id="EvTwo", text="second")).status == 200
        wait_until(lambda: len(sub.deliveries()) >= 2, 10, what="second delivery")
        time.sleep(0.5)
        texts = [x.json["data"]["text"] for x in sub.deliveries()]
        assert texts == ["hi there", "second"], texts
        assert len(inbound(d)) == 2
    finally:
        sub.close()


def test_slash_command_and_interactive(make_daemon, fake):
    d = start(make_daemon, fake)
    sse = SSE(d.port, "/v1/events?types=interaction", key=d.admin_key)
    try:
        form = slash_command_form(text="94070")
        r = d.post(HOOK, form, headers=signed_headers(
            form, content_type="application/x-www-form-urlencoded"))
        assert r.status == 200 and r.body == b"", r
        ev = sse.wait_for(lambda e: e["data"]["data"].get("kind") == "command")
        data = ev["data"]["data"]
        assert data["command"] == "/weather" and data["text"] == "94070", data
        assert data["from"] == "U123" and data["chat"] == "C123", data
        assert data["response_url"].startswith("https://hooks.slack.com/commands/"), data

        payload = block_actions_payload(action_id="y", value="y")
        form = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        r = d.post(HOOK, form, headers=signed_headers(
            form, content_type="application/x-www-form-urlencoded"))
        assert r.status == 200, r
        ev = sse.wait_for(lambda e: e["data"]["data"].get("kind") == "button")
        data = ev["data"]["data"]
        assert data["button_id"] == "y" and data["value"] == "y", data
        assert data["message_id"] == "1700000000.000001" and data["from"] == "U123", data
        # Forged form: 401, nothing emitted.
        bad = dict(signed_headers(form, content_type="application/x-www-form-urlencoded"))
        bad["X-Slack-Signature"] = "v0=" + "0" * 64
        assert d.post(HOOK, form, headers=bad).status == 401
    finally:
        sse.close()
        time.sleep(0.5)  # let the daemon see the stream end before teardown


# -- sending -----------------------------------------------------------------------------

def test_send_text_buttons_thread(make_daemon, fake):
    d = start(make_daemon, fake)
    acc = send(d, "sl", {"to": "C123", "text": "hello slack"})
    assert acc["degraded"] == [], acc
    doc = wait_state(d, acc["id"], "sent")
    assert doc["provider_message_id"] == "1700000000.000001", doc
    p = fake.posts()[0]
    assert p.headers["authorization"] == "Bearer " + BOT_TOKEN
    assert p.headers["content-type"].startswith("application/json")
    assert p.json == {"channel": "C123", "text": "hello slack"}, p.json

    acc = send(d, "sl", {"to": "C123", "text": "Pick one", "thread": "1700000000.000001",
                         "buttons": [{"id": "y", "title": "Yes"}, {"id": "n", "title": "No"}]})
    assert acc["degraded"] == [], acc
    wait_state(d, acc["id"], "sent")
    body = fake.posts()[1].json
    assert body["channel"] == "C123" and body["text"] == "Pick one", body
    assert body["thread_ts"] == "1700000000.000001", body
    assert body["blocks"][0] == {"type": "section",
                                 "text": {"type": "mrkdwn", "text": "Pick one"}}, body
    actions = body["blocks"][1]
    assert actions["type"] == "actions", body
    assert [(e["type"], e["action_id"], e["value"], e["text"]["text"])
            for e in actions["elements"]] == [("button", "y", "y", "Yes"),
                                              ("button", "n", "n", "No")], actions

    acc = send(d, "sl", {"to": "C123", "text": "a reply", "reply_to": "1700000000.000009"})
    wait_state(d, acc["id"], "sent")
    assert fake.posts()[2].json["thread_ts"] == "1700000000.000009"

    acc = send(d, "sl", {"to": "C123", "media": {"url": "https://example.com/a.png",
                                                 "mime_type": "image/png", "caption": "a cat"}})
    wait_state(d, acc["id"], "sent")
    body = fake.posts()[3].json
    assert {"type": "image", "image_url": "https://example.com/a.png",
            "alt_text": "a cat"} in body["blocks"], body


def test_send_429_retry_after_then_ok(make_daemon, fake):
    d = start(make_daemon, fake)
    fake.script(http_429(retry_after=1))
    acc = send(d, "sl", {"to": "C123", "text": "limited"})
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["attempts"] == 2, doc
    first, second = fake.posts()[:2]
    assert second.time - first.time >= 0.95, (first, second)


def test_send_slack_errors(make_daemon, fake):
    d = start(make_daemon, fake)
    fake.script(slack_error("channel_not_found"))
    acc = send(d, "sl", {"to": "C404", "text": "nobody"})
    doc = wait_state(d, acc["id"], "failed")
    assert doc["attempts"] == 1 and "channel_not_found" in (doc["last_error"] or ""), doc
    fake.script(slack_error("invalid_auth"))
    acc = send(d, "sl", {"to": "C123", "text": "bad auth"})
    doc = wait_state(d, acc["id"], "failed")
    assert doc["attempts"] == 1 and "invalid_auth" in doc["last_error"], doc
    fake.script(slack_error("ratelimited"), slack_error("internal_error", status=500))
    acc = send(d, "sl", {"to": "C123", "text": "eventually"})
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["attempts"] == 3, doc


# -- file uploads (files.getUploadURLExternal, the bytes, files.completeUploadExternal) ------

PNG = bytes(range(256)) * 3 + b"\x89PNG\r\n\x1a\n\x00tail"


def test_send_file_upload_end_to_end(make_daemon, fake):
    d = start(make_daemon, fake)
    acc = send(d, "sl", {"to": "C123", "text": "the report & more", "thread": "1700000000.000001",
                         "media": {"data_base64": base64.b64encode(PNG).decode(),
                                   "mime_type": "image/png", "filename": "chart 1.png",
                                   "caption": "Q3 chart"}})
    assert acc["degraded"] == [], acc
    doc = wait_state(d, acc["id"], "sent")
    step1 = fake.calls("files.getUploadURLExternal")
    assert len(step1) == 1, step1
    assert step1[0].headers["authorization"] == "Bearer " + BOT_TOKEN
    args = fake.params(step1[0])
    assert args["filename"] == "chart 1.png" and args["length"] == str(len(PNG)), args
    ups = fake.uploads()
    assert len(ups) == 1 and ups[0].body == PNG, ups
    assert "authorization" not in ups[0].headers  # the upload URL is pre-signed
    fid = doc["provider_message_id"]
    assert fid.startswith("F") and fake.files[fid]["data"] == PNG, (doc, fake.files)
    step3 = fake.calls("files.completeUploadExternal")
    assert len(step3) == 1 and step3[0].status == 200, step3
    assert step3[0].headers["authorization"] == "Bearer " + BOT_TOKEN
    args = fake.params(step3[0])
    assert json.loads(args["files"]) == [{"id": fid, "title": "Q3 chart"}], args
    assert args["channel_id"] == "C123", args
    assert args["initial_comment"] == "the report & more", args
    assert args["thread_ts"] == "1700000000.000001", args
    assert fake.files[fid]["shared"] == "C123"
    assert fake.posts() == []  # no chat.postMessage for an upload

    # Caption only: it is the comment; no thread_ts when not threading.
    acc = send(d, "sl", {"to": "C123", "media": {"data_base64": base64.b64encode(b"hi").decode(),
                                                 "mime_type": "text/plain",
                                                 "caption": "just a caption"}})
    wait_state(d, acc["id"], "sent")
    args = fake.params(fake.calls("files.completeUploadExternal")[1])
    assert args["initial_comment"] == "just a caption" and "thread_ts" not in args, args
    assert fake.params(fake.calls("files.getUploadURLExternal")[1])["length"] == "2"


def test_send_file_upload_with_buttons(make_daemon, fake):
    d = start(make_daemon, fake)
    acc = send(d, "sl", {"to": "C123", "text": "Approve?", "buttons": [{"id": "y", "title": "Yes"}],
                         "media": {"data_base64": base64.b64encode(b"doc").decode(),
                                   "mime_type": "application/pdf", "filename": "a.pdf"}})
    wait_state(d, acc["id"], "sent")
    args = fake.params(fake.calls("files.completeUploadExternal")[0])
    assert "initial_comment" not in args, args
    blocks = json.loads(args["blocks"])
    assert blocks[0] == {"type": "section", "text": {"type": "mrkdwn", "text": "Approve?"}}, blocks
    assert blocks[1]["type"] == "actions" and blocks[1]["elements"][0]["action_id"] == "y", blocks
    assert json.loads(args["files"])[0]["title"] == "a.pdf", args


def test_send_file_upload_step1_error_fails(make_daemon, fake):
    d = start(make_daemon, fake)
    fake.script_method("files.getUploadURLExternal", slack_error("missing_scope"))
    acc = send(d, "sl", {"to": "C123", "text": "x",
                         "media": {"data_base64": base64.b64encode(b"abc").decode(),
                                   "mime_type": "text/plain"}})
    doc = wait_state(d, acc["id"], "failed")
    assert doc["attempts"] == 1 and "missing_scope" in (doc["last_error"] or ""), doc
    assert fake.uploads() == [] and fake.calls("files.completeUploadExternal") == []


def test_send_file_upload_429_on_complete_retried(make_daemon, fake):
    d = start(make_daemon, fake)
    fake.script_method("files.completeUploadExternal", http_429(retry_after=1))
    acc = send(d, "sl", {"to": "C123", "text": "limited upload",
                         "media": {"data_base64": base64.b64encode(PNG).decode(),
                                   "mime_type": "application/octet-stream",
                                   "filename": "a.bin"}})
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["attempts"] == 2, doc
    first, second = fake.calls("files.completeUploadExternal")[:2]
    assert first.status == 429 and second.status == 200, (first, second)
    assert second.time - first.time >= 0.95, (first, second)
    # The retry runs the whole flow again: the message id is the second file.
    assert len(fake.uploads()) == 2 and all(u.body == PNG for u in fake.uploads())
    assert json.loads(fake.params(second)["files"])[0]["id"] == doc["provider_message_id"]


def test_send_file_upload_bad_base64(make_daemon, fake):
    d = start(make_daemon, fake)
    acc = send(d, "sl", {"to": "C123", "media": {"data_base64": "!!not base64!!",
                                                 "mime_type": "text/plain"}})
    doc = wait_state(d, acc["id"], "failed")
    assert "base64" in (doc["last_error"] or ""), doc
    assert fake.calls("files.getUploadURLExternal") == []


# -- Socket Mode ---------------------------------------------------------------------------

def envelope(eid, etype, payload):
    return {"envelope_id": eid, "type": etype, "payload": payload,
            "accepts_response_payload": etype != "events_api", "retry_attempt": 0,
            "retry_reason": ""}


def wait_connected(d, n_conns=None):
    def ok():
        st = d.api("GET", "/v1/instances/sl").json()["status"]
        return st["provider_status"]["socket"]["connected"]
    wait_until(ok, 10, what="socket mode connected")


def test_socket_mode_envelopes_acked(make_daemon, fake):
    d = start(make_daemon, fake, mode="socket")
    conn = fake.ws.wait_connections(1)[0]
    opens = fake.opens()
    assert len(opens) == 1 and opens[0].headers["authorization"] == "Bearer " + APP_TOKEN
    assert conn.path.startswith("/link/?ticket=1"), conn.path
    wait_connected(d)
    sse = SSE(d.port, "/v1/events", key=d.admin_key)
    try:
        conn.send_json(envelope("env-1", "events_api", event_callback(text="over socket",
                                                                       event_id="EvS1")))
        acks = conn.wait_messages(1)
        assert acks == [{"envelope_id": "env-1"}], acks
        ev = sse.wait_for(lambda e: e["event"] == "message.received")
        assert ev["data"]["data"]["text"] == "over socket", ev
        assert ev["data"]["data"]["event_id"] == "EvS1", ev
        form = urllib.parse.parse_qs(slash_command_form().decode())
        conn.send_json(envelope("env-2", "slash_commands", {k: v[0] for k, v in form.items()}))
        conn.send_json(envelope("env-3", "interactive", block_actions_payload()))
        acks = conn.wait_messages(3)
        assert [a["envelope_id"] for a in acks] == ["env-1", "env-2", "env-3"], acks
        sse.wait_for(lambda e: e["data"]["data"].get("kind") == "command")
        sse.wait_for(lambda e: e["data"]["data"].get("kind") == "button")
        # A redelivered envelope (same event) is acked again but not stored twice.
        conn.send_json(envelope("env-4", "events_api", event_callback(text="over socket",
                                                                       event_id="EvS1")))
        conn.wait_messages(4)
        time.sleep(0.5)
        assert len([m for m in inbound(d) if m["body"]["text"] == "over socket"]) == 1
    finally:
        sse.close()
        time.sleep(0.5)  # let the daemon see the stream end before teardown


def test_socket_mode_disconnect_and_reconnect(make_daemon, fake):
    d = start(make_daemon, fake, mode="socket")
    first = fake.ws.wait_connections(1)[0]
    wait_connected(d)
    # Slack warns: a new connection is opened before the old one goes.
    first.send_json({"type": "disconnect", "reason": "refresh_requested",
                     "debug_info": {"host": "applink-fake"}})
    conns = fake.ws.wait_connections(2)
    assert len(fake.opens()) == 2
    first.wait_closed(5)
    assert first.close_code == 1000, first.close_code
    second = conns[1]
    assert not second.closed
    second.send_json(envelope("env-9", "events_api", event_callback(event_id="EvR1")))
    assert second.wait_messages(1) == [{"envelope_id": "env-9"}]
    # An abrupt drop: reconnected with backoff (first attempt within ~1-2 s).
    t0 = time.monotonic()
    second.drop()
    third = fake.ws.wait_connections(3, timeout=10)[2]
    assert time.monotonic() - t0 < 5
    wait_connected(d)
    third.send_json(envelope("env-10", "events_api", event_callback(event_id="EvR2")))
    assert third.wait_messages(1) == [{"envelope_id": "env-10"}]
    assert not fake.ws.bad_handshakes


def test_socket_mode_open_failure_backs_off(make_daemon, fake):
    fake.open_error = "invalid_auth"
    d = start(make_daemon, fake, mode="socket")
    wait_until(lambda: len(fake.opens()) >= 2, 10, what="a retried apps.connections.open")
    st = d.api("GET", "/v1/instances/sl").json()["status"]
    assert st["provider_status"]["socket"]["connected"] is False, st
    fake.open_error = None
    fake.ws.wait_connections(1, timeout=15)
    wait_connected(d)
