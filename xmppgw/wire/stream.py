"""Pure readers for the cleartext part of an XMPP stream (RFC 6120 §4, §5.4, §11.1).

`StreamReader` is fed the bytes of one direction and returns events: the opening stream
header, each top-level element as it starts, or a protocol error naming the stream error
condition to send. `StartTLSTracker` holds one reader per direction and decides when the
gateway can stop looking (TLS started, or the stream went on without TLS).

Nothing here does I/O or reads a clock: the asyncio layer feeds bytes and acts on events,
which is what lets these be tested byte by byte and with hypothesis (the h11 model).

Parsing uses expat incrementally, so any prefix, either quote style, attributes in any order
and any namespace prefix work, unlike literal-byte matchers (xmpp-proxy, sslh).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from xml.parsers import expat

STREAMS_NS = "http://etherx.jabber.org/streams"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
DIALBACK_NS = "jabber:server:dialback"
XML_NS = "http://www.w3.org/XML/1998/namespace"

#: RFC 6120 §4.8.2 content namespaces (and XEP-0114's) -> the kind of stream they open.
KIND_BY_NAMESPACE = {
    "jabber:client": "c2s",
    "jabber:server": "s2s",
    "jabber:component:accept": "component",
}

# Names every stream repeats, kept once for the process (see _namespace, _read_header).
_SHARED = {name: name for name in (STREAMS_NS, DIALBACK_NS, *KIND_BY_NAMESPACE, "stream",
                                   "db", "1.0", "en")}

_SEP = "\x1f"  # expat namespace separator; cannot occur in a namespace name or local name


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The opening `<stream:stream>` of one direction."""

    kind: str
    namespace: str
    to: str | None
    from_: str | None
    version: str | None
    lang: str | None
    id: str | None
    stream_prefix: str | None
    dialback: bool


@dataclass(frozen=True, slots=True)
class Element:
    """A child of the stream root started (a stanza, `<starttls/>`, `<proceed/>`...)."""

    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The input broke a rule; `condition` is the RFC 6120 §4.9.3 stream error to send."""

    condition: str
    text: str


StreamEvent = StreamHeader | Element | ProtocolError


class _Stop(Exception):
    def __init__(self, error: ProtocolError) -> None:
        self.error = error


class _Handoff(Exception):
    """A handler saw the last byte expat is to read (`_xml_end`); `_beyond` reads the rest."""


_EXPAT_CONDITIONS = {
    # An entity other than the five predefined ones (§11.1): restricted, not malformed.
    expat.errors.codes[expat.errors.XML_ERROR_UNDEFINED_ENTITY]: "restricted-xml",
    expat.errors.codes[expat.errors.XML_ERROR_UNBOUND_PREFIX]: "bad-namespace-prefix",
    expat.errors.codes[expat.errors.XML_ERROR_UNKNOWN_ENCODING]: "unsupported-encoding",
    expat.errors.codes[expat.errors.XML_ERROR_INCORRECT_ENCODING]: "unsupported-encoding",
}


def _restricted(what: str) -> Callable[..., None]:
    def handler(*_args: object) -> None:
        raise _Stop(ProtocolError("restricted-xml", f"{what} not allowed in XMPP (RFC 6120 §11.1)"))
    return handler


# Made once, not per parser: every connection builds two parsers.
_comment = _restricted("comment")
_processing_instruction = _restricted("processing instruction")
_doctype = _restricted("DOCTYPE")
_entity_declaration = _restricted("entity declaration")
_entity_reference = _restricted("entity reference")


# The first two bytes decide expat's encoding detection, which overrides the UTF-8 the
# parser was created with: a UTF-16/UTF-32 byte order mark (its first byte is 0xFE, 0xFF or
# 0x00) or a NUL in either byte (UTF-16 or UTF-32 without a mark). None of these can start a
# UTF-8 XML document, so they are refused before expat sees them.
_NOT_UTF8_FIRST = frozenset((0x00, 0xFE, 0xFF))

_WHITESPACE = b" \t\r\n"  # XML's S production (XML 1.0 §2.3): what a keepalive is made of

# The token scanner's states (see StreamReader._scan).
_TEXT, _OPEN, _TAG, _QUOTE, _COMMENT, _CDATA, _PI, _DECL, _REF = range(9)
# What the scanner says about the bytes it cannot hand to expat yet (see StreamReader._scan).
_HOLD, _TOO_LONG, _TEXT_SEEN, _MORE = range(4)
_TEXT_STOP = re.compile(rb"[<&]")
_TAG_STOP = re.compile(rb"['\"<>]")
_QUOTE_STOP = {0x27: re.compile(rb"['<]"), 0x22: re.compile(rb'["<]')}
_REF_STOP = re.compile(rb"[^#0-9A-Za-z_.:\-\x80-\xff]")  # what cannot be in a reference
# Control characters XML 1.0 §2.2 excludes, and bytes that never occur in UTF-8 (RFC 3629
# §3): expat refuses each wherever it stands (C0/C1 once the next byte is in).
_NEVER_XML = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\xc0\xc1\xf5-\xff]")
# Text and whole common tokens, each delimited exactly as _scan delimits it (a fast path:
# one C call for what would take a Python iteration per quote). Possessive, so an
# unfinished tag costs one pass, never a backtrack.
_TAG_RE = rb"<(?![!?<])(?:[^'\"<>]++|'[^'<]*+'|\"[^\"<]*+\")*+>"
_NOT_TAG_RE = rb"[^<&]++|<\?.*?\?>|&[#0-9A-Za-z_.:\-\x80-\xff]*+;"  # text, PI, reference
_WHOLE = re.compile(rb"(?:%s|%s)*+" % (_TAG_RE, _NOT_TAG_RE), re.DOTALL)
_WHOLE_TO_A_TAG = re.compile(rb"(?:%s)*+(%s)?" % (_NOT_TAG_RE, _TAG_RE), re.DOTALL)
_NOT_WHITESPACE = re.compile(rb"[^ \t\r\n]")
_CLOSERS = {_COMMENT: b"-->", _CDATA: b"]]>", _PI: b"?>", _DECL: b">"}
_OPENERS = {_COMMENT: b"<!--", _CDATA: b"<![CDATA["}


class StreamReader:
    """Reads one direction of a stream: the header first, then top-level elements.

    `feed(data)` takes the next bytes of the direction and returns the events they complete:
    the `StreamHeader`, an `Element` when a child of the root starts, and at most one
    `ProtocolError`, after which the reader ignores everything.

    The outcome depends only on the bytes, never on how they were split, which the tests
    check with hypothesis. Two limits make that so and bound the work and memory per
    stream:

    - `max_header_bytes` (bytes, None for no limit) bounds what a peer may send before its
      header is complete: only that many bytes are read until the header is seen; one more
      is a `policy-violation`.
    - An unfinished markup token (a tag, comment, reference...) is held here, not handed to
      expat, until it is complete: expat rescans a pending token on every call, so a tag fed
      a byte at a time would cost the square of its length. `max_token_bytes` bounds one
      token; a longer one is a `policy-violation`. Text goes to expat at once, so an error
      outside markup is reported as soon as its byte arrives; one inside a tag when the tag
      ends, unless it is a byte that no UTF-8 XML can contain (a NUL, a control character,
      0xFF...): that one is reported at once.

    XMPP is UTF-8 only (RFC 6120 §11.6): a UTF-16 or UTF-32 stream, with or without a byte
    order mark, is `unsupported-encoding` (§4.9.3.22). A UTF-8 byte order mark is accepted.
    """

    __slots__ = ("_base", "_depth", "_ends_on_gt", "_events", "_held", "_namespaces",
                 "_no_text", "_parser", "_parsing", "_parsing_at", "_pos", "_quote", "_root_at",
                 "_state", "_stop_at_tags", "_unheld", "_xml_end", "consumed", "error", "header",
                 "max_header_bytes", "max_token_bytes")

    def __init__(self, max_header_bytes: int | None = 4096,
                 max_token_bytes: int = 65536) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_token_bytes = max_token_bytes
        self.header: StreamHeader | None = None
        self.error: ProtocolError | None = None
        self.consumed = 0  # bytes fed so far, held ones included
        self._events: list[StreamEvent] = []
        self._depth = 0
        self._namespaces: dict[str | None, str] = {}
        # Made when expat has bytes to read and dropped between top-level elements (see
        # _rest): a parked stream holds no parser (expat's is about 12 KB once it has read
        # a header). A later element is read by a new parser that first reads the root's
        # start tag again (`_resume_prefix`); `_base` maps its byte index to stream offsets.
        self._parser: expat.XMLParserType | None = None
        self._base = 0
        self._held = bytearray()  # the unfinished token, from its first byte
        self._state = _TEXT  # the scanner's state at the end of what was fed
        self._pos = 0  # where the scanner goes on in _held
        self._quote = 0  # the quote byte that opened an attribute value, in _QUOTE
        self._ends_on_gt = False  # the last non-whitespace byte fed is '>'
        self._unheld = False  # a byte no XML can hold was seen: hand everything to expat
        self._no_text = False  # text (not whitespace) outside markup is refused
        self._stop_at_tags = False  # hand each tag to expat apart until the header is read
        self._parsing: bytes | bytearray = b""  # what expat is reading
        self._parsing_at = 0  # its stream offset
        self._xml_end: int | None = None  # where expat stopped reading, once it has
        self._root_at = 0  # stream offset of the header's '<'

    def _new_parser(self) -> expat.XMLParserType:
        # encoding forced to UTF-8: RFC 6120 §11.6 allows nothing else; a declaration naming
        # another encoding is caught in _xml_decl, a byte order mark in _check_lead.
        parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=_SEP)
        parser.namespace_prefixes = True
        if hasattr(parser, "SetReparseDeferralEnabled"):
            # Expat >= 2.6 may hold back a start tag until more bytes arrive; a client waits
            # for our answer after its header, so every handler must fire as soon as it can.
            # The rescans that deferral saves are avoided by holding tokens (see _scan).
            parser.SetReparseDeferralEnabled(False)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.StartNamespaceDeclHandler = self._namespace
        parser.XmlDeclHandler = self._xml_decl
        parser.CommentHandler = _comment
        parser.ProcessingInstructionHandler = _processing_instruction
        parser.StartDoctypeDeclHandler = _doctype
        parser.EntityDeclHandler = _entity_declaration
        parser.SkippedEntityHandler = _entity_reference
        return parser

    @property
    def done(self) -> bool:
        return self.error is not None

    @property
    def buffered(self) -> int:
        """Bytes held back from expat (an unfinished token): at most max_token_bytes."""
        return len(self._held)

    @property
    def at_rest(self) -> bool:
        """Between top-level elements: no tag pending, the last markup a closed one."""
        return self._depth == 1 and not self._held and self._ends_on_gt

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Read the next bytes; return the events they complete (see the class docstring)."""
        if self.error is not None or not data:
            return []
        offset = self.consumed
        if self._xml_end is not None:
            self.consumed += len(data)
            return self._beyond(data)
        self._events = []
        try:
            if self.header is None and self.max_header_bytes is not None:
                room = self.max_header_bytes - self.consumed
                if len(data) > room:
                    self._take(data[:room])
                    if self.header is None:
                        raise _Stop(ProtocolError(
                            "policy-violation",
                            f"stream header not complete within {self.max_header_bytes} bytes"))
                    data, offset = data[room:], offset + room
            self._take(data)
            if self._parser is not None and self.at_rest and not self._unheld:
                self._rest()
        except _Stop as stop:
            self._events.append(stop.error)
            self._finish(stop.error)
        except _Handoff:
            self._parser = None  # type: ignore[assignment]  # frees expat's buffers
            self._held = bytearray()
            self.consumed = offset + len(data)
            self._events += self._beyond(data[self._xml_end - offset:])  # type: ignore[operator]
        return self._events

    def _beyond(self, data: bytes) -> list[StreamEvent]:
        """Bytes after `</stream:stream>`: whitespace, or the peer broke its stream."""
        if not data.strip(_WHITESPACE):
            return []
        return self._fail("not-well-formed", "data after </stream:stream>")

    def _fail(self, condition: str, text: str) -> list[StreamEvent]:
        error = ProtocolError(condition, text)
        self._finish(error)
        return [error]

    def _rest(self) -> None:
        """Between top-level elements expat holds nothing the next element needs but the
        root's namespace declarations, which the reader keeps: let the parser go."""
        self._parser = None
        self._parsing = b""

    def _resume_prefix(self) -> bytes:
        """The root's start tag as a new parser reads it before the next element: the same
        qualified name (so `</stream:stream>` still matches) and namespace declarations."""
        prefix = self.header.stream_prefix if self.header is not None else None
        out = ["<", f"{prefix}:stream" if prefix else "stream"]
        for name, uri in self._namespaces.items():
            value = (uri or "").replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")
            out.append(f" xmlns:{name}='{value}'" if name else f" xmlns='{value}'")
        out.append(">")
        return "".join(out).encode()

    def _take(self, data: bytes) -> None:
        if not data or self.error is not None or self._xml_end is not None:
            return
        if self.consumed < 2:
            if self.consumed == 0 and len(data) > 1 and data[1] == 0:
                # Expat's verdict on the first byte comes before the check of the second.
                self._take(data[:1])
                self._take(data[1:])
                return
            self._check_lead(data)
        stripped = data.rstrip(_WHITESPACE)
        if stripped:
            self._ends_on_gt = stripped.endswith(b">")
        self.consumed += len(data)
        if self._unheld:
            self._parse(data, self.consumed - len(data))
            return
        buf: bytes | bytearray = data
        if self._held:
            self._held += data
            buf = self._held
        while True:
            ready, verdict = self._scan(buf)
            if ready < len(buf) and verdict in (_HOLD, _TOO_LONG):
                # A byte no UTF-8 XML can hold, in the held token before it grew too long:
                # the stream is lost, and expat says where (at once, or a few bytes on).
                bad = _NEVER_XML.search(buf, max(ready, len(buf) - len(data)))
                if bad is not None and bad.start() <= ready + self.max_token_bytes:
                    ready, verdict, self._unheld = len(buf), _HOLD, True
            if ready:
                self._parse(buf[:ready] if ready < len(buf) else buf, self.consumed - len(buf))
            self._pos -= ready
            if verdict != _MORE:
                break
            buf, ready = buf[ready:], 0
        if buf is self._held:
            del self._held[:ready]  # cheap: CPython drops a bytearray's head in place
        elif ready < len(buf) or self._held:
            self._held = bytearray(buf[ready:])
        if verdict == _TOO_LONG:
            raise _Stop(ProtocolError(
                "policy-violation", f"an XML token longer than {self.max_token_bytes} bytes"))
        if verdict == _TEXT_SEEN:
            raise _policy("text in the stream before TLS refused (require_starttls)")

    def _check_lead(self, data: bytes) -> None:
        """Refuse what expat would take for UTF-16 or UTF-32 (RFC 6120 §11.6)."""
        second = data[1 - self.consumed:2 - self.consumed]
        if (self.consumed == 0 and data[0] in _NOT_UTF8_FIRST) or second == b"\x00":
            raise _Stop(ProtocolError(
                "unsupported-encoding",
                "not UTF-8: a UTF-16/UTF-32 byte order mark or NUL byte (RFC 6120 §11.6)"))

    def _scan(self, buf: bytes | bytearray) -> tuple[int, int]:
        """Find where markup tokens start and end in `buf` (the held token, then new bytes).

        Returns how many bytes of `buf` can go to expat, and why the rest cannot:
        `_HOLD`, it is an unfinished token (or nothing); `_TOO_LONG`, the token starting
        there is longer than max_token_bytes (counted from its first byte, so the verdict
        does not depend on the split); `_TEXT_SEEN`, it is text where `_no_text` allows
        none; `_MORE`, the header's tag ends there and must be read before what follows
        (`_stop_at_tags`).

        Tokens are told apart only as far as it takes to find their end: a tag ends at a '>'
        out of its quoted values, a comment at '-->', CDATA at ']]>', a processing
        instruction or XML declaration at '?>', other declarations at '>', a reference at
        ';' (or at a byte that cannot be in one: the error is expat's to report). A '<'
        inside a tag is an error wherever it stands: from there everything goes to expat,
        which says so.
        """
        state, pos, end = self._state, self._pos, len(buf)
        start = 0 if state != _TEXT else end  # first byte of the unfinished token
        limit = self.max_token_bytes
        verdict = _HOLD
        while pos < end:
            closed = -1
            if state == _TEXT:
                if self._no_text:
                    match = _NOT_WHITESPACE.search(buf, pos)
                    if match is None:
                        pos = end
                        break
                    if _NEVER_XML.match(buf, match.start()):
                        self._unheld = True  # not text but garbage: expat's to name
                        return end, _HOLD
                    if buf[match.start()] != 0x3C:  # '<'
                        start, pos, verdict = match.start(), match.start(), _TEXT_SEEN
                        break
                elif end - pos > limit:
                    match = _TEXT_STOP.search(buf, pos)
                elif self._stop_at_tags:  # as below, up to the first tag's end
                    whole = _WHOLE_TO_A_TAG.match(buf, pos)
                    if whole.group(1) is not None:  # type: ignore[union-attr]
                        self._state, self._pos = _TEXT, whole.end()  # type: ignore[union-attr]
                        return whole.end(), _MORE  # type: ignore[union-attr]
                    pos = whole.end()  # type: ignore[union-attr]
                    match = _TEXT_STOP.search(buf, pos)
                else:  # no token here can be too long: skip the whole ones at C speed
                    pos = _WHOLE.match(buf, pos).end()  # type: ignore[union-attr]
                    match = _TEXT_STOP.search(buf, pos)
                if match is None:
                    pos = end
                    break
                start = match.start()
                state, pos = (_OPEN, start + 1) if buf[start] == 0x3C else (_REF, start + 1)
            elif state == _OPEN:
                state, pos = _token_kind(buf, start)
                if state == _OPEN:  # "<!" or "<![CDA" so far: which one is still open
                    pos = end
            elif state in (_TAG, _QUOTE):
                stop = _TAG_STOP if state == _TAG else _QUOTE_STOP[self._quote]
                match = stop.search(buf, pos)
                if match is None:
                    pos = end
                    break
                found = buf[match.start()]
                if found == 0x3C:  # '<'
                    if match.start() - start > limit:  # too long before it went wrong
                        verdict = _TOO_LONG
                        break
                    self._unheld = True
                    return end, _HOLD
                if found == 0x3E:  # '>' (only looked for out of quotes)
                    closed = match.end()
                elif state == _TAG:
                    state, self._quote, pos = _QUOTE, found, match.end()
                else:
                    state, pos = _TAG, match.end()
            elif state == _REF:
                match = _REF_STOP.search(buf, pos)
                if match is None:
                    pos = end
                else:
                    closed = match.end() if buf[match.start()] == 0x3B else match.start()
            else:
                closer = _CLOSERS[state]
                # The closer may straddle two feeds; it never overlaps the opener.
                floor = start + len(_OPENERS.get(state, b"<?" if state == _PI else b"<"))
                found = buf.find(closer, max(pos - len(closer) + 1, floor))
                pos = found + len(closer) if found >= 0 else end
                if found >= 0:
                    closed = pos
            if closed >= 0:
                if closed - start > limit:
                    verdict = _TOO_LONG
                    break
                if state == _TAG and self._stop_at_tags:
                    self._state, self._pos = _TEXT, closed
                    return closed, _MORE
                state, pos, start = _TEXT, closed, end
        self._state, self._pos = state, pos
        if verdict == _HOLD and state != _TEXT and end - start > limit:
            verdict = _TOO_LONG
        return min(start, end), verdict

    def _parse(self, data: bytes | bytearray, offset: int) -> None:
        parser = self._parser
        if parser is None:
            if self._depth == 1 and not data.strip(_WHITESPACE):
                return  # whitespace between elements (a keepalive): nothing for expat
            parser = self._parser = self._new_parser()
            prefix = self._resume_prefix() if self._depth == 1 else b""
            self._base = offset - len(prefix)
            if prefix:
                self._depth = 0
                parser.Parse(prefix, False)  # the root again: no event (see _start)
        self._parsing, self._parsing_at = data, offset
        try:
            parser.Parse(data, False)
        except expat.ExpatError as exc:
            condition = _EXPAT_CONDITIONS.get(exc.code, "not-well-formed")
            raise _Stop(ProtocolError(condition, expat.errors.messages[exc.code])) from None

    def _finish(self, error: ProtocolError) -> None:
        self.error = error
        self._parser = None  # type: ignore[assignment]  # frees expat's buffers
        self._held = bytearray()

    # --- expat handlers -----------------------------------------------------------------

    def _xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.lower() not in ("utf-8", "utf8"):
            raise _Stop(ProtocolError("unsupported-encoding", f"encoding {encoding!r} is not UTF-8"))

    def _namespace(self, prefix: str | None, uri: str) -> None:
        if self._depth == 0:
            # The usual names shared, not a copy per stream: a parked stream keeps them.
            self._namespaces[_SHARED.get(prefix, prefix)] = _SHARED.get(uri, uri)

    def _index(self) -> int:
        """Stream offset of expat's current event."""
        return self._parser.CurrentByteIndex + self._base  # type: ignore[union-attr]

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._depth == 1:
            if self.header is not None:  # a new parser reading the root again
                return
            self._root_at = self._index()
            self._events.append(self._read_header(name, attrs))
        elif self._depth == 2:
            namespace, local, _prefix = _split(name)
            self._events.append(Element(namespace, local))

    def _end(self, name: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            # After the root only whitespace may come; expat's own verdict on anything
            # else there depends on what follows it, so the reader judges (see _beyond).
            self._stop_reading(self._root_at)

    def _stop_reading(self, started: int) -> None:
        """In an end-element handler for the element whose start tag began at stream offset
        `started`: expat reads nothing past the element's last byte."""
        index, data, at = self._index(), self._parsing, self._parsing_at
        # Expat reports where an end tag starts, but where an empty-element tag ends (which
        # may be where another end tag starts, or where a start tag ends). Tokens reach
        # expat whole (see _scan): an empty element's tag is in the data being parsed, ends
        # at `index`, and in '/>', which no other start tag does.
        end = index - at
        if started >= at and data[end - 2:end] == b"/>" and _tag_end(data, started - at) == end:
            self._xml_end = index
        else:
            self._xml_end = at + data.index(b">", index - at) + 1
        raise _Handoff

    def _read_header(self, name: str, attrs: dict[str, str]) -> StreamHeader:
        namespace, local, prefix = _split(name)
        if namespace != STREAMS_NS or local != "stream":
            raise _Stop(ProtocolError(
                "invalid-namespace", f"root element is not {{{STREAMS_NS}}}stream"))
        content_ns = self._namespaces.get(None)
        kind = KIND_BY_NAMESPACE.get(content_ns or "")
        if kind is None:
            raise _Stop(ProtocolError(
                "invalid-namespace", f"unsupported content namespace {content_ns!r}"))
        self.header = StreamHeader(
            kind=kind,
            namespace=content_ns,  # type: ignore[arg-type]
            to=attrs.get("to"),
            from_=attrs.get("from"),
            version=_shared(attrs.get("version")),
            lang=_shared(attrs.get(f"{XML_NS}{_SEP}lang{_SEP}xml")),
            id=attrs.get("id"),
            stream_prefix=_shared(prefix),
            dialback=DIALBACK_NS in self._namespaces.values(),
        )
        return self.header


def _shared(text: str | None) -> str | None:
    return _SHARED.get(text, text) if text is not None else None


def _tag_end(data: bytes | bytearray, pos: int) -> int:
    """Just past the '>' that ends the tag starting at `pos`, which expat has checked (its
    quotes pair up and it ends in '>')."""
    while True:
        match = _TAG_STOP.search(data, pos + 1)
        found = data[match.start()]  # type: ignore[union-attr]
        if found == 0x3E:
            return match.end()  # type: ignore[union-attr]
        pos = data.index(found, match.end())  # type: ignore[union-attr]


def _token_kind(buf: bytes | bytearray, start: int) -> tuple[int, int]:
    """What the markup starting with '<' at `start` is, and where its scan goes on:
    (_OPEN, start) while the bytes so far could still open a comment or CDATA section."""
    second = buf[start + 1]
    if second == 0x3F:  # '?'
        return _PI, start + 2
    if second != 0x21:  # '!'
        return _TAG, start + 1
    head = bytes(buf[start:start + 9])
    for state, opener in _OPENERS.items():
        if head.startswith(opener):
            return state, start + len(opener)
    if any(opener.startswith(head) for opener in _OPENERS.values()):
        return _OPEN, start
    return _DECL, start + 2


def _split(name: str) -> tuple[str, str, str | None]:
    """expat's 'uri SEP local SEP prefix' (parts present as declared) -> (uri, local, prefix)."""
    parts = name.split(_SEP)
    if len(parts) == 1:
        return "", parts[0], None
    if len(parts) == 2:
        return parts[0], parts[1], None
    return parts[0], parts[1], parts[2]


# ---------------------------------------------------------------------------------------
# STARTTLS
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opaque:
    """The cleartext phase is over; from here bytes are relayed without looking.

    `starttls` says whether the server answered `<proceed/>` (TLS follows on this TCP
    connection, RFC 6120 §5.4.3.3).
    """

    starttls: bool
    reason: str


TrackerEvent = StreamEvent | Opaque


def _policy(text: str) -> _Stop:
    return _Stop(ProtocolError("policy-violation", text))


class StartTLSOnlyReader(StreamReader):
    """The client's direction under `require_starttls` (RFC 6120 §5.4.3.3, §6.4.1).

    After its header the client may send whitespace (keepalives) and one
    `<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>`, then nothing but whitespace
    until the server's `<proceed/>`: the gateway would relay anything else to the real in
    the clear. Any other top-level element (SASL `<auth>`, XEP-0388 `<authenticate>`, a
    XEP-0078 `<iq>`, dialback `<db:result>`, any stanza), a child inside `<starttls>` or a
    CDATA section is a `policy-violation` as soon as its start tag is complete, before its
    content arrives; text (a reference included) at its first byte. After `<starttls/>`
    ends, expat reads no more: the first non-whitespace byte is the violation. Either way
    the verdict falls on the same byte whatever the split.
    """

    __slots__ = ("_starttls_at", "starttls_ended")

    def __init__(self, max_header_bytes: int | None = 4096,
                 max_token_bytes: int = 65536) -> None:
        super().__init__(max_header_bytes, max_token_bytes)
        self.starttls_ended = False
        self._starttls_at = 0  # stream offset of <starttls>'s '<'
        # Text is judged byte by byte (expat reports it in split-dependent pieces), from
        # the byte after the header's tag: until then each tag goes to expat on its own.
        self._stop_at_tags = True

    def _new_parser(self) -> expat.XMLParserType:
        parser = super()._new_parser()
        parser.StartCdataSectionHandler = self._cdata
        return parser

    def _beyond(self, data: bytes) -> list[StreamEvent]:
        if not self.starttls_ended:
            return super()._beyond(data)
        if not data.strip(_WHITESPACE):
            return []
        return self._fail("policy-violation",
                          "data after <starttls/> before the server's <proceed/>")

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        if self._depth >= 1:
            namespace, local, _prefix = _split(name)
            if self._depth > 1:
                raise _policy(f"<{local}> inside <starttls/>")
            if (namespace, local) != (TLS_NS, "starttls"):
                raise _policy(f"<{local}> before STARTTLS refused (require_starttls)")
            self._starttls_at = self._index()
        super()._start(name, attrs)
        self._no_text, self._stop_at_tags = True, False

    def _end(self, name: str) -> None:
        if self._depth == 2:  # <starttls/> has ended: the only element that can
            self._depth -= 1
            self.starttls_ended = True
            self._stop_reading(self._starttls_at)
        super()._end(name)

    def _cdata(self) -> None:
        raise _policy("CDATA before STARTTLS refused (require_starttls)")


class StartTLSTracker:
    """Watches both directions of a starttls-mode stream until there is nothing left to see.

    RFC 6120 §5.4: the initiator sends `<starttls/>`, the receiver `<proceed/>` (TLS starts)
    or `<failure/>` (it closes). The gateway stops parsing the client at `<starttls/>` (what
    follows is a TLS ClientHello) and the server at its answer. A stream that goes on without
    STARTTLS goes opaque at the client's first other top-level element, unless
    `require_starttls` holds it: then the client may send nothing but `<starttls/>` and
    whitespace before the server's `<proceed/>` (`StartTLSOnlyReader`), so no credentials
    or stanzas cross the gateway in the clear. Malformed client XML after the header is the
    real's to answer (it has the stream by then), again unless `require_starttls`.

    `client_data` and `server_data` return the events of their direction's bytes; a
    `ProtocolError` from `client_data` means the chunk that produced it must not be relayed.
    """

    __slots__ = ("client", "header", "max_cleartext_bytes", "opaque", "require_starttls",
                 "server", "starttls_requested")

    def __init__(self, max_header_bytes: int | None = 4096, require_starttls: bool = False,
                 max_cleartext_bytes: int = 65536) -> None:
        self.client = (StartTLSOnlyReader(max_header_bytes) if require_starttls
                       else StreamReader(max_header_bytes))
        self.server = StreamReader(None)
        self.require_starttls = require_starttls
        self.max_cleartext_bytes = max_cleartext_bytes
        self.starttls_requested = False
        self.header: StreamHeader | None = None
        self.opaque: Opaque | None = None

    def client_data(self, data: bytes) -> list[TrackerEvent]:
        if self.opaque is not None or self.client is None:
            return []
        reader = self.client
        room = self.max_cleartext_bytes - reader.consumed
        if 0 <= room < len(data) and not self.starttls_requested:
            # The cleartext limit falls in this chunk: judge at that byte, as if the chunk
            # had been split there, so the verdict does not depend on the segmentation.
            events = self._client_events(data[:room])
            if self._following(reader) and reader.header is not None:
                return events + self._cleartext_too_long(reader)
            if self.client is None or reader.error is not None:
                return events
            return events + self._client_events(data[room:])
        events = self._client_events(data)
        if (self._following(reader) and reader.header is not None
                and reader.consumed > self.max_cleartext_bytes):
            events.extend(self._cleartext_too_long(reader))  # a header that came late
        return events

    def _following(self, reader: StreamReader) -> bool:
        """Still reading the client's cleartext, with no decision taken."""
        return (self.opaque is None and not self.starttls_requested
                and reader.error is None)

    def _client_events(self, data: bytes) -> list[TrackerEvent]:
        events: list[TrackerEvent] = []
        for event in self.client.feed(data):
            if isinstance(event, ProtocolError) and self.header is not None:
                events.append(self._client_unreadable(event))
                break
            events.append(event)
            if isinstance(event, StreamHeader):
                self.header = event
            elif isinstance(event, Element):
                verdict = self._client_element(event)
                events.extend(verdict)
                if verdict or self.client is None:
                    break  # TLS or opaque: later events of this chunk do not count
        return events

    def _client_element(self, element: Element) -> list[TrackerEvent]:
        if element.namespace == TLS_NS and element.name == "starttls":
            self.starttls_requested = True
            if not self.require_starttls:
                self.client = None  # type: ignore[assignment]  # the rest is TLS: stop reading
            return []
        # Under require_starttls the reader refuses any other element itself.
        return [self._go_opaque(False, f"client sent <{element.name}/> without STARTTLS")]

    def _client_unreadable(self, error: ProtocolError) -> TrackerEvent:
        """After the header the real has the stream and judges its XML, as for the server's;
        only with require_starttls must the gateway refuse what it cannot read, since it can
        no longer tell whether credentials are inside."""
        if self.require_starttls:
            return error
        return self._go_opaque(False, f"client stream unreadable: {error.text}")

    def _cleartext_too_long(self, reader: StreamReader) -> list[TrackerEvent]:
        if self.require_starttls:
            error = ProtocolError(
                "policy-violation", f"over {self.max_cleartext_bytes} bytes before STARTTLS")
            reader.error = error
            return [error]
        return [self._go_opaque(False, "cleartext phase too long to follow")]

    def server_between_elements(self) -> bool:
        """True when the server's stream is between top-level elements, so the gateway may
        put a `<stream:error>` of its own into it (on shutdown) without cutting a stanza."""
        return (self.opaque is None and self.server is not None
                and self.server.header is not None and self.server.at_rest)

    def server_data(self, data: bytes) -> list[TrackerEvent]:
        if self.opaque is not None:
            return []
        events: list[TrackerEvent] = []
        for event in self.server.feed(data):
            if isinstance(event, ProtocolError):
                # Not ours to judge: the client will. Stop looking, keep relaying.
                events.append(self._go_opaque(False, f"server stream unreadable: {event.text}"))
            elif isinstance(event, Element) and event.namespace == TLS_NS:
                if event.name == "proceed":
                    events.append(self._go_opaque(True, "server sent <proceed/>"))
                elif event.name == "failure":
                    events.append(self._go_opaque(False, "server sent STARTTLS <failure/>"))
            else:
                events.append(event)
            if self.opaque is not None:
                break
        return events

    def _go_opaque(self, starttls: bool, reason: str) -> Opaque:
        self.opaque = Opaque(starttls, reason)
        self.client = self.server = None  # type: ignore[assignment]  # free both parsers
        return self.opaque
