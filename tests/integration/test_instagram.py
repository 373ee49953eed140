"""The instagram plugin against the fake Graph API: signed webhooks with
object "instagram", DMs, story replies and mentions flagged, quick replies,
read statuses, and Send API bodies."""

import base64
import time

import pytest

from conftest import wait_until
from fakeprovider import SSE, send, wait_state
from fakes.meta import FakeGraph, post_webhook
from providers import (create_instance, inbound_messages, instance_status, metric, start_daemon,
                       wait_instance_state)

TOKEN = "IGQVfaketoken"
APP_SECRET = "ig-app-secret"
IG_ID = "17841400000000000"
IGSID = "998877665544"


@pytest.fixture
def graph():
    g = FakeGraph(TOKEN, page_id=IG_ID).start()
    yield g
    assert g.errors == [], "requests the Graph API would refuse: %r" % g.errors
    g.close()


def instance(d, graph):
    iid = create_instance(d, "instagram", "ig", {"ig_account_id": IG_ID, "api_base": graph.url},
                          {"access_token": TOKEN, "app_secret": APP_SECRET,
                           "verify_token": "igv"})
    wait_instance_state(d, iid, "connected")
    return iid


def ig_event(*items):
    return {"object": "instagram", "entry": [{"id": IG_ID, "time": int(time.time() * 1000),
                                              "messaging": list(items)}]}


def item(**kw):
    it = {"sender": {"id": IGSID}, "recipient": {"id": IG_ID},
          "timestamp": int(time.time() * 1000)}
    it.update(kw)
    return it


def test_inbound_dm_story_reply_and_mention(make_daemon, graph):
    d = start_daemon(make_daemon, "instagram")
    iid = instance(d, graph)
    hook = "/webhook/instagram/" + iid
    sse = SSE(d.port, "/v1/events?instance=" + iid, key=d.admin_key)
    try:
        ev = ig_event(
            item(message={"mid": "ig_1", "text": "hey"}),
            item(message={"mid": "ig_2", "text": "nice story",
                          "reply_to": {"story": {"url": "https://cdn.test/s.mp4",
                                                 "id": "1790"}}}),
            item(message={"mid": "ig_3", "attachments": [
                {"type": "story_mention", "payload": {"url": "https://cdn.test/m.jpg"}}]}),
            item(message={"mid": "ig_4", "text": "Red", "quick_reply": {"payload": "RED"}}))
        assert post_webhook(d, hook, ev, secret="wrong").status == 403
        assert post_webhook(d, hook, ev, secret=APP_SECRET).status == 200
        wait_until(lambda: len(sse.snapshot()) >= 4, 5, what="4 events")
        evs = {e["data"]["data"]["message_id"]: e for e in sse.snapshot()}
        assert evs["ig_1"]["data"]["data"]["text"] == "hey"
        assert evs["ig_2"]["data"]["data"]["story_reply"] == {"url": "https://cdn.test/s.mp4",
                                                              "id": "1790"}
        assert evs["ig_3"]["data"]["data"]["story_mention"] == {"url": "https://cdn.test/m.jpg"}
        assert evs["ig_4"]["event"] == "interaction" and evs["ig_4"]["data"]["data"]["id"] == "RED"
        # A Messenger-shaped body (object "page") is not ours: acknowledged, ignored.
        page = dict(ig_event(item(message={"mid": "x", "text": "x"})), object="page")
        assert post_webhook(d, hook, page, secret=APP_SECRET).status == 200
        time.sleep(0.3)
        assert len(inbound_messages(d, iid)) == 3
    finally:
        sse.close()


def test_send_and_read_status(make_daemon, graph):
    d = start_daemon(make_daemon, "instagram")
    iid = instance(d, graph)
    acc = send(d, iid, {"to": IGSID, "text": "Colour?",
                        "buttons": [{"id": "RED", "title": "Red"}, {"id": "BLUE", "title": "Blue"}]})
    doc = wait_state(d, acc["id"], "sent")
    r = graph.messages()[-1]
    assert r.route == "/v23.0/me/messages" and r.headers["authorization"] == "Bearer " + TOKEN
    assert r.params == {"recipient": {"id": IGSID}, "messaging_type": "RESPONSE", "message": {
        "text": "Colour?", "quick_replies": [
            {"content_type": "text", "title": "Red", "payload": "RED"},
            {"content_type": "text", "title": "Blue", "payload": "BLUE"}]}}, r.params
    acc2 = send(d, iid, {"to": IGSID, "media": {"url": "https://x.test/a.jpg",
                                                "mime_type": "image/jpeg"}})
    wait_state(d, acc2["id"], "sent")
    assert graph.messages()[-1].params["message"] == {
        "attachment": {"type": "image", "payload": {"url": "https://x.test/a.jpg",
                                                    "is_reusable": True}}}
    read = ig_event(item(sender={"id": IGSID}, read={"mid": doc["provider_message_id"]}))
    assert post_webhook(d, "/webhook/instagram/" + iid, read, secret=APP_SECRET).status == 200
    wait_state(d, acc["id"], "read")


def test_uploaded_media_degraded_to_text(make_daemon, graph):
    """The Instagram API with Instagram Login takes media by URL only: data_base64 media is
    sent as the text with the caption and a note, counted as media_degraded."""
    d = start_daemon(make_daemon, "instagram")
    iid = instance(d, graph)
    acc = send(d, iid, {"to": IGSID, "text": "Here it is",
                        "media": {"data_base64": base64.b64encode(b"\x89PNG").decode(),
                                  "mime_type": "image/png", "caption": "our menu"}})
    wait_state(d, acc["id"], "sent")
    r = graph.messages()[-1]
    assert r.headers["content-type"] == "application/json", r.headers
    assert r.params["message"] == {"text": "Here it is\n\nour menu\n[an attachment this provider "
                                           "cannot show was left out]"}, r.params
    assert instance_status(d, iid)["provider_status"]["media_degraded"] == 1
    assert metric(d, "switchboard_plugin_media_degraded_total", provider="instagram",
                  instance=iid) == 1


def test_generic_and_button_templates(make_daemon, graph):
    """The Instagram API with Instagram Login documents the generic and the button
    template (message.attachment {type: template, payload}); other template types fail."""
    d = start_daemon(make_daemon, "instagram")
    iid = instance(d, graph)
    generic = {"template_type": "generic", "elements": [
        {"title": "Red shirt", "image_url": "https://x.test/r.png", "subtitle": "cotton",
         "default_action": {"type": "web_url", "url": "https://x.test/r"},
         "buttons": [{"type": "web_url", "url": "https://x.test/r", "title": "View"},
                     {"type": "postback", "title": "Buy", "payload": "BUY_RED"}]}]}
    acc = send(d, iid, {"to": IGSID, "template": generic})
    doc = wait_state(d, acc["id"], "sent")
    assert graph.messages()[-1].params == {
        "recipient": {"id": IGSID}, "messaging_type": "RESPONSE",
        "message": {"attachment": {"type": "template", "payload": generic}}}
    assert doc["provider_message_id"].startswith("m_FAKE"), doc

    # The text fills a button template without one.
    buttons = [{"type": "postback", "title": "Talk", "payload": "TALK"}]
    acc = send(d, iid, {"to": IGSID, "text": "What next?",
                        "template": {"template_type": "button", "buttons": buttons}})
    wait_state(d, acc["id"], "sent")
    assert graph.messages()[-1].params["message"]["attachment"]["payload"] == {
        "template_type": "button", "text": "What next?", "buttons": buttons}

    n = len(graph.messages())
    acc = send(d, iid, {"to": IGSID, "template": {"template_type": "media", "elements": [
        {"media_type": "image", "url": "https://x.test/m"}]}})
    assert "generic and button" in wait_state(d, acc["id"], "failed")["last_error"]
    assert len(graph.messages()) == n
