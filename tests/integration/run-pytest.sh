#!/bin/sh
# Run the black-box integration suite (tests/integration/test_*.py) with the
# system interpreter. Exit 77 (automake "skipped") when pytest is missing.
# Env (from tests/Makefile.am): SB_TOP_SRCDIR, SB_DAEMON, SB_PLUGIN_DIR,
# SB_TEST_PLUGIN_DIR, SB_FIXTURES. Extra arguments go to pytest.
PY=/usr/bin/python3
if ! "$PY" -c 'import pytest' >/dev/null 2>&1; then
    echo "SKIP: $PY has no pytest module (apt-get install python3-pytest)" >&2
    exit 77
fi
if [ -z "$SB_TOP_SRCDIR" ]; then
    SB_TOP_SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
    export SB_TOP_SRCDIR
fi
# The source tree may be read-only (make distcheck): no cache, no bytecode.
PYTHONDONTWRITEBYTECODE=1
export PYTHONDONTWRITEBYTECODE
exec "$PY" -m pytest -p no:cacheprovider -q "$SB_TOP_SRCDIR/tests/integration" "$@"
