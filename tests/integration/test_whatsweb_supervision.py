"""whatsweb and the processes around it: every process of an instance (its
switchboard-plugin-host, Chromium and Chromium's own zygotes and renderers)
goes away when the daemon is killed with SIGKILL, and when the instance is
stopped; none is left as an orphan or a zombie."""

import os
import signal

import pytest

from cdp import chromium_path
from conftest import wait_until
from test_whatsweb import HOST, browsers_with_profile, login, provider, ww_daemon, ww_instance
from fakes.whatsweb import FakeWhatsWeb

pytestmark = [
    pytest.mark.skipif(chromium_path() is None,
                       reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(not HOST, reason="SB_PLUGIN_HOST is not set (run through make check)"),
]


@pytest.fixture
def ww():
    f = FakeWhatsWeb(qr_rotate_ms=1500).start()
    yield f
    f.close()


def children():
    """{ppid: [pid, ...]} of every process now."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(pid))
    return out


def descendants(pid):
    tree, out, pending = children(), [], [pid]
    while pending:
        p = pending.pop()
        for c in tree.get(p, []):
            out.append(c)
            pending.append(c)
    return out


def alive(pid):
    """Running (a zombie counts as gone only once reaped: it is reported)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_daemon_sigkill_leaves_no_browser(make_daemon, ww):
    d = ww_daemon(make_daemon)
    iid = ww_instance(d, ww)
    login(d, ww, iid)
    profile = provider(d, iid)["profile_dir"]
    host_pid = provider(d, iid)["process"]["pid"]
    procs = [host_pid] + descendants(host_pid)
    browser = provider(d, iid)["browser"]["pid"]
    assert browser in procs and len(procs) >= 3, procs  # plugin-host, chromium, its helpers
    d.expect_exit = True
    d.signal(signal.SIGKILL)
    d.wait_exit(10)
    wait_until(lambda: not [p for p in procs if alive(p)], 15,
               what="every process of the instance gone")
    assert not browsers_with_profile(profile)


def test_stop_leaves_no_browser_process(make_daemon, ww):
    d = ww_daemon(make_daemon)
    iid = ww_instance(d, ww)
    login(d, ww, iid)
    host_pid = provider(d, iid)["process"]["pid"]
    procs = [host_pid] + descendants(host_pid)
    assert d.api("POST", "/v1/instances/%s/stop" % iid).status in (200, 202)
    wait_until(lambda: not [p for p in procs if alive(p)], 15,
               what="every process of the instance gone")
