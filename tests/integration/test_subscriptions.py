"""Customer webhooks (/v1/subscriptions): every stored event POSTed to the
matching subscriptions, signed as Standard Webhooks lays down (checked here
with an independent implementation: hmac/hashlib/base64), retried with
growing gaps when the subscriber fails, counted per subscription, filtered by
event type and instance, and stopped by DELETE."""

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import threading
import time

import pytest

from conftest import sql, wait_until
from fakeprovider import FP_INSTANCE, FP_WEBHOOK, FakeProvider, Subscriber, start_fp_daemon

SUB_ID_RE = re.compile(r"^sub_[0-9a-zA-Z]+$")
TOLERANCE_S = 5 * 60


@pytest.fixture
def fake():
    f = FakeProvider().start()
    yield f
    f.close()


@pytest.fixture
def subscribers():
    made = []

    def make(fail_first=0):
        s = Subscriber(fail_first=fail_first).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def new_secret():
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def verify(secret, headers, body, now=None):
    """The Standard Webhooks check, written from the specification: returns the parsed
    body, or raises AssertionError saying what is wrong."""
    for h in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert headers.get(h), "missing %s header: %r" % (h, headers)
    msg_id = headers["webhook-id"]
    ts = headers["webhook-timestamp"]
    assert re.match(r"^\d+$", ts), "webhook-timestamp %r is not unix seconds" % ts
    now = time.time() if now is None else now
    assert abs(now - int(ts)) <= TOLERANCE_S, "timestamp %s is %ds off" % (ts, now - int(ts))
    assert secret.startswith("whsec_"), secret
    key = base64.b64decode(secret[len("whsec_"):])
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    sigs = headers["webhook-signature"].split(" ")
    for sig in sigs:
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return json.loads(body.decode("utf-8"))
    raise AssertionError("no valid v1 signature in %r (expected v1,%s)" % (sigs, expected))


def create_sub(d, url, events=("*",), instances=None, secret=None, expect=201, key=None):
    body = {"url": url, "events": list(events)}
    if instances is not None:
        body["instances"] = instances
    if secret is not None:
        body["secret"] = secret
    r = d.api("POST", "/v1/subscriptions", body, key=key)
    assert r.status == expect, r
    return r.json()


def get_sub(d, sid):
    r = d.api("GET", "/v1/subscriptions/" + sid)
    assert r.status == 200, r
    return r.json()


def require_subscriptions(d):
    r = d.api("GET", "/v1/subscriptions")
    if r.status == 404:
        pytest.skip("the daemon has no /v1/subscriptions yet")
    assert r.status == 200, r


def hook(d, event_id, text="hi", instance="echo-demo"):
    r = d.webhook(instance=instance, body={"text": text, "from": "s", "event_id": event_id})
    assert r.status == 200, r


def event_ids(deliveries):
    out = []
    for rec in deliveries:
        doc = rec.json
        out.append(doc["data"].get("event_id") if isinstance(doc, dict) else None)
    return out


def fp_config_daemon(make_daemon, fake, retry_base_ms=None, **subs_conf):
    subs = dict(subs_conf)
    if retry_base_ms is not None:
        subs["retry_base_ms"] = retry_base_ms
    subs = subs or None
    d = start_fp_daemon(make_daemon, fake, subscriptions=subs)
    require_subscriptions(d)
    return d


# -- the resource ---------------------------------------------------------------------------------

def test_create_get_list_delete(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake)
    sub = subscribers()
    doc = create_sub(d, sub.url + "/hooks", events=["message.received"], instances=["echo-demo"])
    assert SUB_ID_RE.match(doc["id"]), doc
    assert doc["url"] == sub.url + "/hooks" and doc["events"] == ["message.received"], doc
    assert doc["instances"] == ["echo-demo"], doc
    secret = doc["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24, doc
    assert doc["deliveries"] == {"delivered": 0, "pending": 0, "failed": 0}, doc
    # The secret is shown once: never by GET or the list, and not stored in the clear.
    got = get_sub(d, doc["id"])
    assert "secret" not in got and secret not in json.dumps(got), got
    assert {k: got[k] for k in ("id", "url", "events", "instances")} == \
        {k: doc[k] for k in ("id", "url", "events", "instances")}, (got, doc)
    listed = d.api("GET", "/v1/subscriptions").json()["subscriptions"]
    assert [s["id"] for s in listed] == [doc["id"]] and secret not in json.dumps(listed), listed
    stored = sql("SELECT secret FROM subscriptions", d.database)
    assert secret not in stored and secret[6:] not in stored, "secret stored in the clear"
    # Given secret, null instances.
    mine = new_secret()
    doc2 = create_sub(d, sub.url, secret=mine, instances=None)
    assert doc2["secret"] == mine and doc2["instances"] is None and doc2["events"] == ["*"], doc2
    # DELETE.
    r = d.api("DELETE", "/v1/subscriptions/" + doc["id"])
    assert r.status == 204, r
    assert d.api("GET", "/v1/subscriptions/" + doc["id"]).status == 404
    assert d.api("DELETE", "/v1/subscriptions/" + doc["id"]).status == 404
    assert [s["id"] for s in d.api("GET", "/v1/subscriptions").json()["subscriptions"]] == \
        [doc2["id"]]


def test_create_validation_and_admin_only(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake)

    def bad(body, field):
        r = d.api("POST", "/v1/subscriptions", body)
        assert r.status == 400, (body, r)
        assert r.json()["error"]["details"].get("field") == field, (body, r.json())

    bad({"events": ["*"]}, "url")
    bad({"url": "ftp://x", "events": ["*"]}, "url")
    bad({"url": "http://127.0.0.1:1/x"}, "events")
    bad({"url": "http://127.0.0.1:1/x", "events": []}, "events")
    bad({"url": "http://127.0.0.1:1/x", "events": "*"}, "events")
    bad({"url": "http://127.0.0.1:1/x", "events": ["*"], "instances": []}, "instances")
    bad({"url": "http://127.0.0.1:1/x", "events": ["*"], "secret": "plain"}, "secret")
    bad({"url": "http://127.0.0.1:1/x", "events": ["*"], "secret": "whsec_!!!"}, "secret")
    bad({"url": "http://127.0.0.1:1/x", "events": ["*"], "extra": 1}, "extra")
    assert d.api("GET", "/v1/subscriptions").json()["subscriptions"] == []
    r = d.api("POST", "/v1/keys", {"label": "t", "role": "instance",
                                   "instance_ids": ["echo-demo"]})
    key = r.json()["key"]
    assert d.api("GET", "/v1/subscriptions", key=key).status == 403
    assert d.api("POST", "/v1/subscriptions", {"url": "http://x/", "events": ["*"]},
                 key=key).status == 403
    assert d.get("/v1/subscriptions").status == 401


# -- delivery and signature -----------------------------------------------------------------------

def test_delivery_is_signed_standard_webhooks(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake)
    sub = subscribers()
    given = new_secret()
    a = create_sub(d, sub.url + "/given", secret=given)
    b = create_sub(d, sub.url + "/generated")
    hook(d, "sig-1", text="signed")
    recs = sub.wait_deliveries(2, timeout=10)
    time.sleep(0.3)
    assert len(sub.deliveries()) == 2, sub.deliveries()
    by_path = {r.path: r for r in recs}
    assert set(by_path) == {"/given", "/generated"}, by_path
    for path, secret in (("/given", given), ("/generated", b["secret"])):
        rec = by_path[path]
        assert rec.method == "POST", rec
        assert rec.headers.get("content-type", "").startswith("application/json"), rec.headers
        env = verify(secret, rec.headers, rec.body, now=rec.wall)
        assert rec.headers["webhook-id"] == env["id"], (rec.headers, env)
        assert set(env) == {"id", "type", "provider", "instance", "created_at", "data"}, env
        assert env["type"] == "message.received" and env["instance"] == "echo-demo", env
        assert env["provider"] == "echo" and env["data"]["event_id"] == "sig-1", env
        assert env["data"]["text"] == "echo: signed", env
        # The checker itself rejects a wrong key and a tampered body.
        with pytest.raises(AssertionError):
            verify(new_secret(), rec.headers, rec.body, now=rec.wall)
        with pytest.raises(AssertionError):
            verify(secret, rec.headers, rec.body.replace(b"signed", b"forged"), now=rec.wall)
    # Both subscriptions got the same event id (the event's, not a per-delivery one).
    assert by_path["/given"].headers["webhook-id"] == by_path["/generated"].headers["webhook-id"]
    for s in (a, b):
        wait_until(lambda: get_sub(d, s["id"])["deliveries"] ==
                   {"delivered": 1, "pending": 0, "failed": 0}, 5,
                   what="delivery counted for %s" % s["id"])


def test_every_event_type_and_many_events_delivered_once(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake)
    sub = subscribers()
    secret = create_sub(d, sub.url)["secret"]
    for i in range(20):
        hook(d, "many-%d" % i, text="m%d" % i)
    r = d.post(FP_WEBHOOK, {"event_id": "many-status", "type": "status", "message_id": "x",
                            "state": "read"})
    assert r.status == 200, r
    recs = sub.wait_deliveries(21, timeout=15)
    time.sleep(0.5)
    recs = sub.deliveries()
    assert len(recs) == 21, len(recs)
    envs = [verify(secret, rec.headers, rec.body, now=rec.wall) for rec in recs]
    assert sorted(e["data"]["event_id"] for e in envs) == \
        sorted(["many-%d" % i for i in range(20)] + ["many-status"])
    assert {e["type"] for e in envs} == {"message.received", "message.status"}


# -- retries --------------------------------------------------------------------------------------

def test_retries_with_growing_gaps_then_delivered(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake, retry_base_ms=100)
    sub = subscribers(fail_first=3)
    s = create_sub(d, sub.url)
    hook(d, "retry-1")
    first = sub.wait_deliveries(1, timeout=5)
    wait_until(lambda: get_sub(d, s["id"])["deliveries"]["pending"] == 1, 3,
               what="a pending delivery while the subscriber fails")
    recs = sub.wait_deliveries(4, timeout=15)
    assert first
    t = [r.time for r in recs]
    gaps = [b - a for a, b in zip(t, t[1:])]
    # base 100 ms x [1, 5, 30]: not sooner, and each wait longer than the one before.
    for gap, want in zip(gaps, (0.1, 0.5, 3.0)):
        assert gap >= want - 0.01, "gaps %r, expected at least %r" % (gaps, (0.1, 0.5, 3.0))
        assert gap < want + 1.5, "gaps %r, expected about %r" % (gaps, (0.1, 0.5, 3.0))
    assert gaps == sorted(gaps), gaps
    # The same event every time, each attempt validly signed at the time it is made (a
    # subscriber rejects timestamps over 5 minutes old; late retries must still verify).
    assert len({r.headers["webhook-id"] for r in recs}) == 1, [r.headers for r in recs]
    for rec in recs:
        verify(s["secret"], rec.headers, rec.body, now=rec.wall)
    ts = [int(r.headers["webhook-timestamp"]) for r in recs]
    assert ts[3] - ts[0] >= 3, "retries reuse the first attempt's timestamp: %r" % ts
    bodies = [json.loads(r.body) for r in recs]
    assert all(b == bodies[0] for b in bodies), bodies
    wait_until(lambda: get_sub(d, s["id"])["deliveries"] ==
               {"delivered": 1, "pending": 0, "failed": 0}, 5, what="delivered after retries")
    time.sleep(0.5)
    assert len(sub.deliveries()) == 4


def test_failed_after_max_attempts(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake, retry_base_ms=1)
    sub = subscribers(fail_first=10 ** 6)
    s = create_sub(d, sub.url)
    hook(d, "give-up")
    # Waits of 1, 5, 30, 120, 600, 1800, 3600 ms between 8 attempts: about 6.2 s.
    sub.wait_deliveries(8, timeout=20)
    wait_until(lambda: get_sub(d, s["id"])["deliveries"] ==
               {"delivered": 0, "pending": 0, "failed": 1}, 5, what="delivery failed")
    time.sleep(1.0)
    assert len(sub.deliveries()) == 8, sub.deliveries()


def test_non_2xx_of_every_kind_is_retried(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake, retry_base_ms=20)
    sub = subscribers()
    answers = iter([404, 302, 503, 200])
    sub.decide = lambda rec: next(answers, 200)
    s = create_sub(d, sub.url)
    hook(d, "kinds")
    sub.wait_deliveries(4, timeout=15)
    wait_until(lambda: get_sub(d, s["id"])["deliveries"]["delivered"] == 1, 5,
               what="delivered on the 4th attempt")


def test_unreachable_subscriber_is_retried(make_daemon, fake):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    d = fp_config_daemon(make_daemon, fake, retry_base_ms=50)
    s = create_sub(d, "http://127.0.0.1:%d/nobody" % port)
    hook(d, "unreachable")
    wait_until(lambda: get_sub(d, s["id"])["deliveries"]["pending"] == 1, 5,
               what="pending delivery to a closed port")
    # The daemon keeps answering while it retries.
    assert d.get("/healthz").status == 200


# -- filters, delete ------------------------------------------------------------------------------

def test_filters_by_event_type_and_instance(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake)
    status_sub, fp_sub, echo_recv_sub, all_sub = (subscribers() for _ in range(4))
    create_sub(d, status_sub.url, events=["message.status"])
    create_sub(d, fp_sub.url, instances=[FP_INSTANCE])
    create_sub(d, echo_recv_sub.url, events=["message.received"], instances=["echo-demo"])
    create_sub(d, all_sub.url, events=["message.received", "message.status"])
    hook(d, "f-echo")
    assert d.post(FP_WEBHOOK, {"event_id": "f-fp-msg", "type": "message", "text": "x"}).status \
        == 200
    assert d.post(FP_WEBHOOK, {"event_id": "f-fp-status", "type": "status", "message_id": "m",
                               "state": "delivered"}).status == 200
    all_sub.wait_deliveries(3, timeout=10)
    time.sleep(1.0)
    assert sorted(event_ids(status_sub.deliveries())) == ["f-fp-status"]
    assert sorted(event_ids(fp_sub.deliveries())) == ["f-fp-msg", "f-fp-status"]
    assert sorted(event_ids(echo_recv_sub.deliveries())) == ["f-echo"]
    assert sorted(event_ids(all_sub.deliveries())) == ["f-echo", "f-fp-msg", "f-fp-status"]


def test_delete_stops_deliveries(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake, retry_base_ms=300)
    sub = subscribers(fail_first=10 ** 6)
    s = create_sub(d, sub.url)
    hook(d, "del-1")
    sub.wait_deliveries(2, timeout=5)  # first attempt and the retry after 300 ms
    r = d.api("DELETE", "/v1/subscriptions/" + s["id"])
    assert r.status == 204, r
    n = len(sub.deliveries())
    hook(d, "del-2")
    time.sleep(2.5)  # the next retry was due 1.5 s after the second attempt
    assert len(sub.deliveries()) == n, sub.deliveries()[n:]
    assert "del-2" not in event_ids(sub.deliveries())


def test_duplicate_webhook_delivered_once(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake)
    sub = subscribers()
    create_sub(d, sub.url)
    for _ in range(3):
        hook(d, "dup-sub")
    hook(d, "dup-fence")
    sub.wait_deliveries(2, timeout=10)
    time.sleep(0.5)
    assert sorted(event_ids(sub.deliveries())) == ["dup-fence", "dup-sub"]


def test_pending_delivery_survives_sigkill(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake, retry_base_ms=200)
    sub = subscribers(fail_first=10 ** 6)
    s = create_sub(d, sub.url)
    secret = s["secret"]
    hook(d, "kill-sub")
    sub.wait_deliveries(1, timeout=5)
    wait_until(lambda: get_sub(d, s["id"])["deliveries"]["pending"] == 1, 3,
               what="pending delivery")
    d.signal(signal.SIGKILL)
    d.proc.wait(10)
    sub.fail_first = 0
    sub.decide = lambda rec: 200
    d.start()
    wait_until(lambda: get_sub(d, s["id"])["deliveries"] ==
               {"delivered": 1, "pending": 0, "failed": 0}, 20, what="delivered after restart")
    last = sub.deliveries()[-1]
    env = verify(secret, last.headers, last.body, now=last.wall)
    assert env["data"]["event_id"] == "kill-sub", env


def test_acknowledged_events_keep_their_deliveries_across_sigkill(make_daemon, fake, subscribers):
    """The delivery rows are written in the event's own transaction: a daemon killed
    the moment the last webhook is acknowledged still delivers every event."""
    d = fp_config_daemon(make_daemon, fake, retry_base_ms=200)
    sub = subscribers(fail_first=10 ** 6)  # down until the restart
    s = create_sub(d, sub.url, events=["message.received"])
    ids = ["ack-%02d" % i for i in range(48)]
    errors = []

    def send(chunk):
        for eid in chunk:
            try:
                hook(d, eid)
            except AssertionError as e:  # noqa: PERF203 (collected, asserted below)
                errors.append(e)

    threads = [threading.Thread(target=send, args=(ids[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d.signal(signal.SIGKILL)
    d.proc.wait(10)
    assert not errors, errors
    sub.fail_first = 0
    sub.decide = lambda rec: 200
    d.start()
    wait_until(lambda: set(ids) <= set(event_ids(sub.deliveries())), 30,
               what="every acknowledged event delivered after the restart")
    wait_until(lambda: get_sub(d, s["id"])["deliveries"]["delivered"] == len(ids), 10,
               what="every delivery recorded")


def test_hung_subscriber_times_out_and_is_retried(make_daemon, fake, subscribers):
    d = fp_config_daemon(make_daemon, fake, retry_base_ms=50, timeout_ms=500)
    sub = subscribers()
    answers = iter([(200, 3.0)])
    sub.decide = lambda rec: next(answers, 200)
    s = create_sub(d, sub.url)
    hook(d, "hung-sub")
    recs = sub.wait_deliveries(2, timeout=10)
    gap = recs[1].time - recs[0].time
    assert 0.5 <= gap < 2.5, "retry %.2fs after a subscriber that hung (timeout 500 ms)" % gap
    wait_until(lambda: get_sub(d, s["id"])["deliveries"]["delivered"] == 1, 5,
               what="delivered after the timeout")
    # Still responsive while a delivery hangs.
    assert d.get("/healthz").status == 200
