#!/bin/bash
# switchboard messaging benchmark: prints figures, builds nothing of the
# daemon, asserts nothing.
#
#   bench/messaging.sh       (after ./configure && make in the source tree)
#
# Measures, in one run, on loopback, against one fake Slack Web API (a private
# nginx answering chat.postMessage with {"ok":true,"ts":...}, counting requests
# with stub_status):
#   (a) sends: POST /v1/instances/{id}/messages with unique texts (wrk + Lua),
#       messages/s answered 202 with p50/p99, and messages/s delivered to the
#       fake (counted at the fake and by switchboard_messages_sent_total), with
#       the time the outbox takes to drain after the load stops;
#   (b) inbound: Slack Events API webhooks signed with X-Slack-Signature (v0,
#       HMAC-SHA256 over "v0:" timestamp ":" body; one fixed timestamp within
#       Slack's 5 minutes, a unique event_id per request so dedup never
#       short-circuits), verified, stored and acknowledged, per second with p50/p99;
# and the same two jobs done by a small Node.js service built with Slack's
# official SDKs (bench/node/peer.js: @slack/bolt's HTTP receiver with
# signing-secret verification and a no-op listener; @slack/web-api
# chat.postMessage with slackApiUrl pointing at the fake), installed from npm
# by this script; then prints both side by side with the ratio
# switchboard/peer and the targets of issue 4.
#
# switchboard's side uses bench/plugins/slackish.c (Slack's wire protocol;
# self-contained SHA-256/HMAC), compiled here with cc against the SDK headers.
# The daemon runs its embedded MariaDB (no DATABASE_URL), log_level "warn".
#
# Environment (defaults to the in-tree build):
#   SB_DAEMON           path of switchboardd            [host/switchboardd]
#   SB_PLUGIN_DIR       dir with echo.so                [build/plugins]
#   SB_MIGRATIONS_DIR   schema migrations               [build/migrations]
#   BENCH_DURATION (s, default 10), BENCH_THREADS (2), BENCH_CONNS (64),
#   BENCH_DRAIN_MAX (s to wait for the outbox to drain, default 60),
#   BENCH_NODE_DIR      where the peer's npm packages go
#                       [${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-bench/node]
#   BENCH_SKIP_PEER=1   switchboard only; BENCH_KEEP=1 keeps the temp dir;
#   BENCH_PERF=SECONDS  also record `perf record -g` of the daemon and its MariaDB for that long
#                       during each of its two runs (kept in the temp dir);
#   BENCH_PERF_OPTS     perf record's options [-g] (e.g. "--call-graph dwarf -F 499").
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
DAEMON=${SB_DAEMON:-$top/host/switchboardd}
PLUGINS=${SB_PLUGIN_DIR:-$top/build/plugins}
MIGRATIONS=${SB_MIGRATIONS_DIR:-$top/build/migrations}
DURATION=${BENCH_DURATION:-10}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNS:-64}
DRAIN_MAX=${BENCH_DRAIN_MAX:-60}
NODE_DIR=${BENCH_NODE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-bench/node}
SKIP_PEER=${BENCH_SKIP_PEER:-0}
PERF=${BENCH_PERF:-0}

# Issue 4's figures: what the peers reach here, and our targets.
TARGET_INBOUND=50000
TARGET_SENDS=40000
TARGET_P99_MS=5
ISSUE_PEER_INBOUND=5000
ISSUE_PEER_SENDS=4600

[ -x "$DAEMON" ] || die "daemon not found at $DAEMON (build first, or set SB_DAEMON)"
[ -f "$PLUGINS/echo.so" ] || die "echo.so not found in $PLUGINS (set SB_PLUGIN_DIR)"
for tool in wrk curl python3 cc pkg-config; do
    command -v "$tool" >/dev/null || die "$tool not installed"
done
pkg-config --exists jansson || die "jansson development files missing (libjansson-dev)"
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || [ ! -x /usr/sbin/nginx ] || NGINX=/usr/sbin/nginx
[ -n "$NGINX" ] || die "nginx not installed (the fake Slack API; apt-get install nginx-light)"
if [ "$SKIP_PEER" != 1 ]; then
    command -v node >/dev/null && command -v npm >/dev/null ||
        die "node/npm not installed (BENCH_SKIP_PEER=1 runs switchboard only)"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-msgbench.XXXXXX")
daemon_pid='' nginx_pid='' wrk_pid='' peer_pid='' npm_pid='' perf_pid=''
cleanup() {
    for p in $perf_pid $wrk_pid $peer_pid $npm_pid $daemon_pid $nginx_pid; do
        kill "$p" 2>/dev/null || true
    done
    for p in $perf_pid $wrk_pid $peer_pid $npm_pid $daemon_pid $nginx_pid; do
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



# cpu_snap NAME: remember ticks of the daemon, its MariaDB, the fake (nginx's worker) and
# the machine. wrk's own are taken by wrk_run (it is gone by the end).
cpu_snap() {
    local v f=0 c
    for c in $nginx_pid $(cat "/proc/$nginx_pid/task/$nginx_pid/children" 2>/dev/null); do
        f=$((f + $(proc_ticks "$c")))
    done
    v="$(proc_ticks "${cpu_daemon:-0}") $(proc_ticks "${cpu_db:-0}") $f $(sys_ticks)"
    eval "cpu_$1=\"$v\""
}
# cpu_line A B SECONDS WRK_TICKS: CPU seconds spent between two snapshots.
cpu_line() {
    local a b
    eval "a=\$cpu_$1 b=\$cpu_$2"
    awk -v a="$a" -v b="$b" -v w="${4:-0}" -v s="$3" -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " ");
        d = (y[1] - x[1]) / hz; m = (y[2] - x[2]) / hz; f = (y[3] - x[3]) / hz; k = w / hz;
        t = (y[4] - x[4]) / hz; i = (y[5] - x[5]) / hz; r = t - d - m - f - k - i; if (r < 0) r = 0;
        printf "daemon %.1f, its mariadbd %.1f, fake %.1f, wrk %.1f, irq %.1f, other processes %.1f; idle %.1f", d, m, f, k, i, r, s * n - t }'
}
# DB counters of the embedded server (SHOW GLOBAL STATUS), as "name value" lines.
db_status() {
    mariadb --no-defaults -uroot -S "$tmp/state/mariadb/mysqld.sock" -N -B -e \
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_commit','Innodb_os_log_fsyncs',
         'Innodb_data_fsyncs','Com_stmt_prepare','Com_stmt_execute','Questions','Innodb_log_writes')" 2>/dev/null || true
}
# db_delta A B NAME: growth of one counter between two db_status outputs.
db_delta() {
    awk -v n="$3" '$1 == n {print $2}' <<<"$2" | awk -v n="$3" -v a="$(awk -v n="$3" '$1 == n {print $2}' <<<"$1")" \
        '{printf "%.0f", $1 - a; f = 1} END {if (!f) print "?"}'
}
db_line() {
    local a=$1 b=$2 secs=$3 msgs=$4
    awk -v c="$(db_delta "$a" "$b" Com_commit)" -v df="$(db_delta "$a" "$b" Innodb_data_fsyncs)" \
        -v p="$(db_delta "$a" "$b" Com_stmt_prepare)" -v e="$(db_delta "$a" "$b" Com_stmt_execute)" \
        -v q="$(db_delta "$a" "$b" Questions)" -v s="$secs" -v m="$msgs" 'BEGIN {
        if (c == "?") { print "n/a"; exit }
        printf "%.0f commits/s (%.1f messages each), %.0f fsyncs/s, per message %.1f statements prepared, %.1f executed, %.1f client commands",
            c / s, (c > 0 ? m / c : 0), df / s, (m > 0 ? p / m : 0), (m > 0 ? e / m : 0), (m > 0 ? q / m : 0) }'
}

perf_start() {
    [ "$PERF" != 0 ] && command -v perf >/dev/null || return 0
    # shellcheck disable=SC2086
    perf record ${BENCH_PERF_OPTS:--g} -o "$tmp/$1.perf.data" -p "$daemon_pid${cpu_db:+,$cpu_db}" -- sleep "$PERF" \
        >"$tmp/$1.perf.log" 2>&1 &
    perf_pid=$!
}
perf_wait() {
    [ -n "$perf_pid" ] || return 0
    wait "$perf_pid" 2>/dev/null || true
    perf_pid=
}

# ---------------------------------------------------------------- the peer's packages (background)
if [ "$SKIP_PEER" != 1 ]; then
    mkdir -p "$NODE_DIR"
    cp "$here/node/package.json" "$here/node/peer.js" "$NODE_DIR/"
    [ ! -f "$here/node/package-lock.json" ] || cp "$here/node/package-lock.json" "$NODE_DIR/"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error) >"$tmp/npm.log" 2>&1 &
    npm_pid=$!
fi

# ---------------------------------------------------------------- plugin
mkdir -p "$tmp/etc" "$tmp/plugins" "$tmp/state" "$tmp/nginx"
cp "$PLUGINS/echo.so" "$tmp/plugins/"
# shellcheck disable=SC2046
cc -O2 -shared -fPIC -I"$top/sdk/include" -o "$tmp/plugins/slackish.so" \
    "$here/plugins/slackish.c" $(pkg-config --cflags --libs jansson) ||
    die "could not build bench/plugins/slackish.c"
# shellcheck disable=SC2046
cc -O2 -o "$tmp/dbceiling" "$here/dbceiling.c" $(pkg-config --cflags --libs libmariadb) -lpthread ||
    die "could not build bench/dbceiling.c"

# ---------------------------------------------------------------- fake Slack API
fport=$(free_port)
sed -e "s|@PORT@|$fport|g" -e "s|@PREFIX@|$tmp/nginx|g" "$here/fake-slack.nginx.conf.in" \
    >"$tmp/nginx/nginx.conf"
"$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" \
    -g 'daemon off;' 2>>"$tmp/nginx/error.log" &
nginx_pid=$!
fake="http://127.0.0.1:$fport"
wait_http "$fake/status" 10 || die "fake Slack API (nginx) did not start: $(tail -1 "$tmp/nginx/error.log")"

# ---------------------------------------------------------------- daemon
port=$(free_port)
cat >"$tmp/etc/switchboard.json" <<EOF
{
  "listen": {"address": "127.0.0.1", "port": $port},
  "log_level": "warn",
  "plugins": {"echo": {"enabled": true}, "slackish": {"enabled": true}},
  "instances": {}
}
EOF
"$DAEMON" --config "$tmp/etc/switchboard.json" --plugin-dir "$tmp/plugins" \
    --state-dir "$tmp/state" --migrations-dir "$MIGRATIONS" 2>"$tmp/daemon.log" &
daemon_pid=$!
base="http://127.0.0.1:$port"
if ! wait_http "$base/readyz" 60; then
    tail -20 "$tmp/daemon.log" >&2
    die "daemon did not become ready on port $port"
fi
cpu_daemon=$daemon_pid
cpu_db=$(cat "$tmp/state/mariadb/mariadbd.pid" 2>/dev/null || echo 0)
key=$(grep -o '"api_key":"[^"]*"' "$tmp/daemon.log" | head -1 | cut -d'"' -f4)
[ -n "$key" ] || die "no api_key in the daemon's log"
auth="Bearer $key"

SECRET="bench-signing-secret-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOKEN="xoxb-bench-token"
inst_json=$(curl -fsS -H "Authorization: $auth" -XPOST "$base/v1/instances" \
    -d "{\"provider\":\"slackish\",\"name\":\"bench\",\"settings\":{\"api_base\":\"$fake/api\"},
         \"secrets\":{\"token\":\"$TOKEN\",\"signing_secret\":\"$SECRET\"}}") ||
    die "could not create the slackish instance"
inst=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$inst_json")
for _ in $(seq 1 100); do
    curl -fsS -H "Authorization: $auth" "$base/v1/instances/$inst" | grep -q '"running":true' && break
    sleep 0.05
done

# sign BODY TS: Slack's v0 signature.
sign() {
    python3 -c 'import hmac,hashlib,sys; print("v0=" + hmac.new(sys.argv[1].encode(), ("v0:%s:%s" % (sys.argv[3], sys.argv[2])).encode(), hashlib.sha256).hexdigest())' \
        "$SECRET" "$1" "$2"
}

# Sanity: one send reaches the fake, one signed webhook is accepted, a bad one is not.
code=$(curl -sS -o "$tmp/warm.json" -w '%{http_code}' -H "Authorization: $auth" \
    -H 'Content-Type: application/json' -XPOST "$base/v1/instances/$inst/messages" \
    -d '{"to":"C0BENCH","text":"warm-up"}')
[ "$code" = 202 ] || die "send API answered $code: $(cat "$tmp/warm.json")"
for _ in $(seq 1 100); do
    [ "$(metric switchboard_messages_sent_total)" -ge 1 ] && break
    sleep 0.05
done
[ "$(metric switchboard_messages_sent_total)" -ge 1 ] ||
    die "the warm-up message did not reach the fake: $(curl -fsS -H "Authorization: $auth" "$base/v1/instances/$inst/messages")"
ts=$(date +%s)
wbody='{"type":"event_callback","event_id":"EvWARMUP","event":{"type":"message","user":"U0BENCH","text":"warm","channel":"C0BENCH","ts":"1.1"}}'
code=$(curl -sS -o /dev/null -w '%{http_code}' -XPOST "$base/webhook/slackish/$inst" \
    -H 'Content-Type: application/json' -H "X-Slack-Request-Timestamp: $ts" \
    -H "X-Slack-Signature: $(sign "$wbody" "$ts")" -d "$wbody")
[ "$code" = 200 ] || die "signed webhook answered $code"
code=$(curl -sS -o /dev/null -w '%{http_code}' -XPOST "$base/webhook/slackish/$inst" \
    -H 'Content-Type: application/json' -H "X-Slack-Request-Timestamp: $ts" \
    -H "X-Slack-Signature: v0=$(printf '0%.0s' $(seq 1 64))" -d "$wbody")
[ "$code" = 401 ] || die "a badly signed webhook answered $code, not 401"

note "daemon pid $daemon_pid port $port, instance $inst, fake Slack API $fake (nginx pid $nginx_pid)"
note "wrk -t$THREADS -c$CONNS -d${DURATION}s"

BENCH_TAG="r$$x$(date +%s)"
export BENCH_TAG
export SLACK_SIGNING_SECRET=$SECRET

# ---------------------------------------------------------------- (a) switchboard sends
note "(a) switchboard: sends"
sent0=$(metric switchboard_messages_sent_total)
failed0=$(metric switchboard_messages_failed_total)
retried0=$(metric switchboard_messages_retried_total)
fake0=$(fake_count)
dbs0=$(db_status)
perf_start sends
cpu_snap s0
t0=$(now)
SB_AUTH="$auth" wrk_run sb-send "$base/v1/instances/$inst/messages" "$here/msg-send.lua"
t1=$(now)
cpu_snap s1
sb_send_wrk_ticks=$wrk_ticks
sent1=$(metric switchboard_messages_sent_total)
fake_count >/dev/null # counted too: the totals below subtract 2 status requests
depth1=$(metric switchboard_outbox_depth)
drained=no
while awk -v a="$t1" -v b="$(now)" -v m="$DRAIN_MAX" 'BEGIN {exit !(b - a < m)}'; do
    if [ "$(metric switchboard_outbox_depth)" = 0 ]; then
        drained=yes
        break
    fi
    sleep 0.1
done
t2=$(now)
cpu_snap s2
dbs2=$(db_status)
perf_wait
sent2=$(metric switchboard_messages_sent_total)
failed2=$(metric switchboard_messages_failed_total)
retried2=$(metric switchboard_messages_retried_total)
fake2=$(fake_count)
sb_acc=$(wrk_ok_rps "$tmp/sb-send.wrk")
sb_acc_n=$(($(wrk_total "$tmp/sb-send.wrk") - $(wrk_non2xx "$tmp/sb-send.wrk")))
run_s=$(elapsed "$t0" "$t1")
drain_s=$(elapsed "$t1" "$t2")
fake_all=$((fake2 - fake0 - 2))
sb_del_run=$(awk -v n="$((sent1 - sent0))" -v s="$run_s" 'BEGIN {printf "%.0f", n / s}')
sb_del_all=$(awk -v n="$fake_all" -v s="$run_s" -v d="$drain_s" 'BEGIN {printf "%.0f", n / (s + d)}')

# ---------------------------------------------------------------- (b) switchboard inbound
note "(b) switchboard: signed webhooks"
stored0=$(metric switchboard_events_stored_total)
dbh0=$(db_status)
perf_start inbound
cpu_snap h0
SLACK_TS=$(date +%s) wrk_run sb-hook "$base/webhook/slackish/$inst" "$here/slack-webhook.lua"
cpu_snap h1
sb_hook_wrk_ticks=$wrk_ticks
dbh1=$(db_status)
perf_wait
stored1=$(metric switchboard_events_stored_total)
sb_in=$(wrk_ok_rps "$tmp/sb-hook.wrk")
sb_in_n=$(($(wrk_total "$tmp/sb-hook.wrk") - $(wrk_non2xx "$tmp/sb-hook.wrk")))

# ---------------------------------------------------------------- (c) the storage ceiling
# The same rows written by a bare C client (bench/dbceiling.c) on the
# daemon's idle database: what MariaDB alone takes here, durably, with no
# HTTP and no daemon; the daemon cannot store faster than this.
ceiling() { # MODE CONNECTIONS BATCH -> "items/s txn_ms items_per_txn", CPU of its mariadbd
    local c0 c1
    c0=$(proc_ticks "$cpu_db")
    "$tmp/dbceiling" "$tmp/state/mariadb/mysqld.sock" switchboard "$1" "$CEIL_S" "$2" "$3" \
        2>>"$tmp/dbceiling.log" || echo "n/a"
    c1=$(proc_ticks "$cpu_db")
    awk -v t="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" -v s="$CEIL_S" 'BEGIN {printf "%.2f\n", t / hz / s}'
}
CEIL_S=$(awk -v d="$DURATION" 'BEGIN {print (d < 5 ? d : 5)}')
note "(c) storage ceiling: bench/dbceiling.c, ${CEIL_S}s per row"
ceil_rows=()
for spec in "inbound 2 32" "inbound 2 256" "inbound 4 256" "sends 2 32" "sends 2 256" "sends 4 256" \
    "sends-joined 2 32" "sends-joined 2 256"; do
    # shellcheck disable=SC2086
    ceil_rows+=("$spec|$(ceiling $spec | tr '\n' ' ')")
done

rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status")
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=

# ---------------------------------------------------------------- the Node.js peer
peer_ok=0
if [ "$SKIP_PEER" != 1 ]; then
    note "peer: waiting for npm install"
    if wait "$npm_pid"; then
        npm_pid=
        peer_ok=1
    else
        npm_pid=
        note "npm install failed: $(tail -3 "$tmp/npm.log")"
    fi
fi
if [ "$peer_ok" = 1 ]; then
    bolt_v=$(node -p "require('$NODE_DIR/node_modules/@slack/bolt/package.json').version")
    webapi_v=$(node -p "require('$NODE_DIR/node_modules/@slack/web-api/package.json').version")
    pport=$(free_port)
    peer="http://127.0.0.1:$pport"
    PORT=$pport SLACK_API_URL="$fake/api/" SLACK_BOT_TOKEN=$TOKEN \
        node "$NODE_DIR/peer.js" serve >"$tmp/peer.log" 2>&1 &
    peer_pid=$!
    wait_http "$peer/healthz" 20 || die "the Node peer did not start: $(tail -5 "$tmp/peer.log")"
    # Sanity: the same checks as switchboard's.
    code=$(curl -sS -o /dev/null -w '%{http_code}' -XPOST "$peer/send" \
        -H 'Content-Type: application/json' -d '{"to":"C0BENCH","text":"warm-up"}')
    [ "$code" = 200 ] || die "peer /send answered $code: $(tail -5 "$tmp/peer.log")"
    ts=$(date +%s)
    code=$(curl -sS -o /dev/null -w '%{http_code}' -XPOST "$peer/slack/events" \
        -H 'Content-Type: application/json' -H "X-Slack-Request-Timestamp: $ts" \
        -H "X-Slack-Signature: $(sign "$wbody" "$ts")" -d "$wbody")
    [ "$code" = 200 ] || die "peer: signed webhook answered $code: $(tail -5 "$tmp/peer.log")"
    code=$(curl -sS -o /dev/null -w '%{http_code}' -XPOST "$peer/slack/events" \
        -H 'Content-Type: application/json' -H "X-Slack-Request-Timestamp: $ts" \
        -H "X-Slack-Signature: v0=$(printf '0%.0s' $(seq 1 64))" -d "$wbody")
    [ "$code" = 401 ] || die "peer: a badly signed webhook answered $code, not 401"

    note "(a) peer: sends (Bolt $bolt_v, web-api $webapi_v, node $(node --version))"
    pfake0=$(fake_count)
    wrk_run peer-send "$peer/send" "$here/msg-send.lua"
    pfake1=$(fake_count)
    peer_acc=$(wrk_ok_rps "$tmp/peer-send.wrk")
    peer_del=$(awk -v n="$((pfake1 - pfake0 - 1))" -v s="$(wrk_secs "$tmp/peer-send.wrk")" \
        'BEGIN {printf "%.0f", n / s}')

    note "(b) peer: signed webhooks"
    SLACK_TS=$(date +%s) wrk_run peer-hook "$peer/slack/events" "$here/slack-webhook.lua"
    peer_in=$(wrk_ok_rps "$tmp/peer-hook.wrk")
    kill "$peer_pid" 2>/dev/null || true
    wait "$peer_pid" 2>/dev/null || true
    peer_pid=

    note "(a') peer: chat.postMessage loop, $CONNS concurrent, no HTTP front"
    SLACK_API_URL="$fake/api/" SLACK_BOT_TOKEN=$TOKEN \
        node "$NODE_DIR/peer.js" loop "$DURATION" "$CONNS" >"$tmp/peer-loop.json" 2>"$tmp/peer-loop.log" ||
        note "peer loop failed: $(tail -3 "$tmp/peer-loop.log")"
fi

# ---------------------------------------------------------------- table
loopv() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2] % d)' "$tmp/peer-loop.json" "$1" 2>/dev/null || echo "n/a"; }

W1=34 W2=38 W3=38
row() { printf "%-${W1}s %-${W2}s %-${W3}s %s\n" "$@"; }
echo
echo "switchboard messaging bench: wrk -t$THREADS -c$CONNS -d${DURATION}s on 127.0.0.1 ($(nproc) CPUs); fake Slack API: nginx return 200, 1 worker"
if [ "$peer_ok" = 1 ]; then
    peer_name="Node peer (bolt $bolt_v, web-api $webapi_v)"
else
    peer_name="Node peer: skipped"
fi
row "job" "switchboardd (slackish.so, durable)" "$peer_name" "switchboard/peer | target"
row "(a) sends accepted/s" "$(num "$sb_acc") ($(lat "$tmp/sb-send.wrk"))" \
    "$([ "$peer_ok" = 1 ] && echo "$(num "$peer_acc") ($(lat "$tmp/peer-send.wrk"))" || echo -)" \
    "$(ratio "$sb_acc" "${peer_acc:-}") | >= $(num $TARGET_SENDS), p99 < $TARGET_P99_MS ms"
row "    errors (non-2xx + socket)" "$(errs "$tmp/sb-send.wrk")" \
    "$([ "$peer_ok" = 1 ] && errs "$tmp/peer-send.wrk" || echo -)" ""
row "(a) delivered to the fake/s" "$(num "$sb_del_all") (run + drain)" \
    "$([ "$peer_ok" = 1 ] && echo "$(num "$peer_del") (answer after delivery)" || echo -)" \
    "$(ratio "$sb_del_all" "${peer_del:-}") | >= $(num $TARGET_SENDS); issue: peer ~$(num $ISSUE_PEER_SENDS)"
row "    delivered during the run/s" "$(num "$sb_del_run") (sent_total growth)" "" ""
row "    outbox drain after the run" "$drain_s s (depth at end $depth1, drained: $drained)" "" ""
row "    accepted / at fake / sent" "$(num "$sb_acc_n") / $(num "$fake_all") / $(num "$((sent2 - sent0))")" \
    "" "failed +$((failed2 - failed0)), retried +$((retried2 - retried0))"
if [ "$peer_ok" = 1 ]; then
    row "(a') SDK loop, no HTTP front" "" \
        "$(loopv '%(per_s).0f/s (p50 %(p50_ms).2fms p99 %(p99_ms).2fms)')" \
        "$(ratio "$sb_del_all" "$(loopv '%(per_s)f')")"
fi
row "(b) signed webhooks acked/s" "$(num "$sb_in") ($(lat "$tmp/sb-hook.wrk"))" \
    "$([ "$peer_ok" = 1 ] && echo "$(num "$peer_in") ($(lat "$tmp/peer-hook.wrk"))" || echo -)" \
    "$(ratio "$sb_in" "${peer_in:-}") | >= $(num $TARGET_INBOUND), p99 < $TARGET_P99_MS ms; issue: peer ~$(num $ISSUE_PEER_INBOUND)"
row "    verified, stored, acked" "yes: $(num "$sb_in_n") acked, $(num "$((stored1 - stored0))") stored" \
    "verified, acked, not stored" ""
row "    errors (non-2xx + socket)" "$(errs "$tmp/sb-hook.wrk")" \
    "$([ "$peer_ok" = 1 ] && errs "$tmp/peer-hook.wrk" || echo -)" ""
for r in "${ceil_rows[@]}"; do
    read -r mode conns batch per_s txn_ms per_txn db_cores <<<"${r//|/ }"
    what=$([ "$mode" = inbound ] && echo "webhooks stored/s" || echo "messages accepted+finished/s")
    [ "$mode" != sends-joined ] || what="$what, 1 txn"
    row "(c) DB alone, $mode: $conns conn x $batch" "$(num "$per_s") $what" \
        "txn ${txn_ms} ms, mariadbd ${db_cores} cores" \
        "$([ "$mode" = inbound ] && echo "vs target $(num $TARGET_INBOUND)" || echo "vs target $(num $TARGET_SENDS)")"
done
echo
printf '%-34s %s\n' "CPU s, (a) run + drain" "$(cpu_line s0 s2 "$(awk -v a="$run_s" -v b="$drain_s" 'BEGIN {print a + b}')" "$sb_send_wrk_ticks")"
printf '%-34s %s\n' "CPU s, (b) run" "$(cpu_line h0 h1 "$DURATION" "$sb_hook_wrk_ticks")"
printf '%-34s %s\n' "DB, (a) run + drain" "$(db_line "$dbs0" "$dbs2" "$(awk -v a="$run_s" -v b="$drain_s" 'BEGIN {print a + b}')" "$fake_all")"
printf '%-34s %s\n' "DB, (b) run" "$(db_line "$dbh0" "$dbh1" "$DURATION" "$((stored1 - stored0))")"
printf '%-34s %s\n' "switchboardd RSS after both runs" "$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f MiB", k / 1024}')"
if [ "$PERF" != 0 ]; then
    printf '%-34s %s\n' "perf data" "$tmp/{sends,inbound}.perf.data (BENCH_KEEP=1 keeps them)"
fi
