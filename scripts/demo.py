"""The demo: a real 3-node ejabberd cluster and a Prosody on loopback, xmppgw in front of
them with conf/demo.toml, and real clients logging in through it.

Run by `bash scripts/demo.sh` (which installs everything first). With a terminal it keeps
the gateway and servers running until Ctrl-C so you can point your own client at
127.0.1.1:5222 (alice@example.test / secret); without one it stops after the logins.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.client import xmpp_session
from tests.harness.fixtures import make_base_dir
from tests.harness.servers import Servers
from tests.support.gateway import GatewayProcess

VIP = "127.0.1.1"


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


async def log_in_everyone(servers: Servers, gateway: GatewayProcess) -> None:
    logins = [("alice", 5222, False), ("bob", 5223, True), ("carol", 5222, False)]
    for user, port, direct in logins:
        jid = servers.jid(user) + "/demo"
        async with xmpp_session(jid, servers.password, VIP, port, direct_tls=direct) as client:
            rtt = await client.plugin["xep_0199"].ping(jid=servers.ejabberd_domain, timeout=10)
            nodes = {s.jid.split("/")[0]: s.node for s in servers.ejabberd.connected_users_info()}
            how = "direct TLS" if direct else "STARTTLS"
            say(f"{jid} logged in through {VIP}:{port} ({how}), landed on "
                f"{nodes.get(servers.jid(user), '?')}, XEP-0199 ping {rtt * 1000:.1f} ms")
    async with xmpp_session(servers.jid("pat") + "/demo", servers.password, VIP, 5222):
        say(f"{servers.jid('pat')} logged in through {VIP}:5222, routed to Prosody by domain")


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                            cwd=ROOT)
    return (result.stdout + result.stderr).rstrip()


def show_operations() -> None:
    """What an operator sees: the IOS-style farm, the SRV records, a few metrics."""
    config = str(ROOT / "conf" / "demo.toml")
    say("$ xmppgw show serverfarms detail -c conf/demo.toml")
    print(run(sys.executable, "-m", "xmppgw", "show", "serverfarms", "detail", "-c", config))
    say(f"$ dig @{VIP} -p 5353 +short SRV _xmpp-client._tcp.example.test")
    print(run("dig", f"@{VIP}", "-p", "5353", "+short", "SRV",
              "_xmpp-client._tcp.example.test"))
    say(f"$ curl http://{VIP}:9105/metrics | grep xmppgw_connections_total")
    with urllib.request.urlopen(f"http://{VIP}:9105/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("xmppgw_connections_total"):
                print(line)


def main() -> int:
    base = make_base_dir()  # traversable by the ejabberd and prosody users
    say(f"starting a 3-node ejabberd cluster and Prosody under {base} ...")
    began = time.monotonic()
    with Servers(base) as servers:
        say(f"servers up in {time.monotonic() - began:.0f} s: ejabberd "
            f"{', '.join(servers.ejabberd_addresses)}, Prosody {servers.prosody_address}")
        gateway = GatewayProcess((ROOT / "conf" / "demo.toml").read_text(), base, "xmppgw")
        gateway.start()
        try:
            say(f"xmppgw running (pid {gateway.pid}), log in {gateway.log_path}")
            asyncio.run(log_in_everyone(servers, gateway))
            time.sleep(0.3)
            say("the gateway's connection lines:")
            for record in gateway.records("connection"):
                print("  " + json.dumps({k: record[k] for k in (
                    "client", "vserver", "kind", "to", "sni", "starttls", "real",
                    "bytes_from_client", "bytes_to_client", "duration", "error")}))
            show_operations()
            if sys.stdin.isatty():
                say(f"try your own client: alice@example.test / secret at {VIP}:5222 "
                    "(self-signed certificate). Ctrl-C stops everything.")
                try:
                    while gateway.proc and gateway.proc.poll() is None:
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
        finally:
            gateway.stop()
    say("stopped; everything torn down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
