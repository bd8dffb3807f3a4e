#!/usr/bin/env bash
# Installs what the demo and the tests need on Debian 12: the real servers they run against
# (ejabberd, Prosody, BIND tools), systemd-analyze for the unit, and xmppgw with its test
# extras (python -m build among them) in a virtualenv (.venv).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(ejabberd prosody lua-unbound dnsutils bind9 bind9-utils dnsperf nftables
              iproute2 openssl procps python3 python3-venv python3-pip
              systemd)  # systemd-analyze: tests/integration/test_systemd.py verifies the unit
APT_PACKAGES+=(keepalived)  # VRRP for the gateway pair: tests/integration/test_pair.py
# The container image (scripts/container.sh, tests/integration/test_container.py): rootful
# podman with runc (crun needs cgroup v2), the base image from debootstrap
APT_PACKAGES+=(podman runc debootstrap debian-archive-keyring)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The packaged services would listen on 0.0.0.0:5222/5269 and collide with the loopback
# addresses the tests and the demo use (named: port 53); the tests start their own instances.
for svc in ejabberd prosody named; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        echo "setup: stopping and disabling the system $svc service (the tests run their own)"
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
done

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready ($(.venv/bin/python --version), $(.venv/bin/xmppgw --help >/dev/null && echo xmppgw installed))"
