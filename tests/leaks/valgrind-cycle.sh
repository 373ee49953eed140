#!/bin/sh
# The daemon's start/stop cycle under valgrind: start with the echo plugin
# and its embedded MariaDB, serve a webhook and an API call, reload once
# (moving echo into plugin-host processes when SB_PLUGIN_HOST is set, so the
# supervisor and the IPC proxy are covered), SIGTERM, and require no leak
# and exit 0. The plugin-hosts themselves run outside valgrind.
# Skipped (77) in sanitizer builds, where valgrind cannot run.
set -u
if [ "${SB_SANITIZERS:-no}" = yes ]; then
    echo "sanitizer build: valgrind cycle skipped"; exit 77
fi
command -v valgrind >/dev/null || { echo "valgrind not installed"; exit 77; }
tmp=$(mktemp -d)
trap 'kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/conf.d" "$tmp/plugins" "$tmp/state"
cp "$SB_PLUGIN_DIR/echo.so" "$tmp/plugins/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host_line=""
isolation="inproc"
if [ -n "${SB_PLUGIN_HOST:-}" ]; then
    host_line="\"plugin_host\": \"$SB_PLUGIN_HOST\","
    isolation="process"
fi
cat > "$tmp/switchboard.json" <<JSON
{"listen": {"port": $port}, $host_line "plugins": {"echo": {}},
 "instances": {"demo": {"provider": "echo", "settings": {"prefix": "> "}}}}
JSON
# GNUTLS_NO_IMPLICIT_INIT set: the daemon does not re-execute itself (see
# host/main.c), which would leave valgrind behind.
GNUTLS_NO_IMPLICIT_INIT=1 valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --error-exitcode=99 \
    "$SB_DAEMON" --config "$tmp/switchboard.json" --plugin-dir "$tmp/plugins" \
    --state-dir "$tmp/state" --migrations-dir "$SB_MIGRATIONS_DIR" 2>"$tmp/log" &
pid=$!
up=0
for _ in $(seq 1 300); do
    if curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then up=1; break; fi
    sleep 0.2
done
[ $up = 1 ] || { echo "daemon did not come up"; cat "$tmp/log"; exit 1; }
curl -fs -XPOST "http://127.0.0.1:$port/webhook/echo/demo" -d '{"text":"hi"}' >/dev/null ||
    { echo "webhook failed"; cat "$tmp/log"; exit 1; }
key=$(grep -o '"api_key":"[^"]*"' "$tmp/log" | cut -d'"' -f4)
curl -fs -H "Authorization: Bearer $key" -XPOST "http://127.0.0.1:$port/v1/instances" \
    -d '{"provider":"echo","name":"v","secrets":{"token":"0123456789"}}' >/dev/null ||
    { echo "API create failed"; cat "$tmp/log"; exit 1; }
echo "{\"plugins\": {\"echo\": {\"isolation\": \"$isolation\"}}, \"instances\": {\"demo2\": {\"provider\": \"echo\"}}}" > "$tmp/conf.d/x.json"
ok=0
for _ in $(seq 1 50); do
    sleep 0.2
    curl -fs -XPOST "http://127.0.0.1:$port/webhook/echo/demo2" -d '{"text":"hi"}' >/dev/null &&
        { ok=1; break; }
done
[ $ok = 1 ] || { echo "reload did not add demo2 ($isolation)"; cat "$tmp/log"; exit 1; }
if [ $isolation = process ] && ! grep -q "running the instance" "$tmp/log"; then
    echo "echo did not move into plugin-hosts"; cat "$tmp/log"; exit 1
fi
kill -TERM $pid
wait $pid
rc=$?
if [ $rc -ne 0 ]; then
    echo "daemon exited $rc under valgrind:"; cat "$tmp/log"; exit 1
fi
echo "valgrind: no leaks, no errors, exit 0"
