# Helpers shared by the bench scripts; source it: . "$here/lib.sh"

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
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
