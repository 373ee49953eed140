#!/bin/bash
# Instance API benchmark with the database in the loop: prints figures,
# builds nothing, asserts nothing.
#
#   bench/instances.sh      (after ./configure && make in the source tree)
#
# Starts a private MariaDB (tests/db/mariadb.sh) and the daemon on it, then
# creates echo instances through POST /v1/instances (concurrently) up to 100
# and then 10,000, and at each size measures on loopback:
#   - creates/s while getting there
#   - GET /v1/instances/{id}        requests/s and p99 (wrk; 200 random ids in turn)
#   - GET /v1/instances?limit=50    requests/s and p99 (wrk)
#   - the daemon's VmRSS (every instance is running in the daemon)
# and prints a table comparing the sizes. Targets (issue 3): RSS with 10,000
# instances under 64 MiB; reads not slower at 10,000 than at 100.
#
# Environment (defaults to the in-tree build):
#   SB_DAEMON, SB_PLUGIN_DIR, SB_MIGRATIONS_DIR   as for bench/run.sh
#   BENCH_SIZES      instance counts to measure at      ["100 10000"]
#   BENCH_DURATION   seconds per wrk run                 [5]
#   BENCH_THREADS    wrk threads                         [2]
#   BENCH_CONNS      wrk connections                     [32]
#   BENCH_CREATORS   concurrent creating clients         [16]
#   BENCH_EMBEDDED=1 use the daemon's embedded MariaDB instead of a private one
#   BENCH_KEEP=1     keep the temp dir
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
DAEMON=${SB_DAEMON:-$top/host/switchboardd}
PLUGINS=${SB_PLUGIN_DIR:-$top/build/plugins}
MIGRATIONS=${SB_MIGRATIONS_DIR:-$top/build/migrations}
SIZES=${BENCH_SIZES:-"100 10000"}
DURATION=${BENCH_DURATION:-5}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNS:-32}
CREATORS=${BENCH_CREATORS:-16}
PY=/usr/bin/python3

die() { echo "bench: $*" >&2; exit 1; }
[ -x "$DAEMON" ] || die "daemon not found at $DAEMON (build first, or set SB_DAEMON)"
[ -f "$PLUGINS/echo.so" ] || die "echo.so not found in $PLUGINS (set SB_PLUGIN_DIR)"
[ -d "$MIGRATIONS/core" ] || die "migrations not found in $MIGRATIONS (set SB_MIGRATIONS_DIR)"
command -v wrk >/dev/null || die "wrk not installed (apt-get install wrk)"
command -v curl >/dev/null || die "curl not installed"
. "$top/tests/db/mariadb.sh"

# Short: the MariaDB socket lives under it (sun_path is 108 bytes).
tmp=$(mktemp -d /tmp/sbbi.XXXXXX)
daemon_pid=
db_started=
cleanup() {
    if [ -n "$daemon_pid" ]; then
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    [ -z "$db_started" ] || sb_mariadb_stop "$tmp/db"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status"; }

# wrk_run NAME URL [wrk args]: wrk with the admin key; leaves "req/s p99_ms errors" in $tmp/NAME.res
wrk_run() {
    local name=$1 url=$2
    shift 2
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $KEY" \
        "$@" "$url" >"$tmp/$name.wrk" 2>&1 || true
    "$PY" - "$tmp/$name.wrk" >"$tmp/$name.res" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
errs = 0
m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
if m:
    errs += int(m.group(1))
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if m:
    errs += sum(int(x) for x in m.groups())
ms = None
if p99:
    ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
print("%s %s %d" % (rps.group(1) if rps else "nan", "%.2f" % ms if ms is not None else "nan", errs))
EOF
}

# ---- database and daemon ----
port=$(free_port)
mkdir -p "$tmp/etc/conf.d" "$tmp/state" "$tmp/plugins"
cp "$PLUGINS/echo.so" "$tmp/plugins/"
cat >"$tmp/etc/switchboard.json" <<EOF
{
  "listen": { "address": "127.0.0.1", "port": $port },
  "log_level": "warn",
  "plugins": { "echo": { "enabled": true } },
  "instances": {}
}
EOF
if [ "${BENCH_EMBEDDED:-0}" = 1 ]; then
    db_url=
    db_kind="embedded MariaDB (daemon's own)"
else
    sb_mariadb_found || die "mariadbd not installed (apt-get install mariadb-server)"
    mkdir -p "$tmp/db"
    sb_mariadb_start "$tmp/db" >/dev/null || die "cannot start MariaDB"
    db_started=1
    mariadb --no-defaults --socket="$SB_MARIADB_SOCKET" -uroot \
        -e "CREATE DATABASE sbbench CHARACTER SET utf8mb4"
    db_url="mysql://root@localhost/sbbench?socket=$SB_MARIADB_SOCKET"
    db_kind="private MariaDB (tests/db/mariadb.sh, 64M buffer pool)"
fi
DATABASE_URL=$db_url "$DAEMON" --config "$tmp/etc/switchboard.json" --plugin-dir "$tmp/plugins" \
    --state-dir "$tmp/state" --migrations-dir "$MIGRATIONS" 2>"$tmp/daemon.log" &
daemon_pid=$!
deadline=$((SECONDS + 90))
until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    kill -0 "$daemon_pid" 2>/dev/null || { tail -20 "$tmp/daemon.log" >&2; die "daemon exited"; }
    [ "$SECONDS" -lt "$deadline" ] || die "daemon not ready after 90 s"
    sleep 0.05
done
KEY=$("$PY" -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    if "api_key" in rec:
        print(rec["api_key"]); break
' "$tmp/daemon.log")
[ -n "$KEY" ] || die "no admin key in the daemon log"
rss_empty=$(rss_kib)

# create_to N: create instances until N exist; prints "created seconds failures"
create_to() {
    "$PY" - "$port" "$KEY" "$1" "$CREATORS" <<'EOF'
import http.client, json, sys, threading, time
port, key, target, workers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hdr = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}

def count():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n, cursor = 0, None
    while True:
        q = "/v1/instances?limit=500" + ("&cursor=" + cursor if cursor else "")
        c.request("GET", q, headers=hdr)
        page = json.loads(c.getresponse().read())
        n += len(page["instances"])
        cursor = page["next_cursor"]
        if not cursor:
            return n

have = count()
to_create = list(range(have, target))
lock = threading.Lock()
fail = [0]

def worker():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while True:
        with lock:
            if not to_create:
                return
            i = to_create.pop()
        body = json.dumps({"provider": "echo", "name": "bench-%06d" % i,
                           "settings": {"prefix": "b%d: " % i},
                           "secrets": {"token": "bench-token-%06d" % i}})
        try:
            c.request("POST", "/v1/instances", body=body, headers=hdr)
            r = c.getresponse()
            r.read()
            if r.status != 201:
                with lock:
                    fail[0] += 1
        except OSError:
            with lock:
                fail[0] += 1
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

n = len(to_create)
t0 = time.monotonic()
ts = [threading.Thread(target=worker) for _ in range(workers)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print("%d %.3f %d" % (n, time.monotonic() - t0, fail[0]))
EOF
}

# ids_script N: a wrk Lua script cycling through 200 ids picked at random
# among all instances (not the first listed: their place in the daemon's
# own tables would bias the figure).
ids_script() {
    "$PY" - "$port" "$KEY" "$tmp/ids-$1.lua" <<'EOF2'
import http.client, json, random, sys
port, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
ids, cursor = [], None
while True:
    c.request("GET", "/v1/instances?limit=500" + ("&cursor=" + cursor if cursor else ""),
              headers={"Authorization": "Bearer " + key})
    page = json.loads(c.getresponse().read())
    ids += [i["id"] for i in page["instances"]]
    cursor = page["next_cursor"]
    if not cursor:
        break
random.seed(1)
pick = random.sample(ids, min(200, len(ids)))
with open(out, "w") as f:
    f.write("local ids = {%s}\n" % ", ".join('"%s"' % i for i in pick))
    f.write("local n = 0\n")
    f.write("request = function()\n  n = n % #ids + 1\n"
            "  return wrk.format(\"GET\", \"/v1/instances/\" .. ids[n])\nend\n")
EOF2
}

echo "switchboard instance API bench: $(nproc) CPUs, $db_kind"
echo "wrk -t$THREADS -c$CONNS -d${DURATION}s; creates with $CREATORS concurrent clients"
echo "daemon RSS with 0 instances: $((rss_empty / 1024)) MiB ($rss_empty KiB)"
for n in $SIZES; do
    read -r made secs cfail < <(create_to "$n")
    ids_script "$n"
    wrk_run "get-$n" "http://127.0.0.1:$port" -s "$tmp/ids-$n.lua"
    wrk_run "list-$n" "http://127.0.0.1:$port/v1/instances?limit=50"
    rss=$(rss_kib)
    "$PY" -c 'import sys; made, secs = int(sys.argv[1]), float(sys.argv[2]); print("%.0f" % (made / secs if secs > 0 else 0))' \
        "$made" "$secs" >"$tmp/creates-$n.res"
    echo "$made $secs $cfail" >"$tmp/createraw-$n.res"
    echo "$rss" >"$tmp/rss-$n.res"
    echo "  reached $n instances: created $made in ${secs}s ($(cat "$tmp/creates-$n.res")/s, $cfail failed); RSS $((rss / 1024)) MiB"
done

# ---- table ----
"$PY" - "$tmp" $SIZES <<'EOF'
import os, sys
tmp, sizes = sys.argv[1], sys.argv[2:]
def res(name):
    with open(os.path.join(tmp, name + ".res")) as f:
        return f.read().split()
rows = [("creates/s (to reach size)", lambda n: res("creates-%s" % n)[0]),
        ("create failures", lambda n: res("createraw-%s" % n)[2]),
        ("GET /v1/instances/{id} req/s", lambda n: res("get-%s" % n)[0]),
        ("GET /v1/instances/{id} p99 ms", lambda n: res("get-%s" % n)[1]),
        ("GET /v1/instances/{id} errors", lambda n: res("get-%s" % n)[2]),
        ("GET ?limit=50 req/s", lambda n: res("list-%s" % n)[0]),
        ("GET ?limit=50 p99 ms", lambda n: res("list-%s" % n)[1]),
        ("GET ?limit=50 errors", lambda n: res("list-%s" % n)[2]),
        ("daemon VmRSS MiB", lambda n: "%.1f" % (int(res("rss-%s" % n)[0]) / 1024))]
w = 32
print()
print("%-*s" % (w, "instances") + "".join("%14s" % s for s in sizes))
for label, fn in rows:
    print("%-*s" % (w, label) + "".join("%14s" % fn(n) for n in sizes))
if len(sizes) >= 2:
    a, b = sizes[0], sizes[-1]
    rss = int(res("rss-%s" % b)[0]) / 1024
    print()
    print("target: RSS with %s instances < 64 MiB: %.1f MiB -> %s"
          % (b, rss, "met" if rss < 64 else "NOT met"))
    for name, label in (("get", "GET one"), ("list", "list")):
        ra, rb = float(res("%s-%s" % (name, a))[0]), float(res("%s-%s" % (name, b))[0])
        pa, pb = float(res("%s-%s" % (name, a))[1]), float(res("%s-%s" % (name, b))[1])
        print("target: %s not slower at %s than at %s: %.0f -> %.0f req/s (%+.0f%%), "
              "p99 %.2f -> %.2f ms" % (label, b, a, ra, rb, (rb / ra - 1) * 100 if ra else 0,
                                       pa, pb))
EOF
