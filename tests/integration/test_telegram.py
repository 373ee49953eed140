"""The telegram plugin against a fake Bot API (fakes/telegram.py): setWebhook
on start, the secret-token header, polling with the offset kept across a
restart, every send kind and its request body, 429 retry_after, an invalid
token failing the message and the instance going to error and back."""

import base64
import time

import pytest

from conftest import wait_until
from fakeprovider import SSE, get_message, send, wait_state
from fakes.telegram import FakeTelegram
from providers import (create_instance, inbound_messages, instance_status, metric, start_daemon,
                       wait_inbound, wait_instance_state)

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
SECRET = "s3cr3t_token-A"
PUBLIC = "https://bot.example.test/sb"
CHAT = 4242


@pytest.fixture
def tg():
    f = FakeTelegram(TOKEN).start()
    yield f
    assert f.errors == [], "requests the Bot API would refuse: %r" % f.errors
    f.close()


def webhook_instance(d, tg, name="tg-hook"):
    iid = create_instance(d, "telegram", name,
                          {"mode": "webhook", "public_url": PUBLIC, "api_base": tg.url},
                          {"bot_token": TOKEN, "webhook_secret": SECRET})
    wait_instance_state(d, iid, "connected")
    return iid


def polling_instance(d, tg, name="tg-poll", token=TOKEN):
    iid = create_instance(d, "telegram", name,
                          {"mode": "polling", "api_base": tg.url, "poll_timeout": 1},
                          {"bot_token": token})
    return iid


def user(uid=CHAT, name="Ada"):
    return {"id": uid, "is_bot": False, "first_name": name, "username": name.lower()}


def message(mid, text, chat=CHAT, **extra):
    m = {"message_id": mid, "date": int(time.time()), "from": user(chat),
         "chat": {"id": chat, "type": "private", "first_name": "Ada"}, "text": text}
    m.update(extra)
    return m


def post_update(d, iid, update, secret=SECRET):
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    return d.post("/webhook/telegram/" + iid, update, headers=headers)


# -- webhook mode -------------------------------------------------------------------------

def test_webhook_mode_sets_webhook_on_start(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = webhook_instance(d, tg)
    calls = tg.calls("setWebhook")
    assert len(calls) == 1, calls
    p = calls[0].params
    assert p["url"] == "%s/webhook/telegram/%s" % (PUBLIC, iid), p
    assert p["secret_token"] == SECRET, p
    assert calls[0].headers["content-type"].startswith("application/json")
    assert tg.webhook["url"] == p["url"]
    st = instance_status(d, iid)
    assert st["provider_status"]["mode"] == "webhook", st
    # The token never shows in the API or the log.
    assert TOKEN not in d.api("GET", "/v1/instances/" + iid).text
    assert TOKEN not in d.raw_log()


def test_webhook_refuses_missing_or_wrong_secret(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = webhook_instance(d, tg)
    upd = {"update_id": 1, "message": message(10, "hi")}
    r = post_update(d, iid, upd, secret=None)
    assert r.status == 401, r
    assert r.json()["error"]["code"] == "bad_secret_token", r
    r = post_update(d, iid, upd, secret=SECRET + "x")
    assert r.status == 401, r
    assert metric(d, "switchboard_plugin_signature_rejected_total", provider="telegram",
                  instance=iid) == 2
    assert inbound_messages(d, iid) == []
    r = post_update(d, iid, upd)
    assert r.status == 200, r
    got = wait_inbound(d, iid, 1)
    assert got[0]["body"]["text"] == "hi" and got[0]["from"] == str(CHAT), got


def test_webhook_inbound_kinds(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = webhook_instance(d, tg)
    sse = SSE(d.port, "/v1/events?instance=" + iid, key=d.admin_key)
    try:
        assert post_update(d, iid, {"update_id": 11, "message": message(
            20, "first", reply_to_message=message(19, "earlier"))}).status == 200
        assert post_update(d, iid, {"update_id": 12, "edited_message": dict(
            message(20, "first, edited"), edit_date=int(time.time()))}).status == 200
        assert post_update(d, iid, {"update_id": 13, "message": dict(
            message(21, None), photo=[{"file_id": "small", "file_unique_id": "a", "width": 90,
                                       "height": 90},
                                      {"file_id": "big", "file_unique_id": "b", "width": 800,
                                       "height": 800}], caption="look")}).status == 200
        cq = {"id": "cbq-77", "from": user(), "chat_instance": "ci",
              "message": message(30, "Pick one"), "data": "yes"}
        assert post_update(d, iid, {"update_id": 14, "callback_query": cq}).status == 200
        # A redelivered update is dropped by its event id.
        assert post_update(d, iid, {"update_id": 11, "message": message(20, "first")}).status \
            == 200

        ev = sse.wait_for(lambda e: e["event"] == "interaction", timeout=5)
        data = ev["data"]["data"]
        assert data["id"] == "yes" and data["interaction_id"] == "cbq-77", data
        assert data["from"] == str(CHAT) and data["message_id"] == "30", data
        received = [e["data"]["data"] for e in sse.snapshot() if e["event"] == "message.received"]
        wait_until(lambda: len([e for e in sse.snapshot() if e["event"] == "message.received"])
                   >= 3, 5, what="3 message.received")
        received = [e["data"]["data"] for e in sse.snapshot() if e["event"] == "message.received"]
        assert [r["text"] for r in received] == ["first", "first, edited", "look"], received
        assert received[0]["reply_to"] == "19" and "edited" not in received[0], received
        assert received[1]["edited"] is True and received[1]["message_id"] == "20", received
        assert received[2]["media"]["type"] == "photo", received
        assert received[2]["media"]["file_id"] == "big", received
        assert received[0]["sender"]["username"] == "ada", received
    finally:
        sse.close()
    acks = tg.wait_for(lambda r: r.route.endswith("/answerCallbackQuery"), 1, 5)
    assert acks[0].params == {"callback_query_id": "cbq-77"}, acks[0].params
    assert len(inbound_messages(d, iid)) == 3


# -- polling ------------------------------------------------------------------------------

def test_polling_offset_persisted_across_restart(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    # A webhook left over from before is removed before polling.
    tg.webhook = {"url": "https://old.example.test/hook"}
    iid = polling_instance(d, tg)
    wait_instance_state(d, iid, "connected")
    assert tg.calls("deleteWebhook"), "polling must delete a webhook first"
    first = [tg.push_update(message=message(100 + i, "m%d" % i)) for i in range(3)]
    wait_inbound(d, iid, 3)
    last = first[-1]["update_id"]
    wait_until(lambda: tg.poll_offsets and tg.poll_offsets[-1] == last + 1, 5,
               what="getUpdates confirming the updates")
    d.stop()
    assert d.returncode == 0
    # While it is down, two more arrive; the confirmed ones are gone at the fake,
    # so a plugin that forgot its offset would ask from 0 and get only these two:
    # the offset it asks with after the restart is what proves it was kept.
    n_polls = len(tg.poll_offsets)
    more = [tg.push_update(message=message(200 + i, "n%d" % i)) for i in range(2)]
    d.start()
    wait_inbound(d, iid, 5)
    assert tg.poll_offsets[n_polls] == last + 1, tg.poll_offsets
    texts = sorted(m["body"]["text"] for m in inbound_messages(d, iid))
    assert texts == ["m0", "m1", "m2", "n0", "n1"], texts
    time.sleep(1.5)  # a few more polls: nothing comes twice
    assert len(inbound_messages(d, iid)) == 5
    assert more[-1]["update_id"] + 1 in tg.poll_offsets
    for r in tg.calls("getUpdates"):
        assert r.params["timeout"] == 1 and r.params["limit"] == 100, r.params


# -- sending ------------------------------------------------------------------------------

def test_send_kinds_and_request_bodies(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = webhook_instance(d, tg)

    acc = send(d, iid, {"to": str(CHAT), "text": "hello", "reply_to": "17"})
    doc = wait_state(d, acc["id"], "sent")
    p = tg.calls("sendMessage")[-1].params
    assert p == {"chat_id": CHAT, "text": "hello",
                 "reply_parameters": {"message_id": 17, "allow_sending_without_reply": True}}, p
    assert doc["provider_message_id"] == "500", doc

    acc = send(d, iid, {"to": str(CHAT), "text": "Pick one",
                        "buttons": [{"id": "y", "title": "Yes"}, {"id": "n", "title": "No"}]})
    assert acc["degraded"] == []
    wait_state(d, acc["id"], "sent")
    p = tg.calls("sendMessage")[-1].params
    assert p["reply_markup"] == {"inline_keyboard": [[{"text": "Yes", "callback_data": "y"}],
                                                     [{"text": "No", "callback_data": "n"}]]}, p
    assert "parse_mode" not in p, p

    acc = send(d, iid, {"to": str(CHAT), "text": "Size?",
                        "quick_replies": [{"id": "s", "title": "S"}, {"id": "m", "title": "M"}]})
    wait_state(d, acc["id"], "sent")
    p = tg.calls("sendMessage")[-1].params
    assert p["reply_markup"] == {"keyboard": [[{"text": "S"}], [{"text": "M"}]],
                                 "one_time_keyboard": True, "resize_keyboard": True}, p

    acc = send(d, iid, {"to": str(CHAT), "text": "*bold*", "format": "markdown"})
    wait_state(d, acc["id"], "sent")
    assert tg.calls("sendMessage")[-1].params["parse_mode"] == "MarkdownV2"

    acc = send(d, iid, {"to": "@channel", "media": {"url": "https://x.test/a.png",
                                                    "mime_type": "image/png", "caption": "pic"}})
    wait_state(d, acc["id"], "sent")
    p = tg.calls("sendPhoto")[-1].params
    assert p == {"chat_id": "@channel", "photo": "https://x.test/a.png", "caption": "pic"}, p

    acc = send(d, iid, {"to": str(CHAT), "text": "the report",
                        "media": {"url": "https://x.test/r.pdf", "mime_type": "application/pdf"}})
    wait_state(d, acc["id"], "sent")
    p = tg.calls("sendDocument")[-1].params
    assert p == {"chat_id": CHAT, "document": "https://x.test/r.pdf", "caption": "the report"}, p

    data = b"%PDF-1.4 not really\x00\x01"
    acc = send(d, iid, {"to": str(CHAT), "media": {
        "data_base64": base64.b64encode(data).decode(), "mime_type": "application/pdf",
        "filename": "r.pdf"}})
    wait_state(d, acc["id"], "sent")
    rec = tg.calls("sendDocument")[-1]
    assert rec.headers["content-type"].startswith("multipart/form-data; boundary="), rec.headers
    assert rec.params["document"]["filename"] == "r.pdf", rec.params
    assert rec.params["document"]["data"] == data
    assert rec.params["document"]["content_type"] == "application/pdf"
    assert rec.params["chat_id"] == str(CHAT)

    # A button id Telegram cannot carry fails the message at once, with the reason.
    acc = send(d, iid, {"to": str(CHAT), "text": "x", "buttons": [{"id": "z" * 65, "title": "Z"}]})
    doc = wait_state(d, acc["id"], "failed")
    assert "64 bytes" in doc["last_error"], doc


def test_429_retry_after_is_honoured(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = webhook_instance(d, tg)
    tg.script("sendMessage", tg.rate_limited(2))
    acc = send(d, iid, {"to": str(CHAT), "text": "later"})
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    calls = tg.calls("sendMessage")
    assert len(calls) == 2 and calls[0].status == 429, calls
    gap = calls[1].time - calls[0].time
    assert gap >= 1.95, "retried after %.2fs, Telegram said 2 s" % gap
    assert doc["attempts"] == 2, doc


def test_burst_to_one_chat_is_paced_at_one_per_second(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = webhook_instance(d, tg)
    ids = [send(d, iid, {"to": "777", "text": "burst %d" % i})["id"] for i in range(5)]
    for mid in ids:
        wait_state(d, mid, "sent", timeout=15)
    calls = [c for c in tg.calls("sendMessage") if c.params["chat_id"] == 777]
    assert [c.params["text"] for c in calls] == ["burst %d" % i for i in range(5)], calls
    gaps = [b.time - a.time for a, b in zip(calls, calls[1:])]
    # The plugin lets them out 1 s apart; the fake sees them with some transport jitter.
    assert all(g >= 0.9 for g in gaps), "sends to one chat %r s apart (Telegram: ~1/s)" % gaps
    assert calls[-1].time - calls[0].time >= 3.9, gaps
    st = instance_status(d, iid)["provider_status"]
    assert st["paced"] >= 3 and st["queued"] == 0, st


def test_queued_sends_survive_a_restart(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = webhook_instance(d, tg)
    ids = [send(d, iid, {"to": "778", "text": "q%d" % i})["id"] for i in range(4)]
    wait_state(d, ids[0], "sent")
    d.stop()  # the other three are still queued in the plugin
    assert d.returncode == 0
    d.start()
    for mid in ids:
        wait_state(d, mid, "sent", timeout=20)
    texts = [c.params["text"] for c in tg.calls("sendMessage") if c.params["chat_id"] == 778]
    assert sorted(texts) == ["q0", "q1", "q2", "q3"], texts


def test_group_chat_is_paced_at_twenty_a_minute(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = webhook_instance(d, tg)
    ids = [send(d, iid, {"to": "-100123", "text": "g%d" % i})["id"] for i in range(2)]
    for mid in ids:
        wait_state(d, mid, "sent", timeout=15)
    calls = [c for c in tg.calls("sendMessage") if c.params["chat_id"] == -100123]
    assert len(calls) == 2 and calls[1].time - calls[0].time >= 2.9, calls


def test_global_limit_thirty_per_second(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = webhook_instance(d, tg)
    ids = [send(d, iid, {"to": str(10000 + i), "text": "n%d" % i})["id"] for i in range(40)]
    for mid in ids:
        wait_state(d, mid, "sent", timeout=15)
    times = sorted(c.time for c in tg.calls("sendMessage"))
    assert len(times) == 40, len(times)
    assert times[-1] - times[0] >= 0.9, "40 sends in %.2f s (Telegram: ~30/s)" % (
        times[-1] - times[0])
    # No 1 s window holds more than 30 (less transport jitter at the fake).
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u - t < 0.9) <= 30, times


def test_pacing_can_be_turned_off(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = create_instance(d, "telegram", "tg-fast",
                          {"mode": "webhook", "public_url": PUBLIC, "api_base": tg.url,
                           "pace_chat_ms": 0, "pace_global_per_second": 0},
                          {"bot_token": TOKEN, "webhook_secret": SECRET})
    wait_instance_state(d, iid, "connected")
    ids = [send(d, iid, {"to": "888", "text": "f%d" % i})["id"] for i in range(5)]
    for mid in ids:
        wait_state(d, mid, "sent")
    calls = [c for c in tg.calls("sendMessage") if c.params["chat_id"] == 888]
    assert len(calls) == 5 and calls[-1].time - calls[0].time < 0.9, calls


def test_instances_of_one_bot_token_share_the_pacing(make_daemon, tg):
    """Telegram's limits are per bot: two instances of one token are paced as one (one
    chat gets one message a second from both together), the strictest settings apply, and
    an instance of another token has a pacer of its own."""
    other = FakeTelegram("654321:OTHER-token").start()
    try:
        d = start_daemon(make_daemon, "telegram")
        a = webhook_instance(d, tg, name="tg-a")
        b = create_instance(d, "telegram", "tg-b",
                            {"mode": "webhook", "public_url": PUBLIC, "api_base": tg.url,
                             "pace_group_ms": 4000},
                            {"bot_token": TOKEN, "webhook_secret": SECRET})
        wait_instance_state(d, b, "connected")
        c = create_instance(d, "telegram", "tg-c",
                            {"mode": "webhook", "public_url": PUBLIC, "api_base": other.url},
                            {"bot_token": "654321:OTHER-token", "webhook_secret": SECRET})
        wait_instance_state(d, c, "connected")
        pa = instance_status(d, a)["provider_status"]["pacer"]
        assert pa["instances"] == 2 and pa["group_ms"] == 4000 and pa["chat_ms"] == 1000, pa
        assert instance_status(d, b)["provider_status"]["pacer"]["instances"] == 2
        pc = instance_status(d, c)["provider_status"]["pacer"]
        assert pc["instances"] == 1 and pc["group_ms"] == 3000, pc

        ids = []
        for i in range(2):
            ids.append(send(d, a, {"to": "779", "text": "a%d" % i})["id"])
            ids.append(send(d, b, {"to": "779", "text": "b%d" % i})["id"])
        for mid in ids:
            wait_state(d, mid, "sent", timeout=15)
        calls = sorted((x for x in tg.calls("sendMessage") if x.params["chat_id"] == 779),
                       key=lambda x: x.time)
        assert sorted(x.params["text"] for x in calls) == ["a0", "a1", "b0", "b1"], calls
        gaps = [q.time - p.time for p, q in zip(calls, calls[1:])]
        # One pacer: the four go out ~1 s apart (separate pacers would send a0 and b0 together).
        assert all(g >= 0.9 for g in gaps), "one chat got sends %r s apart from one bot" % gaps
        pa = instance_status(d, a)["provider_status"]
        pb = instance_status(d, b)["provider_status"]
        assert pa["pacer"]["paced"] >= 3 and pa["paced"] + pb["paced"] == pa["pacer"]["paced"], \
            (pa, pb)

        # The last instance of a token frees its pacer; the survivor's settings apply again.
        assert d.api("DELETE", "/v1/instances/" + b).status in (200, 204)
        pa = instance_status(d, a)["provider_status"]["pacer"]
        assert pa["instances"] == 1 and pa["group_ms"] == 3000, pa
    finally:
        other.close()


def test_invalid_token_fails_message_and_instance_recovers(make_daemon, tg):
    d = start_daemon(make_daemon, "telegram")
    iid = polling_instance(d, tg, token="999:wrong")
    st = wait_instance_state(d, iid, "error")
    assert "Unauthorized" in st.get("detail", ""), st
    acc = send(d, iid, {"to": str(CHAT), "text": "nope"})
    doc = wait_state(d, acc["id"], "failed")
    assert doc["attempts"] == 1 and "Unauthorized" in doc["last_error"], doc
    r = d.api("PATCH", "/v1/instances/" + iid, {"secrets": {"bot_token": TOKEN}})
    assert r.status == 200, r
    wait_instance_state(d, iid, "connected")
    acc = send(d, iid, {"to": str(CHAT), "text": "now"})
    wait_state(d, acc["id"], "sent")
