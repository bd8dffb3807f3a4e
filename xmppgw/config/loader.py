"""The loader: TOML text to a `Config`, validated, with no I/O (`loads`).

`loads` reads nothing but its argument: no file is opened, no group looked up. What the file
names on this machine (a `control_group`, a `key_file`, a probe's `password_file` or
`tls_ca_file`) is recorded in `Config.external` at its file and line, and `resolve` looks
at it. So the same text always gives the same `Config`, and a config can be checked here,
then applied elsewhere, exactly as checked.

Defaults are not written here: `_defaults(cls)` reads them from the model's dataclass
fields. Allowed values come from the module that owns them.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

from xmppgw.config.locator import KeyPath, Locator, Names, problem, table_names, where
from xmppgw.config.model import (
    IMPLICIT_PROBE,
    KINDS,
    MAX_INTEGER,
    MAX_RATE,
    MAX_RETRY,
    MAX_SECONDS,
    MAX_WEIGHT,
    MODES,
    NATS,
    PROBE_KINDS,
    PROBE_TYPES,
    RELAYS,
    SRV_SERVICES,
    Address,
    Config,
    ConfigError,
    ExternalRef,
    Faildetect,
    GatewayConfig,
    Keepalive,
    Limits,
    ProbeConfig,
    RealConfig,
    Route,
    ServerfarmConfig,
    SrvConfig,
    SrvUpdate,
    VserverConfig,
    parse_address,
)
from xmppgw.log import FORMATS as LOG_FORMATS
from xmppgw.slb.predictors import PREDICTORS
from xmppgw.wire.proxyproto import VERSIONS as PROXY_VERSIONS

_REQUIRED: Any = object()


def loads(text: str, path: str = "<config>") -> Config:
    """Parse and validate; raises ConfigError listing every problem found. Pure: see above."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    ctx = _Context(path, text, table_names(data.get("serverfarm"), data.get("vserver")))
    config = _build(ctx, data)
    if ctx.found:
        raise ConfigError(ctx.messages())
    return config


def _defaults(cls: type) -> SimpleNamespace:
    """The model's defaults for `cls`, by field name: the one place a default is written.
    Required fields (no default) are left out."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return SimpleNamespace(**out)


class _Context:
    """Collects problems, each placed at a line of the source by its key path, and the
    values `resolve` must look up on this machine."""

    def __init__(self, path: str, text: str, names: Names) -> None:
        self.path = path
        self.locator = Locator(text)
        self.names = names
        self.found: list[tuple[int, KeyPath, str]] = []  # (line or 0, key path, message)
        self.cautions: list[tuple[int, KeyPath, str]] = []  # the same, for warnings
        self.external: list[ExternalRef] = []

    def where(self, keypath: KeyPath) -> str:
        return where(self.path, self.locator.line_of(keypath))

    def error(self, keypath: KeyPath, message: str) -> None:
        self.found.append((self.locator.line_of(keypath) or 0, keypath, message))

    def warn(self, keypath: KeyPath, message: str) -> None:
        self.cautions.append((self.locator.line_of(keypath) or 0, keypath, message))

    def messages(self, found: list[tuple[int, KeyPath, str]] | None = None) -> list[str]:
        """Every problem as `file:line: key.path: message`, in line order (those of the
        whole file, with no line, first), as an operator reads the file top to bottom."""
        return [problem(where(self.path, line), keypath, message, self.names)
                for line, keypath, message in sorted(
                    self.found if found is None else found, key=lambda f: f[0])]

    def refer(self, kind: str, value: str | None, keypath: KeyPath) -> str | None:
        """Note a value for `resolve` (kind: "group", "file" or "secret"); returns it."""
        if value is not None:
            self.external.append(ExternalRef(kind, value, keypath, self.where(keypath)))
        return value


class _Section:
    """One TOML table being read: typed getters, and unknown keys reported at the end."""

    def __init__(self, ctx: _Context, data: Any, keypath: KeyPath) -> None:
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
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            # The key's own bound first (weight: 255), so one message gives the real limit.
            self.ctx.error(self.keypath + (key,),
                           (check(value) if check else None) or f"must be at most {MAX_INTEGER}")
            return None if default is _REQUIRED else default
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
            header = ".".join(p for p in (*self.keypath, key) if isinstance(p, str))
            self.ctx.error(self.keypath + (key,), f"must be an array of tables ([[{header}]])")
            return []
        return [_Section(self.ctx, item, self.keypath + (key, i)) for i, item in enumerate(value)]

    def done(self) -> None:
        for key in self.data:
            if key not in self.used:
                allowed = ", ".join(sorted(self.used))
                self.ctx.error(self.keypath + (key,), f"unknown key (known here: {allowed})"
                               + did_you_mean(key, self.used))


def did_you_mean(word: object, known: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the known name closest to a misspelt `word`, else ""."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    if not close:
        close = [k for k in sorted(known) if k.lower() == word.lower()][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


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


def _finite_positive(value: float) -> str | None:
    if not math.isfinite(value):  # TOML allows nan and inf; no time is either
        return "must be a finite number"
    return None if value > 0 else "must be greater than 0"


def _finite_not_negative(value: float) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    return None if value >= 0 else "must be 0 (off) or more"


def _up_to(high: float, why: str,
           low: Callable[[Any], str | None] = _finite_positive) -> Callable[[Any], str | None]:
    """`low`'s check, then at most `high` (`why`: whose limit it is)."""
    return lambda value: low(value) or (None if value <= high
                                        else f"must be at most {high} ({why})")


# A duration: greater than 0 (or 0 for off), at most a day.
_positive = _up_to(MAX_SECONDS, "a day", _finite_positive)
_not_negative = _up_to(MAX_SECONDS, "a day", _finite_not_negative)


# Linux's limits (tcp(7)): a bigger value makes setsockopt fail, and the kernel's default
# would apply silently instead of the configured one.
MAX_KEEPIDLE = MAX_KEEPINTVL = 32767  # s, MAX_TCP_KEEPIDLE / MAX_TCP_KEEPINTVL
MAX_KEEPCNT = 127  # MAX_TCP_KEEPCNT
MAX_USER_TIMEOUT = 2147483  # s: TCP_USER_TIMEOUT is an int of milliseconds


def _at_least(low: int) -> Callable[[int], str | None]:
    return lambda value: None if value >= low else f"must be at least {low}"


def _name(value: str) -> str | None:
    """A vserver's or serverfarm's name: one word, as `show` prints it and commands take it."""
    if not value:
        return "must not be empty"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"{value!r} must be one word, with no spaces or control characters"
    return None


def _one_of(choices: Iterable[str]) -> Callable[[str], str | None]:
    choices = tuple(choices)
    return lambda value: (None if value in choices else f"must be one of {', '.join(choices)}"
                          + did_you_mean(value, choices))


_DOMAIN_RE = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")


def _domain_check(value: str) -> str | None:
    return None if _DOMAIN_RE.match(value.lower()) else f"{value!r} is not a domain name or *.suffix"


def _each(s: _Section, key: str, default: list[str],
          check: Callable[[str], str | None] | None = None) -> list[str]:
    """An array of strings, each element checked on its own: every bad one is reported at
    its index and its own line (`gateway.domains[2]`), not only the first at the key."""
    good = []
    for i, value in enumerate(s.get(key, list, default)):
        if not isinstance(value, str):
            s.ctx.error(s.keypath + (key, i), f"must be a string, not {_type_name(value)} "
                        f"({value!r})")
            continue
        problem = check(value) if check else None
        if problem:
            s.ctx.error(s.keypath + (key, i), problem)
            continue
        good.append(value)
    return good


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
    farm_sections = top.tables("serverfarm")
    farms = [_serverfarm(s, gateway) for s in farm_sections]
    vservers = [_vserver(s, gateway) for s in top.tables("vserver")]
    top.used.add("srv")  # read only when given; known (and suggested) either way
    srv = _srv(top.sub("srv"), gateway) if "srv" in top.data else None
    top.done()
    _cross_check(ctx, vservers, farms)
    _farm_use(ctx, vservers, farms, [bool(s.data.get("real")) for s in farm_sections])
    if srv is not None and srv.publish_reals:
        unprobed = {f.name for s, f in zip(farm_sections, farms, strict=True)
                    if f is not None and "probe" not in s.data}
        published = _published_farms(vservers)
        farms = [dataclasses.replace(f, probes=(IMPLICIT_PROBE,))
                 if f is not None and f.name in unprobed & published else f for f in farms]
    return Config(
        path=ctx.path,
        gateway=gateway,
        vservers=tuple(v for v in vservers if v is not None),
        serverfarms=tuple(f for f in farms if f is not None),
        srv=srv,
        external=tuple(ctx.external),
        warnings=tuple(ctx.messages(ctx.cautions)),
    )


def _published_farms(vservers: list[VserverConfig | None]) -> set[str]:
    """The farms whose reals `[srv]` publishes: those a vserver with an SRV service sends
    c2s or s2s streams to, by default or by a route. (A farm in this set whose reals no zone
    ends up naming is still probed: a probe too many costs little, a stale record a lot.)"""
    names: set[str] = set()
    for v in vservers:
        if v is None or v.srv == () or (v.srv is None and not {"c2s", "s2s"} & set(v.kinds)):
            continue
        if v.serverfarm is not None:
            names.add(v.serverfarm)
        names.update(r.serverfarm for r in v.routes if r.kind != "component")
    return names


def _gateway(s: _Section) -> GatewayConfig:
    d, k = _defaults(GatewayConfig), _defaults(Keepalive)
    s.used.add("metrics")  # read below only when given; known here either way
    ka = s.sub("keepalive")
    keepalive = Keepalive(
        idle=ka.get("idle", float, k.idle, _up_to(MAX_KEEPIDLE, "TCP_KEEPIDLE")),
        interval=ka.get("interval", float, k.interval, _up_to(MAX_KEEPINTVL, "TCP_KEEPINTVL")),
        count=ka.get("count", int, k.count, _up_to(MAX_KEEPCNT, "TCP_KEEPCNT", _at_least(1))),
        user_timeout=ka.get("user_timeout", float, k.user_timeout,
                            _up_to(MAX_USER_TIMEOUT, "TCP_USER_TIMEOUT, in ms, is an int")),
    )
    ka.done()
    gateway = GatewayConfig(
        name=s.get("name", str, d.name, _domain_check),
        control_socket=s.get("control_socket", str, d.control_socket),
        domains=tuple(dict.fromkeys(  # names are case-insensitive: one entry each
            x.lower() for x in _each(s, "domains", list(d.domains), _domain_check))),
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
        relay=s.get("relay", str, d.relay, _one_of(RELAYS)),
        keepalive=keepalive,
        shutdown_timeout=s.get("shutdown_timeout", float, d.shutdown_timeout, _not_negative),
        control_group=s.ctx.refer("group", s.get("control_group", str, d.control_group),
                                  s.keypath + ("control_group",)),
        metrics=_address(s, "metrics", need_port=True) if "metrics" in s.data else d.metrics,
        freebind=s.get("freebind", bool, d.freebind),
    )
    s.done()
    return gateway


def _max_connecting(s: _Section, default: int | None) -> int | None:
    """A count of attempts in flight, or 0 for no limit (None in the model)."""
    value = s.get("max_connecting", int, default if default is not None else 0, _at_least(0))
    return value or None


def _percent(value: int) -> str | None:
    return None if 0 <= value <= 100 else "must be a percentage, 0 (off) to 100"


def _serverfarm(s: _Section, gateway: GatewayConfig) -> ServerfarmConfig | None:
    if not s.ok:
        return None
    reals = []
    addresses: dict[int, str] = {}  # by index in the file: an invalid real keeps its number
    for i, r in enumerate(s.tables("real")):
        real = _real(r)
        if real is not None:
            reals.append(real)
            addresses[i] = str(real.address)
    d = _defaults(ServerfarmConfig)
    farm = ServerfarmConfig(
        name=s.get("name", str, check=_name),
        nat=s.get("nat", str, d.nat, _one_of(NATS)),
        predictor=s.get("predictor", str, d.predictor, _one_of(PREDICTORS)),
        connect_timeout=s.get("connect_timeout", float, gateway.connect_timeout, _positive),
        hedge_delay=s.get("hedge_delay", float, gateway.hedge_delay, _not_negative),
        response_timeout=s.get("response_timeout", float, gateway.response_timeout,
                               _not_negative),
        slowstart=s.get("slowstart", float, d.slowstart, _not_negative),
        max_connecting=_max_connecting(s, d.max_connecting),
        queue_timeout=s.get("queue_timeout", float, d.queue_timeout, _not_negative),
        queue_length=s.get("queue_length", int, d.queue_length, _at_least(0)),
        panic_threshold=s.get("panic_threshold", int, d.panic_threshold, _percent),
        mass_close_streams=s.get("mass_close_streams", int, d.mass_close_streams,
                                 _at_least(0)),
        mass_close_share=s.get("mass_close_share", int, d.mass_close_share, _percent),
        mass_close_window=s.get("mass_close_window", float, d.mass_close_window, _positive),
        reals=tuple(reals),
        probes=_probes(s) or d.probes,
        proxy_protocol=s.get("proxy_protocol", str, d.proxy_protocol, _one_of(PROXY_VERSIONS)),
        directtls_port=s.get("directtls_port", int, d.directtls_port, _port_check),
    )
    s.done()
    _unique(s, "real", addresses, "address")
    return farm


def _real(s: _Section) -> RealConfig | None:
    if not s.ok:
        return None
    f, d = _defaults(Faildetect), _defaults(RealConfig)
    fd = s.sub("faildetect")
    faildetect = Faildetect(
        numconns=fd.get("numconns", int, f.numconns, _at_least(1)),
        numclients=fd.get("numclients", int, f.numclients, _at_least(1)),
    )
    fd.done()
    real = RealConfig(
        address=_address(s, "address", need_port=False),  # type: ignore[arg-type]
        weight=s.get("weight", int, d.weight, _up_to(MAX_WEIGHT, "IOS's weight range",
                                                    _at_least(1))),
        reassign=s.get("reassign", int, d.reassign, _at_least(1)),
        faildetect=faildetect,
        retry=s.get("retry", float, d.retry, _up_to(MAX_RETRY, "IOS's retry range")),
        inservice=s.get("inservice", bool, d.inservice),
        maxconns=s.get("maxconns", int, d.maxconns, _at_least(1)),
        max_connecting=_max_connecting(s, d.max_connecting),
        standby=s.get("standby", bool, d.standby),
        probes=_probes(s),
        directtls_port=s.get("directtls_port", int, d.directtls_port, _port_check),
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
    """`[[...probe]]` tables; None when the key is absent (a real then takes the farm's; a
    farm whose reals `[srv]` publishes gets `IMPLICIT_PROBE`), `()` for `probe = []`."""
    if "probe" not in s.data:
        s.used.add("probe")
        return None
    probes = (_probe(p) for p in s.tables("probe"))
    return tuple(p for p in probes if p is not None)


def _probe(s: _Section) -> ProbeConfig | None:
    if not s.ok:
        return None
    d = _defaults(ProbeConfig)
    probe_type = s.get("type", str, _REQUIRED, _one_of(PROBE_TYPES))
    probe = ProbeConfig(
        type=probe_type,
        interval=s.get("interval", float, d.interval, _positive),
        timeout=s.get("timeout", float, d.timeout, _positive),
        rise=s.get("rise", int, d.rise, _at_least(1)),
        fall=s.get("fall", int, d.fall, _at_least(1)),
        port=s.get("port", int, d.port, _port_check),
        kind=s.get("kind", str, d.kind, _one_of(PROBE_KINDS)),
        domain=s.get("domain", str, d.domain, _domain_check),
        expect_starttls=s.get("expect_starttls", bool, d.expect_starttls),
        jid=s.get("jid", str, d.jid, lambda v: None if _JID_RE.match(v) else
                  f"{v!r} is not a jid of the form user@domain"),
        password=_secret(s, "password"),
        password_file=s.get("password_file", str, d.password_file),
        persistent=s.get("persistent", bool, d.persistent),
        tls_verify=s.get("tls_verify", bool, d.tls_verify),
        tls_ca_file=s.ctx.refer("file", s.get("tls_ca_file", str, d.tls_ca_file),
                                s.keypath + ("tls_ca_file",)),
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

    The file itself is read by `resolve`; its content never enters a message (a file
    holding the password is the point of `password_file`)."""
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
    s.ctx.refer("secret", probe.password_file, s.keypath + ("password_file",))
    return probe


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


def _vserver(s: _Section, gateway: GatewayConfig) -> VserverConfig | None:
    if not s.ok:
        return None
    routes = []
    dr = _defaults(Route)
    for r in s.tables("route"):
        route = Route(
            serverfarm=r.get("serverfarm", str),
            kind=r.get("kind", str, dr.kind, _one_of(KINDS)),
            domain=r.get("domain", str, dr.domain, _domain_check),
        )
        r.done()
        if route.kind is None and route.domain is None:
            r.ctx.error(r.keypath, "a route needs `kind`, `domain` or both")
        routes.append(route)
    d = _defaults(VserverConfig)
    kinds = _each(s, "kinds", list(d.kinds), lambda k: None if k in KINDS else (
        f"unknown kind {k!r} (known: {', '.join(KINDS)})" + did_you_mean(k, KINDS)))
    vserver = VserverConfig(
        name=s.get("name", str, check=_name),
        virtual=_address(s, "virtual", need_port=True),  # type: ignore[arg-type]
        mode=s.get("mode", str, d.mode, _one_of(MODES)),
        serverfarm=s.get("serverfarm", str, d.serverfarm),
        inservice=s.get("inservice", bool, d.inservice),
        require_starttls=s.get("require_starttls", bool, d.require_starttls),
        kinds=tuple(kinds),
        routes=tuple(routes),
        header_timeout=s.get("header_timeout", float, gateway.header_timeout, _positive),
        negotiation_timeout=s.get("negotiation_timeout", float, gateway.negotiation_timeout,
                                  _positive),
        max_header_bytes=s.get("max_header_bytes", int, gateway.max_header_bytes, _at_least(256)),
        max_hello_bytes=s.get("max_hello_bytes", int, gateway.max_hello_bytes, _at_least(512)),
        accept_proxy=_networks(s, "accept_proxy"),
        freebind=s.get("freebind", bool, gateway.freebind),
        limits=_limits(s.sub("limits")),
        srv=_srv_services(s),
    )
    s.done()
    if vserver.serverfarm is None and not routes:
        s.ctx.error(s.keypath + ("serverfarm",), "is required (or give [[vserver.route]] entries)")
    if vserver.require_starttls and vserver.mode == "directtls":
        s.ctx.error(s.keypath + ("require_starttls",),
                    'only applies to mode = "starttls" or "both"')
    return vserver if vserver.virtual is not None else None


def _networks(s: _Section, key: str) -> tuple[Any, ...]:
    """`["10.0.0.0/8", "::1"]`: the sources a PROXY header is believed from."""
    networks = []
    for i, text in enumerate(s.get(key, list, [])):
        if not isinstance(text, str):
            s.ctx.error(s.keypath + (key, i), f"must be a string, not {_type_name(text)}")
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            s.ctx.error(s.keypath + (key, i), f"{text!r} is not an address or network")
    return tuple(networks)


def _limits(s: _Section) -> Limits:
    d = _defaults(Limits)
    limits = Limits(
        maxconns=s.get("maxconns", int, d.maxconns, _at_least(1)),
        maxconns_per_ip=s.get("maxconns_per_ip", int, d.maxconns_per_ip, _at_least(1)),
        rate_per_ip=s.get("rate_per_ip", float, d.rate_per_ip,
                          _up_to(MAX_RATE, "connections a second")),
        burst_per_ip=s.get("burst_per_ip", int, d.burst_per_ip, _at_least(1)),
    )
    s.done()
    if limits.burst_per_ip is not None and limits.rate_per_ip is None:
        s.ctx.error(s.keypath + ("burst_per_ip",), "needs rate_per_ip")
    return limits


def _srv_services(s: _Section) -> tuple[str, ...] | None:
    if "srv" not in s.data:
        s.used.add("srv")
        return None
    value = _each(s, "srv", [], lambda x: None if x in SRV_SERVICES else (
        f"unknown service {x!r} (known: {', '.join(SRV_SERVICES)})"
        + did_you_mean(x, SRV_SERVICES)))
    return tuple(value)


def _fqdn(value: str) -> str | None:
    return _domain_check(value.rstrip(".")) if value != "." else "must be a host name"


def _srv(s: _Section, gateway: GatewayConfig) -> SrvConfig | None:
    if not s.ok:
        return None
    default_zones = [d for d in gateway.domains if not d.startswith("*.")]
    zones = [z.lower().rstrip(".") for z in _each(s, "zones", default_zones, _domain_check)]
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
    d, du = _defaults(SrvConfig), _defaults(SrvUpdate)
    update = d.update
    if "update" in s.data:
        u = s.sub("update")
        server = _address(u, "server", need_port=False)
        update = SrvUpdate(
            server=Address(server.host, server.port or 53) if server else Address("0.0.0.0", 53),
            key_file=s.ctx.refer("file", u.get("key_file", str, du.key_file),
                                 u.keypath + ("key_file",)),
            coalesce=u.get("coalesce", float, du.coalesce, _not_negative),
            retry_min=u.get("retry_min", float, du.retry_min, _positive),
            retry_max=u.get("retry_max", float, du.retry_max, _positive),
        )
        u.done()
    else:
        s.used.add("update")
    s.used.add("listen")  # read below only when given; known here either way
    srv = SrvConfig(
        zones=tuple(zones),
        listen=_address(s, "listen", need_port=True) if "listen" in s.data else d.listen,
        ttl=s.get("ttl", int, d.ttl, _at_least(0)),
        target=s.get("target", str, d.target, _fqdn).lower(),
        addresses=tuple(_ip_list(s, "addresses")),
        gateway_priority=s.get("gateway_priority", int, d.gateway_priority, _uint16),
        publish_reals=s.get("publish_reals", bool, d.publish_reals),
        real_priority=s.get("real_priority", int, d.real_priority, _uint16),
        real_hosts=tuple(real_hosts),
        ns=tuple(n.lower().rstrip(".") for n in _each(s, "ns", list(d.ns), _fqdn)),
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
    for i, text in enumerate(s.get(key, list, [])):
        if not isinstance(text, str):
            s.ctx.error(s.keypath + (key, i), f"must be a string, not {_type_name(text)}")
            continue
        try:
            out.append(str(ipaddress.ip_address(text)))
        except ValueError:
            s.ctx.error(s.keypath + (key, i), f"{text!r} is not an IPv4 or IPv6 address")
    return out


def _unique(s: _Section, table: str, values: dict[int, str], key: str) -> None:
    """Each later repeat of a value is reported at its own index in `table`."""
    seen: set[str] = set()
    for i, value in values.items():
        if value in seen:
            s.ctx.error(s.keypath + (table, i, key), f"duplicate {key} {value}")
        seen.add(value)


def _farm_use(ctx: _Context, vservers: list[VserverConfig | None],
              farms: list[ServerfarmConfig | None], has_reals: list[bool]) -> None:
    """A farm a vserver sends connections to must have a real (else every one fails); a
    farm no vserver uses is allowed (being prepared, say) but worth a warning."""
    users: dict[str, list[str]] = {}
    for v in vservers:
        if v is None:
            continue
        for name in (v.serverfarm, *(r.serverfarm for r in v.routes)):
            if name is not None and v.name not in users.setdefault(name, []):
                users[name].append(v.name)
    for i, farm in enumerate(farms):
        if farm is None or farm.name is None:
            continue
        using = users.get(farm.name)
        if not using:
            ctx.warn(("serverfarm", i), "no vserver uses this serverfarm")
        elif not has_reals[i]:
            ctx.error(("serverfarm", i), f"serverfarm {farm.name!r} has no [[serverfarm.real]], "
                      f"and vserver {', '.join(using)} sends connections to it: every one "
                      "would fail")


def _cross_check(ctx: _Context, vservers: list[VserverConfig | None],
                 farms: list[ServerfarmConfig | None]) -> None:
    """Facts that span sections: names resolve, nothing listens twice, names are unique."""
    table_names: dict[str, int] = {}
    for i, farm in enumerate(farms):
        if farm is None or farm.name is None:
            continue
        if farm.name in table_names:
            ctx.error(("serverfarm", i, "name"), f"duplicate serverfarm name {farm.name!r}")
        table_names[farm.name] = i
    if not vservers and not farms:
        ctx.error(("vserver",), "an empty config: no [[vserver]] and no [[serverfarm]]")
    known = ", ".join(table_names) or "none defined"
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
        if v.serverfarm is not None and v.serverfarm not in table_names:
            ctx.error(("vserver", i, "serverfarm"), f"no serverfarm named {v.serverfarm!r} ({known})")
        for j, route in enumerate(v.routes):
            if route.serverfarm is not None and route.serverfarm not in table_names:
                ctx.error(("vserver", i, "route", j, "serverfarm"),
                          f"no serverfarm named {route.serverfarm!r} ({known})")


