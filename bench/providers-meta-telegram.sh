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
#       raw body, per request through LuaJIT FFI, bench/meta-webhook.lua), a
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

[ -x "$DAEMON" ] || die "daemon not found at $DAEMON (build first, or set SB_DAEMON)"
need_tools
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-provbench.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT TERM

peer_install
start_fake
start_daemon telegram whatsapp-official

TG_TOKEN="123456:bench-$(rand_hex 8)"
TG_SECRET="tgsecret_$(rand_hex 12)"
WA_PHONE_ID=106540352242922
WA_TOKEN="EAAbench$(rand_hex 8)"
WA_APP_SECRET="wa-app-secret-$(rand_hex 12)"
export TG_SECRET

tg=$(create telegram tg "{\"mode\":\"webhook\",\"public_url\":\"$base\",\"api_base\":\"$fake\",\"pace_global_per_second\":0}" \
    "{\"bot_token\":\"$TG_TOKEN\",\"webhook_secret\":\"$TG_SECRET\"}") || die "could not create the telegram instance"
wa=$(create whatsapp-official wa "{\"phone_number_id\":\"$WA_PHONE_ID\",\"waba_id\":\"102290129340398\",\"api_base\":\"$fake\"}" \
    "{\"access_token\":\"$WA_TOKEN\",\"app_secret\":\"$WA_APP_SECRET\",\"verify_token\":\"bench-verify\"}") ||
    die "could not create the whatsapp-official instance"
wait_connected "$tg"
wait_connected "$wa"

tgbody='{"update_id":1,"message":{"message_id":1,"date":1700000000,"from":{"id":7,"is_bot":false,"first_name":"A"},"chat":{"id":7,"type":"private"},"text":"warm"}}'
wabody="{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"102290129340398\",\"changes\":[{\"field\":\"messages\",\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{\"display_phone_number\":\"15550783881\",\"phone_number_id\":\"$WA_PHONE_ID\"},\"contacts\":[{\"profile\":{\"name\":\"Ada\"},\"wa_id\":\"15550001111\"}],\"messages\":[{\"from\":\"15550001111\",\"id\":\"wamid.WARM\",\"timestamp\":\"1700000000\",\"type\":\"text\",\"text\":{\"body\":\"warm\"}}]}}]}]}"

# Sanity: one send each reaches the fake; right secrets/signatures accepted, wrong refused.
for i in $tg $wa; do
    code=$(post "$base/v1/instances/$i/messages" '{"to":"4242","text":"warm-up"}' "Authorization: $auth")
    [ "$code" = 202 ] || die "send API answered $code"
done
warm_sent 2
[ "$(post "$base/webhook/telegram/$tg" "$tgbody" "X-Telegram-Bot-Api-Secret-Token: $TG_SECRET")" = 200 ] ||
    die "telegram webhook with the secret refused"
[ "$(post "$base/webhook/telegram/$tg" "$tgbody" "X-Telegram-Bot-Api-Secret-Token: nope")" = 401 ] ||
    die "telegram webhook with a wrong secret not refused"
[ "$(post "$base/webhook/whatsapp-official/$wa" "$wabody" "X-Hub-Signature-256: $(meta_sig "$WA_APP_SECRET" "$wabody")")" = 200 ] ||
    die "signed whatsapp webhook refused"
code=$(post "$base/webhook/whatsapp-official/$wa" "$wabody" "X-Hub-Signature-256: $badsig")
[ "$code" = 401 ] || [ "$code" = 403 ] || die "badly signed whatsapp webhook answered $code"

note "daemon pid $daemon_pid; telegram $tg, whatsapp-official $wa; fake APIs $fake"
note "wrk -t$THREADS -c$CONNS -d${DURATION}s per job"
BENCH_TAG="r$$x$(date +%s)"
export BENCH_TAG
wa_env() { META_APP_SECRET=$WA_APP_SECRET META_ID=$WA_PHONE_ID META_OBJECT=whatsapp_business_account "$@"; }

note "(a) switchboard: telegram sends"
sb_send sbtgsend "$tg"
note "(b) switchboard: telegram webhooks"
BENCH_BASE_ID=$((RANDOM * 1000)) sb_hook sbtghook "$base/webhook/telegram/$tg" "$here/tg-webhook.lua"
note "(c) switchboard: whatsapp webhooks"
wa_env sb_hook sbwahook "$base/webhook/whatsapp-official/$wa" "$here/meta-webhook.lua"
note "(d) switchboard: whatsapp sends"
sb_send sbwasend "$wa"
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status")
stop_daemon

# ---------------------------------------------------------------- the Node.js peer
if peer_ready; then
    grammy_v=$(npm_version grammy) express_v=$(npm_version express) fbsdk_v=$(npm_version facebook-nodejs-business-sdk)
    start_peer TG_API_ROOT="$fake" TG_TOKEN="$TG_TOKEN" TG_SECRET="$TG_SECRET" GRAPH_BASE="$fake" \
        WA_PHONE_ID="$WA_PHONE_ID" WA_TOKEN="$WA_TOKEN" WA_APP_SECRET="$WA_APP_SECRET"
    for p in /tg/send /wa/send /wa/send-sdk; do
        code=$(post "$peer$p" '{"to":"4242","text":"warm-up"}')
        [ "$code" = 200 ] || die "peer $p answered $code: $(tail -5 "$tmp/peer.log")"
    done
    [ "$(post "$peer/tg/webhook" "$tgbody" "X-Telegram-Bot-Api-Secret-Token: $TG_SECRET")" = 200 ] ||
        die "peer: telegram webhook with the secret refused: $(tail -5 "$tmp/peer.log")"
    [ "$(post "$peer/tg/webhook" "$tgbody" "X-Telegram-Bot-Api-Secret-Token: nope")" = 401 ] ||
        die "peer: telegram webhook with a wrong secret not refused"
    [ "$(post "$peer/wa/webhook" "$wabody" "X-Hub-Signature-256: $(meta_sig "$WA_APP_SECRET" "$wabody")")" = 200 ] ||
        die "peer: signed whatsapp webhook refused"
    [ "$(post "$peer/wa/webhook" "$wabody" "X-Hub-Signature-256: $badsig")" = 403 ] ||
        die "peer: badly signed whatsapp webhook not refused"

    note "(a) peer: grammY $grammy_v sendMessage"
    peer_send pgtgsend /tg/send
    note "(b) peer: grammY webhookCallback"
    BENCH_BASE_ID=$((RANDOM * 1000)) wrk_run pgtghook "$peer/tg/webhook" "$here/tg-webhook.lua"
    note "(c) peer: Express $express_v HMAC check"
    wa_env wrk_run pgwahook "$peer/wa/webhook" "$here/meta-webhook.lua"
    note "(d) peer: WhatsApp sends with node:http, then with facebook-nodejs-business-sdk $fbsdk_v"
    peer_send pgwasend /wa/send
    peer_send pgwasdk /wa/send-sdk
fi

# ---------------------------------------------------------------- table
echo
echo "switchboard provider bench: wrk -t$THREADS -c$CONNS -d${DURATION}s on 127.0.0.1 ($(nproc) CPUs); fake Bot API + Graph API: nginx return 200, 1 worker"
if [ "$peer_ok" = 1 ]; then
    echo "peer: node $(node --version), grammY $grammy_v, Express $express_v, facebook-nodejs-business-sdk $fbsdk_v (stores nothing; answers a send after delivery)"
fi
row "job" "switchboardd (durable)" "Node peer" "ratio"
row "---" "---" "---" "---"
send_rows "Telegram (distinct chats)" sbtgsend pgtgsend "grammY sendMessage"
hook_row "Telegram webhooks (secret token) acked/s" sbtghook pgtghook "grammY webhookCallback"
hook_row "WhatsApp webhooks (X-Hub-Signature-256) verified/s" sbwahook pgwahook "Express + HMAC"
send_rows "WhatsApp" sbwasend pgwasend "node:http"
row "WhatsApp sends, business SDK" "" "$(pv "$(ok_rps pgwasdk)" pgwasdk)" "$(ratio "$sbwasend_del" "$(ok_rps pgwasdk)") (delivered vs SDK)"
row "switchboardd RSS after the runs" "$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f MiB", k / 1024}')" "" ""
