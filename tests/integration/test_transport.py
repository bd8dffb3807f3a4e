"""The gateway process on its own: every stream error, TLS alerts, byte-exactness, flow
control, half-close, no fd leaks, clean stop. The backend here is a byte echo: these tests
are about what crosses the gateway, not about XMPP servers (those are in the other files)."""

from __future__ import annotations

import json
import os
import random
import socket
import ssl
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import EchoBackend
from tests.support.gateway import GatewayProcess
from xmppgw.wire.clienthello import alert_record

VIP = "127.0.6.1"
ECHO = "127.0.6.10"
SILENT = "127.0.6.13"
STREAMS = "{http://etherx.jabber.org/streams}"
ERRORS = "{urn:ietf:params:xml:ns:xmpp-streams}"

CONFIG = f"""
[gateway]
name = "gw.example.test"
domains = ["example.test", "*.example.test"]
header_timeout = 1
max_header_bytes = 1024

[[vserver]]
name = "E5222"
virtual = "{VIP}:5222"
serverfarm = "ECHO"

[[vserver]]
name = "E5223"
virtual = "{VIP}:5223"
mode = "directtls"
serverfarm = "ECHO"

[[vserver]]
name = "DEAD"
virtual = "{VIP}:5224"
serverfarm = "DEAD"

[[vserver]]
name = "C2SONLY"
virtual = "{VIP}:5225"
kinds = ["c2s"]
serverfarm = "ECHO5222"

[[vserver]]
name = "PARK"
virtual = "{VIP}:5226"
serverfarm = "ECHO5222"
negotiation_timeout = 1

[[vserver]]
name = "PROXIED"
virtual = "{VIP}:5227"
serverfarm = "PROXYV1"

[[vserver]]
name = "BOTH"
virtual = "{VIP}:5228"
mode = "both"
serverfarm = "ECHOBOTH"

[[vserver]]
name = "BALANCED"
virtual = "{VIP}:5229"
accept_proxy = ["127.0.0.0/8"]
serverfarm = "ECHO5222"

[[vserver]]
name = "SILENT"
virtual = "{VIP}:5230"
serverfarm = "SILENT"

[[serverfarm]]
name = "ECHO"
[[serverfarm.real]]
address = "{ECHO}"

[[serverfarm]]
name = "SILENT"  # a real whose kernel takes the connection and nobody answers
[[serverfarm.real]]
address = "{SILENT}:5222"

[[serverfarm]]
name = "ECHOBOTH"  # XML streams to :5222 (the real's port), direct TLS to :5223 (the default)
[[serverfarm.real]]
address = "{ECHO}:5222"

[[serverfarm]]
name = "PROXYV1"
proxy_protocol = "v1"
[[serverfarm.real]]
address = "{ECHO}:5227"

[[serverfarm]]
name = "ECHO5222"
[[serverfarm.real]]
address = "{ECHO}:5222"

[[serverfarm]]
name = "DEAD"
[[serverfarm.real]]
address = "127.0.6.11"
[[serverfarm.real]]
address = "127.0.6.12"
"""


def header(to: str | None = "example.test", ns: str = "jabber:client",
           stream_ns: str = "http://etherx.jabber.org/streams",
           version: str | None = "1.0") -> bytes:
    to_attr = f"to='{to}' " if to else ""
    version_attr = f" version='{version}'" if version else ""
    return (f"<?xml version='1.0'?><stream:stream {to_attr}xmlns='{ns}' "
            f"xmlns:stream='{stream_ns}'{version_attr}>").encode()


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[EchoBackend, EchoBackend]]:
    backends = (EchoBackend(ECHO, 5222), EchoBackend(ECHO, 5223), EchoBackend(ECHO, 5227))
    yield backends
    for b in backends:
        b.close()


@pytest.fixture(scope="module")
def silent() -> Iterator[socket.socket]:
    """A listening socket nobody accepts from: connects complete, no byte ever comes."""
    sock = socket.create_server((SILENT, 5222), backlog=64)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, echo, silent) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(CONFIG, tmp_path_factory.mktemp("transport")).start()
    yield gw
    gw.stop()


COPY_VIP = "127.0.6.3"


def moved(address: str) -> str:
    """CONFIG with its vservers on another address (the reals stay where they are)."""
    return CONFIG.replace(f'virtual = "{VIP}:', f'virtual = "{address}:')


@pytest.fixture(scope="module")
def copy_gateway(tmp_path_factory: pytest.TempPathFactory, echo) -> Iterator[GatewayProcess]:
    """The same, with the splice relay off: the Protocol copy relay must hold on its own."""
    config = moved(COPY_VIP).replace("[gateway]\n", '[gateway]\nrelay = "copy"\n')
    gw = GatewayProcess(config, tmp_path_factory.mktemp("transport-copy")).start()
    yield gw
    gw.stop()


@pytest.fixture(params=["splice", "copy"])
def relay(request: pytest.FixtureRequest) -> tuple[str, str, GatewayProcess]:
    """(relay, address, gateway) for the tests both relays must pass."""
    if request.param == "splice":
        return "splice", VIP, request.getfixturevalue("gateway")
    return "copy", COPY_VIP, request.getfixturevalue("copy_gateway")


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send data, read until the gateway closes; returns everything received."""
    with socket.create_connection((VIP, port), timeout=timeout) as sock:
        if data:
            sock.sendall(data)
        return read_to_eof(sock)


def read_to_eof(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def stream_error(reply: bytes) -> tuple[ET.Element, str]:
    """Parse the gateway's whole answer; returns the stream root and the error condition."""
    root = ET.fromstring(reply)
    assert root.tag == f"{STREAMS}stream"
    [error] = list(root)
    assert error.tag == f"{STREAMS}error"
    conditions = [c.tag.removeprefix(ERRORS) for c in error if c.tag != f"{ERRORS}text"]
    assert len(conditions) == 1, reply
    return root, conditions[0]


# --- stream errors (RFC 6120 §4.9) ------------------------------------------------------------


def test_host_unknown_never_reaches_a_real(gateway: GatewayProcess, echo) -> None:
    before = echo[0].accepted
    reply = exchange(5222, header(to="evil.test"))
    root, condition = stream_error(reply)
    assert condition == "host-unknown"
    assert root.get("from") == "gw.example.test"  # §4.9.1.3: our own name, not evil.test
    assert b"xmlns='jabber:client'" in reply
    assert echo[0].accepted == before


@pytest.mark.parametrize("theirs, ours", [("1.0", "1.0"), ("0.9", "0.9"), ("2.0", "1.0"),
                                           (None, None)])
def test_the_error_header_answers_with_the_lower_version(
        gateway: GatewayProcess, theirs: str | None, ours: str | None) -> None:
    """RFC 6120 §4.7.5: the lower of the client's version and ours; none for none."""
    root, condition = stream_error(exchange(5222, header(to="evil.test", version=theirs)))
    assert condition == "host-unknown" and root.get("version") == ours


def test_the_gateway_s_own_answer_is_counted(gateway: GatewayProcess) -> None:
    """bytes_to_client counts the header and stream error the gateway sent itself."""
    with socket.create_connection((VIP, 5222), timeout=5) as sock:
        port = sock.getsockname()[1]
        sock.sendall(header(to="evil.test"))
        reply = read_to_eof(sock)
    record = gateway.wait_record(lambda r: r.get("client") == f"127.0.0.1:{port}")
    assert record["error"] == "host-unknown" and record["bytes_to_client"] == len(reply) > 0


def test_host_unknown_without_to(gateway: GatewayProcess, echo) -> None:
    before = echo[0].accepted
    assert stream_error(exchange(5222, header(to=None)))[1] == "host-unknown"
    assert echo[0].accepted == before


def test_error_header_uses_the_peer_namespace(gateway: GatewayProcess) -> None:
    reply = exchange(5222, header(to="evil.test", ns="jabber:server"))
    assert b"xmlns='jabber:server'" in reply
    assert stream_error(reply)[1] == "host-unknown"


def test_connection_timeout(gateway: GatewayProcess) -> None:
    reply = exchange(5222, b"<?xml version='1.0'?><stream:str")
    assert stream_error(reply)[1] == "connection-timeout"


@pytest.mark.parametrize("data, condition", [
    (b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", "not-well-formed"),
    (b"<!-- hello --><stream:stream>", "restricted-xml"),
    (b"<!DOCTYPE stream:stream [<!ENTITY x 'y'>]>", "restricted-xml"),
    (b"<?php echo 1; ?>", "restricted-xml"),
    (header(to="&xxe;"), "restricted-xml"),
    (header(stream_ns="urn:not-streams"), "invalid-namespace"),
    (header(ns="jabber:iq:roster"), "invalid-namespace"),
    (b"<stream:stream xmlns='jabber:client' to='example.test'>", "bad-namespace-prefix"),
    (b"<?xml version='1.0' encoding='UTF-16'?>", "unsupported-encoding"),
    (b"<stream:stream xmlns='jabber:client' " + b"a='b' " * 400, "policy-violation"),
])
def test_protocol_errors(gateway: GatewayProcess, data: bytes, condition: str) -> None:
    reply = exchange(5222, data)
    assert stream_error(reply)[1] == condition
    record = gateway.wait_record(lambda r: r.get("error") == condition)
    assert record["real"] is None


def test_a_stream_parked_before_tls_gets_connection_timeout(gateway: GatewayProcess) -> None:
    """Header sent, the real's header and features received, then nothing: the cleartext
    phase ends at negotiation_timeout (1 s here) with <connection-timeout/>, both sockets
    released; there is no idle timeout once a stream is opaque, so this is the only bound."""
    began = time.monotonic()
    reply = exchange(5226, header())
    assert time.monotonic() - began >= 0.9
    _root, condition = stream_error(reply)  # the echo's header is the "real's" here
    assert condition == "connection-timeout"
    record = gateway.wait_record(lambda r: r.get("vserver") == "PARK")
    assert record["error"] == "connection-timeout" and record["real"] == f"{ECHO}:5222"


def test_the_error_reaches_a_client_that_keeps_sending(gateway: GatewayProcess) -> None:
    """After a stream error the gateway shuts its write side and drains, never resets: a
    client still writing (here half a megabyte behind its first bytes) reads the whole
    error document and a clean EOF, as from HAProxy or nginx."""
    for _ in range(3):
        with socket.create_connection((VIP, 5222), timeout=5) as sock:
            def send() -> None:
                try:
                    sock.sendall(b"<!---->" + b"<presence/>" * 50_000)
                except OSError:
                    pass
            sender = threading.Thread(target=send)
            sender.start()
            try:
                reply = read_to_eof(sock)  # ConnectionResetError here is the fault
            finally:
                sender.join()
        assert stream_error(reply)[1] == "restricted-xml"


def test_clients_that_reset_after_their_header_are_no_verdict_on_the_real(
        gateway: GatewayProcess, echo) -> None:
    """A flood of clients that send a header and reset at once (SO_LINGER 0): no attempt
    counts against the real, and a PROXY farm's real never sees a stream without its
    PROXY header, even for a connection reset before the gateway could read its address."""
    linger = struct.pack("ii", 1, 0)
    for _ in range(400):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        sock.connect((VIP, 5227))
        sock.sendall(header())
        sock.close()
    with socket.create_connection((VIP, 5227), timeout=5) as sock:  # an honest client after
        sock.sendall(header())
        assert sock.recv(100).startswith(b"PROXY TCP4 ")  # the echo returns it all
    time.sleep(1.0)
    assert not [r for r in gateway.records("real_attempt_failed") if r["farm"] == "PROXYV1"]
    assert not [r for r in gateway.records("real_state") if r["farm"] == "PROXYV1"]
    streams = [first for first in echo[2].received if first]
    assert streams and all(first.startswith(b"PROXY TCP4 ") for first in streams)


def test_kind_not_served_is_invalid_namespace(gateway: GatewayProcess, echo) -> None:
    before = echo[0].accepted
    reply = exchange(5225, header(ns="jabber:server"))
    assert stream_error(reply)[1] == "invalid-namespace"
    assert b"xmlns='jabber:server'" in reply
    assert stream_error(exchange(5225, header(ns="jabber:component:accept")))[1] == (
        "invalid-namespace")
    assert echo[0].accepted == before


def test_remote_connection_failed_when_no_real_answers(gateway: GatewayProcess) -> None:
    reply = exchange(5224, header())
    assert stream_error(reply)[1] == "remote-connection-failed"
    failures = gateway.records("real_attempt_failed")
    assert {r["real"] for r in failures} >= {"127.0.6.11", "127.0.6.12"}
    assert {r["reason"] for r in failures} == {"Connection refused"}



def test_a_client_that_leaves_while_connecting_is_let_go_at_once(
        gateway: GatewayProcess) -> None:
    """abortonclose: the client sends its header, then its FIN while the real has not
    answered. It is closed at once (not after response_timeout), nothing is opened for it
    later, and the silent real is not judged by it."""
    with socket.create_connection((VIP, 5230), timeout=3) as sock:  # < response_timeout 5 s
        sock.sendall(header())
        time.sleep(0.3)  # connected to the silent real, waiting for its answer
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
    record = gateway.wait_record(lambda r: r["vserver"] == "SILENT")
    assert record["error"] == "client-left" and record["real"] is None
    assert record["bytes_to_client"] == 0
    time.sleep(0.5)
    assert not [r for r in gateway.records("real_attempt_failed") if r["farm"] == "SILENT"]

# --- direct TLS (XEP-0368) ---------------------------------------------------------------------


def tls_client(sni: str | None, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    return ctx


def test_unknown_sni_gets_unrecognized_name_alert(gateway: GatewayProcess, echo) -> None:
    before = echo[1].accepted
    ctx = tls_client("evil.test", ["xmpp-client"])
    with (socket.create_connection((VIP, 5223), timeout=5) as raw,
          pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME")):
        ctx.wrap_socket(raw, server_hostname="evil.test")
    assert echo[1].accepted == before


def test_not_tls_on_directtls_gets_decode_error(gateway: GatewayProcess) -> None:
    assert exchange(5223, b"GET / HTTP/1.1\r\n\r\n") == alert_record(50)
    assert exchange(5223, b"\x16\x03\x01\x00\x04\x02\x00\x00\x00") == alert_record(10)


def test_an_xmpp_stream_on_directtls_gets_a_stream_error_naming_the_starttls_port(
        gateway: GatewayProcess, echo) -> None:
    """A plain XMPP client on the direct-TLS port is answered in XML, not with an alert it
    reports as "content before root node", and told where STARTTLS is."""
    before = echo[1].accepted
    _root, condition = stream_error(exchange(5223, header(ns="jabber:server")))
    assert condition == "policy-violation"
    assert b"xmlns='jabber:server'" in exchange(5223, header(ns="jabber:server"))
    text = ET.fromstring(exchange(5223, header()))[0].find(f"{ERRORS}text").text
    assert text.endswith("STARTTLS is on port 5222")
    assert echo[1].accepted == before


def test_a_clienthello_on_starttls_gets_a_tls_alert(gateway: GatewayProcess, echo) -> None:
    """A client trying direct TLS first on the STARTTLS port gets a TLS alert it can read
    (RFC 8446 §6.2 unexpected_message), not <not-well-formed/>."""
    before = echo[0].accepted
    ctx = tls_client("example.test", ["xmpp-client"])
    with (socket.create_connection((VIP, 5222), timeout=5) as raw,
          pytest.raises(ssl.SSLError, match="UNEXPECTED_MESSAGE")):
        ctx.wrap_socket(raw, server_hostname="example.test")
    assert echo[0].accepted == before
    record = gateway.wait_record(lambda r: r.get("vserver") == "E5222"
                                 and r.get("error") == "tls-alert-10")
    assert record["bytes_to_client"] == 7


def client_hello(sni: str, alpn: list[str]) -> bytes:
    """The ClientHello Python's ssl would send (SNI and ALPN as given)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_client(sni, alpn).wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def echoed(port: int, data: bytes) -> tuple[bytes, int]:
    """Send data, read back as many bytes from the echo behind; (echo, client port)."""
    with socket.create_connection((VIP, port), timeout=5) as sock:
        sock.sendall(data)
        back = b""
        while len(back) < len(data):
            chunk = sock.recv(65536)
            assert chunk, back
            back += chunk
        return back, sock.getsockname()[1]


def test_both_mode_sends_tls_to_the_direct_tls_port_and_xml_to_the_starttls_one(
        gateway: GatewayProcess, echo) -> None:
    hello = client_hello("example.test", ["xmpp-client"])
    tls_before, xml_before = echo[1].accepted, echo[0].accepted
    back, tls_port = echoed(5228, hello)
    assert back == hello and echo[1].accepted == tls_before + 1  # the echo on :5223
    back, xml_port = echoed(5228, header())
    assert back == header() and echo[0].accepted == xml_before + 1  # the echo on :5222
    tls_line = gateway.wait_record(lambda r: r.get("client") == f"127.0.0.1:{tls_port}")
    xml_line = gateway.wait_record(lambda r: r.get("client") == f"127.0.0.1:{xml_port}")
    assert (tls_line["vserver"], tls_line["mode"], tls_line["real_port"]) == (
        "BOTH", "directtls", 5223)
    assert tls_line["sni"] == "example.test" and tls_line["kind"] == "c2s"
    assert (xml_line["mode"], xml_line["real_port"], xml_line["to"]) == (
        "starttls", 5222, "example.test")


def test_an_ip_literal_as_sni_goes_to_the_default_farm(gateway: GatewayProcess, echo) -> None:
    """RFC 6066 forbids it, clients send it: routed as no SNI would be, and logged."""
    from tests.unit.test_connection import hello_record

    hello = hello_record("127.0.6.1", (b"xmpp-client",))
    back, port = echoed(5223, hello)
    assert back == hello
    record = gateway.wait_record(lambda r: r.get("client") == f"127.0.0.1:{port}")
    assert record["sni"] == "127.0.6.1" and record["to"] is None and record["real"] == ECHO


def test_a_6_kb_alpn_list_is_cut_in_the_connection_line(gateway: GatewayProcess) -> None:
    alpn = [f"p{i:03d}-" + "x" * 40 for i in range(140)] + ["xmpp-client"]
    hello = client_hello("example.test", alpn)
    assert len(hello) > 6000
    _, port = echoed(5223, hello)
    record = gateway.wait_record(lambda r: r.get("client") == f"127.0.0.1:{port}")
    assert record["kind"] == "c2s"  # routing read the whole list
    assert len(record["alpn"]) == 9 and record["alpn"][-1] == "...(133 more)"
    assert len(json.dumps(record)) < 2000


def test_a_balancer_s_tcp_health_checks_are_not_logged_as_bad_proxy_headers(
        gateway: GatewayProcess) -> None:
    """Connect and close from an accept_proxy network, no byte: a health check (counted,
    logged at debug only), not a `bad-proxy-header` every few seconds."""
    for _ in range(3):
        socket.create_connection((VIP, 5229), timeout=5).close()
    with socket.create_connection((VIP, 5229), timeout=5) as sock:  # then a broken header
        port = sock.getsockname()[1]
        sock.sendall(b"PROXY TCP4 garbage\r\n")
        read_to_eof(sock)
    gateway.wait_record(lambda r: r.get("client") == f"127.0.0.1:{port}"
                        and r.get("event") == "connection")
    lines = [r for r in gateway.records("connection") if r.get("vserver") == "BALANCED"]
    assert [r["error"] for r in lines] == ["bad-proxy-header"]


def test_clienthello_is_replayed_exactly(gateway: GatewayProcess, echo) -> None:
    """The hello reaches the real byte for byte, even split into tiny TCP segments."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_client("example.test", ["xmpp-client"]).wrap_bio(
        incoming, outgoing, server_hostname="example.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    with socket.create_connection((VIP, 5223), timeout=5) as sock:
        port = sock.getsockname()[1]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(hello), 7):
            sock.sendall(hello[i:i + 7])
            time.sleep(0.001)
        echoed = b""
        while len(echoed) < len(hello):
            echoed += sock.recv(65536)
        time.sleep(0.3)  # relayed, then handed to the splice relay while idle
        sock.sendall(b"\x17\x03\x03\x00\x01x")  # an application record after the handover
        assert sock.recv(100) == b"\x17\x03\x03\x00\x01x"
    assert echoed == hello
    record = gateway.wait_record(lambda r: r.get("client") == f"127.0.0.1:{port}")
    assert record["sni"] == "example.test" and record["alpn"] == ["xmpp-client"] and record["kind"] == "c2s"
    assert record["spliced"] is True  # direct TLS is opaque from its first byte


# --- the relay ---------------------------------------------------------------------------------


def test_megabytes_both_ways_through_a_slow_reader(relay: tuple[str, str, GatewayProcess]) -> None:
    """Byte-exact, and flow control holds: the gateway does not buffer what the reader won't take."""
    mode, address, gateway = relay
    rng = random.Random(6120)
    payload = rng.randbytes(16 * 1024 * 1024)
    sent = header() + payload
    rss_before = gateway.rss_kib()
    peak = [rss_before]
    with socket.create_connection((address, 5222), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        writer = threading.Thread(target=lambda: (sock.sendall(sent), sock.shutdown(socket.SHUT_WR)))
        writer.start()
        received = bytearray()
        while True:
            chunk = sock.recv(16384)
            if not chunk:
                break
            received += chunk
            if len(received) < 4 * 1024 * 1024:
                time.sleep(0.0005)  # a slow reader for the first megabytes
                if len(received) % (256 * 1024) < 16384:
                    peak.append(gateway.rss_kib())
        writer.join()
    assert bytes(received) == sent  # the echo came back whole, in order, through half-close
    assert max(peak) - rss_before < 8 * 1024, f"RSS grew {max(peak) - rss_before} KiB"
    record = gateway.wait_record(lambda r: r.get("bytes_from_client") == len(sent))
    assert record["bytes_to_client"] == len(sent)
    assert record["real"] == ECHO and record["error"] is None
    assert record["spliced"] is (mode == "splice")  # the random bytes made it opaque at once


def test_half_close_passes_through(relay: tuple[str, str, GatewayProcess]) -> None:
    _, address, _ = relay
    with socket.create_connection((address, 5222), timeout=5) as sock:
        sock.sendall(header() + b"<presence/>")
        time.sleep(0.2)  # relayed (and, with splice, handed over) before the FIN
        sock.sendall(b"<message>after the handover</message>")
        sock.shutdown(socket.SHUT_WR)  # the echo sees EOF only if the gateway passes the FIN on
        assert read_to_eof(sock) == header() + b"<presence/><message>after the handover</message>"


def test_no_fd_leak_after_many_connections(gateway: GatewayProcess) -> None:
    def burst() -> None:
        for i in range(60):
            kind = i % 4
            with socket.create_connection((VIP, 5222), timeout=5) as sock:
                if kind == 0:
                    sock.sendall(header() + b"<presence/>")
                    sock.recv(100)
                elif kind == 1:
                    sock.sendall(header(to="evil.test"))
                    read_to_eof(sock)
                elif kind == 2:
                    sock.sendall(b"<!--")
                    read_to_eof(sock)
                # kind 3: connect and leave at once
    burst()
    time.sleep(0.5)
    baseline = gateway.fd_count()
    burst()
    deadline = time.monotonic() + 10
    while gateway.fd_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gateway.fd_count() <= baseline


def test_sigterm_stops_cleanly(tmp_path: Path, echo) -> None:
    # a relayed (opaque) stream gets shutdown_timeout to end on its own, then is closed
    config = moved("127.0.6.2").replace("[gateway]\n", "[gateway]\nshutdown_timeout = 1\n")
    gw = GatewayProcess(config, tmp_path).start()
    sent = header() + b"<presence/>"
    with socket.create_connection(("127.0.6.2", 5222), timeout=5) as sock:
        sock.sendall(sent)
        echoed = b""
        while len(echoed) < len(sent):
            echoed += sock.recv(65536)
        assert echoed == sent
        assert gw.stop() == 0
        assert read_to_eof(sock) == b""  # closed by the gateway, not left hanging
    assert "Traceback" not in gw.log_text()
    assert [r["event"] for r in gw.records()][-1] == "stopped"


def test_bind_failure_is_a_clear_message(tmp_path: Path, gateway: GatewayProcess) -> None:
    gw = GatewayProcess(CONFIG, tmp_path)  # same addresses: already taken by `gateway`
    with pytest.raises(RuntimeError, match="cannot listen on 127.0.6.1:5222"):
        gw.start()
    assert "Traceback" not in gw.log_text()
    assert os.path.exists(gw.log_path)
