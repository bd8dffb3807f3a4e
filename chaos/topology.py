"""The chaos suite's topology: the seed's set-up on loopback, with a Toxiproxy proxy between the
gateway and each real.

    clients (slixmpp, from 127.0.10.x) -> xmppgw on VIP (5222 STARTTLS, 5223 direct TLS, 5269
    s2s; SRV records on VIP:5353) -> toxiproxy on 127.0.6.N (one proxy per port) -> ejabberd
    node N on 127.0.2.N (5322 / 5323: ejabberd's default-backlog listeners; 5269)

The farm is conf/seed.toml's: leastconns, per real weight 5 and reassign 4, an xmpp-stream
probe, the fourth real (the spare, 127.0.6.4 -> 127.0.2.4) out of service; faildetect and retry
scaled down for a population of dozens (as conf/demo-failover.toml does). Every fault goes
through toxiproxy-python, against the bundled server (chaos.toxiproxy) or, when TOXIPROXY_URL
is set, against that one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from toxiproxy import Toxiproxy
from toxiproxy.proxy import Proxy

from chaos.toxiproxy import ThreadedToxiproxy
from tests.harness.servers import DEFAULT_BACKLOG_C2S_PORT, DEFAULT_BACKLOG_C2S_TLS_PORT, Servers

VIP = "127.0.1.70"
PROXY_NET = "127.0.6"  # real N of the farm is 127.0.6.N, a proxy to ejabberd node N
SPARE_NODE = "127.0.2.4"  # the seed's spare: out of service (no node runs there)
RETRY = 5
# vserver port -> the nodes' port behind the proxy
PORTS = {5222: DEFAULT_BACKLOG_C2S_PORT, 5223: DEFAULT_BACKLOG_C2S_TLS_PORT, 5269: 5269}


@dataclass(frozen=True)
class Real:
    index: int  # 0-based; the node's index in the harness's cluster (the spare: 3)
    node: str  # the ejabberd node's address
    address: str  # the gateway's real: the proxies' listen address

    def proxy_name(self, port: int) -> str:
        return f"real{self.index + 1}-{port}"


def reals(servers: Servers) -> list[Real]:
    nodes = [*servers.ejabberd_addresses, SPARE_NODE]
    return [Real(i, node, f"{PROXY_NET}.{i + 1}") for i, node in enumerate(nodes)]


def gateway_config(servers: Servers, control: Path, vip: str = VIP) -> str:
    domain = servers.ejabberd_domain
    real_lines = "".join(f"""
[[serverfarm.real]]
address = "{r.address}"
weight = 5
reassign = 4
faildetect = {{ numconns = 4, numclients = 2 }}
retry = {RETRY}
inservice = {str(r.node != SPARE_NODE).lower()}
""" for r in reals(servers))
    return f"""
[gateway]
name = "gw.{domain}"
domains = ["{domain}"]
log_connect = true
control_socket = "{control}"

[[vserver]]
name = "P5222"
virtual = "{vip}:5222"
mode = "starttls"
serverfarm = "XMPP"

[[vserver]]
name = "P5223"
virtual = "{vip}:5223"
mode = "directtls"
serverfarm = "XMPP"

[[vserver]]
name = "P5269"
virtual = "{vip}:5269"
mode = "starttls"
kinds = ["s2s"]
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
nat = "server"
predictor = "leastconns"
slowstart = 10

[[serverfarm.probe]]
type = "xmpp-stream"
domain = "{domain}"
expect_starttls = true
interval = 2
fall = 2
rise = 2
{real_lines}
[srv]
listen = "{vip}:5353"
"""


class Toxics:
    """The bundled Toxiproxy server (or TOXIPROXY_URL's), its proxies, driven through
    toxiproxy-python."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.server: ThreadedToxiproxy | None = None
        self.client = Toxiproxy()
        self.proxies: dict[str, Proxy] = {}

    def start(self) -> Toxics:
        url = os.environ.get("TOXIPROXY_URL")
        if url:
            parsed = urlparse(url)
            host, port = parsed.hostname or "127.0.0.1", parsed.port or 8474
        else:
            self.server = ThreadedToxiproxy("127.0.0.1", 0).start()
            host, port = self.server.host, self.server.port
        self.client.update_api_consumer(host, port)
        self.url = f"http://{host}:{port}"
        for real in reals(self.servers):
            for port_in, port_out in PORTS.items():
                name = real.proxy_name(port_in)
                if name in self.client.proxies():
                    self.client.get_proxy(name).destroy()
                self.proxies[name] = self.client.create(
                    upstream=f"{real.node}:{port_out}", name=name,
                    listen=f"{real.address}:{port_in}")
        return self

    def of(self, real: Real) -> list[Proxy]:
        return [self.proxies[real.proxy_name(p)] for p in PORTS]

    def add(self, real: Real, **toxic: object) -> None:
        for proxy in self.of(real):
            proxy.add_toxic(**toxic)

    def remove(self, real: Real, name: str) -> None:
        for proxy in self.of(real):
            proxy.destroy_toxic(name)

    def stop(self) -> None:
        for proxy in self.proxies.values():
            try:
                proxy.destroy()
            except Exception:  # noqa: BLE001, S110 - the server may be gone already
                pass
        self.proxies.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
