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


class StreamReader:
    """Reads one direction of a stream: the header first, then top-level elements.

    The outcome depends only on the bytes, never on how they were split, which the tests
    check with hypothesis. `max_header_bytes` bounds what a peer may send before its header
    is complete: only that many bytes reach expat until the header is seen, so the verdict
    is the same whatever the segmentation.
    """

    def __init__(self, max_header_bytes: int | None = 4096) -> None:
        self.max_header_bytes = max_header_bytes
        self.header: StreamHeader | None = None
        self.error: ProtocolError | None = None
        self.consumed = 0
        # Between top-level elements, nothing of a tag pending (an end of input on '>').
        self.at_rest = False
        self._events: list[StreamEvent] = []
        self._depth = 0
        self._namespaces: dict[str | None, str] = {}
        self._parser = self._new_parser()

    def _new_parser(self) -> expat.XMLParserType:
        # encoding forced to UTF-8: RFC 6120 §11.6 allows nothing else; a declaration naming
        # another encoding is caught in _xml_decl.
        parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=_SEP)
        parser.namespace_prefixes = True
        if hasattr(parser, "SetReparseDeferralEnabled"):
            # Expat >= 2.6 may hold back a start tag until more bytes arrive; a client waits
            # for our answer after its header, so every handler must fire as soon as it can.
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

    def feed(self, data: bytes) -> list[StreamEvent]:
        if self.error is not None or not data:
            return []
        if self.header is None and self.max_header_bytes is not None:
            room = self.max_header_bytes - self.consumed
            head, rest = data[:room], data[room:]
            events = self._parse(head)
            if self.error is None and self.header is None and rest:
                return events + self._fail(
                    "policy-violation",
                    f"stream header not complete within {self.max_header_bytes} bytes")
            if rest and self.error is None:
                events += self._parse(rest)
            return events
        return self._parse(data)

    def _parse(self, data: bytes) -> list[StreamEvent]:
        self._events = []
        try:
            self._parser.Parse(data, False)
        except _Stop as stop:
            self._events.append(stop.error)
            self._finish(stop.error)
        except expat.ExpatError as exc:
            condition = _EXPAT_CONDITIONS.get(exc.code, "not-well-formed")
            error = ProtocolError(condition, expat.errors.messages[exc.code])
            self._events.append(error)
            self._finish(error)
        self.consumed += len(data)
        self.at_rest = self._depth == 1 and data.rstrip().endswith(b">")
        return self._events

    def _fail(self, condition: str, text: str) -> list[StreamEvent]:
        error = ProtocolError(condition, text)
        self._finish(error)
        return [error]

    def _finish(self, error: ProtocolError) -> None:
        self.error = error
        self._parser = None  # type: ignore[assignment]  # frees expat's buffers

    # --- expat handlers -----------------------------------------------------------------

    def _xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.lower() not in ("utf-8", "utf8"):
            raise _Stop(ProtocolError("unsupported-encoding", f"encoding {encoding!r} is not UTF-8"))

    def _namespace(self, prefix: str | None, uri: str) -> None:
        if self._depth == 0:
            self._namespaces[prefix] = uri

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._depth == 1:
            self._events.append(self._read_header(name, attrs))
        elif self._depth == 2:
            namespace, local, _prefix = _split(name)
            self._events.append(Element(namespace, local))

    def _end(self, name: str) -> None:
        self._depth -= 1

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
            version=attrs.get("version"),
            lang=attrs.get(f"{XML_NS}{_SEP}lang{_SEP}xml"),
            id=attrs.get("id"),
            stream_prefix=prefix,
            dialback=DIALBACK_NS in self._namespaces.values(),
        )
        return self.header


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


class StartTLSTracker:
    """Watches both directions of a starttls-mode stream until there is nothing left to see.

    RFC 6120 §5.4: the initiator sends `<starttls/>`, the receiver `<proceed/>` (TLS starts)
    or `<failure/>` (it closes). The gateway stops parsing the client at `<starttls/>` (what
    follows is a TLS ClientHello) and the server at its answer. A stream that goes on without
    STARTTLS goes opaque at the client's first other top-level element, unless
    `require_starttls` holds it: then a SASL `<auth>` before TLS is a policy violation, so
    credentials never cross the gateway in the clear. Malformed client XML after the header
    is the real's to answer (it has the stream by then), again unless `require_starttls`.
    """

    def __init__(self, max_header_bytes: int | None = 4096, require_starttls: bool = False,
                 max_cleartext_bytes: int = 65536) -> None:
        self.client = StreamReader(max_header_bytes)
        self.server = StreamReader(None)
        self.require_starttls = require_starttls
        self.max_cleartext_bytes = max_cleartext_bytes
        self.starttls_requested = False
        self.header: StreamHeader | None = None
        self.opaque: Opaque | None = None

    def client_data(self, data: bytes) -> list[TrackerEvent]:
        if self.opaque is not None or self.starttls_requested:
            return []
        events: list[TrackerEvent] = []
        reader = self.client
        for event in reader.feed(data):
            if isinstance(event, ProtocolError) and self.header is not None:
                events.append(self._client_unreadable(event))
                break
            events.append(event)
            if isinstance(event, StreamHeader):
                self.header = event
            elif isinstance(event, Element):
                verdict = self._client_element(reader, event)
                events.extend(verdict)
                if verdict or self.starttls_requested:
                    break  # TLS, opaque or refused: later events of this chunk do not count
        if (reader.header is not None and self.opaque is None and not self.starttls_requested
                and reader.error is None and reader.consumed > self.max_cleartext_bytes):
            events.extend(self._cleartext_too_long(reader))
        return events

    def _client_element(self, reader: StreamReader, element: Element) -> list[TrackerEvent]:
        if element.namespace == TLS_NS and element.name == "starttls":
            self.starttls_requested = True
            self.client = None  # type: ignore[assignment]  # the rest is TLS: stop reading
            return []
        if not self.require_starttls:
            return [self._go_opaque(False, f"client sent <{element.name}/> without STARTTLS")]
        if element.namespace == SASL_NS and element.name == "auth":
            error = ProtocolError("policy-violation", "authentication before STARTTLS refused")
            reader.error = error
            return [error]
        return []

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
