"""Rate limits, webhook allow-lists and the body cap (issue 4, "Rate limits")."""

from conftest import RELOAD_DEADLINE, base_config, free_port, wait_until


def limited_config(**limits):
    cfg = base_config(free_port())
    cfg["limits"] = limits
    return cfg


def statuses(fn, n):
    return [fn().status for _ in range(n)]


def test_api_key_rate_limit_answers_429_with_retry_after(make_daemon):
    d = make_daemon(config=limited_config(api_per_key_rps=2, api_burst=3))
    got = statuses(lambda: d.api("GET", "/v1/providers"), 6)
    assert got[:3] == [200, 200, 200], got
    assert 429 in got[3:], got
    r = d.api("GET", "/v1/providers")
    assert r.status == 429, r
    assert r.headers.get("retry-after", "").isdigit(), r.headers
    assert r.json()["error"]["code"] == "rate_limited"
    # The bucket refills: a second later the key works again.
    wait_until(lambda: d.api("GET", "/v1/providers").status == 200, 3, what="bucket refill")


def test_rate_limit_is_per_key(make_daemon):
    d = make_daemon(config=limited_config(api_per_key_rps=1, api_burst=1))
    other = d.api("POST", "/v1/keys", {"label": "second", "role": "admin"}).json()["key"]
    assert d.api("GET", "/v1/providers").status == 429  # the admin key spent its token above
    assert d.api("GET", "/v1/providers", key=other).status == 200


def test_webhook_rate_limit_per_address(make_daemon):
    d = make_daemon(config=limited_config(webhook_per_ip_rps=2, webhook_burst=2))
    got = statuses(lambda: d.webhook(), 5)
    assert got[:2] == [200, 200] and 429 in got[2:], got
    r = d.webhook()
    assert r.status == 429 and r.headers.get("retry-after", "").isdigit(), r
    # Health and the API are not webhook routes.
    assert d.get("/healthz").status == 200


def test_allow_from_refuses_other_addresses_and_reloads(make_daemon):
    cfg = base_config(free_port())
    cfg["plugins"]["echo"]["allow_from"] = ["10.0.0.0/8", "2001:db8::/32"]
    d = make_daemon(config=cfg)
    r = d.webhook()
    assert r.status == 403 and r.json()["error"]["code"] == "forbidden_address", r
    cfg["plugins"]["echo"]["allow_from"] = ["127.0.0.0/8"]
    d.write_config(cfg)
    wait_until(lambda: d.webhook().status == 200, RELOAD_DEADLINE, what="allow-list reload")


def test_bad_allow_from_is_a_config_error(make_daemon):
    cfg = base_config(free_port())
    cfg["plugins"]["echo"]["allow_from"] = ["10.0.0.0/33"]
    d = make_daemon(config=cfg, start=False)
    assert d.expect_start_failure() == 1
    rec = d.wait_for_log("config rejected", timeout=2)
    assert rec["key"] == "allow_from", rec


def test_body_cap(make_daemon):
    d = make_daemon(config=limited_config(max_body_bytes=4096))
    assert d.webhook(body={"text": "x" * 1000}).status == 200
    r = d.webhook(body={"text": "x" * 8000})
    assert r.status == 413, r
    assert d.webhook().status == 200  # the daemon is fine afterwards
