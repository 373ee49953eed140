#!/bin/bash
# Packaging test (root, Debian 12): build the .debs from a copy of this tree,
# install them on this machine and check what an operator gets.
#
#   packaging/check.sh            everything below (about 2 minutes)
#   SB_PKG_PORT=3900              the port the installed daemon listens on
#
#  1. dpkg-buildpackage -us -uc -b in a scratch copy; lintian: no errors.
#  2. With the system MariaDB (started here if it is not running):
#     apt install ./switchboard_*.deb sets up dbconfig-common's database, the
#     switchboard user, a 0600 master key, the state dir, the conffile.
#     The daemon is started by systemd when systemd runs this machine, else
#     exactly as the unit would (its ExecStart as its User, UMask, no new
#     privileges, no capabilities, NOTIFY_SOCKET) and must say READY=1.
#     Then: the API answers; switchboard-plugin-echo installed afterwards
#     shows in /v1/providers without a restart, a reinstall swaps it live,
#     removal unloads it; switchboard-dev's plugin template builds with
#     pkg-config, and the daemon loads it from the plugin directory; a
#     reinstall of switchboard runs `switchboardd migrate`; SIGTERM stops it
#     (STOPPING=1, exit 0); purge removes config, key and state.
#  3. Without a reachable system MariaDB (only when this script started it):
#     the install says how to get one, and the daemon runs its embedded one.
#  4. rpmbuild -ta on `make dist`'s tarball (with --nodeps and
#     rpm/macros.fedora-compat: the BuildRequires are Fedora's).
#  5. packaging/nginx/check.sh and packaging/kubernetes/check.sh.
# Everything installed is purged at the end; a MariaDB started here is stopped.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
port=${SB_PKG_PORT:-3900}
work=$(mktemp -d /tmp/sb-pkgcheck.XXXXXX)
export DEBIAN_FRONTEND=noninteractive
daemon_pid=""
notify_pid=""
started_mariadb=""
use_systemd=""
[ -d /run/systemd/system ] && use_systemd=1

say() { printf '== %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    [ -f "$work/daemon.err" ] && tail -n 20 "$work/daemon.err" >&2
    exit 1
}

cleanup() {
    set +e
    stop_daemon >/dev/null 2>&1
    purge_all >/dev/null 2>&1
    [ -n "$started_mariadb" ] && /etc/init.d/mariadb stop >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

need() {
    local missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        apt-get update -q >/dev/null
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing >/dev/null
    fi
}

purge_all() {
    local pkgs
    pkgs=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' 'switchboard*' 2>/dev/null |
        awk '$2 ~ /^[ir]/ {print $1}' | grep -v dbgsym || true)
    if [ -n "$pkgs" ]; then
        # dbconfig-common: drop the database too (its default keeps it).
        echo "switchboard switchboard/purge boolean true" | debconf-set-selections
        # shellcheck disable=SC2086
        apt-get purge -y -q $pkgs >"$work/purge.log" 2>&1
    fi
}

api() { curl -sS --max-time 5 "$@"; }
providers() { api -H "Authorization: Bearer $admin_key" "http://127.0.0.1:$port/v1/providers"; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local t=$(( $1 * 10 )) what=$2
    shift 2
    while [ $t -gt 0 ]; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
        t=$((t - 1))
    done
    fail "timed out waiting for: $what"
}

unit_value() { sed -n "s/^$1=//p" /lib/systemd/system/switchboard.service | tail -n 1; }

start_daemon() {
    : >"$work/daemon.err"
    if [ -n "$use_systemd" ]; then
        mkdir -p /run/systemd/system/switchboard.service.d
        printf '[Service]\nEnvironment=MULTI_PROVIDER_PORT=%s\n' "$port" \
            >/run/systemd/system/switchboard.service.d/port.conf
        systemctl daemon-reload
        systemctl restart switchboard
        systemctl is-active --quiet switchboard || fail "systemctl start switchboard"
        journalctl -u switchboard -o cat --since "-2min" >"$work/daemon.err"
    else
        rm -f "$work/notify.sock" "$work/notify.log"
        python3 -c '
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666)
with open(sys.argv[2], "a") as out:
    while True:
        out.write(s.recv(4096).decode() + "\n"); out.flush()
' "$work/notify.sock" "$work/notify.log" &
        notify_pid=$!
        wait_for 5 "notify socket" test -S "$work/notify.sock"
        chmod 0711 "$work"
        local exec_start user group umask_v
        exec_start=$(unit_value ExecStart)
        user=$(unit_value User)
        group=$(unit_value Group)
        umask_v=$(unit_value UMask)
        # shellcheck disable=SC2086
        (cd / && umask "$umask_v" && exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            NOTIFY_SOCKET="$work/notify.sock" MULTI_PROVIDER_PORT="$port" \
            setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs \
            --bounding-set=-all --inh-caps=-all $exec_start) >>"$work/daemon.err" 2>&1 &
        daemon_pid=$!
        # NotifyAccess=main: only the daemon's own READY=1 counts.
        wait_for 120 "READY=1 from the daemon" daemon_ready
    fi
}

# The embedded mariadbd inherits NOTIFY_SOCKET and says READY=1 too (systemd
# ignores it: NotifyAccess=main), so wait for the notification and the
# listener both.
daemon_ready() {
    grep -qx 'READY=1' "$work/notify.log" &&
        curl -sf --max-time 1 "http://127.0.0.1:$port/healthz" >/dev/null
}

stop_daemon() {
    if [ -n "$use_systemd" ]; then
        systemctl stop switchboard 2>/dev/null || true
        rm -rf /run/systemd/system/switchboard.service.d
        systemctl daemon-reload 2>/dev/null || true
    elif [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        local rc=0
        wait "$daemon_pid" || rc=$?
        daemon_pid=""
        [ $rc -eq 0 ] || fail "daemon exited $rc after SIGTERM"
        grep -qx 'STOPPING=1' "$work/notify.log" || fail "no STOPPING=1"
    fi
    if [ -n "$notify_pid" ]; then
        kill "$notify_pid" 2>/dev/null || true
        wait "$notify_pid" 2>/dev/null || true
        notify_pid=""
    fi
}

log_text() {
    if [ -n "$use_systemd" ]; then journalctl -u switchboard -o cat --since "-10min"; else cat "$work/daemon.err"; fi
}

# ---- 1. build ----------------------------------------------------------------
say "build (.debs in $work)"
need debhelper dpkg-dev lintian dbconfig-mysql rpm curl python3 pkgconf gcc make \
    mariadb-server libcunit1-dev libcurl4-openssl-dev libevent-dev libjansson-dev \
    libmariadb-dev libssl-dev libwslay-dev
mkdir -p "$work/src"
if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$top" && git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$work/src")
else
    cp -a "$top/." "$work/src/"
fi
(cd "$work/src" && rm -rf debian && ln -s packaging/debian debian &&
    dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log"
    fail "dpkg-buildpackage"
}
deb() { ls "$work"/"$1"_*.deb; }
say "lintian"
lintian "$work"/switchboard_*.changes >"$work/lintian.log" 2>&1 || true
cat "$work/lintian.log"
if grep -q '^E:' "$work/lintian.log"; then fail "lintian errors"; fi

# ---- 2. install with dbconfig-common and the system MariaDB --------------------
purge_all
if [ ! -S /run/mysqld/mysqld.sock ]; then
    say "starting the system MariaDB"
    /etc/init.d/mariadb start >/dev/null
    started_mariadb=1
fi

# A database left by an earlier run would hold its admin key: start afresh.
mysql -e "DROP DATABASE IF EXISTS switchboard; DROP USER IF EXISTS 'switchboard'@'localhost'"

say "install switchboard (dbconfig-common, system MariaDB)"
apt-get install -y -q "$(deb switchboard)" >"$work/install.log" 2>&1 || {
    cat "$work/install.log"
    fail "apt install switchboard"
}
getent passwd switchboard >/dev/null || fail "no switchboard user"
[ "$(stat -c '%a %U' /etc/switchboard/master.key)" = "600 switchboard" ] || fail "master key mode/owner"
grep -Eq '^k[0-9]+ [A-Za-z0-9+/]{43}=$' /etc/switchboard/master.key || fail "master key format"
[ "$(stat -c '%a %U' /var/lib/switchboard)" = "750 switchboard" ] || fail "state dir mode/owner"
dpkg-query -W -f='${Conffiles}' switchboard | grep -q '/etc/switchboard/switchboard.json' ||
    fail "switchboard.json is not a conffile"
[ "$(stat -c '%a %U %G' /etc/switchboard/conf.d/00-database.json)" = "640 root switchboard" ] ||
    fail "dbconfig-common did not set up the database (no conf.d/00-database.json)"
key_before=$(md5sum </etc/switchboard/master.key)

say "start the daemon ($([ -n "$use_systemd" ] && echo systemd || echo "by hand, as the unit would"))"
start_daemon
api -f "http://127.0.0.1:$port/healthz" >/dev/null || fail "/healthz"
api -f "http://127.0.0.1:$port/readyz" | grep -q '"database":"up"' || fail "/readyz"
if log_text | grep -q 'starting the embedded MariaDB'; then fail "used the embedded MariaDB despite dbconfig"; fi
admin_key=$(log_text | grep -o '"api_key":"sbk_[^"]*"' | head -n 1 | cut -d'"' -f4) || true
[ -n "$admin_key" ] || fail "no admin API key logged"
providers | grep -q '"providers":\[\]' || fail "providers not empty at start"

say "a plugin package installed on the running daemon"
apt-get install -y -q "$(deb switchboard-plugin-echo)" >"$work/install-echo.log" 2>&1 || fail "install echo"
wait_for 10 "echo in /v1/providers" sh -c "curl -sS -H 'Authorization: Bearer $admin_key' \
    http://127.0.0.1:$port/v1/providers | grep -q '\"name\":\"echo\"'"
api -f -XPOST "http://127.0.0.1:$port/webhook/echo/echo-demo" -d '{"text":"hi","from":"ci"}' |
    grep -q '"text":"hi"' || fail "echo webhook"
apt-get install -y -q --reinstall "$(deb switchboard-plugin-echo)" >>"$work/install-echo.log" 2>&1 ||
    fail "reinstall echo"
wait_for 10 "echo swapped (generation 2)" sh -c "curl -sS -H 'Authorization: Bearer $admin_key' \
    http://127.0.0.1:$port/v1/providers | grep -q '\"generation\":2'"
apt-get remove -y -q switchboard-plugin-echo >>"$work/install-echo.log" 2>&1 || fail "remove echo"
wait_for 10 "echo unloaded" sh -c "curl -sS -H 'Authorization: Bearer $admin_key' \
    http://127.0.0.1:$port/v1/providers | grep -q '\"providers\":\[\]'"

say "switchboard-dev: the plugin template, built out of tree with pkg-config"
apt-get install -y -q "$(deb switchboard-dev)" >"$work/install-dev.log" 2>&1 || fail "install dev"
cp -r /usr/share/switchboard/plugin-template "$work/myprovider"
make -C "$work/myprovider" >"$work/template.log" 2>&1 || { cat "$work/template.log"; fail "template build"; }
make -C "$work/myprovider" install >>"$work/template.log" 2>&1 || fail "template install"
echo '{"plugins":{"myprovider":{}},"instances":{"my-1":{"provider":"myprovider","settings":{}}}}' \
    >/etc/switchboard/conf.d/90-myprovider.json
wait_for 10 "myprovider in /v1/providers" sh -c "curl -sS -H 'Authorization: Bearer $admin_key' \
    http://127.0.0.1:$port/v1/providers | grep -q '\"name\":\"myprovider\"'"
rm -f /etc/switchboard/conf.d/90-myprovider.json /usr/lib/switchboard/plugins/myprovider.so

say "upgrade (reinstall) runs the migrations; the key is kept"
apt-get install -y -q --reinstall "$(deb switchboard)" >"$work/upgrade.log" 2>&1 || fail "reinstall"
grep -q 'migrations applied' "$work/upgrade.log" || { cat "$work/upgrade.log"; fail "no migrate on upgrade"; }
[ "$(md5sum </etc/switchboard/master.key)" = "$key_before" ] || fail "master key changed on upgrade"
[ -n "$use_systemd" ] || kill -0 "$daemon_pid" || fail "daemon died during the upgrade"

say "stop, purge"
stop_daemon
purge_all
[ ! -e /etc/switchboard ] || fail "/etc/switchboard left after purge"
[ ! -e /var/lib/switchboard ] || fail "/var/lib/switchboard left after purge"

# ---- 3. no system MariaDB: the embedded fallback --------------------------------
if [ -n "$started_mariadb" ]; then
    /etc/init.d/mariadb stop >/dev/null
    started_mariadb=""
    say "install without a running MariaDB: embedded fallback"
    apt-get install -y -q "$(deb switchboard)" >"$work/install2.log" 2>&1 || fail "install (no MariaDB)"
    grep -q 'runs its own MariaDB' "$work/install2.log" || { cat "$work/install2.log"; fail "no fallback message"; }
    [ ! -e /etc/switchboard/conf.d/00-database.json ] || fail "00-database.json without a database"
    start_daemon
    api -f "http://127.0.0.1:$port/readyz" | grep -q '"database":"up"' || fail "/readyz (embedded)"
    log_text | grep -q 'starting the embedded MariaDB' || fail "embedded MariaDB not used"
    stop_daemon
    purge_all
else
    say "the system MariaDB was already running: embedded fallback not tested"
fi

# ---- 4. rpm ---------------------------------------------------------------------
say "rpmbuild -ta on the dist tarball"
make -C "$work/src" dist >"$work/dist.log" 2>&1 || { tail -n 20 "$work/dist.log"; fail "make dist"; }
rpmbuild --load "$top/packaging/rpm/macros.fedora-compat" --nodeps --define "_topdir $work/rpm" \
    -ta "$work"/src/switchboard-*.tar.gz >"$work/rpm.log" 2>&1 || { tail -n 30 "$work/rpm.log"; fail "rpmbuild"; }
for p in switchboard switchboard-plugin-echo switchboard-devel; do
    ls "$work"/rpm/RPMS/*/"$p"-[0-9]*.rpm >/dev/null || fail "no $p rpm"
done
rpm -qlp "$work"/rpm/RPMS/*/switchboard-plugin-echo-[0-9]*.rpm 2>/dev/null |
    grep -qx /usr/lib/switchboard/plugins/echo.so || fail "echo.so not in the plugin rpm"

# ---- 5. samples -----------------------------------------------------------------
say "nginx sample"
"$top/packaging/nginx/check.sh"
say "kubernetes samples"
SB_DAEMON=$(ls "$work"/src/host/switchboardd 2>/dev/null || true) "$top/packaging/kubernetes/check.sh"

say "packaging checks passed"
