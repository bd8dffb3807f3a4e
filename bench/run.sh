#!/usr/bin/env bash
# xmppgw against HAProxy (TCP mode: its defaults, and at its best with splice-auto and tuned
# buffers) and a direct connection, on loopback: bulk throughput, stream opens/s and per CPU-
# second (STARTTLS and direct TLS, one worker and two, two also under a CPU quota per worker:
# bench/quota.py, cgroups, needs root), stanza round-trip latency, RSS per
# idle stream and per stream parked before STARTTLS. About 2 minutes a round.
#
#   bash bench/run.sh [--rounds 3] [--workers 1]
#
# Installs what it needs (haproxy and iperf3 from apt, uvloop and xmppgw via pip), prints the
# table and writes bench/results/latest.json and latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v iperf3 >/dev/null || need+=(iperf3)
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${need[@]}" || { apt-get update && apt-get install -y "${need[@]}"; }
fi
"$PY" -c 'import uvloop, structlog, xmppgw' 2>/dev/null || "$PY" -m pip install -e '.[fast]'

exec "$PY" bench/bench.py "$@"
