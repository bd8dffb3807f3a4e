"""The configuration model: frozen, typed objects that every other module reads.

Each default is written once, here, as a dataclass field default: the loader reads it from
the field (`loader._defaults`), so a key left out of the file and a config built in code
agree by construction. Values a vserver or serverfarm inherits from `[gateway]` are named
once below. The lists of allowed values that the configuration itself owns live here; the
others (predictors, log formats, PROXY versions) are the owning module's.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

KINDS = ("c2s", "s2s", "component")
# starttls: the stream header, then STARTTLS (RFC 6120 §5); directtls: a TLS ClientHello
# first (XEP-0368); both: the client's first byte decides (0x16, a TLS handshake record: direct
# TLS to the real's `directtls_port`; anything else: an XML stream, as starttls).
MODES = ("starttls", "directtls", "both")
DIRECTTLS_PORT = 5223  # XEP-0368's usual c2s port: where a `both` vserver sends direct TLS
NATS = ("server",)
RELAYS = ("splice", "copy")
PROBE_TYPES = ("tcp", "xmpp-stream", "xmpp-ping")
PROBE_KINDS = ("c2s", "s2s")
SRV_SERVICES = ("_xmpp-client._tcp", "_xmpps-client._tcp", "_xmpp-server._tcp",
                "_xmpps-server._tcp")

# Defaults a vserver or a serverfarm takes from `[gateway]` unless it sets its own.
HEADER_TIMEOUT = 10.0
NEGOTIATION_TIMEOUT = 60.0
MAX_HEADER_BYTES = 4096
MAX_HELLO_BYTES = 16384
CONNECT_TIMEOUT = 4.0
HEDGE_DELAY = 0.2
RESPONSE_TIMEOUT = 5.0


class ConfigError(Exception):
    """A config that must not run; `problems` holds one line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------------------------
# Typed configuration objects
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """An IP literal with an optional port; reals may leave the port to the vserver (nat server)."""

    host: str
    port: int | None

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def with_port(self, port: int) -> tuple[str, int]:
        """Where to connect: the real's own port if it has one, else the vserver's (IOS `nat server`)."""
        return (self.host, self.port if self.port is not None else port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family_v6 else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Keepalive:
    """TCP keepalive and user timeout for both legs.

    Relayed XMPP streams sit idle for hours, so the gateway never times them out itself;
    the kernel notices a vanished peer instead (the seed's advice on tcp_keepalive_*).
    """

    idle: float = 60.0
    interval: float = 10.0
    count: int = 6
    user_timeout: float = 120.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    name: str | None = None
    control_socket: str | None = None
    domains: tuple[str, ...] = ()
    header_timeout: float = HEADER_TIMEOUT
    max_header_bytes: int = MAX_HEADER_BYTES
    max_hello_bytes: int = MAX_HELLO_BYTES
    negotiation_timeout: float = NEGOTIATION_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    hedge_delay: float = HEDGE_DELAY
    response_timeout: float = RESPONSE_TIMEOUT
    log_format: str = "auto"
    log_connect: bool = False
    workers: int = 1
    relay: str = "splice"
    keepalive: Keepalive = field(default_factory=Keepalive)
    shutdown_timeout: float = 10.0
    control_group: str | None = None
    metrics: Address | None = None


@dataclass(frozen=True, slots=True)
class Faildetect:
    numconns: int = 8
    numclients: int = 2


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """One active health probe (`[[serverfarm.probe]]`, or `[[serverfarm.real.probe]]`).

    The password is held here (read from `password_file` by `resolve`, before start, so a
    missing secret is a config error, not a probe failure at 3 a.m.) and kept out of every
    repr, so no log line or traceback can carry it.
    """

    type: str
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    port: int | None = None
    kind: str = "c2s"
    domain: str | None = None
    expect_starttls: bool = False
    jid: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    persistent: bool = True
    tls_verify: bool = True
    tls_ca_file: str | None = None
    # Not a key of the file: True for the `tcp` probe the loader gives a farm whose reals
    # are published in SRV records and which has no probes (`IMPLICIT_PROBE`).
    implicit: bool = False

    def port_for(self, address: Address) -> int:
        """The probe's own `port`, else the real's port, else the stream kind's well-known
        port: 5269 for an s2s `xmpp-stream` probe, 5222 for everything else."""
        if self.port is not None:
            return self.port
        if address.port is not None:
            return address.port
        return 5269 if self.type == "xmpp-stream" and self.kind == "s2s" else 5222

    @property
    def target_domain(self) -> str:
        """The domain a stream is opened to and a ping is sent to: `domain`, else the jid's."""
        if self.domain:
            return self.domain
        return (self.jid or "").rpartition("@")[2].partition("/")[0]


# A real whose address is published in SRV records must be watched, or a stopped one stays
# in the answers for as long as no client happens to fail on it. A farm that `[srv]`
# publishes the reals of and that has no `probe` key gets this one: a `[[serverfarm.probe]]`
# of type "tcp" with every default (every 5 s, 2 s timeout, out after 3 failed runs, back
# after 2 passed ones: a real that stops listening leaves the answers within 17 s).
# `probe = []` on the farm turns it off.
IMPLICIT_PROBE = ProbeConfig(type="tcp", implicit=True)


@dataclass(frozen=True, slots=True)
class RealConfig:
    address: Address
    weight: int = 8
    reassign: int = 3
    faildetect: Faildetect = field(default_factory=Faildetect)
    retry: float = 60.0
    inservice: bool = True
    maxconns: int | None = None
    max_connecting: int | None = None  # None: the farm's
    standby: bool = False
    probes: tuple[ProbeConfig, ...] | None = None  # None: the farm's probes
    directtls_port: int | None = None  # None: the farm's (direct TLS from a `both` vserver)


@dataclass(frozen=True, slots=True)
class ServerfarmConfig:
    name: str
    nat: str = "server"
    predictor: str = "roundrobin"
    connect_timeout: float = CONNECT_TIMEOUT
    hedge_delay: float = HEDGE_DELAY
    response_timeout: float = RESPONSE_TIMEOUT
    slowstart: float = 30.0
    # Overload (README, "Reconnect storms"): attempts in flight per real, the queue of
    # client connections waiting for one, and Envoy's healthy panic threshold (percent).
    max_connecting: int | None = 8
    queue_timeout: float = 10.0
    queue_length: int = 4096
    panic_threshold: int = 50
    reals: tuple[RealConfig, ...] = ()
    probes: tuple[ProbeConfig, ...] = ()  # with [srv], maybe (IMPLICIT_PROBE,): see there
    proxy_protocol: str | None = None  # "v1" | "v2": a PROXY header to reals and probes
    # Where a `mode = "both"` vserver sends the streams that start with a ClientHello; the
    # vserver's port (`nat server`) or the real's own port still takes the XML streams.
    directtls_port: int = DIRECTTLS_PORT

    def directtls_endpoint(self, real: RealConfig) -> tuple[str, int]:
        """(host, port) for a direct-TLS stream from a `both` vserver: the real's own
        `directtls_port`, else the farm's (5223 unless set)."""
        port = real.directtls_port if real.directtls_port is not None else self.directtls_port
        return (real.address.host, port)

    def probes_for(self, real: RealConfig) -> tuple[ProbeConfig, ...]:
        """A real's own `[[serverfarm.real.probe]]` list replaces the farm's (`probe = []`
        turns probing off for that real)."""
        return self.probes if real.probes is None else real.probes

    @property
    def implicit_probe(self) -> bool:
        """Its probes are the implicit `tcp` probe of a farm published in SRV records."""
        return any(p.implicit for p in self.probes)


@dataclass(frozen=True, slots=True)
class Route:
    """Sends streams of one kind and/or to one domain to another farm than the vserver's default."""

    serverfarm: str
    kind: str | None = None
    domain: str | None = None

    def matches(self, kind: str | None, domain: str | None) -> bool:
        kind_ok = self.kind is None or self.kind == kind
        domain_ok = self.domain is None or (
            domain is not None and domain_matches(self.domain, domain))
        return kind_ok and domain_ok


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-vserver admission limits (IOS `synguard` and `maxconns`, HAProxy's stick tables).

    A connection counts from accept, before its header arrives, so half-open attempts and
    slow headers use up the allowance as well."""

    maxconns: int | None = None          # concurrent connections, all sources together
    maxconns_per_ip: int | None = None   # concurrent connections from one source address
    rate_per_ip: float | None = None     # new connections per second from one source (refill)
    burst_per_ip: int | None = None      # bucket size; None: max(1, 2 * rate_per_ip)

    @property
    def burst(self) -> int:
        if self.burst_per_ip is not None:
            return self.burst_per_ip
        return max(1, round(2 * (self.rate_per_ip or 0)))


@dataclass(frozen=True, slots=True)
class VserverConfig:
    name: str
    virtual: Address
    mode: str = MODES[0]
    serverfarm: str | None = None  # the default farm; None: routes only
    inservice: bool = True
    require_starttls: bool = False
    kinds: tuple[str, ...] = ("c2s", "s2s")
    routes: tuple[Route, ...] = ()
    header_timeout: float = HEADER_TIMEOUT
    negotiation_timeout: float = NEGOTIATION_TIMEOUT  # from accept until the stream goes opaque
    max_header_bytes: int = MAX_HEADER_BYTES
    max_hello_bytes: int = MAX_HELLO_BYTES
    accept_proxy: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    limits: Limits = field(default_factory=Limits)
    srv: tuple[str, ...] | None = None  # SRV services published for it; None: from kinds/port

    def farm_for(self, kind: str | None, domain: str | None) -> str | None:
        """First matching route wins, then the default farm; None means no farm serves it."""
        for route in self.routes:
            if route.matches(kind, domain):
                return route.serverfarm
        return self.serverfarm


@dataclass(frozen=True, slots=True)
class SrvUpdate:
    """RFC 2136 updates to a primary the operator runs (BIND, Knot, PowerDNS)."""

    server: Address                 # the primary; port 53 unless given
    key_file: str | None = None     # a `tsig-keygen` key file (key "name" { algorithm; secret; })
    coalesce: float = 1.0           # changes within this window go out as one update
    retry_min: float = 1.0          # backoff when the primary does not answer ...
    retry_max: float = 60.0         # ... doubling up to this


@dataclass(frozen=True, slots=True)
class SrvConfig:
    """`[srv]`: the SRV records published from live health (embedded server and/or RFC 2136).

    Names are absolute, lower case, without the trailing dot."""

    zones: tuple[str, ...]
    listen: Address | None = None          # the embedded authoritative server (UDP and TCP)
    ttl: int = 30
    target: str = "xmpp"                   # the gateway's host: a label under each zone, or a
                                           # full name ending in "."
    addresses: tuple[str, ...] = ()        # its A/AAAA; empty: the vservers' virtual addresses
    gateway_priority: int = 10
    publish_reals: bool = True             # reals in service as lower-priority fallbacks
    real_priority: int = 20
    real_hosts: tuple[tuple[str, str], ...] = ()  # (real address, host name); default
                                                  # real-<address with dashes>.<zone>
    ns: tuple[str, ...] = ()               # NS names at the apex; default ns.<zone> (the
                                           # embedded server's listen address as its A)
    update: SrvUpdate | None = None


@dataclass(frozen=True, slots=True)
class ExternalRef:
    """A value in the file that only this machine can check: a group name (`group`), a file
    that must exist (`file`), or a file whose first line is a secret (`secret`).

    `loads` records these and looks at nothing; `resolve` does the I/O. `where` is the
    "file:line" the value was read at, so resolve's problems read like the loader's."""

    kind: str
    value: str
    keypath: tuple[str | int, ...]
    where: str


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    gateway: GatewayConfig
    vservers: tuple[VserverConfig, ...]
    serverfarms: tuple[ServerfarmConfig, ...]
    srv: SrvConfig | None = None
    # What the file names on this machine (groups, files, secrets), for `resolve` to look up
    # and read; empty once resolved. Not part of the config's value.
    external: tuple[ExternalRef, ...] = field(default=(), repr=False, compare=False)

    def farm(self, name: str) -> ServerfarmConfig:
        return next(f for f in self.serverfarms if f.name == name)

    def serves(self, domain: str | None) -> bool:
        """No `gateway.domains` means every domain is routed, as an IOS SLB would."""
        if not self.gateway.domains:
            return True
        if domain is None:
            return False
        name = _domainpart(domain)
        if name is None:
            return False
        exact, suffixes = _domain_patterns(self.gateway.domains)
        return name in exact or (bool(suffixes) and name.endswith(suffixes))


@functools.lru_cache(maxsize=64)
def _domain_patterns(patterns: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Exact names as a set, `*.suffix` as ".suffix" strings: one lookup per stream header."""
    exact = frozenset(p for p in patterns if not p.startswith("*."))
    return exact, tuple(p[1:] for p in patterns if p.startswith("*."))


def _domainpart(domain: str) -> str | None:
    """`domain` as names are compared (RFC 7622 §3.2): lower-cased, one trailing dot (the
    DNS root) stripped; None when it is empty or has an empty label (`.a`, `a..b`, `a..`),
    which no pattern may match: stripping every dot would route `x.example.test..`, and a
    bare suffix test `.example.test` itself, under `*.example.test`."""
    name = domain.lower()
    name = name.removesuffix(".")
    if not name or name.startswith(".") or name.endswith(".") or ".." in name:
        return None
    return name


def domain_matches(pattern: str, domain: str) -> bool:
    """Exact match, or `*.suffix` for any name strictly below suffix. Case-insensitive;
    a domain with an empty label matches nothing (see `_domainpart`)."""
    name = _domainpart(domain)
    if name is None:
        return False
    pattern = pattern.lower()
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def parse_address(text: str, need_port: bool) -> Address:
    """`1.2.3.4`, `1.2.3.4:5222`, `::1`, `[::1]:5222`; raises ValueError with the reason."""
    host, port_text = text, None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']' after an IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected ':port' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv4 or IPv6 address") from None
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{port_text!r} is not a port (1-65535)")
        port = int(port_text)
    if need_port and port is None:
        raise ValueError("needs a port, e.g. 127.0.0.1:5222 or [::1]:5222")
    return Address(str(ip), port)
