#!/usr/bin/env python3
"""The measuring half of bench/whatsweb.sh (which sets up the fixture page, the
daemon, the instance and the npm peer, then calls `runs`, and `sweep` when it
cleans up). Standard library only.

  whatsweb-runs.py runs    (settings in the environment, see main())
  whatsweb-runs.py sweep TAG    kill what is left of Chromium, plugin-hosts and
                                peers started with SB_BENCH_TAG=TAG

Memory of a process tree: every process under the root (plugin-host or node)
plus the Chromium helpers that detach themselves (chrome_crashpad_handler is
re-parented to init), found by the environment variable SB_BENCH_TAG that the
bench gives everything it starts. RSS and PSS from /proc/<pid>/smaps_rollup
(PSS divides each shared page among the processes mapping it, so the sum over
a tree counts Chromium's shared binary and libraries once).
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

WATCHED = ("chromium", "chrome_crashpad_handler", "switchboard-plugin-host", "node", "chrome")


# ---------------------------------------------------------------- /proc
def read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def cmdline(pid):
    raw = read("/proc/%d/cmdline" % pid, "rb")
    if not raw:
        return []
    args = [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]
    # Chromium's child processes rewrite their title into one space-joined string.
    if len(args) == 1 and " --" in args[0]:
        args = re.split(r" (?=--)", args[0])
    return args


def ppid_of(pid):
    st = read("/proc/%d/stat" % pid)
    if not st:
        return None
    return int(st[st.rindex(")") + 2:].split()[1])


def has_tag(pid, tag):
    env = read("/proc/%d/environ" % pid, "rb")
    return bool(env) and ("SB_BENCH_TAG=%s" % tag).encode() in env.split(b"\0")


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def watched(pid):
    c = cmdline(pid)
    return bool(c) and os.path.basename(c[0]) in WATCHED


def tagged_watched(tag):
    """Chromium, crashpad, plugin-host and node processes started by this bench."""
    me = {os.getpid(), os.getppid()}
    return [p for p in all_pids() if p not in me and watched(p) and has_tag(p, tag)]


def descendants(root):
    kids = {}
    for p in all_pids():
        pp = ppid_of(p)
        if pp is not None:
            kids.setdefault(pp, []).append(p)
    out, pending = [], [root]
    while pending:
        p = pending.pop()
        out.append(p)
        pending.extend(kids.get(p, []))
    return out


def kind(pid):
    c = cmdline(pid)
    if not c:
        return "gone"
    base = os.path.basename(c[0])
    if base == "switchboard-plugin-host":
        return "plugin-host"
    if base == "node":
        return "node"
    if base == "chrome_crashpad_handler":
        return "crashpad"
    t = [a.split("=", 1)[1] for a in c if a.startswith("--type=")]
    if not t:
        return "browser"
    if t[0] == "utility":
        sub = [a.split("=", 1)[1] for a in c if a.startswith("--utility-sub-type=")]
        return "utility:" + (sub[0].split(".")[0] if sub else "?")
    if t[0] == "renderer" and "--top-chrome-webui" in c:
        return "renderer(webui)"
    return t[0]


def rollup(pid):
    """kB: Rss, Pss, Pss_Anon from smaps_rollup (None if the process is gone)."""
    txt = read("/proc/%d/smaps_rollup" % pid)
    if not txt:
        return None
    v = {}
    for line in txt.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            v[parts[0][:-1]] = int(parts[1])
    return {"rss": v.get("Rss", 0), "pss": v.get("Pss", 0), "anon": v.get("Pss_Anon", 0)}


def vmrss(pid):
    for line in (read("/proc/%d/status" % pid) or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(root, tag):
    """The tree under root plus the tagged Chromium helpers outside any tree."""
    pids = set(descendants(root))
    for p in tagged_watched(tag):
        if p not in pids and ppid_of(p) == 1:
            pids.add(p)
    procs = []
    for p in sorted(pids):
        r = rollup(p)
        if r:
            r.update(pid=p, kind=kind(p))
            procs.append(r)
    return {"n": len(procs), "rss": sum(p["rss"] for p in procs), "pss": sum(p["pss"] for p in procs),
            "anon": sum(p["anon"] for p in procs), "procs": procs}


def wait_gone(tag, timeout):
    """Wait until no bench-started Chromium/plugin-host/node is left; then kill the rest."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = tagged_watched(tag)
        if not left:
            return 0
        time.sleep(0.1)
    left = tagged_watched(tag)
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.5)
    return len(left)


def sweep(tag):
    left = tagged_watched(tag)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in left:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and tagged_watched(tag):
            time.sleep(0.1)
        left = tagged_watched(tag)
        if not left:
            break
    return len(left)


# ---------------------------------------------------------------- HTTP
def http(method, url, auth=None, timeout=10):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def shown(fixture, text):
    st, body = http("GET", fixture + "control/qr?ref=" + urllib.parse.quote(text or "", safe=""))
    return st == 200 and json.loads(body).get("shown") is True


# ---------------------------------------------------------------- runs
class Bench:
    def __init__(self):
        e = os.environ
        self.base, self.auth, self.iid = e["SB_BASE"], e["SB_AUTH"], e["SB_INSTANCE"]
        self.fixture = e["FIXTURE_URL"]
        self.tag = e["SB_BENCH_TAG"]
        self.tmp = e["BENCH_TMP"]
        self.profile = e["SB_PROFILE"]
        self.daemon_pid, self.db_pid = int(e["SB_DAEMON_PID"]), int(e.get("SB_DB_PID") or 0)
        self.runs = int(e.get("BENCH_RUNS", "5"))
        self.settle = float(e.get("BENCH_SETTLE", "2"))
        self.modes = [m for m in e.get("BENCH_PEER_MODES", "same defaults").split() if m]
        self.node_dir = e.get("BENCH_NODE_DIR", "")
        self.flags = json.loads(e["PEER_FLAGS"])
        self.qr_timeout = float(e.get("BENCH_QR_TIMEOUT", "60"))
        self.results = {"sb": [], **{m: [] for m in self.modes}}
        self.cmdlines = {}
        self.leftovers = 0

    def note(self, msg):
        print("bench: " + msg, file=sys.stderr, flush=True)

    def sb_run(self, i):
        shutil.rmtree(self.profile, ignore_errors=True)
        api = "%s/v1/instances/%s" % (self.base, self.iid)
        t0 = time.monotonic()
        st, body = http("POST", api + "/start", self.auth)
        if st != 200:
            raise SystemExit("start answered %d: %s" % (st, body[:300]))
        deadline = t0 + self.qr_timeout
        while True:
            st, body = http("GET", api + "/qr", self.auth)
            if st == 200:
                break
            if time.monotonic() > deadline:
                raise SystemExit("no QR %d s after start: %d %s" % (self.qr_timeout, st, body[:300]))
            time.sleep(0.01)
        t1 = time.monotonic()
        qr = json.loads(body)
        status = json.loads(http("GET", api, self.auth)[1])["status"]
        host_pid = status.get("provider_status", {}).get("process", {}).get("pid")
        time.sleep(self.settle)
        mem = measure(host_pid, self.tag)
        # The plugin's status (first_qr_ms) may trail the state a little: read it now.
        status = json.loads(http("GET", api, self.auth)[1])["status"]
        browser = status.get("provider_status", {}).get("browser", {})
        if browser.get("pid") and "sb" not in self.cmdlines:
            self.cmdlines["sb"] = cmdline(browser["pid"])
        ok = shown(self.fixture, qr.get("text"))
        r = {"run": i, "qr_s": t1 - t0, "chromium_qr_ms": browser.get("first_qr_ms"),
             "qr_ok": ok, "host_rss": vmrss(host_pid), "daemon_rss": vmrss(self.daemon_pid),
             "db_rss": vmrss(self.db_pid) if self.db_pid else 0, **mem}
        st, body = http("POST", api + "/stop", self.auth)
        if st != 200:
            raise SystemExit("stop answered %d: %s" % (st, body[:300]))
        self.leftovers += wait_gone(self.tag, 30)
        shutil.rmtree(self.profile, ignore_errors=True)
        return r

    def peer_run(self, i, mode):
        prof = os.path.join(self.tmp, "peer-profile-%s-%s" % (mode, i))
        shutil.rmtree(prof, ignore_errors=True)
        os.makedirs(prof)
        env = dict(os.environ, FIXTURE_URL=self.fixture, PEER_MODE=mode, PEER_PROFILE=prof,
                   PEER_FLAGS=json.dumps(self.flags), PEER_TIMEOUT_MS=str(int(self.qr_timeout * 1000)))
        log = open(os.path.join(self.tmp, "peer-%s-%s.log" % (mode, i)), "w")
        p = subprocess.Popen(["node", os.path.join(self.node_dir, "peer.js")], cwd=self.node_dir, env=env,
                             stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = p.stdout.readline()
            if not line:
                raise SystemExit("the peer (%s) exited without a QR: %s" % (
                    mode, read(log.name) or "(no output)"))
            ev = json.loads(line)
            if ev.get("ev") != "qr":
                raise SystemExit("the peer (%s) failed: %s" % (mode, ev))
            if ev.get("browser_pid") and mode not in self.cmdlines:
                self.cmdlines[mode] = cmdline(ev["browser_pid"])
            time.sleep(self.settle)
            mem = measure(p.pid, self.tag)
            ok = shown(self.fixture, ev.get("qr"))  # the page has posted it by now
            r = {"run": i, "qr_s": ev["init_ms"] / 1000.0, "node_start_qr_s": ev["start_ms"] / 1000.0,
                 "page_qr_ms": ev.get("page_qr_ms"), "fallback": ev.get("fallback"), "qr_ok": ok,
                 "node_rss": vmrss(p.pid), **mem}
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            log.close()
        self.leftovers += wait_gone(self.tag, 30)
        shutil.rmtree(prof, ignore_errors=True)
        return r

    def run_all(self):
        if os.environ.get("BENCH_WARMUP", "1") == "1":
            self.note("warm-up (not counted): one switchboard run, one peer run")
            self.sb_run(0)
            if self.modes:
                self.peer_run(0, self.modes[0])
        for i in range(1, self.runs + 1):
            r = self.sb_run(i)
            self.results["sb"].append(r)
            self.note("run %d/%d switchboard: QR %.2f s, plugin-host %.1f MiB, instance RSS %.0f MiB PSS %.0f MiB"
                      % (i, self.runs, r["qr_s"], r["host_rss"] / 1024, r["rss"] / 1024, r["pss"] / 1024))
            for m in self.modes:
                r = self.peer_run(i, m)
                self.results[m].append(r)
                self.note("run %d/%d whatsapp-web.js (%s): qr %.2f s, RSS %.0f MiB PSS %.0f MiB%s"
                          % (i, self.runs, m, r["qr_s"], r["rss"] / 1024, r["pss"] / 1024,
                             " FALLBACK: %s" % r["fallback"] if r["fallback"] else ""))
        with open(os.path.join(self.tmp, "results.json"), "w") as f:
            json.dump({"results": self.results, "cmdlines": self.cmdlines}, f)


# ---------------------------------------------------------------- table
def mib(kb):
    return "%.1f MiB" % (kb / 1024.0)


def med(rs, k):
    v = [r[k] for r in rs if r.get(k) is not None]
    return statistics.median(v) if v else None


def rng(rs, k):
    v = [r[k] for r in rs if r.get(k) is not None]
    return (min(v), max(v)) if v else (None, None)


def mem_cell(rs, k, extra=""):
    if not rs:
        return "-"
    lo, hi = rng(rs, k)
    return "%s (%s–%s%s)" % (mib(med(rs, k)), mib(lo).split()[0], mib(hi), extra)


def secs_cell(rs, k="qr_s"):
    if not rs:
        return "-"
    return "%.2f s median, %.2f s max" % (med(rs, k), max(r[k] for r in rs))


def ratio(a, b):
    return "%.2f" % (a / b) if a and b else "n/a"


def kinds(rs):
    """Median PSS per process kind over the runs (kB) and the count of each."""
    per = {}
    for r in rs:
        agg = {}
        for p in r["procs"]:
            a = agg.setdefault(p["kind"], [0, 0])
            a[0] += p["pss"]
            a[1] += 1
        for k, (pss, n) in agg.items():
            per.setdefault(k, []).append((pss, n))
    return {k: (statistics.median(x[0] for x in v), max(x[1] for x in v)) for k, v in per.items()}


def flag_set(c):
    skip = ("--user-data-dir=", "--user-agent=", "--disable-blink-features=")
    return {a for a in c[1:] if a.startswith("--") and not a.startswith(skip)}


def table(b):
    R = b.results
    sb = R["sb"]
    same = R.get("same", [])
    dflt = R.get("defaults", [])
    cols = ["figure", "switchboard (whatsweb.so in a plugin-host)",
            "whatsapp-web.js, same Chromium flags", "whatsapp-web.js, Puppeteer defaults + ours",
            "switchboard / same-flags peer", "target"]
    rows = []

    def row(*c):
        rows.append(list(c) + [""] * (len(cols) - len(c)))

    host = med(sb, "host_rss")
    row("start → QR (N=%d)" % len(sb), secs_cell(sb), secs_cell(same), secs_cell(dflt),
        ratio(med(sb, "qr_s"), med(same, "qr_s")) if same else "n/a", "—")
    row("  of which the page showed its QR after",
        "Chromium start → QR (plugin) %.0f ms median" % med(sb, "chromium_qr_ms")
        if med(sb, "chromium_qr_ms") is not None else "-",
        "%.0f ms after initialize()" % med(same, "page_qr_ms") if med(same, "page_qr_ms") is not None else "-",
        "%.0f ms after initialize()" % med(dflt, "page_qr_ms") if med(dflt, "page_qr_ms") is not None else "-")
    if same or dflt:
        row("  node process start → 'qr' (require + launch)", "—",
            secs_cell(same, "node_start_qr_s"), secs_cell(dflt, "node_start_qr_s"))
    row("QR text = the page's data-ref", "%d/%d" % (sum(r["qr_ok"] for r in sb), len(sb)),
        "%d/%d" % (sum(r["qr_ok"] for r in same), len(same)) if same else "-",
        "%d/%d" % (sum(r["qr_ok"] for r in dflt), len(dflt)) if dflt else "-")
    row("plugin-host VmRSS, without Chromium", mem_cell(sb, "host_rss"), "—", "—", "",
        "< 5 MiB: %s" % ("met" if host is not None and host < 5 * 1024 else "NOT met"))
    if same or dflt:
        row("Node process VmRSS, without Chromium", "—", mem_cell(same, "node_rss"),
            mem_cell(dflt, "node_rss"), ratio(host, med(same, "node_rss")))
    for k, label in (("pss", "whole instance, PSS sum"), ("rss", "whole instance, RSS sum")):
        r_same = ratio(med(sb, k), med(same, k)) if same else "n/a"
        tgt = ("≤ 0.50: %s" % ("met" if r_same != "n/a" and float(r_same) <= 0.5 else "NOT met")) \
            if same else "≤ 0.50"
        row(label, mem_cell(sb, k, ", %d processes" % max(r["n"] for r in sb)),
            mem_cell(same, k, ", %d processes" % max(r["n"] for r in same)) if same else "-",
            mem_cell(dflt, k, ", %d processes" % max(r["n"] for r in dflt)) if dflt else "-",
            r_same + (" (vs defaults %s)" % ratio(med(sb, k), med(dflt, k)) if dflt else ""), tgt)
    row("  anonymous part of the PSS sum", mib(med(sb, "anon")), mib(med(same, "anon")) if same else "-",
        mib(med(dflt, "anon")) if dflt else "-", ratio(med(sb, "anon"), med(same, "anon")) if same else "")
    sb_chrome = [r["pss"] - sum(p["pss"] for p in r["procs"] if p["kind"] == "plugin-host") for r in sb]
    row("  Chromium's processes alone (PSS)", mib(statistics.median(sb_chrome)),
        mib(statistics.median([r["pss"] - sum(p["pss"] for p in r["procs"] if p["kind"] == "node")
                               for r in same])) if same else "-",
        mib(statistics.median([r["pss"] - sum(p["pss"] for p in r["procs"] if p["kind"] == "node")
                               for r in dflt])) if dflt else "-")
    row("daemon VmRSS (reference; its mariadbd apart)",
        "%s (mariadbd %s)" % (mib(med(sb, "daemon_rss")), mib(med(sb, "db_rss"))), "—", "—")

    widths = [max(len(r[i]) for r in rows + [cols]) for i in range(len(cols))]
    line = lambda c: "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |"
    print(line(cols))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))

    print()
    print("PSS by process kind (median over the runs; count):")
    ks = {"switchboard": kinds(sb)}
    if same:
        ks["same flags"] = kinds(same)
    if dflt:
        ks["defaults"] = kinds(dflt)
    allk = sorted({k for v in ks.values() for k in v}, key=lambda k: -max(v.get(k, (0, 0))[0] for v in ks.values()))
    print("  %-26s" % "kind" + "".join("%-22s" % n for n in ks))
    for k in allk:
        print("  %-26s" % k + "".join("%-22s" % (("%s ×%d" % (mib(v[k][0]), v[k][1])) if k in v else "-")
                                      for v in ks.values()))

    if "sb" in b.cmdlines and "same" in b.cmdlines:
        a, c = flag_set(b.cmdlines["sb"]), flag_set(b.cmdlines["same"])
        if not a or not c:
            print("\nChromium command lines: could not be read")
        elif a == c:
            print("\nChromium command lines, ours vs the same-flags peer: identical but for "
                  "--user-data-dir, and whatsapp-web.js's own --user-agent and "
                  "--disable-blink-features=AutomationControlled")
        else:
            print("\nChromium command lines differ: only ours %s; only the peer's %s"
                  % (sorted(a - c), sorted(c - a)))
    fb = [r["fallback"] for r in same + dflt if r.get("fallback")]
    if fb:
        print("NOTE: whatsapp-web.js did not emit 'qr' in %d runs; those report the page's QR "
              "element instead (%s)" % (len(fb), fb[0]))
    print("processes left over after a run (killed): %d" % b.leftovers)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "sweep":
        n = sweep(sys.argv[2])
        if n:
            print("bench: %d processes would not die" % n, file=sys.stderr)
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "runs":
        b = Bench()
        b.run_all()
        table(b)
        return
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
