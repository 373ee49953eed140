"""The messenger plugin against the fake Graph API (fakes/meta.py): verify
handshake and signatures, the messenger profile on start, Send API bodies
(text, button template, quick replies, attachments), inbound messages,
quick replies, postbacks and deliveries, throttling, an invalid token."""

import base64
import time
import urllib.parse

import pytest

from conftest import wait_until
from fakeprovider import SSE, send, wait_state
from fakes.meta import FakeGraph, graph_error, post_webhook
from providers import (create_instance, inbound_messages, instance_status, metric, start_daemon,
                       wait_instance_state)

TOKEN = "EAAPagetoken"
APP_SECRET = "messenger-app-secret"
VERIFY = "mv-token"
PAGE = "1357924680"
PSID = "6543210987"
MENU = [{"locale": "default", "composer_input_disabled": False, "call_to_actions": [
    {"type": "postback", "title": "Talk to an agent", "payload": "AGENT"}]}]


@pytest.fixture
def graph():
    g = FakeGraph(TOKEN, page_id=PAGE).start()
    yield g
    assert g.errors == [], "requests the Graph API would refuse: %r" % g.errors
    g.close()


def instance(d, graph, token=TOKEN, state="connected", **settings):
    s = {"page_id": PAGE, "api_base": graph.url}
    s.update(settings)
    iid = create_instance(d, "messenger", "fb", s, {"page_access_token": token,
                                                    "app_secret": APP_SECRET,
                                                    "verify_token": VERIFY})
    wait_instance_state(d, iid, state)
    return iid


def hook(iid):
    return "/webhook/messenger/" + iid


def page_event(*items):
    return {"object": "page", "entry": [{"id": PAGE, "time": int(time.time() * 1000),
                                         "messaging": list(items)}]}


def item(**kw):
    it = {"sender": {"id": PSID}, "recipient": {"id": PAGE},
          "timestamp": int(time.time() * 1000)}
    it.update(kw)
    return it


def test_handshake_and_signatures(make_daemon, graph):
    d = start_daemon(make_daemon, "messenger")
    iid = instance(d, graph)
    q = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.verify_token": VERIFY,
                                "hub.challenge": "CHALLENGE_ACCEPTED"})
    r = d.get(hook(iid) + "?" + q)
    assert r.status == 200 and r.body == b"CHALLENGE_ACCEPTED", r
    assert d.get(hook(iid) + "?" + q.replace(VERIFY, "nope")).status == 403
    ev = page_event(item(message={"mid": "m_1", "text": "hi"}))
    assert post_webhook(d, hook(iid), ev).status == 401
    assert post_webhook(d, hook(iid), ev, secret="wrong").status == 403
    assert metric(d, "switchboard_plugin_signature_rejected_total", provider="messenger",
                  instance=iid) == 2
    assert post_webhook(d, hook(iid), ev, secret=APP_SECRET).status == 200
    got = wait_until(lambda: inbound_messages(d, iid), 5, what="the message")
    assert got[0]["from"] == PSID and got[0]["body"]["text"] == "hi", got


def test_profile_set_on_start(make_daemon, graph):
    d = start_daemon(make_daemon, "messenger")
    instance(d, graph, get_started_payload="GET_STARTED", persistent_menu=MENU)
    calls = graph.wait_for(lambda r: r.route.endswith("/me/messenger_profile"), 1, 5)
    assert calls[0].route == "/v23.0/me/messenger_profile", calls
    assert calls[0].params == {"get_started": {"payload": "GET_STARTED"},
                               "persistent_menu": MENU}, calls[0].params
    assert calls[0].headers["authorization"] == "Bearer " + TOKEN


def test_send_kinds_and_request_bodies(make_daemon, graph):
    d = start_daemon(make_daemon, "messenger")
    iid = instance(d, graph)
    base = {"recipient": {"id": PSID}, "messaging_type": "RESPONSE"}

    acc = send(d, iid, {"to": PSID, "text": "hello"})
    doc = wait_state(d, acc["id"], "sent")
    assert graph.messages()[-1].params == dict(base, message={"text": "hello"})
    assert doc["provider_message_id"].startswith("m_FAKE"), doc
    assert graph.messages()[-1].route == "/v23.0/me/messages"

    acc = send(d, iid, {"to": PSID, "text": "Pick", "buttons": [{"id": "Y", "title": "Yes"},
                                                               {"id": "N", "title": "No"}]})
    wait_state(d, acc["id"], "sent")
    assert graph.messages()[-1].params["message"] == {"attachment": {
        "type": "template", "payload": {"template_type": "button", "text": "Pick", "buttons": [
            {"type": "postback", "title": "Yes", "payload": "Y"},
            {"type": "postback", "title": "No", "payload": "N"}]}}}

    five = [{"id": "c%d" % i, "title": "Choice %d" % i} for i in range(5)]
    acc = send(d, iid, {"to": PSID, "text": "More", "buttons": five})
    wait_state(d, acc["id"], "sent")
    m = graph.messages()[-1].params["message"]
    assert m["text"] == "More" and [q["payload"] for q in m["quick_replies"]] == \
        ["c%d" % i for i in range(5)], m
    assert all(q["content_type"] == "text" for q in m["quick_replies"]), m

    acc = send(d, iid, {"to": PSID, "text": "Size?",
                        "quick_replies": [{"id": "S", "title": "Small"}]})
    wait_state(d, acc["id"], "sent")
    assert graph.messages()[-1].params["message"] == {
        "text": "Size?", "quick_replies": [{"content_type": "text", "title": "Small",
                                            "payload": "S"}]}

    n = len(graph.messages())
    acc = send(d, iid, {"to": PSID, "text": "see this",
                        "media": {"url": "https://x.test/a.png", "mime_type": "image/png"}})
    doc = wait_state(d, acc["id"], "sent")
    two = graph.messages()[n:]
    assert [r.params["message"] for r in two] == [
        {"text": "see this"},
        {"attachment": {"type": "image", "payload": {"url": "https://x.test/a.png",
                                                     "is_reusable": True}}}], two
    assert doc["provider_message_id"] != "" and two[1].status == 200, doc

    acc = send(d, iid, {"to": PSID, "media": {"url": "https://x.test/r.pdf",
                                              "mime_type": "application/pdf"}})
    wait_state(d, acc["id"], "sent")
    assert graph.messages()[-1].params["message"]["attachment"]["type"] == "file"


def test_button_and_generic_templates(make_daemon, graph):
    d = start_daemon(make_daemon, "messenger")
    iid = instance(d, graph)
    base = {"recipient": {"id": PSID}, "messaging_type": "RESPONSE"}

    button = {"template_type": "button", "text": "What next?", "buttons": [
        {"type": "web_url", "url": "https://shop.example.test", "title": "Visit"},
        {"type": "postback", "title": "Talk", "payload": "TALK"}]}
    acc = send(d, iid, {"to": PSID, "template": button})
    doc = wait_state(d, acc["id"], "sent")
    assert graph.messages()[-1].params == dict(base, message={
        "attachment": {"type": "template", "payload": button}}), graph.messages()[-1].params
    assert doc["provider_message_id"].startswith("m_FAKE"), doc

    # The message's text fills a button template that has none.
    acc = send(d, iid, {"to": PSID, "text": "Choose",
                        "template": {"template_type": "button", "buttons": button["buttons"]}})
    wait_state(d, acc["id"], "sent")
    assert graph.messages()[-1].params["message"]["attachment"]["payload"]["text"] == "Choose"

    generic = {"template_type": "generic", "elements": [
        {"title": "Red shirt", "subtitle": "100% cotton", "image_url": "https://x.test/r.png",
         "default_action": {"type": "web_url", "url": "https://x.test/r"},
         "buttons": [{"type": "postback", "title": "Buy", "payload": "BUY_RED"}]},
        {"title": "Blue shirt", "buttons": [{"type": "postback", "title": "Buy",
                                             "payload": "BUY_BLUE"}]}]}
    n = len(graph.messages())
    acc = send(d, iid, {"to": PSID, "text": "Our shirts", "template": generic,
                        "quick_replies": [{"id": "MORE", "title": "More"}]})
    wait_state(d, acc["id"], "sent")
    two = graph.messages()[n:]
    assert [r.params["message"] for r in two] == [
        {"text": "Our shirts"},
        {"attachment": {"type": "template", "payload": generic},
         "quick_replies": [{"content_type": "text", "title": "More", "payload": "MORE"}]}], two

    # A WhatsApp template (a name, no template_type) is refused with the reason.
    acc = send(d, iid, {"to": PSID, "template": {"name": "hello_world",
                                                 "language": {"code": "en_US"}}})
    doc = wait_state(d, acc["id"], "failed")
    assert "template_type" in doc["last_error"], doc
    acc = send(d, iid, {"to": PSID, "template": generic, "buttons": [{"id": "a", "title": "A"}]})
    assert "not both" in wait_state(d, acc["id"], "failed")["last_error"]
    # Neither name nor template_type: the API refuses it.
    r = d.api("POST", "/v1/instances/%s/messages" % iid, {"to": PSID, "template": {"x": 1}})
    assert r.status == 400, r
    # The fake checks the payload like the Send API: a generic element without a title fails.
    acc = send(d, iid, {"to": PSID, "template": {"template_type": "generic",
                                                 "elements": [{"subtitle": "no title"}]}})
    doc = wait_state(d, acc["id"], "failed")
    assert "title" in doc["last_error"], doc
    graph.errors.clear()


def test_inbound_kinds_and_delivery(make_daemon, graph):
    d = start_daemon(make_daemon, "messenger")
    iid = instance(d, graph)
    acc = send(d, iid, {"to": PSID, "text": "out"})
    mid_out = wait_state(d, acc["id"], "sent")["provider_message_id"]
    sse = SSE(d.port, "/v1/events?instance=" + iid, key=d.admin_key)
    try:
        ev = page_event(
            item(message={"mid": "m_in1", "text": "hello",
                          "attachments": [{"type": "image",
                                           "payload": {"url": "https://cdn.test/p.jpg"}}]}),
            item(message={"mid": "m_in2", "text": "Small", "quick_reply": {"payload": "S"}}),
            item(postback={"mid": "m_pb1", "title": "Yes", "payload": "Y"}),
            item(message={"mid": "m_echo", "text": "out", "is_echo": True}),
            item(delivery={"mids": [mid_out], "watermark": int(time.time() * 1000)}))
        assert post_webhook(d, hook(iid), ev, secret=APP_SECRET).status == 200
        wait_state(d, acc["id"], "delivered")
        wait_until(lambda: len(sse.snapshot()) >= 4, 5, what="4 events")
        evs = {e["data"]["data"].get("message_id"): e for e in sse.snapshot()}
        m1 = evs["m_in1"]
        assert m1["event"] == "message.received", m1
        assert m1["data"]["data"]["media"] == {"type": "image", "url": "https://cdn.test/p.jpg"}
        qr = evs["m_in2"]
        assert qr["event"] == "interaction", qr
        assert qr["data"]["data"]["kind"] == "quick_reply" and qr["data"]["data"]["id"] == "S"
        pb = evs["m_pb1"]
        assert pb["event"] == "interaction" and pb["data"]["data"]["kind"] == "postback", pb
        assert pb["data"]["data"]["id"] == "Y" and pb["data"]["data"]["title"] == "Yes", pb
        assert "m_echo" not in evs, evs
        st = evs[mid_out]
        assert st["event"] == "message.status" and st["data"]["data"]["state"] == "delivered", st
    finally:
        sse.close()


def test_throttle_retried_and_invalid_token(make_daemon, graph):
    d = start_daemon(make_daemon, "messenger")
    iid = instance(d, graph)
    graph.script(graph_error(400, 613, "(#613) Calls to this api have exceeded the rate limit."))
    acc = send(d, iid, {"to": PSID, "text": "busy"})
    assert wait_state(d, acc["id"], "sent")["attempts"] == 2
    # Outside the 24-hour window: permanent, and not a credentials problem.
    graph.script(graph_error(400, 10, "(#10) This message is sent outside of allowed window.",
                             subcode=2018278))
    acc = send(d, iid, {"to": PSID, "text": "late"})
    doc = wait_state(d, acc["id"], "failed")
    assert doc["attempts"] == 1 and "outside of allowed window" in doc["last_error"], doc
    assert instance_status(d, iid)["state"] == "connected"

    bad = create_instance(d, "messenger", "fb-bad", {"page_id": PAGE, "api_base": graph.url},
                          {"page_access_token": "EAAwrong", "app_secret": APP_SECRET})
    wait_instance_state(d, bad, "error")
    acc = send(d, bad, {"to": PSID, "text": "x"})
    doc = wait_state(d, acc["id"], "failed")
    assert "Invalid OAuth access token" in doc["last_error"] and doc["attempts"] == 1, doc
    assert d.api("PATCH", "/v1/instances/" + bad,
                 {"secrets": {"page_access_token": TOKEN}}).status == 200
    wait_instance_state(d, bad, "connected")


PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N"
       b"\x00\x00\x00\x00IEND\xaeB`\x82")


def test_media_uploaded_with_the_send(make_daemon, graph):
    """media.data_base64 goes to the Send API as multipart/form-data: recipient and message
    as JSON fields, the file as filedata (the fake refuses any other shape)."""
    d = start_daemon(make_daemon, "messenger")
    iid = instance(d, graph)
    n = len(graph.messages())
    acc = send(d, iid, {"to": PSID, "text": "the receipt",
                        "quick_replies": [{"id": "OK", "title": "Got it"}],
                        "media": {"data_base64": base64.b64encode(PNG).decode(),
                                  "mime_type": "image/png", "filename": "receipt.png"}})
    doc = wait_state(d, acc["id"], "sent")
    two = graph.messages()[n:]
    assert len(two) == 2, two
    assert two[0].params["message"] == {
        "text": "the receipt",
        "quick_replies": [{"content_type": "text", "title": "Got it", "payload": "OK"}]}, two[0]
    up = two[1]
    assert up.headers["content-type"].startswith("multipart/form-data; boundary="), up.headers
    assert up.route == "/v23.0/me/messages" and up.headers["authorization"] == "Bearer " + TOKEN
    assert up.params["recipient"] == {"id": PSID} and up.params["messaging_type"] == "RESPONSE"
    assert up.params["message"] == {
        "attachment": {"type": "image", "payload": {"is_reusable": True}}}, up.params["message"]
    assert up.params["filedata"] == {"filename": "receipt.png", "content_type": "image/png",
                                     "data": PNG}, up.params["filedata"]
    assert up.status == 200 and doc["provider_message_id"].startswith("m_FAKE"), doc

    # A document without text: one request, type file, a default filename.
    acc = send(d, iid, {"to": PSID, "media": {"data_base64": base64.b64encode(b"%PDF-1.4\n").decode(),
                                              "mime_type": "application/pdf"}})
    wait_state(d, acc["id"], "sent")
    up = graph.messages()[-1]
    assert up.params["message"]["attachment"]["type"] == "file", up.params
    assert up.params["filedata"]["data"] == b"%PDF-1.4\n" and up.params["filedata"]["filename"]

    # Bad base64 fails the message with the reason, nothing reaches the Send API.
    n = len(graph.messages())
    acc = send(d, iid, {"to": PSID, "media": {"data_base64": "not*base64", "mime_type": "image/png"}})
    assert "base64" in wait_state(d, acc["id"], "failed")["last_error"]
    assert len(graph.messages()) == n


def test_reply_to(make_daemon, graph):
    """reply_to becomes the Send API's reply_to {mid}, beside recipient and message, on the
    first request of a send (the fake refuses it inside message)."""
    d = start_daemon(make_daemon, "messenger")
    iid = instance(d, graph)
    acc = send(d, iid, {"to": PSID, "text": "yes, that one", "reply_to": "m_in1"})
    wait_state(d, acc["id"], "sent")
    assert graph.messages()[-1].params == {
        "recipient": {"id": PSID}, "messaging_type": "RESPONSE", "reply_to": {"mid": "m_in1"},
        "message": {"text": "yes, that one"}}, graph.messages()[-1].params

    # Text and an uploaded attachment: the text quotes, the attachment does not.
    n = len(graph.messages())
    acc = send(d, iid, {"to": PSID, "text": "see", "reply_to": "m_in2",
                        "media": {"data_base64": base64.b64encode(PNG).decode(),
                                  "mime_type": "image/png"}})
    wait_state(d, acc["id"], "sent")
    two = graph.messages()[n:]
    assert two[0].params["reply_to"] == {"mid": "m_in2"} and "reply_to" not in two[1].params, two

    # An uploaded attachment alone carries it as a JSON form field.
    acc = send(d, iid, {"to": PSID, "reply_to": "m_in3",
                        "media": {"data_base64": base64.b64encode(PNG).decode(),
                                  "mime_type": "image/png"}})
    wait_state(d, acc["id"], "sent")
    up = graph.messages()[-1]
    assert up.headers["content-type"].startswith("multipart/form-data")
    assert up.params["reply_to"] == {"mid": "m_in3"}, up.params
