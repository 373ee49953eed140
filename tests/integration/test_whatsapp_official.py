"""The whatsapp-official plugin against a fake Graph API (fakes/meta.py, its
send bodies checked against the WhatsApp v23.0 OpenAPI schemas): the verify
handshake, X-Hub-Signature-256, the spec's own webhook examples as inbound
fixtures, statuses moving message states, every send kind, throttling and
Retry-After, an invalid token."""

import base64
import copy
import json
import time
import urllib.parse

import pytest

from conftest import wait_until
from fakeprovider import SSE, get_message, send, wait_state
from fakes.common import fixture
from fakes.meta import FakeGraph, graph_error, post_webhook
from providers import (create_instance, inbound_messages, instance_status, metric, start_daemon,
                       wait_instance_state)

TOKEN = "EAAGfaketoken123"
APP_SECRET = "0123456789abcdef0123456789abcdef"
VERIFY = "verify-me-please"
PHONE_ID = "106540352242922"
EXAMPLES = fixture("whatsapp-webhooks.json")


@pytest.fixture
def graph():
    g = FakeGraph(TOKEN, phone_number_id=PHONE_ID).start()
    yield g
    assert g.errors == [], "requests the Graph API would refuse: %r" % g.errors
    g.close()


def wa_instance(d, graph, token=TOKEN, name="wa", state="connected"):
    iid = create_instance(d, "whatsapp-official", name,
                          {"phone_number_id": PHONE_ID, "waba_id": "102290129340398",
                           "api_base": graph.url},
                          {"access_token": token, "app_secret": APP_SECRET,
                           "verify_token": VERIFY})
    wait_instance_state(d, iid, state)
    return iid


def hook(iid):
    return "/webhook/whatsapp-official/" + iid


def statuses(*items):
    return {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [
        {"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "statuses": list(items)}}]}]}


def status(wamid, state, **extra):
    st = {"id": wamid, "status": state, "timestamp": str(int(time.time())),
          "recipient_id": "16505551234"}
    st.update(extra)
    return st


# -- the verify handshake and signatures ------------------------------------------------

def test_verify_handshake(make_daemon, graph):
    d = start_daemon(make_daemon, "whatsapp-official")
    iid = wa_instance(d, graph)
    q = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.verify_token": VERIFY,
                                "hub.challenge": "1158201444"})
    r = d.get(hook(iid) + "?" + q)
    assert r.status == 200 and r.body == b"1158201444", r
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    q = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.verify_token": "wrong",
                                "hub.challenge": "1158201444"})
    r = d.get(hook(iid) + "?" + q)
    assert r.status == 403 and b"1158201444" not in r.body, r
    q = urllib.parse.urlencode({"hub.mode": "unsubscribe", "hub.verify_token": VERIFY,
                                "hub.challenge": "1"})
    assert d.get(hook(iid) + "?" + q).status == 403


def test_signature_good_missing_bad(make_daemon, graph):
    d = start_daemon(make_daemon, "whatsapp-official")
    iid = wa_instance(d, graph)
    payload = EXAMPLES["Text Message"]
    r = post_webhook(d, hook(iid), payload)  # no signature
    assert r.status == 401, r
    r = post_webhook(d, hook(iid), payload, signature="sha256=" + "0" * 64)
    assert r.status == 403, r
    r = post_webhook(d, hook(iid), payload, secret="not-the-app-secret")
    assert r.status == 403, r
    # Signed over other bytes than the ones sent: refused.
    body = json.dumps(payload).encode()
    from fakes.meta import sign
    r = post_webhook(d, hook(iid), body + b" ", signature=sign(APP_SECRET, body))
    assert r.status == 403, r
    assert inbound_messages(d, iid) == []
    assert metric(d, "switchboard_plugin_signature_rejected_total", provider="whatsapp-official",
                  instance=iid) == 4
    r = post_webhook(d, hook(iid), payload, secret=APP_SECRET)
    assert r.status == 200, r
    wait_until(lambda: inbound_messages(d, iid), 5, what="the message")


# -- inbound: the spec's examples --------------------------------------------------------

def test_inbound_spec_examples(make_daemon, graph):
    d = start_daemon(make_daemon, "whatsapp-official")
    iid = wa_instance(d, graph)
    sse = SSE(d.port, "/v1/events?instance=" + iid, key=d.admin_key)
    try:
        # The spec's examples reuse one wamid for four different messages (real
        # ones are unique, and the daemon drops a repeated event id): make them unique.
        want = {}
        for i, (name, payload) in enumerate(EXAMPLES.items()):
            payload = copy.deepcopy(payload)
            for ch in payload["entry"][0]["changes"]:
                for m in ch["value"].get("messages", []):
                    m["id"] = "%s.%d" % (m["id"], i)
                    want[m["id"]] = (name, m)
            r = post_webhook(d, hook(iid), payload, secret=APP_SECRET)
            assert r.status == 200, (name, r)
            if name == "Text Message":
                first = payload
        # Each example's messages[] item (by wamid) is one event, of the right type.
        wait_until(lambda: len({e["data"]["data"]["message_id"] for e in sse.snapshot()})
                   >= len(want), 10, what="%d events" % len(want))
        events = {e["data"]["data"]["message_id"]: e for e in sse.snapshot()}
        for wamid, (name, m) in want.items():
            ev = events[wamid]
            data = ev["data"]["data"]
            assert data["from"] == m["from"], (name, data)
            assert data["event_id"] == wamid, (name, data)
            if m["type"] in ("button", "interactive"):
                assert ev["event"] == "interaction", (name, ev)
            else:
                assert ev["event"] == "message.received", (name, ev)
        by_type = {want[k][1]["type"] + ("/" + want[k][1]["interactive"]["type"]
                                         if want[k][1]["type"] == "interactive" else ""):
                   events[k]["data"]["data"] for k in want}
        text = by_type["text"]
        assert text["text"] and text["name"] == "Sheena Nelson", text
        img = by_type["image"]
        assert img["media"]["type"] == "image" and img["media"]["id"] == "1003383421387256", img
        assert img["text"] == "Taj Mahal" and img["media"]["mime_type"] == "image/jpeg", img
        assert by_type["location"]["location"]["latitude"], by_type["location"]
        assert by_type["contacts"]["contacts"], by_type["contacts"]
        assert by_type["reaction"]["reaction"]["emoji"], by_type["reaction"]
        btn = by_type["interactive/button_reply"]
        assert btn["kind"] == "button" and btn["id"] == "cancel-button", btn
        assert btn["title"] == "Cancel" and btn["reply_to"].startswith("wamid."), btn
        lst = by_type["interactive/list_reply"]
        assert lst["kind"] == "list" and lst["id"] and lst["title"], lst
        tb = by_type["button"]
        assert tb["kind"] == "button" and tb["id"] and tb["title"], tb
        assert by_type["unsupported"]["errors"], by_type["unsupported"]
    finally:
        sse.close()
    # Redelivery of the same batch is dropped by event id.
    n = len(inbound_messages(d, iid))
    assert post_webhook(d, hook(iid), first, secret=APP_SECRET).status == 200
    time.sleep(0.3)
    assert len(inbound_messages(d, iid)) == n


def test_other_phone_number_is_skipped(make_daemon, graph):
    d = start_daemon(make_daemon, "whatsapp-official")
    iid = wa_instance(d, graph)
    payload = copy.deepcopy(EXAMPLES["Text Message"])
    payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999"
    assert post_webhook(d, hook(iid), payload, secret=APP_SECRET).status == 200
    time.sleep(0.3)
    assert inbound_messages(d, iid) == []
    assert instance_status(d, iid)["provider_status"]["skipped"] == 1


# -- statuses -----------------------------------------------------------------------------

def test_statuses_move_message_state(make_daemon, graph):
    d = start_daemon(make_daemon, "whatsapp-official")
    iid = wa_instance(d, graph)
    a = send(d, iid, {"to": "+16505551234", "text": "one"})
    b = send(d, iid, {"to": "+16505551234", "text": "two"})
    wa = wait_state(d, a["id"], "sent")["provider_message_id"]
    wb = wait_state(d, b["id"], "sent")["provider_message_id"]
    assert wa.startswith("wamid.") and wa != wb
    sse = SSE(d.port, "/v1/events?types=message.status&instance=" + iid, key=d.admin_key)
    try:
        assert post_webhook(d, hook(iid), statuses(status(wa, "sent"), status(wa, "delivered")),
                            secret=APP_SECRET).status == 200
        wait_state(d, a["id"], "delivered")
        assert post_webhook(d, hook(iid), statuses(status(wa, "read")),
                            secret=APP_SECRET).status == 200
        wait_state(d, a["id"], "read")
        # Late and repeated statuses: the state does not go back, events are not repeated.
        assert post_webhook(d, hook(iid), statuses(status(wa, "delivered")),
                            secret=APP_SECRET).status == 200
        err = {"code": 131026, "title": "Message undeliverable",
               "message": "Message undeliverable",
               "error_data": {"details": "Message Undeliverable."}}
        assert post_webhook(d, hook(iid), statuses(status(wb, "failed", errors=[err])),
                            secret=APP_SECRET).status == 200
        doc = wait_state(d, b["id"], "failed")
        assert get_message(d, a["id"])["state"] == "read"
        ev = sse.wait_for(lambda e: e["data"]["data"]["state"] == "failed")
        data = ev["data"]["data"]
        assert data["message_id"] == wb and data["event_id"] == wb + ":failed", data
        assert "131026" in data["error"] and data["errors"][0]["code"] == 131026, data
        wait_until(lambda: len(sse.snapshot()) >= 4, 5, what="4 status events")
        ids = [e["data"]["data"]["event_id"] for e in sse.snapshot()]
        assert len(ids) == len(set(ids)) == 4, ids  # the repeated "delivered" is dropped
        assert doc["state"] == "failed" and "131026" in (doc["last_error"] or ""), doc
    finally:
        sse.close()


# -- sending ------------------------------------------------------------------------------

def test_send_kinds_and_request_bodies(make_daemon, graph):
    d = start_daemon(make_daemon, "whatsapp-official")
    iid = wa_instance(d, graph)

    def last():
        r = graph.messages()[-1]
        assert r.headers["authorization"] == "Bearer " + TOKEN, r.headers
        assert r.route == "/v23.0/%s/messages" % PHONE_ID, r.route
        return r.params

    acc = send(d, iid, {"to": "+16505551234", "text": "hi", "reply_to": "wamid.PREV"})
    doc = wait_state(d, acc["id"], "sent")
    assert last() == {"messaging_product": "whatsapp", "recipient_type": "individual",
                      "to": "+16505551234", "type": "text",
                      "text": {"body": "hi", "preview_url": False},
                      "context": {"message_id": "wamid.PREV"}}
    assert doc["provider_message_id"].startswith("wamid.FAKE"), doc

    acc = send(d, iid, {"to": "+16505551234", "text": "Pick one",
                        "buttons": [{"id": "y", "title": "Yes"}, {"id": "n", "title": "No"}]})
    assert acc["degraded"] == []
    wait_state(d, acc["id"], "sent")
    assert last()["interactive"] == {
        "type": "button", "body": {"text": "Pick one"},
        "action": {"buttons": [{"type": "reply", "reply": {"id": "y", "title": "Yes"}},
                               {"type": "reply", "reply": {"id": "n", "title": "No"}}]}}

    many = [{"id": "c%d" % i, "title": "Choice number %d with a long title" % i}
            for i in range(5)]
    acc = send(d, iid, {"to": "+16505551234", "text": "Pick", "buttons": many})
    wait_state(d, acc["id"], "sent")
    inter = last()["interactive"]
    assert inter["type"] == "list" and inter["action"]["button"] == "Choose", inter
    rows = inter["action"]["sections"][0]["rows"]
    assert [r["id"] for r in rows] == ["c%d" % i for i in range(5)], rows
    assert all(len(r["title"]) <= 24 for r in rows), rows

    acc = send(d, iid, {"to": "+16505551234", "text": "look",
                        "media": {"url": "https://x.test/a.jpg", "mime_type": "image/jpeg"}})
    wait_state(d, acc["id"], "sent")
    p = last()
    assert p["type"] == "image" and p["image"] == {"link": "https://x.test/a.jpg",
                                                   "caption": "look"}, p

    acc = send(d, iid, {"to": "+16505551234", "media": {
        "url": "https://x.test/r.pdf", "mime_type": "application/pdf", "filename": "r.pdf",
        "caption": "report"}})
    wait_state(d, acc["id"], "sent")
    p = last()
    assert p["type"] == "document" and p["document"] == {
        "link": "https://x.test/r.pdf", "caption": "report", "filename": "r.pdf"}, p

    tmpl = {"name": "order_update", "language": {"policy": "deterministic", "code": "en_US"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]}
    acc = send(d, iid, {"to": "+16505551234", "template": tmpl})
    wait_state(d, acc["id"], "sent")
    p = last()
    assert p["type"] == "template" and p["template"] == tmpl, p

    data = b"\x89PNG\r\n\x1a\nfake"
    acc = send(d, iid, {"to": "+16505551234", "text": "uploaded", "media": {
        "data_base64": base64.b64encode(data).decode(), "mime_type": "image/png",
        "filename": "a.png"}})
    wait_state(d, acc["id"], "sent")
    up = graph.all(lambda r: r.route.endswith("/media"))
    assert len(up) == 1 and up[0].params["file"]["data"] == data, up
    assert up[0].params["type"] == "image/png" and up[0].params["messaging_product"] == "whatsapp"
    p = last()
    assert p["type"] == "image" and p["image"]["id"].startswith("media"), p
    assert "link" not in p["image"] and p["image"]["caption"] == "uploaded", p

    too_many = [{"id": "c%d" % i, "title": "C%d" % i} for i in range(11)]
    acc = send(d, iid, {"to": "+16505551234", "text": "x", "buttons": too_many})
    doc = wait_state(d, acc["id"], "failed")
    assert "at most 10" in doc["last_error"], doc


def test_throttling_is_retried_and_retry_after_honoured(make_daemon, graph):
    d = start_daemon(make_daemon, "whatsapp-official")
    iid = wa_instance(d, graph)
    graph.script(graph_error(400, 130429, "(#130429) Rate limit hit",
                             details="Cloud API message throughput has been reached."))
    acc = send(d, iid, {"to": "+16505551234", "text": "busy"})
    doc = wait_state(d, acc["id"], "sent")
    assert doc["attempts"] == 2, doc
    graph.script(graph_error(503, 2, "(#2) Service temporarily unavailable",
                             headers={"Retry-After": "2"}))
    acc = send(d, iid, {"to": "+16505551234", "text": "later"})
    wait_state(d, acc["id"], "sent", timeout=15)
    calls = graph.messages()[-2:]
    assert calls[0].status == 503 and calls[1].status == 200
    gap = calls[1].time - calls[0].time
    assert gap >= 1.95, "retried after %.2fs, Retry-After said 2 s" % gap
    # A parameter error is permanent: no retry, the reason kept.
    graph.script(graph_error(400, 131009, "(#131009) Parameter value is not valid",
                             details="Recipient phone number not valid"))
    acc = send(d, iid, {"to": "+1", "text": "bad"})
    doc = wait_state(d, acc["id"], "failed")
    assert doc["attempts"] == 1 and "131009" in doc["last_error"] or \
        "Parameter value is not valid" in doc["last_error"], doc


def test_invalid_token_fails_message_and_instance_recovers(make_daemon, graph):
    d = start_daemon(make_daemon, "whatsapp-official")
    iid = wa_instance(d, graph, token="EAAGwrong", state="error")
    st = instance_status(d, iid)
    assert "Invalid OAuth access token" in st.get("detail", ""), st
    acc = send(d, iid, {"to": "+16505551234", "text": "nope"})
    doc = wait_state(d, acc["id"], "failed")
    assert doc["attempts"] == 1 and "Invalid OAuth access token" in doc["last_error"], doc
    assert TOKEN not in d.raw_log() and "EAAGwrong" not in d.raw_log()
    assert d.api("PATCH", "/v1/instances/" + iid,
                 {"secrets": {"access_token": TOKEN}}).status == 200
    wait_instance_state(d, iid, "connected")
    acc = send(d, iid, {"to": "+16505551234", "text": "now"})
    wait_state(d, acc["id"], "sent")
