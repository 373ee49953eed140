#!/bin/bash
# switchboard benchmark: prints figures, builds nothing, asserts nothing.
#
#   bench/run.sh            (after ./configure && make in the source tree)
#
# Measures, in one run, on loopback:
#   1. /healthz requests/s and p99 (wrk) next to a private nginx `return 200`
#   2. echo webhook POST requests/s and p99
#   3. idle RSS of the daemon with every bundled plugin loaded
#   4. failed requests (non-2xx + socket errors) across a plugin swap under load
#
# Environment (defaults to the in-tree build):
#   SB_DAEMON           path of switchboardd            [host/switchboardd]
#   SB_PLUGIN_DIR       dir with the bundled plugins    [build/plugins]
#   SB_MIGRATIONS_DIR   schema migrations               [build/migrations]
# The daemon runs its embedded MariaDB (no DATABASE_URL), as `make run` does.
#   SB_TEST_PLUGIN_DIR  dir with echo_v2.so (optional)  [tests/plugins/.libs]
#   BENCH_DURATION (s, default 5), BENCH_THREADS (2), BENCH_CONNS (50),
#   BENCH_SWAP_DURATION (s, default 8), BENCH_KEEP=1 keeps the temp dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
DAEMON=${SB_DAEMON:-$top/host/switchboardd}
PLUGINS=${SB_PLUGIN_DIR:-$top/build/plugins}
MIGRATIONS=${SB_MIGRATIONS_DIR:-$top/build/migrations}
TEST_PLUGINS=${SB_TEST_PLUGIN_DIR:-$top/tests/plugins/.libs}
DURATION=${BENCH_DURATION:-5}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNS:-50}
SWAP_DURATION=${BENCH_SWAP_DURATION:-8}

[ -x "$DAEMON" ] || die "daemon not found at $DAEMON (build first, or set SB_DAEMON)"
[ -f "$PLUGINS/echo.so" ] || die "echo.so not found in $PLUGINS (set SB_PLUGIN_DIR)"
command -v wrk >/dev/null || die "wrk not installed (apt-get install wrk)"
command -v curl >/dev/null || die "curl not installed"
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || [ ! -x /usr/sbin/nginx ] || NGINX=/usr/sbin/nginx

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-bench.XXXXXX")
daemon_pid=
nginx_pid=
wrk_pid=
cleanup() {
    for p in $wrk_pid $nginx_pid $daemon_pid; do
        kill "$p" 2>/dev/null || true
    done
    for p in $wrk_pid $nginx_pid $daemon_pid; do
        wait "$p" 2>/dev/null || true
    done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# wrk_args NAME URL [extra wrk args...]: run wrk, keep its output in $tmp/NAME.wrk
wrk_args() {
    local name=$1 url=$2
    shift 2
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" >"$tmp/$name.wrk" 2>&1 ||
        echo "bench: wrk $name exited $?" >&2
}

wrk_p99() { wrk_pct "$1" 99%; }

# ---------------------------------------------------------------- daemon setup
mkdir -p "$tmp/etc/conf.d" "$tmp/plugins" "$tmp/state"
plugin_names=()
for so in "$PLUGINS"/*.so; do
    cp "$so" "$tmp/plugins/"
    plugin_names+=("$(basename "$so" .so)")
done
port=$(free_port)
{
    printf '{\n  "listen": {"address": "127.0.0.1", "port": %s},\n' "$port"
    printf '  "log_level": "warn",\n  "shutdown_timeout_ms": 5000,\n  "swap_timeout_ms": 5000,\n'
    printf '  "plugins": {'
    sep=
    for n in "${plugin_names[@]}"; do
        printf '%s\n    "%s": {"enabled": true}' "$sep" "$n"
        sep=,
    done
    printf '\n  },\n  "instances": {"bench": {"provider": "echo"}}\n}\n'
} >"$tmp/etc/switchboard.json"

"$DAEMON" --config "$tmp/etc/switchboard.json" --plugin-dir "$tmp/plugins" \
    --state-dir "$tmp/state" --migrations-dir "$MIGRATIONS" 2>"$tmp/daemon.log" &
daemon_pid=$!
base="http://127.0.0.1:$port"
if ! wait_http "$base/healthz" 20; then
    tail -20 "$tmp/daemon.log" >&2
    die "daemon did not become healthy on port $port"
fi
curl -fsS -o /dev/null "$base/webhook/echo/bench" -H 'Content-Type: application/json' \
    -d '{"text":"warm"}' || die "echo webhook does not answer"

auth="Authorization: Bearer $(grep -o '"api_key":"[^"]*"' "$tmp/daemon.log" | cut -d'"' -f4)"

# Idle RSS: let start-up settle, then read VmRSS before any load.
sleep 1
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status")
loaded=$(curl -fsS "$base/metrics" | awk '/^switchboard_plugins_loaded/ {print $2 + 0}')

echo "bench: daemon pid $daemon_pid port $port, plugins: ${plugin_names[*]} (loaded: ${loaded:-?})" >&2
echo "bench: wrk -t$THREADS -c$CONNS -d${DURATION}s" >&2

# ---------------------------------------------------------------- 1. /healthz
wrk_args healthz "$base/healthz"

# ---------------------------------------------------------------- nginx
nginx_note=
if [ -n "$NGINX" ]; then
    nport=$(free_port)
    mkdir -p "$tmp/nginx"
    sed -e "s|@PORT@|$nport|g" -e "s|@PREFIX@|$tmp/nginx|g" "$here/nginx.conf.in" \
        >"$tmp/nginx/nginx.conf"
    "$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" \
        -g 'daemon off;' 2>>"$tmp/nginx/error.log" &
    nginx_pid=$!
    if wait_http "http://127.0.0.1:$nport/" 10; then
        wrk_args nginx "http://127.0.0.1:$nport/"
    else
        nginx_note="nginx failed to start: $(tail -1 "$tmp/nginx/error.log")"
    fi
    kill "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
    nginx_pid=
else
    nginx_note="nginx not installed"
fi

# ---------------------------------------------------------------- 2. echo POST
wrk_args echo "$base/webhook/echo/bench" -s "$here/echo-post.lua"
rss_after_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status")

# ---------------------------------------------------------------- 4. swap under load
swap_src="$TEST_PLUGINS/echo_v2.so"
[ -f "$swap_src" ] || swap_src="$PLUGINS/echo.so" # same code, new file: still a swap
gen_before=$(curl -fsS -H "$auth" "$base/v1/providers" |
    python3 -c 'import json,sys; print([p["generation"] for p in json.load(sys.stdin)["providers"] if p["name"]=="echo"][0])')
wrk -t"$THREADS" -c"$CONNS" -d"${SWAP_DURATION}s" --latency -s "$here/echo-post.lua" \
    "$base/webhook/echo/bench" >"$tmp/swap.wrk" 2>&1 &
wrk_pid=$!
sleep $((SWAP_DURATION / 3)) # mid-run by design: the swap must land under load
cp "$swap_src" "$tmp/plugins/.echo.so.new"
mv -f "$tmp/plugins/.echo.so.new" "$tmp/plugins/echo.so"
swap_t0=$(date +%s.%N)
swap_ms=timeout
for _ in $(seq 1 200); do
    gen=$(curl -fsS --max-time 2 -H "$auth" "$base/v1/providers" 2>/dev/null |
        python3 -c 'import json,sys; print([p["generation"] for p in json.load(sys.stdin)["providers"] if p["name"]=="echo"][0])' 2>/dev/null || echo "$gen_before")
    if [ "$gen" != "$gen_before" ]; then
        swap_ms=$(python3 -c "import time; print(int((time.time() - $swap_t0) * 1000))")
        break
    fi
    sleep 0.05
done
wait "$wrk_pid" || true
wrk_pid=
swap_version=$(curl -fsS -H "$auth" "$base/v1/providers" |
    python3 -c 'import json,sys; print([p["version"] for p in json.load(sys.stdin)["providers"] if p["name"]=="echo"][0])')

# ---------------------------------------------------------------- stop daemon
t0=$(date +%s.%N)
kill -TERM "$daemon_pid"
wait "$daemon_pid" && rc=0 || rc=$?
t1=$(date +%s.%N)
daemon_pid=

# ---------------------------------------------------------------- table
num() { [ -n "$1" ] && echo "$1" || echo "n/a"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB (%d kB)", k / 1024, k}'; }
echo
echo "switchboard bench: wrk -t$THREADS -c$CONNS -d${DURATION}s on 127.0.0.1 ($(nproc) CPUs)"
printf '%-38s %14s %12s %10s\n' "target" "requests/s" "p99" "errors"
printf '%-38s %14s %12s %10s\n' "switchboardd GET /healthz" "$(num "$(wrk_rps "$tmp/healthz.wrk")")" \
    "$(num "$(wrk_p99 "$tmp/healthz.wrk")")" \
    "$(($(wrk_non2xx "$tmp/healthz.wrk") + $(wrk_sockerr "$tmp/healthz.wrk")))"
if [ -f "$tmp/nginx.wrk" ]; then
    printf '%-38s %14s %12s %10s\n' "nginx return 200 (1 worker)" "$(num "$(wrk_rps "$tmp/nginx.wrk")")" \
        "$(num "$(wrk_p99 "$tmp/nginx.wrk")")" \
        "$(($(wrk_non2xx "$tmp/nginx.wrk") + $(wrk_sockerr "$tmp/nginx.wrk")))"
else
    printf '%-38s %14s\n' "nginx return 200" "skipped: $nginx_note"
fi
printf '%-38s %14s %12s %10s\n' "switchboardd POST echo webhook" "$(num "$(wrk_rps "$tmp/echo.wrk")")" \
    "$(num "$(wrk_p99 "$tmp/echo.wrk")")" \
    "$(($(wrk_non2xx "$tmp/echo.wrk") + $(wrk_sockerr "$tmp/echo.wrk")))"
echo
printf '%-38s %s\n' "idle RSS (${loaded:-?} plugin(s) loaded)" "$(mib "$rss_kb")"
printf '%-38s %s\n' "RSS after load" "$(mib "$rss_after_kb")"
printf '%-38s %s\n' "swap under load: requests" "$(num "$(wrk_total "$tmp/swap.wrk")") in ${SWAP_DURATION}s"
printf '%-38s %s\n' "swap under load: failed" \
    "$(($(wrk_non2xx "$tmp/swap.wrk") + $(wrk_sockerr "$tmp/swap.wrk"))) (non-2xx $(wrk_non2xx "$tmp/swap.wrk"), socket errors $(wrk_sockerr "$tmp/swap.wrk"))"
printf '%-38s %s\n' "swap under load: p99" "$(num "$(wrk_p99 "$tmp/swap.wrk")")"
printf '%-38s %s\n' "swap: visible in /v1/providers after" "$swap_ms ms (now $swap_version)"
printf '%-38s %s\n' "SIGTERM -> exit" "code $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", (b - a) * 1000}') ms"
