# Helpers shared by the bench scripts; source it: . "$here/lib.sh"

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }

# A port that was free a moment ago.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL [seconds]: poll until the URL answers 2xx.
wait_http() {
    local url=$1 deadline=$((SECONDS + ${2:-15}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

now() { date +%s.%N; }
# CPU ticks (user + system) of a process, 0 when gone.
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Busy ticks of the whole machine (all CPUs) and, apart, the interrupt share
# (loopback networking is mostly softirq, charged to no process).
sys_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $7 + $8}' /proc/stat; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

# ---- provider benches (providers-meta-telegram.sh, providers-messenger-instagram.sh) ----
# They share: a private nginx playing the providers' APIs
# (fake-providers.nginx.conf.in), one daemon, wrk jobs, and a Node peer from
# bench/node-providers installed into ~/.cache. The script sets here, top,
# tmp, THREADS, CONNS, DURATION and DRAIN_MAX; the helpers set fake, base,
# auth and the *_pid variables that cleanup() stops.

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }

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

# need_tools: wrk, curl, python3, nginx (sets NGINX), and node/npm unless SKIP_PEER=1.
need_tools() {
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
}

# peer_install: npm install of bench/node-providers into NODE_DIR, in the background.
peer_install() {
    [ "$SKIP_PEER" != 1 ] || return 0
    mkdir -p "$NODE_DIR"
    cp "$here/node-providers/package.json" "$here/node-providers/package-lock.json" \
        "$here/node-providers/peer.js" "$NODE_DIR/"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error) >"$tmp/npm.log" 2>&1 &
    npm_pid=$!
}

# peer_ready: 0 when the install finished well (sets peer_ok).
peer_ready() {
    peer_ok=0
    [ "$SKIP_PEER" != 1 ] || return 1
    note "peer: waiting for npm install"
    if wait "$npm_pid"; then
        peer_ok=1
    else
        note "npm install failed: $(tail -3 "$tmp/npm.log")"
    fi
    npm_pid=
    [ "$peer_ok" = 1 ]
}

# start_fake: the nginx fake APIs on a free port; sets fake.
start_fake() {
    local fport
    mkdir -p "$tmp/nginx"
    fport=$(free_port)
    sed -e "s|@PORT@|$fport|g" -e "s|@PREFIX@|$tmp/nginx|g" "$here/fake-providers.nginx.conf.in" \
        >"$tmp/nginx/nginx.conf"
    "$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" \
        -g 'daemon off;' 2>>"$tmp/nginx/error.log" &
    nginx_pid=$!
    fake="http://127.0.0.1:$fport"
    wait_http "$fake/status" 10 || die "fake APIs (nginx) did not start: $(tail -1 "$tmp/nginx/error.log")"
}

# start_daemon PLUGIN...: switchboardd with those plugins on a free port; sets base, auth.
start_daemon() {
    local port p plugins='' key
    mkdir -p "$tmp/etc" "$tmp/plugins" "$tmp/state"
    for p in "$@"; do
        [ -f "$PLUGINS/$p.so" ] || die "$p.so not found in $PLUGINS (set SB_PLUGIN_DIR)"
        cp "$PLUGINS/$p.so" "$tmp/plugins/"
        plugins="$plugins${plugins:+, }\"$p\": {\"enabled\": true}"
    done
    port=$(free_port)
    cat >"$tmp/etc/switchboard.json" <<JSON
{
  "listen": {"address": "127.0.0.1", "port": $port},
  "log_level": "warn",
  "plugins": {$plugins},
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
}

stop_daemon() {
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || true
    daemon_pid=
}

rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

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

# Meta's X-Hub-Signature-256 of a body: meta_sig SECRET BODY
meta_sig() { python3 -c 'import hmac,hashlib,sys; print("sha256=" + hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())' "$1" "$2"; }
badsig="sha256=$(printf '0%.0s' $(seq 1 64))"

post() { # post URL BODY [HEADER...] -> status
    local url=$1 body=$2
    shift 2
    local h=()
    for x in "$@"; do h+=(-H "$x"); done
    curl -sS -o /dev/null -w '%{http_code}' -XPOST "$url" -H 'Content-Type: application/json' "${h[@]}" -d "$body"
}

# wrk_run NAME URL LUA: wrk with --latency, output in $tmp/NAME.wrk; wrk's
# own CPU ticks in $wrk_ticks (read just before it ends: it is gone after wait).
# A script may define wrk_before NAME and wrk_after NAME around it.
wrk_run() {
    local name=$1 url=$2 lua=$3 st
    ! declare -F wrk_before >/dev/null || wrk_before "$name"
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$lua" "$url" >"$tmp/$name.wrk" 2>&1 &
    wrk_pid=$!
    wrk_ticks=0
    while st=$(awk '{print $3, $14 + $15}' "/proc/$wrk_pid/stat" 2>/dev/null) && [ -n "$st" ]; do
        [ "${st%% *}" != Z ] || break
        wrk_ticks=${st#* }
        sleep 0.2
    done
    wait "$wrk_pid" || note "wrk $name exited $?"
    wrk_pid=
    ! declare -F wrk_after >/dev/null || wrk_after "$name"
}
wrk_rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
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

# warm_sent N: wait until switchboard_messages_sent_total reaches N.
warm_sent() {
    for _ in $(seq 1 100); do
        [ "$(metric switchboard_messages_sent_total)" -ge "$1" ] && return 0
        sleep 0.05
    done
    die "the warm-up messages did not reach the fake"
}

# sb_send NAME INSTANCE: sends through the API (bench/provider-send.lua), then
# wait for the outbox to drain. Sets NAME_acc NAME_n NAME_fake NAME_sent NAME_drain NAME_del.
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

# sb_hook NAME URL LUA: webhooks; sets NAME_stored (events the daemon stored).
sb_hook() {
    local st0
    st0=$(metric switchboard_events_stored_total)
    wrk_run "$1" "$2" "$3"
    sleep 0.5
    eval "${1}_stored=$(($(metric switchboard_events_stored_total) - st0))"
}

peer_send() { # peer_send NAME PATH: sets NAME_acc NAME_fake
    local f0 f1
    f0=$(fake_count)
    BENCH_TO_BASE=$((RANDOM * 100000 + 100000000)) wrk_run "$1" "$peer$2" "$here/provider-send.lua"
    f1=$(fake_count)
    eval "${1}_acc=\$(wrk_ok_rps \"\$tmp/\$1.wrk\")"
    eval "${1}_fake=$((f1 - f0 - 1))"
}

# start_peer ENV...: node peer.js on a free port with those variables; sets peer.
start_peer() {
    local pport
    pport=$(free_port)
    peer="http://127.0.0.1:$pport"
    env PORT="$pport" "$@" node "$NODE_DIR/peer.js" >"$tmp/peer.log" 2>&1 &
    peer_pid=$!
    wait_http "$peer/healthz" 20 || die "the Node peer did not start: $(tail -5 "$tmp/peer.log")"
}
npm_version() { node -p "require('$NODE_DIR/node_modules/$1/package.json').version"; }

# ---- the table ----
num() { [ -n "${1:-}" ] && awk -v n="$1" 'BEGIN {s = sprintf("%.0f", n); r = ""; while (length(s) > 3) {r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3)} print s r}' || echo "n/a"; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN {if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a"}'; }
errs() { echo $(($(wrk_non2xx "$1") + $(wrk_sockerr "$1"))); }
lat() { echo "p50 $(wrk_pct "$1" 50%) p99 $(wrk_pct "$1" 99%)"; }
pv() { [ "$peer_ok" = 1 ] && echo "$(num "$1") ($(lat "$tmp/$2.wrk"), err $(errs "$tmp/$2.wrk"))" || echo -; }
# ok_rps NAME: accepted/s of a run, or empty when it did not run.
ok_rps() { [ -f "$tmp/$1.wrk" ] && wrk_ok_rps "$tmp/$1.wrk" || true; }
row() { printf '| %s | %s | %s | %s |\n' "$@"; }
# send_rows LABEL SB PEER PEERLABEL: the two rows of a send job.
send_rows() {
    local l=$1 s=$2 p=$3 pl=$4
    row "$l sends accepted/s" \
        "$(num "$(eval echo "\$${s}_acc")") ($(lat "$tmp/$s.wrk"), err $(errs "$tmp/$s.wrk"))" \
        "$pl: $(pv "$(ok_rps "$p")" "$p")" "$(ratio "$(eval echo "\$${s}_acc")" "$(ok_rps "$p")")"
    row "$l sends at the fake/s" \
        "$(num "$(eval echo "\$${s}_del")") (run + drain $(eval echo "\$${s}_drain") s; $(num "$(eval echo "\$${s}_fake")") at the fake, $(num "$(eval echo "\$${s}_sent")") sent; wrk read $(num "$(eval echo "\$${s}_n")") answers)" \
        "$([ "$peer_ok" = 1 ] && echo "$(num "$(eval echo "\${${p}_fake:-0}")") in ${DURATION} s" || echo -)" ""
}
# hook_row LABEL SB PEER PEERLABEL
hook_row() {
    row "$1" "$(num "$(ok_rps "$2")") ($(lat "$tmp/$2.wrk"), err $(errs "$tmp/$2.wrk"); $(num "$(eval echo "\$${2}_stored")") stored)" \
        "$4: $(pv "$(ok_rps "$3")" "$3")" "$(ratio "$(ok_rps "$2")" "$(ok_rps "$3")")"
}
