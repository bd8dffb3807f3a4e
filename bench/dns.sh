#!/usr/bin/env bash
# dnsperf against xmppgw's embedded DNS server and against BIND 9 serving the same zone
# (one worker thread, then its default), on loopback. About 2 minutes with the defaults.
#
#   bash bench/dns.sh [--rounds 3] [--seconds 10]
#
# Installs what it needs (bind9, bind9-utils, dnsperf from apt; xmppgw via pip), prints the
# table and writes bench/results/dns-latest.json and dns-latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi

need=()
[[ -x /usr/sbin/named ]] || need+=(bind9)
command -v tsig-keygen >/dev/null || need+=(bind9-utils)
command -v dnsperf >/dev/null || need+=(dnsperf)
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${need[@]}" || { apt-get update && apt-get install -y "${need[@]}"; }
fi
# The packaged named would hold 0.0.0.0:53 beside ours; the bench runs its own.
if systemctl is-active --quiet named 2>/dev/null; then systemctl disable --now named; fi
"$PY" -c 'import dns, structlog, xmppgw' 2>/dev/null || "$PY" -m pip install -e '.[fast]'

exec "$PY" bench/dnsbench.py "$@"
