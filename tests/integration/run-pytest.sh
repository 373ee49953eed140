#!/bin/sh
# Run the black-box integration suite (tests/integration/test_*.py) with the
# system interpreter, against one private MariaDB server for the whole run
# (each daemon gets a database of its own). Exit 77 (automake "skipped")
# when pytest or MariaDB is missing.
# Env (from tests/Makefile.am): SB_TOP_SRCDIR, SB_DAEMON, SB_PLUGIN_DIR,
# SB_TEST_PLUGIN_DIR, SB_MIGRATIONS_DIR, SB_FIXTURES. Extra arguments go to pytest.
PY=/usr/bin/python3
if ! "$PY" -c 'import pytest' >/dev/null 2>&1; then
    echo "SKIP: $PY has no pytest module (apt-get install python3-pytest)" >&2
    exit 77
fi
if [ -z "$SB_TOP_SRCDIR" ]; then
    SB_TOP_SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
    export SB_TOP_SRCDIR
fi
. "$SB_TOP_SRCDIR/tests/db/mariadb.sh"
sb_mariadb_found || { echo "SKIP: mariadbd not installed (apt-get install mariadb-server)" >&2; exit 77; }
dbdir=$(mktemp -d "${TMPDIR:-/tmp}/sb-pytest-db.XXXXXX")
trap 'sb_mariadb_stop "$dbdir"; rm -rf "$dbdir"' EXIT INT TERM
sb_mariadb_start "$dbdir" || exit 1
# The source tree may be read-only (make distcheck): no cache, no bytecode.
PYTHONDONTWRITEBYTECODE=1
export PYTHONDONTWRITEBYTECODE SB_MARIADB_SOCKET
"$PY" -m pytest -p no:cacheprovider -q "$SB_TOP_SRCDIR/tests/integration" "$@"
