"""PROXY protocol v1 and v2 (HAProxy's doc/proxy-protocol.txt): writers and a sans-IO reader.

Two jobs, two directions:

- A serverfarm with ``proxy_protocol = "v1" | "v2"`` tells its reals who the client really
  is. ``encode_v1`` / ``encode_v2`` build the header as one ``bytes`` object, so the I/O
  layer sends it in one write before any client byte (the spec asks for that, and a real
  that reads the header with one recv, as many do, would otherwise see half of it).
- A vserver with ``accept_proxy`` sits behind another balancer and must learn the client
  from *its* header. ``ProxyHeaderReader`` is fed whatever bytes arrived and answers "need
  more", the parsed header, or an error with a reason. Like the stream and ClientHello
  readers it owns no socket, clock or logger (the h11 style), so the asyncio Protocol that
  owns the connection feeds it, and the tests feed it byte by byte.

The reader is strict, because a receiver "must abort the connection as soon as possible"
on anything that does not match (spec §2.1), and because the header decides which source
address the per-IP limits and sourcehash see. It rejects garbage at the first byte that
cannot belong to a header instead of waiting for 107 bytes; it enforces the 107-byte v1
line, a configurable bound on the v2 length, canonical numbers (no leading zeros), CRLF
only, known v2 commands and families, and a CRC32c TLV when one is present. Its verdict
depends only on the byte stream, never on how TCP split it: every check looks at a fixed
stream position in stream order, and the whole buffered prefix is re-checked on each feed
(it is at most a few hundred bytes).

Interpretation choices, each following HAProxy where the spec leaves room:

- v1 ``UNKNOWN`` and the v2 ``LOCAL`` command yield a header with ``src = dst = None``:
  the caller then uses the socket's own peer, as the spec says. A v2 ``PROXY`` with the
  UNSPEC or AF_UNIX family does the same (the spec's "fall back to UNSPEC" rule). A v2
  DGRAM (UDP) transport is refused: on a TCP connection it can only be a sender's bug,
  and falling back would charge every client of the upstream balancer to its one address.
- v2 TLVs are returned as ``{type: value}``. NOOP (0x04) may repeat and is dropped; any
  other type given twice is an error, since the two values would contradict each other.
  AUTHORITY must be UTF-8 of at most 255 bytes (HAProxy's own limit).
- Addresses are reported as the header says them (``::ffff:192.0.2.1`` stays IPv6):
  normalising a v4-mapped address is the job of whoever keys on it (slb.limits does).

On the sending side, ejabberd (``use_proxy_protocol``) closes the connection on a v1
``UNKNOWN`` line and on a v2 PROXY with the UNSPEC family, so the writers never produce
them. When the two addresses differ in family, a v4-mapped IPv6 address is first turned
back into IPv4 (a dual-stack listener reports IPv4 clients that way); if they still differ,
the IPv4 one is written v4-mapped in a TCP6 header, which is what HAProxy does in both
versions. Only an address that is not an IP literal, or a port outside 0-65535, raises
``ValueError``.

Why not the PyPI package ``proxy-protocol`` (icgood, 0.11.x): it is built around asyncio
``StreamReader``; its v1 path reads "a line" with ``readline()`` (bounded only by the
stream's 64 KiB limit, not 107 bytes) and its v2 path asks for ``16 + length`` bytes for
any length up to 65535, so neither rejects garbage early nor bounds what a client can make
it buffer; a stream that ends inside the header comes back as an "unknown" result rather
than an error; and it pulls in ``typing_extensions`` and an SSL/DNSBL TLV model we do not
need. The gateway reads the header inside its own ``asyncio.Protocol`` before any
``StreamReader`` exists, so a sans-IO reader is what fits; it is about 300 lines here.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from xmppgw.addresses import unmapped

__all__ = [
    "NEED_MORE",
    "TLV_ALPN",
    "TLV_AUTHORITY",
    "TLV_CRC32C",
    "TLV_NOOP",
    "V1_MAX_BYTES",
    "V2_DEFAULT_MAX_LENGTH",
    "V2_SIGNATURE",
    "NeedMore",
    "ProxyError",
    "ProxyEvent",
    "ProxyHeader",
    "ProxyHeaderReader",
    "crc32c",
    "encode_v1",
    "encode_v2",
]

VERSIONS = ("v1", "v2")  # what a serverfarm's `proxy_protocol` may name
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
V1_MAX_BYTES = 107  # "PROXY UNKNOWN <v6> <v6> 65535 65535\r\n", the longest line (spec §2.1)
V2_DEFAULT_MAX_LENGTH = 1024  # addresses (at most 216) + TLVs; HAProxy's own TLVs fit easily
_V1_PREFIX = b"PROXY "
_V2_FIXED = 16  # signature, version/command, family/transport, 2-byte length

TLV_ALPN = 0x01
TLV_AUTHORITY = 0x02
TLV_CRC32C = 0x03
TLV_NOOP = 0x04
_AUTHORITY_MAX = 255

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
# family/transport byte -> (family name, address block length)
_V2_FAMILIES = {
    0x00: ("unspec", 0),
    0x11: ("tcp4", 12),
    0x12: ("udp4", 12),
    0x21: ("tcp6", 36),
    0x22: ("udp6", 36),
    0x31: ("unix", 216),
    0x32: ("unix", 216),
}

Addr = tuple[str, int]


# ---------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The bytes so far are a valid beginning of a header; feed more."""


NEED_MORE = NeedMore()


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete, valid header. ``src is None`` means: use the socket's peer address."""

    version: int
    """1 (text line) or 2 (binary)."""
    command: str
    """"proxy", or "local" (v2: the upstream's own connection, e.g. a health check)."""
    family: str
    """"tcp4", "tcp6", "unspec" (v1 UNKNOWN, v2 AF_UNSPEC) or "unix"."""
    src: Addr | None
    """The client's (address, port), or None when the header does not carry it."""
    dst: Addr | None
    """The address and port the client connected to at the upstream balancer."""
    tlvs: Mapping[int, bytes] = field(default_factory=dict)
    """v2 type-length-values, by type (NOOP dropped); empty for v1."""
    consumed: int = 0
    """Length of the header in bytes: where the client's own stream starts."""
    rest: bytes = b""
    """Bytes fed after the header: the beginning of the client's stream, to be sniffed."""

    @property
    def alpn(self) -> bytes | None:
        """The ALPN TLV (0x01): the protocol the upstream negotiated, if it said."""
        return self.tlvs.get(TLV_ALPN)

    @property
    def authority(self) -> str | None:
        """The AUTHORITY TLV (0x02): the SNI host name the upstream saw (checked UTF-8)."""
        value = self.tlvs.get(TLV_AUTHORITY)
        return None if value is None else value.decode("utf-8")


@dataclass(frozen=True, slots=True)
class ProxyError:
    """Not a valid header: close the connection (the spec says abort, and answer nothing)."""

    reason: str
    """Short text for the log; client bytes in it are escaped with ``repr``."""


ProxyEvent = NeedMore | ProxyHeader | ProxyError


# ---------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------


def encode_v1(src: Addr, dst: Addr) -> bytes:
    """``PROXY TCP4|TCP6 srcip dstip sport dport\\r\\n`` as one bytes object (one write).

    Never the UNKNOWN form: ejabberd closes on it. Mixed families are reconciled as the
    module docstring says; raises ValueError for a non-IP address or a bad port.
    """
    s_ip, d_ip = _same_family(_ip(src[0]), _ip(dst[0]))
    proto = b"TCP4" if s_ip.version == 4 else b"TCP6"
    return b"PROXY %s %s %s %d %d\r\n" % (
        proto, _text(s_ip).encode(), _text(d_ip).encode(), _port(src[1]), _port(dst[1]))


def encode_v2(src: Addr | None, dst: Addr | None, *, alpn: bytes | None = None,
              authority: str | None = None, local: bool = False) -> bytes:
    """The binary header as one bytes object: PROXY (or LOCAL), addresses, then TLVs.

    ``local=True`` is for the gateway's own connections (probes): command LOCAL with the
    UNSPEC family and no address block, as HAProxy sends for its health checks; src and dst
    are then ignored and may be None. TLVs: 0x01 ALPN (the protocol name, e.g.
    b"xmpp-client") and 0x02 AUTHORITY (the SNI or stream ``to`` domain).
    """
    if local:
        cmd, fam, addresses = _CMD_LOCAL, 0x00, b""
    else:
        if src is None or dst is None:
            raise ValueError("a PROXY command needs both src and dst (or local=True)")
        s_ip, d_ip = _same_family(_ip(src[0]), _ip(dst[0]))
        fam = 0x11 if s_ip.version == 4 else 0x21
        addresses = s_ip.packed + d_ip.packed + struct.pack(
            "!HH", _port(src[1]), _port(dst[1]))
        cmd = _CMD_PROXY
    tlvs = b""
    if alpn is not None:
        tlvs += _tlv(TLV_ALPN, bytes(alpn))
    if authority is not None:
        value = authority.encode("utf-8")
        if len(value) > _AUTHORITY_MAX:
            raise ValueError(f"authority is {len(value)} bytes; at most {_AUTHORITY_MAX}")
        tlvs += _tlv(TLV_AUTHORITY, value)
    body = addresses + tlvs
    if len(body) > 0xFFFF:
        raise ValueError("PROXY v2 header longer than 65535 bytes")
    return V2_SIGNATURE + bytes((0x20 | cmd, fam)) + struct.pack("!H", len(body)) + body


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV 0x{kind:02x} value longer than 65535 bytes")
    return struct.pack("!BH", kind, len(value)) + value


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP literal without any IPv6 zone (``%eth0`` has no place in a PROXY header)."""
    return ipaddress.ip_address(text.partition("%")[0])


def _text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text; a v4-mapped address as ``::ffff:192.0.2.1`` on every Python (3.13
    changed ``str()`` to that form, 3.11 says ``::ffff:c000:201``), so logs read the same."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def _port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{port!r} is not a port (0-65535)")
    return port


def _same_family(a: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 b: ipaddress.IPv4Address | ipaddress.IPv6Address
                 ) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address,
                            ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Both addresses in one family: unmap ::ffff:a.b.c.d first, else map IPv4 into IPv6."""
    if a.version == b.version:
        return a, b
    a, b = unmapped(a), unmapped(b)
    if a.version == b.version:
        return a, b
    return _mapped(a), _mapped(b)


def _mapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip


# ---------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------


class ProxyHeaderReader:
    """Feed the first bytes of an accepted connection; get NEED_MORE, a header or an error.

    Only for vservers configured to expect PROXY (``accept_proxy``): the spec forbids
    guessing whether a header is there. The caller checks the peer against the allowed
    networks before feeding, and applies its own timeout (ejabberd waits 10 s).
    """

    def __init__(self, max_v2_length: int = V2_DEFAULT_MAX_LENGTH) -> None:
        if not 216 <= max_v2_length <= 0xFFFF:
            raise ValueError("max_v2_length must be 216-65535 (an AF_UNIX block is 216)")
        self.max_v2_length = max_v2_length
        self._buf = bytearray()
        self._want = 0  # a v2 header's known total: no need to look again before it
        self._done: ProxyHeader | ProxyError | None = None

    def feed(self, data: bytes) -> ProxyEvent:
        """Add bytes; answer once the outcome is known. Feeding after it is a caller bug."""
        if self._done is not None:
            raise RuntimeError("the PROXY header is already decided; feed the stream reader")
        if not data:
            return NEED_MORE
        self._buf += data
        if len(self._buf) < self._want:
            return NEED_MORE  # a v2 body trickling in 1-byte segments costs O(1) per feed
        buf = bytes(self._buf)
        event = _parse(buf, self.max_v2_length)
        if isinstance(event, ProxyHeader | ProxyError):
            self._done = event
            self._buf = bytearray()
        elif buf[0] == V2_SIGNATURE[0] and len(buf) >= _V2_FIXED:
            self._want = _V2_FIXED + int.from_bytes(buf[14:16], "big")
        return event

    def eof(self) -> ProxyError:
        """The peer closed before the header was complete."""
        n = len(self._buf)
        return ProxyError(f"connection closed after {n} bytes, inside the PROXY header"
                          if n else "connection closed before any PROXY header byte")

    @property
    def buffered(self) -> int:
        """Bytes held while undecided: bounded by 107 (v1) or 16 + max_v2_length (v2)."""
        return len(self._buf)


def _parse(buf: bytes, max_v2_length: int) -> ProxyEvent:
    """The verdict on a buffer that starts at the connection's first byte."""
    if buf[0] == _V1_PREFIX[0]:
        return _parse_v1(buf)
    if buf[0] == V2_SIGNATURE[0]:
        return _parse_v2(buf, max_v2_length)
    return ProxyError(f"not a PROXY header: starts with {buf[:1]!r}")


def _prefix_error(buf: bytes, expected: bytes) -> ProxyError | None:
    """An error naming the bytes up to the first one that differs from `expected`, if any.

    Only bytes up to the fault go into the reason, so it reads the same however the stream
    was split."""
    for i, byte in enumerate(buf[:len(expected)]):
        if byte != expected[i]:
            return ProxyError(f"not a PROXY header: starts with {buf[:i + 1]!r}")
    return None


# --- v1 -----------------------------------------------------------------------------------

_V1_FAMILIES = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")
_V1_TCP_CHARS = frozenset(b"0123456789abcdefABCDEF.: ")


def _parse_v1(buf: bytes) -> ProxyEvent:
    mismatch = _prefix_error(buf, _V1_PREFIX)
    if mismatch:
        return mismatch
    if len(buf) <= len(_V1_PREFIX):
        return NEED_MORE
    family = _v1_family(buf)
    if isinstance(family, ProxyError | NeedMore):
        return family
    end = _v1_line_end(buf, family)
    if not isinstance(end, int):
        return end
    line = buf[:end]
    if family == b"UNKNOWN":
        return ProxyHeader(1, "proxy", "unspec", None, None, {}, end, buf[end:])
    return _v1_fields(line, family, buf[end:])


def _v1_family(buf: bytes) -> bytes | ProxyEvent:
    """Which of TCP4/TCP6/UNKNOWN the line names, as soon as its first bytes tell."""
    token = buf[len(_V1_PREFIX):len(_V1_PREFIX) + 7]
    longest = 0  # how many bytes of the token match some family: where the fault is
    for family in _V1_FAMILIES:
        n = min(len(token), len(family))
        if token[:n] == family[:n]:
            return family if len(token) >= len(family) else NEED_MORE
        longest = max(longest, next(i for i in range(n) if token[i] != family[i]))
    return ProxyError(f"PROXY v1: unknown protocol {token[:longest + 1]!r} "
                      "(TCP4, TCP6 or UNKNOWN)")


def _v1_line_end(buf: bytes, family: bytes) -> int | ProxyEvent:
    """Scan for CRLF within 107 bytes, refusing any byte that cannot be in the line."""
    start = len(_V1_PREFIX) + len(family)
    tcp = family != b"UNKNOWN"
    spaces = 0
    for i in range(start, min(len(buf), V1_MAX_BYTES)):
        byte = buf[i]
        if byte == 0x0D:
            if i + 1 >= V1_MAX_BYTES:
                break
            if i + 1 == len(buf):
                return NEED_MORE
            if buf[i + 1] != 0x0A:
                return ProxyError("PROXY v1: CR not followed by LF")
            return i + 2
        if byte == 0x0A:
            return ProxyError("PROXY v1: line ends with a bare LF (CRLF required)")
        if not tcp and i == start and byte != 0x20:
            return ProxyError(f"PROXY v1: unknown protocol {buf[6:i + 1]!r}")
        if tcp:
            if byte not in _V1_TCP_CHARS:
                return ProxyError(f"PROXY v1: unexpected byte {bytes((byte,))!r} at {i}")
            spaces += byte == 0x20
            if spaces > 3:
                return ProxyError("PROXY v1: too many fields")
    if len(buf) >= V1_MAX_BYTES:
        return ProxyError(f"PROXY v1: no CRLF within {V1_MAX_BYTES} bytes")
    return NEED_MORE


def _v1_fields(line: bytes, family: bytes, rest: bytes) -> ProxyEvent:
    fields = line[len(_V1_PREFIX) + len(family):-2].split(b" ")
    if len(fields) != 4:
        return ProxyError(f"PROXY v1: {len(fields)} fields after the protocol, 4 expected")
    version = 4 if family == b"TCP4 " else 6
    addrs = []
    for text in fields[:2]:
        ip = _v1_ip(text, version)
        if ip is None:
            return ProxyError(f"PROXY v1: {text!r} is not an IPv{version} address")
        addrs.append(ip)
    ports = []
    for text in fields[2:]:
        port = _v1_port(text)
        if port is None:
            return ProxyError(f"PROXY v1: {text!r} is not a port (0-65535, no leading zero)")
        ports.append(port)
    return ProxyHeader(1, "proxy", f"tcp{version}", (addrs[0], ports[0]),
                       (addrs[1], ports[1]), {}, len(line), rest)


def _v1_ip(text: bytes, version: int) -> str | None:
    """Canonical text of the address, or None (ipaddress refuses leading zeros in IPv4)."""
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        return None
    return _text(ip) if ip.version == version else None


def _v1_port(text: bytes) -> int | None:
    if not text.isdigit() or (len(text) > 1 and text[0] == 0x30) or len(text) > 5:
        return None
    port = int(text)
    return port if port <= 65535 else None


# --- v2 -----------------------------------------------------------------------------------


def _parse_v2(buf: bytes, max_length: int) -> ProxyEvent:
    mismatch = _prefix_error(buf, V2_SIGNATURE)
    if mismatch:
        return mismatch
    if len(buf) <= len(V2_SIGNATURE):
        return NEED_MORE
    ver_cmd = buf[12]
    if ver_cmd >> 4 != 2:
        return ProxyError(f"PROXY v2: version {ver_cmd >> 4}, only 2 exists")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        return ProxyError(f"PROXY v2: unknown command 0x{command:x}")
    if len(buf) < 14:
        return NEED_MORE
    fam = buf[13]
    if fam not in _V2_FAMILIES:
        return ProxyError(f"PROXY v2: unknown family/transport 0x{fam:02x}")
    family, addr_len = _V2_FAMILIES[fam]
    if command == _CMD_PROXY and family in ("udp4", "udp6"):
        return ProxyError("PROXY v2: a UDP header on a TCP connection")
    if len(buf) < _V2_FIXED:
        return NEED_MORE
    (length,) = struct.unpack_from("!H", buf, 14)
    if length > max_length:
        return ProxyError(f"PROXY v2: length {length} exceeds the limit of {max_length}")
    if length < addr_len:
        if command == _CMD_PROXY:
            return ProxyError(f"PROXY v2: length {length} is shorter than the {addr_len}-byte "
                              f"{family} address block")
        addr_len = 0  # LOCAL ignores the family; a sender that sent no addresses is fine
    total = _V2_FIXED + length
    if len(buf) < total:
        return NEED_MORE
    return _v2_body(buf, command, family, addr_len, total)


def _v2_body(buf: bytes, command: int, family: str, addr_len: int, total: int) -> ProxyEvent:
    tlvs = _v2_tlvs(buf, _V2_FIXED + addr_len, total)
    if isinstance(tlvs, ProxyError):
        return tlvs
    src = dst = None
    if command == _CMD_LOCAL:
        family = "unspec"  # the spec: LOCAL discards the address block, family included
    elif family in ("tcp4", "tcp6"):
        size = 4 if family == "tcp4" else 16
        block = buf[_V2_FIXED:_V2_FIXED + addr_len]
        sport, dport = struct.unpack_from("!HH", block, 2 * size)
        src = (_text(ipaddress.ip_address(block[:size])), sport)
        dst = (_text(ipaddress.ip_address(block[size:2 * size])), dport)
    return ProxyHeader(2, "proxy" if command == _CMD_PROXY else "local", family, src, dst,
                       tlvs, total, buf[total:])


def _v2_tlvs(buf: bytes, offset: int, total: int) -> dict[int, bytes] | ProxyError:
    tlvs: dict[int, bytes] = {}
    crc_at = None
    while offset < total:
        if offset + 3 > total:
            return ProxyError("PROXY v2: truncated TLV header")
        kind, size = struct.unpack_from("!BH", buf, offset)
        start, offset = offset + 3, offset + 3 + size
        if offset > total:
            return ProxyError(f"PROXY v2: TLV 0x{kind:02x} runs past the header")
        if kind == TLV_NOOP:
            continue
        if kind in tlvs:
            return ProxyError(f"PROXY v2: TLV 0x{kind:02x} given twice")
        value = buf[start:offset]
        problem = _tlv_problem(kind, value)
        if problem:
            return ProxyError(f"PROXY v2: {problem}")
        if kind == TLV_CRC32C:
            crc_at = start
        tlvs[kind] = value
    if crc_at is not None:
        zeroed = buf[:crc_at] + b"\0\0\0\0" + buf[crc_at + 4:total]
        if crc32c(zeroed) != int.from_bytes(tlvs[TLV_CRC32C], "big"):
            return ProxyError("PROXY v2: CRC32c mismatch")
    return tlvs


def _tlv_problem(kind: int, value: bytes) -> str | None:
    if kind == TLV_CRC32C and len(value) != 4:
        return f"CRC32c TLV of {len(value)} bytes, 4 expected"
    if kind == TLV_AUTHORITY:
        if len(value) > _AUTHORITY_MAX:
            return f"AUTHORITY TLV of {len(value)} bytes, at most {_AUTHORITY_MAX}"
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return "AUTHORITY TLV is not UTF-8"
    return None


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, RFC 4960 App. B), which the v2 CRC32C TLV carries.

    Table-driven in pure Python: a PROXY header is at most a few hundred bytes, so this
    costs microseconds and spares a C dependency.
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
