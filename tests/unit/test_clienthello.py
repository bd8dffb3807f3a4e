"""Tests for the sans-IO ClientHello reader.

Real ClientHellos come from Python's own ``ssl`` module (and ``openssl s_client`` when the CLI
is present) so the reader is checked against what clients really send, not only against the
builder below, which exists to produce the malformed variants.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xmppgw.wire.clienthello import (
    DECODE_ERROR,
    HANDSHAKE_FAILURE,
    ILLEGAL_PARAMETER,
    INTERNAL_ERROR,
    PROTOCOL_VERSION,
    RECORD_OVERFLOW,
    UNEXPECTED_MESSAGE,
    UNRECOGNIZED_NAME,
    ClientHello,
    ClientHelloEvent,
    ClientHelloReader,
    HelloError,
    alert_record,
)

# --------------------------------------------------------------------------- helpers


def real_hello(
    server_hostname: str | None = "example.test",
    alpn: tuple[str, ...] | None = ("xmpp-client",),
    maximum_version: ssl.TLSVersion | None = None,
) -> bytes:
    """The first flight Python's ssl module sends: one record holding the ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def feed_all(data: bytes, chunks: list[int] | None = None, **kw: int) -> list[ClientHelloEvent]:
    """Feed ``data`` split at the given chunk sizes (whole if None); collect every event."""
    reader = ClientHelloReader(**kw)
    if chunks is None:
        return reader.feed(data)
    events: list[ClientHelloEvent] = []
    pos = 0
    for size in chunks:
        events += reader.feed(data[pos:pos + size])
        pos += size
    events += reader.feed(data[pos:])
    return events


def one(data: bytes, **kw: int) -> ClientHelloEvent:
    events = feed_all(data, **kw)
    assert len(events) == 1, events
    return events[0]


def error(data: bytes, **kw: int) -> HelloError:
    event = one(data, **kw)
    assert isinstance(event, HelloError), event
    return event


def vec(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + vec(data, 2)


def sni_ext(name: bytes, name_type: int = 0) -> bytes:
    return ext(0, vec(bytes([name_type]) + vec(name, 2), 2))


def alpn_ext(*names: bytes) -> bytes:
    return ext(16, vec(b"".join(vec(n, 1) for n in names), 2))


def versions_ext(*versions: int) -> bytes:
    return ext(43, vec(b"".join(v.to_bytes(2, "big") for v in versions), 1))


def hello_body(
    extensions: bytes | None = b"",
    *,
    version: int = 0x0303,
    session_id: bytes = bytes(32),
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
) -> bytes:
    body = version.to_bytes(2, "big") + bytes(range(32)) + vec(session_id, 1)
    body += vec(suites, 2) + vec(compression, 1)
    if extensions is not None:
        body += vec(extensions, 2)
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def record(fragment: bytes, content_type: int = 22, version: int = 0x0301) -> bytes:
    return bytes([content_type]) + version.to_bytes(2, "big") + vec(fragment, 2)


def records(message: bytes, sizes: list[int] | None = None) -> bytes:
    """``message`` cut into handshake records of the given fragment sizes (rest in the last)."""
    out, pos = b"", 0
    for size in sizes or []:
        out += record(message[pos:pos + size])
        pos += size
    return out + record(message[pos:])


def hello(*exts: bytes, **kw: object) -> bytes:
    return record(handshake(hello_body(b"".join(exts), **kw)))  # type: ignore[arg-type]


def unwrap(single_record: bytes) -> bytes:
    """The handshake message inside a one-record flight."""
    assert single_record[0] == 22
    length = int.from_bytes(single_record[3:5], "big")
    assert len(single_record) == 5 + length, "expected exactly one record"
    return single_record[5:]


GOOD = hello(sni_ext(b"example.test"), alpn_ext(b"xmpp-client"), versions_ext(0x0304, 0x0303))

# --------------------------------------------------------------------------- constants


def test_alert_record() -> None:
    assert alert_record(112) == bytes([21, 3, 3, 0, 2, 2, 112])
    assert alert_record(DECODE_ERROR, level=1) == bytes([21, 3, 3, 0, 2, 1, 50])
    with pytest.raises(ValueError):
        alert_record(256)


def test_alert_constants() -> None:
    # RFC 8446 §6.2 AlertDescription values.
    assert (UNEXPECTED_MESSAGE, RECORD_OVERFLOW, HANDSHAKE_FAILURE, ILLEGAL_PARAMETER) == (
        10, 22, 40, 47)
    assert (DECODE_ERROR, PROTOCOL_VERSION, INTERNAL_ERROR, UNRECOGNIZED_NAME) == (
        50, 70, 80, 112)


def test_events_are_frozen() -> None:
    event = one(GOOD)
    with pytest.raises(AttributeError):
        event.sni = "other"  # type: ignore[misc]


def test_max_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ClientHelloReader(max_bytes=0)


# --------------------------------------------------------------------------- real hellos


def test_python_ssl_hello_c2s() -> None:
    data = real_hello("example.test", ("xmpp-client",))
    event = one(data)
    assert event == ClientHello(
        sni="example.test",
        alpn=("xmpp-client",),
        legacy_version=0x0303,
        supported_versions=event.supported_versions,
        length=len(data),
    )
    assert 0x0304 in event.supported_versions and 0x0303 in event.supported_versions


def test_python_ssl_hello_s2s_and_case() -> None:
    event = one(real_hello("Jabber.Example.ORG", ("xmpp-server",)))
    assert isinstance(event, ClientHello)
    assert event.sni == "jabber.example.org"
    assert event.alpn == ("xmpp-server",)


def test_python_ssl_hello_several_alpn_in_client_order() -> None:
    event = one(real_hello("example.test", ("xmpp-client", "xmpp-server", "h2")))
    assert isinstance(event, ClientHello)
    assert event.alpn == ("xmpp-client", "xmpp-server", "h2")


def test_python_ssl_hello_without_sni_or_alpn() -> None:
    event = one(real_hello(None, None))
    assert isinstance(event, ClientHello)
    assert event.sni is None
    assert event.alpn == ()


def test_python_ssl_tls12_only_hello_has_no_supported_versions() -> None:
    event = one(real_hello("example.test", ("xmpp-client",), ssl.TLSVersion.TLSv1_2))
    assert isinstance(event, ClientHello)
    assert event.supported_versions == ()
    assert event.legacy_version == 0x0303
    assert event.sni == "example.test"


@pytest.mark.parametrize("sizes", [[1], [3], [4], [100], [1, 1, 1, 1, 1], [50] * 10, [200, 200]])
def test_refragmented_real_hello(sizes: list[int]) -> None:
    original = real_hello("example.test", ("xmpp-client",))
    message = unwrap(original)
    data = records(message, sizes)
    event = one(data)
    assert event == ClientHello("example.test", ("xmpp-client",), 0x0303,
                                one(original).supported_versions, len(data))  # type: ignore[union-attr]


def test_refragmented_one_byte_records_byte_by_byte() -> None:
    message = unwrap(real_hello())
    data = records(message, [1] * (len(message) - 1))
    events = feed_all(data, [1] * len(data))
    assert len(events) == 1 and isinstance(events[0], ClientHello)
    assert events[0].sni == "example.test" and events[0].length == len(data)


def test_bytes_after_the_hello_are_not_counted_and_later_feeds_are_ignored() -> None:
    data = real_hello()
    ccs = record(b"\x01", content_type=20)
    reader = ClientHelloReader()
    events = reader.feed(data + ccs + b"junk")
    assert len(events) == 1 and isinstance(events[0], ClientHello)
    assert events[0].length == len(data)
    assert reader.feed(b"more") == []
    assert reader.feed(data) == []


def test_after_an_error_later_feeds_are_ignored() -> None:
    reader = ClientHelloReader()
    assert reader.feed(b"<") == [HelloError(DECODE_ERROR, "not a TLS handshake record")]
    assert reader.feed(GOOD) == []


def test_partial_input_gives_no_event() -> None:
    reader = ClientHelloReader()
    assert reader.feed(b"") == []
    assert reader.feed(GOOD[:-1]) == []
    assert reader.feed(GOOD[-1:]) != []


def _capture_openssl_hello(openssl: str) -> bytes:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            [openssl, "s_client", "-connect", f"127.0.0.1:{port}",
             "-servername", "xmpp.example.test", "-alpn", "xmpp-client,xmpp-server"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                reader, data = ClientHelloReader(), b""
                while (chunk := conn.recv(4096)) != b"":
                    data += chunk
                    if reader.feed(chunk):
                        break
                return data
        finally:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_s_client_hello() -> None:
    data = _capture_openssl_hello(shutil.which("openssl") or "openssl")
    event = one(data)
    assert isinstance(event, ClientHello)
    assert event.sni == "xmpp.example.test"
    assert event.alpn == ("xmpp-client", "xmpp-server")
    assert event.length == len(data)


# --------------------------------------------------------------------------- builder hellos


def test_builder_hello() -> None:
    assert one(GOOD) == ClientHello("example.test", ("xmpp-client",), 0x0303,
                                    (0x0304, 0x0303), len(GOOD))


def test_hello_without_extensions_block() -> None:
    data = record(handshake(hello_body(None, version=0x0301)))
    assert one(data) == ClientHello(None, (), 0x0301, (), len(data))


def test_hello_with_empty_extensions_block() -> None:
    data = record(handshake(hello_body(b"")))
    assert one(data) == ClientHello(None, (), 0x0303, (), len(data))


@pytest.mark.parametrize("raw, address", [
    (b"192.0.2.1", "192.0.2.1"),
    (b"2001:db8::1", "2001:db8::1"),
    (b"[2001:DB8:0::1]", "2001:db8::1"),
    (b"::ffff:192.0.2.1", "::ffff:c000:201"),
])
def test_an_ip_literal_as_sni_is_no_domain(raw: bytes, address: str) -> None:
    """RFC 6066 §3 forbids IP literals in host_name, but clients send them: not refused,
    reported apart (`sni_ip`) so it routes like a hello without SNI."""
    event = one(hello(sni_ext(raw)))
    assert isinstance(event, ClientHello)
    assert (event.sni, event.sni_ip) == (None, address)


def test_sni_trailing_dot_stripped() -> None:
    event = one(hello(sni_ext(b"Example.Test.")))
    assert isinstance(event, ClientHello) and event.sni == "example.test"


def test_unknown_extensions_are_skipped() -> None:
    event = one(hello(ext(0xFAFA, b""), ext(21, bytes(100)), sni_ext(b"a.b")))
    assert isinstance(event, ClientHello) and event.sni == "a.b"


def test_ssl3_record_version_and_session_id() -> None:
    data = record(handshake(hello_body(sni_ext(b"x.test"), session_id=b"\x01" * 32)),
                  version=0x0300)
    event = one(data)
    assert isinstance(event, ClientHello) and event.sni == "x.test"


def test_alpn_names_decoded_safely() -> None:
    event = one(hello(alpn_ext(b"\xff\x00\n", b"xmpp-client")))
    assert isinstance(event, ClientHello)
    assert event.alpn == ("\xff\x00\n", "xmpp-client")


def test_hello_exactly_max_bytes() -> None:
    assert isinstance(one(GOOD, max_bytes=len(GOOD)), ClientHello)


# --------------------------------------------------------------------------- malformed

TOO_LARGE = "ClientHello larger than max_bytes"


@pytest.mark.parametrize(
    ("data", "alert", "reason_part"),
    [
        # record layer
        (b"<?xml version='1.0'?>", DECODE_ERROR, "not a TLS handshake record"),
        (b"<", DECODE_ERROR, "not a TLS handshake record"),
        (b"\x80", DECODE_ERROR, "not a TLS handshake record"),  # SSLv2-compatible hello
        (b"\x17\x03\x03\x00\x05hello", DECODE_ERROR, "not a TLS handshake record"),
        (b"\x16\x02", DECODE_ERROR, "major byte 2"),
        (b"\x16\x03\x01\x00\x00", DECODE_ERROR, "zero-length"),
        (b"\x16\x03\x01\x40\x01", RECORD_OVERFLOW, "exceeds 2^14"),
        (b"\x16\x03\x01\xff\xff", RECORD_OVERFLOW, "exceeds 2^14"),
        # handshake layer
        (record(handshake(b"\x03\x03", msg_type=2)), UNEXPECTED_MESSAGE, "handshake type 2"),
        (b"\x16\x03\x01\x00\x05\x02", UNEXPECTED_MESSAGE, "handshake type 2"),
        (record(handshake(b"")), DECODE_ERROR, "legacy_version truncated"),
        (record(handshake(hello_body()) + b"\x00"), UNEXPECTED_MESSAGE, "record boundary"),
        (record(handshake(b"\x03\x03" + bytes(8))), DECODE_ERROR, "random truncated"),
    ],
    ids=lambda v: v[:24].hex() if isinstance(v, bytes) else str(v),
)
def test_framing_errors(data: bytes, alert: int, reason_part: str) -> None:
    err = error(data)
    assert err.alert == alert
    assert reason_part in err.reason


def test_later_record_of_other_content_type() -> None:
    message = handshake(hello_body(sni_ext(b"a.test")))
    data = record(message[:10]) + record(b"\x01", content_type=20) + record(message[10:])
    assert error(data).alert == UNEXPECTED_MESSAGE


def test_later_record_with_bad_version() -> None:
    message = handshake(hello_body(sni_ext(b"a.test")))
    data = record(message[:10]) + record(message[10:], version=0x0101)
    assert error(data).alert == DECODE_ERROR


def test_zero_length_record_in_the_middle() -> None:
    message = handshake(hello_body(sni_ext(b"a.test")))
    data = record(message[:10]) + record(b"") + record(message[10:])
    assert "zero-length" in error(data).reason


@pytest.mark.parametrize(
    ("body", "alert", "reason_part"),
    [
        (hello_body(version=0x0200), PROTOCOL_VERSION, "legacy_version"),
        (hello_body(version=0x0303)[:20], DECODE_ERROR, "random truncated"),
        (hello_body(session_id=bytes(33)), DECODE_ERROR, "legacy_session_id length 33"),
        (hello_body(suites=b""), DECODE_ERROR, "cipher_suites length 0"),
        (hello_body(suites=b"\x13\x01\x13"), DECODE_ERROR, "odd"),
        (hello_body(compression=b""), DECODE_ERROR, "legacy_compression_methods length 0"),
        (hello_body(None)[:-2] + b"\x05\x00", DECODE_ERROR,
         "legacy_compression_methods truncated"),
        (hello_body(None) + b"\x00", DECODE_ERROR, "extensions length truncated"),
        (hello_body(None) + b"\x00\x04", DECODE_ERROR, "extensions truncated"),
        (hello_body(b"") + b"\x00", DECODE_ERROR, "trailing"),
        (hello_body(b"\x00\x00\x00\x05\x00"), DECODE_ERROR, "extension 0 truncated"),
        (hello_body(b"\x00"), DECODE_ERROR, "extension type truncated"),
        (hello_body(ext(5, b"") + ext(5, b"")), ILLEGAL_PARAMETER, "duplicate extension type 5"),
        (hello_body(sni_ext(b"a.test") + sni_ext(b"a.test")), ILLEGAL_PARAMETER, "duplicate"),
        # server_name (RFC 6066 §3)
        (hello_body(sni_ext(b"a.test", name_type=1)), DECODE_ERROR, "name_type 1"),
        (hello_body(ext(0, b"")), DECODE_ERROR, "server_name_list length truncated"),
        (hello_body(ext(0, vec(b"", 2))), DECODE_ERROR, "server_name_list length 0"),
        (hello_body(ext(0, vec(b"\x00" + vec(b"a.test", 2), 2) + b"x")), DECODE_ERROR,
         "trailing"),
        (hello_body(ext(0, vec(b"\x00" + vec(b"a", 2) + b"\x00" + vec(b"b", 2), 2))),
         DECODE_ERROR, "more than one host_name"),
        (hello_body(ext(0, vec(b"\x00\x00\x00", 2))), DECODE_ERROR, "HostName length 0"),
        (hello_body(ext(0, vec(b"\x00\x00\x09ab", 2))), DECODE_ERROR, "HostName truncated"),
        (hello_body(sni_ext(b"a_b.test")), DECODE_ERROR, "not a DNS name"),
        (hello_body(sni_ext(b"a..test")), DECODE_ERROR, "not a DNS name"),
        (hello_body(sni_ext(b".")), DECODE_ERROR, "not a DNS name"),
        (hello_body(sni_ext(b"a.test..")), DECODE_ERROR, "not a DNS name"),
        (hello_body(sni_ext("ä.test".encode())), DECODE_ERROR, "not a DNS name"),
        (hello_body(sni_ext(b"a\x00.test")), DECODE_ERROR, "not a DNS name"),
        (hello_body(sni_ext(b"x" * 64 + b".test")), DECODE_ERROR, "not a DNS name"),
        (hello_body(sni_ext(b"a." * 127 + b"ab")), DECODE_ERROR, "not a DNS name"),
        # ALPN (RFC 7301 §3.1)
        (hello_body(alpn_ext()), DECODE_ERROR, "protocol_name_list length 0"),
        (hello_body(alpn_ext(b"")), DECODE_ERROR, "protocol_name_list length 1"),
        (hello_body(alpn_ext(b"xmpp-client", b"")), DECODE_ERROR, "ProtocolName length 0"),
        (hello_body(ext(16, vec(b"\x05abc", 2))), DECODE_ERROR, "ProtocolName truncated"),
        (hello_body(ext(16, vec(b"\x01a", 2) + b"z")), DECODE_ERROR, "trailing"),
        # supported_versions (RFC 8446 §4.2.1)
        (hello_body(versions_ext()), DECODE_ERROR, "versions length 0"),
        (hello_body(ext(43, b"\x03\x03\x04\x03")), DECODE_ERROR, "odd"),
        (hello_body(ext(43, b"\x02\x03\x04\x00")), DECODE_ERROR, "trailing"),
    ],
    ids=lambda v: v[:24].hex() if isinstance(v, bytes) else str(v),
)
def test_body_errors(body: bytes, alert: int, reason_part: str) -> None:
    err = error(record(handshake(body)))
    assert err.alert == alert
    assert reason_part in err.reason, err.reason


def test_hostname_at_limits_is_accepted() -> None:
    name = b".".join([b"a" * 63] * 3 + [b"b" * 61])  # 253 characters
    event = one(hello(sni_ext(name + b".")))
    assert isinstance(event, ClientHello) and event.sni == name.decode()


def test_bad_sni_reason_is_escaped() -> None:
    err = error(hello(sni_ext(b"evil\n\x1b[31m.test")))
    assert "\n" not in err.reason and "\x1b" not in err.reason
    assert all(32 <= ord(c) < 127 for c in err.reason)


def test_over_max_bytes_by_record_length() -> None:
    err = error(GOOD, max_bytes=len(GOOD) - 1)
    assert (err.alert, err.reason) == (DECODE_ERROR, f"{TOO_LARGE} ({len(GOOD) - 1})")
    # Decided from the record header alone, before the body arrives.
    assert feed_all(GOOD[:5], max_bytes=len(GOOD) - 1) == [err]


def test_over_max_bytes_by_handshake_length_is_decided_early() -> None:
    # 100-byte records but a handshake header announcing 60000 bytes.
    message = handshake(hello_body(ext(21, bytes(60000))))
    data = records(message, [100] * 20)
    err = error(data[:200])
    assert err.reason.startswith(TOO_LARGE)


def test_over_max_bytes_across_many_records() -> None:
    message = handshake(hello_body(ext(21, bytes(3000))))
    data = records(message, [100] * 30)
    assert isinstance(one(data), ClientHello)
    assert error(data, max_bytes=len(data) - 1).reason.startswith(TOO_LARGE)


def test_handshake_length_beyond_record_but_within_max() -> None:
    # The handshake says 1000 bytes but the stream ends: no decision yet, no error.
    message = handshake(hello_body(ext(21, bytes(1000))))
    assert feed_all(record(message[:500])) == []


# --------------------------------------------------------------------------- properties

REAL = real_hello("example.test", ("xmpp-client", "xmpp-server"))


def split_points(draw: st.DrawFn, length: int) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(0, length), max_size=20)))
    sizes, prev = [], 0
    for cut in cuts:
        sizes.append(cut - prev)
        prev = cut
    return sizes


@st.composite
def streams_with_splits(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    base = draw(st.sampled_from([REAL, GOOD, records(unwrap(REAL), [7, 300])]))
    data = bytearray(base)
    # Mutate a few bytes so error paths are split-tested too.
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    data += draw(st.binary(max_size=20))
    return bytes(data), split_points(draw, len(data))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(streams_with_splits())
def test_events_do_not_depend_on_chunking(case: tuple[bytes, list[int]]) -> None:
    data, sizes = case
    whole = feed_all(data)
    assert feed_all(data, sizes) == whole
    assert len(whole) <= 1


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(REAL) - 1), st.integers(0, 255))
def test_byte_by_byte_equals_whole_after_mutation(index: int, value: int) -> None:
    data = bytearray(REAL)
    data[index] = value
    assert feed_all(bytes(data), [1] * len(data)) == feed_all(bytes(data))


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_small_max_bytes_does_not_depend_on_chunking(data: st.DataObject) -> None:
    max_bytes = data.draw(st.integers(1, len(REAL) + 10))
    sizes = split_points(data.draw, len(REAL))
    assert feed_all(REAL, sizes, max_bytes=max_bytes) == feed_all(REAL, max_bytes=max_bytes)


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_garbage_never_raises(chunks: list[bytes]) -> None:
    reader = ClientHelloReader()
    events: list[ClientHelloEvent] = []
    for chunk in chunks:
        events += reader.feed(chunk)
    assert len(events) <= 1
    stream = b"".join(chunks)
    if events and isinstance(events[0], ClientHello):
        assert stream.startswith(b"\x16\x03")
    if stream[:1] and stream[0] != 0x16:
        assert events == [HelloError(DECODE_ERROR, "not a TLS handshake record")]


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=300))
def test_garbage_after_record_header_never_raises(payload: bytes) -> None:
    for prefix in (b"\x16\x03\x01", b"\x16\x03\x01\x01\x00\x01", b"\x16\x03\x03\x01\x00\x01\x00"):
        events = feed_all(prefix + payload)
        assert len(events) <= 1


LABEL = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
                min_size=1, max_size=20)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    labels=st.lists(LABEL, min_size=1, max_size=4),
    alpn=st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=4),
    versions=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=5),
    data=st.data(),
)
def test_builder_roundtrip_any_fragmentation(
    labels: list[str], alpn: list[bytes], versions: list[int], data: st.DataObject
) -> None:
    name = ".".join(labels)
    message = handshake(hello_body(
        sni_ext(name.encode()) + alpn_ext(*alpn) + versions_ext(*versions)))
    fragments = data.draw(st.lists(st.integers(1, 50), max_size=10))
    fragments = [f for f in fragments if f] if sum(fragments) < len(message) else []
    stream = records(message, fragments)
    try:  # labels of digits can spell an IPv4 address: not a domain (sni_ip)
        sni, sni_ip = None, str(ipaddress.ip_address(name))
    except ValueError:
        sni, sni_ip = name.lower(), None
    expected = ClientHello(sni, tuple(a.decode("latin-1") for a in alpn), 0x0303,
                           tuple(versions), len(stream), sni_ip)
    assert one(stream) == expected
    assert feed_all(stream + b"\x17\x03\x03", split_points(data.draw, len(stream))) == [expected]


# Hostile bytes where names and framing go: byte order marks, NUL, non-ASCII, UTF-16, an
# XMPP header on the TLS port. Every one gives the same events whole, byte by byte and in
# random splits, and a host_name with any of them is refused, never routed.
HOSTILE = [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff", b"\x00", b"\xc3\xa9",
           b"\xff", b"\x80", "é".encode("utf-16-le"), "<stream:stream".encode("utf-16-le"),
           b"<?xml version='1.0'?><stream:stream>", b".", b"..", b"-", b"\r\n"]


@st.composite
def hostile_hellos(draw: st.DrawFn) -> bytes:
    label = draw(st.sampled_from([b"example", b"a", b"x" * 63]))
    name = draw(st.lists(st.sampled_from([label, *HOSTILE]), min_size=1, max_size=4))
    alpn = draw(st.lists(st.sampled_from([b"xmpp-client", *HOSTILE]), min_size=1, max_size=3))
    message = handshake(hello_body(sni_ext(b"".join(name)) + alpn_ext(*alpn)))
    fragments = draw(st.lists(st.integers(1, 40), max_size=4))
    stream = records(message, fragments if sum(fragments) < len(message) else [])
    if draw(st.booleans()):  # a hostile piece somewhere in the framing as well
        at = draw(st.integers(0, len(stream)))
        stream = stream[:at] + draw(st.sampled_from(HOSTILE)) + stream[at:]
    return draw(st.sampled_from([b"", *HOSTILE])) + stream + draw(st.binary(max_size=8))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_hellos(), st.data())
def test_hostile_bytes_same_events_for_any_split(stream: bytes, data: st.DataObject) -> None:
    whole = feed_all(stream)
    assert len(whole) <= 1
    assert feed_all(stream, [1] * len(stream)) == whole
    assert feed_all(stream, split_points(data.draw, len(stream))) == whole
    if whole and isinstance(whole[0], ClientHello) and whole[0].sni is not None:
        assert whole[0].sni.isascii() and "\x00" not in whole[0].sni
        assert all(0 < len(label) <= 63 for label in whole[0].sni.split("."))


@pytest.mark.parametrize("piece", [p for p in HOSTILE if p not in (b".", b"-")])
def test_a_hostile_host_name_is_refused(piece: bytes) -> None:
    for name in (piece + b"example.test", b"ex" + piece + b"ample.test", b"example.test" + piece):
        event = one(hello(sni_ext(name)))
        assert isinstance(event, HelloError) and event.alert == DECODE_ERROR, name
        assert "not a DNS name" in event.reason
