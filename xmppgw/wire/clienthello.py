"""Sans-IO reader for the TLS ClientHello that opens a XEP-0368 direct-TLS connection.

On the direct-TLS port the gateway never terminates TLS: it only needs the server_name
(RFC 6066 §3) to pick the XMPP domain's pool and the ALPN protocol (RFC 7301, ``xmpp-client``
or ``xmpp-server``) to tell c2s from s2s, after which the I/O layer replays the very bytes it
buffered to a backend and relays opaquely.  So this module only *observes* bytes: it is fed
whatever arrived, keeps the minimum state to reassemble the handshake message, and returns one
event once the outcome is decided.  It owns no socket, clock or logger (the h11 style), which
is what lets the tests drive it byte by byte and with Hypothesis.

The outcome depends only on the byte stream, never on how TCP split it: every check runs at
a fixed stream position (a record header byte, the handshake header, the end of the
ClientHello) in stream order, so the first check that fails is the same for any chunking.
Because each record header is checked against ``max_bytes`` when it is read, the reader never
needs to see a byte past ``max_bytes``, and its memory stays bounded by it.

Libraries considered: dpkt (``dpkt.ssl``) parses complete records and a ClientHello handed
to it whole; it neither reassembles a handshake message fragmented over several records nor
checks vector bounds or duplicate extensions, and its last release is from 2022.  tlslite-ng
is a full TLS stack: it has a ``Defragmenter`` and a strict ``ClientHello.parse``, but its
record layer is bound to a socket, its parse failures are a bare ``DecodeError`` (a
``SyntaxError``) with no alert, and it would bring a whole LGPL TLS stack into the hot path
for about 200 lines of work.
scapy's TLS layers (a 2.7 MB wheel, GPL-2.0) dissect whole packets and are not meant for
incremental use.  None fits the incremental, alert-mapped, bounded reader needed here, so
this one is hand-written and tested against the ClientHellos of Python's ``ssl`` module and
``openssl s_client``.

Deliberately not supported: the SSL 2.0-compatible CLIENT-HELLO (RFC 8446 Appendix D.5) and
other pre-TLS framings.  They carry no SNI, so they could not be routed anyway.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = [
    "DECODE_ERROR",
    "HANDSHAKE_FAILURE",
    "ILLEGAL_PARAMETER",
    "INTERNAL_ERROR",
    "NO_APPLICATION_PROTOCOL",
    "PROTOCOL_VERSION",
    "RECORD_OVERFLOW",
    "UNEXPECTED_MESSAGE",
    "UNRECOGNIZED_NAME",
    "ClientHello",
    "ClientHelloEvent",
    "ClientHelloReader",
    "HelloError",
    "alert_record",
]

# TLS AlertDescription values (RFC 8446 §6.2) that the gateway may send before it closes.
UNEXPECTED_MESSAGE = 10
RECORD_OVERFLOW = 22
HANDSHAKE_FAILURE = 40
ILLEGAL_PARAMETER = 47
DECODE_ERROR = 50
PROTOCOL_VERSION = 70
INTERNAL_ERROR = 80
UNRECOGNIZED_NAME = 112
NO_APPLICATION_PROTOCOL = 120  # RFC 7301 §3.2: none of the client's ALPN protocols is served

_CONTENT_ALERT = 21
_CONTENT_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_RECORD_HEADER_LEN = 5
_HANDSHAKE_HEADER_LEN = 4
_MAX_FRAGMENT = 2**14  # RFC 8446 §5.1 / RFC 5246 §6.2.1: TLSPlaintext.length <= 2^14
_WIRE_VERSION = 0x0303  # the record version TLS 1.3 says to put on everything but a ClientHello

_EXT_SERVER_NAME = 0  # RFC 6066 §3
_EXT_ALPN = 16  # RFC 7301 §3.1
_EXT_SUPPORTED_VERSIONS = 43  # RFC 8446 §4.2.1
_NAME_TYPE_HOST_NAME = 0

_RANDOM_LEN = 32
_MAX_SESSION_ID = 32
_MAX_HOST_NAME = 253  # longest DNS name in text form without the trailing dot
_MAX_LABEL = 63
_LDH = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the router needs from a well-formed ClientHello; the raw bytes stay with the I/O layer."""

    sni: str | None
    """host_name from server_name (RFC 6066 §3), lower-cased ASCII without a trailing dot."""
    alpn: tuple[str, ...]
    """ALPN protocol names (RFC 7301) in the client's order of preference; () if absent."""
    legacy_version: int
    """ClientHello.legacy_version, e.g. 0x0303 (frozen there by TLS 1.3, RFC 8446 §4.1.2)."""
    supported_versions: tuple[int, ...]
    """Versions from supported_versions (RFC 8446 §4.2.1); () if absent (TLS 1.2 and older)."""
    length: int
    """Stream bytes through the end of the record that completed the ClientHello."""
    sni_ip: str | None = None
    """An IP address sent as host_name (RFC 6066 §3 forbids literal addresses there, but
    clients do it when given an address to connect to): it names no domain, so `sni` is
    None, as for a ClientHello without server_name; the address is kept for the log."""


@dataclass(frozen=True, slots=True)
class HelloError:
    """The stream cannot be a ClientHello we route; the I/O layer may send ``alert_record(alert)``."""

    alert: int
    """TLS AlertDescription (RFC 8446 §6.2) fitting the fault."""
    reason: str
    """Short text for the log; any client bytes in it are escaped with ``repr``."""


ClientHelloEvent = ClientHello | HelloError


def alert_record(description: int, level: int = 2) -> bytes:
    """A complete plaintext alert record, so the client learns why before the close.

    RFC 8446 §6: an alert is level (2 = fatal) + description in a record of content type 21.
    Record version 0x0303 is what RFC 8446 §5.1 asks for on every record but a ClientHello.
    """
    if not (0 <= description <= 255 and 0 <= level <= 255):
        raise ValueError("alert level and description are single bytes")
    header = bytes([_CONTENT_ALERT]) + _WIRE_VERSION.to_bytes(2, "big") + (2).to_bytes(2, "big")
    return header + bytes([level, description])


class _Reject(Exception):
    """Internal: unwinds the parser to the single place that turns it into a HelloError."""

    def __init__(self, alert: int, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert
        self.reason = reason


def _decode_error(reason: str) -> _Reject:
    # RFC 8446 §6.2 decode_error: "some field was out of the specified range or the length
    # of the message was incorrect" -- the alert for every grammar violation below.
    return _Reject(DECODE_ERROR, reason)


def _too_large(max_bytes: int) -> _Reject:
    # Our own resource limit, not a protocol rule; decode_error (as agreed for the project)
    # with a reason that makes the cause obvious in the log.
    return _Reject(DECODE_ERROR, f"ClientHello larger than max_bytes ({max_bytes})")


class ClientHelloReader:
    """Feed it the first bytes of a direct-TLS connection; it says once what they are.

    ``feed`` returns ``[]`` while more bytes are needed, a list of exactly one event once the
    outcome is decided, and ``[]`` for ever after (later bytes are not even looked at).
    """

    __slots__ = (
        "_consumed",
        "_done",
        "_first_record",
        "_handshake",
        "_header",
        "_max_bytes",
        "_record_left",
    )

    def __init__(self, max_bytes: int = 16384) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self._max_bytes = max_bytes
        self._consumed = 0  # stream bytes looked at so far
        self._header = bytearray()  # bytes of a record header still being read (< 5)
        self._record_left = 0  # fragment bytes of the current record not yet seen
        self._first_record = True
        self._handshake = bytearray()  # the handshake message reassembled so far
        self._done = False

    @property
    def buffered(self) -> int:
        """Bytes held while undecided (a record header, the handshake so far): at most
        ``max_bytes``; none once the outcome is decided."""
        return len(self._header) + len(self._handshake)

    def feed(self, data: bytes) -> list[ClientHelloEvent]:
        """Consume ``data``; see the class docstring for what is returned when."""
        if self._done or not data:
            return []
        try:
            event: ClientHelloEvent | None = self._consume(memoryview(data))
        except _Reject as exc:
            event = HelloError(exc.alert, exc.reason)
        if event is None:
            return []
        self._done = True
        # Nothing more will be read: drop the buffers early.
        self._header, self._handshake = bytearray(), bytearray()
        return [event]

    def _consume(self, data: memoryview) -> ClientHello | None:
        pos, end = 0, len(data)
        while pos < end:
            if self._record_left == 0:
                take = min(_RECORD_HEADER_LEN - len(self._header), end - pos)
                self._header += data[pos:pos + take]
                self._consumed += take
                pos += take
                self._check_record_header()
            else:
                # Stop at each handshake decision point so that checks run at the same
                # stream offset whatever the chunking.
                take = min(self._record_left, end - pos, self._handshake_wanted())
                self._handshake += data[pos:pos + take]
                self._record_left -= take
                self._consumed += take
                pos += take
                hello = self._advance_handshake()
                if hello is not None:
                    return hello
        return None

    def _check_record_header(self) -> None:
        """Check the header bytes read so far, each as soon as it has arrived.

        RFC 8446 §5.1 / RFC 5246 §6.2.1: TLSPlaintext is type(1) version(2) length(2).
        """
        header = self._header
        if header[0] != _CONTENT_HANDSHAKE:
            if self._first_record:
                # A plain XMPP client on 5223 starts with '<' (0x3c): tell it at once.
                raise _decode_error("not a TLS handshake record")
            # RFC 8446 §5.1: handshake messages MUST NOT be interleaved with other types.
            raise _Reject(UNEXPECTED_MESSAGE,
                          f"record of content type {header[0]} inside the ClientHello")
        if len(header) >= 2 and header[1] != 3:
            # legacy_record_version is otherwise ignored (RFC 8446 §5.1), but every SSL 3.0+
            # record has major 3: anything else is not TLS framing at all.
            raise _decode_error(f"record version major byte {header[1]} is not 3")
        if len(header) < _RECORD_HEADER_LEN:
            return
        length = int.from_bytes(header[3:5], "big")
        if length > _MAX_FRAGMENT:
            # RFC 8446 §5.1: a record over 2^14 MUST be answered with record_overflow.
            raise _Reject(RECORD_OVERFLOW, f"record length {length} exceeds 2^14")
        if length == 0:
            # RFC 8446 §5.1: zero-length fragments of Handshake type MUST NOT be sent.
            raise _decode_error("zero-length handshake record")
        if self._consumed + length > self._max_bytes:
            raise _too_large(self._max_bytes)
        self._check_reachable()
        self._header.clear()
        self._record_left = length
        self._first_record = False

    def _handshake_wanted(self) -> int:
        """Handshake bytes still to read before the next decision point."""
        have = len(self._handshake)
        if have < _HANDSHAKE_HEADER_LEN:
            return _HANDSHAKE_HEADER_LEN - have
        return self._handshake_total() - have

    def _handshake_total(self) -> int:
        # RFC 8446 §4: Handshake is msg_type(1) + uint24 length + body.
        return _HANDSHAKE_HEADER_LEN + int.from_bytes(self._handshake[1:4], "big")

    def _check_reachable(self) -> None:
        """Fail early when the announced handshake length cannot end within max_bytes.

        Only evaluated once the handshake header is complete and at record headers, so it
        runs at fixed stream offsets; the stream still needs at least the missing handshake
        bytes, whatever records carry them.
        """
        if len(self._handshake) < _HANDSHAKE_HEADER_LEN:
            return
        missing = self._handshake_total() - len(self._handshake)
        if self._consumed + missing > self._max_bytes:
            raise _too_large(self._max_bytes)

    def _advance_handshake(self) -> ClientHello | None:
        handshake = self._handshake
        if handshake[0] != _HANDSHAKE_CLIENT_HELLO:
            # RFC 8446 §4.1.2: a client's first message is its ClientHello.
            raise _Reject(UNEXPECTED_MESSAGE,
                          f"handshake type {handshake[0]} where client_hello (1) was expected")
        if len(handshake) < _HANDSHAKE_HEADER_LEN:
            return None
        if len(handshake) == _HANDSHAKE_HEADER_LEN:
            self._check_reachable()
        if len(handshake) < self._handshake_total():
            return None
        if self._record_left:
            # RFC 8446 §5.1: a ClientHello can precede a key change (0-RTT), so it MUST end
            # on a record boundary; receivers answer a violation with unexpected_message.
            raise _Reject(UNEXPECTED_MESSAGE, "ClientHello does not end at a record boundary")
        return _parse_client_hello(bytes(handshake[_HANDSHAKE_HEADER_LEN:]), self._consumed)


class _Cursor:
    """Bounds-checked reader over one TLS vector; every overrun is a decode_error."""

    __slots__ = ("_buf", "_pos", "_what")

    def __init__(self, buf: bytes, what: str) -> None:
        self._buf = buf
        self._pos = 0
        self._what = what

    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def take(self, count: int, what: str) -> bytes:
        if count > self.remaining():
            raise _decode_error(f"{what} truncated in {self._what}")
        chunk = self._buf[self._pos:self._pos + count]
        self._pos += count
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, low: int, high: int, what: str) -> _Cursor:
        """RFC 8446 §3.4: a length-prefixed vector whose length must lie in [low, high]."""
        length = self.uint(size, f"{what} length")
        if not low <= length <= high:
            raise _decode_error(f"{what} length {length} outside {low}..{high}")
        return _Cursor(self.take(length, what), what)

    def take_rest(self) -> bytes:
        return self.take(self.remaining(), "data")

    def expect_end(self) -> None:
        if self.remaining():
            raise _decode_error(f"{self.remaining()} trailing bytes in {self._what}")


def _parse_client_hello(body: bytes, length: int) -> ClientHello:
    """RFC 8446 §4.1.2 (same wire layout as RFC 5246 §7.4.1.2), parsed strictly."""
    cur = _Cursor(body, "ClientHello")
    legacy_version = cur.uint(2, "legacy_version")
    if legacy_version >> 8 != 3:
        # Not SSL 3.0 or any TLS: nothing a backend could negotiate (RFC 8446 Appendix D).
        raise _Reject(PROTOCOL_VERSION, f"legacy_version 0x{legacy_version:04x} is not SSL3/TLS")
    cur.take(_RANDOM_LEN, "random")
    cur.vector(1, 0, _MAX_SESSION_ID, "legacy_session_id")
    suites = cur.vector(2, 2, 2**16 - 2, "cipher_suites")
    if suites.remaining() % 2:
        raise _decode_error("cipher_suites length is odd")
    cur.vector(1, 1, 2**8 - 1, "legacy_compression_methods")
    extensions: dict[int, bytes] = {}
    if cur.remaining():
        # Extensions may be absent altogether (SSL 3.0 / early TLS 1.0 clients; RFC 5246
        # §7.4.1.2).  An empty block is legal TLS 1.2 (extensions<0..2^16-1>), so only the
        # TLS 1.3 lower bound of 8 is not enforced: the backend judges the version.
        extensions = _parse_extensions(cur.vector(2, 0, 2**16 - 1, "extensions"))
        cur.expect_end()
    sni, sni_ip = (_parse_server_name(extensions[_EXT_SERVER_NAME])
                   if _EXT_SERVER_NAME in extensions else (None, None))
    return ClientHello(
        sni=sni,
        sni_ip=sni_ip,
        alpn=_parse_alpn(extensions[_EXT_ALPN]) if _EXT_ALPN in extensions else (),
        legacy_version=legacy_version,
        supported_versions=_parse_supported_versions(extensions[_EXT_SUPPORTED_VERSIONS])
        if _EXT_SUPPORTED_VERSIONS in extensions else (),
        length=length,
    )


def _parse_extensions(cur: _Cursor) -> dict[int, bytes]:
    """Split the extension block, keeping every extension's data by type."""
    found: dict[int, bytes] = {}
    while cur.remaining():
        ext_type = cur.uint(2, "extension type")
        data = cur.vector(2, 0, 2**16 - 1, f"extension {ext_type}").take_rest()
        if ext_type in found:
            # RFC 8446 §4.2: at most one extension of a type per block.  It names no alert;
            # illegal_parameter is what OpenSSL sends, and it is what the project chose.
            raise _Reject(ILLEGAL_PARAMETER, f"duplicate extension type {ext_type}")
        found[ext_type] = data
    return found


def _parse_server_name(data: bytes) -> tuple[str | None, str | None]:
    """RFC 6066 §3: ServerNameList server_name_list<1..2^16-1> of (name_type, HostName).

    Returns (DNS name, None), or (None, address) for an IP literal (see `_ip_literal`)."""
    ext = _Cursor(data, "server_name extension")
    names = ext.vector(2, 1, 2**16 - 1, "server_name_list")
    ext.expect_end()
    raw_names: list[bytes] = []
    while names.remaining():
        name_type = names.uint(1, "name_type")
        if name_type != _NAME_TYPE_HOST_NAME:
            # Only host_name is defined, and the length of any other entry is unknowable;
            # OpenSSL answers the same way (decode_error).
            raise _decode_error(f"server_name name_type {name_type} is not host_name")
        raw_names.append(names.vector(2, 1, 2**16 - 1, "HostName").take_rest())
    if len(raw_names) != 1:
        # RFC 6066 §3: no more than one name of the same name_type.
        raise _decode_error("more than one host_name in server_name")
    ip = _ip_literal(raw_names[0])
    if ip is not None:
        return None, ip
    return _host_name(raw_names[0]), None


def _ip_literal(raw: bytes) -> str | None:
    """An IPv4 or IPv6 address (bracketed or not) sent as host_name, in its short form.

    RFC 6066 §3: "Literal IPv4 and IPv6 addresses are not permitted", yet clients send one
    when told to connect to an address. It names no domain, so it routes as no SNI would
    (the vserver's default farm) instead of being refused; `ClientHello.sni_ip` keeps it."""
    if not raw or len(raw) > 64 or not raw.isascii():
        return None
    text = raw.decode("ascii")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _host_name(raw: bytes) -> str:
    """RFC 6066 §3: ASCII DNS name without the trailing dot (one is tolerated); lower-cased.

    Only the case is treated leniently: a byte outside letters, digits, '-' and '.' or an
    empty/overlong label means the name cannot be any domain we serve, and would otherwise
    reach routing tables and logs.
    """
    name = raw[:-1] if raw.endswith(b".") else raw
    lowered = name.lower()  # bytes.lower() only maps A-Z
    valid = 0 < len(lowered) <= _MAX_HOST_NAME and all(
        0 < len(label) <= _MAX_LABEL and _LDH.issuperset(label) for label in lowered.split(b".")
    )
    if not valid:
        raise _decode_error(f"server_name host_name {_escaped(raw)} is not a DNS name")
    return lowered.decode("ascii")


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    """RFC 7301 §3.1: ProtocolName protocol_name_list<2..2^16-1>, names opaque<1..2^8-1>."""
    ext = _Cursor(data, "ALPN extension")
    names = ext.vector(2, 2, 2**16 - 1, "protocol_name_list")
    ext.expect_end()
    protocols: list[str] = []
    while names.remaining():
        # latin-1 maps every byte, so an odd name cannot raise; it just never matches
        # "xmpp-client"/"xmpp-server" (RFC 7301 names are byte strings, not text).
        protocols.append(names.vector(1, 1, 2**8 - 1, "ProtocolName").take_rest().decode("latin-1"))
    return tuple(protocols)


def _parse_supported_versions(data: bytes) -> tuple[int, ...]:
    """RFC 8446 §4.2.1, ClientHello form: ProtocolVersion versions<2..254>."""
    ext = _Cursor(data, "supported_versions extension")
    versions = ext.vector(1, 2, 254, "versions")
    ext.expect_end()
    if versions.remaining() % 2:
        raise _decode_error("supported_versions length is odd")
    return tuple(versions.uint(2, "version") for _ in range(versions.remaining() // 2))


def _escaped(raw: bytes, limit: int = 64) -> str:
    """Client bytes made safe for a log line: repr-escaped and truncated."""
    text = repr(raw[:limit])
    return text + "..." if len(raw) > limit else text
