"""The chaos suite's topology: the seed's set-up on loopback, with a Toxiproxy proxy between the
gateway and each real.

    clients (slixmpp, from 127.0.10.x) -> xmppgw on VIP (5222 STARTTLS, 5223 direct TLS, 5269
    s2s; SRV records on VIP:5353) -> toxiproxy on 127.0.66.N (one proxy per port) -> ejabberd
    node N on 127.0.2.N (5322 / 5323: ejabberd's default-backlog listeners; 5269)

The farm is conf/seed.toml's: leastconns, per real weight 5 and reassign 4, an xmpp-stream
probe, the fourth real (the spare, 127.0.66.4 -> 127.0.2.4) out of service; faildetect and retry
scaled down for a population of dozens (as conf/demo-failover.toml does). Every fault goes
through toxiproxy-python, against a Toxiproxy server chosen by `toxiproxy_server()`: the one
TOXIPROXY_URL names, else a real `toxiproxy-server` on PATH (started on a free port), else the
bundled one (chaos.toxiproxy, in a thread).

The clients' own links can go through toxiproxy too: `Toxics.client_links` are proxies in
front of the gateway's 5222 and 5223 (on CLIENT_NET, kernel-picked ports), for the toxics on
the client -> gateway leg.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from toxiproxy import Toxiproxy
from toxiproxy.proxy import Proxy

from chaos.toxiproxy import ThreadedToxiproxy
from tests.harness.servers import DEFAULT_BACKLOG_C2S_PORT, DEFAULT_BACKLOG_C2S_TLS_PORT, Servers

VIP = "127.0.1.70"
# Address blocks no other test uses (tests/integration/test_transport.py has 127.0.6.x), so a
# chaos run beside another helper's tests does not collide with them.
PROXY_NET = "127.0.66"  # real N of the farm is 127.0.66.N, a proxy to ejabberd node N
CLIENT_NET = "127.0.67.1"  # the client links' proxies: clients -> CLIENT_NET:port -> VIP
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


def reals(servers: Servers, net: str = PROXY_NET) -> list[Real]:
    """The farm's reals: the cluster's nodes and the spare, real N on `net`.N."""
    nodes = [*servers.ejabberd_addresses, SPARE_NODE]
    return [Real(i, node, f"{net}.{i + 1}") for i, node in enumerate(nodes)]


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
mass_close_streams = 10  # ctl_stop: out at its sessions' close
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ToxiproxyServer:
    """Which Toxiproxy server the suite drives, and its lifetime: TOXIPROXY_URL's (left
    running: not ours), else `toxiproxy-server` from PATH (a child process on a free port),
    else the bundled one in a thread. `kind` says which, for the results."""

    def __init__(self) -> None:
        self.bundled: ThreadedToxiproxy | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.kind = ""
        self.host, self.port = "127.0.0.1", 8474

    def start(self) -> ToxiproxyServer:
        url = os.environ.get("TOXIPROXY_URL")
        binary = shutil.which("toxiproxy-server")
        if url:
            parsed = urlparse(url if "//" in url else f"http://{url}")
            self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 8474
            self.kind = f"TOXIPROXY_URL ({url})"
        elif binary:
            self.port = _free_port()
            self.process = subprocess.Popen(
                [binary, "-host", self.host, "-port", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._wait_listening()
            self.kind = f"{binary} (pid {self.process.pid})"
        else:
            self.bundled = ThreadedToxiproxy("127.0.0.1", 0).start()
            self.host, self.port = self.bundled.host, self.bundled.port
            self.kind = "bundled (chaos.toxiproxy)"
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"toxiproxy-server did not listen on {self.url} in {timeout:g} s")

    def stop(self) -> None:
        if self.bundled is not None:
            self.bundled.stop()
            self.bundled = None
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class Toxics:
    """The Toxiproxy server (see ToxiproxyServer), its proxies (one per real and port, and
    the client links in front of `vip`), driven through toxiproxy-python."""

    def __init__(self, servers: Servers, vip: str = VIP, net: str = PROXY_NET,
                 client_net: str = CLIENT_NET) -> None:
        self.servers, self.vip, self.net, self.client_net = servers, vip, net, client_net
        self.server = ToxiproxyServer()
        self.client = Toxiproxy()
        self.proxies: dict[str, Proxy] = {}
        self.client_links: dict[int, Proxy] = {}  # vserver port -> its proxy

    def start(self) -> Toxics:
        self.server.start()
        self.client.update_api_consumer(self.server.host, self.server.port)
        self.url = self.server.url
        try:
            for real in reals(self.servers, self.net):
                for port_in, port_out in PORTS.items():
                    self._create(real.proxy_name(port_in), f"{real.address}:{port_in}",
                                 f"{real.node}:{port_out}")
            for port in (5222, 5223):
                self.client_links[port] = self._create(
                    f"client-{port}", f"{self.client_net}:0", f"{self.vip}:{port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, name: str, listen: str, upstream: str) -> Proxy:
        if name in self.client.proxies():
            self.client.get_proxy(name).destroy()
        try:
            proxy = self.client.create(upstream=upstream, name=name, listen=listen)
        except KeyError:  # toxiproxy-python reads an error answer as a proxy: say what it was
            import requests

            reply = requests.post(f"{self.url}/proxies", timeout=10, json={
                "name": name, "listen": listen, "upstream": upstream})
            raise RuntimeError(f"toxiproxy: cannot create {name} on {listen}: "
                               f"{reply.status_code} {reply.text.strip()}") from None
        self.proxies[name] = proxy
        return proxy

    def client_link(self, port: int) -> tuple[str, int]:
        """(host, port) where a client reaches the gateway's `port` through toxiproxy."""
        host, _, listen_port = self.client_links[port].listen.rpartition(":")
        return host, int(listen_port)

    def add_client(self, **toxic: object) -> None:
        """Add a toxic to every client link."""
        for proxy in self.client_links.values():
            proxy.add_toxic(**toxic)

    def remove_client(self, name: str) -> None:
        for proxy in self.client_links.values():
            proxy.destroy_toxic(name)

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
        self.client_links.clear()
        self.server.stop()
