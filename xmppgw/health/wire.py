"""What an `xmpp-stream` probe says and reads, pure (no I/O): fed bytes, it answers.

The probe opens a stream as a client would (`jabber:client`), or as a peer server would
(`jabber:server` with the dialback namespace, XEP-0220), and the real must answer with its
own stream header and `<stream:features>` (RFC 6120 §4.3.2), which shows the XMPP service
itself is alive, not only the kernel's accept queue: a hung node still completes the TCP
handshake. The server's bytes go through the gateway's own `StreamReader` (expat), so the
same XML rules hold, and whatever way the bytes are split the answer is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from xmppgw.wire.stream import (
    DIALBACK_NS,
    STREAMS_NS,
    TLS_NS,
    Element,
    ProtocolError,
    StreamReader,
    _split,
)

NAMESPACE_BY_KIND = {"c2s": "jabber:client", "s2s": "jabber:server"}
MAX_GREETING_BYTES = 65536  # a server's header and features are a few hundred bytes
STREAM_CLOSE = b"</stream:stream>"


def stream_header(kind: str, domain: str) -> bytes:
    """The opening of a c2s or s2s stream to `domain` (RFC 6120 §4.7; XEP-0220 for s2s)."""
    dialback = f" xmlns:db='{DIALBACK_NS}'" if kind == "s2s" else ""
    return (f"<?xml version='1.0'?><stream:stream xmlns='{NAMESPACE_BY_KIND[kind]}'"
            f" xmlns:stream='{STREAMS_NS}'{dialback} to={quoteattr(domain)}"
            " version='1.0'>").encode()


class GreetingReader(StreamReader):
    """The server's side of a stream opening: its header, then its first top-level element
    with that element's children, which is all a probe needs to see: `<stream:features>`
    (and whether `<starttls/>` is among them), or `<stream:error>` and its condition.
    """

    def __init__(self) -> None:
        super().__init__(max_header_bytes=MAX_GREETING_BYTES)
        self.first: Element | None = None
        self.children: list[Element] = []
        self.complete = False  # the first element has ended

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        super()._start(name, attrs)
        if self.complete:
            return
        if self._depth == 2 and self.first is None:
            namespace, local, _ = _split(name)
            self.first = Element(namespace, local)
        elif self._depth == 3 and self.first is not None:
            namespace, local, _ = _split(name)
            self.children.append(Element(namespace, local))

    def _end(self, name: str) -> None:
        if self._depth == 2 and self.first is not None:
            self.complete = True
        super()._end(name)


@dataclass(frozen=True, slots=True)
class Verdict:
    """None of `error` means the real answered as an XMPP server should."""

    error: str | None


def judge(reader: GreetingReader, kind: str, expect_starttls: bool) -> Verdict | None:
    """What the bytes so far say; None while the features (or an error) are incomplete."""
    if isinstance(reader.error, ProtocolError):
        return Verdict(f"server sent bad XML ({reader.error.condition}: {reader.error.text})")
    header = reader.header
    if header is not None and header.kind != kind:
        return Verdict(f"server answered a {kind} stream with a {header.kind} stream header")
    if not reader.complete or reader.first is None:
        return None
    first = reader.first
    if first.namespace == STREAMS_NS and first.name == "error":
        condition = next((c.name for c in reader.children if c.name != "text"), "unknown")
        return Verdict(f"stream error <{condition}/>")
    if first.namespace != STREAMS_NS or first.name != "features":
        return Verdict(f"expected <stream:features>, got <{first.name}/>")
    if expect_starttls and Element(TLS_NS, "starttls") not in reader.children:
        return Verdict("no <starttls/> in the stream features")
    return Verdict(None)
