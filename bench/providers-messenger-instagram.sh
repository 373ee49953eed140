#!/bin/bash
# switchboard provider benchmark, Messenger and Instagram: prints figures,
# builds nothing of the daemon, asserts nothing. About a minute.
#
#   bench/providers-messenger-instagram.sh     (after ./configure && make)
#
# The same set-up as bench/providers-meta-telegram.sh (bench/lib.sh): one
# private nginx (bench/fake-providers.nginx.conf.in, 1 worker) plays the Graph
# API's Send API (POST /<version>/me/messages answers {"recipient_id",
# "message_id"}), counting requests with stub_status. In one run on loopback,
# with wrk, for Messenger (object "page") and then Instagram (object
# "instagram"):
#   (a) sends: POST /v1/instances/{id}/messages, a distinct recipient per
#       request, accepted/s and delivered to the fake/s (outbox drained);
#   (b) inbound: webhooks signed X-Hub-Signature-256 (HMAC-SHA256 of the raw
#       body per request, bench/meta-webhook.lua), one message with a unique
#       mid each, verified, stored, acked;
# and the same jobs by the Node.js peer (bench/node-providers/peer.js, the
# same npm packages as the Telegram/WhatsApp bench, installed into ~/.cache):
# Express with Meta's documented HMAC check (crypto.timingSafeEqual) for the
# webhooks, node:http with a keep-alive agent for the Send API. The peer
# stores nothing and answers a send after delivery (no outbox).
#
# Environment: as bench/providers-meta-telegram.sh (SB_DAEMON, SB_PLUGIN_DIR,
# SB_MIGRATIONS_DIR, BENCH_DURATION, BENCH_THREADS, BENCH_CONNS,
# BENCH_DRAIN_MAX, BENCH_NODE_DIR, BENCH_SKIP_PEER, BENCH_KEEP).
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

[ -x "$DAEMON" ] || die "daemon not found at $DAEMON (build first, or set SB_DAEMON)"
need_tools
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-mibench.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT TERM

peer_install
start_fake
start_daemon messenger instagram

FB_PAGE=1357924680
FB_TOKEN="EAAPage$(rand_hex 8)"
FB_APP_SECRET="fb-app-secret-$(rand_hex 12)"
IG_ID=17841400000000000
IG_TOKEN="IGQVbench$(rand_hex 8)"
IG_APP_SECRET="ig-app-secret-$(rand_hex 12)"

fb=$(create messenger fb "{\"page_id\":\"$FB_PAGE\",\"api_base\":\"$fake\"}" \
    "{\"page_access_token\":\"$FB_TOKEN\",\"app_secret\":\"$FB_APP_SECRET\",\"verify_token\":\"bench\"}") ||
    die "could not create the messenger instance"
ig=$(create instagram ig "{\"ig_account_id\":\"$IG_ID\",\"api_base\":\"$fake\"}" \
    "{\"access_token\":\"$IG_TOKEN\",\"app_secret\":\"$IG_APP_SECRET\",\"verify_token\":\"bench\"}") ||
    die "could not create the instagram instance"
wait_connected "$fb"
wait_connected "$ig"

mbody() { # mbody OBJECT ID: one signed-webhook body
    echo "{\"object\":\"$1\",\"entry\":[{\"id\":\"$2\",\"time\":1700000000000,\"messaging\":[{\"sender\":{\"id\":\"6543210987\"},\"recipient\":{\"id\":\"$2\"},\"timestamp\":1700000000000,\"message\":{\"mid\":\"m_WARM\",\"text\":\"warm\"}}]}]}"
}
fbbody=$(mbody page "$FB_PAGE")
igbody=$(mbody instagram "$IG_ID")

# Sanity: one send each reaches the fake; signatures checked.
for i in $fb $ig; do
    code=$(post "$base/v1/instances/$i/messages" '{"to":"6543210987","text":"warm-up"}' "Authorization: $auth")
    [ "$code" = 202 ] || die "send API answered $code"
done
warm_sent 2
[ "$(post "$base/webhook/messenger/$fb" "$fbbody" "X-Hub-Signature-256: $(meta_sig "$FB_APP_SECRET" "$fbbody")")" = 200 ] ||
    die "signed messenger webhook refused"
[ "$(post "$base/webhook/instagram/$ig" "$igbody" "X-Hub-Signature-256: $(meta_sig "$IG_APP_SECRET" "$igbody")")" = 200 ] ||
    die "signed instagram webhook refused"
code=$(post "$base/webhook/messenger/$fb" "$fbbody" "X-Hub-Signature-256: $badsig")
[ "$code" = 403 ] || die "badly signed messenger webhook answered $code"

note "daemon pid $daemon_pid; messenger $fb, instagram $ig; fake Graph API $fake"
note "wrk -t$THREADS -c$CONNS -d${DURATION}s per job"
BENCH_TAG="r$$x$(date +%s)"
export BENCH_TAG
fb_env() { META_APP_SECRET=$FB_APP_SECRET META_ID=$FB_PAGE META_OBJECT=page "$@"; }
ig_env() { META_APP_SECRET=$IG_APP_SECRET META_ID=$IG_ID META_OBJECT=instagram "$@"; }

note "(a) switchboard: messenger sends"
sb_send sbfbsend "$fb"
note "(b) switchboard: messenger webhooks"
fb_env sb_hook sbfbhook "$base/webhook/messenger/$fb" "$here/meta-webhook.lua"
note "(c) switchboard: instagram sends"
sb_send sbigsend "$ig"
note "(d) switchboard: instagram webhooks"
ig_env sb_hook sbighook "$base/webhook/instagram/$ig" "$here/meta-webhook.lua"
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status")
stop_daemon

# ---------------------------------------------------------------- the Node.js peer
if peer_ready; then
    express_v=$(npm_version express)
    start_peer GRAPH_BASE="$fake" FB_TOKEN="$FB_TOKEN" FB_APP_SECRET="$FB_APP_SECRET" \
        IG_TOKEN="$IG_TOKEN" IG_APP_SECRET="$IG_APP_SECRET"
    for p in /fb/send /ig/send; do
        code=$(post "$peer$p" '{"to":"6543210987","text":"warm-up"}')
        [ "$code" = 200 ] || die "peer $p answered $code: $(tail -5 "$tmp/peer.log")"
    done
    [ "$(post "$peer/fb/webhook" "$fbbody" "X-Hub-Signature-256: $(meta_sig "$FB_APP_SECRET" "$fbbody")")" = 200 ] ||
        die "peer: signed messenger webhook refused: $(tail -5 "$tmp/peer.log")"
    [ "$(post "$peer/ig/webhook" "$igbody" "X-Hub-Signature-256: $(meta_sig "$IG_APP_SECRET" "$igbody")")" = 200 ] ||
        die "peer: signed instagram webhook refused"
    [ "$(post "$peer/fb/webhook" "$fbbody" "X-Hub-Signature-256: $badsig")" = 403 ] ||
        die "peer: badly signed messenger webhook not refused"

    note "(a) peer: messenger sends with node:http"
    peer_send pgfbsend /fb/send
    note "(b) peer: messenger webhooks, Express $express_v HMAC check"
    fb_env wrk_run pgfbhook "$peer/fb/webhook" "$here/meta-webhook.lua"
    note "(c) peer: instagram sends with node:http"
    peer_send pgigsend /ig/send
    note "(d) peer: instagram webhooks, Express HMAC check"
    ig_env wrk_run pgighook "$peer/ig/webhook" "$here/meta-webhook.lua"
fi

# ---------------------------------------------------------------- table
echo
echo "switchboard Messenger/Instagram bench: wrk -t$THREADS -c$CONNS -d${DURATION}s on 127.0.0.1 ($(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end); fake Graph API: nginx return 200, 1 worker"
if [ "$peer_ok" = 1 ]; then
    echo "peer: node $(node --version), Express $express_v + node:crypto HMAC, node:http Send API (stores nothing; answers a send after delivery)"
fi
row "job" "switchboardd (durable)" "Node peer" "ratio"
row "---" "---" "---" "---"
send_rows "Messenger" sbfbsend pgfbsend "node:http"
hook_row "Messenger webhooks (X-Hub-Signature-256) verified/s" sbfbhook pgfbhook "Express + HMAC"
send_rows "Instagram" sbigsend pgigsend "node:http"
hook_row "Instagram webhooks (X-Hub-Signature-256) verified/s" sbighook pgighook "Express + HMAC"
row "switchboardd RSS after the runs" "$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f MiB", k / 1024}')" "" ""
