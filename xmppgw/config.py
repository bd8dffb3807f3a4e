"""Configuration: TOML parsed and validated once into frozen, typed objects.

Every other module reads these objects, never the raw TOML, so each fact (a default, a
limit, an allowed value) lives here and nowhere else. A bad file is refused as a whole with
every problem listed, each naming the file, the line and the key path, because an operator
fixing a config at 3 a.m. should not have to guess which `[[serverfarm.real]]` is meant.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

KINDS = ("c2s", "s2s", "component")
MODES = ("starttls", "directtls")
PREDICTORS = ("roundrobin", "leastconns", "sourcehash")
LOG_FORMATS = ("auto", "json", "console")
PROBE_TYPES = ("tcp", "xmpp-stream", "xmpp-ping")
PROBE_KINDS = ("c2s", "s2s")
PROXY_VERSIONS = ("v1", "v2")
SRV_SERVICES = ("_xmpp-client._tcp", "_xmpps-client._tcp", "_xmpp-server._tcp",
                "_xmpps-server._tcp")

T = TypeVar("T")
_REQUIRED: Any = object()


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
    header_timeout: float = 10.0
    max_header_bytes: int = 4096
    max_hello_bytes: int = 16384
    negotiation_timeout: float = 60.0
    connect_timeout: float = 4.0
    hedge_delay: float = 0.2
    response_timeout: float = 5.0
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

    The password is held here (read from `password_file` at load, so a missing secret is a
    config error before start, not a probe failure at 3 a.m.) and kept out of every repr, so
    no log line or traceback can carry it.
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


@dataclass(frozen=True, slots=True)
class ServerfarmConfig:
    name: str
    nat: str = "server"
    predictor: str = "roundrobin"
    connect_timeout: float = 4.0
    hedge_delay: float = 0.2
    response_timeout: float = 5.0
    slowstart: float = 30.0
    # Overload (README, "Reconnect storms"): attempts in flight per real, the queue of
    # client connections waiting for one, and Envoy's healthy panic threshold (percent).
    max_connecting: int | None = 8
    queue_timeout: float = 10.0
    queue_length: int = 4096
    panic_threshold: int = 50
    reals: tuple[RealConfig, ...] = ()
    probes: tuple[ProbeConfig, ...] = ()
    proxy_protocol: str | None = None  # "v1" | "v2": a PROXY header to reals and probes

    def probes_for(self, real: RealConfig) -> tuple[ProbeConfig, ...]:
        """A real's own `[[serverfarm.real.probe]]` list replaces the farm's (`probe = []`
        turns probing off for that real)."""
        return self.probes if real.probes is None else real.probes


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
    mode: str
    serverfarm: str | None
    inservice: bool = True
    require_starttls: bool = False
    kinds: tuple[str, ...] = ("c2s", "s2s")
    routes: tuple[Route, ...] = ()
    header_timeout: float = 10.0
    negotiation_timeout: float = 60.0  # from accept until the stream goes opaque
    max_header_bytes: int = 4096
    max_hello_bytes: int = 16384
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
class Config:
    path: str
    gateway: GatewayConfig
    vservers: tuple[VserverConfig, ...]
    serverfarms: tuple[ServerfarmConfig, ...]
    srv: SrvConfig | None = None

    def farm(self, name: str) -> ServerfarmConfig:
        return next(f for f in self.serverfarms if f.name == name)

    def serves(self, domain: str | None) -> bool:
        """No `gateway.domains` means every domain is routed, as an IOS SLB would."""
        if not self.gateway.domains:
            return True
        if domain is None:
            return False
        exact, suffixes = _domain_patterns(self.gateway.domains)
        domain = domain.lower().rstrip(".")
        return domain in exact or (bool(suffixes) and domain.endswith(suffixes))


@functools.lru_cache(maxsize=64)
def _domain_patterns(patterns: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Exact names as a set, `*.suffix` as ".suffix" strings: one lookup per stream header."""
    exact = frozenset(p for p in patterns if not p.startswith("*."))
    return exact, tuple(p[1:] for p in patterns if p.startswith("*."))


def domain_matches(pattern: str, domain: str) -> bool:
    """Exact match, or `*.suffix` for any name strictly below suffix. Case-insensitive."""
    domain = domain.lower().rstrip(".")
    pattern = pattern.lower()
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:]) and len(domain) > len(pattern) - 1
    return domain == pattern


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def load(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    return loads(text, str(path))


def loads(text: str, path: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    ctx = _Context(path, text)
    config = _build(ctx, data)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return config


class _Context:
    """Collects problems, each placed at a line of the source by its key path."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.locator = _Locator(text)
        self.problems: list[str] = []

    def error(self, keypath: tuple[str | int, ...], message: str) -> None:
        line = self.locator.line_of(keypath)
        where = f"{self.path}:{line}" if line else self.path
        self.problems.append(f"{where}: {_format_keypath(keypath)}: {message}")


def _format_keypath(keypath: tuple[str | int, ...]) -> str:
    out = ""
    for part in keypath:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


class _Section:
    """One TOML table being read: typed getters, and unknown keys reported at the end."""

    def __init__(self, ctx: _Context, data: Any, keypath: tuple[str | int, ...]) -> None:
        self.ctx = ctx
        self.keypath = keypath
        self.ok = isinstance(data, dict)
        if not self.ok:
            ctx.error(keypath, f"must be a table, not {_type_name(data)}")
        self.data: dict[str, Any] = data if self.ok else {}
        self.used: set[str] = set()

    def get(
        self,
        key: str,
        kind: type | tuple[type, ...],
        default: Any = _REQUIRED,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """The value of `key` if it has the right type and passes `check`, else the default."""
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                self.ctx.error(self.keypath + (key,), "is required")
                return None
            return default
        value = self.data[key]
        if not _is_type(value, kind):
            self.ctx.error(
                self.keypath + (key,),
                f"must be {_kind_name(kind)}, not {_type_name(value)} ({value!r})",
            )
            return None if default is _REQUIRED else default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int):
            value = float(value)  # TOML `retry = 30` is a duration like `retry = 30.0`
        problem = check(value) if check else None
        if problem:
            self.ctx.error(self.keypath + (key,), problem)
            return None if default is _REQUIRED else default
        return value

    def sub(self, key: str) -> _Section:
        self.used.add(key)
        return _Section(self.ctx, self.data.get(key, {}), self.keypath + (key,))

    def tables(self, key: str) -> list[_Section]:
        """An array of tables (`[[key]]`)."""
        self.used.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list):
            self.ctx.error(self.keypath + (key,), f"must be an array of tables ([[{key}]])")
            return []
        return [_Section(self.ctx, item, self.keypath + (key, i)) for i, item in enumerate(value)]

    def done(self) -> None:
        for key in self.data:
            if key not in self.used:
                allowed = ", ".join(sorted(self.used))
                self.ctx.error(self.keypath + (key,), f"unknown key (known here: {allowed})")


def _is_type(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, tuple(k for k in kinds if k is not bool))


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


# --- checks ------------------------------------------------------------------------------


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 (off) or more"


def _at_least(low: int) -> Callable[[int], str | None]:
    return lambda value: None if value >= low else f"must be at least {low}"


def _one_of(choices: Iterable[str]) -> Callable[[str], str | None]:
    choices = tuple(choices)
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def _strings(value: list[Any]) -> str | None:
    return None if all(isinstance(v, str) for v in value) else "must be an array of strings"


_DOMAIN_RE = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")


def _domain_check(value: str) -> str | None:
    return None if _DOMAIN_RE.match(value.lower()) else f"{value!r} is not a domain name or *.suffix"


def _domains(value: list[Any]) -> str | None:
    return _strings(value) or next((p for p in map(_domain_check, value) if p), None)


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


def _address(section: _Section, key: str, need_port: bool) -> Address | None:
    text = section.get(key, str)
    if text is None:
        return None
    try:
        return parse_address(text, need_port)
    except ValueError as exc:
        section.ctx.error(section.keypath + (key,), str(exc))
        return None


# --- sections ----------------------------------------------------------------------------


def _build(ctx: _Context, data: dict[str, Any]) -> Config:
    top = _Section(ctx, data, ())
    gateway = _gateway(top.sub("gateway"))
    farms = [_serverfarm(s, gateway) for s in top.tables("serverfarm")]
    vservers = [_vserver(s, gateway) for s in top.tables("vserver")]
    srv = _srv(top.sub("srv"), gateway) if "srv" in top.data else None
    top.done()
    _cross_check(ctx, vservers, farms)
    return Config(
        path=ctx.path,
        gateway=gateway,
        vservers=tuple(v for v in vservers if v is not None),
        serverfarms=tuple(f for f in farms if f is not None),
        srv=srv,
    )


def _gateway(s: _Section) -> GatewayConfig:
    d, k = GatewayConfig(), Keepalive()
    ka = s.sub("keepalive")
    keepalive = Keepalive(
        idle=ka.get("idle", float, k.idle, _positive),
        interval=ka.get("interval", float, k.interval, _positive),
        count=ka.get("count", int, k.count, _at_least(1)),
        user_timeout=ka.get("user_timeout", float, k.user_timeout, _positive),
    )
    ka.done()
    gateway = GatewayConfig(
        name=s.get("name", str, None, _domain_check),
        control_socket=s.get("control_socket", str, None),
        domains=tuple(d.lower() for d in s.get("domains", list, [], _domains)),
        header_timeout=s.get("header_timeout", float, d.header_timeout, _positive),
        max_header_bytes=s.get("max_header_bytes", int, d.max_header_bytes, _at_least(256)),
        max_hello_bytes=s.get("max_hello_bytes", int, d.max_hello_bytes, _at_least(512)),
        negotiation_timeout=s.get("negotiation_timeout", float, d.negotiation_timeout,
                                  _positive),
        connect_timeout=s.get("connect_timeout", float, d.connect_timeout, _positive),
        hedge_delay=s.get("hedge_delay", float, d.hedge_delay, _not_negative),
        response_timeout=s.get("response_timeout", float, d.response_timeout, _not_negative),
        log_format=s.get("log_format", str, d.log_format, _one_of(LOG_FORMATS)),
        log_connect=s.get("log_connect", bool, d.log_connect),
        workers=s.get("workers", int, d.workers, _at_least(1)),
        relay=s.get("relay", str, d.relay, _one_of(("splice", "copy"))),
        keepalive=keepalive,
        shutdown_timeout=s.get("shutdown_timeout", float, d.shutdown_timeout, _not_negative),
        control_group=s.get("control_group", str, None, _group_check),
        metrics=_address(s, "metrics", need_port=True) if "metrics" in s.data else None,
    )
    s.done()
    return gateway


def _max_connecting(s: _Section, default: int | None) -> int | None:
    """A count of attempts in flight, or 0 for no limit (None in the model)."""
    value = s.get("max_connecting", int, default if default is not None else 0, _at_least(0))
    return value or None


def _percent(value: int) -> str | None:
    return None if 0 <= value <= 100 else "must be a percentage, 0 (off) to 100"


def _group_check(value: str) -> str | None:
    import grp

    try:
        grp.getgrnam(value)
    except KeyError:
        return f"no group named {value!r} on this machine"
    return None


def _serverfarm(s: _Section, gateway: GatewayConfig) -> ServerfarmConfig | None:
    if not s.ok:
        return None
    reals = []
    for r in s.tables("real"):
        real = _real(r)
        if real is not None:
            reals.append(real)
    d = ServerfarmConfig("")
    farm = ServerfarmConfig(
        name=s.get("name", str),
        nat=s.get("nat", str, "server", _one_of(("server",))),
        predictor=s.get("predictor", str, "roundrobin", _one_of(PREDICTORS)),
        connect_timeout=s.get("connect_timeout", float, gateway.connect_timeout, _positive),
        hedge_delay=s.get("hedge_delay", float, gateway.hedge_delay, _not_negative),
        response_timeout=s.get("response_timeout", float, gateway.response_timeout,
                               _not_negative),
        slowstart=s.get("slowstart", float, d.slowstart, _not_negative),
        max_connecting=_max_connecting(s, d.max_connecting),
        queue_timeout=s.get("queue_timeout", float, d.queue_timeout, _not_negative),
        queue_length=s.get("queue_length", int, d.queue_length, _at_least(0)),
        panic_threshold=s.get("panic_threshold", int, d.panic_threshold, _percent),
        reals=tuple(reals),
        probes=_probes(s) or (),
        proxy_protocol=s.get("proxy_protocol", str, None, _one_of(PROXY_VERSIONS)),
    )
    s.done()
    _unique(s, "real", [str(r.address) for r in reals], "address")
    return farm


def _real(s: _Section) -> RealConfig | None:
    if not s.ok:
        return None
    d = Faildetect()
    fd = s.sub("faildetect")
    faildetect = Faildetect(
        numconns=fd.get("numconns", int, d.numconns, _at_least(1)),
        numclients=fd.get("numclients", int, d.numclients, _at_least(1)),
    )
    fd.done()
    real = RealConfig(
        address=_address(s, "address", need_port=False),  # type: ignore[arg-type]
        weight=s.get("weight", int, 8, _at_least(1)),
        reassign=s.get("reassign", int, 3, _at_least(1)),
        faildetect=faildetect,
        retry=s.get("retry", float, 60.0, _positive),
        inservice=s.get("inservice", bool, True),
        maxconns=s.get("maxconns", int, None, _at_least(1)),
        max_connecting=_max_connecting(s, None),
        standby=s.get("standby", bool, False),
        probes=_probes(s),
    )
    s.done()
    return real if real.address is not None else None


_PROBE_ONLY = {  # keys that mean something for some probe types only
    "kind": ("xmpp-stream",), "domain": ("xmpp-stream", "xmpp-ping"),
    "expect_starttls": ("xmpp-stream",), "jid": ("xmpp-ping",), "password": ("xmpp-ping",),
    "password_file": ("xmpp-ping",), "persistent": ("xmpp-ping",),
    "tls_verify": ("xmpp-ping",), "tls_ca_file": ("xmpp-ping",),
}
_JID_RE = re.compile(r"^[^@/\s]+@[^@/\s]+(/.+)?$")


def _probes(s: _Section) -> tuple[ProbeConfig, ...] | None:
    """`[[...probe]]` tables; None when the key is absent (a real then takes the farm's)."""
    if "probe" not in s.data:
        s.used.add("probe")
        return None
    probes = (_probe(p) for p in s.tables("probe"))
    return tuple(p for p in probes if p is not None)


def _probe(s: _Section) -> ProbeConfig | None:
    if not s.ok:
        return None
    d = ProbeConfig(type="tcp")
    probe_type = s.get("type", str, _REQUIRED, _one_of(PROBE_TYPES))
    probe = ProbeConfig(
        type=probe_type,
        interval=s.get("interval", float, d.interval, _positive),
        timeout=s.get("timeout", float, d.timeout, _positive),
        rise=s.get("rise", int, d.rise, _at_least(1)),
        fall=s.get("fall", int, d.fall, _at_least(1)),
        port=s.get("port", int, None, _port_check),
        kind=s.get("kind", str, d.kind, _one_of(PROBE_KINDS)),
        domain=s.get("domain", str, None, _domain_check),
        expect_starttls=s.get("expect_starttls", bool, d.expect_starttls),
        jid=s.get("jid", str, None, lambda v: None if _JID_RE.match(v) else
                  f"{v!r} is not a jid of the form user@domain"),
        password=_secret(s, "password"),
        password_file=s.get("password_file", str, None),
        persistent=s.get("persistent", bool, d.persistent),
        tls_verify=s.get("tls_verify", bool, d.tls_verify),
        tls_ca_file=s.get("tls_ca_file", str, None, _readable_file),
    )
    s.done()
    if probe_type is None:
        return None
    for key, types in _PROBE_ONLY.items():
        if key in s.data and probe_type not in types:
            s.ctx.error(s.keypath + (key,), "applies only to type = "
                        + " or ".join(f'"{t}"' for t in types))
    if probe_type == "xmpp-stream" and "domain" not in s.data:
        s.ctx.error(s.keypath + ("domain",), 'is required for type = "xmpp-stream"')
    if probe_type == "xmpp-ping":
        probe = _ping_secret(s, probe)
    return probe


def _ping_secret(s: _Section, probe: ProbeConfig) -> ProbeConfig:
    """An xmpp-ping probe logs in: it needs a jid and exactly one of password/password_file.

    The file is read now, one line, trailing newline dropped; its content never enters a
    message (a file holding the password is the point of `password_file`)."""
    if probe.jid is None and "jid" not in s.data:
        s.ctx.error(s.keypath + ("jid",), 'is required for type = "xmpp-ping"')
    if probe.password is not None and probe.password_file is not None:
        s.ctx.error(s.keypath + ("password_file",), "give password or password_file, not both")
        return probe
    if probe.password_file is None:
        if probe.password is None and "password" not in s.data:
            s.ctx.error(s.keypath + ("password_file",),
                        'is required for type = "xmpp-ping" (or give password)')
        return probe
    try:
        text = Path(probe.password_file).read_text(encoding="utf-8")
    except OSError as exc:
        s.ctx.error(s.keypath + ("password_file",),
                    f"cannot read {probe.password_file}: {exc.strerror}")
        return probe
    except UnicodeDecodeError:
        s.ctx.error(s.keypath + ("password_file",), f"{probe.password_file} is not UTF-8 text")
        return probe
    password = text.splitlines()[0] if text else ""
    if not password:
        s.ctx.error(s.keypath + ("password_file",), f"{probe.password_file} is empty")
        return probe
    return replace(probe, password=password)


def _secret(s: _Section, key: str) -> str | None:
    """Like `get(key, str)`, but a wrong value is never echoed: it may be a password."""
    s.used.add(key)
    value = s.data.get(key)
    if value is not None and not isinstance(value, str):
        s.ctx.error(s.keypath + (key,), f"must be a string, not {_type_name(value)}")
        return None
    return value


def _port_check(value: int) -> str | None:
    return None if 0 < value < 65536 else f"{value} is not a port (1-65535)"


def _readable_file(value: str) -> str | None:
    path = Path(value)
    if not path.is_file():
        return f"{value}: no such file"
    return None


def _vserver(s: _Section, gateway: GatewayConfig) -> VserverConfig | None:
    if not s.ok:
        return None
    routes = []
    for r in s.tables("route"):
        route = Route(
            serverfarm=r.get("serverfarm", str),
            kind=r.get("kind", str, None, _one_of(KINDS)),
            domain=r.get("domain", str, None, _domain_check),
        )
        r.done()
        if route.kind is None and route.domain is None:
            r.ctx.error(r.keypath, "a route needs `kind`, `domain` or both")
        routes.append(route)
    kinds = s.get("kinds", list, ["c2s", "s2s"],
                  lambda v: _strings(v) or next((f"unknown kind {k!r} (known: {', '.join(KINDS)})"
                                                 for k in v if k not in KINDS), None))
    vserver = VserverConfig(
        name=s.get("name", str),
        virtual=_address(s, "virtual", need_port=True),  # type: ignore[arg-type]
        mode=s.get("mode", str, "starttls", _one_of(MODES)),
        serverfarm=s.get("serverfarm", str, None),
        inservice=s.get("inservice", bool, True),
        require_starttls=s.get("require_starttls", bool, False),
        kinds=tuple(kinds),
        routes=tuple(routes),
        header_timeout=s.get("header_timeout", float, gateway.header_timeout, _positive),
        negotiation_timeout=s.get("negotiation_timeout", float, gateway.negotiation_timeout,
                                  _positive),
        max_header_bytes=s.get("max_header_bytes", int, gateway.max_header_bytes, _at_least(256)),
        max_hello_bytes=s.get("max_hello_bytes", int, gateway.max_hello_bytes, _at_least(512)),
        accept_proxy=_networks(s, "accept_proxy"),
        limits=_limits(s.sub("limits")),
        srv=_srv_services(s),
    )
    s.done()
    if vserver.serverfarm is None and not routes:
        s.ctx.error(s.keypath + ("serverfarm",), "is required (or give [[vserver.route]] entries)")
    if vserver.require_starttls and vserver.mode != "starttls":
        s.ctx.error(s.keypath + ("require_starttls",), 'only applies to mode = "starttls"')
    return vserver if vserver.virtual is not None else None


def _networks(s: _Section, key: str) -> tuple[Any, ...]:
    """`["10.0.0.0/8", "::1"]`: the sources a PROXY header is believed from."""
    networks = []
    for i, text in enumerate(s.get(key, list, [], _strings)):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            s.ctx.error(s.keypath + (key, i), f"{text!r} is not an address or network")
    return tuple(networks)


def _limits(s: _Section) -> Limits:
    limits = Limits(
        maxconns=s.get("maxconns", int, None, _at_least(1)),
        maxconns_per_ip=s.get("maxconns_per_ip", int, None, _at_least(1)),
        rate_per_ip=s.get("rate_per_ip", float, None, _positive),
        burst_per_ip=s.get("burst_per_ip", int, None, _at_least(1)),
    )
    s.done()
    if limits.burst_per_ip is not None and limits.rate_per_ip is None:
        s.ctx.error(s.keypath + ("burst_per_ip",), "needs rate_per_ip")
    return limits


def _srv_services(s: _Section) -> tuple[str, ...] | None:
    if "srv" not in s.data:
        s.used.add("srv")
        return None
    value = s.get("srv", list, [], lambda v: _strings(v) or next(
        (f"unknown service {x!r} (known: {', '.join(SRV_SERVICES)})"
         for x in v if x not in SRV_SERVICES), None))
    return tuple(value)


def _fqdn(value: str) -> str | None:
    return _domain_check(value.rstrip(".")) if value != "." else "must be a host name"


def _srv(s: _Section, gateway: GatewayConfig) -> SrvConfig | None:
    if not s.ok:
        return None
    default_zones = [d for d in gateway.domains if not d.startswith("*.")]
    zones = [z.lower().rstrip(".") for z in s.get("zones", list, default_zones, _domains)]
    if not zones:
        s.ctx.error(s.keypath + ("zones",), "is required when gateway.domains names no domain")
    hosts = s.sub("real_hosts")
    real_hosts = []
    for address, name in hosts.data.items():
        hosts.used.add(address)
        try:
            parsed = parse_address(address, need_port=False)
        except ValueError as exc:
            hosts.ctx.error(hosts.keypath + (address,), str(exc))
            continue
        if not isinstance(name, str) or _fqdn(name):
            hosts.ctx.error(hosts.keypath + (address,), "must be a host name")
            continue
        real_hosts.append((parsed.host, name.lower()))
    d = SrvConfig(zones=())
    update = None
    if "update" in s.data:
        u = s.sub("update")
        server = _address(u, "server", need_port=False)
        update = SrvUpdate(
            server=Address(server.host, server.port or 53) if server else Address("0.0.0.0", 53),
            key_file=u.get("key_file", str, None, _readable_file),
            coalesce=u.get("coalesce", float, 1.0, _not_negative),
            retry_min=u.get("retry_min", float, 1.0, _positive),
            retry_max=u.get("retry_max", float, 60.0, _positive),
        )
        u.done()
    else:
        s.used.add("update")
    srv = SrvConfig(
        zones=tuple(zones),
        listen=_address(s, "listen", need_port=True) if "listen" in s.data else None,
        ttl=s.get("ttl", int, d.ttl, _at_least(0)),
        target=s.get("target", str, d.target, _fqdn).lower(),
        addresses=tuple(_ip_list(s, "addresses")),
        gateway_priority=s.get("gateway_priority", int, d.gateway_priority, _uint16),
        publish_reals=s.get("publish_reals", bool, d.publish_reals),
        real_priority=s.get("real_priority", int, d.real_priority, _uint16),
        real_hosts=tuple(real_hosts),
        ns=tuple(n.lower().rstrip(".") for n in s.get("ns", list, [], lambda v: _strings(v) or next(
            (p for p in map(_fqdn, v) if p), None))),
        update=update,
    )
    s.done()
    if srv.real_priority <= srv.gateway_priority and srv.publish_reals:
        s.ctx.error(s.keypath + ("real_priority",),
                    f"must be greater than gateway_priority ({srv.gateway_priority}): "
                    "clients try the lowest number first, and that should be the gateway")
    if srv.listen is None and srv.update is None:
        s.ctx.error(s.keypath, "give `listen` (embedded DNS server), [srv.update] (RFC 2136) "
                    "or both")
    return srv


def _uint16(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be 0-65535"


def _ip_list(s: _Section, key: str) -> list[str]:
    out = []
    for i, text in enumerate(s.get(key, list, [], _strings)):
        try:
            out.append(str(ipaddress.ip_address(text)))
        except ValueError:
            s.ctx.error(s.keypath + (key, i), f"{text!r} is not an IPv4 or IPv6 address")
    return out


def _unique(s: _Section, table: str, values: list[str], key: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            s.ctx.error(s.keypath + (table, i, key), f"duplicate {key} {value}")
        seen.add(value)


def _cross_check(ctx: _Context, vservers: list[VserverConfig | None],
                 farms: list[ServerfarmConfig | None]) -> None:
    """Facts that span sections: names resolve, nothing listens twice, names are unique."""
    farm_names: dict[str, int] = {}
    for i, farm in enumerate(farms):
        if farm is None or farm.name is None:
            continue
        if farm.name in farm_names:
            ctx.error(("serverfarm", i, "name"), f"duplicate serverfarm name {farm.name!r}")
        farm_names[farm.name] = i
    known = ", ".join(farm_names) or "none defined"
    names: set[str] = set()
    virtuals: set[str] = set()
    for i, v in enumerate(vservers):
        if v is None:
            continue
        if v.name in names:
            ctx.error(("vserver", i, "name"), f"duplicate vserver name {v.name!r}")
        names.add(v.name)
        if str(v.virtual) in virtuals:
            ctx.error(("vserver", i, "virtual"), f"duplicate virtual address {v.virtual}")
        virtuals.add(str(v.virtual))
        if v.serverfarm is not None and v.serverfarm not in farm_names:
            ctx.error(("vserver", i, "serverfarm"), f"no serverfarm named {v.serverfarm!r} ({known})")
        for j, route in enumerate(v.routes):
            if route.serverfarm is not None and route.serverfarm not in farm_names:
                ctx.error(("vserver", i, "route", j, "serverfarm"),
                          f"no serverfarm named {route.serverfarm!r} ({known})")


# ---------------------------------------------------------------------------------------
# Line numbers for key paths
# ---------------------------------------------------------------------------------------


class _Locator:
    """Maps a key path such as ("serverfarm", 0, "real", 2, "weight") to a source line.

    tomllib keeps no positions, so this re-reads the text the cheap way: table headers and
    `key =` lines, counting `[[array]]` entries per parent. It only has to be right for
    files tomllib accepted, which keeps it simple.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
    _KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\- ]+?)\s*=""")

    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, tuple[str | int, ...]]] = []
        self._index(text)

    def _index(self, text: str) -> None:
        table: tuple[str | int, ...] = ()
        last_index: dict[tuple[str | int, ...], int] = {}
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                keys = [k.strip().strip("\"'") for k in header.group(2).split(".")]
                path: tuple[str | int, ...] = ()
                for k in keys[:-1]:
                    path += (k,)
                    if path in last_index:
                        path += (last_index[path],)
                path += (keys[-1],)
                if header.group(1) == "[[":
                    last_index[path] = last_index.get(path, -1) + 1
                    path += (last_index[path],)
                table = path
                self.lines.append((number, table))
                continue
            key = self._KEY.match(line)
            if key and not line.lstrip().startswith("#"):
                parts = tuple(k.strip().strip("\"'") for k in key.group(1).split("."))
                self.lines.append((number, table + parts))

    def line_of(self, keypath: tuple[str | int, ...]) -> int | None:
        """The line that best matches: the key itself, else its nearest enclosing table."""
        best, best_len = None, 0
        for number, path in self.lines:
            n = _common_prefix(path, keypath)
            if n == len(path) and n > best_len:
                best, best_len = number, n
        return best


def _common_prefix(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
