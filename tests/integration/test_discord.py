"""The discord plugin end to end against fakes/discord.py: the interactions
endpoint (Ed25519 good, bad, stale; PING/PONG; deferred answers), the
Gateway (Identify with intents, heartbeats with jitter, ACK loss, Resume with
the stored session after a drop, a Reconnect, an Invalid Session and a daemon
restart, fatal close codes), command registration, and sends (bodies,
429 retry_after, buckets under a burst)."""

import json
import os
import time

import pytest

from conftest import base_config, free_port, plugin_dir, wait_until
from fakeprovider import SSE, FAST_OUTBOX, send, wait_state
from fakes.discord import (APP_ID, BOT_ID, BOT_TOKEN, Ed25519Key, FakeDiscord,
                           command_interaction, component_interaction, message_create,
                           rest_429, rest_error)

HOOK = "/webhook/discord/dc"
CHANNEL = "1100000000000000001"
COMMANDS = [{"name": "weather", "description": "Weather for a city", "type": 1,
             "options": [{"name": "city", "description": "city", "type": 3, "required": True}]}]


@pytest.fixture(scope="module")
def key():
    return Ed25519Key()


@pytest.fixture
def fake():
    f = FakeDiscord(heartbeat_interval=600).start()
    yield f
    f.close()


def start(make_daemon, fake, key, gateway=True, wait=True, **settings):
    cfg = base_config(free_port())
    cfg["plugins"]["discord"] = {"enabled": True}
    s = {"bot_token": BOT_TOKEN, "application_id": APP_ID, "public_key": key.public_hex,
         "api_base": fake.api_base, "gateway_url": fake.gw.url, "gateway": gateway}
    s.update(settings)
    cfg["instances"]["dc"] = {"provider": "discord", "settings": s}
    cfg["outbox"] = dict(FAST_OUTBOX)
    d = make_daemon(config=cfg, plugins={"echo.so": os.path.join(plugin_dir(), "echo.so"),
                                         "discord.so": os.path.join(plugin_dir(), "discord.so")})
    if wait:
        wait_until(lambda: status(d) is not None, 10, what="instance dc running")
    return d


def status(d):
    r = d.api("GET", "/v1/instances/dc")
    if r.status != 200 or not r.json()["status"].get("running"):
        return None
    return r.json()["status"]


def gw_status(d):
    return status(d)["provider_status"]["gateway"]


def inbound_texts(d):
    r = d.api("GET", "/v1/instances/dc/messages?limit=100")
    return sorted(m["body"]["text"] for m in r.json()["messages"] if m["direction"] == "in")


def post_interaction(d, key, body, **kw):
    raw = json.dumps(body).encode()
    return d.post(HOOK, raw, headers=key.headers(raw, **kw))


# -- interactions endpoint -----------------------------------------------------------------

def test_ping_pong_and_bad_signatures(make_daemon, fake, key):
    d = start(make_daemon, fake, key, gateway=False)
    r = post_interaction(d, key, {"type": 1, "id": "1", "application_id": APP_ID, "token": "t",
                                  "version": 1})
    assert r.status == 200 and r.json() == {"type": 1}, r
    raw = json.dumps({"type": 1}).encode()
    good = key.headers(raw)
    forged = dict(good, **{"X-Signature-Ed25519": "00" * 64})
    assert d.post(HOOK, raw, headers=forged).status == 401
    other = Ed25519Key()
    assert d.post(HOOK, raw, headers=other.headers(raw)).status == 401
    tampered = json.dumps({"type": 2}).encode()
    assert d.post(HOOK, tampered, headers=good).status == 401
    assert d.post(HOOK, raw, headers={"Content-Type": "application/json"}).status == 401
    stale = key.headers(raw, timestamp=int(time.time()) - 3600)
    assert d.post(HOOK, raw, headers=stale).status == 401
    assert status(d)["provider_status"]["refused"] == 5


def test_command_and_component_interactions(make_daemon, fake, key):
    d = start(make_daemon, fake, key, gateway=False)
    sse = SSE(d.port, "/v1/events?types=interaction", key=d.admin_key)
    try:
        r = post_interaction(d, key, command_interaction())
        assert r.status == 200 and r.json() == {"type": 5}, r
        ev = sse.wait_for(lambda e: e["data"]["data"]["kind"] == "command")["data"]["data"]
        assert ev["command"] == "weather" and ev["options"][0]["value"] == "Paris", ev
        assert ev["from"] == "2000000000000000001" and ev["chat"] == CHANNEL, ev
        assert ev["interaction_token"] == "itok-1", ev
        r = post_interaction(d, key, component_interaction(custom_id="y"))
        assert r.status == 200 and r.json() == {"type": 6}, r
        ev = sse.wait_for(lambda e: e["data"]["data"]["kind"] == "button")["data"]["data"]
        assert ev["button_id"] == "y" and ev["message_id"] == "1200000000000000001", ev
        # The same interaction again (a replay): answered, stored once.
        assert post_interaction(d, key, component_interaction(custom_id="y")).status == 200
        time.sleep(0.5)
        assert len([e for e in sse.snapshot() if e["data"]["data"]["kind"] == "button"]) == 1
    finally:
        sse.close()
        time.sleep(0.5)  # let the daemon see the stream end before teardown


def test_commands_registered_on_start(make_daemon, fake, key):
    start(make_daemon, fake, key, gateway=False, commands=COMMANDS)
    puts = fake.wait_count(1, 10, path="/api/v10/applications/%s/commands" % APP_ID)
    assert puts[0].method == "PUT" and puts[0].json == COMMANDS, puts[0]
    assert puts[0].headers["authorization"] == "Bot " + BOT_TOKEN


# -- Gateway -------------------------------------------------------------------------------

def test_gateway_identify_heartbeat_dispatches(make_daemon, fake, key):
    t0 = time.monotonic()
    d = start(make_daemon, fake, key)
    conn, ident = fake.wait_identified()
    assert conn.path == "/?v=10&encoding=json", conn.path
    assert ident["token"] == BOT_TOKEN, ident
    assert ident["intents"] == (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15), ident
    assert set(ident["properties"]) == {"os", "browser", "device"}, ident
    wait_until(lambda: gw_status(d)["ready"], 5, what="READY")
    # Heartbeats: the first within one interval (jitter), then every interval, d = last seq.
    wait_until(lambda: len(fake.heartbeats) >= 3, 5, what="three heartbeats")
    hb = fake.heartbeats
    assert hb[0][0] - t0 < 0.6 + 1.5, hb
    gaps = [b[0] - a[0] for a, b in zip(hb[1:], hb[2:])]
    assert all(0.45 < g < 0.9 for g in gaps), gaps
    assert hb[1][1] == 1, hb  # READY was s=1
    sse = SSE(d.port, "/v1/events", key=d.admin_key)
    try:
        fake.dispatch("MESSAGE_CREATE", message_create("from alice"))
        fake.dispatch("MESSAGE_CREATE", message_create("from me", mid="1300000000000000002",
                                                       author_id=BOT_ID))
        fake.dispatch("INTERACTION_CREATE", command_interaction(iid="1400000000000000009",
                                                                token="gw-token"))
        ev = sse.wait_for(lambda e: e["event"] == "message.received")["data"]["data"]
        assert ev["text"] == "from alice" and ev["from"] == "2000000000000000001", ev
        assert ev["chat"] == CHANNEL and ev["message_id"] == "1300000000000000001", ev
        sse.wait_for(lambda e: e["event"] == "interaction")
        cb = fake.wait_count(1, 5, path="/api/v10/interactions/1400000000000000009/gw-token/callback")
        assert cb[0].json == {"type": 5}, cb[0]
        time.sleep(0.3)
        assert inbound_texts(d) == ["from alice"]  # our own message is skipped
    finally:
        sse.close()
        time.sleep(0.5)  # let the daemon see the stream end before teardown
    assert gw_status(d)["seq"] == 4


def test_gateway_drop_resumed_without_gaps_or_repeats(make_daemon, fake, key):
    d = start(make_daemon, fake, key)
    fake.wait_identified()
    wait_until(lambda: gw_status(d)["ready"], 5, what="READY")
    for i in range(3):
        fake.dispatch("MESSAGE_CREATE", message_create("m%d" % i, mid="13000000000000001%02d" % i))
    wait_until(lambda: len(inbound_texts(d)) == 3, 5, what="three messages")
    session = gw_status(d)["session_id"]
    fake.live_conn().drop()
    # Sent while the bot is away: the resume must replay them.
    for i in range(3, 5):
        fake.dispatch("MESSAGE_CREATE", message_create("m%d" % i, mid="13000000000000001%02d" % i))
    conn, resume = fake.wait_resumed()
    assert conn.path == "/resume/?v=10&encoding=json", conn.path
    assert resume == {"token": BOT_TOKEN, "session_id": session, "seq": 4}, resume
    fake.dispatch("MESSAGE_CREATE", message_create("m5", mid="1300000000000000105"))
    wait_until(lambda: len(inbound_texts(d)) >= 6, 5, what="six messages")
    time.sleep(0.3)
    assert inbound_texts(d) == ["m0", "m1", "m2", "m3", "m4", "m5"]
    assert len(fake.identifies) == 1
    wait_until(lambda: gw_status(d)["ready"], 5, what="RESUMED")


def test_gateway_reconnect_and_invalid_session(make_daemon, fake, key):
    d = start(make_daemon, fake, key)
    fake.wait_identified()
    wait_until(lambda: gw_status(d)["ready"], 5, what="READY")
    first = fake.live_conn()
    first.send_json({"op": 7, "d": None})
    conn, resume = fake.wait_resumed()
    first.wait_closed(5)
    assert first.close_code not in (1000, 1001), first.close_code  # resumable close
    wait_until(lambda: gw_status(d)["ready"], 5, what="RESUMED")
    # Invalid Session, resumable: resume again.
    conn.send_json({"op": 9, "d": True})
    fake.wait_resumed(2)
    # Invalid Session, not resumable: a new Identify after 1-5 s.
    t0 = time.monotonic()
    fake.live_conn().send_json({"op": 9, "d": False})
    fake.wait_identified(2, timeout=10)
    assert 0.9 < time.monotonic() - t0 < 7
    wait_until(lambda: gw_status(d)["ready"] and gw_status(d)["session_id"] == "sess-2", 5,
               what="the new session")


def test_gateway_missed_heartbeat_ack_reconnects(make_daemon, fake, key):
    d = start(make_daemon, fake, key)
    fake.wait_identified()
    wait_until(lambda: gw_status(d)["ready"], 5, what="READY")
    first = fake.live_conn()
    fake.ack = False
    first.wait_closed(5)  # the client gives up on the zombie connection
    fake.ack = True
    fake.wait_resumed(1, timeout=10)
    wait_until(lambda: gw_status(d)["ready"], 5, what="RESUMED")


def test_gateway_fatal_close_code(make_daemon, fake, key):
    d = start(make_daemon, fake, key)
    fake.wait_identified()
    fake.live_conn().close(4004, "Authentication failed.")
    wait_until(lambda: status(d)["state"] == "error", 5, what="error state")
    time.sleep(2.5)
    assert len(fake.gw.conns) == 1  # not reconnected


def test_gateway_resumes_after_daemon_restart(make_daemon, fake, key):
    d = start(make_daemon, fake, key)
    fake.wait_identified()
    wait_until(lambda: gw_status(d)["ready"], 5, what="READY")
    fake.dispatch("MESSAGE_CREATE", message_create("before"))
    wait_until(lambda: inbound_texts(d) == ["before"], 5, what="first message")
    session = gw_status(d)["session_id"]
    time.sleep(0.5)  # the key-value store writes behind
    assert d.stop() == 0
    fake.dispatch("MESSAGE_CREATE", message_create("while down", mid="1300000000000000002"))
    d.start()
    conn, resume = fake.wait_resumed(timeout=15)
    assert resume["session_id"] == session and resume["seq"] == 2, resume
    assert conn.path.startswith("/resume/"), conn.path
    wait_until(lambda: inbound_texts(d) == ["before", "while down"], 5, what="replayed message")
    assert len(fake.identifies) == 1


# -- sending -------------------------------------------------------------------------------

def test_send_bodies(make_daemon, fake, key):
    d = start(make_daemon, fake, key, gateway=False)
    acc = send(d, "dc", {"to": CHANNEL, "text": "hello discord"})
    doc = wait_state(d, acc["id"], "sent")
    post = fake.posts()[0]
    assert post.headers["authorization"] == "Bot " + BOT_TOKEN
    assert post.json == {"content": "hello discord"}, post.json
    assert doc["provider_message_id"] == "1200000000000000001", doc

    acc = send(d, "dc", {"to": CHANNEL, "text": "Pick", "reply_to": "1300000000000000001",
                         "buttons": [{"id": "b%d" % i, "title": "B%d" % i} for i in range(7)]})
    assert acc["degraded"] == [], acc
    wait_state(d, acc["id"], "sent")
    body = fake.posts()[1].json
    assert body["content"] == "Pick"
    assert body["message_reference"] == {"message_id": "1300000000000000001",
                                         "fail_if_not_exists": False}, body
    rows = body["components"]
    assert [len(r["components"]) for r in rows] == [5, 2] and all(r["type"] == 1 for r in rows)
    assert rows[0]["components"][0] == {"type": 2, "style": 1, "label": "B0", "custom_id": "b0"}

    embeds = [{"title": "Report", "description": "all good", "color": 5814783}]
    select = [{"type": 1, "components": [{"type": 3, "custom_id": "pick", "options": [
        {"label": "A", "value": "a"}, {"label": "B", "value": "b"}]}]}]
    acc = send(d, "dc", {"to": CHANNEL, "text": "rich", "thread": "1100000000000000077",
                         "provider_options": {"embeds": embeds, "components": select},
                         "media": {"url": "https://example.com/a.png", "mime_type": "image/png"}})
    wait_state(d, acc["id"], "sent")
    post = fake.posts("1100000000000000077")[0]
    assert post.json["embeds"] == embeds + [{"image": {"url": "https://example.com/a.png"}}]
    assert post.json["components"] == select

    fake.script(rest_error(403, "Missing Permissions", 50013))
    acc = send(d, "dc", {"to": CHANNEL, "text": "forbidden"})
    doc = wait_state(d, acc["id"], "failed")
    assert doc["attempts"] == 1 and "Missing Permissions" in doc["last_error"], doc
    r = d.api("POST", "/v1/instances/dc/messages", {"to": CHANNEL, "text": "x",
                                                    "provider_options": []})
    assert r.status == 400, r


def test_send_429_retry_after_honoured(make_daemon, fake, key):
    d = start(make_daemon, fake, key, gateway=False)
    fake.script(rest_429(retry_after=1.2))
    acc = send(d, "dc", {"to": CHANNEL, "text": "slow"})
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["attempts"] == 2, doc
    a, b = fake.posts()[:2]
    assert b.time - a.time >= 1.15, (a, b)
    fake.script(rest_429(retry_after=1.0, global_=True))
    acc = send(d, "dc", {"to": CHANNEL, "text": "global"})
    wait_state(d, acc["id"], "sent", timeout=15)


def test_rate_limit_buckets_respected_under_burst(make_daemon, fake, key):
    fake.limit, fake.window = 4, 1.0
    d = start(make_daemon, fake, key, gateway=False)
    other = "1100000000000000002"
    t0 = time.monotonic()
    ids = [send(d, "dc", {"to": CHANNEL, "text": "burst %d" % i})["id"] for i in range(12)]
    ids += [send(d, "dc", {"to": other, "text": "other %d" % i})["id"] for i in range(4)]
    for mid in ids:
        wait_state(d, mid, "sent", timeout=20)
    assert fake.violations == 0, "requests over a bucket's limit: %d" % fake.violations
    assert len(fake.posts(CHANNEL)) == 12 and len(fake.posts(other)) == 4
    # 12 in buckets of 4 per second need at least two resets.
    assert time.monotonic() - t0 >= 2.0
    # The other channel's bucket was not held behind the first one.
    first_other = min(r.time for r in fake.posts(other))
    last_main = max(r.time for r in fake.posts(CHANNEL))
    assert first_other < last_main
    st = status(d)["provider_status"]
    assert st["rate_limited"] == 0, st
    assert {b["bucket"] for b in st["buckets"]} == {"fakebucket0001", "fakebucket0002"}, st
