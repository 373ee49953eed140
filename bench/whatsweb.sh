#!/bin/bash
# switchboard WhatsApp Web benchmark (issue 7): prints figures, builds nothing,
# asserts nothing.
#
#   bench/whatsweb.sh      (after ./configure && make in the source tree)
#
# In one run, on loopback, against the fixture page of the tests
# (tests/fixtures/whatsweb, served by tests/integration/fakes/whatsweb.py,
# started here on a free port), one run at a time, interleaved:
#   switchboard  one daemon (embedded MariaDB, log_level "warn") with a
#                whatsweb instance (isolation "process"); each run: POST
#                /v1/instances/{id}/start, poll GET /v1/instances/{id}/qr until
#                it answers 200 (the time to QR), wait BENCH_SETTLE s, measure,
#                POST .../stop, wait until the plugin-host, its Chromium and
#                Chromium's helpers are gone, delete the profile (so every run
#                starts from an empty profile and shows a QR);
#   the peer     a whatsapp-web.js Client (bench/node-whatsweb/peer.js,
#                installed from npm into BENCH_NODE_DIR, Puppeteer with Debian's
#                Chromium, NoAuth, a fresh user data dir per run,
#                webVersionCache none, WhatsWebURL set to the fixture) started
#                per run; the time from client.initialize() to its 'qr' event,
#                then BENCH_SETTLE s, measure, SIGTERM (client.destroy()).
#                Two flavours: "same" = exactly the plugin's Chromium flags
#                (read from plugins/whatsweb/whatsweb.c; Puppeteer's own
#                defaults dropped, DevTools over a pipe as ours), and "defaults"
#                = Puppeteer's default flags plus ours (how whatsapp-web.js is
#                usually run).
# Memory: VmRSS of the plugin-host alone (without Chromium) and of the node
# process alone; of the whole instance (plugin-host or node, Chromium and all
# its child processes, and the chrome_crashpad_handler processes Chromium
# detaches), the sum of RSS and the sum of PSS from /proc/<pid>/smaps_rollup
# (RSS counts Chromium's shared pages once per process; PSS shares them out);
# the daemon's own VmRSS for reference. Medians (and ranges) over the runs,
# next to the targets: plugin-host < 5 MiB RSS; whole instance <= half of the
# whatsapp-web.js client's memory with the same Chromium flags.
# Every process it starts carries SB_BENCH_TAG in its environment; at exit
# whatever of Chromium, plugin-hosts or node is left with that tag is killed,
# and the temporary directory (profiles included) is removed.
#
# Environment (defaults to the in-tree build):
#   SB_DAEMON, SB_PLUGIN_DIR, SB_MIGRATIONS_DIR   as for bench/messaging.sh
#   SB_PLUGIN_HOST   [plugin-host/switchboard-plugin-host]
#   BENCH_RUNS       runs of each side [5];  BENCH_SETTLE  s between QR and measuring [2]
#   BENCH_WARMUP=0   no unmeasured warm-up run first
#   BENCH_PEER_MODES peer flavours, "same defaults" (default), "same", or ""
#   BENCH_ROTATE_MS  the fixture's QR rotation [20000, about WhatsApp's]
#   BENCH_NODE_DIR   where the npm packages go
#                    [${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-bench/node-whatsweb]
#   BENCH_SKIP_PEER=1  switchboard only;  BENCH_KEEP=1 keeps the temp dir
#   CHROMIUM         the browser for both sides [/usr/bin/chromium]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
DAEMON=${SB_DAEMON:-$top/host/switchboardd}
HOST=${SB_PLUGIN_HOST:-$top/plugin-host/switchboard-plugin-host}
PLUGINS=${SB_PLUGIN_DIR:-$top/build/plugins}
MIGRATIONS=${SB_MIGRATIONS_DIR:-$top/build/migrations}
RUNS=${BENCH_RUNS:-5}
SETTLE=${BENCH_SETTLE:-2}
ROTATE_MS=${BENCH_ROTATE_MS:-20000}
NODE_DIR=${BENCH_NODE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-bench/node-whatsweb}
SKIP_PEER=${BENCH_SKIP_PEER:-0}
PEER_MODES=${BENCH_PEER_MODES-same defaults}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ "$SKIP_PEER" != 1 ] || PEER_MODES=''

[ -x "$DAEMON" ] || die "daemon not found at $DAEMON (build first, or set SB_DAEMON)"
[ -x "$HOST" ] || die "plugin-host not found at $HOST (set SB_PLUGIN_HOST)"
[ -f "$PLUGINS/whatsweb.so" ] || die "whatsweb.so not found in $PLUGINS (set SB_PLUGIN_DIR)"
[ -x "$CHROMIUM" ] || die "$CHROMIUM not found (apt-get install chromium)"
for tool in curl python3; do
    command -v "$tool" >/dev/null || die "$tool not installed"
done
if [ -n "$PEER_MODES" ]; then
    command -v node >/dev/null && command -v npm >/dev/null ||
        die "node/npm not installed (BENCH_SKIP_PEER=1 runs switchboard only)"
fi

started=$(date +%s)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-wwbench.XXXXXX")
SB_BENCH_TAG="wwbench-$$-$(rand_hex 6)"
export SB_BENCH_TAG
RUNNER="$here/whatsweb-runs.py"
daemon_pid='' fixture_pid='' npm_pid=''
cleanup() {
    for p in $npm_pid $daemon_pid $fixture_pid; do
        kill "$p" 2>/dev/null || true
    done
    for p in $npm_pid $daemon_pid $fixture_pid; do
        wait "$p" 2>/dev/null || true
    done
    # Chromium trees, plugin-hosts and peers this run started, wherever they are now.
    python3 "$RUNNER" sweep "$SB_BENCH_TAG" || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- the plugin's Chromium flags
# base_flags[] of plugins/whatsweb/whatsweb.c, plus --no-sandbox as root (as
# the plugin adds it then); --user-data-dir and the start page are per side.
flags=$(sed -n '/^static const char \*const base_flags\[\] = {/,/^};/p' "$top/plugins/whatsweb/whatsweb.c" |
    grep -o '"--[^"]*"' | tr -d '"' | tr '\n' ' ' || true)
[ -n "$flags" ] || die "could not read base_flags from plugins/whatsweb/whatsweb.c"
[ "$(id -u)" != 0 ] || flags="$flags--no-sandbox"
PEER_FLAGS=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' $flags)
export PEER_FLAGS

# ---------------------------------------------------------------- npm (background)
if [ -n "$PEER_MODES" ]; then
    mkdir -p "$NODE_DIR"
    cp "$here/node-whatsweb/package.json" "$here/node-whatsweb/package-lock.json" \
        "$here/node-whatsweb/peer.js" "$NODE_DIR/"
    note "npm install into $NODE_DIR (Puppeteer's own Chrome download skipped)"
    (cd "$NODE_DIR" && PUPPETEER_SKIP_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error) \
        >"$tmp/npm.log" 2>&1 &
    npm_pid=$!
fi

# ---------------------------------------------------------------- the fixture page
python3 "$top/tests/integration/fakes/whatsweb.py" --rotate-ms "$ROTATE_MS" >"$tmp/fixture.out" 2>&1 &
fixture_pid=$!
for _ in $(seq 1 100); do
    [ -s "$tmp/fixture.out" ] && break
    sleep 0.05
done
FIXTURE_URL=$(head -1 "$tmp/fixture.out")
case "$FIXTURE_URL" in http://127.0.0.1:*/) ;; *) die "the fixture did not start: $(cat "$tmp/fixture.out")" ;; esac
wait_http "${FIXTURE_URL}api/hello" 10 || die "the fixture does not answer at $FIXTURE_URL"
export FIXTURE_URL

# ---------------------------------------------------------------- daemon and instance
mkdir -p "$tmp/etc" "$tmp/plugins" "$tmp/state"
cp "$PLUGINS/whatsweb.so" "$tmp/plugins/"
port=$(free_port)
cat >"$tmp/etc/switchboard.json" <<JSON
{
  "listen": {"address": "127.0.0.1", "port": $port},
  "log_level": "warn",
  "plugin_host": "$HOST",
  "plugins": {"whatsweb": {"enabled": true, "isolation": "process"}},
  "instances": {}
}
JSON
"$DAEMON" --config "$tmp/etc/switchboard.json" --plugin-dir "$tmp/plugins" \
    --state-dir "$tmp/state" --migrations-dir "$MIGRATIONS" 2>"$tmp/daemon.log" &
daemon_pid=$!
base="http://127.0.0.1:$port"
if ! wait_http "$base/readyz" 60; then
    tail -20 "$tmp/daemon.log" >&2
    die "daemon did not become ready on port $port"
fi
key=$(grep -o '"api_key":"[^"]*"' "$tmp/daemon.log" | head -1 | cut -d'"' -f4)
[ -n "$key" ] || die "no api_key in the daemon's log"
auth="Bearer $key"
db_pid=$(cat "$tmp/state/mariadb/mariadbd.pid" 2>/dev/null || echo 0)
iid=$(curl -fsS -H "Authorization: $auth" -XPOST "$base/v1/instances" \
    -d "{\"provider\":\"whatsweb\",\"name\":\"bench-whatsweb\",\"enabled\":false,
         \"settings\":{\"url\":\"$FIXTURE_URL\"},\"secrets\":{}}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') ||
    die "could not create the whatsweb instance"

# ---------------------------------------------------------------- the peer's packages
wwjs_v='' pptr_v=''
if [ -n "$PEER_MODES" ]; then
    note "peer: waiting for npm install"
    wait "$npm_pid" || die "npm install failed: $(tail -3 "$tmp/npm.log")"
    npm_pid=
    wwjs_v=$(npm_version whatsapp-web.js)
    pptr_v=$(npm_version puppeteer)
fi

# ---------------------------------------------------------------- the runs and the table
note "$RUNS runs each (switchboard, then whatsapp-web.js: ${PEER_MODES:-none}), fixture $FIXTURE_URL"
echo
echo "switchboard WhatsApp Web bench: $RUNS runs each, interleaved, one at a time; measured ${SETTLE} s after the QR ($(nproc) CPUs, load average at start $load0)"
echo "Chromium: $("$CHROMIUM" --version 2>/dev/null | head -1) ($CHROMIUM, both sides); fixture page $FIXTURE_URL (QR rotating every $ROTATE_MS ms)"
echo "Chromium flags (plugins/whatsweb/whatsweb.c): $flags"
[ -z "$PEER_MODES" ] || echo "peer: node $(node --version), whatsapp-web.js $wwjs_v, puppeteer $pptr_v (NoAuth, webVersionCache none)"
echo
SB_BASE=$base SB_AUTH=$auth SB_INSTANCE=$iid SB_DAEMON_PID=$daemon_pid SB_DB_PID=$db_pid \
    SB_PROFILE="$tmp/state/instances/$iid/profile" BENCH_TMP=$tmp BENCH_RUNS=$RUNS BENCH_SETTLE=$SETTLE \
    BENCH_PEER_MODES="$PEER_MODES" BENCH_NODE_DIR=$NODE_DIR \
    python3 "$RUNNER" runs
echo "wall time $(($(date +%s) - started)) s; load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
