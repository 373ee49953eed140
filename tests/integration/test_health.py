"""Sending health per provider and the send latency histogram (issue 4, "Health")."""

from conftest import wait_until


def echo_health(d):
    return d.provider("echo")["health"]


def test_provider_health_and_latency_histogram(daemon):
    before = echo_health(daemon)["sent"]
    for i in range(3):
        r = daemon.api("POST", "/v1/instances/echo-demo/messages", {"to": "a", "text": str(i)})
        assert r.status == 202, r
    wait_until(lambda: echo_health(daemon)["sent"] == before + 3, 5, what="three sends counted")
    h = echo_health(daemon)
    assert h["failed"] == 0 and h["breakers_open"] == 0 and h["last_success"] > 0, h
    m = daemon.metrics()
    count = m.value("switchboard_send_duration_seconds_count", provider="echo")
    inf = m.value("switchboard_send_duration_seconds_bucket", provider="echo", le="+Inf")
    assert count >= 3 and inf == count, (count, inf)
    # Buckets are cumulative: each one holds at least what the smaller ones do.
    buckets = sorted(((float(lab["le"]), v) for lab, v in
                      m.find("switchboard_send_duration_seconds_bucket", provider="echo")
                      if lab["le"] != "+Inf"))
    values = [v for _, v in buckets]
    assert values == sorted(values) and values[-1] <= inf, buckets
    assert "# TYPE switchboard_send_duration_seconds histogram" in m.text
