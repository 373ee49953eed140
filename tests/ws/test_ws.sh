#!/bin/sh
# Runs tests/unit/test_ws against the npm `ws` package's server (server.js)
# on loopback, plain and TLS (a self-signed certificate made here, trusted
# through the client's CA-file option). Skips (exit 77) without node/npm or
# when `npm install ws@8` cannot reach the registry.
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=${SB_TOP_BUILDDIR:-$here/../..}/tests/unit/test_ws
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "SKIP: node and npm are needed (apt-get install nodejs npm)" >&2
    exit 77
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/sb-ws-test.XXXXXX")
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
if ! (cd "$dir" && timeout 180 npm install --no-audit --no-fund --no-save --silent ws@8 \
        >"$dir/npm.log" 2>&1); then
    echo "SKIP: npm install ws@8 failed (registry unreachable?):" >&2
    tail -5 "$dir/npm.log" >&2
    exit 77
fi
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/cert.pem" \
    -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost >/dev/null 2>&1 || {
    echo "cannot make a test certificate with openssl req" >&2
    exit 1
}
NODE_PATH="$dir/node_modules" node "$here/server.js" "$dir/cert.pem" "$dir/key.pem" \
    >"$dir/ports" 2>"$dir/server.log" &
pid=$!
i=0
while [ ! -s "$dir/ports" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -s "$dir/ports" ]; then
    echo "the ws server did not start:" >&2
    cat "$dir/server.log" >&2
    exit 1
fi
SB_WS_PORT=$(sed 's/.*"ws":\([0-9]*\).*/\1/' "$dir/ports")
SB_WSS_PORT=$(sed 's/.*"wss":\([0-9]*\).*/\1/' "$dir/ports")
SB_WS_CA="$dir/cert.pem"
export SB_WS_PORT SB_WSS_PORT SB_WS_CA
"$bin"
