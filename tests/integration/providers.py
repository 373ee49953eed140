"""Daemon set-up shared by the provider plugin tests (telegram, whatsapp-official,
messenger, instagram): a daemon with the plugin loaded and fast outbox timing,
instances created through the API."""

import os

from conftest import base_config, free_port, plugin_dir, wait_until
from fakeprovider import FAST_OUTBOX


def start_daemon(make_daemon, *plugins, outbox=FAST_OUTBOX):
    cfg = base_config(free_port())
    files = {"echo.so": os.path.join(plugin_dir(), "echo.so")}
    for name in plugins:
        cfg["plugins"][name] = {"enabled": True}
        files[name + ".so"] = os.path.join(plugin_dir(), name + ".so")
    cfg["outbox"] = dict(outbox)
    return make_daemon(config=cfg, plugins=files)


def create_instance(d, provider, name, settings, secrets, expect=201):
    r = d.api("POST", "/v1/instances", {"provider": provider, "name": name,
                                        "settings": settings, "secrets": secrets})
    assert r.status == expect, r
    return r.json()["id"] if expect == 201 else r


def instance_status(d, iid):
    r = d.api("GET", "/v1/instances/" + iid)
    assert r.status == 200, r
    return r.json()["status"]


def wait_instance_state(d, iid, state, timeout=10.0):
    last = {}

    def reached():
        st = instance_status(d, iid)
        last["st"] = st
        return st if st.get("state") == state else None
    try:
        return wait_until(reached, timeout, interval=0.05, what="instance %s %s" % (iid, state))
    except AssertionError as exc:
        raise AssertionError("%s; last %r" % (exc, last.get("st"))) from None


def inbound_messages(d, iid):
    r = d.api("GET", "/v1/instances/%s/messages?limit=100" % iid)
    assert r.status == 200, r
    return [m for m in r.json()["messages"] if m["direction"] == "in"]


def wait_inbound(d, iid, n, timeout=10.0):
    return wait_until(lambda: (lambda ms: ms if len(ms) >= n else None)(inbound_messages(d, iid)),
                      timeout, interval=0.05, what="%d inbound messages on %s" % (n, iid))


def metric(d, name, **labels):
    return d.metrics().value(name, **labels)
