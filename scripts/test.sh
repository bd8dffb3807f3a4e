#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: unit tests, then integration tests
# against a real 3-node ejabberd cluster, Prosody and the gateway process. Extra arguments go
# to pytest. Exits non-zero on any failure, and also when pytest collected no test at all.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests: that is a failure, not a pass" >&2
    exit 1
fi
exit "$rc"
