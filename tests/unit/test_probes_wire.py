"""The `xmpp-stream` probe's reader (pure, split-invariant), the tcp and xmpp-stream checks
against small loopback servers (no timing involved), `show` with probes, and the verdict
going from worker 0 to the others through the shared table."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from xmppgw import config
from xmppgw.config import ProbeConfig
from xmppgw.control import show
from xmppgw.health.checks import make_check, probe_once
from xmppgw.health.state import RealVerdict
from xmppgw.health.wire import GreetingReader, Verdict, judge, stream_header
from xmppgw.net.gateway import Gateway, make_shared
from xmppgw.slb.farm import RealState
from xmppgw.wire.stream import StreamReader

# What ejabberd 23.01 answered on 5222 and 5269 (tests/harness), byte for byte.
EJABBERD_C2S = (
    b"<?xml version='1.0'?><stream:stream id='13319861167938227502' version='1.0' "
    b"xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' from='example.test' "
    b"xmlns='jabber:client'><stream:features><mechanisms "
    b"xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>"
    b"<mechanism>SCRAM-SHA-1</mechanism></mechanisms><starttls "
    b"xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
EJABBERD_S2S = (
    b"<?xml version='1.0'?><stream:stream id='13066530176433169807' version='1.0' "
    b"xml:lang='en' xmlns:db='jabber:server:dialback' "
    b"xmlns:stream='http://etherx.jabber.org/streams' from='example.test' "
    b"xmlns='jabber:server'><stream:features><mechanisms "
    b"xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/><starttls "
    b"xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><dialback "
    b"xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>")
HOST_UNKNOWN = (
    b"<?xml version='1.0'?><stream:stream id='1' version='1.0' "
    b"xmlns:stream='http://etherx.jabber.org/streams' from='nope.test' "
    b"xmlns='jabber:client'><stream:error><host-unknown "
    b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
NO_TLS = EJABBERD_C2S.replace(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", b"")


def verdict_of(data: bytes, kind: str = "c2s", starttls: bool = False,
               cuts: list[int] | None = None) -> Verdict | None:
    reader = GreetingReader()
    points = sorted({c % (len(data) + 1) for c in cuts or []} | {0, len(data)})
    verdict = None
    for a, b in itertools.pairwise(points):
        reader.feed(data[a:b])
        verdict = verdict or judge(reader, kind, starttls)
    return verdict


def test_the_probes_stream_headers_are_what_a_client_and_a_server_send() -> None:
    c2s, s2s = StreamReader(), StreamReader()
    [header] = c2s.feed(stream_header("c2s", "example.test"))
    assert (header.kind, header.to, header.version, header.dialback) == (
        "c2s", "example.test", "1.0", False)
    [header] = s2s.feed(stream_header("s2s", "example.test"))
    assert (header.kind, header.to, header.dialback) == ("s2s", "example.test", True)
    assert b'to="a&amp;b"' in stream_header("c2s", "a&b")  # quoted, whatever the config says


def test_a_greeting_is_judged_on_header_and_features() -> None:
    assert verdict_of(EJABBERD_C2S, starttls=True) == Verdict(None)
    assert verdict_of(EJABBERD_S2S, kind="s2s", starttls=True) == Verdict(None)
    assert verdict_of(NO_TLS, starttls=True) == Verdict("no <starttls/> in the stream features")
    assert verdict_of(NO_TLS) == Verdict(None)
    assert verdict_of(HOST_UNKNOWN) == Verdict("stream error <host-unknown/>")
    assert verdict_of(EJABBERD_C2S, kind="s2s") == Verdict(
        "server answered a s2s stream with a c2s stream header")
    assert verdict_of(EJABBERD_C2S[:-30]) is None  # features not complete yet
    assert verdict_of(b"<html>") == Verdict(
        "server sent bad XML (invalid-namespace: root element is not "
        "{http://etherx.jabber.org/streams}stream)")


@settings(max_examples=200, deadline=None)
@given(doc=st.sampled_from([EJABBERD_C2S, EJABBERD_S2S, HOST_UNKNOWN, NO_TLS]),
       cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_the_verdict_does_not_depend_on_the_segmentation(doc: bytes, cuts: list[int]) -> None:
    kind = "s2s" if doc is EJABBERD_S2S else "c2s"
    assert verdict_of(doc, kind, True, cuts) == verdict_of(doc, kind, True)


# --- the checks against loopback servers -----------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


async def test_tcp_check_connects_and_closes() -> None:
    async def nothing(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    async with server(nothing) as port:
        outcome = await probe_once(make_check(ProbeConfig("tcp"), "127.0.0.1", port), 5)
    assert outcome.ok and outcome.rtt is not None and outcome.rtt > 0
    refused = await probe_once(make_check(ProbeConfig("tcp"), "127.0.0.1", port), 5)
    assert refused.error == "connecting: Connection refused"


async def test_stream_check_reads_features_and_closes_the_stream_politely() -> None:
    seen: list[bytes] = []

    async def xmpp(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(await r.readuntil(b"version='1.0'>"))
        w.write(EJABBERD_C2S)
        seen.append(await r.readuntil(b"</stream:stream>"))
        w.write(b"</stream:stream>")
        w.close()

    cfg = ProbeConfig("xmpp-stream", domain="example.test", expect_starttls=True)
    async with server(xmpp) as port:
        outcome = await probe_once(make_check(cfg, "127.0.0.1", port), 5)
    assert outcome.ok, outcome
    assert seen == [stream_header("c2s", "example.test"), b"</stream:stream>"]


async def test_stream_check_reports_what_the_real_did() -> None:
    async def refuse(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HOST_UNKNOWN)
        w.close()

    async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"version='1.0'>")
        w.write(EJABBERD_C2S[:EJABBERD_C2S.index(b"<stream:features>") + 20])
        w.close()

    cfg = ProbeConfig("xmpp-stream", domain="nope.test")
    async with server(refuse) as port:
        outcome = await probe_once(make_check(cfg, "127.0.0.1", port), 5)
    assert outcome.error == "stream error <host-unknown/>"
    async with server(hang_up) as port:
        outcome = await probe_once(make_check(cfg, "127.0.0.1", port), 5)
    assert outcome.error == "connection closed waiting for <stream:features>"


# --- show ------------------------------------------------------------------------------------

def snapshot(probes: list[dict[str, Any]]) -> dict[str, Any]:
    real = {"address": "127.0.2.1", "weight": 8, "state": "PROBE_FAILED", "conns": 0,
            "total": 3, "failed_attempts": 0, "reassigns": 0, "state_age": 4.2,
            "probes": probes}
    return {"vservers": [], "serverfarms": [{"name": "XMPP", "predictor": "roundrobin",
                                             "nat": "server", "virtuals_inservice": 1,
                                             "reals": [real]}]}


def test_show_reals_detail_has_a_probe_column_and_the_errors() -> None:
    down = {"type": "xmpp-ping", "port": 5222, "verdict": "down", "last_result": "failed",
            "last_error": "timeout after 2 s waiting for the stream header", "last_rtt": 0.0006,
            "last_change": None, "last_change_age": None, "runs": 9}
    up = {**down, "type": "tcp", "verdict": "up", "last_result": "ok", "last_error": None}
    head = ("real       server farm  weight  state         conns  connecting  total  failed"
            "  reassigns  since  probe")
    assert show.reals(snapshot([down, up]), detail=True).splitlines() == [
        head,
        "-" * len(head),
        ("127.0.2.1  XMPP         8       PROBE_FAILED  0      0/-         3      0       0"
         "          4s     xmpp-ping DOWN, tcp up 0.6ms"),
        "",
        "probe errors:",
        "127.0.2.1 (XMPP) xmpp-ping:5222: timeout after 2 s waiting for the stream header",
    ]
    assert "probe" not in show.reals(snapshot([]), detail=True)  # as before without probes
    assert "probe" not in show.reals(snapshot([down]))


def test_show_names_the_implicit_probe() -> None:
    """The tcp probe the gateway added for SRV publishing says so: the operator never
    configured it."""
    implicit = {"type": "tcp", "implicit": True, "port": 5222, "verdict": "up",
                "last_result": "ok", "last_error": None, "last_rtt": 0.0003,
                "last_change": None, "last_change_age": None, "runs": 4}
    row = show.reals(snapshot([implicit]), detail=True).splitlines()[2]
    assert row.endswith("  tcp (implicit) up 0.3ms")


# --- workers: worker 0's verdict reaches the others ------------------------------------------

class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **kw: self.lines.append((event, kw))


async def test_worker_zeros_probe_verdict_reaches_the_other_workers() -> None:
    cfg = config.loads('[[serverfarm]]\nname = "F"\nmax_connecting = 0\n'
                       '[[serverfarm.real]]\naddress = "10.0.0.1"\n'
                       '[[serverfarm.real]]\naddress = "10.0.0.2"\n')
    shared = make_shared(cfg, 2)
    table = shared.table
    log0, log1 = Log(), Log()
    zero, one = Gateway(cfg, log0, 0, shared), Gateway(cfg, log1, 1, shared)
    now = asyncio.get_running_loop().time()
    zero.probe_verdict(RealVerdict(now, "F", "10.0.0.2", False))
    farm0, farm1 = zero.farms["F"], one.farms["F"]
    assert farm0.state(farm0.reals[1], now) is RealState.PROBE_FAILED
    assert table.probe_failed(1) and not table.probe_failed(0)
    assert log0.lines[-1] == ("real_state", {"farm": "F", "real": "10.0.0.2",
                                             "old": "OPERATIONAL", "new": "PROBE_FAILED",
                                             "reason": "probe failed"})
    one.sync_peers(farm1)  # what a session does before it picks
    assert farm1.state(farm1.reals[1], now) is RealState.PROBE_FAILED
    assert all(farm1.pick(f"192.0.2.{i}", now) is farm1.reals[0] for i in range(10))
    one.engine_changed(farm1)  # worker 1's own row does not speak for the probes
    zero.probe_verdict(RealVerdict(now, "F", "10.0.0.2", True))
    one.sync_peers(farm1)
    assert farm1.state(farm1.reals[1], now) is RealState.OPERATIONAL
