#!/bin/sh
# Database tests: tests/unit/test_db against a private MariaDB server started
# here (tests/db/mariadb.sh), plus the embedded launcher (SB_TEST_EMBEDDED=1:
# host/mariadb.c starts its own servers in temp state dirs). Without
# mariadbd only the URL-parsing tests run and the result is SKIP (77).
# Env (from tests/Makefile.am): SB_TOP_SRCDIR, SB_TOP_BUILDDIR.
here=$(cd "$(dirname "$0")" && pwd)
: "${SB_TOP_SRCDIR:=$(cd "$here/../.." && pwd)}"
: "${SB_TOP_BUILDDIR:=$SB_TOP_SRCDIR}"
export SB_TOP_SRCDIR SB_TOP_BUILDDIR
test_db=$SB_TOP_BUILDDIR/tests/unit/test_db
. "$SB_TOP_SRCDIR/tests/db/mariadb.sh"

if ! sb_mariadb_found; then
    unset SB_MARIADB_SOCKET SB_TEST_EMBEDDED
    "$test_db" || exit 1
    echo "SKIP: mariadbd is not installed (apt-get install mariadb-server)" >&2
    exit 77
fi
if [ ! -d "$SB_TOP_BUILDDIR/build/migrations/core" ]; then
    echo "FAIL: $SB_TOP_BUILDDIR/build/migrations is missing: run make at the top first" >&2
    exit 1
fi

dir=$(mktemp -d /tmp/sbdb-XXXXXX) || exit 1
cleanup() {
    sb_mariadb_stop "$dir"
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
sb_mariadb_start "$dir" || exit 1
SB_TEST_EMBEDDED=1 "$test_db"
rc=$?
exit $rc
