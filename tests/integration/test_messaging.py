"""The messaging API and the outbox: POST /v1/instances/{id}/messages, state
progression, idempotency, degradation, retries and backoff bounds, permanent
failures, timeouts, max attempts, the circuit breaker, listing, validation,
key scope, and a SIGKILL in the middle of a burst losing no acknowledged
message or webhook.

The fakeprov test plugin (tests/plugins/fakeprov.c) talks HTTP to the fake of
fakeprovider.py; the outbox timing comes from the top-level "outbox" config
object (FAST_OUTBOX)."""

import re
import signal
import threading
import time
import urllib.parse

import pytest

from conftest import http_request, sql, wait_until
from fakeprovider import (FAST_OUTBOX, FP_INSTANCE, FP_WEBHOOK, FakeProvider, delivery, fail,
                          get_message, hang, ok, rate_limit, reject, send, start_fp_daemon,
                          wait_state)

MSG_ID_RE = re.compile(r"^msg_[0-9a-zA-Z]+$")
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
MESSAGE_KEYS = {"id", "instance_id", "direction", "state", "to", "from", "body",
                "provider_message_id", "degraded", "attempts", "last_error", "created_at",
                "updated_at"}


@pytest.fixture
def fake():
    f = FakeProvider().start()
    yield f
    f.close()


def assert_error(resp, status, field=None, code=None):
    assert resp.status == status, resp
    assert "application/json" in resp.headers.get("content-type", ""), resp.headers
    doc = resp.json()
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err.get("code"), str) and err["code"], doc
    assert isinstance(err.get("message"), str) and err["message"], doc
    if field is not None:
        assert isinstance(err.get("details"), dict), doc
        assert err["details"].get("field") == field, \
            "details.field %r, expected %r: %r" % (err["details"].get("field"), field, doc)
    if code is not None:
        assert err["code"] == code, doc
    return err


def check_message_shape(doc):
    missing = MESSAGE_KEYS - set(doc)
    assert not missing, "message lacks %s: %r" % (sorted(missing), doc)
    assert MSG_ID_RE.match(doc["id"]), doc
    assert doc["direction"] in ("out", "in"), doc
    assert doc["state"] in ("queued", "sending", "sent", "delivered", "read", "failed",
                            "received"), doc
    assert isinstance(doc["body"], dict), doc
    assert isinstance(doc["degraded"], list), doc
    assert isinstance(doc["attempts"], int), doc
    for k in ("created_at", "updated_at"):
        assert isinstance(doc[k], str) and ISO_RE.match(doc[k]), (k, doc)


def check_accepted(doc, degraded=(), duplicate=False):
    assert set(doc) >= {"id", "state", "degraded", "duplicate"}, doc
    assert MSG_ID_RE.match(doc["id"]), doc
    assert doc["state"] == "queued", doc
    assert doc["degraded"] == list(degraded), doc
    assert doc["duplicate"] is duplicate, doc


# -- acceptance and state progression -------------------------------------------------------------

def test_send_with_echo_goes_sent(daemon):
    t0 = time.time()
    acc = send(daemon, "echo-demo", {"to": "alice", "text": "hello there"})
    check_accepted(acc)
    doc = wait_state(daemon, acc["id"], "sent")
    check_message_shape(doc)
    assert doc["id"] == acc["id"] and doc["instance_id"] == "echo-demo", doc
    assert doc["direction"] == "out" and doc["to"] == "alice", doc
    assert doc["body"].get("text") == "hello there" and doc["body"].get("to") == "alice", doc
    assert re.match(r"^echo-\d+$", doc["provider_message_id"] or ""), doc
    assert doc["attempts"] == 1 and doc["last_error"] is None, doc
    assert doc["degraded"] == [], doc
    # A second message gets the next echo id.
    acc2 = send(daemon, "echo-demo", {"to": "alice", "text": "again"})
    doc2 = wait_state(daemon, acc2["id"], "sent")
    n1 = int(doc["provider_message_id"].split("-")[1])
    n2 = int(doc2["provider_message_id"].split("-")[1])
    assert n2 == n1 + 1, (doc, doc2)
    # Health and metrics count them.
    h = delivery(daemon, "echo-demo")
    assert h["breaker"] == "closed" and h["sent"] >= 2 and h["failed"] == 0, h
    assert h.get("last_success") and h["last_success"] >= int(t0) - 1, h
    m = daemon.metrics()
    assert m.value("switchboard_messages_sent_total", provider="echo") >= 2, m.text
    assert m.has("switchboard_outbox_depth"), m.text
    assert m.value("switchboard_breaker_state", provider="echo", instance="echo-demo") == 0


def test_send_states_queued_sending_sent(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    fake.script(ok(id="prov-abc", delay=1.5))
    acc = send(d, FP_INSTANCE, {"to": "+15550001", "text": "slow one"})
    check_accepted(acc)
    fake.wait_sends(1, timeout=5)
    doc = get_message(d, acc["id"])
    assert doc["state"] == "sending", doc
    h = delivery(d, FP_INSTANCE)
    assert h["in_flight"] == 1, h
    doc = wait_state(d, acc["id"], "sent", timeout=10)
    assert doc["provider_message_id"] == "prov-abc" and doc["attempts"] == 1, doc
    # What reached the provider: the neutral message as JSON.
    rec = fake.sends()[0]
    assert rec.method == "POST" and rec.json["to"] == "+15550001", rec
    assert rec.json["text"] == "slow one", rec
    assert rec.headers.get("content-type", "").startswith("application/json"), rec.headers
    assert "authorization" not in rec.headers, rec.headers


def test_fakeprov_sends_bearer_token(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake, token="s3cret-token")
    acc = send(d, FP_INSTANCE, {"to": "bob", "text": "auth"})
    wait_state(d, acc["id"], "sent")
    assert fake.sends()[0].headers.get("authorization") == "Bearer s3cret-token"


# -- idempotency ----------------------------------------------------------------------------------

def test_idempotency_key_same_message_sent_once(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    first = send(d, FP_INSTANCE, {"to": "bob", "text": "pay 10"}, idem="order-17")
    check_accepted(first)
    again = send(d, FP_INSTANCE, {"to": "bob", "text": "pay 10"}, idem="order-17")
    check_accepted(again, duplicate=True)
    assert again["id"] == first["id"], (first, again)
    wait_state(d, first["id"], "sent")
    # Also after it was sent.
    third = send(d, FP_INSTANCE, {"to": "bob", "text": "pay 10"}, idem="order-17")
    assert third["id"] == first["id"] and third["duplicate"] is True, third
    # Another key is another message.
    other = send(d, FP_INSTANCE, {"to": "bob", "text": "pay 10"}, idem="order-18")
    assert other["id"] != first["id"] and other["duplicate"] is False, other
    wait_state(d, other["id"], "sent")
    time.sleep(0.5)
    assert len(fake.sends()) == 2, fake.sends()
    # Keys are per instance: the same key on echo-demo is a new message.
    echo = send(d, "echo-demo", {"to": "bob", "text": "pay 10"}, idem="order-17")
    assert echo["id"] != first["id"] and echo["duplicate"] is False, echo
    assert sql("SELECT COUNT(*) FROM messages WHERE idempotency_key = 'order-17'",
               d.database).strip() == "2"


def test_idempotency_concurrent_requests(make_daemon, fake):
    """Requests with one key racing each other (one batch or several) make one message."""
    d = start_fp_daemon(make_daemon, fake)
    key = d.admin_key
    results = []
    lock = threading.Lock()

    def one():
        r = http_request(d.port, "POST", "/v1/instances/%s/messages" % FP_INSTANCE,
                         body={"to": "carol", "text": "once"},
                         headers={"Authorization": "Bearer " + key, "Idempotency-Key": "race-1"})
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r.status == 202 for r in results), results
    docs = [r.json() for r in results]
    assert len({doc["id"] for doc in docs}) == 1, docs
    assert sum(1 for doc in docs if doc["duplicate"] is False) == 1, docs
    wait_state(d, docs[0]["id"], "sent")
    time.sleep(0.5)
    assert len(fake.sends()) == 1, fake.sends()


# -- degradation ----------------------------------------------------------------------------------

def test_degradation_for_a_text_only_provider(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    body = {"to": "dave", "text": "Pick one",
            "buttons": [{"id": "y", "title": "Yes"}, {"id": "n", "title": "No"}],
            "thread": "t-1", "reply_to": "pm-9"}
    acc = send(d, FP_INSTANCE, body)
    check_accepted(acc, degraded=["buttons", "thread"])
    doc = wait_state(d, acc["id"], "sent")
    assert doc["degraded"] == ["buttons", "thread"], doc
    got = fake.sends()[-1].json
    assert got["text"] == "Pick one\n\n1. Yes\n2. No", got
    assert "buttons" not in got and "thread" not in got, got
    assert got["to"] == "dave" and got.get("reply_to") == "pm-9", got

    # Media by URL becomes caption + link; quick replies a numbered list.
    body = {"to": "dave", "text": "See this",
            "media": {"url": "https://example.com/cat.png", "mime_type": "image/png",
                      "caption": "A cat"},
            "quick_replies": [{"id": "a", "title": "Nice"}, {"id": "b", "title": "Meh"},
                              {"id": "c", "title": "Bad"}]}
    acc = send(d, FP_INSTANCE, body)
    check_accepted(acc, degraded=["quick_replies", "media"])
    doc = wait_state(d, acc["id"], "sent")
    assert set(doc["degraded"]) == {"media", "quick_replies"}, doc
    got = fake.sends()[-1].json
    assert "media" not in got and "quick_replies" not in got, got
    text = got["text"]
    assert text.startswith("See this\n\n"), text
    assert "https://example.com/cat.png" in text and "A cat" in text, text
    assert "1. Nice\n2. Meh\n3. Bad" in text, text

    # Media only (no text): the text is the caption and the URL.
    acc = send(d, FP_INSTANCE, {"to": "dave", "media": {"url": "https://example.com/a.pdf",
                                                        "mime_type": "application/pdf"}})
    check_accepted(acc, degraded=["media"])
    wait_state(d, acc["id"], "sent")
    got = fake.sends()[-1].json
    assert got["text"] == "https://example.com/a.pdf", got

    # Uploaded bytes cannot become a link: a note says something was left out.
    acc = send(d, FP_INSTANCE, {"to": "dave", "text": "file",
                                "media": {"data_base64": "aGVsbG8=", "mime_type": "text/plain"}})
    check_accepted(acc, degraded=["media"])
    wait_state(d, acc["id"], "sent")
    got = fake.sends()[-1].json
    assert "media" not in got and got["text"].startswith("file\n\n") and \
        len(got["text"]) > len("file\n\n"), got


def test_no_degradation_when_provider_can_show_everything(daemon):
    body = {"to": "erin", "text": "Pick", "buttons": [{"id": "1", "title": "One"}],
            "media": {"url": "https://example.com/x.png", "mime_type": "image/png"},
            "thread": "th"}
    acc = send(daemon, "echo-demo", body)
    check_accepted(acc)
    doc = wait_state(daemon, acc["id"], "sent")
    assert doc["degraded"] == [], doc
    assert doc["body"]["buttons"] == body["buttons"] and doc["body"]["thread"] == "th", doc
    assert doc["body"]["media"] == body["media"] and doc["body"]["text"] == "Pick", doc


# -- failures, retries and backoff ----------------------------------------------------------------

def test_retry_after_500_then_success(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    fake.script(fail(500), ok(id="second-try"))
    acc = send(d, FP_INSTANCE, {"to": "f", "text": "retry me"})
    doc = wait_state(d, acc["id"], "sent", timeout=10)
    assert doc["attempts"] == 2, doc
    assert doc["provider_message_id"] == "second-try", doc
    assert doc["last_error"] is None, doc
    sends = fake.sends()
    assert len(sends) == 2 and sends[0].text == sends[1].text == "retry me", sends
    # Full jitter within [0, base]: the retry comes within base + slack.
    gap = sends[1].time - sends[0].time
    assert gap < FAST_OUTBOX["backoff_base_ms"] / 1000.0 + 1.0, gap
    h = delivery(d, FP_INSTANCE)
    assert h["retried"] >= 1 and h["sent"] == 1 and h["failed"] == 0, h
    assert h["consecutive_failures"] == 0, h
    m = d.metrics()
    assert m.value("switchboard_messages_retried_total", provider="fakeprov") >= 1, m.text
    assert m.value("switchboard_messages_sent_total", provider="fakeprov") >= 1, m.text


@pytest.mark.parametrize("in_body", [False, True], ids=["header", "body"])
def test_429_retry_after_is_honoured(make_daemon, fake, in_body):
    d = start_fp_daemon(make_daemon, fake)
    fake.script(rate_limit(1, in_body=in_body), ok())
    acc = send(d, FP_INSTANCE, {"to": "g", "text": "rate limited"})
    doc = wait_state(d, acc["id"], "sent", timeout=10)
    assert doc["attempts"] == 2, doc
    first, second = fake.sends()[:2]
    gap = second.time - first.time
    # Never sooner than Retry-After; not much later either (backoff max is 200 ms).
    assert gap >= 0.995, "retried %.3fs after a 429 with Retry-After: 1" % gap
    assert gap < 2.5, "retried only %.3fs after a 429 with Retry-After: 1" % gap


def test_503_retry_after_is_honoured(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    fake.script(fail(503, "busy", retry_after=1), ok())
    acc = send(d, FP_INSTANCE, {"to": "g", "text": "busy provider"})
    wait_state(d, acc["id"], "sent", timeout=10)
    first, second = fake.sends()[:2]
    assert second.time - first.time >= 0.995, second.time - first.time


def test_429_retry_after_longer_than_backoff_cap(make_daemon, fake):
    """retry_after beats a shorter backoff even at the cap (2 s vs 200 ms)."""
    d = start_fp_daemon(make_daemon, fake)
    fake.script(rate_limit(2), rate_limit(2), ok())
    acc = send(d, FP_INSTANCE, {"to": "g", "text": "twice limited"})
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["attempts"] == 3, doc
    s = fake.sends()
    assert s[1].time - s[0].time >= 1.995 and s[2].time - s[1].time >= 1.995, \
        [r.time for r in s]


def test_permanent_error_fails_at_once(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    fake.script(reject(400, "unknown recipient"))
    acc = send(d, FP_INSTANCE, {"to": "nobody", "text": "hello?"})
    doc = wait_state(d, acc["id"], "failed", timeout=10)
    assert doc["attempts"] == 1, doc
    assert doc["last_error"] == "http_400: unknown recipient", doc
    assert doc["provider_message_id"] is None, doc
    time.sleep(0.5)
    assert len(fake.sends()) == 1, fake.sends()
    h = delivery(d, FP_INSTANCE)
    assert h["failed"] == 1 and h["retried"] == 0, h
    assert h.get("last_error") == "http_400: unknown recipient", h
    assert h.get("last_failure"), h
    # A permanent error says nothing about the provider's health.
    assert h["breaker"] == "closed" and h["consecutive_failures"] == 0, h
    m = d.metrics()
    assert m.value("switchboard_messages_failed_total", provider="fakeprov") == 1, m.text
    # 401/403/404 are permanent too.
    for status in (401, 403, 404, 422):
        fake.script(reject(status, "no: %d" % status))
        acc = send(d, FP_INSTANCE, {"to": "x", "text": "s%d" % status})
        doc = wait_state(d, acc["id"], "failed", timeout=10)
        assert doc["attempts"] == 1 and doc["last_error"] == "http_%d: no: %d" % (status, status), \
            doc


def test_timeout_is_retried(make_daemon, fake):
    """fakeprov's requests time out after 2 s; a hung provider is a transient failure."""
    d = start_fp_daemon(make_daemon, fake)
    fake.script(hang(4), ok(id="after-timeout"))
    acc = send(d, FP_INSTANCE, {"to": "h", "text": "hang then ok"})
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["attempts"] == 2 and doc["provider_message_id"] == "after-timeout", doc
    s = fake.sends()
    assert len(s) == 2, s
    assert s[1].time - s[0].time >= 1.9, "retried %.3fs after a hung request" % (
        s[1].time - s[0].time)


def test_connection_refused_is_retried(make_daemon, fake):
    """No provider listening at all (status 0) is transient: the message waits and goes out
    once the provider is back."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    fake_dead = type("F", (), {"url": "http://127.0.0.1:%d" % dead_port})()
    d = start_fp_daemon(make_daemon, fake_dead,
                        outbox=dict(FAST_OUTBOX, max_attempts=100))
    acc = send(d, FP_INSTANCE, {"to": "i", "text": "nobody home"})
    wait_until(lambda: get_message(d, acc["id"])["attempts"] >= 2, 10,
               what="two attempts against a closed port")
    doc = get_message(d, acc["id"])
    assert doc["state"] in ("queued", "sending"), doc
    # The message records why its last attempt failed.
    assert (doc["last_error"] or "").startswith("transport: "), doc
    h = delivery(d, FP_INSTANCE)
    assert h["retried"] >= 1 and h["consecutive_failures"] >= 2, h
    # Health shows the failing provider while its messages are still being retried.
    assert (h.get("last_error") or "").startswith("transport: ") and h.get("last_failure"), \
        "status.delivery hides the transient failures: %r" % h


def test_max_attempts_then_failed(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake, outbox=dict(FAST_OUTBOX, max_attempts=3))
    fake.default = fail(503, "down for maintenance")
    acc = send(d, FP_INSTANCE, {"to": "j", "text": "never"})
    doc = wait_state(d, acc["id"], "failed", timeout=15)
    assert doc["attempts"] == 3, doc
    assert doc["last_error"] == "http_503: down for maintenance", doc
    time.sleep(1.0)
    assert len(fake.sends()) == 3, fake.sends()
    h = delivery(d, FP_INSTANCE)
    assert h["failed"] == 1 and h["retried"] == 2, h
    m = d.metrics()
    assert m.value("switchboard_messages_failed_total", provider="fakeprov") == 1, m.text
    assert m.value("switchboard_messages_retried_total", provider="fakeprov") == 2, m.text


def test_default_max_attempts_is_8(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake, outbox={"backoff_base_ms": 10, "backoff_max_ms": 20,
                                                   "breaker_failures": 1000})
    fake.default = fail(500)
    acc = send(d, FP_INSTANCE, {"to": "k", "text": "eight"})
    doc = wait_state(d, acc["id"], "failed", timeout=15)
    assert doc["attempts"] == 8, doc
    time.sleep(0.5)
    assert len(fake.sends()) == 8, fake.sends()


def test_backoff_grows_and_is_capped(make_daemon, fake):
    """Full jitter: wait n is in [0, min(cap, base*2^(n-1))]; with base 200 ms and cap 400 ms
    no gap exceeds the cap (plus slack), and the total stays far below the uncapped sum."""
    d = start_fp_daemon(make_daemon, fake, outbox=dict(FAST_OUTBOX, backoff_base_ms=200,
                                                       backoff_max_ms=400, max_attempts=8))
    fake.default = fail(500)
    acc = send(d, FP_INSTANCE, {"to": "l", "text": "backoff"})
    wait_state(d, acc["id"], "failed", timeout=20)
    t = [r.time for r in fake.sends()]
    assert len(t) == 8, t
    gaps = [b - a for a, b in zip(t, t[1:])]
    assert max(gaps) < 0.4 + 0.35, gaps
    assert sum(gaps) < 7 * 0.4 + 1.0, gaps


# -- circuit breaker ------------------------------------------------------------------------------

BREAKER = dict(FAST_OUTBOX, breaker_failures=3, breaker_cooldown_ms=1500, max_attempts=100,
               backoff_base_ms=20, backoff_max_ms=50)


def breaker_metric(d):
    return d.metrics().find("switchboard_breaker_state", instance=FP_INSTANCE)


def test_breaker_opens_waits_probes_and_closes(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake, outbox=BREAKER)
    fake.default = fail(500)
    first = send(d, FP_INSTANCE, {"to": "m", "text": "b-0"})
    fake.wait_sends(3, timeout=10)
    opened_at = fake.sends()[2].time
    # Open: the instance and /metrics say so.
    h = wait_until(lambda: (lambda h: h if h["breaker"] == "open" else None)(
        delivery(d, FP_INSTANCE)), 3, what="breaker open")
    assert h["consecutive_failures"] >= 3, h
    found = breaker_metric(d)
    assert found and found[0][1] == 1 and found[0][0].get("provider") == "fakeprov", found
    # More messages wait while it is open: accepted, queued, not sent, not failed.
    more = [send(d, FP_INSTANCE, {"to": "m", "text": "b-%d" % i}) for i in range(1, 4)]
    fake.default = ok(delay=0.8)  # the provider is back (and slow, to watch half-open)
    time.sleep(0.5)
    assert len(fake.sends()) == 3, "sent while the breaker was open: %r" % fake.sends()
    for acc in [first] + more:
        assert get_message(d, acc["id"])["state"] == "queued"
    assert delivery(d, FP_INSTANCE)["queued"] == 4
    # After the cooldown: one probe, alone.
    probe = fake.wait_sends(4, timeout=5)[3]
    assert probe.time - opened_at >= 1.5 - 0.01, "probe %.3fs after opening (cooldown 1.5 s)" % (
        probe.time - opened_at)
    assert probe.time - opened_at < 1.5 + 1.0, probe.time - opened_at
    h = delivery(d, FP_INSTANCE)
    assert h["breaker"] == "half-open" and h["in_flight"] == 1, h
    assert breaker_metric(d)[0][1] == 2
    time.sleep(0.4)
    assert len(fake.sends()) == 4, "a second request while half-open: %r" % fake.sends()
    # The probe succeeds: closed, and everything else goes out.
    for acc in [first] + more:
        wait_state(d, acc["id"], "sent", timeout=10)
    h = delivery(d, FP_INSTANCE)
    assert h["breaker"] == "closed" and h["consecutive_failures"] == 0 and h["sent"] == 4, h
    assert breaker_metric(d)[0][1] == 0
    assert len(fake.sends()) == 7, fake.sends()
    assert sorted(r.text for r in fake.sends()[3:]) == ["b-0", "b-1", "b-2", "b-3"]


def test_breaker_failed_probe_doubles_cooldown(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake, outbox=dict(BREAKER, breaker_cooldown_ms=1000))
    fake.default = fail(500)
    acc = send(d, FP_INSTANCE, {"to": "n", "text": "probe-fail"})
    s = fake.wait_sends(4, timeout=10)  # 3 failures, then the first probe (fails)
    assert s[3].time - s[2].time >= 0.99, [r.time for r in s]
    wait_until(lambda: delivery(d, FP_INSTANCE)["breaker"] == "open", 2,
               what="open again after a failed probe")
    fake.default = ok()
    s = fake.wait_sends(5, timeout=10)
    gap = s[4].time - s[3].time
    assert gap >= 1.99, "second probe %.3fs after the failed one (cooldown doubled: 2 s)" % gap
    assert gap < 3.5, gap
    wait_state(d, acc["id"], "sent")
    assert delivery(d, FP_INSTANCE)["breaker"] == "closed"


def test_breaker_is_per_instance(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake, outbox=BREAKER)
    fake.default = fail(500)
    send(d, FP_INSTANCE, {"to": "o", "text": "x"})
    wait_until(lambda: delivery(d, FP_INSTANCE)["breaker"] == "open", 10, what="breaker open")
    acc = send(d, "echo-demo", {"to": "o", "text": "echo still works"})
    wait_state(d, acc["id"], "sent")
    assert delivery(d, "echo-demo")["breaker"] == "closed"


# -- listing --------------------------------------------------------------------------------------

def test_list_both_directions_newest_first_with_cursor(daemon):
    ids = []
    for i in range(3):
        acc = send(daemon, "echo-demo", {"to": "p", "text": "out-%d" % i})
        wait_state(daemon, acc["id"], "sent")
        ids.append(acc["id"])
    # echo's send echoes each message back as an inbound one (stored on its own way).
    wait_until(lambda: len(daemon.api("GET", "/v1/instances/echo-demo/messages").json()
                           ["messages"]) == 6, 5, what="3 out + 3 echoed in")
    r = daemon.webhook(body={"text": "inbound", "from": "q"})
    assert r.status == 200, r
    # 3 out + 3 echoes in + 1 webhook in.
    all_docs = daemon.api("GET", "/v1/instances/echo-demo/messages?limit=500").json()
    assert all_docs["next_cursor"] is None, all_docs
    docs = all_docs["messages"]
    assert len(docs) == 7, docs
    for doc in docs:
        check_message_shape(doc)
        assert doc["instance_id"] == "echo-demo", doc
    assert {doc["direction"] for doc in docs} == {"in", "out"}, docs
    assert sorted(doc["id"] for doc in docs if doc["direction"] == "out") == sorted(ids)
    ins = [doc for doc in docs if doc["direction"] == "in"]
    assert all(doc["state"] == "received" for doc in ins), ins
    assert any(doc["from"] == "q" and doc["body"].get("text") == "echo: inbound"
               for doc in ins), ins
    created = [doc["created_at"] for doc in docs]
    assert created == sorted(created, reverse=True), created
    assert docs[0]["direction"] == "in" and docs[0]["from"] == "q", docs[0]
    # Pages of 2 give the same sequence.
    seen, cursor, pages = [], None, 0
    while True:
        q = {"limit": "2"}
        if cursor:
            q["cursor"] = cursor
        r = daemon.api("GET", "/v1/instances/echo-demo/messages?" + urllib.parse.urlencode(q))
        assert r.status == 200, r
        page = r.json()
        assert len(page["messages"]) <= 2, page
        seen += [doc["id"] for doc in page["messages"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, page
    assert seen == [doc["id"] for doc in docs], (seen, [doc["id"] for doc in docs])
    assert pages == 4, pages
    # Bad limits.
    for bad in ("0", "501", "x"):
        assert_error(daemon.api("GET", "/v1/instances/echo-demo/messages?limit=" + bad), 400,
                     field="limit")
    # Another instance's list is empty, not someone else's messages.
    r = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "empty"})
    assert r.status == 201, r
    r = daemon.api("GET", "/v1/instances/%s/messages" % r.json()["id"])
    assert r.status == 200 and r.json() == {"messages": [], "next_cursor": None}, r


def test_list_pagination_same_timestamp(daemon):
    """Rows accepted in one batch share created_at to the microsecond; the cursor's id
    tie-break must neither skip nor repeat any of them."""
    key = daemon.admin_key
    results = []

    def one(i):
        r = http_request(daemon.port, "POST", "/v1/instances/echo-demo/messages",
                         body={"to": "s", "text": "same-%d" % i},
                         headers={"Authorization": "Bearer " + key})
        results.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r.status == 202 for r in results), results
    out_ids = {r.json()["id"] for r in results}
    for mid in out_ids:
        wait_state(daemon, mid, "sent")
    seen, cursor = [], None
    for _ in range(40):
        path = "/v1/instances/echo-demo/messages?limit=3"
        if cursor:
            path += "&cursor=" + urllib.parse.quote(cursor)
        page = daemon.api("GET", path).json()
        seen += [doc["id"] for doc in page["messages"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 20, seen
    assert out_ids <= set(seen), (out_ids, seen)


# -- validation, scope, 404 -----------------------------------------------------------------------

def test_validation_errors_name_the_field(daemon):
    def post(body, headers=None):
        return daemon.api("POST", "/v1/instances/echo-demo/messages", body, headers=headers)

    assert_error(post({"text": "no recipient"}), 400, field="to")
    assert_error(post({"to": "", "text": "x"}), 400, field="to")
    assert_error(post({"to": "x" * 256, "text": "x"}), 400, field="to")
    assert_error(post({"to": 5, "text": "x"}), 400, field="to")
    assert post({"to": "x" * 255, "text": "x"}).status == 202
    assert_error(post({"to": "a"}), 400, field="text")
    assert_error(post({"to": "a", "text": 7}), 400, field="text")
    assert_error(post({"to": "a", "text": "x", "buttons": [{"id": "1", "title": "ok"},
                                                           {"id": "2"}]}), 400, field="buttons[1]")
    assert_error(post({"to": "a", "text": "x", "buttons": [{"id": "1", "title": "ok"},
                                                           {"title": "no id"}]}), 400,
                 field="buttons[1]")
    assert_error(post({"to": "a", "text": "x", "buttons": []}), 400, field="buttons")
    assert_error(post({"to": "a", "text": "x", "buttons": "yes"}), 400, field="buttons")
    assert_error(post({"to": "a", "text": "x", "quick_replies": ["a"]}), 400,
                 field="quick_replies[0]")
    assert_error(post({"to": "a", "media": {"url": "https://e.com/x.png"}}), 400,
                 field="media.mime_type")
    assert_error(post({"to": "a", "media": {"mime_type": "image/png"}}), 400, field="media")
    assert_error(post({"to": "a", "media": {"url": "u", "data_base64": "AA==",
                                            "mime_type": "image/png"}}), 400, field="media")
    assert_error(post({"to": "a", "media": "https://e.com/x.png"}), 400, field="media")
    assert_error(post({"to": "a", "media": {"url": "u", "mime_type": "image/png",
                                            "size": 5}}), 400, field="media.size")
    assert_error(post({"to": "a", "text": "x", "thread": 5}), 400, field="thread")
    assert_error(post({"to": "a", "text": "x", "reply_to": {}}), 400, field="reply_to")
    assert_error(post({"to": "a", "text": "x", "colour": "red"}), 400, field="colour")
    assert_error(post({"to": "a", "text": "x"}, headers={"Idempotency-Key": "k" * 256}), 400,
                 field="Idempotency-Key")
    assert_error(post({"to": "a", "text": "x"}, headers={"Idempotency-Key": ""}), 400,
                 field="Idempotency-Key")
    assert post({"to": "a", "text": "x"}, headers={"Idempotency-Key": "k" * 255}).status == 202
    assert_error(post("not json"), 400)
    assert_error(post([1, 2]), 400)
    # Nothing invalid was stored.
    n = sql("SELECT COUNT(*) FROM messages WHERE direction = 'out'", daemon.database).strip()
    assert n == "2", n


def test_scoped_key_sends_only_to_its_instance(daemon):
    mine = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "mine"}).json()["id"]
    other = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "other"}).json()["id"]
    r = daemon.api("POST", "/v1/keys", {"label": "tenant", "role": "instance",
                                        "instance_ids": [mine]})
    assert r.status == 201, r
    key = r.json()["key"]
    wait_until(lambda: daemon.api("GET", "/v1/instances/" + mine).json()["status"]["running"],
               5, what="instance running")
    acc = send(daemon, mine, {"to": "u", "text": "mine"}, key=key)
    wait_state(daemon, acc["id"], "sent")
    assert get_message(daemon, acc["id"], key=key)["instance_id"] == mine
    assert_error(daemon.api("POST", "/v1/instances/%s/messages" % other,
                            {"to": "u", "text": "x"}, key=key), 404)
    assert_error(daemon.api("POST", "/v1/instances/echo-demo/messages",
                            {"to": "u", "text": "x"}, key=key), 404)
    theirs = send(daemon, other, {"to": "u", "text": "theirs"})
    assert_error(daemon.api("GET", "/v1/messages/" + theirs["id"], key=key), 404)
    assert_error(daemon.api("GET", "/v1/instances/%s/messages" % other, key=key), 404)
    r = daemon.api("GET", "/v1/instances/%s/messages" % mine, key=key)
    assert r.status == 200 and acc["id"] in [m["id"] for m in r.json()["messages"]], r
    # No key at all.
    assert daemon.post("/v1/instances/%s/messages" % mine, {"to": "u", "text": "x"}).status == 401
    assert daemon.get("/v1/messages/" + acc["id"]).status == 401


def test_unknown_instance_and_message_404(daemon):
    assert_error(daemon.api("POST", "/v1/instances/in_nope/messages", {"to": "a", "text": "x"}),
                 404)
    assert_error(daemon.api("GET", "/v1/instances/in_nope/messages"), 404)
    assert_error(daemon.api("GET", "/v1/messages/msg_000000000000000000000000"), 404)
    assert_error(daemon.api("GET", "/v1/messages/nonsense"), 404)
    r = daemon.api("DELETE", "/v1/messages/msg_000000000000000000000000")
    assert r.status == 405, r


def test_stopped_instance_keeps_messages_queued(daemon):
    r = daemon.api("POST", "/v1/instances", {"provider": "echo", "name": "paused"})
    iid = r.json()["id"]
    wait_until(lambda: daemon.api("GET", "/v1/instances/" + iid).json()["status"]["running"],
               5, what="instance running")
    assert daemon.api("POST", "/v1/instances/%s/stop" % iid).status == 200
    acc = send(daemon, iid, {"to": "w", "text": "while stopped"})
    time.sleep(1.5)
    doc = get_message(daemon, acc["id"])
    assert doc["state"] == "queued" and doc["attempts"] == 0, doc
    assert daemon.api("POST", "/v1/instances/%s/start" % iid).status == 200
    wait_state(daemon, acc["id"], "sent", timeout=10)


# -- durability: SIGKILL mid-burst ----------------------------------------------------------------

def test_sigkill_mid_burst_loses_no_acknowledged_message_or_event(make_daemon, fake):
    fake.default = ok(delay=0.2)
    d = start_fp_daemon(make_daemon, fake, outbox=dict(FAST_OUTBOX, max_in_flight=8))
    key = d.admin_key
    acked_texts, acked_events = [], []
    stop = threading.Event()
    lock = threading.Lock()

    def sender(worker):
        i = 0
        while not stop.is_set():
            text = "burst-%d-%d" % (worker, i)
            i += 1
            try:
                r = http_request(d.port, "POST", "/v1/instances/%s/messages" % FP_INSTANCE,
                                 body={"to": "z", "text": text},
                                 headers={"Authorization": "Bearer " + key}, timeout=5)
            except OSError:
                continue
            if r.status == 202:
                with lock:
                    acked_texts.append(text)

    def hooker(worker):
        i = 0
        while not stop.is_set():
            eid = "kill-%d-%d" % (worker, i)
            i += 1
            try:
                r = http_request(d.port, "POST", FP_WEBHOOK,
                                 body={"event_id": eid, "type": "message", "from": "y",
                                       "text": eid}, timeout=5)
            except OSError:
                continue
            if r.status == 200:
                with lock:
                    acked_events.append(eid)

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(3)] + \
        [threading.Thread(target=hooker, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    d.signal(signal.SIGKILL)
    d.proc.wait(10)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked_texts) > 20 and len(acked_events) > 20, (len(acked_texts), len(acked_events))
    sent_before = {r.text for r in fake.sends()}
    assert set(acked_texts) - sent_before, "the kill came too late to test anything"
    print("SIGKILL after %d acknowledged messages (%d already sent) and %d acknowledged webhooks"
          % (len(acked_texts), len(set(acked_texts) & sent_before), len(acked_events)))
    # Same database, same config: everything acknowledged goes out (a fast provider now).
    fake.default = ok()
    d.start()
    want = set(acked_texts)
    wait_until(lambda: want <= {r.text for r in fake.sends()}, 60, interval=0.2,
               what="%d acknowledged messages at the fake" % len(want))
    # Each event acknowledged with 200 is stored exactly once.
    rows = sql("SELECT provider_event_id, COUNT(*) FROM webhook_events WHERE provider_event_id "
               "LIKE 'kill-%' GROUP BY provider_event_id", d.database)
    counts = dict(line.split("\t") for line in rows.strip().splitlines())
    missing = [e for e in acked_events if e not in counts]
    assert not missing, "acknowledged webhooks not stored: %r" % missing[:20]
    assert all(c == "1" for c in counts.values()), counts
    # And each stored received event has its message row.
    n_in = sql("SELECT COUNT(*) FROM messages WHERE direction = 'in' AND instance_id = '%s'"
               % FP_INSTANCE, d.database).strip()
    assert int(n_in) == len(counts), (n_in, len(counts))
    # The messages' own records end up "sent" too.
    for text in list(want)[:50]:
        row = sql("SELECT state FROM messages WHERE direction = 'out' AND "
                  "JSON_VALUE(body, '$.text') = '%s'" % text, d.database).strip()
        assert row in ("sent",), (text, row)
    wait_until(lambda: sql("SELECT COUNT(*) FROM outbox", d.database).strip() == "0", 30,
               what="empty outbox")


def test_outbox_survives_restart_while_breaker_open(make_daemon, fake):
    """Messages waiting behind an open breaker are in the outbox table; a SIGKILL and a
    restart send them once the provider answers again."""
    d = start_fp_daemon(make_daemon, fake, outbox=dict(BREAKER, breaker_cooldown_ms=60000))
    fake.default = fail(500)
    send(d, FP_INSTANCE, {"to": "r", "text": "opener"})
    wait_until(lambda: delivery(d, FP_INSTANCE)["breaker"] == "open", 10, what="breaker open")
    waiting = [send(d, FP_INSTANCE, {"to": "r", "text": "held-%d" % i})["id"] for i in range(5)]
    assert sql("SELECT COUNT(*) FROM outbox", d.database).strip() == "6"
    d.signal(signal.SIGKILL)
    d.proc.wait(10)
    fake.default = ok()
    d.start()
    for mid in waiting:
        wait_state(d, mid, "sent", timeout=20)
    texts = [r.text for r in fake.sends()]
    assert all(texts.count("held-%d" % i) == 1 for i in range(5)), texts


# -- instance stop and daemon shutdown with sends in flight ---------------------------------------

def test_instance_stop_mid_send_requeues(make_daemon, fake):
    """fakeprov completes the sends it still has as transient failures when its instance
    stops; the outbox keeps them and sends them when the instance runs again."""
    d = start_fp_daemon(make_daemon, fake)
    fake.script(hang(5))
    acc = send(d, FP_INSTANCE, {"to": "v", "text": "interrupted"})
    fake.wait_sends(1, timeout=5)
    r = d.api("POST", "/v1/instances/%s/stop" % FP_INSTANCE)
    assert r.status == 200, r
    doc = wait_state(d, acc["id"], ("queued",), timeout=5)
    assert doc["state"] == "queued", doc
    r = d.api("POST", "/v1/instances/%s/start" % FP_INSTANCE)
    assert r.status == 200, r
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["attempts"] >= 2, doc
    assert [r.text for r in fake.sends()] == ["interrupted", "interrupted"], fake.sends()


def test_sigterm_with_send_in_flight_resends_after_restart(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    fake.script(hang(10))
    acc = send(d, FP_INSTANCE, {"to": "w", "text": "in flight at shutdown"})
    fake.wait_sends(1, timeout=5)
    rc = d.stop(timeout=15)
    assert rc == 0, rc
    d.start()
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["state"] == "sent", doc
    assert [r.text for r in fake.sends()].count("in flight at shutdown") == 2


# -- concurrency, limits, races -------------------------------------------------------------------

def test_max_in_flight_per_instance(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake, outbox=dict(FAST_OUTBOX, max_in_flight=4))
    fake.default = ok(delay=0.3)
    accs = [send(d, FP_INSTANCE, {"to": "x", "text": "par-%d" % i}) for i in range(12)]
    for acc in accs:
        wait_state(d, acc["id"], "sent", timeout=15)
    recs = fake.sends()
    assert len(recs) == 12, recs
    # Highest number of requests open at once, from arrival and answer times.
    marks = sorted([(r.time, 1) for r in recs] + [(r.done, -1) for r in recs])
    cur = peak = 0
    for _, delta in marks:
        cur += delta
        peak = max(peak, cur)
    assert peak <= 4, "%d sends in flight at once (max_in_flight 4)" % peak
    assert peak >= 3, "sends were not parallel (peak %d)" % peak


def test_burst_all_sent_once(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    key = d.admin_key
    texts = ["many-%d" % i for i in range(300)]
    errors = []

    def worker(part):
        for text in part:
            r = http_request(d.port, "POST", "/v1/instances/%s/messages" % FP_INSTANCE,
                             body={"to": "y", "text": text},
                             headers={"Authorization": "Bearer " + key})
            if r.status != 202:
                errors.append(r)

    threads = [threading.Thread(target=worker, args=(texts[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    wait_until(lambda: len(fake.sends()) >= 300, 30, what="300 sends")
    time.sleep(0.5)
    got = fake.texts()
    assert sorted(got) == sorted(texts), (len(got), len(set(got)))
    wait_until(lambda: delivery(d, FP_INSTANCE)["sent"] == 300, 10, what="300 counted sent")
    wait_until(lambda: sql("SELECT COUNT(*) FROM outbox", d.database).strip() == "0", 10,
               what="outbox emptied")


def test_text_and_choice_limits(daemon):
    def post(body):
        return daemon.api("POST", "/v1/instances/echo-demo/messages", body)

    assert post({"to": "a", "text": "x" * 65536}).status == 202
    assert_error(post({"to": "a", "text": "x" * 65537}), 400, field="text")
    thirteen = [{"id": str(i), "title": "t%d" % i} for i in range(13)]
    assert post({"to": "a", "text": "x", "buttons": thirteen}).status == 202
    assert_error(post({"to": "a", "text": "x", "buttons": thirteen + [{"id": "z", "title": "z"}]}),
                 400, field="buttons")
    assert_error(post({"to": "a", "text": "x", "buttons": [{"id": "1", "title": ""}]}), 400,
                 field="buttons[0]")


def test_status_webhook_right_after_send_answer_is_not_lost(make_daemon, fake):
    """Real providers report "delivered" within milliseconds of accepting a message; the
    status must not be lost because the send's result was not yet written."""
    d = start_fp_daemon(make_daemon, fake)
    fired = []

    def behave(rec):
        pmid = "fast-%d" % len(fired)

        def status():
            http_request(d.port, "POST", FP_WEBHOOK,
                         body={"event_id": "fast-st-" + pmid, "type": "status",
                               "message_id": pmid, "state": "delivered"})
        t = threading.Timer(0.005, status)
        t.start()
        fired.append(t)
        return ok(id=pmid)

    fake.behave = behave
    accs = [send(d, FP_INSTANCE, {"to": "q", "text": "fast-%d" % i}) for i in range(5)]
    for t in fired:
        t.join(5)
    # A lost status never arrives; a slow machine only makes it late.
    states = {}
    for acc in accs:
        try:
            states[acc["id"]] = wait_state(d, acc["id"], "delivered", timeout=10)["state"]
        except AssertionError:
            states[acc["id"]] = get_message(d, acc["id"])["state"]
    assert all(s == "delivered" for s in states.values()), \
        "a message.status 'delivered' arriving right after the send's answer was lost: %r" % states


def test_idempotency_key_survives_restart(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    first = send(d, FP_INSTANCE, {"to": "r", "text": "keyed"}, idem="restart-key")
    wait_state(d, first["id"], "sent")
    d.stop()
    d.start()
    again = send(d, FP_INSTANCE, {"to": "r", "text": "keyed"}, idem="restart-key")
    assert again["id"] == first["id"] and again["duplicate"] is True, again
    time.sleep(0.5)
    assert fake.texts() == ["keyed"], fake.texts()


def test_retry_after_honoured_across_restart(make_daemon, fake):
    """The wait a provider asked for is stored with the message: a restart in the middle
    does not send it sooner."""
    d = start_fp_daemon(make_daemon, fake)
    fake.script(rate_limit(4), ok())
    acc = send(d, FP_INSTANCE, {"to": "s", "text": "wait for me"})
    first = fake.wait_sends(1, timeout=5)[0]
    wait_until(lambda: get_message(d, acc["id"])["attempts"] == 1 and
               sql("SELECT attempts FROM outbox", d.database).strip() == "1", 3,
               what="the retry stored")
    d.signal(signal.SIGKILL)
    d.proc.wait(10)
    d.start()
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["attempts"] == 2, doc
    second = fake.sends()[1]
    assert second.time - first.time >= 3.99, "resent %.3fs after a 429 with Retry-After: 4" % (
        second.time - first.time)


def test_degradation_keeps_long_lists_whole(make_daemon, fake):
    """Degradation must not silently cut the list or the link: long button titles and a
    long caption still leave every choice and the URL in the text."""
    d = start_fp_daemon(make_daemon, fake)
    buttons = [{"id": str(i), "title": ("choice %d " % i) + "x" * 400} for i in range(13)]
    acc = send(d, FP_INSTANCE, {"to": "t", "text": "Long list", "buttons": buttons})
    wait_state(d, acc["id"], "sent")
    text = fake.sends()[-1].json["text"]
    for i, b in enumerate(buttons):
        assert "%d. %s" % (i + 1, b["title"]) in text, \
            "choice %d missing from the degraded text (%d chars)" % (i + 1, len(text))


def test_degradation_keeps_the_link_after_a_long_caption(make_daemon, fake):
    d = start_fp_daemon(make_daemon, fake)
    url = "https://example.com/" + "p" * 100 + ".png"
    acc = send(d, FP_INSTANCE, {"to": "t", "text": "pic",
                                "media": {"url": url, "mime_type": "image/png",
                                          "caption": "c" * 3000}})
    wait_state(d, acc["id"], "sent")
    text = fake.sends()[-1].json["text"]
    assert url in text, "the media URL was cut from the degraded text (%d chars)" % len(text)


def test_deleting_an_instance_drops_its_queue(make_daemon, fake):
    """An API instance deleted while a send is in flight and more wait: its messages are
    gone (rows and memory), and nothing keeps retrying them."""
    d = start_fp_daemon(make_daemon, fake, outbox=dict(FAST_OUTBOX, max_in_flight=1))
    r = d.api("POST", "/v1/instances", {"provider": "fakeprov", "name": "doomed",
                                        "settings": {"base_url": fake.url}})
    assert r.status == 201, r
    iid = r.json()["id"]
    wait_until(lambda: d.api("GET", "/v1/instances/" + iid).json()["status"]["running"], 5,
               what="instance running")
    fake.script(hang(10))
    accs = [send(d, iid, {"to": "u", "text": "doomed-%d" % i}) for i in range(4)]
    fake.wait_sends(1, timeout=5)
    assert d.metrics().value("switchboard_outbox_depth") == 4
    r = d.api("DELETE", "/v1/instances/" + iid)
    assert r.status == 204, r
    for acc in accs:
        assert d.api("GET", "/v1/messages/" + acc["id"]).status == 404
    assert sql("SELECT COUNT(*) FROM outbox", d.database).strip() == "0"
    try:
        wait_until(lambda: d.metrics().value("switchboard_outbox_depth") == 0, 8,
                   what="switchboard_outbox_depth back to 0")
    except AssertionError:
        raise AssertionError("switchboard_outbox_depth is still %s 8 s after the instance was "
                             "deleted: its messages stay queued in memory"
                             % d.metrics().value("switchboard_outbox_depth")) from None
    assert len(fake.sends()) == 1, fake.sends()


def test_plugin_swap_with_send_in_flight(make_daemon, fake):
    """Replacing the plugin while a send waits for the provider: the send's outcome is not
    lost with the old generation; the message goes out on the new one."""
    from conftest import aux_plugin
    d = start_fp_daemon(make_daemon, fake, args=[])
    fake.script(hang(8))
    acc = send(d, FP_INSTANCE, {"to": "sw", "text": "across a swap"})
    fake.wait_sends(1, timeout=5)
    gen = d.provider("fakeprov")["generation"]
    d.install_plugin(aux_plugin("fakeprov.so"), name="fakeprov.so")
    wait_until(lambda: d.provider("fakeprov")["generation"] > gen, 10, what="fakeprov swapped")
    doc = wait_state(d, acc["id"], "sent", timeout=15)
    assert doc["attempts"] >= 2, doc
    later = send(d, FP_INSTANCE, {"to": "sw", "text": "after the swap"})
    wait_state(d, later["id"], "sent", timeout=10)
    assert delivery(d, FP_INSTANCE)["in_flight"] == 0


def test_instance_restart_with_send_whose_plugin_never_completes(make_daemon, fake):
    """A plugin whose instance_stop just forgets its sends (the host cancels the instance's
    HTTP calls, so their callbacks, and done(), never run): the host must not wait for those
    sends forever. The message is retried on the restarted instance and the lane keeps
    moving."""
    d = start_fp_daemon(make_daemon, fake, outbox=dict(FAST_OUTBOX, max_in_flight=1))
    r = d.api("POST", "/v1/instances", {"provider": "fakeprov", "name": "naive",
                                        "settings": {"base_url": fake.url,
                                                     "complete_on_stop": False}})
    assert r.status == 201, r
    iid = r.json()["id"]
    wait_until(lambda: d.api("GET", "/v1/instances/" + iid).json()["status"]["running"], 5,
               what="instance running")
    fake.script(hang(10))
    first = send(d, iid, {"to": "nv", "text": "in flight at restart"})
    fake.wait_sends(1, timeout=5)
    second = send(d, iid, {"to": "nv", "text": "behind it"})
    r = d.api("POST", "/v1/instances/%s/restart" % iid)
    assert r.status == 200, r
    try:
        wait_state(d, second["id"], "sent", timeout=10)
        wait_state(d, first["id"], "sent", timeout=10)
    except AssertionError as exc:
        raise AssertionError("sends whose done() never came block the instance's lane: %s; "
                             "delivery %r" % (exc, delivery(d, iid))) from None
