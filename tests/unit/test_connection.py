"""ClientConnection: one client connection's life as transcripts (events in, commands out).

Every test drives the pure machine with a fake clock and reads the exact commands it
answers: sniffing and routing, each stream error and TLS alert, require_starttls, the
connect plan (reassign, hedge, detach, queue), drains, shutdown, PROXY in and out, timers
and the linger after an error. No socket, no loop.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from xmppgw.config import (
    Address,
    Config,
    Faildetect,
    GatewayConfig,
    Limits,
    RealConfig,
    Route,
    ServerfarmConfig,
    VserverConfig,
)
from xmppgw.connection import (
    ABORT_CLIENT,
    CLOSE,
    CLOSE_LINGER,
    DONE,
    DRAIN_TEXT,
    LINGER_BYTES,
    LINGER_TIME,
    MAX_CONNECT_BUFFER,
    MAX_SERVER_HELD,
    PAUSE_CLIENT,
    RESUME_CLIENT,
    AbortAttempt,
    ClientConnection,
    Close,
    Command,
    Dial,
    EngineChanged,
    GoOpaque,
    HalfClose,
    LimitRefused,
    Log,
    Note,
    Phase,
    Relay,
    SendClient,
    SendReal,
    SetTimer,
)
from xmppgw.slb.farm import Serverfarm
from xmppgw.slb.limits import Admission
from xmppgw.slb.plan import Detach
from xmppgw.wire import clienthello as tls
from xmppgw.wire import proxyproto
from xmppgw.wire.errors import stream_error, stream_header

PEER, LOCAL = ("198.51.100.7", 40000), ("192.0.2.1", 5222)
CLIENT = "198.51.100.7:40000"
HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' "
          b"from='juliet@example.com' version='1.0'>")
SERVER_HEADER = (b"<stream:stream xmlns='jabber:client' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' from='example.com' "
                 b"id='s1' version='1.0'>")
FEATURES = (b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
            b"</stream:features>")
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
FAILURE = b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


# --- the surroundings: real configs and farms, a fake gateway -----------------------------


def farm_config(n: int = 2, **kw: Any) -> ServerfarmConfig:
    reals = tuple(RealConfig(Address(f"10.0.0.{i + 1}", None),
                             faildetect=Faildetect(numconns=100, numclients=100))
                  for i in range(n))
    settings: dict[str, Any] = {"connect_timeout": 1.0, "hedge_delay": None,
                                "response_timeout": 5.0, "slowstart": 0,
                                "max_connecting": None, **kw}
    return ServerfarmConfig("F", reals=reals, **settings)


def vserver_config(mode: str = "starttls", **kw: Any) -> VserverConfig:
    settings: dict[str, Any] = {"serverfarm": "F", "header_timeout": 10.0,
                                "negotiation_timeout": 60.0, **kw}
    return VserverConfig("vs", Address(*LOCAL), mode, **settings)


@dataclass
class FakeVserver:
    config: VserverConfig
    admission: Admission | None = None

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class FakeEngine:
    config: Config
    farms: dict[str, Serverfarm]
    synced: list[str] = field(default_factory=list)

    def sync_peers(self, farm: Serverfarm) -> None:
        self.synced.append(farm.name)


class World:
    """A gateway of one vserver in front of farm F (reals 10.0.0.1, 10.0.0.2, ...)."""

    def __init__(self, mode: str = "starttls", farm: ServerfarmConfig | None = None,
                 domains: tuple[str, ...] = ("example.com",), notes: bool = False,
                 limits: Limits | None = None, **vs: Any) -> None:
        self.farm_config = farm or farm_config()
        self.vs = vserver_config(mode, **vs)
        gw = GatewayConfig(name="gw.example.net", domains=domains)
        self.config = Config("test.toml", gw, (self.vs,), (self.farm_config,))
        self.farm = Serverfarm(self.farm_config, 0.0)
        self.engine = FakeEngine(self.config, {"F": self.farm})
        self.vserver = FakeVserver(self.vs, Admission(limits) if limits else None)
        self.notes = notes

    def connection(self, peer: Any = PEER, now: float = 0.0) -> tuple[ClientConnection,
                                                                         list[Command]]:
        conn = ClientConnection(self.engine, self.vserver, owner="owner", notes=self.notes)
        return conn, conn.start(peer, LOCAL, now)

    def real(self, i: int) -> Any:
        return self.farm.reals[i]


def dial(world: World, attempt: int, real: int) -> Dial:
    return Dial(attempt, world.real(real), f"10.0.0.{real + 1}", 5222)


def changed(world: World) -> EngineChanged:
    return EngineChanged(world.farm)


def stream_error_log(condition: str, text: str) -> Log:
    return Log("info", "stream_error", {"client": CLIENT, "vserver": "vs",
                                        "condition": condition, "text": text})


def norm(out: list[Command]) -> list[Command]:
    """The commands with each stream header's random `id` made one value."""
    return [SendClient(re.sub(rb" id='[0-9a-f]+'", b" id='ID'", c.data))
            if isinstance(c, SendClient) else c for c in out]


def only(out: list[Command], *kinds: type) -> list[Command]:
    return [c for c in out if isinstance(c, kinds)]


def connecting(world: World, data: bytes = HEADER) -> ClientConnection:
    conn, _ = world.connection()
    out = conn.client_data(data, 0.1)
    assert dial(world, 1, 0) in out
    return conn


def relaying(world: World, data: bytes = HEADER) -> ClientConnection:
    conn = connecting(world, data)
    conn.attempt_connected(1, 0.2)
    conn.attempt_data(1, SERVER_HEADER, 0.3)
    assert conn.phase is Phase.CLEARTEXT_RELAY
    return conn


def finish(conn: ClientConnection, now: float) -> list[Command]:
    """The client's transport goes away: the rest of the commands up to Done."""
    out = conn.client_lost(now)
    assert out[-1] == DONE
    return out


def hello_record(sni: str | None = "example.com", alpn: tuple[bytes, ...] = ()) -> bytes:
    def vec(data: bytes, size: int) -> bytes:
        return len(data).to_bytes(size, "big") + data

    def ext(kind: int, data: bytes) -> bytes:
        return kind.to_bytes(2, "big") + vec(data, 2)

    exts = b""
    if sni is not None:
        exts += ext(0, vec(b"\x00" + vec(sni.encode(), 2), 2))
    if alpn:
        exts += ext(16, vec(b"".join(vec(p, 1) for p in alpn), 2))
    exts += ext(43, vec(b"\x03\x04\x03\x03", 1))
    body = b"\x03\x03" + bytes(32) + vec(bytes(32), 1) + vec(b"\x13\x01", 2) + vec(b"\x00", 1)
    body += vec(exts, 2)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + vec(handshake, 2)


# --- accept ------------------------------------------------------------------------------


def test_accept_arms_the_header_timeout() -> None:
    world = World(notes=True)
    conn, out = world.connection(now=5.0)
    assert out == [Note("opened", ("vs",)), SetTimer(15.0)]
    assert conn.phase is Phase.SNIFFING and conn.client == CLIENT


def test_no_peer_address_ends_at_once() -> None:
    world = World()
    conn, out = world.connection(peer=None)
    assert out == [CLOSE]
    assert conn.error == "no-peer-address" and conn.phase is Phase.CLOSED
    assert finish(conn, 0.1)[-2].fields["error"] == "no-peer-address"  # type: ignore[attr-defined]


# --- the happy path: sniff, route, connect, replay, commit, STARTTLS, opaque ---------------


def test_starttls_transcript() -> None:
    world = World()
    conn, _ = world.connection()
    assert conn.client_data(HEADER, 0.1) == [dial(world, 1, 0), changed(world), SetTimer(1.1)]
    assert conn.phase is Phase.CONNECTING and (conn.kind, conn.domain) == ("c2s", "example.com")
    assert world.engine.synced == ["F"]
    assert conn.attempt_connected(1, 0.2) == [SendReal(1, HEADER), changed(world),
                                              SetTimer(5.2)]
    assert conn.attempt_data(1, SERVER_HEADER + FEATURES, 0.3) == [
        Relay(1), SendClient(SERVER_HEADER + FEATURES), changed(world), SetTimer(60.0)]
    assert conn.phase is Phase.CLEARTEXT_RELAY and conn.real is world.real(0)
    assert conn.plan is None  # freed at the commit
    assert conn.client_data(STARTTLS, 0.4) == [SendReal(1, STARTTLS)]
    assert conn.real_data(PROCEED, 0.5) == [GoOpaque(True), SendClient(PROCEED),
                                            SetTimer(None)]
    assert conn.phase is Phase.OPAQUE and conn.starttls
    assert conn.client_data(b"\x16\x03\x01tls", 0.6) == [SendReal(1, b"\x16\x03\x01tls")]
    assert conn.real_data(b"\x16\x03\x03tls", 0.7) == [SendClient(b"\x16\x03\x03tls")]
    # Both FINs pass through, then everything closes and the connection is logged.
    assert conn.client_eof(1.0) == [HalfClose("real")]
    assert conn.real_eof(1.1) == [CLOSE]
    assert conn.real_lost(1.2) == [changed(world)]
    out = finish(conn, 1.3)
    log = out[-2]
    assert isinstance(log, Log) and log.event == "connection"
    assert log.fields == {
        "client": CLIENT, "vserver": "vs", "mode": "starttls", "kind": "c2s",
        "to": "example.com", "sni": None, "alpn": None, "starttls": True, "spliced": False,
        "farm": "F", "real": "10.0.0.1", "real_port": 5222,
        "bytes_from_client": len(HEADER) + len(STARTTLS) + 6,
        "bytes_to_client": len(SERVER_HEADER + FEATURES + PROCEED) + 6,
        "duration": 1.3, "error": None}
    assert world.real(0).active == 0


def test_starttls_failure_goes_opaque_without_tls() -> None:
    world = World()
    conn = relaying(world)
    conn.client_data(STARTTLS, 0.4)
    assert conn.real_data(FAILURE, 0.5) == [GoOpaque(True), SendClient(FAILURE),
                                            SetTimer(None)]
    assert conn.phase is Phase.OPAQUE and not conn.starttls


def test_stream_without_starttls_goes_opaque_at_the_first_stanza() -> None:
    world = World()
    conn = relaying(world)
    assert conn.client_data(b"<presence/>", 0.4) == [GoOpaque(True), SendReal(1, b"<presence/>"),
                                                     SetTimer(None)]


def test_the_real_s_cleartext_is_read_only_once_the_client_asks_for_starttls() -> None:
    """A stream that opens and closes without STARTTLS never pays for parsing the real's
    side; once the client sends <starttls/>, what was held is read first, then the
    <proceed/>, whatever the chunks."""
    world = World()
    conn = relaying(world)
    conn.real_data(FEATURES, 0.35)
    tracker = conn.tracker
    assert tracker is not None and tracker.server.consumed == 0  # relayed, not read
    assert conn.client_data(STARTTLS, 0.4) == [SendReal(1, STARTTLS)]
    assert conn.real_data(PROCEED[:5], 0.45) == [SendClient(PROCEED[:5])]
    assert tracker.server.consumed > len(SERVER_HEADER + FEATURES)  # held bytes read first
    assert conn.real_data(PROCEED[5:], 0.5) == [GoOpaque(True), SendClient(PROCEED[5:]),
                                                SetTimer(None)]
    assert conn.starttls and conn.held is None


def test_a_real_s_unreadable_cleartext_is_noticed_past_the_held_bound() -> None:
    world = World()
    conn = relaying(world)
    assert conn.real_data(b"<a>" + b"x" * 100 + b"</b>", 0.4)[-1:] == [
        SendClient(b"<a>" + b"x" * 100 + b"</b>")]
    assert conn.phase is Phase.CLEARTEXT_RELAY  # held: not read yet
    out = conn.real_data(b" " * MAX_SERVER_HELD, 0.5)
    assert out[0] == GoOpaque(True) and conn.phase is Phase.OPAQUE and conn.held is None


def test_one_chunk_past_the_held_bound_is_read_at_once() -> None:
    world = World()
    conn = relaying(world)
    out = conn.real_data(b"<a>" + b"x" * MAX_SERVER_HELD + b"</b>", 0.4)
    assert out[0] == GoOpaque(True) and conn.held is None


def test_system_shutdown_reads_what_the_real_sent_first() -> None:
    """Held bytes are read before the gateway writes into the stream: a half-sent element
    is not cut."""
    world = World()
    conn = relaying(world)
    conn.real_data(b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                   0.4)
    assert conn.shutdown(0.5) == (False, [])
    conn.real_data(b"</stream:features>", 0.6)
    told, _ = conn.shutdown(0.7)
    assert told


def test_metrics_notes_and_log_connect() -> None:
    world = World(notes=True)
    world.config = replace(world.config, gateway=replace(world.config.gateway, log_connect=True))
    world.engine.config = world.config
    conn = connecting(world)
    conn.attempt_connected(1, 0.2)
    out = conn.attempt_data(1, SERVER_HEADER, 0.5)
    assert out[:2] == [Note("committed", ("vs", "F", "10.0.0.1", 0.4)),
                       Log("info", "connected", {"client": CLIENT, "vserver": "vs",
                                                 "kind": "c2s", "to": "example.com",
                                                 "sni": None, "farm": "F",
                                                 "real": "10.0.0.1"})]
    conn.close(1.0)
    conn.real_lost(1.0)
    assert finish(conn, 1.0)[0] == Note("closed", ("vs", None, len(HEADER),
                                                    len(SERVER_HEADER), "F", "10.0.0.1", 0))


# --- stream errors (RFC 6120 §4.9) --------------------------------------------------------


def expect_error(out: list[Command], condition: str, text: str,
                 header: bytes | None = None) -> None:
    head = stream_header(from_="example.com", to="juliet@example.com") if header is None \
        else header
    assert norm(out) == norm([SendClient(head + stream_error(condition, text)),
                              stream_error_log(condition, text), CLOSE_LINGER,
                              SetTimer(LINGER_TIME + 0.1)])


def test_host_unknown_for_a_domain_not_served() -> None:
    world = World()
    conn, _ = world.connection()
    out = conn.client_data(HEADER.replace(b"to='example.com'", b"to='other.org'"), 0.1)
    # §4.9.1.3: `from` is the gateway's own name when the domain asked for is not served.
    expect_error(out, "host-unknown", "this gateway does not serve other.org",
                 stream_header(from_="gw.example.net", to="juliet@example.com"))
    assert conn.error == "host-unknown" and conn.phase is Phase.LINGERING


def test_host_unknown_without_to() -> None:
    world = World()
    conn, _ = world.connection()
    out = conn.client_data(HEADER.replace(b" to='example.com'", b""), 0.1)
    expect_error(out, "host-unknown", "this gateway does not serve streams without to",
                 stream_header(from_="gw.example.net", to="juliet@example.com"))


def test_host_unknown_when_only_a_route_for_another_domain() -> None:
    routes = (Route("F", kind="c2s", domain="example.com"),)
    world = World(serverfarm=None, routes=routes, domains=())
    conn, _ = world.connection()
    out = conn.client_data(HEADER.replace(b"to='example.com'", b"to='example.org'"), 0.1)
    expect_error(out, "host-unknown", "no serverfarm for example.org",
                 stream_header(from_="gw.example.net", to="juliet@example.com"))


def test_invalid_namespace_for_a_kind_not_served() -> None:
    world = World(kinds=("s2s",))
    conn, _ = world.connection()
    out = conn.client_data(HEADER, 0.1)
    expect_error(out, "invalid-namespace", "jabber:client streams are not served here")


def test_invalid_namespace_when_no_farm_serves_the_kind() -> None:
    world = World(serverfarm=None, routes=(Route("F", kind="s2s"),))
    conn, _ = world.connection()
    out = conn.client_data(HEADER, 0.1)
    expect_error(out, "invalid-namespace", "no serverfarm for c2s streams")


def test_reader_errors_become_stream_errors() -> None:
    world = World()
    conn, _ = world.connection()
    out = conn.client_data(b"<?xml version='1.0'?><!DOCTYPE x><stream:stream>", 0.1)
    assert conn.error == "restricted-xml"
    assert out[1].fields["condition"] == "restricted-xml"  # type: ignore[attr-defined]
    sent = norm(out)[0].data  # type: ignore[attr-defined]
    assert sent.startswith(norm([SendClient(stream_header(from_="gw.example.net"))])[0].data)  # type: ignore[attr-defined]
    world2 = World()
    conn2, _ = world2.connection()
    conn2.client_data(b"<stream:stream xmlns='jabber:client' xmlns:stream='wrong'>", 0.1)
    assert conn2.error == "invalid-namespace"


def test_an_s2s_error_header_keeps_the_namespace_and_dialback() -> None:
    world = World()
    conn, _ = world.connection()
    s2s = (b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
           b"xmlns:stream='http://etherx.jabber.org/streams' to='nowhere.org' "
           b"from='remote.org' version='1.0'>")
    out = conn.client_data(s2s, 0.1)
    head = stream_header(namespace="jabber:server", from_="gw.example.net", to="remote.org",
                         dialback=True)
    assert norm(out)[0] == norm([SendClient(head + stream_error(
        "host-unknown", "this gateway does not serve nowhere.org"))])[0]


def test_connection_timeout_without_a_header() -> None:
    world = World()
    conn, _ = world.connection()
    conn.client_data(b"<?xml version='1.0'?>", 1.0)
    out = norm(conn.timer(10.0))
    assert out == norm([SendClient(stream_header(from_="gw.example.net") + stream_error(
        "connection-timeout", "no stream header within 10 s")),
        stream_error_log("connection-timeout", "no stream header within 10 s"),
        CLOSE_LINGER, SetTimer(12.0)])


def test_remote_connection_failed_when_every_real_refuses() -> None:
    world = World()
    conn = connecting(world)
    out = conn.attempt_failed(1, "Connection refused", 0.2)
    assert out == [Log("warning", "real_attempt_failed", {
        "farm": "F", "real": "10.0.0.1", "client": CLIENT, "reason": "Connection refused"}),
        dial(world, 2, 1), changed(world), SetTimer(1.2)]
    out = conn.attempt_failed(2, "Connection refused", 0.3)
    text = "every real in service failed in serverfarm F"
    assert norm(out[1:]) == norm([
        SendClient(stream_header(from_="example.com", to="juliet@example.com")
                   + stream_error("remote-connection-failed", text)),
        stream_error_log("remote-connection-failed", text), CLOSE_LINGER, changed(world),
        SetTimer(0.3 + LINGER_TIME)])


def test_remote_connection_failed_with_no_real_in_service() -> None:
    world = World(farm=farm_config(0))
    conn, _ = world.connection()
    out = conn.client_data(HEADER, 0.1)
    assert out[0].data.endswith(stream_error(  # type: ignore[attr-defined]
        "remote-connection-failed", "no real in service in serverfarm F"))


def test_policy_violation_under_require_starttls() -> None:
    world = World(require_starttls=True)
    conn = relaying(world)
    out = conn.client_data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", 0.4)
    assert conn.error == "policy-violation"
    # The client already has the real's header: no header of ours, and nothing relayed.
    assert out[0] == SendClient(stream_error("policy-violation", out[1].fields["text"]))  # type: ignore[attr-defined]
    assert not only(out, SendReal)
    assert out[2:] == [CLOSE_LINGER, SetTimer(0.4 + LINGER_TIME)]


def test_require_starttls_lets_starttls_through() -> None:
    world = World(require_starttls=True)
    conn = relaying(world)
    assert conn.client_data(STARTTLS, 0.4) == [SendReal(1, STARTTLS)]
    assert conn.real_data(PROCEED, 0.5)[0] == GoOpaque(True)


def test_require_starttls_refusal_while_connecting() -> None:
    world = World(require_starttls=True)
    conn = connecting(world)
    out = conn.client_data(b"<message/>", 0.15)
    assert conn.error == "policy-violation"
    assert only(out, Close) == [CLOSE_LINGER]
    assert world.real(0).pending == 0  # the attempt was abandoned: no verdict


def test_system_shutdown_before_the_commit_sends_a_header_first() -> None:
    world = World()
    conn = connecting(world)
    told, out = conn.shutdown(0.5)
    assert told
    assert norm(out)[0] == norm([SendClient(
        stream_header(from_="example.com", to="juliet@example.com")
        + stream_error("system-shutdown", "the gateway is shutting down"))])[0]
    assert conn.error == "system-shutdown"


def test_system_shutdown_between_server_elements() -> None:
    world = World()
    conn = relaying(world)
    conn.real_data(FEATURES, 0.4)
    told, out = conn.shutdown(0.5)
    assert told and out == [SendClient(stream_error("system-shutdown",
                                                    "the gateway is shutting down")),
                            CLOSE, SetTimer(None)]


def test_system_shutdown_not_inside_a_server_element() -> None:
    world = World()
    conn = relaying(world)
    conn.real_data(b"<stream:features>", 0.4)
    assert conn.shutdown(0.5) == (False, [])


def test_system_shutdown_leaves_opaque_streams_and_closes_silent_tls() -> None:
    world = World()
    conn = relaying(world)
    conn.client_data(STARTTLS, 0.4)
    conn.real_data(PROCEED, 0.5)
    assert conn.shutdown(0.6) == (False, [])
    tls_world = World("directtls")
    conn2, _ = tls_world.connection()
    assert conn2.shutdown(0.1) == (False, [CLOSE, SetTimer(None)])
    assert conn2.error == "system-shutdown"


# --- directtls: TLS alerts ------------------------------------------------------------------


def alert_out(alert: int, reason: str, now: float) -> list[Command]:
    return [SendClient(tls.alert_record(alert)),
            Log("info", "tls_alert", {"client": CLIENT, "vserver": "vs", "alert": alert,
                                      "reason": reason}),
            CLOSE_LINGER, SetTimer(now + LINGER_TIME)]


def test_directtls_routes_on_sni_and_alpn() -> None:
    world = World("directtls")
    conn, _ = world.connection()
    hello = hello_record("example.com", (b"xmpp-client",))
    assert conn.client_data(hello, 0.1) == [dial(world, 1, 0), changed(world), SetTimer(1.1)]
    assert (conn.kind, conn.sni, conn.alpn) == ("c2s", "example.com", ("xmpp-client",))
    conn.attempt_connected(1, 0.2)
    assert conn.attempt_data(1, b"\x16\x03\x03", 0.3) == [
        Relay(1), GoOpaque(True), SendClient(b"\x16\x03\x03"), changed(world), SetTimer(None)]
    assert conn.phase is Phase.OPAQUE


def test_directtls_unrecognized_name() -> None:
    world = World("directtls")
    conn, _ = world.connection()
    out = conn.client_data(hello_record("other.org"), 0.1)
    assert out == alert_out(tls.UNRECOGNIZED_NAME, "this gateway does not serve other.org", 0.1)
    assert conn.error == "tls-alert-112"


def test_directtls_no_application_protocol() -> None:
    world = World("directtls", kinds=("c2s",))
    conn, _ = world.connection()
    out = conn.client_data(hello_record("example.com", (b"xmpp-server",)), 0.1)
    assert out == alert_out(tls.NO_APPLICATION_PROTOCOL, "s2s is not served here", 0.1)


def test_directtls_unreadable_hello() -> None:
    world = World("directtls")
    conn, _ = world.connection()
    out = conn.client_data(b"GET / HTTP/1.1\r\n", 0.1)
    assert isinstance(out[0], SendClient) and out[0].data[0] == 21  # an alert record
    assert conn.error is not None and conn.error.startswith("tls-alert-")


def test_directtls_internal_error_when_every_real_fails() -> None:
    world = World("directtls", farm=farm_config(1))
    conn, _ = world.connection()
    conn.client_data(hello_record(), 0.1)
    out = conn.attempt_failed(1, "Connection refused", 0.2)
    assert out[1:] == alert_out(tls.INTERNAL_ERROR,
                                "every real in service failed in serverfarm F", 0.2)[:3] + [
        changed(world), SetTimer(0.2 + LINGER_TIME)]


def test_directtls_hello_timeout_closes_without_an_alert() -> None:
    world = World("directtls")
    conn, _ = world.connection()
    assert conn.timer(10.0) == [CLOSE]  # (the timer that fired was the last)
    assert conn.error == "hello-timeout"


def test_directtls_negotiation_timeout() -> None:
    world = World("directtls", header_timeout=100.0, negotiation_timeout=5.0,
                  farm=farm_config(1, connect_timeout=30.0))
    conn, _ = world.connection()
    conn.client_data(hello_record(), 0.1)
    out = conn.timer(5.0)
    assert out == [Log("info", "tls_alert", {"client": CLIENT, "vserver": "vs", "alert": None,
                                             "reason": "no TLS within 5 s"}),
                   CLOSE]
    assert conn.error == "negotiation-timeout"


# --- negotiation timeout and linger ---------------------------------------------------------


def test_negotiation_timeout_of_a_parked_cleartext_stream() -> None:
    world = World()
    conn = relaying(world)
    out = conn.timer(60.0)
    text = "no TLS within 60 s"
    assert out == [SendClient(stream_error("connection-timeout", text)),
                   stream_error_log("connection-timeout", text), CLOSE_LINGER,
                   SetTimer(60.0 + LINGER_TIME)]


def test_linger_reads_then_closes() -> None:
    world = World(kinds=("s2s",))
    conn, _ = world.connection()
    conn.client_data(HEADER, 0.0)
    assert conn.phase is Phase.LINGERING
    assert conn.client_data(b"x" * 100, 0.5) == []  # read and dropped
    assert conn.timer(LINGER_TIME) == [CLOSE]
    assert conn.phase is Phase.CLOSED
    assert finish(conn, 2.1)[-2].fields["error"] == "invalid-namespace"  # type: ignore[attr-defined]


def test_linger_aborts_a_client_that_sends_too_much() -> None:
    world = World(kinds=("s2s",))
    conn, _ = world.connection()
    conn.client_data(HEADER, 0.0)
    assert conn.client_data(b"x" * (LINGER_BYTES + 1), 0.5) == [ABORT_CLIENT]


def test_linger_ends_when_the_client_goes() -> None:
    world = World(kinds=("s2s",))
    conn, _ = world.connection()
    conn.client_data(HEADER, 0.0)
    assert conn.client_eof(0.1) == []  # the adapter lets asyncio close the socket
    out = conn.client_lost(0.2)
    assert out[-2:] == [DONE, SetTimer(None)]


def test_no_linger_after_the_client_fin() -> None:
    world = World(kinds=("s2s",))
    conn, _ = world.connection()
    conn.client_data(HEADER[:-1], 0.0)
    conn.client_eof(0.1)
    assert conn.phase is Phase.CLOSED


# --- the connect plan: reassign, hedge, detach, queue -----------------------------------------


def test_reassign_after_a_silent_real() -> None:
    world = World()
    conn = connecting(world)
    out = conn.timer(1.1)
    assert out == [AbortAttempt(1),
                   Log("warning", "real_attempt_failed", {"farm": "F", "real": "10.0.0.1",
                                                          "client": CLIENT,
                                                          "reason": "timeout"}),
                   dial(world, 2, 1), changed(world), SetTimer(2.1)]


def test_reassign_after_a_real_that_connects_but_never_answers() -> None:
    world = World()
    conn = connecting(world)
    conn.attempt_connected(1, 0.2)
    out = conn.timer(5.2)
    assert out[0] == AbortAttempt(1) and out[1].fields["reason"] == "no response"  # type: ignore[attr-defined]
    assert dial(world, 2, 1) in out
    assert conn.attempt_connected(2, 5.3)[0] == SendReal(2, HEADER)  # the same bytes again


def test_hedge_and_detach() -> None:
    world = World(farm=farm_config(2, hedge_delay=0.2))
    conn = connecting(world)
    assert conn.timer(0.35) == [dial(world, 2, 1), changed(world), SetTimer(0.55)]
    out = conn.attempt_connected(2, 0.4)
    detach = out[0]
    assert isinstance(detach, Detach) and detach.attempt_id == 1
    assert detach.verdict.real is world.real(0) and detach.verdict.deadline == 1.1
    assert out[1:] == [SendReal(2, HEADER), changed(world), SetTimer(5.4)]
    assert conn.attempt_data(2, SERVER_HEADER, 0.5)[0] == Relay(2)


def test_queue_wait_and_wake() -> None:
    world = World(farm=farm_config(1, max_connecting=1, queue_timeout=3.0), notes=True)
    first = connecting(world)
    second, _ = world.connection()
    out = second.client_data(HEADER, 0.2)
    assert out == [Note("queued", ("F",)), changed(world), SetTimer(3.2)]
    assert world.farm.queue
    first.attempt_connected(1, 0.3)
    first.attempt_data(1, SERVER_HEADER, 0.4)  # the slot is free again
    plan = world.farm.next_waiter(0.5)
    assert plan is second.plan and plan.owner == "owner"
    assert second.wake(plan, 0.5) == [dial(world, 1, 0), changed(world), SetTimer(1.5)]


def test_queue_timeout() -> None:
    world = World(farm=farm_config(1, max_connecting=1, queue_timeout=3.0))
    connecting(world)
    second, _ = world.connection()
    second.client_data(HEADER, 0.2)
    out = second.timer(3.2)
    assert out[0].data.endswith(stream_error(  # type: ignore[attr-defined]
        "remote-connection-failed", "every real busy for 3 s in serverfarm F"))


def test_client_reset_while_connecting_abandons_the_attempts() -> None:
    world = World()
    conn = connecting(world)
    out = conn.client_lost(0.5)
    assert out[0] == CLOSE and out[-2:] == [DONE, SetTimer(None)]
    real = world.real(0)
    assert real.pending == 0 and real.failed_attempts == 0 and real.consecutive_failures == 0
    assert conn.error == "client-left"


def test_client_fin_while_connecting_leaves_no_verdict_and_opens_nothing() -> None:
    """abortonclose: the client ended its side before any real answered; the attempt in
    flight is dropped unjudged, and nothing is opened on a real for it later."""
    world = World()
    conn = connecting(world)
    out = conn.client_eof(0.15)
    assert out[0] == CLOSE and conn.error == "client-left"
    real = world.real(0)
    assert real.pending == 0 and real.failed_attempts == 0 and real.consecutive_failures == 0
    late = conn.attempt_connected(1, 0.2) + conn.attempt_data(1, SERVER_HEADER, 0.3)
    assert not only(late, Relay, SendReal, SendClient, Dial)  # nothing opened for it
    out = conn.client_lost(0.3)
    record = next(c for c in out if isinstance(c, Log) and c.event == "connection")
    assert record.fields["error"] == "client-left" and record.fields["real"] is None
    assert real.pending == 0 and real.failed_attempts == 0


def test_client_fin_while_queued_leaves_the_queue() -> None:
    world = World(farm=farm_config(1, max_connecting=1, queue_timeout=3.0))
    connecting(world)
    waiting, _ = world.connection()
    waiting.client_data(HEADER, 0.2)
    assert world.farm.queue
    out = waiting.client_eof(0.3)
    assert out[0] == CLOSE and waiting.error == "client-left"
    assert world.farm.next_waiter(0.4) is None  # not handed the next free slot


def test_client_reading_pauses_past_the_connect_buffer() -> None:
    world = World()
    conn = connecting(world)
    assert conn.client_data(b" " * MAX_CONNECT_BUFFER, 0.15) == [PAUSE_CLIENT]
    conn.attempt_connected(1, 0.2)
    out = conn.attempt_data(1, SERVER_HEADER, 0.3)
    assert RESUME_CLIENT in out and not conn.paused


# --- drains ----------------------------------------------------------------------------------


def test_drain_of_the_real_closes() -> None:
    """In cleartext between the real's elements the client is told, as at shutdown; inside
    an element, or once opaque, the stream is closed without a word of ours in it."""
    world = World()
    conn = relaying(world)
    assert not conn.drains({world.real(1)}, ())
    assert conn.drains({world.real(0)}, ())
    assert conn.drain(1.0) == [SendClient(stream_error("system-shutdown", DRAIN_TEXT)), CLOSE,
                               SetTimer(None)]
    assert conn.error == "drained"
    inside = relaying(World())
    inside.real_data(b"<stream:features>", 0.4)
    assert inside.drain(1.0) == [CLOSE, SetTimer(None)]
    opaque = relaying(World())
    opaque.client_data(STARTTLS, 0.4)
    opaque.real_data(PROCEED, 0.5)
    assert opaque.drain(1.0) == [CLOSE]


def test_drain_of_the_vserver() -> None:
    world = World()
    conn, _ = world.connection()
    assert conn.drains((), (world.vserver,))


# --- PROXY in and out ------------------------------------------------------------------------


def test_proxy_header_from_a_listed_balancer_names_the_client() -> None:
    world = World(accept_proxy=(ipaddress.ip_network("198.51.100.0/24"),))
    conn, out = world.connection()
    assert conn.phase is Phase.AWAIT_PROXY
    header = proxyproto.encode_v1(("203.0.113.9", 5555), ("192.0.2.1", 5222))
    out = conn.client_data(header + HEADER, 0.1)
    assert conn.client == "203.0.113.9:5555" and conn.peer == ("203.0.113.9", 5555)
    assert out[0] == Dial(1, world.real(0), "10.0.0.1", 5222)
    assert conn.bytes_from_client == len(HEADER)  # the balancer's header is not the client's


def test_a_bad_proxy_header_is_refused() -> None:
    world = World(accept_proxy=(ipaddress.ip_network("198.51.100.0/24"),))
    conn, _ = world.connection()
    out = conn.client_data(HEADER, 0.1)
    assert out[1:] == [CLOSE, SetTimer(None)]
    assert out[0].event == "proxy_refused"  # type: ignore[attr-defined]
    assert conn.error == "bad-proxy-header"


def test_eof_inside_the_proxy_header() -> None:
    world = World(accept_proxy=(ipaddress.ip_network("198.51.100.0/24"),))
    conn, _ = world.connection()
    conn.client_data(b"PROXY TCP4 ", 0.05)
    assert conn.client_eof(0.1) == [CLOSE, SetTimer(None)]
    assert conn.error == "bad-proxy-header"
    assert finish(conn, 0.2)[-2].level == "info"  # type: ignore[attr-defined]


# A listed balancer's TCP health check (issue 13, item 8): connect and close, no byte; or a
# PROXY v2 LOCAL header alone (HAProxy's `check send-proxy-v2`). Counted, logged at debug.
@pytest.mark.parametrize("ending", ["eof", "reset", "local-eof", "local-reset"])
def test_a_balancer_health_check_is_counted_and_logged_at_debug(ending: str) -> None:
    world = World(accept_proxy=(ipaddress.ip_network("198.51.100.0/24"),), notes=True)
    conn, _ = world.connection()
    if ending.startswith("local"):
        assert conn.client_data(proxyproto.encode_v2(None, None, local=True), 0.05) == []
    out = conn.client_eof(0.1) if ending.endswith("eof") else []
    out += conn.client_lost(0.2)
    assert DONE in out
    assert conn.error == "health-check"
    assert only(out, Note)[0] == Note("health_check", ("vs",))
    line = only(out, Log)[-1]
    assert line.event == "connection" and line.level == "debug"
    assert line.fields["error"] == "health-check"


def test_a_client_behind_the_balancer_that_leaves_is_no_health_check() -> None:
    world = World(accept_proxy=(ipaddress.ip_network("198.51.100.0/24"),), notes=True)
    conn, _ = world.connection()
    conn.client_data(proxyproto.encode_v1(("203.0.113.9", 5555), ("192.0.2.1", 5222)), 0.05)
    out = conn.client_eof(0.1) + finish(conn, 0.2)
    assert conn.error is None and not [n for n in only(out, Note) if n.metric == "health_check"]
    assert only(out, Log)[-1].level == "info"


def test_a_proxy_header_from_anyone_else_is_the_client_s_first_bytes() -> None:
    world = World(accept_proxy=(ipaddress.ip_network("10.9.0.0/16"),))
    conn, _ = world.connection()
    header = proxyproto.encode_v1(("203.0.113.9", 5555), ("192.0.2.1", 5222))
    conn.client_data(header, 0.1)
    assert conn.error == "not-well-formed"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_out_precedes_the_replay(version: str) -> None:
    world = World(farm=farm_config(1, proxy_protocol=version))
    conn = connecting(world)
    out = conn.attempt_connected(1, 0.2)
    if version == "v1":
        expected = proxyproto.encode_v1(PEER, LOCAL)
    else:
        expected = proxyproto.encode_v2(PEER, LOCAL, authority="example.com")
    assert out[0] == SendReal(1, expected + HEADER)


# --- admission ---------------------------------------------------------------------------------


def test_over_a_limit_a_cleartext_stream_gets_policy_violation() -> None:
    world = World(limits=Limits(maxconns_per_ip=1))
    world.connection()
    conn, out = world.connection()
    assert out[0] == LimitRefused("maxconns_per_ip")
    assert conn.error == "policy-violation" and CLOSE_LINGER in out


def test_over_a_limit_a_tls_client_is_closed() -> None:
    world = World("directtls", limits=Limits(maxconns_per_ip=1))
    world.connection()
    _conn, out = world.connection()
    assert out == [LimitRefused("maxconns_per_ip"), CLOSE]


def test_admission_is_released_at_the_end() -> None:
    world = World(limits=Limits(maxconns_per_ip=1))
    conn, _ = world.connection()
    conn.close(0.1)
    finish(conn, 0.2)
    _again, out = world.connection()
    assert not only(out, LimitRefused)


# --- splice --------------------------------------------------------------------------------------


def test_splice_end_counts_its_bytes_and_reports_the_real_closed() -> None:
    world = World()
    conn = relaying(world)
    conn.client_data(STARTTLS, 0.4)
    conn.real_data(PROCEED, 0.5)
    conn.handed_to_splice()
    assert conn.state == "SPLICED"
    out = conn.splice_ended(100, 200, 9.0)
    assert out[0] == changed(world) and out[-1] == DONE
    assert out[-2].fields["spliced"] and out[-2].fields["bytes_to_client"] == (  # type: ignore[attr-defined]
        len(SERVER_HEADER + PROCEED) + 200)
    assert world.real(0).active == 0


def test_states_for_show_conns() -> None:
    world = World()
    conn, _ = world.connection()
    assert conn.state == "SNIFFING"
    conn.client_data(HEADER, 0.1)
    assert conn.state == "CONNECTING"
    conn.attempt_connected(1, 0.2)
    conn.attempt_data(1, SERVER_HEADER, 0.3)
    assert conn.state == "RELAYING"
    conn.close(0.4)
    assert conn.state == "CLOSED"


# --- the gateway's own answers are counted (issue 13, item 6) ---------------------------------


def test_the_bytes_of_a_stream_error_are_counted() -> None:
    world = World(notes=True)
    conn, _ = world.connection()
    header = HEADER.replace(b"to='example.com'", b"to='other.org'")
    out = conn.client_data(header, 0.1)
    sent = sum(len(c.data) for c in only(out, SendClient))
    assert sent > 0
    out = conn.client_lost(0.2)
    assert only(out, Log)[-1].fields["bytes_to_client"] == sent
    assert only(out, Note)[-1] == Note("closed", ("vs", "host-unknown", len(header), sent,
                                                  None, None, sent))


def test_the_bytes_of_a_tls_alert_are_counted() -> None:
    world = World("directtls")
    conn, _ = world.connection()
    conn.client_data(hello_record("other.org"), 0.1)
    assert only(conn.client_lost(0.2), Log)[-1].fields["bytes_to_client"] == 7


def test_an_error_after_the_commit_counts_apart_from_the_real_s_bytes() -> None:
    world = World(require_starttls=True, notes=True)
    conn = relaying(world)
    out = conn.client_data(b"<message/>", 0.4)
    error = only(out, SendClient)[0].data
    conn.real_lost(0.5)
    closed = only(conn.client_lost(0.6), Note)[-1]
    assert closed.args[3] == len(SERVER_HEADER) + len(error) and closed.args[6] == len(error)


# --- the error header's version (issue 13, item 3; RFC 6120 §4.7.5) ----------------------------


@pytest.mark.parametrize("theirs, ours", [
    (b" version='1.0'", b" version='1.0'"),
    (b" version='0.9'", b" version='0.9'"),
    (b" version='2.0'", b" version='1.0'"),
    (b" version='1.10'", b" version='1.0'"),
    (b"", b""),  # no version: none in ours either
])
def test_the_error_header_answers_with_the_lower_version(theirs: bytes, ours: bytes) -> None:
    world = World()
    conn, _ = world.connection()
    header = HEADER.replace(b"to='example.com'", b"to='other.org'").replace(
        b" version='1.0'>", theirs + b">")
    sent = norm(conn.client_data(header, 0.1))[0].data  # type: ignore[attr-defined]
    head = sent.split(b"<stream:error>")[0]
    assert head.endswith(b" id='ID'" + ours + b">")


def test_the_error_header_says_1_0_when_the_client_header_never_parsed() -> None:
    world = World()
    conn, _ = world.connection()
    sent = conn.client_data(b"<stream:stream xmlns='jabber:client'>", 0.1)[0].data  # type: ignore[attr-defined]
    assert b"version='1.0'" in sent and conn.error == "bad-namespace-prefix"


# --- an IP literal as SNI (issue 13, item 4) ----------------------------------------------------


@pytest.mark.parametrize("literal, logged", [
    ("192.0.2.1", "192.0.2.1"), ("2001:db8::1", "2001:db8::1"), ("[2001:db8::1]", "2001:db8::1")])
def test_an_ip_literal_as_sni_routes_as_no_sni(literal: str, logged: str) -> None:
    world = World("directtls")  # gateway.domains = example.com only
    conn, _ = world.connection()
    out = conn.client_data(hello_record(literal, (b"xmpp-client",)), 0.1)
    assert out == [dial(world, 1, 0), changed(world), SetTimer(1.1)]  # the default farm
    assert conn.domain is None and conn.sni == logged
    conn.close(0.2)
    assert only(finish(conn, 0.3), Log)[-1].fields["sni"] == logged


# --- client-chosen text in logs is bounded (issue 13, item 7) -----------------------------------


def test_a_long_to_is_cut_in_the_log_and_the_error_text() -> None:
    world = World(max_header_bytes=8192)
    conn, _ = world.connection()
    to = "a" * 3000 + ".org"
    out = conn.client_data(HEADER.replace(b"to='example.com'", f"to='{to}'".encode()), 0.1)
    [log] = [c for c in only(out, Log) if c.event == "stream_error"]
    assert len(log.fields["text"]) < 300 and log.fields["text"].endswith("more)")
    assert len(only(out, SendClient)[0].data) < 1000  # the <text/> quotes the cut text
    assert len(only(conn.client_lost(0.2), Log)[-1].fields["to"]) < 300


def test_a_long_alpn_list_is_cut_in_the_connection_line() -> None:
    world = World("directtls")
    conn, _ = world.connection()
    alpn = tuple(b"p%03d" % i + b"x" * 200 for i in range(20)) + (b"xmpp-client",)
    conn.client_data(hello_record("example.com", alpn), 0.1)
    conn.close(0.2)
    logged = only(finish(conn, 0.3), Log)[-1].fields["alpn"]
    assert len(logged) == 9 and logged[-1] == "...(13 more)"
    assert all(len(name) < 80 for name in logged)
    assert conn.kind == "c2s"  # routing still saw the whole list


def test_a_proxy_refusal_reason_is_cut() -> None:
    world = World(accept_proxy=(ipaddress.ip_network("198.51.100.0/24"),))
    conn, _ = world.connection()
    out = conn.client_data(b"PROXY TCP4 " + b"9" * 90 + b"\r\n", 0.1)
    assert len(only(out, Log)[0].fields["reason"]) <= 256 + 20


# --- the wrong protocol, and mode = "both" (issue 13, item 2) -----------------------------------


BARE_HEADER = HEADER.removeprefix(b"<?xml version='1.0'?>")  # may follow whitespace


def with_vservers(world: World, *extra: VserverConfig) -> World:
    world.config = replace(world.config, vservers=(world.vs, *extra))
    world.engine.config = world.config
    return world


DIRECT_5223 = VserverConfig("tls", Address("192.0.2.1", 5223), "directtls", serverfarm="F")
STARTTLS_5222 = VserverConfig("plain", Address("192.0.2.1", 5222), "starttls", serverfarm="F")


def test_a_clienthello_on_a_starttls_vserver_gets_a_tls_alert() -> None:
    world = with_vservers(World(), DIRECT_5223)
    conn, _ = world.connection()
    out = conn.client_data(hello_record("example.com", (b"xmpp-client",)), 0.1)
    assert out == alert_out(tls.UNEXPECTED_MESSAGE, "a TLS ClientHello on a STARTTLS port; "
                            "direct TLS (XEP-0368) is on port 5223", 0.1)
    assert conn.error == "tls-alert-10" and not only(out, Dial)


def test_xml_on_a_directtls_vserver_gets_a_stream_error_naming_the_starttls_port() -> None:
    world = with_vservers(World("directtls"), STARTTLS_5222)
    conn, _ = world.connection()
    out = conn.client_data(HEADER, 0.1)
    text = "this port speaks direct TLS only: TLS first, then the stream; STARTTLS is on port 5222"
    expect_error(out, "policy-violation", text)  # in the client's namespace, to its from
    assert conn.error == "policy-violation" and not only(out, Dial)


def test_xml_on_a_directtls_vserver_without_a_starttls_one() -> None:
    world = World("directtls")
    conn, _ = world.connection()
    out = conn.client_data(b" " + BARE_HEADER.replace(b"jabber:client", b"jabber:server"), 0.1)
    assert b"xmlns='jabber:server'" in out[0].data  # type: ignore[attr-defined]
    assert out[1].fields["text"] == "this port speaks direct TLS only: TLS first, then the stream"  # type: ignore[attr-defined]


def test_other_bytes_on_a_directtls_vserver_still_get_an_alert() -> None:
    world = World("directtls")
    conn, _ = world.connection()
    assert conn.client_data(b"GET / HTTP/1.1\r\n", 0.1)[0] == SendClient(
        tls.alert_record(tls.DECODE_ERROR))


def test_both_sends_a_clienthello_to_the_direct_tls_port() -> None:
    world = World("both")
    conn, _ = world.connection()
    out = conn.client_data(hello_record("example.com", (b"xmpp-client",)), 0.1)
    assert out == [Dial(1, world.real(0), "10.0.0.1", 5223), changed(world), SetTimer(1.1)]
    conn.attempt_connected(1, 0.2)
    assert conn.attempt_data(1, b"\x16\x03\x03", 0.3)[:2] == [Relay(1), GoOpaque(True)]
    conn.close(0.4)
    conn.real_lost(0.4)
    line = only(finish(conn, 0.5), Log)[-1].fields
    assert (line["mode"], line["real_port"], line["sni"]) == ("directtls", 5223, "example.com")


@pytest.mark.parametrize("first", [b"", b" ", b"\r\n", b"\xef\xbb\xbf"])
def test_both_sends_an_xml_stream_to_the_starttls_port(first: bytes) -> None:
    world = World("both")
    conn, _ = world.connection()
    out = conn.client_data(first + BARE_HEADER, 0.1)
    assert out == [dial(world, 1, 0), changed(world), SetTimer(1.1)]  # 10.0.0.1:5222
    conn.attempt_connected(1, 0.2)
    conn.attempt_data(1, SERVER_HEADER, 0.3)
    assert conn.phase is Phase.CLEARTEXT_RELAY
    conn.close(0.4)
    conn.real_lost(0.4)
    line = only(finish(conn, 0.5), Log)[-1].fields
    assert (line["mode"], line["real_port"]) == ("starttls", 5222)


def test_both_takes_the_direct_tls_port_of_the_farm_or_the_real() -> None:
    reals = (RealConfig(Address("10.0.0.1", 5322), directtls_port=5999),
             RealConfig(Address("10.0.0.2", None)))
    world = World("both", farm=ServerfarmConfig("F", reals=reals, directtls_port=5270,
                                                hedge_delay=0, slowstart=0))
    first, _ = world.connection()
    assert first.client_data(hello_record(), 0.1)[0] == Dial(1, world.real(0), "10.0.0.1", 5999)
    second, _ = world.connection()
    assert second.client_data(hello_record(), 0.1)[0] == Dial(1, world.real(1), "10.0.0.2", 5270)
    third, _ = world.connection()
    assert third.client_data(HEADER, 0.1)[0] == Dial(1, world.real(0), "10.0.0.1", 5322)


def test_both_answers_in_xml_before_the_first_byte_and_in_tls_after_a_hello() -> None:
    world = World("both")
    conn, _ = world.connection()
    assert only(conn.timer(10.0), Log)[0].fields["condition"] == "connection-timeout"
    world2 = World("both")
    conn2, _ = world2.connection()
    conn2.client_data(hello_record("other.org"), 0.1)
    assert conn2.error == f"tls-alert-{tls.UNRECOGNIZED_NAME}"


def test_both_keeps_require_starttls_on_the_xml_path() -> None:
    world = World("both", require_starttls=True)
    conn = relaying(world)
    conn.client_data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", 0.4)
    assert conn.error == "policy-violation"


@pytest.mark.parametrize("host", ["198.51.100.7", "0.0.0.0", "001.2.3.4", "1.2.3.256",
                                  "1.2.3.04", "1..2.3", "::ffff:1.2.3.4", "2001:DB8::1",
                                  "fe80::1%eth0", "?", "1.2.3.\u0664"])
def test_the_client_ip_fast_path_agrees_with_the_parse(host: str) -> None:
    """client_ip skips ipaddress for dotted digits: the answer must be the parse's."""
    import ipaddress

    from xmppgw.addresses import client_ip, unmapped

    try:
        expected = str(unmapped(ipaddress.ip_address(host.partition("%")[0])))
    except ValueError:
        expected = host
    assert client_ip(host) == expected
