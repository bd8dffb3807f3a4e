#!/usr/bin/env bash
# Where xmppgw spends its time opening streams: the stream-open load of bench/run.sh against
# xmppgw alone, under py-spy (Python frames, then native frames). Writes
# bench/results/profile-handshake.txt. About 25 seconds.
#
#   bash bench/profile.sh [--seconds 10]
#   bash bench/profile.sh --cprofile --label NAME   cProfile call counts and the CPU per open,
#                                                   in bench/results/profiles/ (a busy machine)
#   bash bench/profile.sh --syscalls [--rounds 3]   user/kernel µs and system calls per open,
#                                                   HAProxy beside xmppgw (strace -c): bench/
#                                                   results/profiles/syscalls-per-open.txt
#
# Each run overwrites the committed file it writes (its header keeps the commit, "(modified)"
# for a changed tree, and the background CPU use: a busy run is worth discarding). What it
# needs and lacks is installed: xmppgw with its `fast` extra and py-spy into $PYTHON
# (default python3: use PYTHON=.venv/bin/python to keep the system Python as it is), strace
# and haproxy with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

"$PY" -c 'import uvloop, structlog, xmppgw' 2>/dev/null || "$PY" -m pip install -e '.[fast]'
command -v py-spy >/dev/null || "$PY" -m pip install py-spy
if [[ " $* " == *" --syscalls "* ]]; then
    command -v strace >/dev/null || apt-get install -y strace
    command -v haproxy >/dev/null || apt-get install -y haproxy
fi

exec "$PY" bench/bench.py profile "$@"
