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
from dataclasses import MISSING, dataclass, field
from typing import Any

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


def _k(default: Any = MISSING, *, doc: str, factory: Any = MISSING, ios: str | None = None,
       unit: str | None = None, toml: str | None = None, type: str | None = None,
       shown: str | None = None, repr: bool = True) -> Any:
    """A field of the file, with what `xmppgw config-reference` prints for it.

    `doc`: what it means; `ios`: the Cisco IOS SLB command it stands for; `unit`: of a
    number; `toml`: the key's name in the file when it is not the field's; `type`: the TOML
    type when the annotation does not say it plainly; `shown`: the default as a reader
    should see it (\"from `[gateway]`\") when the field's own default would mislead."""
    meta = {"doc": doc, "ios": ios, "unit": unit, "toml": toml, "type": type, "shown": shown}
    return field(default=default, default_factory=factory, repr=repr, metadata=meta)


# The field of a model class that no file key sets (computed by the loader).
NOT_A_KEY = {"not_a_key": True}
_FOR_FARMS = "Default for every serverfarm that does not set its own (see `[[serverfarm]]`)."
_FROM_GATEWAY = "from `[gateway]`"
_XS = "`xmpp-stream` only: "
_XP = "`xmpp-ping` only: "


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

    idle: float = _k(60.0, unit="s", doc=(
        "Silence on a leg before the kernel sends the first keepalive probe (`TCP_KEEPIDLE`)."))
    interval: float = _k(10.0, unit="s", doc=(
        "Time between keepalive probes (`TCP_KEEPINTVL`)."))
    count: int = _k(6, unit="probes", doc=(
        "Unanswered keepalive probes after which the kernel drops the connection "
        "(`TCP_KEEPCNT`)."))
    user_timeout: float = _k(120.0, unit="s", doc=(
        "How long sent data may stay unacknowledged before the kernel drops the connection "
        "(`TCP_USER_TIMEOUT`); at most 2147483 s (an int of milliseconds)."))


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    name: str | None = _k(None, doc=(
        "The gateway's own name: the `from` of its error streams when the peer asked for a "
        "domain it does not serve (RFC 6120 §4.9.1.3)."))
    control_socket: str | None = _k(None, type="string (path)", doc=(
        "Path of the control socket, created mode 0600 (see Operations). Its directory is "
        "created if missing, so the gateway must be allowed to create it "
        "(systemd: `RuntimeDirectory=xmppgw`)."))
    domains: tuple[str, ...] = _k((), doc=(
        "The domains served, exact or `*.suffix`. A stream `to` any other domain (or with no "
        "`to`) gets `<host-unknown/>` and never reaches a real, and a ClientHello with another "
        "SNI gets an `unrecognized_name` alert. Empty means every domain is routed, as an IOS "
        "SLB would; the gateway then warns at start."))
    header_timeout: float = _k(HEADER_TIMEOUT, unit="s", doc=(
        "Time allowed for a complete stream header or ClientHello, after which a stream gets "
        "`<connection-timeout/>`. A vserver may set its own."))
    max_header_bytes: int = _k(MAX_HEADER_BYTES, unit="bytes", doc=(
        "Most bytes before the stream header is complete; past it, `<policy-violation/>`. "
        "At least 256. A vserver may set its own."))
    max_hello_bytes: int = _k(MAX_HELLO_BYTES, unit="bytes", doc=(
        "Most bytes before the ClientHello is complete; past it, a `decode_error` alert. "
        "At least 512. A vserver may set its own."))
    negotiation_timeout: float = _k(NEGOTIATION_TIMEOUT, unit="s", doc=(
        "Time from accept until the stream goes opaque (TLS started, or it went on without "
        "TLS): a stream parked in cleartext after its header, or a client that never starts "
        "TLS, gets `<connection-timeout/>` and both sockets are released. Never applies once a "
        "stream is relayed opaquely. A vserver may set its own."))
    connect_timeout: float = _k(CONNECT_TIMEOUT, unit="s", doc=_FOR_FARMS)
    hedge_delay: float = _k(HEDGE_DELAY, unit="s", doc=_FOR_FARMS)
    response_timeout: float = _k(RESPONSE_TIMEOUT, unit="s", doc=_FOR_FARMS)
    log_format: str = _k("auto", doc=(
        "`auto` (console on a terminal, else JSON), `json` or `console`."))
    log_connect: bool = _k(False, doc=(
        "Also log a `connected` line when a connection reaches its real (HAProxy's "
        "`option logasap`). XMPP streams live for hours, so the close line can come much "
        "later."))
    workers: int = _k(1, unit="processes", doc=(
        "Number of worker processes sharing the vservers (see Workers)."))
    relay: str = _k("splice", doc=(
        "How opaque streams (after STARTTLS, or direct TLS) are relayed: `splice` moves bytes "
        "socket → pipe → socket with `os.splice` and never copies them into Python; `copy` "
        "keeps the asyncio Protocol relay. Without `os.splice` the copy relay is used."))
    keepalive: Keepalive = _k(  # noqa: RUF009
        factory=Keepalive, type="table", shown="see below", doc=(
        "`[gateway.keepalive]`: TCP keepalive and `TCP_USER_TIMEOUT` on both legs. Once a "
        "stream is relayed, the gateway never times it out for being idle; the kernel's "
        "keepalive probes find a peer that vanished."))
    shutdown_timeout: float = _k(10.0, unit="s", doc=(
        "On SIGTERM: how long relayed (TLS) streams may run on after the gateway stopped "
        "accepting; cleartext streams get `<system-shutdown/>` at once."))
    control_group: str | None = _k(None, doc=(
        "A group whose members may use the control socket too (the socket is then 0660, owned "
        "by that group). It must exist on this machine."))
    metrics: Address | None = _k(None, type="string (ip:port)", doc=(  # noqa: RUF009
        "`ip:port` of the Prometheus `/metrics` listener (see Operations)."))
    freebind: bool = _k(False, doc=(
        "Bind the vservers with `IP_FREEBIND`: their virtual address need not be on this host "
        "yet. For a pair of gateways sharing a VRRP address (keepalived, see docs/pair.md): "
        "the standby listens before the address moves to it, so it serves the first SYN after "
        "the takeover. The other way is the host-wide sysctl `net.ipv4.ip_nonlocal_bind = 1` "
        "(`net.ipv6.ip_nonlocal_bind` for IPv6), which frees every program's binds. Off, a "
        "vserver on an address the host does not hold fails to start (a typo is caught). A "
        "vserver may set its own."))


@dataclass(frozen=True, slots=True)
class Faildetect:
    numconns: int = _k(8, unit="attempts", ios="faildetect numconns N", doc=(
        "The real is marked FAILED after this many consecutive failed attempts. A success "
        "resets the count."))
    numclients: int = _k(2, unit="clients", ios="faildetect ... numclients M", doc=(
        "... or after failed attempts from this many distinct client IPs, whichever comes "
        "first. A client that fails again is counted once, as in IOS; a success resets it."))


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """One active health probe (`[[serverfarm.probe]]`, or `[[serverfarm.real.probe]]`).

    The password is held here (read from `password_file` by `resolve`, before start, so a
    missing secret is a config error, not a probe failure at 3 a.m.) and kept out of every
    repr, so no log line or traceback can carry it.
    """

    type: str = _k(doc=(
        "`tcp` (the TCP handshake, then close: a hung node passes it, because its kernel still "
        "accepts), `xmpp-stream` (a stream opened to `domain`; the real must answer with its "
        "stream header and `<stream:features>`) or `xmpp-ping` (a login as `jid` on that real, "
        "then a XEP-0199 ping to `domain`)."))
    interval: float = _k(5.0, unit="s", doc=(
        "From the start of one run to the start of the next. A run never starts while the "
        "previous one is still running; a run that took longer than `interval` is followed at "
        "once by the next."))
    timeout: float = _k(2.0, unit="s", doc=(
        "Longest time one run may take. Past it, the run fails and names what the real did "
        "not send (\"timeout after 2 s waiting for the stream header\")."))
    rise: int = _k(2, unit="runs", doc=(
        "Successful runs in a row that bring a PROBE_FAILED real back. A probe starts as "
        "passing, like the real."))
    fall: int = _k(3, unit="runs", doc=(
        "Failed runs in a row that make a real PROBE_FAILED."))
    port: int | None = _k(None, shown="the real's, else 5269 (s2s) or 5222", doc=(
        "The port to probe: this, else the real's own port if its address has one, else 5269 "
        "for an s2s `xmpp-stream` probe and 5222 for every other probe."))
    kind: str = _k("c2s", doc=_XS + (
        "`c2s` (`jabber:client`) or `s2s` (`jabber:server` with the dialback namespace)."))
    domain: str | None = _k(None, shown="the jid's domain", doc=(
        "`xmpp-stream` and `xmpp-ping`: the domain the stream is opened to or the ping is sent "
        "to. Required for `xmpp-stream`."))
    expect_starttls: bool = _k(False, doc=_XS + "the features must offer `<starttls/>`.")
    jid: str | None = _k(None, shown="required for `xmpp-ping`", doc=_XP + (
        "the probe account, `user@domain`."))
    password: str | None = _k(None, repr=False, doc=_XP + (
        "the probe account's password; give this or `password_file`. It never appears in a "
        "log line, a message or `show`."))
    password_file: str | None = _k(None, type="string (path)", doc=_XP + (
        "a file holding the password on its first line, read when the config is loaded, so a "
        "missing file is a config error."))
    persistent: bool = _k(True, doc=_XP + (
        "keep the session open between pings (later runs only ping). This is cheaper for the "
        "server and for the gateway; otherwise each run logs in and out."))
    tls_verify: bool = _k(True, doc=_XP + (
        "check the real's certificate. The name checked is the jid's domain, which is what a "
        "real's certificate names, not the real's address."))
    tls_ca_file: str | None = _k(None, type="string (path)", shown="the system's CAs",
                                 doc=_XP + "the CA file to trust instead.")
    # Not a key of the file: True for the `tcp` probe the loader gives a farm whose reals
    # are published in SRV records and which has no probes (`IMPLICIT_PROBE`).
    implicit: bool = field(default=False, metadata=NOT_A_KEY)

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


# Upper bounds the loader enforces, so a slip of the keyboard (`retry = 1e300`,
# `weight = 10000000000000000000000`) is refused rather than run. IOS SLB's own ranges where
# it has the key; else a day for a duration and a signed 32-bit count for an integer.
MAX_WEIGHT = 255  # IOS `weight` 1-255
MAX_RETRY = 3600  # s, IOS `retry` 1-3600
MAX_SECONDS = 86400  # s: any other duration, unless its key says otherwise
MAX_INTEGER = 2**31 - 1  # any integer key without a smaller bound (counts, maxconns, ttl)
MAX_RATE = 1_000_000  # connections/s


@dataclass(frozen=True, slots=True)
class RealConfig:
    address: Address = _k(ios="real IP", type="string (address)", doc=(  # noqa: RUF009
        "`ip`, `ip:port`, `ipv6` or `[ipv6]:port`. Without a port the real is reached on the "
        "vserver's port (`nat server`)."))
    weight: int = _k(8, ios="weight", doc=(
        f"Share of new connections: 1 to {MAX_WEIGHT}, IOS's range."))
    reassign: int = _k(3, unit="reals", ios="reassign", doc=(
        "How many reals beyond this one a client connection may race at once by hedging."))
    faildetect: Faildetect = _k(factory=Faildetect, type="table", shown="see below",  # noqa: RUF009
                                ios="faildetect numconns N numclients M", doc=(
        "`[serverfarm.real.faildetect]`: when failed attempts mark the real FAILED."))
    retry: float = _k(60.0, unit="s", ios="retry", doc=(
        "Time after FAILED until the real goes TESTING: the next connection it qualifies for "
        "is sent to it. Success makes it OPERATIONAL (with slow start); failure makes it "
        f"FAILED for another `retry`. At most {MAX_RETRY} s, IOS's range."))
    inservice: bool = _k(True, ios="inservice / no inservice", doc=(
        "`false` means OUTOFSERVICE: no new connections, and existing ones stay. This is the "
        "seed's spare node."))
    maxconns: int | None = _k(None, unit="connections", ios="maxconns", shown="unlimited",
                              doc=("At the limit the real is skipped, and shown MAXCONNS, until "
                                   "one of its connections closes."))
    max_connecting: int | None = _k(None, unit="attempts", shown="the farm's", doc=(
        "This real's own limit of attempts in flight, instead of the farm's `max_connecting`. "
        "`0`: no limit."))
    standby: bool = _k(False, ios="none (HAProxy `backup`)", doc=(
        "Used only while no other real of the farm can take the connection."))
    probes: tuple[ProbeConfig, ...] | None = _k(
        None, toml="probe", type="array of tables", shown="the farm's", doc=(
            "`[[serverfarm.real.probe]]`: this real's own probes (keys as "
            "`[[serverfarm.probe]]`), instead of the farm's; `probe = []` turns probing off "
            "for this real."))
    directtls_port: int | None = _k(None, shown="the farm's", doc=(
        "Where a `both` vserver sends this real's direct-TLS streams, instead of the farm's "
        "`directtls_port`."))


@dataclass(frozen=True, slots=True)
class ServerfarmConfig:
    name: str = _k(ios="ip slb serverfarm NAME", doc="The farm's name, for vservers and routes.")
    nat: str = _k("server", ios="nat server", doc=(
        "A real without a port is reached on the vserver's port."))
    predictor: str = _k("roundrobin", ios="predictor", doc=(
        "`roundrobin` is smooth weighted round-robin, with no bursts to one real. "
        "`leastconns` picks the fewest active connections relative to the (slow-start) "
        "weight. `sourcehash` is a weighted rendezvous hash of the client's IP: a "
        "reconnecting client lands on the same real (as XEP-0198 stream resumption needs), "
        "two gateways with the same config agree without sharing state, and removing a real "
        "moves only that real's clients."))
    connect_timeout: float = _k(CONNECT_TIMEOUT, unit="s", ios="the `reassign` SYNs",
                                shown="`4`, from `[gateway]`", doc=(
        "How long one attempt on a real may wait for the TCP handshake: the SYN and Linux's "
        "retransmissions at 1 s and 3 s (see Reconnect storms)."))
    hedge_delay: float = _k(HEDGE_DELAY, unit="s", shown="`0.2`, from `[gateway]`", doc=(
        "Goes beyond IOS: if the picked real has not completed the handshake within this "
        "time, the next pick is dialled in parallel and the first to answer wins. `0` turns "
        "it off."))
    response_timeout: float = _k(RESPONSE_TIMEOUT, unit="s", shown="`5`, from `[gateway]`",
                                 doc=(
        "Goes beyond IOS: a real that accepts TCP but sends nothing back within this time is a "
        "failed attempt. `0` turns it off."))
    slowstart: float = _k(30.0, unit="s", ios="slow start", doc=(
        "A real that comes (back) into service ramps its weight from 5% to 100% over this "
        "time. `0` turns it off."))
    # Overload (docs/failover-and-overload.md): attempts in flight per real, the queue of
    # client connections waiting for one, and Envoy's healthy panic threshold (percent).
    max_connecting: int | None = _k(8, unit="attempts", ios="none (HAProxy `maxconn` + queue)",
                                    doc=(
        "Attempts in flight (dialled, not yet answered) per real, over every worker. A client "
        "connection that finds every real it may use at this limit waits in the farm's queue. "
        "`0`: no limit. A real's own `max_connecting` overrides it."))
    queue_timeout: float = _k(10.0, unit="s", ios="none (HAProxy `timeout queue`)", doc=(
        "How long a connection may wait in the queue; then `<remote-connection-failed/>`. "
        "`0`: never queue."))
    queue_length: int = _k(4096, unit="connections", doc=(
        "Most connections waiting per farm (per worker); one more gets "
        "`<remote-connection-failed/>` at once."))
    panic_threshold: int = _k(50, unit="%", ios="none (Envoy's healthy panic threshold)", doc=(
        "While fewer than this share of the farm's reals in service are available "
        "(OPERATIONAL or TESTING), picks ignore FAILED and PROBE_FAILED and use every real in "
        "service. `0` turns it off."))
    # A real that closes many of its streams at once is going away (`ejabberdctl stop`
    # closes every session, then its listener still accepts for seconds): out at once,
    # before leastconns sends it the reconnecting clients (docs/failover-and-overload.md).
    # Off by default (as HAProxy's `observe layer4`): telling a shutdown from many clients
    # logging out at once rests on timing alone, since the streams are opaque (TLS).
    mass_close_streams: int = _k(0, unit="streams", shown="0 (off; 10 is a good start)",
                                 ios="none", doc=(
        "A real that closes at least this many established streams from its side (its FIN "
        "or RST reaches the gateway before the client's) within `mass_close_window`, and at "
        "least `mass_close_share` of the streams it held, is marked FAILED at once for its "
        "`retry` (event `real_mass_close`), never the last available real. Counted per "
        "worker. Closes by clients never count, nor a close within 1 s of client bytes the "
        "real had not prompted (the real answering a logout's `</stream:stream>`), nor the "
        "close of a stream younger than 2 s (a login refused or ended). `0`, the "
        "default, turns it off: many clients logging out together after recent traffic can "
        "still look like a shutdown, so turn it on where clients rarely leave in bursts."))
    mass_close_share: int = _k(25, unit="%", ios="none", doc=(
        "The share of the real's streams that `mass_close_streams` also asks for: of the most "
        "it held just before any close of the window (streams that reconnecting clients open "
        "on it meanwhile do not dilute the burst)."))
    mass_close_window: float = _k(2.0, unit="s", ios="none", doc=(
        "The sliding window over which a real's own closes are counted."))
    reals: tuple[RealConfig, ...] = _k((), toml="real", type="array of tables",
                                       shown="see below", ios="real IP", doc=(
        "`[[serverfarm.real]]`: the farm's reals."))
    probes: tuple[ProbeConfig, ...] = _k(  # with [srv], maybe (IMPLICIT_PROBE,): see there
        (), toml="probe", type="array of tables", shown="none (with `[srv]`: an implicit `tcp`)",
        doc=("`[[serverfarm.probe]]`: active health probes of every real of the farm. A farm "
             "whose reals `[srv]` publishes and that has no `probe` key gets an implicit `tcp` "
             "probe; `probe = []` turns it off."))
    proxy_protocol: str | None = _k(None, ios="none (HAProxy `send-proxy`)", doc=(
        "`\"v1\"` or `\"v2\"`: every connection to a real starts with a PROXY header naming "
        "the client's address and the one it connected to (v2 adds the host asked for, SNI or "
        "`to`). The farm's probes send one too (with their own addresses)."))
    # Where a `mode = "both"` vserver sends the streams that start with a ClientHello; the
    # vserver's port (`nat server`) or the real's own port still takes the XML streams.
    directtls_port: int = _k(DIRECTTLS_PORT, doc=(
        "Where a `both` vserver sends direct-TLS streams (the XML ones go to the vserver's "
        "port, or the real's own). A real's own `directtls_port` overrides it. Unused by "
        "`starttls` and `directtls` vservers."))

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

    serverfarm: str = _k(doc="The farm the matching streams go to.")
    kind: str | None = _k(None, shown="any", doc=(
        "`c2s`, `s2s` or `component`: the stream kind this route takes."))
    domain: str | None = _k(None, shown="any", doc=(
        "The domain (exact or `*.suffix`) this route takes. A route needs `kind`, `domain` or "
        "both; the first match wins, then the vserver's default farm applies."))

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

    maxconns: int | None = _k(None, unit="connections", ios="maxconns", shown="unlimited",
                              doc="Concurrent connections, all sources together.")
    maxconns_per_ip: int | None = _k(None, unit="connections", shown="unlimited", doc=(
        "Concurrent connections from one source (IPv6 sources count per /64)."))
    rate_per_ip: float | None = _k(None, unit="connections/s", shown="unlimited", doc=(
        "New connections per second from one source: the token bucket's refill rate; at "
        f"most {MAX_RATE:_}."))
    burst_per_ip: int | None = _k(None, unit="connections", shown="2 × `rate_per_ip`", doc=(
        "The token bucket's size. Needs `rate_per_ip`."))

    @property
    def burst(self) -> int:
        if self.burst_per_ip is not None:
            return self.burst_per_ip
        return max(1, round(2 * (self.rate_per_ip or 0)))


@dataclass(frozen=True, slots=True)
class VserverConfig:
    name: str = _k(ios="ip slb vserver NAME", doc="The vserver's name, for `show` and the logs.")
    virtual: Address = _k(ios="virtual IP tcp PORT", type="string (ip:port)", doc=(  # noqa: RUF009
        "`ip:port` or `[ipv6]:port` to listen on."))
    mode: str = _k(MODES[0], doc=(
        "`starttls`: read the stream header and follow STARTTLS. `directtls`: read the "
        "ClientHello. `both`: serve both on one port (as sslh or xmpp-proxy multiplex): the "
        "client's first byte decides. `0x16` (a TLS handshake record) is direct TLS, routed by "
        "SNI and ALPN to each real's direct-TLS port (`directtls_port`, 5223 by default); `<`, "
        "whitespace or a UTF-8 byte order mark is an XML stream, routed as on a `starttls` "
        "vserver to the vserver's port (or the real's own); any other byte is read as XML and "
        "gets `<not-well-formed/>`. Before the first byte (a limit, a timeout) it answers in "
        "XML. On a single-mode vserver the other protocol gets an answer it can read: a "
        "ClientHello on `starttls` a fatal `unexpected_message` alert, an XML stream on "
        "`directtls` `<policy-violation/>` whose text names the port STARTTLS is on."))
    serverfarm: str | None = _k(None, ios="serverfarm NAME", shown="required unless routes are "
                                "given", doc="The default farm.")
    inservice: bool = _k(True, ios="inservice / no inservice", doc=(
        "`false`: the vserver does not listen."))
    require_starttls: bool = _k(False, doc=(
        "On `starttls` and `both` vservers. Before TLS the client may send only `<starttls/>` "
        "and whitespace: any other element (SASL `<auth>`, SASL2, `jabber:iq:auth`, a stanza, "
        "dialback) is refused as its start tag completes, and so is any byte after "
        "`<starttls/>` before the server's `<proceed/>` (`<policy-violation/>`), so "
        "credentials never cross the gateway in the clear."))
    kinds: tuple[str, ...] = _k(("c2s", "s2s"), doc=(
        "The stream kinds accepted; another kind gets `<invalid-namespace/>`. Add "
        "`\"component\"` for XEP-0114."))
    routes: tuple[Route, ...] = _k((), toml="route", type="array of tables", shown="none",
                                   doc=("`[[vserver.route]]`: send some streams to another "
                                        "farm than the default."))
    header_timeout: float = _k(HEADER_TIMEOUT, unit="s", shown=_FROM_GATEWAY, doc=(
        "This vserver's `header_timeout`."))
    negotiation_timeout: float = _k(NEGOTIATION_TIMEOUT, unit="s", shown=_FROM_GATEWAY, doc=(
        "This vserver's `negotiation_timeout`: from accept until the stream goes opaque."))
    max_header_bytes: int = _k(MAX_HEADER_BYTES, unit="bytes", shown=_FROM_GATEWAY, doc=(
        "This vserver's `max_header_bytes`."))
    max_hello_bytes: int = _k(MAX_HELLO_BYTES, unit="bytes", shown=_FROM_GATEWAY, doc=(
        "This vserver's `max_hello_bytes`."))
    accept_proxy: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _k(
        (), type="array of strings (networks)", doc=(
            "Networks (`\"10.0.0.0/8\"`, `\"192.0.2.7\"`) of upstream balancers whose "
            "connections start with a PROXY v1/v2 header. From them the header is required and "
            "names the client; from anyone else a header is not believed (it is read as XML "
            "and gets `<not-well-formed/>`)."))
    freebind: bool = _k(False, shown=_FROM_GATEWAY, doc=(
        "This vserver binds with `IP_FREEBIND` (see `gateway.freebind`): its virtual address "
        "may be one the host does not hold yet. Applies when the vserver binds (start, "
        "`inservice`, a reload that moves it)."))
    limits: Limits = _k(factory=Limits, type="table", shown="see below",  # noqa: RUF009
                        ios="synguard, maxconns", doc=(
        "`[vserver.limits]`: admission limits, counted from accept. Refusals are logged at "
        "most once a second (`limit_refused`, with a count)."))
    srv: tuple[str, ...] | None = _k(None, shown="from `kinds` and the port", doc=(
        "The SRV services this vserver is published under (`_xmpp-client._tcp`, "
        "`_xmpps-client._tcp`, `_xmpp-server._tcp`, `_xmpps-server._tcp`); `[]`: none."))

    def farm_for(self, kind: str | None, domain: str | None) -> str | None:
        """First matching route wins, then the default farm; None means no farm serves it."""
        for route in self.routes:
            if route.matches(kind, domain):
                return route.serverfarm
        return self.serverfarm


@dataclass(frozen=True, slots=True)
class SrvUpdate:
    """RFC 2136 updates to a primary the operator runs (BIND, Knot, PowerDNS)."""

    server: Address = _k(type="string (address)", doc=(  # noqa: RUF009
        "The primary, `ip` or `ip:port` (port 53 unless given)."))
    key_file: str | None = _k(None, type="string (path)", doc=(
        "A `tsig-keygen` key file. Without it the updates are unsigned, which suits only a "
        "primary that allows updates by address."))
    coalesce: float = _k(1.0, unit="s", doc=(
        "From the first unsent change until the update goes out. Every change in that window "
        "goes in the same update, and only the net difference is sent."))
    retry_min: float = _k(1.0, unit="s", doc=(
        "The backoff after a failed update starts here and doubles up to `retry_max`. A "
        "success resets it."))
    retry_max: float = _k(60.0, unit="s", doc="The longest backoff after failed updates.")


@dataclass(frozen=True, slots=True)
class SrvConfig:
    """`[srv]`: the SRV records published from live health (embedded server and/or RFC 2136).

    Names are absolute, lower case, without the trailing dot."""

    zones: tuple[str, ...] = _k(shown="the exact names of `gateway.domains`",
                                doc="The zones answered for.")
    listen: Address | None = _k(None, type="string (ip:port)", doc=(  # noqa: RUF009
        "`ip:port` of the embedded authoritative server (UDP and TCP). Port 53 needs root or "
        "`CAP_NET_BIND_SERVICE`. Give `listen`, `[srv.update]` or both."))
    ttl: int = _k(30, unit="s", doc="TTL of every record, and the negative-caching time.")
    target: str = _k("xmpp", doc=(
        "The gateway's host name: a label under each zone, or a full name ending in `.`."))
    addresses: tuple[str, ...] = _k((), shown="the vservers' virtual addresses", doc=(
        "The A/AAAA of the gateway's target, e.g. the public addresses in front of a NAT."))
    gateway_priority: int = _k(10, doc=(
        "SRV priority of the gateway's records. Clients try the lowest number first."))
    publish_reals: bool = _k(True, doc=(
        "Publish the reals in service as lower-priority fallbacks. Their farms are then "
        "probed: one without probes gets an implicit `tcp` probe (see Health probes)."))
    real_priority: int = _k(20, doc=(
        "SRV priority of the reals' records; must be greater than `gateway_priority`."))
    real_hosts: tuple[tuple[str, str], ...] = _k(
        (), type="table (address = host name)", shown="`real-<address>.<zone>`", doc=(
            "`[srv.real_hosts]`: `\"127.0.2.1\" = \"node1.example.test\"` gives a real its "
            "host name."))
    ns: tuple[str, ...] = _k((), shown="`[\"ns.<zone>\"]`", doc=(
        "The NS names at the apex (the embedded server's listen address as their A)."))
    update: SrvUpdate | None = _k(None, type="table", doc=(  # noqa: RUF009
        "`[srv.update]`: RFC 2136 updates to a primary you run (BIND, Knot, PowerDNS)."))


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
    # What is allowed but likely a mistake (a serverfarm no vserver uses), one line each as
    # problems are written; `xmppgw check` prints them. Not part of the config's value.
    warnings: tuple[str, ...] = field(default=(), repr=False, compare=False)

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
