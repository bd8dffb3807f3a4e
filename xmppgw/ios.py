"""Import a Cisco IOS SLB running-config (`ip slb serverfarm` / `real` / `ip slb vserver`).

The people who will run xmppgw often come from a Catalyst in front of their XMPP cluster,
as the seed article did. ``xmppgw import-ios`` turns that config into xmppgw TOML so the
first set-up is a review, not a rewrite.

What it reads. A running-config has hundreds of lines; only the ``ip slb serverfarm`` and
``ip slb vserver`` blocks matter. Everything else is skipped silently, since a config with
an ``interface`` or ``router ospf`` section is not a problem. A block is closed by the
first line that cannot belong to it. Copies pasted into articles and tickets lose the
indentation and put ``!`` between reals (the seed's does both), so a sub-command is
recognised by its first word, not by being indented. A non-indented line whose first word
is no SLB sub-command (``hostname``, ``no ip domain-lookup``) closes the block. An
indented unknown word inside a block is reported.

What it maps (defaults are the same in both when a command is absent: weight 8,
reassign 3, faildetect numconns 8 numclients 2, retry 60, predictor roundrobin):

=============================================  ==========================================
IOS                                            xmppgw
=============================================  ==========================================
``ip slb serverfarm N``                        ``[[serverfarm]] name``
``nat server``                                 ``nat = "server"``
``predictor leastconns|roundrobin``            ``predictor``
``real IP [PORT]``                             ``[[serverfarm.real]] address``
``weight``, ``reassign``, ``retry``            the same keys
``faildetect numconns N [numclients M]``       ``faildetect`` (numclients: IOS default, 2;
                                               1 when numconns is 1)
``maxconns N``                                 ``maxconns``
``inservice`` / ``no inservice``               ``inservice = true`` / ``false``
``ip slb vserver N``                           ``[[vserver]] name``
``virtual IP tcp PORT``                        ``virtual``; ``mode = "directtls"`` on 5223
                                               and 5270, else ``"starttls"``
``serverfarm N``                               ``serverfarm``
=============================================  ==========================================

An IOS real or vserver without ``inservice`` is out of service, so ``inservice`` is always
written out, never left to xmppgw's default of true.

What it does not map is reported, one line per command with its line number, and the same
text is left as a comment in the TOML where the command stood. Nothing is dropped
silently. The commands that look mappable but are not:

- ``synguard N``: a cap on *half-open TCP* connections. The kernel completes handshakes
  for xmppgw (with SYN cookies under a flood), so there is nothing to count. Turning it
  into ``[vserver.limits] maxconns`` would cap *established* streams at N, which it never
  meant. Set ``[vserver.limits]`` by hand.
- ``sticky N``: xmppgw keeps no sticky table. ``predictor = "sourcehash"`` sends a client
  back to the same real without one, across restarts and gateways.
- ``idle N``, ``delay N``: xmppgw keeps no connection table to age. Relayed streams are
  never timed out for being idle; TCP keepalive finds dead peers.
- ``probe NAME``: the probe is defined elsewhere (``ip slb probe``) in a form xmppgw
  cannot check. Write a ``[[serverfarm.probe]]``.
- ``replicate``, ``client``, ``access``, ``advertise``, ``bindid``, ``failaction``,
  ``nat client``, ``serverfarm ... backup``, ``inservice standby``, UDP vservers, and any
  other ``ip slb`` command.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

__all__ = ["DEFAULT_CONTROL_SOCKET", "Finding", "Imported", "import_ios"]

DEFAULT_CONTROL_SOCKET = "/run/xmppgw/xmppgw.sock"
DIRECTTLS_PORTS = (5223, 5270)  # XEP-0368: TLS from the first byte
STARTTLS_PORTS = (5222, 5269)

_NOT_MAPPED = {  # sub-command -> why it is not imported
    "sticky": "xmppgw keeps no sticky table; predictor = \"sourcehash\" sends a client back "
              "to the same real without one",
    "replicate": "xmppgw replicates no connection state; a second gateway with the same "
                 "config and sourcehash agrees on reals without it",
    "synguard": "counts half-open TCP, which the kernel handles for xmppgw (SYN cookies); "
                "it is not a cap on established streams: set [vserver.limits] by hand",
    "idle": "xmppgw never times out an idle relayed stream; TCP keepalive "
            "([gateway.keepalive]) finds dead peers",
    "delay": "xmppgw keeps no connection table to age",
    "client": "xmppgw does not filter clients by address; use the firewall",
    "access": "xmppgw does not filter by interface or address; use the firewall",
    "advertise": "route health injection is not xmppgw's job",
    "gw": "xmppgw does not route; it connects to the reals itself",
    "purge": "xmppgw keeps no connection table to purge",
    "reset": "xmppgw keeps no connection table",
    "unidirectional": "xmppgw always sees both directions (it proxies)",
    "probe": "the probe is an `ip slb probe` definition xmppgw does not read; write a "
             "[[serverfarm.probe]] (type tcp, xmpp-stream or xmpp-ping)",
    "bindid": "DFP bind IDs have no equivalent",
    "failaction": "xmppgw leaves established connections to a failed real alone",
    "maxclients": "RADIUS/GTP sticky subscribers have no equivalent",
    "rate": "no per-real connection rate in xmppgw; see [vserver.limits] rate_per_ip",
    "backup": "no per-real backup; mark spare reals `standby = true`",
    "alternate": "no alternate real addresses; list each address as a real",
    "weight-factor": "no equivalent",
}
_OTHER_SLB = "xmppgw reads only `ip slb serverfarm` and `ip slb vserver` blocks"
_FARM_WORDS = frozenset({"nat", "predictor", "real", "probe", "bindid", "failaction",
                         "access"})
_REAL_WORDS = frozenset({"weight", "reassign", "faildetect", "retry", "inservice",
                         "maxconns", "maxclients", "rate", "backup", "alternate",
                         "weight-factor"})
_VSERVER_WORDS = frozenset({"virtual", "serverfarm", "inservice", "sticky", "replicate",
                            "synguard", "idle", "delay", "client", "access", "advertise",
                            "gw", "purge", "reset", "unidirectional"})


_Handler = Callable[[int, str, list[str]], None]


@dataclass(frozen=True, slots=True)
class Finding:
    """One IOS line that was not imported as it stands, or imported with a caveat."""

    line: int
    text: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: `{self.text}`: {self.message}"


@dataclass(slots=True)
class _Real:
    host: str
    port: int | None
    line: int
    keys: dict[str, object] = field(default_factory=dict)
    inservice: bool = False
    notes: list[Finding] = field(default_factory=list)


@dataclass(slots=True)
class _Farm:
    name: str
    line: int
    nat: str | None = None
    predictor: str | None = None
    reals: list[_Real] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)


@dataclass(slots=True)
class _Vserver:
    name: str
    line: int
    virtual: tuple[str, int] | None = None
    serverfarm: str | None = None
    inservice: bool = False
    notes: list[Finding] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Imported:
    """The TOML text, every finding in line order, and what was read."""

    toml: str
    findings: tuple[Finding, ...]
    lines: int
    blocks: int
    farms: int
    reals: int
    vservers: int

    def summary(self, source: str) -> str:
        """One line for stderr: what was read, and how many commands need a look."""
        skipped = sum(1 for f in self.findings if f.message.startswith("not imported"))
        partly = sum(1 for f in self.findings if f.message.startswith("partly imported"))
        return (f"{source}: read {self.lines} lines, {self.blocks} `ip slb` blocks: "
                f"{self.farms} serverfarms with {self.reals} reals, {self.vservers} vservers; "
                f"{skipped} commands not imported, {partly} partly")


def import_ios(text: str, *, domains: Sequence[str] = (),
               control_socket: str | None = DEFAULT_CONTROL_SOCKET) -> Imported:
    """Read a running-config; return the equivalent xmppgw TOML and what was not mapped."""
    parser = _Parser()
    for number, raw in enumerate(text.splitlines(), 1):
        parser.line(number, raw.rstrip())
    vservers = parser.checked_vservers()
    farms = list(parser.farms.values())
    toml = _render(farms, vservers, parser.global_notes, domains, control_socket)
    findings = sorted(parser.findings, key=lambda f: f.line)
    return Imported(toml=toml, findings=tuple(findings), lines=len(text.splitlines()),
                    blocks=parser.blocks, farms=len(farms),
                    reals=sum(len(f.reals) for f in farms), vservers=len(vservers))


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------


class _Parser:
    """A line-by-line state machine: outside, in a serverfarm (maybe in a real), in a
    vserver, or in another `ip slb` block whose indented lines are skipped."""

    def __init__(self) -> None:
        self.farms: dict[str, _Farm] = {}
        self.vservers: dict[str, _Vserver] = {}
        self.findings: list[Finding] = []
        self.global_notes: list[Finding] = []
        self.blocks = 0
        self.farm: _Farm | None = None
        self.real: _Real | None = None
        self.vserver: _Vserver | None = None
        self.other: Finding | None = None  # an `ip slb` block we do not import
        self.other_lines = 0

    # --- dispatch ---------------------------------------------------------------------

    def line(self, number: int, raw: str) -> None:
        words = raw.split()
        if not words or words[0].startswith("!"):
            return
        indented = raw[0] in " \t"
        if not indented and self._top_level(number, raw, words):
            return
        if self.other is not None:
            self._other_line(indented, number, raw, words)
        elif self.farm is not None:
            self._in_block(number, raw, words, indented, self._farm_line,
                           _FARM_WORDS | _REAL_WORDS)
        elif self.vserver is not None:
            self._in_block(number, raw, words, indented, self._vserver_line, _VSERVER_WORDS)

    def _top_level(self, number: int, raw: str, words: list[str]) -> bool:
        """`ip slb ...` opens a block; `end` closes one. True if the line was one of them."""
        slb = words[:2] == ["ip", "slb"] or words[:3] == ["no", "ip", "slb"]
        if words == ["end"]:
            self._close()
            return True
        if not slb:
            return False
        self._close()
        self.blocks += 1
        if words[:3] == ["ip", "slb", "serverfarm"] and len(words) == 4:
            self.farm = self.farms.setdefault(words[3], _Farm(words[3], number))
        elif words[:3] == ["ip", "slb", "vserver"] and len(words) == 4:
            self.vserver = self._new_vserver(words[3], number, raw)
        else:
            self.other = self._report(number, raw, f"not imported: {_OTHER_SLB}", None)
            self.global_notes.append(self.other)
        return True

    def _in_block(self, number: int, raw: str, words: list[str], indented: bool,
                  handler: _Handler, known: frozenset[str]) -> None:
        word = words[1] if words[0] == "no" and len(words) > 1 else words[0]
        if word in known:
            handler(number, raw, words)
        elif indented:
            self._report(number, raw, "not imported: unknown command here", self._target())
        else:
            self._close()  # a top-level line: the block is over; the line is not ours

    def _other_line(self, indented: bool, number: int, raw: str, words: list[str]) -> None:
        if indented:
            self.other_lines += 1
            return
        self._close()
        self.line(number, raw)

    def _close(self) -> None:
        if self.other is not None and self.other_lines:
            idx = self.findings.index(self.other)
            self.findings[idx] = Finding(self.other.line, self.other.text,
                                         f"not imported, nor its {self.other_lines} "
                                         f"sub-command lines: {_OTHER_SLB}")
            self.global_notes[self.global_notes.index(self.other)] = self.findings[idx]
        self.farm = self.real = self.vserver = self.other = None
        self.other_lines = 0

    def _target(self) -> list[Finding] | None:
        """Where a finding is echoed as a TOML comment: the current real, farm or vserver."""
        obj = self.real or self.farm or self.vserver
        return obj.notes if obj is not None else None

    def _report(self, number: int, raw: str, message: str,
                target: list[Finding] | None) -> Finding:
        finding = Finding(number, raw.strip(), message)
        self.findings.append(finding)
        if target is not None:
            target.append(finding)
        return finding

    def _unmapped(self, number: int, raw: str, word: str) -> None:
        reason = _NOT_MAPPED.get(word, "no equivalent in xmppgw")
        self._report(number, raw, f"not imported: {reason}", self._target())

    def _bad(self, number: int, raw: str, why: str) -> None:
        self._report(number, raw, f"not imported: {why}", self._target())

    def _partly(self, number: int, raw: str, why: str) -> None:
        self._report(number, raw, f"partly imported: {why}", self._target())

    # --- serverfarm -------------------------------------------------------------------

    def _farm_line(self, number: int, raw: str, words: list[str]) -> None:
        assert self.farm is not None
        word = words[0]
        if word in _FARM_WORDS:
            self.real = None  # a farm-level command ends the real sub-mode
        if word == "real":
            self._real(number, raw, words)
        elif word == "nat":
            self._nat(number, raw, words)
        elif word == "predictor":
            self._predictor(number, raw, words)
        elif word in _REAL_WORDS or words[:2] == ["no", "inservice"]:
            if self.real is None:
                self._bad(number, raw, "a real server command outside any `real`")
            else:
                self._real_line(number, raw, words)
        else:
            self._unmapped(number, raw, words[1] if word == "no" else word)

    def _nat(self, number: int, raw: str, words: list[str]) -> None:
        assert self.farm is not None
        self.real = None
        if words == ["nat", "server"]:
            self.farm.nat = "server"
        elif words[:2] == ["nat", "client"]:
            self._bad(number, raw, "xmppgw always connects to the reals from its own address")
        else:
            self._bad(number, raw, "unknown nat form")

    def _predictor(self, number: int, raw: str, words: list[str]) -> None:
        assert self.farm is not None
        self.real = None
        if len(words) == 2 and words[1] in ("leastconns", "roundrobin"):
            self.farm.predictor = words[1]
        else:
            self._bad(number, raw, "xmppgw predictors are roundrobin, leastconns and "
                      "sourcehash")

    def _real(self, number: int, raw: str, words: list[str]) -> None:
        assert self.farm is not None
        self.real = None
        host = _ip(words[1]) if len(words) > 1 else None
        port = _port(words[2]) if len(words) == 3 else None
        if host is None or len(words) > 3 or (len(words) == 3 and port is None):
            self._bad(number, raw, "expected `real IP [PORT]`")
            return
        if any(r.host == host and r.port == port for r in self.farm.reals):
            self._bad(number, raw, f"real {words[1]} is already in serverfarm {self.farm.name}")
            return
        self.real = _Real(host, port, number)
        self.farm.reals.append(self.real)

    def _inservice(self, number: int, raw: str, words: list[str],
                   target: _Real | _Vserver) -> bool:
        """`inservice` / `no inservice` on a real or a vserver; True if the line was one."""
        if words == ["no", "inservice"]:
            target.inservice = False
        elif words[0] == "inservice":
            target.inservice = True
            if len(words) > 1:
                self._partly(number, raw, "imported as `inservice = true`; HSRP standby "
                             "groups have no equivalent")
        else:
            return False
        return True

    def _real_line(self, number: int, raw: str, words: list[str]) -> None:
        assert self.real is not None
        real, word = self.real, words[0]
        if self._inservice(number, raw, words, real):
            pass
        elif word in ("weight", "reassign", "retry", "maxconns"):
            self._number(number, raw, words, real)
        elif word == "faildetect":
            self._faildetect(number, raw, words, real)
        else:
            self._unmapped(number, raw, words[1] if word == "no" else word)

    def _number(self, number: int, raw: str, words: list[str], real: _Real) -> None:
        """`weight 5`, `reassign 4`, `retry 30`, `maxconns 100 [sticky-override]`."""
        word = words[0]
        value = _int(words[1]) if len(words) > 1 else None
        if value is None or value < 1:
            self._bad(number, raw, f"expected `{word} NUMBER`")
            return
        real.keys[word] = value
        if len(words) > 2:
            self._partly(number, raw, f"imported as `{word} = {value}`; "
                         f"`{' '.join(words[2:])}` has no equivalent")

    def _faildetect(self, number: int, raw: str, words: list[str], real: _Real) -> None:
        conns = _int(words[2]) if len(words) >= 3 and words[1] == "numconns" else None
        clients = None
        if len(words) == 5 and words[3] == "numclients":
            clients = _int(words[4])
        if conns is None or conns < 1 or len(words) not in (3, 5) or (
                len(words) == 5 and (clients is None or clients < 1)):
            self._bad(number, raw, "expected `faildetect numconns N [numclients M]`")
            return
        if clients is None:
            clients = 1 if conns == 1 else 2  # IOS's default numclients
        real.keys["faildetect"] = (conns, clients)

    # --- vserver ----------------------------------------------------------------------

    def _new_vserver(self, name: str, number: int, raw: str) -> _Vserver:
        if name in self.vservers:
            self._report(number, raw, "note: this vserver was defined before; the "
                         "commands below are added to it", None)
            return self.vservers[name]
        vserver = self.vservers[name] = _Vserver(name, number)
        return vserver

    def _vserver_line(self, number: int, raw: str, words: list[str]) -> None:
        assert self.vserver is not None
        vs, word = self.vserver, words[0]
        if self._inservice(number, raw, words, vs):
            pass
        elif word == "virtual":
            self._virtual(number, raw, words, vs)
        elif word == "serverfarm" and len(words) >= 2:
            vs.serverfarm = words[1]
            if len(words) > 2:
                self._partly(number, raw, f"imported as `serverfarm = \"{words[1]}\"`; "
                             f"`{' '.join(words[2:])}` has no equivalent (for a backup farm, "
                             "add its reals with `standby = true`)")
        else:
            self._unmapped(number, raw, words[1] if word == "no" else word)

    def _virtual(self, number: int, raw: str, words: list[str], vs: _Vserver) -> None:
        """`virtual IP [MASK] tcp PORT [service NAME]`."""
        args = words[1:]
        host = _ip(args[0]) if args else None
        if host is None:
            self._bad(number, raw, "expected `virtual IP tcp PORT`")
            return
        rest = args[1:]
        if rest and _ip(rest[0]) is not None:
            if rest[0] != "255.255.255.255":
                self._bad(number, raw, "a virtual network (mask) has no equivalent: a "
                          "vserver listens on one address")
                return
            rest = rest[1:]
        if not rest or rest[0] != "tcp":
            self._bad(number, raw, "xmppgw balances TCP only")
            return
        port = _port(rest[1]) if len(rest) > 1 else None
        if port is None:
            self._bad(number, raw, "expected a port number after `tcp` (xmppgw does not "
                      "listen on all ports)")
            return
        vs.virtual = (host, port)
        if len(rest) > 2:
            self._partly(number, raw, f"imported as port {port}; `{' '.join(rest[2:])}` "
                         "has no equivalent")
        if port not in DIRECTTLS_PORTS + STARTTLS_PORTS:
            self._report(number, raw, f"note: {port} is not an XMPP port; imported as mode "
                         "starttls (use directtls if clients speak TLS at once)", vs.notes)

    def checked_vservers(self) -> list[_Vserver]:
        """Vservers that can be written: they have a virtual address and a known farm."""
        out: list[_Vserver] = []
        virtuals: set[tuple[str, int]] = set()
        for vs in self.vservers.values():
            problem = None
            if vs.virtual is None:
                problem = "no `virtual IP tcp PORT`"
            elif vs.serverfarm is None:
                problem = "no `serverfarm`"
            elif vs.serverfarm not in self.farms:
                problem = f"serverfarm {vs.serverfarm} is not defined in this config"
            elif vs.virtual in virtuals:
                problem = "another vserver already listens on the same virtual address"
            if problem:
                self._report(vs.line, f"ip slb vserver {vs.name}",
                             f"not imported: {problem}", self.global_notes)
                continue
            assert vs.virtual is not None
            virtuals.add(vs.virtual)
            out.append(vs)
        return out


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _port(text: str) -> int | None:
    value = _int(text)
    return value if value is not None and 0 < value < 65536 else None


# ---------------------------------------------------------------------------------------
# Writing TOML
# ---------------------------------------------------------------------------------------


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, and non-ASCII is kept as UTF-8)."""
    return json.dumps(text, ensure_ascii=False)


def _render(farms: list[_Farm], vservers: list[_Vserver], notes: list[Finding],
            domains: Sequence[str], control_socket: str | None) -> str:
    return "\n".join([*_header(notes, domains, control_socket),
                      *(line for vs in vservers for line in _vserver_toml(vs)),
                      *(line for farm in farms for line in _farm_toml(farm))])


def _comments(notes: list[Finding]) -> Iterator[str]:
    for note in notes:
        yield f"# IOS {note}"


def _header(notes: list[Finding], domains: Sequence[str],
            control_socket: str | None) -> Iterator[str]:
    yield "# Imported from a Cisco IOS running-config by `xmppgw import-ios`."
    yield "# Check it with `xmppgw check -c FILE --reach` before use."
    yield from _comments(notes)
    yield ""
    yield "[gateway]"
    if control_socket:
        yield f"control_socket = {_q(control_socket)}"
    if domains:
        yield f"domains = [{', '.join(_q(d) for d in domains)}]"
    else:
        yield "domains = []  # every domain is routed, as IOS would; list yours (--domain)"
    yield ""


def _vserver_toml(vs: _Vserver) -> Iterator[str]:
    assert vs.virtual is not None and vs.serverfarm is not None
    host, port = vs.virtual
    virtual = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    mode = "directtls" if port in DIRECTTLS_PORTS else "starttls"
    yield f"# IOS line {vs.line}: ip slb vserver {vs.name}"
    yield "[[vserver]]"
    yield f"name = {_q(vs.name)}"
    yield f"virtual = {_q(virtual)}"
    yield f"mode = {_q(mode)}"
    yield f"serverfarm = {_q(vs.serverfarm)}"
    yield f"inservice = {_bool(vs.inservice)}"
    yield from _comments(vs.notes)
    yield ""


def _farm_toml(farm: _Farm) -> Iterator[str]:
    yield f"# IOS line {farm.line}: ip slb serverfarm {farm.name}"
    yield "[[serverfarm]]"
    yield f"name = {_q(farm.name)}"
    if farm.nat:
        yield f"nat = {_q(farm.nat)}"
    yield f"predictor = {_q(farm.predictor or 'roundrobin')}"
    yield from _comments(farm.notes)
    yield ""
    for real in farm.reals:
        yield from _real_toml(real)


def _real_toml(real: _Real) -> Iterator[str]:
    host = f"[{real.host}]" if ":" in real.host and real.port else real.host
    address = f"{host}:{real.port}" if real.port else host
    yield "[[serverfarm.real]]"
    yield f"address = {_q(address)}"
    for key in ("weight", "reassign", "faildetect", "retry", "maxconns"):
        value = real.keys.get(key)
        if isinstance(value, tuple):
            yield f"faildetect = {{ numconns = {value[0]}, numclients = {value[1]} }}"
        elif value is not None:
            yield f"{key} = {value}"
    yield f"inservice = {_bool(real.inservice)}"
    yield from _comments(real.notes)
    yield ""


def _bool(value: bool) -> str:
    return "true" if value else "false"
