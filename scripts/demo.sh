#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the demo: a 3-node ejabberd cluster and Prosody on
# loopback, xmppgw in front with conf/demo.toml, and real clients logging in through it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
