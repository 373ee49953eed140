#!/bin/bash
# switchboard Slack and Discord benchmark (issue 6): prints figures, builds
# nothing of the daemon, asserts nothing.
#
#   bench/providers-chat.sh      (after ./configure && make in the source tree)
#
# One run, on loopback, the real plugins (build/plugins/slack.so and
# discord.so), the daemon on its embedded MariaDB, log_level "warn", against:
#   - one fake Slack Web API + Discord REST: a private nginx (one worker)
#     answering chat.postMessage and POST /channels/{id}/messages with a
#     constant 200 (the Discord answer carries a roomy X-RateLimit bucket),
#     GET /gateway/bot with the fake Gateway's URL; requests counted by
#     stub_status;
#   - one fake Discord Gateway: bench/node-chat/chat.js gateway (the npm `ws`
#     server; Hello with heartbeat_interval 45 s, READY on Identify, RESUMED on
#     Resume, ACK on every heartbeat);
# it measures:
#   (1) Slack: Events API message events signed with X-Slack-Signature (v0,
#       HMAC per request in wrk's LuaJIT, a unique event_id each) verified,
#       stored and acknowledged per second; sends POST /v1/instances/{id}/messages
#       (durable 202) and delivered to the fake per second;
#   (2) Discord: interactions (type 2 commands, unique ids) signed with an
#       Ed25519 key made here (a pool pre-signed by Node's crypto, as wrk's Lua
#       cannot sign Ed25519) verified, stored and answered {"type":5} per
#       second; sends spread over the 1,000 bots of (3) (Discord's global limit
#       is 50 requests/s per bot, kept by both sides), accepted and delivered
#       per second;
#   (3) memory: one switchboardd with 1,000 Discord instances created through
#       the API, each holding a Gateway session to the fake (VmRSS, and its
#       private part RssAnon, i.e. without shared library pages; its embedded
#       mariadbd apart);
# and the same jobs done by Node.js peers built with the official packages,
# installed from npm into ~/.cache by this script (bench/node-chat):
#   Slack    bench/node/peer.js: @slack/bolt's HTTP receiver (signature and
#            timestamp check, no-op listener) and @slack/web-api chat.postMessage;
#   Discord  discord-interactions' verifyKey in a plain node:http server;
#            @discordjs/rest (one REST client per bot, default 50/s global)
#            POST /channels/{id}/messages; 1,000 discord.js Clients logged in
#            against the fake REST and Gateway (and, for scale, 1,000 bare
#            `ws` sessions doing Hello/Identify/heartbeats);
# then prints both side by side with switchboard/peer ratios, and the CPU
# every process used during each run (2 cores, shared with other jobs).
#
# Environment (defaults to the in-tree build):
#   SB_DAEMON, SB_PLUGIN_DIR, SB_MIGRATIONS_DIR   as for bench/messaging.sh
#   BENCH_DURATION (s per wrk run, default 5), BENCH_THREADS (2), BENCH_CONNS (64),
#   BENCH_GATEWAYS   Gateway sessions for (3) and bots for the Discord sends [1000]
#   BENCH_DRAIN_MAX  s to wait for the outbox to drain after a send run [30]
#   BENCH_NODE_DIR   where the npm packages go
#                    [${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-bench/node-chat]
#   BENCH_GATEWAY_TLS=1  the fake Gateway as wss:// (a Node TLS front with a
#                    certificate made here, trusted through SSL_CERT_FILE by
#                    the daemon and NODE_EXTRA_CA_CERTS by the peers), as
#                    Discord serves it; default plain ws://
#   BENCH_SKIP_PEER=1  switchboard only (node is still needed for the fakes);
#   BENCH_SKIP_RAWWS=1 no bare-`ws` peer;  BENCH_KEEP=1 keeps the temp dir;
#   BENCH_GATEWAY_ONLY=1  only the memory part (3), on both sides: no wrk
#                    runs (1) and (2), no Slack/interactions/send peers
#                    (about 30 s with the peers, 15 s without);
#   BENCH_NOFILE=N   soft open-files limit for everything started here
#                    [the hard limit]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
DAEMON=${SB_DAEMON:-$top/host/switchboardd}
PLUGINS=${SB_PLUGIN_DIR:-$top/build/plugins}
MIGRATIONS=${SB_MIGRATIONS_DIR:-$top/build/migrations}
DURATION=${BENCH_DURATION:-5}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNS:-64}
GATEWAYS=${BENCH_GATEWAYS:-1000}
DRAIN_MAX=${BENCH_DRAIN_MAX:-30}
NODE_DIR=${BENCH_NODE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-bench/node-chat}
SKIP_PEER=${BENCH_SKIP_PEER:-0}
SKIP_RAWWS=${BENCH_SKIP_RAWWS:-0}
GATEWAY_TLS=${BENCH_GATEWAY_TLS:-0}
GATEWAY_ONLY=${BENCH_GATEWAY_ONLY:-0}
HEARTBEAT_MS=45000
CHANNEL=1100000000000000001
APP_ID=1098765432109876000

[ -x "$DAEMON" ] || die "daemon not found at $DAEMON (build first, or set SB_DAEMON)"
for p in slack discord; do
    [ -f "$PLUGINS/$p.so" ] || die "$p.so not found in $PLUGINS (set SB_PLUGIN_DIR)"
done
for tool in $([ "$GATEWAY_ONLY" = 1 ] || echo wrk) curl python3 node npm; do
    command -v "$tool" >/dev/null || die "$tool not installed"
done
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || [ ! -x /usr/sbin/nginx ] || NGINX=/usr/sbin/nginx
[ -n "$NGINX" ] || die "nginx not installed (the fake REST APIs; apt-get install nginx-light)"
# 1,000 Gateway sockets (and the peers' as many) need more than 1,024 fds
# (switchboardd raises its own soft limit; the peers and nginx do not).
# BENCH_NOFILE=N sets the soft limit instead (to see the daemon at 1,024).
if [ -n "${BENCH_NOFILE:-}" ]; then
    ulimit -Sn "$BENCH_NOFILE"
else
    ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
fi
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((GATEWAYS + 512)) ] ||
    note "open files limit $(ulimit -n) is low for $GATEWAYS Gateway sessions"

started=$(date +%s)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-chatbench.XXXXXX")
daemon_pid='' nginx_pid='' wrk_pid='' peer_pid='' npm_pid='' gw_pid='' front_pid=''
cleanup() {
    for p in $wrk_pid $peer_pid $npm_pid $daemon_pid $front_pid $gw_pid $nginx_pid; do
        kill "$p" 2>/dev/null || true
    done
    for p in $wrk_pid $peer_pid $npm_pid $daemon_pid $front_pid $gw_pid $nginx_pid; do
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

json_get() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get(sys.argv[1], ""))' "$1"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# RssAnon: the private part of VmRSS (heap, stacks, written data), without
# the shared libraries' and the executable's file pages.
anon_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }

# Around every wrk_run (lib.sh): the CPU of everyone, before and after.
wrk_before() { cpu_snap "$1.0"; }
wrk_after() {
    cpu_snap "$1.1"
    cpu_lines+=("$(printf '%-30s %s' "CPU s, $1" "$(cpu_line "$1.0" "$1.1" "$DURATION" "$wrk_ticks")")")
}
wrk_ok() { echo $(($(wrk_total "$1") - $(wrk_non2xx "$1"))); }
wrk_wraps() { awk '/^pool wraps:/ {print $3}' "$1"; }

gw_stat() { curl -fsS --max-time 2 "$gw_http/stats" | json_get "$1"; }

# cpu_snap NAME: ticks of the subject ($subject_pid: the daemon or the peer),
# the daemon's mariadbd, the fakes (nginx worker, Gateway) and the machine.
cpu_snap() {
    local f=0 c v
    for c in $gw_pid $front_pid $nginx_pid $(cat "/proc/$nginx_pid/task/$nginx_pid/children" 2>/dev/null); do
        f=$((f + $(proc_ticks "$c")))
    done
    v="$(proc_ticks "${subject_pid:-0}") $(proc_ticks "${db_pid:-0}") $f $(sys_ticks)"
    eval "cpu_${1//[.-]/_}=\"$v\""
}
cpu_line() {
    local a b
    eval "a=\$cpu_${1//[.-]/_} b=\$cpu_${2//[.-]/_}"
    awk -v a="$a" -v b="$b" -v w="${4:-0}" -v s="$3" -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" \
        -v who="$subject_name" 'BEGIN {
        split(a, x, " "); split(b, y, " ");
        d = (y[1] - x[1]) / hz; m = (y[2] - x[2]) / hz; f = (y[3] - x[3]) / hz; k = w / hz;
        t = (y[4] - x[4]) / hz; i = (y[5] - x[5]) / hz; r = t - d - m - f - k - i; if (r < 0) r = 0; idle = s * n - t; if (idle < 0) idle = 0;
        printf "%s %.1f, mariadbd %.1f, fake %.1f, wrk %.1f, irq %.1f, other processes %.1f; idle %.1f of %d",
            who, d, m, f, k, i, r, idle, s * n }'
}
cpu_lines=()

# ---------------------------------------------------------------- npm (the fakes need `ws` too)
mkdir -p "$NODE_DIR" "$tmp/etc" "$tmp/plugins" "$tmp/state" "$tmp/nginx" "$tmp/key"
cp "$here/node-chat/package.json" "$here/node-chat/chat.js" "$here/node/peer.js" "$NODE_DIR/"
[ ! -f "$here/node-chat/package-lock.json" ] || cp "$here/node-chat/package-lock.json" "$NODE_DIR/"
note "npm install into $NODE_DIR"
(cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error) >"$tmp/npm.log" 2>&1 ||
    die "npm install failed: $(tail -3 "$tmp/npm.log")"
nv() { node -p "require('$NODE_DIR/node_modules/$1/package.json').version"; }
CHAT="$NODE_DIR/chat.js"

# ---------------------------------------------------------------- fakes
gport=$(free_port)
gw_url="ws://127.0.0.1:$gport"
gw_http="http://127.0.0.1:$gport"
node "$CHAT" gateway "$gport" "$HEARTBEAT_MS" >"$tmp/gateway.log" 2>&1 &
gw_pid=$!
wait_http "$gw_http/stats" 10 || die "fake Gateway did not start: $(tail -3 "$tmp/gateway.log")"
gw_kind="ws://"
if [ "$GATEWAY_TLS" = 1 ]; then
    mkdir -p "$tmp/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/tls/key.pem" -out "$tmp/tls/cert.pem" \
        -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 ||
        die "cannot make a certificate with openssl req"
    tport=$(free_port)
    node "$CHAT" tlsfront "$tport" "$gport" "$tmp/tls/cert.pem" "$tmp/tls/key.pem" \
        >"$tmp/tlsfront.log" 2>&1 &
    front_pid=$!
    for _ in $(seq 1 100); do
        grep -q 'tls front on' "$tmp/tlsfront.log" && break
        sleep 0.05
    done
    gw_url="wss://127.0.0.1:$tport"
    gw_kind="wss:// (RSA 2048 certificate, Node tls front)"
    export SSL_CERT_FILE="$tmp/tls/cert.pem" NODE_EXTRA_CA_CERTS="$tmp/tls/cert.pem"
fi

fport=$(free_port)
sed -e "s|@PORT@|$fport|g" -e "s|@PREFIX@|$tmp/nginx|g" -e "s|@GATEWAY@|$gw_url|g" \
    "$here/fake-chat.nginx.conf.in" >"$tmp/nginx/nginx.conf"
"$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" \
    -g 'daemon off;' 2>>"$tmp/nginx/error.log" &
nginx_pid=$!
fake="http://127.0.0.1:$fport"
wait_http "$fake/status" 10 || die "fake REST (nginx) did not start: $(tail -1 "$tmp/nginx/error.log")"

PUBKEY=$(node "$CHAT" keygen "$tmp/key") || die "Ed25519 key generation failed"

# ---------------------------------------------------------------- daemon
cp "$PLUGINS/slack.so" "$PLUGINS/discord.so" "$tmp/plugins/"
port=$(free_port)
cat >"$tmp/etc/switchboard.json" <<EOF
{
  "listen": {"address": "127.0.0.1", "port": $port},
  "log_level": "warn",
  "plugins": {"slack": {"enabled": true}, "discord": {"enabled": true}},
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
db_pid=$(cat "$tmp/state/mariadb/mariadbd.pid" 2>/dev/null || echo 0)
key=$(grep -o '"api_key":"[^"]*"' "$tmp/daemon.log" | head -1 | cut -d'"' -f4)
[ -n "$key" ] || die "no api_key in the daemon's log"
auth="Bearer $key"
subject_pid=$daemon_pid subject_name=switchboardd
sleep 1
rss_idle=$(rss_kb "$daemon_pid")
anon_idle=$(anon_kb "$daemon_pid")
db_rss_idle=$(rss_kb "$db_pid")

# ---------------------------------------------------------------- (3) 1,000 Gateway sessions
note "(3) switchboard: creating $GATEWAYS Discord instances (Gateway at $gw_url)"
t0=$(now)
python3 - "$base" "$auth" "$GATEWAYS" "$fake/api/v10" "$gw_url" "$APP_ID" >"$tmp/gw-ids" <<'PY' ||
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
base, auth, n, api, gw, app = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
def create(i):
    body = {"provider": "discord", "name": "gw-%04d" % i,
            "settings": {"application_id": app, "api_base": api, "gateway_url": gw},
            "secrets": {"bot_token": "bench-bot-%d" % i}}
    req = urllib.request.Request(base + "/v1/instances", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["id"]
with ThreadPoolExecutor(8) as ex:
    for i in ex.map(create, range(n)):
        print(i)
PY
    die "creating the Discord instances failed"
t1=$(now)
create_s=$(elapsed "$t0" "$t1")
deadline=$((SECONDS + 90))
while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(gw_stat ready_sent)" -ge "$GATEWAYS" ] && [ "$(gw_stat open)" -ge "$GATEWAYS" ] && break
    sleep 0.2
done
t2=$(now)
sb_gw_open=$(gw_stat open) sb_gw_ready=$(gw_stat ready_sent)
[ "$sb_gw_ready" -ge "$GATEWAYS" ] || note "only $sb_gw_ready of $GATEWAYS sessions READY after 90 s"
ready_s=$(elapsed "$t0" "$t2")
sleep 3 # let the READY writes to the key-value store settle
rss_gw=$(rss_kb "$daemon_pid")
anon_gw=$(anon_kb "$daemon_pid")
db_rss_gw=$(rss_kb "$db_pid")
sb_gw_open2=$(gw_stat open)
note "(3) switchboard: $sb_gw_open2 sessions open, RSS $(mib "$rss_gw") (idle $(mib "$rss_idle"))"

if [ "$GATEWAY_ONLY" != 1 ]; then
# ---------------------------------------------------------------- instances for (1) and (2)
SECRET="bench-signing-secret-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOKEN="xoxb-bench-token"
sl=$(curl -fsS -H "Authorization: $auth" -XPOST "$base/v1/instances" \
    -d "{\"provider\":\"slack\",\"name\":\"bench-slack\",\"settings\":{\"api_base\":\"$fake/api\"},
         \"secrets\":{\"bot_token\":\"$TOKEN\",\"signing_secret\":\"$SECRET\"}}" | json_get id) ||
    die "could not create the slack instance"
dc=$(curl -fsS -H "Authorization: $auth" -XPOST "$base/v1/instances" \
    -d "{\"provider\":\"discord\",\"name\":\"bench-interactions\",\"settings\":{\"api_base\":\"$fake/api/v10\",
         \"application_id\":\"$APP_ID\",\"public_key\":\"$PUBKEY\",\"gateway\":false},
         \"secrets\":{\"bot_token\":\"bench-bot-interactions\"}}" | json_get id) ||
    die "could not create the discord interactions instance"
for i in $sl $dc; do
    for _ in $(seq 1 100); do
        curl -fsS -H "Authorization: $auth" "$base/v1/instances/$i" | grep -q '"running":true' && break
        sleep 0.05
    done
done

sign_slack() {
    python3 -c 'import hmac,hashlib,sys; print("v0=" + hmac.new(sys.argv[1].encode(), ("v0:%s:%s" % (sys.argv[3], sys.argv[2])).encode(), hashlib.sha256).hexdigest())' \
        "$SECRET" "$1" "$2"
}
wbody='{"type":"event_callback","event_id":"EvWARMUP","event":{"type":"message","user":"U0BENCH","text":"warm","channel":"C0BENCH","ts":"1.1"}}'
# check_slack URL: a signed event is 200, a forged one 401.
check_slack() {
    local ts code
    ts=$(date +%s)
    code=$(curl -sS -o /dev/null -w '%{http_code}' -XPOST "$1" -H 'Content-Type: application/json' \
        -H "X-Slack-Request-Timestamp: $ts" -H "X-Slack-Signature: $(sign_slack "$wbody" "$ts")" -d "$wbody")
    [ "$code" = 200 ] || die "$1: signed Slack event answered $code"
    code=$(curl -sS -o /dev/null -w '%{http_code}' -XPOST "$1" -H 'Content-Type: application/json' \
        -H "X-Slack-Request-Timestamp: $ts" -H "X-Slack-Signature: v0=$(printf '0%.0s' $(seq 1 64))" -d "$wbody")
    [ "$code" = 401 ] || die "$1: a forged Slack event answered $code, not 401"
}
# check_discord URL: the pool's first line is 200 {"type":5}; with a forged signature 401.
check_discord() {
    local ts sig body code
    IFS=$'\t' read -r ts sig body <"$tmp/check.pool"
    code=$(curl -sS -o "$tmp/check.out" -w '%{http_code}' -XPOST "$1" -H 'Content-Type: application/json' \
        -H "X-Signature-Ed25519: $sig" -H "X-Signature-Timestamp: $ts" -d "$body")
    [ "$code" = 200 ] && grep -q '"type": *5' "$tmp/check.out" ||
        die "$1: signed interaction answered $code $(cat "$tmp/check.out")"
    code=$(curl -sS -o /dev/null -w '%{http_code}' -XPOST "$1" -H 'Content-Type: application/json' \
        -H "X-Signature-Ed25519: $(printf '0%.0s' $(seq 1 128))" -H "X-Signature-Timestamp: $ts" -d "$body")
    [ "$code" = 401 ] || die "$1: a forged interaction answered $code, not 401"
}
node "$CHAT" sign "$tmp/key" 1 9 "$tmp/check.pool"
check_slack "$base/webhook/slack/$sl"
check_discord "$base/webhook/discord/$dc"
code=$(curl -sS -o "$tmp/warm.json" -w '%{http_code}' -H "Authorization: $auth" -H 'Content-Type: application/json' \
    -XPOST "$base/v1/instances/$sl/messages" -d '{"to":"C0BENCH","text":"warm-up"}')
[ "$code" = 202 ] || die "send API answered $code: $(cat "$tmp/warm.json")"
for _ in $(seq 1 100); do
    [ "$(metric switchboard_messages_sent_total)" -ge 1 ] && break
    sleep 0.05
done
[ "$(metric switchboard_messages_sent_total)" -ge 1 ] || die "the warm-up Slack message did not reach the fake"

export BENCH_TAG="r$$x$(date +%s)"
export SLACK_SIGNING_SECRET=$SECRET
export BENCH_THREADS_N=$THREADS
note "daemon pid $daemon_pid port $port; fake REST $fake; wrk -t$THREADS -c$CONNS -d${DURATION}s"

# send_run NAME URL LUA: a send run on switchboard, then wait for the outbox.
send_run() {
    local name=$1 sent0 fake0 t0 t1 t2 depth
    sent0=$(metric switchboard_messages_sent_total)
    fake0=$(fake_count)
    t0=$(now)
    SB_AUTH="$auth" wrk_run "$name" "$2" "$3"
    t1=$(now)
    depth=$(metric switchboard_outbox_depth)
    while awk -v a="$t1" -v b="$(now)" -v m="$DRAIN_MAX" 'BEGIN {exit !(b - a < m)}'; do
        [ "$(metric switchboard_outbox_depth)" = 0 ] && break
        sleep 0.1
    done
    t2=$(now)
    local fake1 sent1
    fake1=$(fake_count)
    sent1=$(metric switchboard_messages_sent_total)
    local run drain n
    run=$(elapsed "$t0" "$t1") drain=$(elapsed "$t1" "$t2") n=$((fake1 - fake0 - 1))
    eval "${name//-/_}_del=$(awk -v n="$n" -v a="$run" -v b="$drain" 'BEGIN {printf "%.0f", n / (a + b)}')"
    eval "${name//-/_}_info=\"$(wrk_ok "$tmp/$name.wrk") accepted, $n at the fake, sent +$((sent1 - sent0)); depth $depth at the end, drained in ${drain} s\""
}

# ---------------------------------------------------------------- (1) Slack
note "(1) switchboard: Slack signed events"
stored0=$(metric switchboard_events_stored_total)
SLACK_TS=$(date +%s) wrk_run sb-slack-in "$base/webhook/slack/$sl" "$here/slack-webhook.lua"
sb_slack_stored=$(($(metric switchboard_events_stored_total) - stored0))
note "(1) switchboard: Slack sends"
BENCH_TO=C0BENCH send_run sb-slack-send "$base/v1/instances/$sl/messages" "$here/msg-send.lua"

# ---------------------------------------------------------------- (2) Discord
POOL=$((DURATION * 12000))
note "(2) signing $POOL interactions (Ed25519, Node crypto)"
node "$CHAT" sign "$tmp/key" "$POOL" "$(date +%s | tail -c 6)" "$tmp/interactions.pool"
note "(2) switchboard: Discord interactions"
stored0=$(metric switchboard_events_stored_total)
BENCH_POOL="$tmp/interactions.pool" wrk_run sb-dc-in "$base/webhook/discord/$dc" "$here/discord-interaction.lua"
sb_dc_stored=$(($(metric switchboard_events_stored_total) - stored0))
note "(2) switchboard: Discord sends over $GATEWAYS bots"
sed "s|^|/v1/instances/|; s|\$|/messages|" "$tmp/gw-ids" >"$tmp/sb.paths"
BENCH_PATHS="$tmp/sb.paths" send_run sb-dc-send "$base/" "$here/multi-send.lua"
fi # GATEWAY_ONLY

rss_end=$(rss_kb "$daemon_pid")
sb_gw_open_end=$(gw_stat open)
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=
db_pid=
sleep 1

# ---------------------------------------------------------------- the Node.js peers
peer_ok=0
if [ "$SKIP_PEER" != 1 ]; then
    peer_ok=1
    bolt_v=$(nv @slack/bolt) webapi_v=$(nv @slack/web-api) djs_v=$(nv discord.js)
    dint_v=$(nv discord-interactions) drest_v=$(nv @discordjs/rest) ws_v=$(nv ws)
    subject_name=node
    start_peer() { # NAME CMD...: a peer in the background, $peer_pid, $peer
        local name=$1
        shift
        pport=$(free_port)
        peer="http://127.0.0.1:$pport"
        PORT=$pport "$@" >"$tmp/$name.log" 2>&1 &
        peer_pid=$!
        subject_pid=$peer_pid
    }
    stop_peer() {
        kill "$peer_pid" 2>/dev/null || true
        wait "$peer_pid" 2>/dev/null || true
        peer_pid=
    }

    if [ "$GATEWAY_ONLY" != 1 ]; then
    note "(1) peer: Slack (bolt $bolt_v, web-api $webapi_v, node $(node --version))"
    start_peer peer-slack env SLACK_API_URL="$fake/api/" SLACK_BOT_TOKEN=$TOKEN node "$NODE_DIR/peer.js" serve
    wait_http "$peer/healthz" 20 || die "the Slack peer did not start: $(tail -5 "$tmp/peer-slack.log")"
    check_slack "$peer/slack/events"
    SLACK_TS=$(date +%s) wrk_run peer-slack-in "$peer/slack/events" "$here/slack-webhook.lua"
    f0=$(fake_count)
    BENCH_TO=C0BENCH wrk_run peer-slack-send "$peer/send" "$here/msg-send.lua"
    peer_slack_send_del=$(awk -v n="$(($(fake_count) - f0 - 1))" -v s="$(wrk_secs "$tmp/peer-slack-send.wrk")" 'BEGIN {printf "%.0f", n / s}')
    stop_peer

    note "(2) peer: Discord interactions (discord-interactions $dint_v verifyKey)"
    pport=$(free_port)
    peer="http://127.0.0.1:$pport"
    node "$CHAT" interactions "$pport" "$PUBKEY" >"$tmp/peer-dc-in.log" 2>&1 &
    peer_pid=$! subject_pid=$!
    wait_http "$peer/healthz" 20 || die "the interactions peer did not start: $(tail -5 "$tmp/peer-dc-in.log")"
    check_discord "$peer/"
    BENCH_POOL="$tmp/interactions.pool" wrk_run peer-dc-in "$peer/" "$here/discord-interaction.lua"
    stop_peer

    note "(2) peer: Discord sends (@discordjs/rest $drest_v, one client per bot)"
    pport=$(free_port)
    peer="http://127.0.0.1:$pport"
    node "$CHAT" send "$pport" "$fake/api" >"$tmp/peer-dc-send.log" 2>&1 &
    peer_pid=$! subject_pid=$!
    wait_http "$peer/healthz" 20 || die "the send peer did not start: $(tail -5 "$tmp/peer-dc-send.log")"
    code=$(curl -sS -o "$tmp/warm.json" -w '%{http_code}' -XPOST "$peer/send/0" -d "{\"to\":\"$CHANNEL\",\"text\":\"warm\"}")
    [ "$code" = 200 ] || die "send peer answered $code: $(cat "$tmp/warm.json") $(tail -3 "$tmp/peer-dc-send.log")"
    seq 0 $((GATEWAYS - 1)) | sed 's|^|/send/|' >"$tmp/peer.paths"
    f0=$(fake_count)
    BENCH_PATHS="$tmp/peer.paths" wrk_run peer-dc-send "$peer/" "$here/multi-send.lua"
    peer_dc_send_del=$(awk -v n="$(($(fake_count) - f0 - 1))" -v s="$(wrk_secs "$tmp/peer-dc-send.wrk")" 'BEGIN {printf "%.0f", n / s}')
    stop_peer
    fi # GATEWAY_ONLY

    # peer_sessions NAME COUNT CMD...: RSS of a Node process holding COUNT sessions.
    peer_sessions() {
        local name=$1 want=$2 t0 n=0
        shift 2
        pport=$(free_port)
        PORT=$pport "$@" >"$tmp/$name.log" 2>&1 &
        peer_pid=$!
        t0=$(now)
        local deadline=$((SECONDS + 120))
        while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$peer_pid" 2>/dev/null; do
            n=$(curl -fsS --max-time 2 "http://127.0.0.1:$pport/healthz" 2>/dev/null | json_get ready 2>/dev/null || echo 0)
            [ "${n:-0}" -ge "$want" ] && break
            sleep 0.5
        done
        local t1
        t1=$(now)
        sleep 3
        eval "${name//-/_}_ready=${n:-0} ${name//-/_}_secs=$(elapsed "$t0" "$t1")"
        eval "${name//-/_}_open=$(gw_stat open)"
        eval "${name//-/_}_rss=$(rss_kb "$peer_pid")"
        eval "${name//-/_}_anon=$(anon_kb "$peer_pid")"
        stop_peer
        sleep 1
    }
    note "(3) peer: $GATEWAYS discord.js $djs_v Clients"
    note "(3) peer: node with discord.js loaded, no session (the baseline)"
    peer_sessions peer-idle 0 node "$CHAT" clients 0 "$fake/api"
    peer_sessions peer-djs "$GATEWAYS" node "$CHAT" clients "$GATEWAYS" "$fake/api"
    if [ "$SKIP_RAWWS" != 1 ]; then
        note "(3) peer: $GATEWAYS bare ws $ws_v sessions"
        peer_sessions peer-wsidle 0 node "$CHAT" rawws 0 "$gw_url"
        peer_sessions peer-ws "$GATEWAYS" node "$CHAT" rawws "$GATEWAYS" "$gw_url"
    fi
fi

# ---------------------------------------------------------------- table
# Three places for the memory ratios, whose target (0.10) is on the second.
ratio3() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN {if (a > 0 && b > 0) printf "%.3f", a / b; else print "n/a"}'; }
P() { [ "$peer_ok" = 1 ] && echo "$@" || echo -; }
W1=34 W2=44 W3=42
row() { printf "%-${W1}s %-${W2}s %-${W3}s %s\n" "$@"; }

echo
echo "switchboard Slack/Discord bench: wrk -t$THREADS -c$CONNS -d${DURATION}s on 127.0.0.1 ($(nproc) CPUs, load average at start $load0)"
echo "fakes: nginx return 200 (1 worker) for Slack Web API + Discord REST; Gateway: node ws $(nv ws) server, $gw_kind, heartbeat_interval ${HEARTBEAT_MS} ms"
if [ "$peer_ok" = 1 ]; then
    echo "peers: node $(node --version); @slack/bolt $bolt_v + @slack/web-api $webapi_v; discord-interactions $dint_v; @discordjs/rest $drest_v; discord.js $djs_v; ws $ws_v"
fi
row "job" "switchboardd (slack.so / discord.so)" "Node peer" "switchboard/peer"
if [ "$GATEWAY_ONLY" != 1 ]; then
row "(1) Slack events verified/s" "$(num "$(wrk_ok_rps "$tmp/sb-slack-in.wrk")") ($(lat "$tmp/sb-slack-in.wrk"))" \
    "$(P "$(num "$(wrk_ok_rps "$tmp/peer-slack-in.wrk" 2>/dev/null)") ($(lat "$tmp/peer-slack-in.wrk" 2>/dev/null)) bolt")" \
    "$(ratio "$(wrk_ok_rps "$tmp/sb-slack-in.wrk")" "$(wrk_ok_rps "$tmp/peer-slack-in.wrk" 2>/dev/null)")"
row "    stored / errors" "$(num "$sb_slack_stored") stored / $(errs "$tmp/sb-slack-in.wrk")" \
    "$(P "not stored / $(errs "$tmp/peer-slack-in.wrk" 2>/dev/null)")" ""
row "(1) Slack sends accepted/s" "$(num "$(wrk_ok_rps "$tmp/sb-slack-send.wrk")") ($(lat "$tmp/sb-slack-send.wrk")) durable 202" \
    "$(P "$(num "$(wrk_ok_rps "$tmp/peer-slack-send.wrk" 2>/dev/null)") ($(lat "$tmp/peer-slack-send.wrk" 2>/dev/null)) after delivery")" \
    "$(ratio "$(wrk_ok_rps "$tmp/sb-slack-send.wrk")" "$(wrk_ok_rps "$tmp/peer-slack-send.wrk" 2>/dev/null)")"
row "(1) Slack delivered to the fake/s" "$(num "$sb_slack_send_del") (run + drain)" "$(P "$(num "${peer_slack_send_del:-}")")" \
    "$(ratio "$sb_slack_send_del" "${peer_slack_send_del:-}")"
row "    " "$sb_slack_send_info" "" ""
row "(2) Discord interactions verified/s" "$(num "$(wrk_ok_rps "$tmp/sb-dc-in.wrk")") ($(lat "$tmp/sb-dc-in.wrk"))" \
    "$(P "$(num "$(wrk_ok_rps "$tmp/peer-dc-in.wrk" 2>/dev/null)") ($(lat "$tmp/peer-dc-in.wrk" 2>/dev/null)) verifyKey")" \
    "$(ratio "$(wrk_ok_rps "$tmp/sb-dc-in.wrk")" "$(wrk_ok_rps "$tmp/peer-dc-in.wrk" 2>/dev/null)")"
row "    stored / errors / pool wraps" "$(num "$sb_dc_stored") stored / $(errs "$tmp/sb-dc-in.wrk") / $(wrk_wraps "$tmp/sb-dc-in.wrk")" \
    "$(P "not stored / $(errs "$tmp/peer-dc-in.wrk" 2>/dev/null) / $(wrk_wraps "$tmp/peer-dc-in.wrk" 2>/dev/null)")" ""
row "(2) Discord sends accepted/s" "$(num "$(wrk_ok_rps "$tmp/sb-dc-send.wrk")") ($(lat "$tmp/sb-dc-send.wrk")) durable 202" \
    "$(P "$(num "$(wrk_ok_rps "$tmp/peer-dc-send.wrk" 2>/dev/null)") ($(lat "$tmp/peer-dc-send.wrk" 2>/dev/null)) after delivery")" \
    "$(ratio "$(wrk_ok_rps "$tmp/sb-dc-send.wrk")" "$(wrk_ok_rps "$tmp/peer-dc-send.wrk" 2>/dev/null)")"
row "(2) Discord delivered/s, $GATEWAYS bots" "$(num "$sb_dc_send_del") (run + drain)" "$(P "$(num "${peer_dc_send_del:-}")")" \
    "$(ratio "$sb_dc_send_del" "${peer_dc_send_del:-}")"
row "    " "$sb_dc_send_info" "" ""
fi # GATEWAY_ONLY
row "(3) RSS, $GATEWAYS Gateway sessions" "$(mib "$rss_gw") ($sb_gw_open2 open)" \
    "$(P "$(mib "${peer_djs_rss:-0}") discord.js Clients (${peer_djs_ready:-0} ready)")" \
    "$(ratio3 "$rss_gw" "${peer_djs_rss:-}") (target <= 0.10)"
if [ "$peer_ok" = 1 ] && [ "$SKIP_RAWWS" != 1 ]; then
    row "" "" "$(mib "${peer_ws_rss:-0}") bare ws sessions (${peer_ws_ready:-0} ready)" "$(ratio3 "$rss_gw" "${peer_ws_rss:-}")"
fi
row "    idle -> $GATEWAYS sessions" "$(mib "$rss_idle") -> $(mib "$rss_gw"): $(awk -v a="$rss_idle" -v b="$rss_gw" -v n="$GATEWAYS" 'BEGIN {printf "%.1f KiB", (b - a) / n}') per session" \
    "$(P "$(mib "${peer_idle_rss:-0}") -> $(mib "${peer_djs_rss:-0}"): $(awk -v a="${peer_idle_rss:-0}" -v b="${peer_djs_rss:-0}" -v n="$GATEWAYS" 'BEGIN {printf "%.1f KiB", (b - a) / n}') per Client")" \
    "$(ratio3 "$((rss_gw - rss_idle))" "$((${peer_djs_rss:-0} - ${peer_idle_rss:-0}))") per session"
row "" "" "$(P "bare ws: $(awk -v a="${peer_wsidle_rss:-0}" -v b="${peer_ws_rss:-0}" -v n="$GATEWAYS" 'BEGIN {printf "%.1f KiB", (b - a) / n}') per session")" \
    "$(ratio3 "$((rss_gw - rss_idle))" "$((${peer_ws_rss:-0} - ${peer_wsidle_rss:-0}))")"
row "    RssAnon (private), $GATEWAYS" "$(mib "$anon_gw") (idle $(mib "$anon_idle"))" \
    "$(P "$(mib "${peer_djs_anon:-0}") discord.js (idle $(mib "${peer_idle_anon:-0}"))")" \
    "$(ratio3 "$anon_gw" "${peer_djs_anon:-}")"
if [ "$peer_ok" = 1 ] && [ "$SKIP_RAWWS" != 1 ]; then
    row "" "" "$(mib "${peer_ws_anon:-0}") bare ws (idle $(mib "${peer_wsidle_anon:-0}"))" "$(ratio3 "$anon_gw" "${peer_ws_anon:-}")"
fi
row "    created / all READY" "$GATEWAYS in $create_s s / $ready_s s" "$(P "all ready in ${peer_djs_secs:-?} s (ws: ${peer_ws_secs:-?} s)")" ""
row "    its mariadbd (apart)" "$(mib "$db_rss_idle") idle, $(mib "$db_rss_gw") with the sessions" "" \
    "$(ratio "$((rss_gw + db_rss_gw))" "${peer_djs_rss:-}") with mariadbd"
[ "$GATEWAY_ONLY" = 1 ] ||
    row "    daemon RSS after all runs" "$(mib "$rss_end"), $sb_gw_open_end sessions still open" "" ""
echo
for l in "${cpu_lines[@]}"; do echo "$l"; done
echo "wall time $(($(date +%s) - started)) s; load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
