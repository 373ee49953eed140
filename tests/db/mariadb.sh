# Start and stop a private MariaDB server for tests. Source this file:
#
#   . "$SB_TOP_SRCDIR/tests/db/mariadb.sh"
#   sb_mariadb_found || { echo "SKIP: no mariadbd" >&2; exit 77; }
#   dir=$(mktemp -d /tmp/sbdb-XXXXXX)
#   sb_mariadb_start "$_sbm_dir" || exit 1     # sets SB_MARIADB_SOCKET
#   ...                                   # root, no password, socket only
#   sb_mariadb_stop "$_sbm_dir"; rm -rf "$_sbm_dir"
#
# The same recipe as host/mariadb.c: mariadb-install-db into <dir>/data,
# mariadbd --no-defaults --skip-networking with its socket, pid file and log
# in <dir>, small memory settings, its own session.

SB_MARIADBD=
SB_MARIADB_INSTALL_DB=

# 0 when a server and the install script are installed.
sb_mariadb_found() {
    for f in /usr/sbin/mariadbd /usr/sbin/mysqld; do
        [ -x "$f" ] && { SB_MARIADBD=$f; break; }
    done
    for f in /usr/bin/mariadb-install-db /usr/bin/mysql_install_db; do
        [ -x "$f" ] && { SB_MARIADB_INSTALL_DB=$f; break; }
    done
    [ -n "$SB_MARIADBD" ] && [ -n "$SB_MARIADB_INSTALL_DB" ]
}

# sb_mariadb_ping SOCKET: 0 when the server answers.
sb_mariadb_ping() {
    for admin in mariadb-admin mysqladmin; do
        if command -v "$admin" >/dev/null 2>&1; then
            "$admin" --no-defaults --socket="$1" -uroot ping >/dev/null 2>&1
            return
        fi
    done
    # No client tools: a socket that exists is the best we can tell.
    [ -S "$1" ]
}

# sb_mariadb_start DIR: initialise and start; sets SB_MARIADB_SOCKET and
# SB_MARIADB_PID. Waits up to 30 s. The log is DIR/mariadb.log.
sb_mariadb_start() {
    _sbm_dir=$1
    sb_mariadb_found || { echo "mariadbd not installed" >&2; return 1; }
    chmod 700 "$_sbm_dir" || return 1
    # A private tmpdir: servers sharing /tmp collide on temp table names.
    mkdir -p "$_sbm_dir/tmp" || return 1
    _sbm_user=$(id -un)
    if [ ! -d "$_sbm_dir/data/mysql" ]; then
        "$SB_MARIADB_INSTALL_DB" --no-defaults --datadir="$_sbm_dir/data" \
            --tmpdir="$_sbm_dir/tmp" --user="$_sbm_user" \
            --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
            --innodb-log-file-size=32M >"$_sbm_dir/install.log" 2>&1 || {
            echo "mariadb-install-db failed:" >&2
            grep -E "ERROR|error" "$_sbm_dir/install.log" | head -20 >&2
            return 1
        }
    fi
    SB_MARIADB_SOCKET=$_sbm_dir/mysqld.sock
    export SB_MARIADB_SOCKET
    setsid "$SB_MARIADBD" --no-defaults --datadir="$_sbm_dir/data" \
        --socket="$SB_MARIADB_SOCKET" --tmpdir="$_sbm_dir/tmp" --skip-networking \
        --pid-file="$_sbm_dir/mariadbd.pid" --log-error="$_sbm_dir/mariadb.log" \
        --user="$_sbm_user" --innodb-buffer-pool-size=64M --innodb-log-file-size=32M \
        --innodb-log-buffer-size=8M --key-buffer-size=8M --max-connections=64 \
        --performance-schema=OFF --skip-name-resolve --character-set-server=utf8mb4 \
        </dev/null >/dev/null 2>>"$_sbm_dir/mariadb.log" &
    SB_MARIADB_PID=$!
    _sbm_i=0
    while [ $_sbm_i -lt 300 ]; do
        if ! kill -0 "$SB_MARIADB_PID" 2>/dev/null; then
            echo "mariadbd exited during start-up:" >&2
            tail -20 "$_sbm_dir/mariadb.log" >&2
            return 1
        fi
        [ -S "$SB_MARIADB_SOCKET" ] && sb_mariadb_ping "$SB_MARIADB_SOCKET" && return 0
        sleep 0.1
        _sbm_i=$((_sbm_i + 1))
    done
    echo "mariadbd did not answer within 30 s:" >&2
    tail -20 "$_sbm_dir/mariadb.log" >&2
    sb_mariadb_stop "$_sbm_dir"
    return 1
}

# sb_mariadb_stop DIR: SIGTERM, wait up to 20 s, then SIGKILL.
sb_mariadb_stop() {
    _sbm_pidfile=$1/mariadbd.pid
    _sbm_pid=${SB_MARIADB_PID:-}
    [ -z "$_sbm_pid" ] && [ -f "$_sbm_pidfile" ] && _sbm_pid=$(cat "$_sbm_pidfile")
    [ -n "$_sbm_pid" ] || return 0
    kill -TERM "$_sbm_pid" 2>/dev/null || { SB_MARIADB_PID=; return 0; }
    _sbm_i=0
    while kill -0 "$_sbm_pid" 2>/dev/null && [ $_sbm_i -lt 200 ]; do
        sleep 0.1
        _sbm_i=$((_sbm_i + 1))
    done
    if kill -0 "$_sbm_pid" 2>/dev/null; then
        echo "mariadbd ignored SIGTERM: killing it" >&2
        # setsid made it a group leader: take anything it started too.
        kill -KILL -- "-$_sbm_pid" 2>/dev/null || kill -KILL "$_sbm_pid" 2>/dev/null
    fi
    wait "$_sbm_pid" 2>/dev/null
    SB_MARIADB_PID=
    return 0
}
