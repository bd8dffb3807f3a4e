"""The SRV records the gateway publishes, computed from the config and live health.

Pure: a `Config`, a `Health` snapshot (which vservers listen, each real's state) and a
serial go in; a `Published` set of dnspython RRsets comes out. No I/O and no clock, so every
rule below is unit-tested as data, and the embedded server, `xmppgw zone` and the RFC 2136
sender all publish exactly the same records.

The rules (RFC 2782, RFC 6120 §3.2.1, XEP-0368):
- the gateway's own targets come first (`gateway_priority`); the reals follow at
  `real_priority`, weighted by their SLB weight, so a client that cannot reach the gateway
  still finds the service. Many clients sort by priority only and ignore the weight, so what
  matters is in the priority;
- standby reals are published one priority number after the others: they are a fallback
  in DNS as they are in the engine (used only when nothing else answers);
- a real that is FAILED, PROBE_FAILED or OUTOFSERVICE is left out; TESTING, MAXCONNS and
  OPERATIONAL stay (a real at its connection limit is still healthy);
- a vserver that is not listening publishes no gateway target, but its reals stay: they are
  what a client falls back to when the gateway is down;
- a service with no target at all is NODATA: the four service names always exist. The
  gateway never publishes the "service not available" target `.`: no config says that a
  service is decidedly not offered, and a transient outage must not be cached as "abort".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdata import Rdata
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

# The model only: the package's loader brings the logging set-up (asyncio) with it.
from xmppgw.config.model import SRV_SERVICES, Config, RealConfig, SrvConfig, VserverConfig
from xmppgw.slb.farm import RealState

IN = dns.rdataclass.IN
RdataType = dns.rdatatype.RdataType
RRset = dns.rrset.RRset

# States in which a real is left out of the answers at once (the TTL bounds what resolvers keep).
HIDDEN_STATES = frozenset({RealState.FAILED, RealState.PROBE_FAILED, RealState.OUTOFSERVICE})
GATEWAY_WEIGHT = 1  # equal shares between several gateway targets of one service
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 3600, 600, 604800  # for secondaries; none pull from us
CLIENT_PORTS, SERVER_PORTS = (5222, 5223), (5269, 5270)
KIND_OF_SIDE = {"client": "c2s", "server": "s2s"}
# ANY gets one RRset (RFC 8482 §4.1); the first of these the name holds.
ANY_PREFERENCE = (RdataType.SRV, RdataType.A, RdataType.AAAA, RdataType.SOA, RdataType.NS)


@dataclass(frozen=True, slots=True)
class Health:
    """What the records depend on besides the config: vservers listening, reals' states.

    `real_states` is keyed by (serverfarm name, real address as `show` prints it); a real
    not in it counts as the config says (in service or not)."""

    vservers_up: frozenset[str]
    real_states: Mapping[tuple[str, str], RealState] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> Health:
        """No running gateway: every vserver and real in service per config is up."""
        up = frozenset(v.name for v in config.vservers if v.inservice)
        states = {(f.name, str(r.address)): RealState.OPERATIONAL if r.inservice
                  else RealState.OUTOFSERVICE for f in config.serverfarms for r in f.reals}
        return cls(up, states)

    def real_published(self, farm: str, real: RealConfig) -> bool:
        state = self.real_states.get((farm, str(real.address)))
        if state is None:
            return real.inservice
        return state not in HIDDEN_STATES

    def visible(self, config: Config) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
        """The part of the health the records can show (vservers up, reals published).

        Cheap to compare, so the publisher rebuilds only when this changes, not when a real
        merely flips between OPERATIONAL and MAXCONNS."""
        reals = frozenset((f.name, str(r.address)) for f in config.serverfarms
                          for r in f.reals if self.real_published(f.name, r))
        return self.vservers_up, reals


# --- which vserver feeds which service --------------------------------------------------


def services_of(vserver: VserverConfig) -> tuple[str, ...]:
    """The SRV services a vserver is published under.

    `srv` if the operator set it; else the side (client/server) from `kinds` when it holds
    exactly one of c2s/s2s, else from the well-known port (5222/5223 client, 5269/5270
    server), else both. A vserver with neither c2s nor s2s (components only) publishes none.
    `starttls` vservers are `_xmpp-*`, `directtls` ones `_xmpps-*` (XEP-0368), `both` ones
    both."""
    if vserver.srv is not None:
        return vserver.srv
    kinds = [k for k in vserver.kinds if k in ("c2s", "s2s")]
    if not kinds:
        return ()
    if len(kinds) == 1:
        sides = ("client",) if kinds[0] == "c2s" else ("server",)
    elif vserver.virtual.port in CLIENT_PORTS:
        sides = ("client",)
    elif vserver.virtual.port in SERVER_PORTS:
        sides = ("server",)
    else:
        sides = ("client", "server")
    prefixes = {"starttls": ("_xmpp",), "directtls": ("_xmpps",)}.get(vserver.mode,
                                                                      ("_xmpp", "_xmpps"))
    return tuple(f"{prefix}-{side}._tcp" for prefix in prefixes for side in sides)


def stream_kind(service: str) -> str:
    """c2s for `_xmpp(s)-client._tcp`, s2s for `_xmpp(s)-server._tcp`."""
    return KIND_OF_SIDE[service.split(".")[0].rpartition("-")[2]]


# --- names -----------------------------------------------------------------------------


def absolute(text: str) -> dns.name.Name:
    """Config names are absolute without the trailing dot."""
    return dns.name.from_text(text.rstrip(".") + ".")


def under(label: str, origin: dns.name.Name) -> dns.name.Name:
    """`label` as a name below `origin`, or absolute if it ends with "." (the `target` rule)."""
    if label.endswith("."):
        return dns.name.from_text(label)
    return dns.name.from_text(label, origin=origin)


def with_suffix(name: dns.name.Name, suffix: str) -> dns.name.Name:
    """`xmpp.example.test` + "p5222" -> `xmpp-p5222.example.test`: one name per vserver."""
    first = name.labels[0].decode() + "-" + suffix
    return dns.name.Name((first.encode(),) + name.labels[1:])


def host_label(text: str) -> str:
    """A vserver name as a host-name label: lower case, letters, digits and hyphens."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "vserver"


def real_host(srv: SrvConfig, real: RealConfig, zone: dns.name.Name) -> dns.name.Name:
    """`real_hosts` if it names the real's address, else real-<address with dashes>.<zone>."""
    for address, host in srv.real_hosts:
        if address == real.address.host:
            return absolute(host)
    return dns.name.from_text("real-" + re.sub(r"[.:]", "-", real.address.host), zone)


def is_wildcard(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


def address_rdata(ip: str) -> Rdata:
    return AAAA(IN, RdataType.AAAA, ip) if ":" in ip else A(IN, RdataType.A, ip)


# --- the gateway's own targets ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayTarget:
    """Where one vserver is published: host name (per zone, if relative) and its addresses."""

    name: str               # `target`, or `target-<vserver>` when the vservers' addresses differ
    addresses: tuple[str, ...]

    def host(self, zone: dns.name.Name) -> dns.name.Name:
        return under(self.name, zone)


def gateway_targets(config: Config) -> dict[str, GatewayTarget]:
    """One target per published vserver, by vserver name.

    `srv.addresses` if given (one name for all); else the vservers' virtual addresses,
    wildcards skipped. If those are not all one address, each vserver gets a name of its own
    (`<target>-<vserver>`), so each name's A/AAAA is right for its port. A wildcard vserver
    listens on every address, so it takes all of them."""
    srv = config.srv
    assert srv is not None
    published = [v for v in config.vservers if services_of(v)]
    if srv.addresses:
        shared = GatewayTarget(srv.target, srv.addresses)
        return {v.name: shared for v in published}
    hosts = _unique(v.virtual.host for v in published if not is_wildcard(v.virtual.host))
    if len(hosts) <= 1:
        shared = GatewayTarget(srv.target, tuple(hosts))
        return {v.name: shared for v in published}
    return {v.name: GatewayTarget(_suffixed(srv.target, host_label(v.name)),
                                  tuple(hosts) if is_wildcard(v.virtual.host)
                                  else (v.virtual.host,))
            for v in published}


def _suffixed(target: str, suffix: str) -> str:
    if target.endswith("."):
        return with_suffix(dns.name.from_text(target), suffix).to_text()
    first, dot, rest = target.partition(".")
    return f"{first}-{suffix}{dot}{rest}"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- the published set ------------------------------------------------------------------


@dataclass(frozen=True, eq=False, slots=True)
class ZoneRecords:
    """One zone's records. `names` also holds the names that exist without records (the
    four service names, empty non-terminals such as `_tcp`): those answer NODATA."""

    origin: dns.name.Name
    nodes: Mapping[dns.name.Name, Mapping[RdataType, RRset]]
    names: frozenset[dns.name.Name]

    @property
    def soa(self) -> RRset:
        return self.nodes[self.origin][RdataType.SOA]

    def find(self, name: dns.name.Name, rdtype: RdataType) -> RRset | None:
        return self.nodes.get(name, {}).get(rdtype)

    def exists(self, name: dns.name.Name) -> bool:
        return name in self.names

    def first_of(self, name: dns.name.Name, preference: Iterable[RdataType]) -> RRset | None:
        node = self.nodes.get(name, {})
        return next((node[t] for t in preference if t in node), None)

    def rrsets(self) -> list[RRset]:
        """Apex first (SOA, NS), then by name, each name's types in a fixed order."""
        order = {RdataType.SOA: 0, RdataType.NS: 1, RdataType.SRV: 2, RdataType.A: 3,
                 RdataType.AAAA: 4}
        names = sorted(self.nodes, key=lambda n: (n != self.origin, n))
        return [rrset for n in names
                for rrset in sorted(self.nodes[n].values(), key=lambda r: order[r.rdtype])]


@dataclass(frozen=True, eq=False, slots=True)
class Published:
    """Everything the gateway publishes now, zone by zone, with the serial of this set.

    `foreign` names targets outside every zone: their A/AAAA are the operator's to publish."""

    serial: int
    zones: tuple[ZoneRecords, ...]  # deepest origin first: a nested zone wins the lookup
    foreign: tuple[dns.name.Name, ...] = ()

    def zone_for(self, name: dns.name.Name) -> ZoneRecords | None:
        return next((z for z in self.zones if name.is_subdomain(z.origin)), None)

    def addresses(self, name: dns.name.Name) -> list[RRset]:
        """The A and AAAA RRsets of `name`, for the additional section."""
        zone = self.zone_for(name)
        if zone is None:
            return []
        found = (zone.find(name, RdataType.A), zone.find(name, RdataType.AAAA))
        return [r for r in found if r is not None]

    def rrsets(self) -> list[RRset]:
        return [r for z in self.zones for r in z.rrsets()]

    def update_rrsets(self) -> list[RRset]:
        """What an RFC 2136 primary should hold: the SRV and their targets' A/AAAA (the
        primary keeps its own SOA and NS)."""
        rrsets = self.rrsets()
        targets = {rd.target for r in rrsets if r.rdtype == RdataType.SRV for rd in r}
        return [r for r in rrsets if r.rdtype == RdataType.SRV
                or (r.rdtype in (RdataType.A, RdataType.AAAA) and r.name in targets)]

    def content(self) -> frozenset[str]:
        """Every record but the SOA, one line each: equal means nothing a client sees
        changed, and the difference of two is what to log."""
        return frozenset(line for r in self.rrsets() if r.rdtype != RdataType.SOA
                         for line in r.to_text().splitlines())

    def to_zone_text(self, source: str = "") -> str:
        """Zone-file text, one block per zone, for operators who paste records by hand."""
        blocks = []
        for zone in sorted(self.zones, key=lambda z: z.origin):
            lines = [f"; xmppgw SRV records for {zone.origin.to_text()} serial {self.serial}"]
            if source:
                lines.append(f"; {source}")
            lines += [f"$ORIGIN {zone.origin.to_text()}", f"$TTL {zone.soa.ttl}"]
            lines += [r.to_text(origin=zone.origin, relativize=True) for r in zone.rrsets()]
            blocks.append("\n".join(lines))
        for name in self.foreign:
            blocks.append(f"; {name.to_text()} is outside these zones: publish its A/AAAA "
                          "where it lives")
        return "\n\n".join(blocks) + "\n"


def build(config: Config, health: Health, serial: int) -> Published:
    """The records for `config` as `health` says things are now, with SOA serial `serial`."""
    srv = config.srv
    if srv is None:
        raise ValueError("the config has no [srv] section")
    origins = [absolute(z) for z in srv.zones]
    builder = _Builder(config, srv, health, origins)
    for origin in origins:
        builder.zone(origin)
    return builder.finish(serial)


class _Builder:
    """Collects records per owner name over all zones, then splits them into zones (a
    target may live in another of the zones than the SRV that names it)."""

    def __init__(self, config: Config, srv: SrvConfig, health: Health,
                 origins: list[dns.name.Name]) -> None:
        self.config = config
        self.srv = srv
        self.health = health
        self.origins = sorted(origins, key=lambda o: -len(o))
        self.targets = gateway_targets(config)
        self.records: dict[dns.name.Name, dict[RdataType, list[Rdata]]] = {}
        self.empty: set[dns.name.Name] = set()  # names that exist without records
        self.foreign: list[dns.name.Name] = []

    def add(self, name: dns.name.Name, rdata: Rdata) -> None:
        rdatas = self.records.setdefault(name, {}).setdefault(rdata.rdtype, [])
        if rdata not in rdatas:
            rdatas.append(rdata)

    def origin_of(self, name: dns.name.Name) -> dns.name.Name | None:
        return next((o for o in self.origins if name.is_subdomain(o)), None)

    def add_host(self, name: dns.name.Name, addresses: Iterable[str]) -> None:
        """A/AAAA for a target: ours only if the name is in one of the zones."""
        if self.origin_of(name) is None:
            if name not in self.foreign:
                self.foreign.append(name)
            return
        for ip in addresses:
            self.add(name, address_rdata(ip))

    def zone(self, origin: dns.name.Name) -> None:
        for service in SRV_SERVICES:
            owner = dns.name.from_text(service, origin=origin)
            self.empty.add(owner)
            srvs = self.gateway_srvs(service, origin) + self.real_srvs(service, origin)
            seen: set[tuple[dns.name.Name, int]] = set()
            for rdata in sorted(srvs, key=lambda r: (r.priority, -r.weight, r.target, r.port)):
                if (rdata.target, rdata.port) not in seen:
                    seen.add((rdata.target, rdata.port))
                    self.add(owner, rdata)
        self.apex(origin)

    def feeding(self, service: str, origin: dns.name.Name) -> list[tuple[VserverConfig, str]]:
        """The vservers published under `service` that route its kind for this zone, each
        with the farm they send it to."""
        domain = origin.to_text(omit_final_dot=True)
        out = []
        for vserver in self.config.vservers:
            farm = vserver.farm_for(stream_kind(service), domain)
            if service in services_of(vserver) and farm is not None:
                out.append((vserver, farm))
        return out

    def gateway_srvs(self, service: str, origin: dns.name.Name) -> list[SRV]:
        out = []
        for vserver, _farm in self.feeding(service, origin):
            if vserver.name not in self.health.vservers_up:
                continue
            target = self.targets[vserver.name]
            host = target.host(origin)
            if not target.addresses and self.origin_of(host) is not None:
                continue  # we would answer for the name and have no address to give
            self.add_host(host, target.addresses)
            out.append(SRV(IN, RdataType.SRV, self.srv.gateway_priority, GATEWAY_WEIGHT,
                           vserver.virtual.port, host))
        return out

    def real_srvs(self, service: str, origin: dns.name.Name) -> list[SRV]:
        if not self.srv.publish_reals:
            return []
        out = []
        for vserver, farm_name in self.feeding(service, origin):
            for real in self.config.farm(farm_name).reals:
                if not self.health.real_published(farm_name, real):
                    continue
                host = real_host(self.srv, real, origin)
                self.add_host(host, [real.address.host])
                priority = self.srv.real_priority + (1 if real.standby else 0)
                if vserver.mode == "both" and service.startswith("_xmpps-"):
                    # a `both` vserver sends direct TLS to the real's direct-TLS port
                    port = self.config.farm(farm_name).directtls_endpoint(real)[1]
                else:
                    port = real.address.with_port(vserver.virtual.port)[1]
                out.append(SRV(IN, RdataType.SRV, min(priority, 65535), real.weight, port,
                               host))
        return out

    def apex(self, origin: dns.name.Name) -> None:
        """NS (srv.ns, or ns.<zone>) and their A/AAAA when they are in the zones: the
        listen address, or the gateway's addresses when it listens on a wildcard."""
        names = [absolute(n) for n in self.srv.ns] or [dns.name.from_text("ns", origin)]
        for name in names:
            self.add(origin, NS(IN, RdataType.NS, name))
            if self.origin_of(name) is not None:
                self.add_host(name, self.ns_addresses())

    def ns_addresses(self) -> list[str]:
        listen = self.srv.listen
        if listen is not None and not is_wildcard(listen.host):
            return [listen.host]
        return _unique(ip for t in self.targets.values() for ip in t.addresses)

    def finish(self, serial: int) -> Published:
        zones = []
        for origin in self.origins:
            soa = SOA(IN, RdataType.SOA, self.records[origin][RdataType.NS][0].target,
                      dns.name.from_text("hostmaster", origin), serial % 2**32,
                      SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.srv.ttl)
            self.records[origin][RdataType.SOA] = [soa]
            zones.append(self.zone_records(origin))
        return Published(serial % 2**32, tuple(zones), tuple(self.foreign))

    def zone_records(self, origin: dns.name.Name) -> ZoneRecords:
        mine = [n for n in (*self.records, *self.empty) if self.origin_of(n) == origin]
        nodes = {n: {t: dns.rrset.from_rdata_list(n, self.srv.ttl, rdatas)
                     for t, rdatas in self.records[n].items()}
                 for n in mine if n in self.records}
        names = {origin}
        for name in mine:  # each name and the empty non-terminals between it and the apex
            while name != origin and name not in names:
                names.add(name)
                name = name.parent()
        return ZoneRecords(origin, nodes, frozenset(names))
