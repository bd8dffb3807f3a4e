#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the failover demo (scripts/demo.py): a 3-node ejabberd
# cluster, a spare node, Prosody and DNS on loopback, xmppgw in front with
# conf/demo-failover.toml, a few dozen real clients pinging through it, and a scripted kill -9,
# restart, drain and spare, shown live. `--quick` shortens the waits, `--plain` (or no
# terminal, or CI set) prints lines instead of the live screen. Ctrl-C tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install -q -e '.[demo]' 2>/dev/null \
    || .venv/bin/python -m pip install -q 'rich>=13'
exec .venv/bin/python scripts/demo.py "$@"
