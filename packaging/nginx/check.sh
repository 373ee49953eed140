#!/bin/sh
# Validate switchboard.conf with `nginx -t` inside a throw-away main config.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { echo "nginx not installed: skipped"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/nginx.conf" <<EOT
pid $tmp/nginx.pid;
error_log $tmp/error.log;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $tmp/body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;
    include $here/switchboard.conf;
}
EOT
PATH=$PATH:/usr/sbin nginx -t -q -p "$tmp" -c "$tmp/nginx.conf"
echo "nginx: switchboard.conf OK"
