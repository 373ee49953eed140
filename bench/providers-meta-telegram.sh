#!/bin/bash
# switchboard provider benchmark, Telegram and WhatsApp Cloud API: prints
# figures, builds nothing of the daemon, asserts nothing. Under 3 minutes.
#
#   bench/providers-meta-telegram.sh     (after ./configure && make)
#
# One private nginx (bench/fake-providers.nginx.conf.in, 1 worker) plays the
# Telegram Bot API (sendMessage answers {"ok":true,"result":{"message_id":1,…}})
# and the Graph API (/<version>/<phone>/messages answers WhatsApp's
# {"messaging_product","contacts","messages":[{"id"}]}), counting requests
# with stub_status. Against it, in one run on loopback, with wrk:
#   (a) Telegram sends: POST /v1/instances/{id}/messages, a distinct chat id
#       per request (the plugin paces each chat to 1/s; the bot-wide 30/s
#       pace is turned off with pace_global_per_second 0, as for a bot with
#       paid broadcasts), accepted/s and delivered to the fake/s;
#   (b) Telegram inbound: webhook updates with X-Telegram-Bot-Api-Secret-Token,
#       a unique update_id each (bench/tg-webhook.lua), verified, stored, acked;
#   (c) WhatsApp inbound: webhooks signed X-Hub-Signature-256 (HMAC-SHA256 of the
#       raw body, per request through LuaJIT FFI, bench/wa-webhook.lua), a
#       unique wamid each, verified, stored, acked;
#   (d) WhatsApp sends to the fake Graph API, as (a);
# and the same jobs by a Node.js peer (bench/node-providers/peer.js, installed
# from npm into ~/.cache): grammY (webhookCallback with secretToken;
# bot.api.sendMessage with client.apiRoot at the fake), Express with Meta's
# documented HMAC check, WhatsApp sends with node:http and with Meta's
# facebook-nodejs-business-sdk (FacebookAdsApi.call, the fake as urlOverride).
# The peer stores nothing and answers a send after delivery (no outbox).
#
# Environment (defaults to the in-tree build):
#   SB_DAEMON, SB_PLUGIN_DIR, SB_MIGRATIONS_DIR (as bench/messaging.sh)
#   BENCH_DURATION (s per job, default 5), BENCH_THREADS (2), BENCH_CONNS (64),
#   BENCH_DRAIN_MAX (s, default 30), BENCH_NODE_DIR
#   [${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-bench/node-providers],
#   BENCH_SKIP_PEER=1 (switchboard only), BENCH_KEEP=1 (keep the temp dir).
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
DRAIN_MAX=${BENCH_DRAIN_MAX:-30}
NODE_DIR=${BENCH_NODE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-bench/node-providers}
SKIP_PEER=${BENCH_SKIP_PEER:-0}

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }
[ -x "$DAEMON" ] || die "daemon not found at $DAEMON (build first, or set SB_DAEMON)"
for p in telegram whatsapp-official; do
    [ -f "$PLUGINS/$p.so" ] || die "$p.so not found in $PLUGINS (set SB_PLUGIN_DIR)"
done
for tool in wrk curl python3; do
    command -v "$tool" >/dev/null || die "$tool not installed"
done
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || [ ! -x /usr/sbin/nginx ] || NGINX=/usr/sbin/nginx
[ -n "$NGINX" ] || die "nginx not installed (the fake APIs; apt-get install nginx-light)"
if [ "$SKIP_PEER" != 1 ]; then
    command -v node >/dev/null && command -v npm >/dev/null ||
        die "node/npm not installed (BENCH_SKIP_PEER=1 runs switchboard only)"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-provbench.XXXXXX")
daemon_pid='' nginx_pid='' wrk_pid='' peer_pid='' npm_pid=''
cleanup() {
    for p in $wrk_pid $peer_pid $npm_pid $daemon_pid $nginx_pid; do
        kill "$p" 2>/dev/null || true
    done
    for p in $wrk_pid $peer_pid $npm_pid $daemon_pid $nginx_pid; do
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

wait_http() {
    local url=$1 deadline=$((SECONDS + ${2:-15}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# wrk_run NAME URL LUA: output in $tmp/NAME.wrk
wrk_run() {
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$3" "$2" >"$tmp/$1.wrk" 2>&1 &
    wrk_pid=$!
    wait "$wrk_pid" || note "wrk $1 exited $?"
    wrk_pid=
}
wrk_pct() { awk -v p="$2" '/Latency Distribution/ {d=1} d && $1 == p {print $2; exit}' "$1"; }
wrk_total() { awk '/requests in/ {print $1; exit}' "$1"; }
wrk_secs() { awk '/requests in/ {gsub(/[s,]/, "", $4); print $4; exit}' "$1"; }
wrk_non2xx() { awk -F': *' '/Non-2xx or 3xx responses/ {n=$2} END {print n+0}' "$1"; }
wrk_sockerr() {
    awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10; f=1} END {if (!f) print 0}' "$1"
}
wrk_ok_rps() {
    awk -v t="$(wrk_total "$1")" -v n="$(wrk_non2xx "$1")" -v s="$(wrk_secs "$1")" \
        'BEGIN {if (s > 0) printf "%.0f", (t - n) / s; else print 0}'
}
fake_count() { curl -fsS --max-time 2 "$fake/status" | awk 'NR == 3 {print $3}'; }
metric() {
    curl -fsS --max-time 5 "$base/metrics" |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $NF} END {printf "%.0f", s}'
}

# ---------------------------------------------------------------- the peer's packages (background)
if [ "$SKIP_PEER" != 1 ]; then
    mkdir -p "$NODE_DIR"
    cp "$here/node-providers/package.json" "$here/node-providers/package-lock.json" \
        "$here/node-providers/peer.js" "$NODE_DIR/"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error) >"$tmp/npm.log" 2>&1 &
    npm_pid=$!
fi

# ---------------------------------------------------------------- fake APIs
mkdir -p "$tmp/etc" "$tmp/plugins" "$tmp/state" "$tmp/nginx"
cp "$PLUGINS/telegram.so" "$PLUGINS/whatsapp-official.so" "$tmp/plugins/"
fport=$(free_port)
sed -e "s|@PORT@|$fport|g" -e "s|@PREFIX@|$tmp/nginx|g" "$here/fake-providers.nginx.conf.in" \
    >"$tmp/nginx/nginx.conf"
"$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" \
    -g 'daemon off;' 2>>"$tmp/nginx/error.log" &
nginx_pid=$!
fake="http://127.0.0.1:$fport"
wait_http "$fake/status" 10 || die "fake APIs (nginx) did not start: $(tail -1 "$tmp/nginx/error.log")"

# ---------------------------------------------------------------- daemon
port=$(free_port)
cat >"$tmp/etc/switchboard.json" <<EOF
{
  "listen": {"address": "127.0.0.1", "port": $port},
  "log_level": "warn",
  "plugins": {"telegram": {"enabled": true}, "whatsapp-official": {"enabled": true}},
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
key=$(grep -o '"api_key":"[^"]*"' "$tmp/daemon.log" | head -1 | cut -d'"' -f4)
[ -n "$key" ] || die "no api_key in the daemon's log"
auth="Bearer $key"

TG_TOKEN="123456:bench-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TG_SECRET="tgsecret_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WA_PHONE_ID=106540352242922
WA_TOKEN="EAAbench$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WA_APP_SECRET="wa-app-secret-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export TG_SECRET WA_PHONE_ID WA_APP_SECRET

create() { # create PROVIDER NAME SETTINGS SECRETS -> id
    curl -fsS -H "Authorization: $auth" -XPOST "$base/v1/instances" \
        -d "{\"provider\":\"$1\",\"name\":\"$2\",\"settings\":$3,\"secrets\":$4}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
wait_connected() {
    for _ in $(seq 1 100); do
        curl -fsS -H "Authorization: $auth" "$base/v1/instances/$1" | grep -q '"state":"connected"' && return 0
        sleep 0.05
    done
    die "instance $1 did not connect: $(curl -fsS -H "Authorization: $auth" "$base/v1/instances/$1")"
}
tg=$(create telegram tg "{\"mode\":\"webhook\",\"public_url\":\"$base\",\"api_base\":\"$fake\",\"pace_global_per_second\":0}" \
    "{\"bot_token\":\"$TG_TOKEN\",\"webhook_secret\":\"$TG_SECRET\"}") || die "could not create the telegram instance"
wa=$(create whatsapp-official wa "{\"phone_number_id\":\"$WA_PHONE_ID\",\"waba_id\":\"102290129340398\",\"api_base\":\"$fake\"}" \
    "{\"access_token\":\"$WA_TOKEN\",\"app_secret\":\"$WA_APP_SECRET\",\"verify_token\":\"bench-verify\"}") ||
    die "could not create the whatsapp-official instance"
wait_connected "$tg"
wait_connected "$wa"

hmac() { python3 -c 'import hmac,hashlib,sys; print("sha256=" + hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())' "$WA_APP_SECRET" "$1"; }
post() { # post URL BODY [HEADER...] -> status
    local url=$1 body=$2
    shift 2
    local h=()
    for x in "$@"; do h+=(-H "$x"); done
    curl -sS -o /dev/null -w '%{http_code}' -XPOST "$url" -H 'Content-Type: application/json' "${h[@]}" -d "$body"
}
tgbody='{"update_id":1,"message":{"message_id":1,"date":1700000000,"from":{"id":7,"is_bot":false,"first_name":"A"},"chat":{"id":7,"type":"private"},"text":"warm"}}'
wabody="{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"102290129340398\",\"changes\":[{\"field\":\"messages\",\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{\"display_phone_number\":\"15550783881\",\"phone_number_id\":\"$WA_PHONE_ID\"},\"contacts\":[{\"profile\":{\"name\":\"Ada\"},\"wa_id\":\"15550001111\"}],\"messages\":[{\"from\":\"15550001111\",\"id\":\"wamid.WARM\",\"timestamp\":\"1700000000\",\"type\":\"text\",\"text\":{\"body\":\"warm\"}}]}}]}]}"
badsig="sha256=$(printf '0%.0s' $(seq 1 64))"

# Sanity: one send each reaches the fake; right secrets/signatures accepted, wrong refused.
for i in $tg $wa; do
    code=$(post "$base/v1/instances/$i/messages" '{"to":"4242","text":"warm-up"}' "Authorization: $auth")
    [ "$code" = 202 ] || die "send API answered $code"
done
for _ in $(seq 1 100); do
    [ "$(metric switchboard_messages_sent_total)" -ge 2 ] && break
    sleep 0.05
done
[ "$(metric switchboard_messages_sent_total)" -ge 2 ] || die "the warm-up messages did not reach the fake"
[ "$(post "$base/webhook/telegram/$tg" "$tgbody" "X-Telegram-Bot-Api-Secret-Token: $TG_SECRET")" = 200 ] ||
    die "telegram webhook with the secret refused"
[ "$(post "$base/webhook/telegram/$tg" "$tgbody" "X-Telegram-Bot-Api-Secret-Token: nope")" = 401 ] ||
    die "telegram webhook with a wrong secret not refused"
[ "$(post "$base/webhook/whatsapp-official/$wa" "$wabody" "X-Hub-Signature-256: $(hmac "$wabody")")" = 200 ] ||
    die "signed whatsapp webhook refused"
code=$(post "$base/webhook/whatsapp-official/$wa" "$wabody" "X-Hub-Signature-256: $badsig")
[ "$code" = 401 ] || [ "$code" = 403 ] || die "badly signed whatsapp webhook answered $code"

note "daemon pid $daemon_pid port $port; telegram $tg, whatsapp-official $wa; fake APIs $fake"
note "wrk -t$THREADS -c$CONNS -d${DURATION}s per job"
BENCH_TAG="r$$x$(date +%s)"
export BENCH_TAG

# sb_send NAME INSTANCE: sends, then wait for the outbox to drain.
sb_send() {
    local name=$1 inst=$2 f0 s0 t0 t1 t2 f1
    f0=$(fake_count)
    s0=$(metric switchboard_messages_sent_total)
    t0=$(now)
    SB_AUTH="$auth" BENCH_TO_BASE=$((RANDOM * 100000 + 100000000)) \
        wrk_run "$name" "$base/v1/instances/$inst/messages" "$here/provider-send.lua"
    t1=$(now)
    while awk -v a="$t1" -v b="$(now)" -v m="$DRAIN_MAX" 'BEGIN {exit !(b - a < m)}'; do
        [ "$(metric switchboard_outbox_depth)" = 0 ] && break
        sleep 0.1
    done
    t2=$(now)
    f1=$(fake_count)
    eval "${name}_acc=\$(wrk_ok_rps \"\$tmp/\$name.wrk\")"
    eval "${name}_n=\$((\$(wrk_total \"\$tmp/\$name.wrk\") - \$(wrk_non2xx \"\$tmp/\$name.wrk\")))"
    eval "${name}_fake=$((f1 - f0 - 1))"
    eval "${name}_sent=$(($(metric switchboard_messages_sent_total) - s0))"
    eval "${name}_drain=$(elapsed "$t1" "$t2")"
    eval "${name}_del=$(awk -v n="$((f1 - f0 - 1))" -v s="$(elapsed "$t0" "$t2")" 'BEGIN {printf "%.0f", n / s}')"
}

note "(a) switchboard: telegram sends"
sb_send sbtgsend "$tg"
note "(b) switchboard: telegram webhooks"
st0=$(metric switchboard_events_stored_total)
BENCH_BASE_ID=$((RANDOM * 1000)) wrk_run sbtghook "$base/webhook/telegram/$tg" "$here/tg-webhook.lua"
sleep 0.5
sbtghook_stored=$(($(metric switchboard_events_stored_total) - st0))
note "(c) switchboard: whatsapp webhooks"
st0=$(metric switchboard_events_stored_total)
wrk_run sbwahook "$base/webhook/whatsapp-official/$wa" "$here/wa-webhook.lua"
sleep 0.5
sbwahook_stored=$(($(metric switchboard_events_stored_total) - st0))
note "(d) switchboard: whatsapp sends"
sb_send sbwasend "$wa"
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status")
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=

# ---------------------------------------------------------------- the Node.js peer
peer_ok=0
if [ "$SKIP_PEER" != 1 ]; then
    note "peer: waiting for npm install"
    if wait "$npm_pid"; then
        peer_ok=1
    else
        note "npm install failed: $(tail -3 "$tmp/npm.log")"
    fi
    npm_pid=
fi
peer_send() { # peer_send NAME PATH
    local f0 f1
    f0=$(fake_count)
    BENCH_TO_BASE=$((RANDOM * 100000 + 100000000)) wrk_run "$1" "$peer$2" "$here/provider-send.lua"
    f1=$(fake_count)
    eval "${1}_acc=\$(wrk_ok_rps \"\$tmp/\$1.wrk\")"
    eval "${1}_fake=$((f1 - f0 - 1))"
}
if [ "$peer_ok" = 1 ]; then
    v() { node -p "require('$NODE_DIR/node_modules/$1/package.json').version"; }
    grammy_v=$(v grammy) express_v=$(v express) fbsdk_v=$(v facebook-nodejs-business-sdk)
    pport=$(free_port)
    peer="http://127.0.0.1:$pport"
    PORT=$pport TG_API_ROOT="$fake" TG_TOKEN=$TG_TOKEN GRAPH_BASE="$fake" WA_TOKEN=$WA_TOKEN \
        node "$NODE_DIR/peer.js" >"$tmp/peer.log" 2>&1 &
    peer_pid=$!
    wait_http "$peer/healthz" 20 || die "the Node peer did not start: $(tail -5 "$tmp/peer.log")"
    for p in /tg/send /wa/send /wa/send-sdk; do
        code=$(post "$peer$p" '{"to":"4242","text":"warm-up"}')
        [ "$code" = 200 ] || die "peer $p answered $code: $(tail -5 "$tmp/peer.log")"
    done
    [ "$(post "$peer/tg/webhook" "$tgbody" "X-Telegram-Bot-Api-Secret-Token: $TG_SECRET")" = 200 ] ||
        die "peer: telegram webhook with the secret refused: $(tail -5 "$tmp/peer.log")"
    [ "$(post "$peer/tg/webhook" "$tgbody" "X-Telegram-Bot-Api-Secret-Token: nope")" = 401 ] ||
        die "peer: telegram webhook with a wrong secret not refused"
    [ "$(post "$peer/wa/webhook" "$wabody" "X-Hub-Signature-256: $(hmac "$wabody")")" = 200 ] ||
        die "peer: signed whatsapp webhook refused"
    [ "$(post "$peer/wa/webhook" "$wabody" "X-Hub-Signature-256: $badsig")" = 403 ] ||
        die "peer: badly signed whatsapp webhook not refused"

    note "(a) peer: grammY $grammy_v sendMessage"
    peer_send pgtgsend /tg/send
    note "(b) peer: grammY webhookCallback"
    BENCH_BASE_ID=$((RANDOM * 1000)) wrk_run pgtghook "$peer/tg/webhook" "$here/tg-webhook.lua"
    note "(c) peer: Express $express_v HMAC check"
    wrk_run pgwahook "$peer/wa/webhook" "$here/wa-webhook.lua"
    note "(d) peer: WhatsApp sends with node:http, then with facebook-nodejs-business-sdk $fbsdk_v"
    peer_send pgwasend /wa/send
    peer_send pgwasdk /wa/send-sdk
fi

# ---------------------------------------------------------------- table
num() { [ -n "${1:-}" ] && awk -v n="$1" 'BEGIN {s = sprintf("%.0f", n); r = ""; while (length(s) > 3) {r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3)} print s r}' || echo "n/a"; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN {if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a"}'; }
errs() { echo $(($(wrk_non2xx "$1") + $(wrk_sockerr "$1"))); }
lat() { echo "p50 $(wrk_pct "$1" 50%) p99 $(wrk_pct "$1" 99%)"; }
pv() { [ "$peer_ok" = 1 ] && echo "$(num "$1") ($(lat "$tmp/$2.wrk"), err $(errs "$tmp/$2.wrk"))" || echo -; }

echo
echo "switchboard provider bench: wrk -t$THREADS -c$CONNS -d${DURATION}s on 127.0.0.1 ($(nproc) CPUs); fake Bot API + Graph API: nginx return 200, 1 worker"
if [ "$peer_ok" = 1 ]; then
    echo "peer: node $(node --version), grammY $grammy_v, Express $express_v, facebook-nodejs-business-sdk $fbsdk_v (stores nothing; answers a send after delivery)"
fi
printf '| %s | %s | %s | %s |\n' "job" "switchboardd (durable)" "Node peer" "ratio"
printf '|---|---|---|---|\n'
printf '| %s | %s | %s | %s |\n' "Telegram sends accepted/s (distinct chats)" \
    "$(num "$sbtgsend_acc") ($(lat "$tmp/sbtgsend.wrk"), err $(errs "$tmp/sbtgsend.wrk"))" \
    "grammY sendMessage: $(pv "${pgtgsend_acc:-}" pgtgsend)" "$(ratio "$sbtgsend_acc" "${pgtgsend_acc:-}")"
printf '| %s | %s | %s | %s |\n' "Telegram sends at the fake/s" \
    "$(num "$sbtgsend_del") (run + drain $sbtgsend_drain s; $(num "$sbtgsend_fake") at the fake, $(num "$sbtgsend_sent") sent; wrk read $(num "$sbtgsend_n") answers)" \
    "$([ "$peer_ok" = 1 ] && echo "$(num "${pgtgsend_fake:-0}") in ${DURATION} s" || echo -)" ""
printf '| %s | %s | %s | %s |\n' "Telegram webhooks (secret token) acked/s" \
    "$(num "$(wrk_ok_rps "$tmp/sbtghook.wrk")") ($(lat "$tmp/sbtghook.wrk"), err $(errs "$tmp/sbtghook.wrk"); $(num "$sbtghook_stored") stored)" \
    "grammY webhookCallback: $(pv "$([ "$peer_ok" = 1 ] && wrk_ok_rps "$tmp/pgtghook.wrk")" pgtghook)" \
    "$(ratio "$(wrk_ok_rps "$tmp/sbtghook.wrk")" "$([ "$peer_ok" = 1 ] && wrk_ok_rps "$tmp/pgtghook.wrk")")"
printf '| %s | %s | %s | %s |\n' "WhatsApp webhooks (X-Hub-Signature-256) verified/s" \
    "$(num "$(wrk_ok_rps "$tmp/sbwahook.wrk")") ($(lat "$tmp/sbwahook.wrk"), err $(errs "$tmp/sbwahook.wrk"); $(num "$sbwahook_stored") stored)" \
    "Express + HMAC: $(pv "$([ "$peer_ok" = 1 ] && wrk_ok_rps "$tmp/pgwahook.wrk")" pgwahook)" \
    "$(ratio "$(wrk_ok_rps "$tmp/sbwahook.wrk")" "$([ "$peer_ok" = 1 ] && wrk_ok_rps "$tmp/pgwahook.wrk")")"
printf '| %s | %s | %s | %s |\n' "WhatsApp sends accepted/s" \
    "$(num "$sbwasend_acc") ($(lat "$tmp/sbwasend.wrk"), err $(errs "$tmp/sbwasend.wrk"))" \
    "node:http: $(pv "${pgwasend_acc:-}" pgwasend)" "$(ratio "$sbwasend_acc" "${pgwasend_acc:-}")"
printf '| %s | %s | %s | %s |\n' "WhatsApp sends at the fake/s" \
    "$(num "$sbwasend_del") (run + drain $sbwasend_drain s; $(num "$sbwasend_fake") at the fake, $(num "$sbwasend_sent") sent; wrk read $(num "$sbwasend_n") answers)" \
    "business SDK: $(pv "${pgwasdk_acc:-}" pgwasdk)" "$(ratio "$sbwasend_del" "${pgwasdk_acc:-}") (vs SDK)"
printf '| %s | %s | %s | %s |\n' "switchboardd RSS after the runs" "$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f MiB", k / 1024}')" "" ""
