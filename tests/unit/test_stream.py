"""The stream reader and STARTTLS tracker: each rule, and split-invariance under hypothesis."""

from __future__ import annotations

import codecs
import itertools
from xml.parsers import expat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmppgw.wire.stream import (
    TLS_NS,
    Element,
    Opaque,
    ProtocolError,
    StartTLSTracker,
    StreamHeader,
    StreamReader,
)

C2S = (b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
       b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>")
S2S = (b'<stream:stream xmlns:db="jabber:server:dialback" from="pr.test" to="example.test" '
       b'version="1.0" xmlns:stream="http://etherx.jabber.org/streams" xmlns="jabber:server">')
COMPONENT = (b"<stream:stream xmlns='jabber:component:accept' "
             b"xmlns:stream='http://etherx.jabber.org/streams' to='muc.example.test'>")
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
SERVER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='example.test' "
          b"version='1.0'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
          b"<required/></starttls></stream:features>")
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
AUTH = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"


def feed_all(reader: StreamReader, chunks: list[bytes]) -> list:
    return [event for chunk in chunks for event in reader.feed(chunk)]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


@pytest.mark.parametrize("feed", [lambda d: [d], byte_by_byte], ids=["whole", "bytewise"])
def test_c2s_header(feed) -> None:
    events = feed_all(StreamReader(), feed(C2S))
    assert events == [StreamHeader(kind="c2s", namespace="jabber:client", to="example.test",
                                   from_=None, version="1.0", lang="en", id=None,
                                   stream_prefix="stream", dialback=False)]


def test_s2s_header_double_quotes_any_attribute_order() -> None:
    [header] = StreamReader().feed(S2S)
    assert (header.kind, header.to, header.from_, header.dialback) == (
        "s2s", "example.test", "pr.test", True)


def test_component_header() -> None:
    [header] = StreamReader().feed(COMPONENT)
    assert (header.kind, header.to) == ("component", "muc.example.test")


def test_other_stream_prefix_and_no_declaration() -> None:
    data = (b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client' "
            b"to='example.test'>")
    [header] = StreamReader().feed(data)
    assert (header.stream_prefix, header.to) == ("s", "example.test")
    [header] = StreamReader().feed(b"  \n" + C2S.split(b"?>", 1)[1])
    assert header.to == "example.test"


def test_top_level_elements_are_reported() -> None:
    events = StreamReader().feed(C2S + STARTTLS + b"<presence><show>away</show></presence>")
    assert events[1:] == [Element("urn:ietf:params:xml:ns:xmpp-tls", "starttls"),
                          Element("jabber:client", "presence")]


@pytest.mark.parametrize("data, condition", [
    (b"<!-- hi --><stream:stream", "restricted-xml"),
    (C2S + b"<!-- hi -->", "restricted-xml"),
    (b"<!DOCTYPE stream [<!ENTITY a 'b'>]><stream:stream", "restricted-xml"),
    (b"<?xml-stylesheet href='x'?>", "restricted-xml"),
    (C2S + b"<message>&lol;</message>", "restricted-xml"),
    (b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", "not-well-formed"),
    ((b"<stream:stream to='a' to='b' xmlns='jabber:client' "
      b"xmlns:stream='http://etherx.jabber.org/streams'>"), "not-well-formed"),
    (b"<stream:stream xmlns='jabber:client'>", "bad-namespace-prefix"),
    (b"<stream:stream xmlns:stream='urn:wrong' xmlns='jabber:client'>", "invalid-namespace"),
    (b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:iq'>",
     "invalid-namespace"),
    (b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", "invalid-namespace"),
    (b"<html xmlns='jabber:client'>", "invalid-namespace"),
    (b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream", "unsupported-encoding"),
    (b"<stream:stream to='\xff\xfe'", "not-well-formed"),
])
def test_protocol_errors(data: bytes, condition: str) -> None:
    for chunks in ([data], byte_by_byte(data)):
        events = feed_all(StreamReader(), chunks)
        assert isinstance(events[-1], ProtocolError), events
        assert events[-1].condition == condition
        assert [e for e in events if isinstance(e, ProtocolError)] == [events[-1]]


def test_header_size_limit_is_policy_violation_and_split_independent() -> None:
    big = b"<stream:stream xmlns='jabber:client' " + b"x='y' " * 1000
    for chunks in ([big], byte_by_byte(big[:5000])):
        events = feed_all(StreamReader(max_header_bytes=1024), chunks)
        assert events == [ProtocolError("policy-violation",
                                        "stream header not complete within 1024 bytes")]


def test_header_exactly_at_limit_is_accepted() -> None:
    events = StreamReader(max_header_bytes=len(C2S)).feed(C2S + b"<presence/>")
    assert [type(e) for e in events] == [StreamHeader, Element]


def test_nothing_after_an_error() -> None:
    reader = StreamReader()
    assert reader.feed(b"<!-- -->")[0].condition == "restricted-xml"
    assert reader.feed(C2S) == []


# --- UTF-8 only (RFC 6120 §11.6): what expat would take for UTF-16 or UTF-32 is refused -------

V6 = C2S.replace(b"example.test", b"[2001:db8::1]")
NOT_UTF8 = {
    "utf-16-le": C2S.decode().encode("utf-16-le"),
    "utf-16-be": C2S.decode().encode("utf-16-be"),
    "utf-16-bom": C2S.decode().encode("utf-16"),
    "utf-16-le-bom-v6": codecs.BOM_UTF16_LE + V6.decode().encode("utf-16-le"),
    "utf-16-le-space-first": b" \x00" + C2S.decode().encode("utf-16-le"),
    "utf-16-be-space-first": b"\x00 " + C2S.decode().encode("utf-16-be"),
    "utf-32-le": C2S.decode().encode("utf-32-le"),
    "utf-32-be-bom": codecs.BOM_UTF32_BE + C2S.decode().encode("utf-32-be"),
    "utf-32-le-bom": C2S.decode().encode("utf-32"),
    "nul-second": b"<\x00",
}


@pytest.mark.parametrize("name", NOT_UTF8)
def test_utf16_and_utf32_are_unsupported_encoding_at_any_split(name: str) -> None:
    data = NOT_UTF8[name]
    expected = [ProtocolError(
        "unsupported-encoding",
        "not UTF-8: a UTF-16/UTF-32 byte order mark or NUL byte (RFC 6120 §11.6)")]
    for cut in range(len(data)):  # the first segment of every length, the fuzzer's find
        assert feed_all(StreamReader(), [data[:cut], data[cut:]]) == expected, cut
    assert feed_all(StreamReader(), byte_by_byte(data)) == expected
    assert StartTLSTracker().client_data(data) == expected


def test_utf8_byte_order_mark_is_accepted() -> None:
    data = codecs.BOM_UTF8 + C2S
    for chunks in ([data], byte_by_byte(data)):
        [header] = feed_all(StreamReader(), chunks)
        assert header.to == "example.test"


@pytest.mark.parametrize("encoding", ["UTF-16", "utf-32", "ISO-8859-1", "US-ASCII"])
def test_declared_encoding_other_than_utf8_is_refused(encoding: str) -> None:
    data = C2S.replace(b"version='1.0'?>", f"version='1.0' encoding='{encoding}'?>".encode())
    [error] = StreamReader().feed(data)
    assert error.condition == "unsupported-encoding"


# --- cost: an unfinished token reaches expat once, whole -------------------------------------


class CountingParser:
    """Wraps an expat parser to record what each Parse call is given."""

    def __init__(self, parser: object, calls: list[bytes]) -> None:
        object.__setattr__(self, "_parser", parser)
        object.__setattr__(self, "_calls", calls)

    def Parse(self, data: bytes, final: bool = False) -> int:
        self._calls.append(bytes(data))
        return self._parser.Parse(data, final)

    def __getattr__(self, name: str) -> object:
        return getattr(self._parser, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._parser, name, value)


@pytest.fixture()
def parse_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    create = expat.ParserCreate
    monkeypatch.setattr(expat, "ParserCreate",
                        lambda *a, **kw: CountingParser(create(*a, **kw), calls))
    return calls


def test_a_long_tag_fed_a_byte_at_a_time_reaches_expat_once(parse_calls: list[bytes]) -> None:
    """Expat rescans an unfinished token on every Parse: handing it each byte of a 60 KB tag
    cost 60,000 calls and the square of the length in scanning (seconds of CPU)."""
    tag = b"<message to='a@example.test' x='" + b"y>" * 30_000 + b"'>"
    reader = StartTLSTracker(max_cleartext_bytes=10**6).client
    events = feed_all(reader, byte_by_byte(C2S + b" " + tag))
    assert events[1:] == [Element("jabber:client", "message")]
    # Every byte once, in order; between elements the parser is let go, so a new one reads
    # the root's start tag again before the tag, and the space (a keepalive) skips expat.
    resume = reader._resume_prefix()
    assert b"".join(c for c in parse_calls if c != resume) == C2S + tag
    assert len(parse_calls) <= 4  # the XML declaration, the header, the root again, the tag
    assert parse_calls[-2:] == [resume, tag]


def test_text_and_bytes_no_xml_can_hold_reach_expat_at_once() -> None:
    """Holding a tag must not delay an error expat can already see."""
    assert StreamReader().feed(b"GET / HTTP/1.1\r\n")[0].condition == "not-well-formed"
    assert StreamReader().feed(b"\x16\x03\x01\x02\x00\x01")[0].condition == "not-well-formed"
    for garbage in (b"\x00", b"\x1b", b"\xff", b"\xc0", b"<"):
        reader = StreamReader()
        events = feed_all(reader, byte_by_byte(b"<stream:stream to='a" + garbage + b"bc"))
        assert [e.condition for e in events] == ["not-well-formed"], garbage


def test_a_token_longer_than_max_token_bytes_is_refused_whatever_the_split() -> None:
    expected = ProtocolError("policy-violation", "an XML token longer than 200 bytes")
    for tag in (b"<message a='" + b"x" * 200 + b"'/>", b"<!--" + b"-" * 200, b"&" + b"a" * 200):
        data = C2S + tag
        for chunks in ([data], byte_by_byte(data), [C2S, tag[:50], tag[50:]]):
            reader = StreamReader(max_token_bytes=200)
            assert feed_all(reader, chunks)[1:] == [expected], (tag, chunks)
            assert reader.buffered == 0
    fits = C2S + b"<m a='" + b"x" * 190 + b"'/>"
    assert len(feed_all(StreamReader(max_token_bytes=200), byte_by_byte(fits))) == 2


# --- STARTTLS tracker ---------------------------------------------------------------------


def test_starttls_proceed_goes_opaque_with_tls() -> None:
    tracker = StartTLSTracker()
    assert isinstance(tracker.client_data(C2S)[0], StreamHeader)
    tracker.client_data(STARTTLS + b"\x16\x03\x01\x02\x00garbage-that-is-tls")
    assert tracker.opaque is None
    events = tracker.server_data(SERVER + PROCEED + b"\x16\x03\x03")
    assert events[-1] == Opaque(True, "server sent <proceed/>")
    assert tracker.client_data(b"anything") == [] and tracker.server_data(b"<x") == []


def test_starttls_failure_goes_opaque_without_tls() -> None:
    tracker = StartTLSTracker()
    tracker.client_data(C2S + STARTTLS)
    events = tracker.server_data(SERVER + b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert events[-1] == Opaque(False, "server sent STARTTLS <failure/>")


def test_stream_without_starttls_goes_opaque_at_first_other_element() -> None:
    tracker = StartTLSTracker()
    events = tracker.client_data(C2S + AUTH)
    assert events[-1] == Opaque(False, "client sent <auth/> without STARTTLS")


# RFC 6120 §5.4.3.3, §6.4.1: under require_starttls nothing but <starttls/> may pass before
# TLS, whatever it is: each is refused when its start tag is complete, before its content.
BEFORE_TLS = {
    "sasl": (C2S, AUTH),
    "sasl2": (C2S, (b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>"
                   b"<initial-response>AGFsaWNlAHNlY3JldA==</initial-response></authenticate>")),
    "iq-auth": (C2S, (b"<iq type='set' id='a1'><query xmlns='jabber:iq:auth'><username>alice"
                     b"</username><password>secret</password></query></iq>")),
    "register": (C2S, b"<iq type='get' id='1'><query xmlns='jabber:iq:register'/></iq>"),
    "message": (C2S, b"<message to='bob@example.test'><body>hi</body></message>"),
    "dialback": (S2S, b"<db:result from='pr.test' to='example.test'>s3cr3tk3y</db:result>"),
}


@pytest.mark.parametrize("name", BEFORE_TLS)
def test_require_starttls_refuses_any_other_element_at_its_start(name: str) -> None:
    header, element = BEFORE_TLS[name]
    start_tag_end = element.index(b">") + 1
    tracker = StartTLSTracker(require_starttls=True)
    assert isinstance(tracker.client_data(header + b"\n  ")[0], StreamHeader)
    assert tracker.client_data(element[:start_tag_end - 1]) == []
    [error] = tracker.client_data(element[start_tag_end - 1:])
    assert error.condition == "policy-violation" and "before STARTTLS refused" in error.text
    assert tracker.client_data(STARTTLS) == []  # refused for good
    whole = StartTLSTracker(require_starttls=True).client_data(header + element)
    assert whole[-1] == error


def test_without_require_starttls_other_elements_go_opaque_as_before() -> None:
    for header, element in BEFORE_TLS.values():
        events = StartTLSTracker().client_data(header + element)
        assert isinstance(events[-1], Opaque) and not events[-1].starttls


@pytest.mark.parametrize("text", [b"password", b"&amp;", b"<![CDATA[ ]]>", b"]]x"])
def test_require_starttls_refuses_text_between_elements(text: bytes) -> None:
    events = StartTLSTracker(require_starttls=True).client_data(C2S + b" " + text)
    assert events[-1].condition == "policy-violation"


@pytest.mark.parametrize("after", [AUTH, b"<", b" \r\n\t<auth", b"\x16\x03\x01\x02\x00", b"x",
                                   b"</stream:stream>"])
def test_require_starttls_refuses_any_byte_after_starttls_before_proceed(after: bytes) -> None:
    """Pipelined after <starttls/>, in its segment or a later one, at any split: refused
    before it reaches the real in the clear."""
    data = C2S + STARTTLS + after
    for cut in range(len(C2S) + 1, len(data)):
        tracker = StartTLSTracker(require_starttls=True)
        events = tracker.client_data(data[:cut]) + tracker.client_data(data[cut:])
        assert events[1:] == [Element(TLS_NS, "starttls"), ProtocolError(
            "policy-violation", "data after <starttls/> before the server's <proceed/>")], cut


def test_require_starttls_lets_whitespace_through_until_proceed() -> None:
    tracker = StartTLSTracker(require_starttls=True)
    tracker.client_data(C2S + b" \n" + STARTTLS[:-2])
    assert tracker.client_data(STARTTLS[-2:] + b"\n") == [Element(TLS_NS, "starttls")]
    assert tracker.client_data(b" \t\r\n") == []
    assert tracker.server_data(SERVER + PROCEED)[-1] == Opaque(True, "server sent <proceed/>")
    assert tracker.client_data(b"\x16\x03\x01\x02\x00") == []  # TLS now: not looked at


def test_require_starttls_accepts_starttls_with_an_end_tag_but_nothing_inside() -> None:
    open_tag = STARTTLS[:-2] + b">"
    tracker = StartTLSTracker(require_starttls=True)
    tracker.client_data(C2S + open_tag + b" ")
    assert tracker.client_data(b"</starttls> ") == []
    assert tracker.starttls_requested and tracker.client.error is None
    for inside in (b"<required/>", b"secret"):
        events = StartTLSTracker(require_starttls=True).client_data(C2S + open_tag + inside)
        assert events[-1].condition == "policy-violation", inside


def test_without_require_starttls_what_follows_starttls_is_not_looked_at() -> None:
    tracker = StartTLSTracker()
    assert tracker.client_data(C2S + STARTTLS + AUTH)[1:] == [Element(TLS_NS, "starttls")]
    assert tracker.client_data(b"<message/>") == []


def test_require_starttls_allows_starttls() -> None:
    tracker = StartTLSTracker(require_starttls=True)
    tracker.client_data(C2S + STARTTLS)
    assert tracker.starttls_requested
    assert tracker.server_data(SERVER + PROCEED)[-1] == Opaque(True, "server sent <proceed/>")


def test_unreadable_server_stream_is_not_judged() -> None:
    tracker = StartTLSTracker()
    tracker.client_data(C2S + STARTTLS)
    assert tracker.server_data(b"<<<")[-1].starttls is False


def test_malformed_client_xml_after_header_is_left_to_the_real() -> None:
    tracker = StartTLSTracker()
    events = tracker.client_data(C2S + b"\x00\xffrandom")
    assert events[-1] == Opaque(False, "client stream unreadable: not well-formed (invalid token)")
    strict = StartTLSTracker(require_starttls=True)
    assert strict.client_data(C2S + b"\x00\xffrandom")[-1].condition == "not-well-formed"


def test_malformed_header_is_the_gateways_to_answer() -> None:
    assert StartTLSTracker().client_data(b"<stream:stream\x00")[-1].condition == "not-well-formed"


def test_long_cleartext_phase_stops_tracking() -> None:
    tracker = StartTLSTracker(require_starttls=True, max_cleartext_bytes=1000)
    events = tracker.client_data(C2S + b"\n" * 1000)
    assert events[-1] == ProtocolError("policy-violation", "over 1000 bytes before STARTTLS")
    tracker = StartTLSTracker(max_cleartext_bytes=1000)
    events = tracker.client_data(C2S + b"\n" * 1000)
    assert events[-1] == Opaque(False, "cleartext phase too long to follow")


# --- hypothesis: the verdict depends on the bytes, never on the segmentation -----------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


DOCUMENTS = st.sampled_from([
    C2S + STARTTLS, S2S + b"<db:result from='pr.test' to='example.test'>k</db:result>",
    COMPONENT + b"<handshake>x</handshake>", C2S + AUTH, C2S + b"<!-- c -->",
    C2S + b"<message>&amp;&lt;&#65;&unknown;</message>", b"<!DOCTYPE x>",
    b"<stream:stream xmlns='jabber:client' " + b"a" * 5000,
    *NOT_UTF8.values(), codecs.BOM_UTF8 + C2S + STARTTLS + b" \n" + AUTH,
    C2S + STARTTLS + AUTH, C2S + b"<message a='>'>\xc3\xa9</message>",
])

# Pieces a stream can be made of, well-formed or not: headers, elements, markup fragments,
# byte order marks, NUL and other bytes no XML holds, non-ASCII, UTF-16 text.
PIECES = [
    C2S, S2S, COMPONENT, STARTTLS, AUTH, PROCEED, SERVER, STARTTLS[:-2] + b">", b"</starttls>",
    b" ", b"\r\n", b"\t", b"<", b">", b"/>", b"'", b'"', b"=", b"</", b"<message>", b"</message>",
    b"</stream:stream>", b"<!--", b"-->", b"<![CDATA[", b"]]>", b"<?", b"?>", b"<!", b"&amp;",
    b"&#x20;", b"&", b";", b"a", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE,
    codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, b"\x00", b"\x01", b"\x80", b"\xc0", b"\xc3",
    b"\xff", "é".encode(), "\u2028".encode(), "\U0001f600".encode(), "<a>".encode("utf-16-le"),
    b"\x16\x03\x01\x02\x00",
]
STREAMS = st.one_of(
    DOCUMENTS,
    st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=6)), max_size=16).map(
        b"".join),
    st.tuples(st.sampled_from([C2S, S2S, C2S + STARTTLS, codecs.BOM_UTF8 + C2S]),
              st.lists(st.sampled_from(PIECES), max_size=12)).map(
        lambda t: t[0] + b"".join(t[1])),
)
LIMITS = st.sampled_from([(4096, 65536), (None, 65536), (64, 32), (300, 200)])


@settings(max_examples=400, deadline=None)
@given(doc=STREAMS, cuts=st.lists(st.integers(min_value=0), max_size=20), limits=LIMITS)
def test_reader_split_invariance(doc: bytes, cuts: list[int],
                                 limits: tuple[int | None, int]) -> None:
    def reader() -> StreamReader:
        return StreamReader(*limits)

    whole = reader().feed(doc)
    assert feed_all(reader(), split(doc, cuts)) == whole
    assert feed_all(reader(), byte_by_byte(doc)) == whole
    assert sum(isinstance(e, ProtocolError) for e in whole) <= 1
    assert sum(isinstance(e, StreamHeader) for e in whole) <= 1


def tracker_events(tracker: StartTLSTracker, chunks: list[bytes], side: str) -> list:
    feed = tracker.client_data if side == "client" else tracker.server_data
    return [e for chunk in chunks for e in feed(chunk)]


@settings(max_examples=400, deadline=None)
@given(doc=STREAMS, cuts=st.lists(st.integers(min_value=0), max_size=20),
       require=st.booleans(), side=st.sampled_from(["client", "server"]))
def test_tracker_split_invariance(doc: bytes, cuts: list[int], require: bool, side: str) -> None:
    def tracker() -> StartTLSTracker:
        made = StartTLSTracker(require_starttls=require, max_cleartext_bytes=300)
        if side == "server":
            made.client_data(C2S + STARTTLS)
        return made

    whole = tracker_events(tracker(), [doc], side)
    assert tracker_events(tracker(), split(doc, cuts), side) == whole
    assert tracker_events(tracker(), byte_by_byte(doc), side) == whole


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8))
def test_reader_never_raises_on_garbage(data: bytes, cuts: list[int]) -> None:
    reader = StreamReader(max_header_bytes=512, max_token_bytes=128)
    events = feed_all(reader, split(data, cuts))
    assert sum(isinstance(e, ProtocolError) for e in events) <= 1
    assert sum(isinstance(e, StreamHeader) for e in events) <= 1
    assert reader.buffered <= 128


def test_server_between_elements_only_at_a_top_level_boundary() -> None:
    """Where the gateway may put a <stream:error> of its own on shutdown: never inside the
    server's stream header, a stanza or a tag cut between two reads."""
    from xmppgw.wire.stream import StartTLSTracker

    tracker = StartTLSTracker()
    tracker.client_data(b"<stream:stream xmlns='jabber:client' "
                        b"xmlns:stream='http://etherx.jabber.org/streams' to='a.test'>")
    assert not tracker.server_between_elements()
    tracker.server_data(b"<stream:stream xmlns='jabber:client' "
                        b"xmlns:stream='http://etherx.jabber.org/streams' from='a.test'>")
    assert tracker.server_between_elements()
    tracker.server_data(b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>")
    assert not tracker.server_between_elements()
    tracker.server_data(b"</mechanisms></stream:features>\n ")
    assert tracker.server_between_elements()
    tracker.server_data(b"<message")
    assert not tracker.server_between_elements()


# --- the cleartext phase holds no parser between elements --------------------------------


def test_no_parser_is_held_between_top_level_elements() -> None:
    """A stream parked after its header (or the server's features) holds no expat parser:
    that parser was about 12 KB of a parked stream's 27 KB (issue 15)."""
    client, server = StreamReader(), StreamReader(None)
    client.feed(C2S)
    server.feed(SERVER)
    assert client._parser is None and server._parser is None
    client.feed(b"<message><body>hel")  # inside an element: the parser is kept
    assert client._parser is not None
    client.feed(b"lo</body></message>  ")
    assert client._parser is None


def test_a_resumed_parser_reads_as_the_first_did() -> None:
    """The next element after a rest sees the root's namespace prefixes, and the root's
    end tag still ends the stream where it ends."""
    reader = StreamReader()
    assert len(reader.feed(S2S)) == 1
    assert reader.feed(b" <db:result from='a.test' to='b.test'>key</db:result>") == [
        Element("jabber:server:dialback", "result")]
    assert reader.feed(b"<x:y/>")[0].condition == "bad-namespace-prefix"
    reader = StreamReader()
    reader.feed(C2S)
    reader.feed(b"<presence/>")
    assert reader.feed(b"</stream:stream>  ") == []
    assert reader.feed(b"x")[0].text == "data after </stream:stream>"
    reader = StreamReader()
    reader.feed(C2S)
    assert reader.feed(b"</stream:other>")[0].condition == "not-well-formed"


def test_a_parked_connection_costs_a_few_kilobytes() -> None:
    """tracemalloc's count of what 300 connections parked before STARTTLS hold (header and
    features exchanged): about 3.2 KB each here, 27 KB before the parser was let go between
    elements; the bound leaves room for other Python builds. Nothing is timed."""
    import gc
    import tracemalloc

    from tests.unit.test_connection import FEATURES, HEADER, SERVER_HEADER, World

    world = World()

    def parked(i: int) -> object:
        conn, _ = world.connection(peer=(f"198.51.100.{i % 250}", 40000 + i))
        conn.client_data(HEADER, 0.1)
        conn.attempt_connected(1, 0.2)
        conn.attempt_data(1, SERVER_HEADER + FEATURES, 0.3)
        return conn

    for i in range(50):
        parked(i)  # warm: interned names, caches
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        held = [parked(i) for i in range(300)]
        gc.collect()
        per_stream = (tracemalloc.get_traced_memory()[0] - base) / len(held)
    finally:
        tracemalloc.stop()
    assert per_stream < 8192, per_stream
    assert all(c.tracker.client._parser is None and c.tracker.server._parser is None
               for c in held)


def test_nothing_is_left_to_read_once_opaque() -> None:
    """After `<proceed/>` the connection holds no tracker, reader or parser; a direct-TLS
    connection lets its ClientHello reader go once the hello is read."""
    from tests.unit.test_connection import (
        FEATURES,
        HEADER,
        PROCEED,
        SERVER_HEADER,
        STARTTLS,
        World,
        hello_record,
    )

    world = World()
    conn, _ = world.connection()
    conn.client_data(HEADER, 0.1)
    conn.attempt_connected(1, 0.2)
    conn.attempt_data(1, SERVER_HEADER + FEATURES, 0.3)
    conn.client_data(STARTTLS, 0.4)
    conn.real_data(PROCEED, 0.5)
    assert conn.tracker is None and conn.hello is None and conn.buffer is None
    world = World(mode="directtls")
    conn, _ = world.connection()
    conn.client_data(hello_record(), 0.1)
    assert conn.hello is None and conn.tracker is None
