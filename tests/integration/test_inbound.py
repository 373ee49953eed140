"""Inbound: webhooks stored (deduplicated by the provider's event id) before they
are acknowledged, mirrored into messages, streamed over Server-Sent Events
(GET /v1/events) with filters and key scope, and message.status events moving
an outbound message forward only."""

import json
import os
import re
import time

import pytest

from conftest import sql, wait_until
from fakeprovider import (FP_INSTANCE, FP_WEBHOOK, SSE, FakeProvider, get_message, ok, send,
                          start_fp_daemon, wait_state)

EVT_RE = re.compile(r"^evt_[0-9a-zA-Z]+$")
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def fake():
    f = FakeProvider().start()
    yield f
    f.close()


@pytest.fixture
def streams():
    opened = []

    def open_stream(d, query="", key=None):
        s = SSE(d.port, "/v1/events" + query, key=key or d.admin_key)
        opened.append(s)
        return s

    yield open_stream
    for s in opened:
        s.close()


def events_rows(d, event_id):
    out = sql("SELECT instance_id, provider, payload FROM webhook_events WHERE "
              "provider_event_id = '%s'" % event_id, d.database)
    return [line.split("\t", 2) for line in out.strip().splitlines()]


def check_envelope(ev, type_, provider, instance):
    env = ev["data"]
    assert isinstance(env, dict), ev
    assert set(env) == {"id", "type", "provider", "instance", "created_at", "data"}, env
    assert EVT_RE.match(env["id"]), env
    assert ev["id"] == env["id"], ev
    assert ev["event"] == type_ == env["type"], ev
    assert env["provider"] == provider and env["instance"] == instance, env
    assert ISO_RE.match(env["created_at"]), env
    assert isinstance(env["data"], dict), env
    return env


def marker(d, text):
    """A webhook used as a fence: once its event is streamed, earlier ones were too."""
    r = d.webhook(body={"text": text, "from": "fence", "event_id": "fence-" + text})
    assert r.status == 200, r


# -- storing and listing --------------------------------------------------------------------------

def test_webhook_event_stored_and_listed(daemon):
    r = daemon.webhook(body={"text": "hi there", "from": "alice", "event_id": "ev-1"})
    assert r.status == 200, r
    # Durable before the answer: the row is there the moment we have the 200.
    rows = events_rows(daemon, "ev-1")
    assert len(rows) == 1, rows
    inst, provider, payload = rows[0]
    assert inst == "echo-demo" and provider == "echo", rows
    env = json.loads(payload)
    assert env["type"] == "message.received" and env["instance"] == "echo-demo", env
    assert env["data"]["from"] == "alice" and env["data"]["text"] == "echo: hi there", env
    assert env["data"]["event_id"] == "ev-1", env
    # And the inbound message is listed.
    msgs = daemon.api("GET", "/v1/instances/echo-demo/messages").json()["messages"]
    ins = [m for m in msgs if m["direction"] == "in"]
    assert len(ins) == 1, msgs
    m = ins[0]
    assert m["state"] == "received" and m["from"] == "alice", m
    assert m["body"]["text"] == "echo: hi there", m
    assert get_message(daemon, m["id"])["direction"] == "in"
    m2 = daemon.metrics()
    assert m2.value("switchboard_events_stored_total", provider="echo",
                    type="message.received") >= 1, m2.text


def test_webhook_without_event_id_is_stored_each_time(daemon):
    for _ in range(2):
        assert daemon.webhook(body={"text": "no id", "from": "b"}).status == 200
    n = sql("SELECT COUNT(*) FROM webhook_events WHERE provider_event_id IS NULL",
            daemon.database).strip()
    assert n == "2", n


def test_redelivered_event_acknowledged_stored_and_streamed_once(daemon, streams):
    s = streams(daemon)
    assert s.status == 200 and s.headers.get("content-type", "").startswith("text/event-stream")
    for _ in range(3):
        r = daemon.webhook(body={"text": "dup", "from": "c", "event_id": "ev-dup"})
        assert r.status == 200, r
    assert len(events_rows(daemon, "ev-dup")) == 1
    marker(daemon, "after-dup")
    s.wait_for(lambda e: e["data"]["data"].get("event_id") == "fence-after-dup", 5)
    got = [e for e in s.snapshot() if e["data"]["data"].get("event_id") == "ev-dup"]
    assert len(got) == 1, got
    check_envelope(got[0], "message.received", "echo", "echo-demo")
    ins = [m for m in daemon.api("GET", "/v1/instances/echo-demo/messages").json()["messages"]
           if m["body"].get("event_id") == "ev-dup"]
    assert len(ins) == 1, ins
    # The same event id on another instance is another event.
    r = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "second"})
    iid = r.json()["id"]
    wait_until(lambda: daemon.webhook(instance=iid, body={"text": "dup", "event_id": "ev-dup"})
               .status == 200, 5, what="webhook on the second instance")
    assert sorted(row[0] for row in events_rows(daemon, "ev-dup")) == sorted(["echo-demo", iid])


def test_event_not_stored_means_503_retry_after(daemon):
    """When the event cannot be written the provider hears 503 + Retry-After, and its
    redelivery later is stored (once)."""
    sql("RENAME TABLE webhook_events TO webhook_events_away", daemon.database)
    try:
        r = daemon.webhook(body={"text": "x", "from": "d", "event_id": "ev-503"})
    finally:
        sql("RENAME TABLE webhook_events_away TO webhook_events", daemon.database)
    assert r.status == 503, r
    assert (r.headers.get("retry-after") or "").strip().isdigit(), r.headers
    assert events_rows(daemon, "ev-503") == []

    def redelivered():
        return daemon.webhook(body={"text": "x", "from": "d", "event_id": "ev-503"}).status == 200
    wait_until(redelivered, 10, interval=0.3, what="redelivery accepted")
    assert len(events_rows(daemon, "ev-503")) == 1


# -- Server-Sent Events ---------------------------------------------------------------------------

def test_sse_stream_envelope_and_filters(make_daemon, fake, streams):
    d = start_fp_daemon(make_daemon, fake)
    everything = streams(d)
    received_only = streams(d, "?types=message.received")
    status_only = streams(d, "?types=message.status")
    both_types = streams(d, "?types=message.status,message.received")
    fp_only = streams(d, "?instance=" + FP_INSTANCE)
    echo_status = streams(d, "?instance=echo-demo&types=message.status")
    # The stream starts with a comment; events follow as they are stored.
    wait_until(lambda: everything.comments, 3, what="the stream's opening comment")
    assert d.webhook(body={"text": "to echo", "from": "e", "event_id": "sse-1"}).status == 200
    r = d.post(FP_WEBHOOK, {"event_id": "sse-2", "type": "message", "from": "f",
                            "text": "to fp", "message_id": "pm-1"})
    assert r.status == 200 and r.json() == {"ok": True}, r
    r = d.post(FP_WEBHOOK, {"event_id": "sse-3", "type": "status", "message_id": "nope",
                            "state": "delivered"})
    assert r.status == 200, r
    marker(d, "sse-end")

    def ids(stream):
        stream.wait_for(lambda e: e["data"]["data"].get("event_id") == "fence-sse-end"
                        or e["data"]["data"].get("event_id") == "sse-3", 5)
        time.sleep(0.3)
        return [e["data"]["data"].get("event_id") for e in stream.snapshot()]

    got = ids(everything)
    assert got == ["sse-1", "sse-2", "sse-3", "fence-sse-end"], got
    e1 = check_envelope(everything.snapshot()[0], "message.received", "echo", "echo-demo")
    assert e1["data"] == {"from": "e", "text": "echo: to echo", "event_id": "sse-1"}, e1
    e2 = check_envelope(everything.snapshot()[1], "message.received", "fakeprov", FP_INSTANCE)
    assert e2["data"]["text"] == "to fp" and e2["data"]["from"] == "f", e2
    e3 = check_envelope(everything.snapshot()[2], "message.status", "fakeprov", FP_INSTANCE)
    assert e3["data"]["state"] == "delivered" and e3["data"]["message_id"] == "nope", e3
    assert ids(received_only) == ["sse-1", "sse-2", "fence-sse-end"]
    assert ids(status_only) == ["sse-3"]
    assert ids(both_types) == ["sse-1", "sse-2", "sse-3", "fence-sse-end"]
    assert ids(fp_only) == ["sse-2", "sse-3"]
    time.sleep(0.2)
    assert echo_status.snapshot() == [], echo_status.snapshot()
    # Every envelope id is unique.
    env_ids = [e["id"] for e in everything.snapshot()]
    assert len(set(env_ids)) == len(env_ids), env_ids


def test_sse_scoped_key_sees_only_its_instances(daemon, streams):
    mine = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "mine"}).json()["id"]
    other = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "other"}).json()["id"]
    r = daemon.api("POST", "/v1/keys", {"label": "t", "role": "instance", "instance_ids": [mine]})
    key = r.json()["key"]
    scoped = streams(daemon, key=key)
    assert scoped.status == 200
    admin = streams(daemon)
    for iid, text in ((other, "theirs"), ("echo-demo", "config"), (mine, "mine")):
        wait_until(lambda: daemon.webhook(instance=iid, body={"text": text, "event_id": text})
                   .status == 200, 5, what="webhook to %s" % iid)
    admin.wait_for(lambda e: e["data"]["data"].get("event_id") == "mine", 5)
    scoped.wait_for(lambda e: e["data"]["data"].get("event_id") == "mine", 5)
    time.sleep(0.2)
    assert [e["data"]["instance"] for e in scoped.snapshot()] == [mine], scoped.snapshot()
    assert len(admin.snapshot()) == 3
    # Asking for another instance is a 404; no key is a 401.
    s = SSE(daemon.port, "/v1/events?instance=" + other, key=key)
    assert s.status == 404, s.status
    s.close()
    s = SSE(daemon.port, "/v1/events")
    assert s.status == 401, s.status
    s.close()


def test_sse_streams_echoes_of_sends(daemon, streams):
    """echo's send() emits message.received outside any webhook; it is stored and streamed."""
    s = streams(daemon, "?types=message.received")
    acc = send(daemon, "echo-demo", {"to": "g", "text": "round trip"})
    ev = s.wait_for(lambda e: e["data"]["data"].get("text") == "echo: round trip", 5)
    check_envelope(ev, "message.received", "echo", "echo-demo")
    wait_state(daemon, acc["id"], "sent")


def test_sse_closing_client_does_not_hurt(daemon, streams):
    for _ in range(5):
        s = SSE(daemon.port, "/v1/events", key=daemon.admin_key)
        assert s.status == 200
        s.close()
    assert daemon.webhook(body={"text": "still fine", "event_id": "after-close"}).status == 200
    s = streams(daemon)
    assert daemon.webhook(body={"text": "x", "event_id": "after-close-2"}).status == 200
    s.wait_for(lambda e: e["data"]["data"].get("event_id") == "after-close-2", 5)


# -- message.status -------------------------------------------------------------------------------

def status_hook(d, event_id, pmid, state):
    r = d.post(FP_WEBHOOK, {"event_id": event_id, "type": "status", "message_id": pmid,
                            "state": state})
    assert r.status == 200, r
    return r


def test_status_moves_forward_only(make_daemon, fake, streams):
    d = start_fp_daemon(make_daemon, fake)
    s = streams(d, "?types=message.status")
    fake.script(ok(id="pm-42"))
    acc = send(d, FP_INSTANCE, {"to": "h", "text": "track me"})
    doc = wait_state(d, acc["id"], "sent")
    assert doc["provider_message_id"] == "pm-42", doc
    status_hook(d, "st-1", "pm-42", "delivered")
    assert get_message(d, acc["id"])["state"] == "delivered"
    status_hook(d, "st-2", "pm-42", "read")
    assert get_message(d, acc["id"])["state"] == "read"
    # A late "delivered" (and a late "sent") do not go back.
    status_hook(d, "st-3", "pm-42", "delivered")
    status_hook(d, "st-4", "pm-42", "sent")
    doc = get_message(d, acc["id"])
    assert doc["state"] == "read", doc
    # Redelivered status events are not applied or streamed twice.
    status_hook(d, "st-1", "pm-42", "delivered")
    assert get_message(d, acc["id"])["state"] == "read"
    s.wait_for(lambda e: e["data"]["data"].get("event_id") == "st-4", 5)
    time.sleep(0.3)
    assert [e["data"]["data"]["event_id"] for e in s.snapshot()] == ["st-1", "st-2", "st-3",
                                                                    "st-4"]
    # Unknown states and unknown message ids change nothing.
    status_hook(d, "st-5", "pm-42", "exploded")
    status_hook(d, "st-6", "pm-unknown", "read")
    assert get_message(d, acc["id"])["state"] == "read"


def test_status_skips_ahead_and_failed(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    fake.script(ok(id="pm-a"), ok(id="pm-b"))
    a = send(d, FP_INSTANCE, {"to": "i", "text": "a"})
    b = send(d, FP_INSTANCE, {"to": "i", "text": "b"})
    wait_state(d, a["id"], "sent")
    wait_state(d, b["id"], "sent")
    ids = {get_message(d, a["id"])["provider_message_id"]: a["id"],
           get_message(d, b["id"])["provider_message_id"]: b["id"]}
    assert set(ids) == {"pm-a", "pm-b"}, ids
    # Straight to read.
    status_hook(d, "sk-1", "pm-a", "read")
    assert get_message(d, ids["pm-a"])["state"] == "read"
    # The provider reports a delivery failure after accepting the message.
    status_hook(d, "sk-2", "pm-b", "failed")
    assert get_message(d, ids["pm-b"])["state"] == "failed", \
        "a message.status 'failed' for a sent message was not applied"


def test_status_is_per_instance(make_daemon, fake):
    """A status event only touches the instance's own messages, even when another
    instance's message carries the same provider id."""
    d = start_fp_daemon(make_daemon, fake)
    fake.script(ok(id="echo-1"))
    mine = send(d, FP_INSTANCE, {"to": "j", "text": "fp"})
    wait_state(d, mine["id"], "sent")
    theirs = send(d, "echo-demo", {"to": "j", "text": "echo"})
    doc = wait_state(d, theirs["id"], "sent")
    assert doc["provider_message_id"] == "echo-1", doc
    status_hook(d, "pi-1", "echo-1", "read")
    assert get_message(d, mine["id"])["state"] == "read"
    assert get_message(d, theirs["id"])["state"] == "sent"


def test_fakeprov_webhook_rejects_bad_input(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    assert d.post(FP_WEBHOOK, {"type": "other"}).status == 400
    assert d.post(FP_WEBHOOK, "not json").status == 400
    assert d.post(FP_WEBHOOK, {"type": "status", "message_id": "x"}).status == 400
    assert d.get(FP_WEBHOOK).status == 405
    assert sql("SELECT COUNT(*) FROM webhook_events", d.database).strip() == "0"


def test_sse_comment_ping_every_15s(daemon, streams):
    s = streams(daemon)
    wait_until(lambda: s.comments, 3, what="the opening comment")
    start = time.monotonic()
    n = len(s.comments)
    wait_until(lambda: len(s.comments) > n, 20, interval=0.1, what="a ping comment")
    took = time.monotonic() - start
    assert took <= 16.0, "first ping after %.1fs" % took
    assert s.comments[-1].startswith(":"), s.comments
    assert s.events == [], s.events
    # The stream still carries events after a ping.
    assert daemon.webhook(body={"text": "after ping", "event_id": "after-ping"}).status == 200
    s.wait_for(lambda e: e["data"]["data"].get("event_id") == "after-ping", 5)


def test_concurrent_redeliveries_stored_and_streamed_once(daemon, streams):
    """Redeliveries racing each other land in one batch (or several): still one event."""
    import threading
    from conftest import http_request
    s = streams(daemon)
    results = []

    def one():
        results.append(http_request(daemon.port, "POST", "/webhook/echo/echo-demo",
                                    body={"text": "race", "from": "r", "event_id": "ev-race"}))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status for r in results] == [200] * 12, results
    assert len(events_rows(daemon, "ev-race")) == 1
    marker(daemon, "race-end")
    s.wait_for(lambda e: e["data"]["data"].get("event_id") == "fence-race-end", 5)
    got = [e for e in s.snapshot() if e["data"]["data"].get("event_id") == "ev-race"]
    assert len(got) == 1, got
    n = sql("SELECT COUNT(*) FROM messages WHERE direction = 'in' AND "
            "JSON_VALUE(body, '$.event_id') = 'ev-race'", daemon.database).strip()
    assert n == "1", n


def test_dedup_survives_restart(make_daemon):
    d = make_daemon()
    assert d.webhook(body={"text": "once", "event_id": "ev-restart"}).status == 200
    d.stop()
    d.start()
    assert d.webhook(body={"text": "once", "event_id": "ev-restart"}).status == 200
    assert len(events_rows(d, "ev-restart")) == 1


def test_inbound_message_keeps_provider_ids(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    r = d.post(FP_WEBHOOK, {"event_id": "pid-1", "type": "message", "from": "+1555",
                            "text": "hello fp", "message_id": "prov-in-7"})
    assert r.status == 200, r
    msgs = d.api("GET", "/v1/instances/%s/messages" % FP_INSTANCE).json()["messages"]
    assert len(msgs) == 1, msgs
    m = msgs[0]
    assert m["direction"] == "in" and m["state"] == "received", m
    assert m["from"] == "+1555" and m["to"] is None, m
    assert m["provider_message_id"] == "prov-in-7", m
    assert m["body"]["text"] == "hello fp", m
    # A status for an inbound message's provider id does not touch it.
    r = d.post(FP_WEBHOOK, {"event_id": "pid-2", "type": "status", "message_id": "prov-in-7",
                            "state": "read"})
    assert r.status == 200, r
    assert get_message(d, m["id"])["state"] == "received"


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _sse_connect_and_drop(port, key):
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                   % key).encode())
        got = b""
        while b"switchboard event stream" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        assert b" 200 " in got.split(b"\r\n", 1)[0], got[:200]


def test_sse_clients_that_disconnect_are_freed(daemon):
    """Each SSE client that hangs up must be forgotten entirely (its evhttp request and
    buffers too); a daemon fed connect/disconnect cycles must not grow."""
    if os.environ.get("SB_SANITIZERS") == "yes":
        pytest.skip("RSS is meaningless under ASan; LeakSanitizer checks this at teardown")
    key = daemon.admin_key
    for _ in range(300):  # warm up allocator arenas and caches
        _sse_connect_and_drop(daemon.port, key)
    time.sleep(0.5)
    before = _rss_kb(daemon.pid)
    n = 3000
    for _ in range(n):
        _sse_connect_and_drop(daemon.port, key)
    time.sleep(0.5)
    grown = _rss_kb(daemon.pid) - before
    assert grown < 1500, "RSS grew %d KiB over %d SSE connect/disconnect cycles (%.0f B each)" % (
        grown, n, grown * 1024.0 / n)
