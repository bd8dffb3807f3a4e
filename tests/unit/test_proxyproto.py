"""PROXY protocol v1/v2: the writers against the spec's bytes, the sans-IO reader fed whole,
byte by byte and in random splits, and every kind of bad input."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xmppgw.wire.proxyproto import (
    NEED_MORE,
    TLV_ALPN,
    TLV_AUTHORITY,
    TLV_CRC32C,
    TLV_NOOP,
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyError,
    ProxyEvent,
    ProxyHeader,
    ProxyHeaderReader,
    crc32c,
    encode_v1,
    encode_v2,
)

SIG = bytes.fromhex("0D0A0D0A000D0A515549540A")

# --------------------------------------------------------------------------- helpers


def feed_chunks(data: bytes, sizes: list[int] | None = None, **kw: int) -> tuple[ProxyEvent, int]:
    """Feed `data` in chunks of the given sizes (whole if None) until the reader decides.

    Returns the final event and how many bytes were handed over, so callers can check that
    header.rest plus the bytes never fed is exactly the client's stream."""
    reader = ProxyHeaderReader(**kw)
    pos, event = 0, NEED_MORE
    sizes = list(sizes or [len(data)])
    while pos < len(data):
        size = sizes.pop(0) if sizes else len(data) - pos
        chunk = data[pos:pos + max(1, size)]
        pos += len(chunk)
        event = reader.feed(chunk)
        if event is not NEED_MORE:
            break
    return event, pos


def byte_by_byte(data: bytes, **kw: int) -> list[ProxyEvent]:
    reader = ProxyHeaderReader(**kw)
    events = []
    for i in range(len(data)):
        events.append(reader.feed(data[i:i + 1]))
        if events[-1] is not NEED_MORE:
            break
    return events


def parse(data: bytes, **kw: int) -> ProxyEvent:
    return ProxyHeaderReader(**kw).feed(data)


def error(data: bytes, **kw: int) -> str:
    event = parse(data, **kw)
    assert isinstance(event, ProxyError), event
    return event.reason


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return SIG + bytes((ver_cmd, fam)) + struct.pack("!H", n) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


V4_BODY = bytes.fromhex("c0a80001" "c0a8000b" "dc04" "01bb")  # 192.168.0.1:56324 -> .11:443


# --------------------------------------------------------------------------- writers


def test_v1_matches_the_spec_example() -> None:
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == \
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


def test_v1_longest_tcp6_line_is_104_bytes() -> None:
    full = "ffff:" * 7 + "ffff"
    line = encode_v1((full, 65535), (full, 65535))
    assert line == f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(line) == 104


def test_v2_tcp4_matches_hand_built_bytes() -> None:
    expected = SIG + b"\x21\x11\x00\x0c" + V4_BODY
    assert V2_SIGNATURE == SIG
    assert encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443)) == expected


def test_v2_tcp6_with_tlvs_matches_hand_built_bytes() -> None:
    # The layout of the `ppp` crate's documented example: TCP6, ports 80 -> 443, ALPN, AUTHORITY.
    expected = (SIG + b"\x21\x21\x00\x2d" + b"\xff" * 16 + b"\xff" * 15 + b"\xf1"
                + b"\x00\x50" + b"\x01\xbb" + b"\x01\x00\x01\x05" + b"\x02\x00\x02\x05\x05")
    src = ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 80)
    dst = ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff1", 443)
    assert encode_v2(src, dst, alpn=b"\x05", authority="\x05\x05") == expected


def test_v2_local_has_no_addresses() -> None:
    assert encode_v2(None, None, local=True) == SIG + b"\x20\x00\x00\x00"
    with_tlv = encode_v2(None, None, local=True, authority="example.test")
    assert with_tlv == SIG + b"\x20\x00\x00\x0f" + tlv(TLV_AUTHORITY, b"example.test")
    header = parse(with_tlv)
    assert isinstance(header, ProxyHeader)
    assert (header.command, header.src, header.authority) == ("local", None, "example.test")


def test_v4_mapped_addresses_become_tcp4() -> None:
    assert encode_v1(("::ffff:203.0.113.7", 5000), ("192.0.2.10", 5222)) == \
        b"PROXY TCP4 203.0.113.7 192.0.2.10 5000 5222\r\n"
    assert encode_v2(("::ffff:203.0.113.7", 5000), ("192.0.2.10", 5222))[13] == 0x11


def test_mixed_families_that_cannot_be_unmapped_go_out_as_tcp6() -> None:
    assert encode_v1(("2001:db8::1", 5000), ("192.0.2.10", 5222)) == \
        b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.10 5000 5222\r\n"
    header = parse(encode_v2(("2001:db8::1", 5000), ("192.0.2.10", 5222)))
    assert isinstance(header, ProxyHeader)
    assert header.family == "tcp6" and header.dst == ("::ffff:192.0.2.10", 5222)


def test_v6_zone_is_dropped() -> None:
    assert encode_v1(("fe80::1%eth0", 1), ("fe80::2", 2)) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"


@pytest.mark.parametrize("src,dst", [
    (("example.test", 1), ("192.0.2.1", 2)),
    (("192.0.2.1", 65536), ("192.0.2.1", 2)),
    (("192.0.2.1", -1), ("192.0.2.1", 2)),
])
def test_writers_refuse_bad_addresses(src: tuple[str, int], dst: tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        encode_v1(src, dst)
    with pytest.raises(ValueError):
        encode_v2(src, dst)


def test_v2_writer_limits() -> None:
    with pytest.raises(ValueError):
        encode_v2(None, ("192.0.2.1", 2))
    with pytest.raises(ValueError):
        encode_v2(("192.0.2.1", 1), ("192.0.2.1", 2), authority="a" * 256)
    with pytest.raises(ValueError):
        encode_v2(("192.0.2.1", 1), ("192.0.2.1", 2), alpn=b"x" * 0x10000)


# --------------------------------------------------------------------------- reader: good input


def test_reader_v1_spec_example_with_the_stream_behind_it() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    header = parse(line + b"GET / HTTP/1.1\r\n")
    assert header == ProxyHeader(1, "proxy", "tcp4", ("192.168.0.1", 56324),
                                 ("192.168.0.11", 443), {}, len(line), b"GET / HTTP/1.1\r\n")


def test_reader_v1_tcp6_and_unknown() -> None:
    header = parse(b"PROXY TCP6 2001:DB8::1 2001:db8::2 0 5222\r\n<stream")
    assert isinstance(header, ProxyHeader)
    assert header.src == ("2001:db8::1", 0) and header.dst == ("2001:db8::2", 5222)
    assert header.rest == b"<stream"
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN whatever the sender put here\r\n"):
        header = parse(line)
        assert isinstance(header, ProxyHeader)
        assert (header.family, header.src, header.dst, header.consumed) == \
            ("unspec", None, None, len(line))


def test_reader_v2_tcp4_hand_built() -> None:
    data = SIG + b"\x21\x11\x00\x0c" + V4_BODY + b"\x16\x03\x01"
    header = parse(data)
    assert header == ProxyHeader(2, "proxy", "tcp4", ("192.168.0.1", 56324),
                                 ("192.168.0.11", 443), {}, 28, b"\x16\x03\x01")


def test_reader_v2_unspec_and_unix_fall_back_to_the_socket_peer() -> None:
    header = parse(v2(0x21, 0x00, b""))
    assert isinstance(header, ProxyHeader)
    assert (header.command, header.family, header.src) == ("proxy", "unspec", None)
    header = parse(v2(0x21, 0x31, b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")))
    assert isinstance(header, ProxyHeader)
    assert (header.family, header.src, header.dst, header.consumed) == ("unix", None, None, 232)


def test_reader_v2_local_skips_whatever_address_block_it_has() -> None:
    for data in (v2(0x20, 0x00, b""), v2(0x20, 0x11, V4_BODY), v2(0x20, 0x11, b""),
                 v2(0x20, 0x12, V4_BODY)):
        header = parse(data + b"x")
        assert isinstance(header, ProxyHeader), data
        assert (header.command, header.family, header.src, header.rest) == \
            ("local", "unspec", None, b"x")
    header = parse(v2(0x20, 0x11, V4_BODY + tlv(TLV_ALPN, b"xmpp-server")))
    assert isinstance(header, ProxyHeader) and header.alpn == b"xmpp-server"


def test_reader_v2_tlvs_noop_dropped_unknown_kept() -> None:
    body = V4_BODY + tlv(TLV_NOOP, b"") + tlv(0xE0, b"custom") + tlv(TLV_NOOP, b"pad")
    header = parse(v2(0x21, 0x11, body))
    assert isinstance(header, ProxyHeader)
    assert header.tlvs == {0xE0: b"custom"}
    assert header.alpn is None and header.authority is None


def test_reader_v2_checks_a_crc32c_tlv() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    zeroed = v2(0x21, 0x11, V4_BODY + tlv(TLV_CRC32C, b"\0\0\0\0"))
    good = zeroed[:-4] + crc32c(zeroed).to_bytes(4, "big")
    header = parse(good)
    assert isinstance(header, ProxyHeader) and TLV_CRC32C in header.tlvs
    bad = good[:-1] + bytes((good[-1] ^ 1,))
    assert error(bad) == "PROXY v2: CRC32c mismatch"
    assert "4 expected" in error(v2(0x21, 0x11, V4_BODY + tlv(TLV_CRC32C, b"\0\0\0")))


def test_byte_by_byte_needs_every_header_byte_then_answers() -> None:
    for data in (encode_v1(("203.0.113.7", 5000), ("192.0.2.10", 5222)),
                 encode_v2(("2001:db8::7", 5000), ("2001:db8::10", 5223),
                           alpn=b"xmpp-client", authority="example.test"),
                 b"PROXY UNKNOWN\r\n"):
        events = byte_by_byte(data + b"<stream:stream>")
        assert events[:-1] == [NEED_MORE] * (len(data) - 1)
        last = events[-1]
        assert isinstance(last, ProxyHeader)
        assert last.consumed == len(data) and last.rest == b""
        assert last == parse(data)


def _fields(header: ProxyEvent) -> dict[str, object]:
    assert isinstance(header, ProxyHeader)
    return {name: getattr(header, name) for name in header.__slots__}


# --------------------------------------------------------------------------- reader: bad input


def test_garbage_is_refused_at_the_first_byte() -> None:
    for data in (b"<", b"\x16", b"G", b"\x00"):
        assert "not a PROXY header" in error(data)
    assert byte_by_byte(b"GET / HTTP/1.1\r\n") == [byte_by_byte(b"G")[0]]


def test_v1_prefix_mismatch_is_refused_as_soon_as_visible() -> None:
    events = byte_by_byte(b"PROXZ TCP4")
    assert len(events) == 5 and isinstance(events[-1], ProxyError)
    events = byte_by_byte(b"PROXY TCP5 1.2.3.4")
    assert len(events) == 10 and "unknown protocol" in events[-1].reason  # type: ignore[union-attr]
    assert "unknown protocol" in error(b"PROXY UNKNOWNX\r\n")
    assert "unknown protocol" in error(b"PROXY tcp4 ")


@pytest.mark.parametrize("line,reason", [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR not followed by LF"),
    (b"PROXY UNKNOWN\r\r\n", "CR not followed by LF"),
    (b"PROXY TCP4 1.2.3.x", "unexpected byte b'x'"),
    (b"PROXY TCP6 fe80::1%eth0", "unexpected byte b'%'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", "too many fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "3 fields after the protocol"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1\r\n", "is not an IPv4 address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "b'01.2.3.4' is not an IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 2001:db8::1 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n", "b'1.2.3.4' is not an IPv6 address"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "b'080' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "b'65536' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "b'' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[:-2] + b"\n\r", "bare LF"),
])
def test_v1_errors(line: bytes, reason: str) -> None:
    assert reason in error(line)
    events = byte_by_byte(line)
    assert isinstance(events[-1], ProxyError) and reason in events[-1].reason


def test_v1_line_limit_is_107_bytes_including_crlf() -> None:
    full = "ffff:" * 7 + "ffff"
    longest = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(longest) == V1_MAX_BYTES
    assert isinstance(parse(longest), ProxyHeader)
    too_long = longest[:-2] + b"5\r\n"
    assert byte_by_byte(too_long)[-1] == ProxyError(f"PROXY v1: no CRLF within {V1_MAX_BYTES} bytes")
    assert len(byte_by_byte(too_long)) == V1_MAX_BYTES  # decided at the 107th byte, not later
    assert parse(too_long[:106]) is NEED_MORE
    assert isinstance(parse(b"PROXY UNKNOWN " + b"a" * 500), ProxyError)


@pytest.mark.parametrize("data,reason", [
    (SIG[:4] + b"X", "not a PROXY header"),
    (SIG + b"\x11", "version 1, only 2 exists"),
    (SIG + b"\x22", "unknown command 0x2"),
    (SIG + b"\x21\x41", "unknown family/transport 0x41"),
    (SIG + b"\x21\x13", "unknown family/transport 0x13"),
    (SIG + b"\x21\x12", "a UDP header on a TCP connection"),
    (SIG + b"\x21\x22", "a UDP header on a TCP connection"),
    (SIG + b"\x21\x11\x04\x01", "length 1025 exceeds the limit of 1024"),
    (SIG + b"\x21\x11\x00\x0b", "shorter than the 12-byte tcp4 address block"),
    (SIG + b"\x21\x21\x00\x0c", "shorter than the 36-byte tcp6 address block"),
    (v2(0x21, 0x11, V4_BODY + b"\x01\x00"), "truncated TLV header"),
    (v2(0x21, 0x11, V4_BODY + b"\x01\x00\x05abcd"), "TLV 0x01 runs past the header"),
    (v2(0x21, 0x11, V4_BODY + tlv(1, b"a") + tlv(1, b"b")), "TLV 0x01 given twice"),
    (v2(0x21, 0x11, V4_BODY + tlv(TLV_AUTHORITY, b"a" * 256)), "AUTHORITY TLV of 256 bytes"),
    (v2(0x21, 0x11, V4_BODY + tlv(TLV_AUTHORITY, b"\xff")), "AUTHORITY TLV is not UTF-8"),
])
def test_v2_errors(data: bytes, reason: str) -> None:
    assert reason in error(data)
    events = byte_by_byte(data)
    assert isinstance(events[-1], ProxyError) and reason in events[-1].reason
    assert len(events) == len(data)  # refused at the byte that shows the fault


def test_v2_length_limit_is_configurable() -> None:
    body = V4_BODY + tlv(0xE0, b"x" * 2000)
    assert "exceeds the limit" in error(v2(0x21, 0x11, body))
    assert isinstance(parse(v2(0x21, 0x11, body), max_v2_length=4096), ProxyHeader)
    with pytest.raises(ValueError):
        ProxyHeaderReader(max_v2_length=100)


def test_reader_buffers_no_more_than_the_header_bound() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(SIG + b"\x21\x11\x04\x00" + b"\0" * 1000) is NEED_MORE
    assert reader.buffered == 1016
    # 24 more bytes complete the 1040-byte header: zeros read as empty TLVs of type 0, twice
    assert reader.feed(b"\0" * 24 + b"stream") == ProxyError("PROXY v2: TLV 0x00 given twice")


def test_reader_lifecycle() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"") is NEED_MORE
    assert reader.eof() == ProxyError("connection closed before any PROXY header byte")
    assert reader.feed(b"PROXY TC") is NEED_MORE
    assert reader.eof() == ProxyError("connection closed after 8 bytes, inside the PROXY header")
    assert isinstance(reader.feed(b"P4 1.2.3.4 5.6.7.8 1 2\r\n"), ProxyHeader)
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


# --------------------------------------------------------------------------- properties

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
same_family = st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6))
trailing = st.binary(max_size=40)
splits = st.lists(st.integers(1, 20), max_size=30)


def _same_ip(a: str, b: str) -> bool:
    ip_a, ip_b = ipaddress.ip_address(a), ipaddress.ip_address(b)
    if isinstance(ip_a, ipaddress.IPv6Address) and ip_a.ipv4_mapped:
        ip_a = ip_a.ipv4_mapped
    if isinstance(ip_b, ipaddress.IPv6Address) and ip_b.ipv4_mapped:
        ip_b = ip_b.ipv4_mapped
    return ip_a == ip_b


@given(same_family, ports, ports, trailing, splits)
def test_v1_round_trip_in_any_split(ips: tuple[str, str], sport: int, dport: int,
                                    rest: bytes, sizes: list[int]) -> None:
    data = encode_v1((ips[0], sport), (ips[1], dport))
    assert len(data) <= V1_MAX_BYTES
    event, fed = feed_chunks(data + rest, sizes)
    assert isinstance(event, ProxyHeader)
    assert event.version == 1 and event.consumed == len(data)
    assert event.src is not None and event.dst is not None
    assert _same_ip(event.src[0], ips[0]) and _same_ip(event.dst[0], ips[1])
    assert (event.src[1], event.dst[1]) == (sport, dport)
    assert event.rest + (data + rest)[fed:] == rest


@given(same_family, ports, ports, st.none() | st.binary(max_size=300),
       st.none() | st.text(max_size=60).filter(lambda t: len(t.encode()) <= 255),
       trailing, splits)
def test_v2_round_trip_in_any_split(ips: tuple[str, str], sport: int, dport: int,
                                    alpn: bytes | None, authority: str | None,
                                    rest: bytes, sizes: list[int]) -> None:
    data = encode_v2((ips[0], sport), (ips[1], dport), alpn=alpn, authority=authority)
    event, fed = feed_chunks(data + rest, sizes)
    assert isinstance(event, ProxyHeader)
    assert (event.version, event.command, event.consumed) == (2, "proxy", len(data))
    assert event.src is not None and event.dst is not None
    assert ipaddress.ip_address(event.src[0]) == ipaddress.ip_address(ips[0])
    assert ipaddress.ip_address(event.dst[0]) == ipaddress.ip_address(ips[1])
    assert (event.src[1], event.dst[1]) == (sport, dport)
    assert (event.alpn, event.authority) == (alpn, authority)
    assert event.rest + (data + rest)[fed:] == rest


@given(st.tuples(st.one_of(ipv4, ipv6), st.one_of(ipv4, ipv6)), ports, ports)
def test_any_two_addresses_encode_to_a_header_that_reads_back(
        ips: tuple[str, str], sport: int, dport: int) -> None:
    for data in (encode_v1((ips[0], sport), (ips[1], dport)),
                 encode_v2((ips[0], sport), (ips[1], dport))):
        event = parse(data)
        assert isinstance(event, ProxyHeader) and event.family in ("tcp4", "tcp6")
        assert event.src is not None and event.dst is not None
        assert _same_ip(event.src[0], ips[0]) and _same_ip(event.dst[0], ips[1])


def _verdict(data: bytes, sizes: list[int]) -> object:
    """What the reader decides, normalised so that different splits can be compared."""
    event, fed = feed_chunks(data, sizes)
    if isinstance(event, ProxyHeader):
        return ("header", {**_fields(event), "rest": event.rest + data[fed:]})
    return event


prefixes = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN",
                            SIG, SIG + b"\x21\x11", SIG + b"\x21\x11\x00\x0c", SIG + b"\x20"])


@given(prefixes, st.binary(max_size=150), splits, splits)
def test_any_bytes_same_verdict_for_any_split(prefix: bytes, tail: bytes,
                                              a: list[int], b: list[int]) -> None:
    data = prefix + tail
    whole = _verdict(data, [])
    assert _verdict(data, a) == whole
    assert _verdict(data, b) == whole
    if isinstance(whole, ProxyError):  # an error is final: more bytes never change it
        assert _verdict(data + b"\r\n" + tail, a) == whole


@given(st.binary(min_size=1, max_size=120), splits)
def test_any_bytes_never_crash_and_buffer_is_bounded(data: bytes, sizes: list[int]) -> None:
    reader = ProxyHeaderReader()
    pos = 0
    for size in sizes or [len(data)]:
        if pos >= len(data):
            break
        event = reader.feed(data[pos:pos + size])
        pos += size
        if event is not NEED_MORE:
            return
        assert reader.buffered <= 16 + reader.max_v2_length


def test_a_large_v2_header_trickling_in_byte_by_byte_is_linear() -> None:
    """An upstream (or an attacker on an allowed network) sending 1-byte segments must not
    make the reader re-parse the whole buffer on each: that would be quadratic."""
    import time

    data = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), alpn=b"x" * 60_000)
    reader = ProxyHeaderReader(max_v2_length=65535)
    started = time.perf_counter()
    events = [reader.feed(data[i:i + 1]) for i in range(len(data))]
    assert time.perf_counter() - started < 2.0
    assert events[-2] is NEED_MORE and isinstance(events[-1], ProxyHeader)


# Hostile bytes where a header's text and fields go: byte order marks, NUL, non-ASCII
# (digits and letters that look like ASCII ones included), UTF-16, an XMPP header instead
# of PROXY. Inserted anywhere into a good header, or in front of it, every one gives the
# same verdict whole, byte by byte and in random splits.
HOSTILE = [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00", b"\x00\x00", b"\xc3\xa9",
           b"\xff", b"\x80", "١".encode(), "０".encode(), "PROXY ".encode("utf-16-le"),
           b"<?xml version='1.0'?><stream:stream>", b"\r", b"\n", b" ", b"%eth0", b"::"]
GOOD = [encode_v1(("192.0.2.1", 56324), ("192.0.2.11", 5222)),
        encode_v1(("2001:db8::1", 1), ("2001:db8::2", 5269)),
        encode_v2(("192.0.2.1", 56324), ("192.0.2.11", 5222), alpn=b"xmpp-client",
                  authority="example.test"),
        encode_v2(None, None, local=True), b"PROXY UNKNOWN\r\n"]


@st.composite
def hostile_headers(draw: st.DrawFn) -> bytes:
    header = draw(st.sampled_from(GOOD))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(header)))
        header = header[:at] + draw(st.sampled_from(HOSTILE)) + header[at:]
    return header + draw(st.sampled_from([b"", b"<stream:stream>", *HOSTILE]))


@given(hostile_headers(), splits, splits)
def test_hostile_bytes_same_verdict_for_any_split(data: bytes, a: list[int],
                                                  b: list[int]) -> None:
    whole = _verdict(data, [])
    assert _verdict(data, [1] * len(data)) == whole
    assert _verdict(data, a) == whole
    assert _verdict(data, b) == whole


@pytest.mark.parametrize("piece", [p for p in HOSTILE if p not in (b" ", b"::")])
def test_hostile_bytes_inside_a_v1_line_are_refused(piece: bytes) -> None:
    line = GOOD[0]
    for at in range(len(b"PROXY "), len(line) - 2):
        event = parse(line[:at] + piece + line[at:])
        assert isinstance(event, ProxyError), (at, event)
