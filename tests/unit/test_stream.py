"""The stream reader and STARTTLS tracker: each rule, and split-invariance under hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmppgw.wire.stream import (
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


def test_require_starttls_refuses_auth_before_tls() -> None:
    tracker = StartTLSTracker(require_starttls=True)
    events = tracker.client_data(C2S + b"<iq type='get' id='1'><query xmlns='jabber:iq:register'/></iq>")
    assert tracker.opaque is None and not any(isinstance(e, ProtocolError) for e in events)
    events = tracker.client_data(AUTH[:70])  # start tag complete, credentials not yet
    assert events[-1] == ProtocolError("policy-violation", "authentication before STARTTLS refused")


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
    events = tracker.client_data(C2S + b"<iq id='1' type='get'><x/></iq>" * 100)
    assert events[-1] == ProtocolError("policy-violation", "over 1000 bytes before STARTTLS")


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
])


@settings(max_examples=300, deadline=None)
@given(doc=DOCUMENTS, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_reader_split_invariance(doc: bytes, cuts: list[int]) -> None:
    whole = StreamReader().feed(doc)
    assert feed_all(StreamReader(), split(doc, cuts)) == whole
    assert feed_all(StreamReader(), byte_by_byte(doc)) == whole


@settings(max_examples=300, deadline=None)
@given(doc=DOCUMENTS, cuts=st.lists(st.integers(min_value=0), max_size=20),
       require=st.booleans())
def test_tracker_split_invariance(doc: bytes, cuts: list[int], require: bool) -> None:
    whole = StartTLSTracker(require_starttls=require).client_data(doc)
    tracker = StartTLSTracker(require_starttls=require)
    assert [e for chunk in split(doc, cuts) for e in tracker.client_data(chunk)] == whole


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8))
def test_reader_never_raises_on_garbage(data: bytes, cuts: list[int]) -> None:
    events = feed_all(StreamReader(max_header_bytes=512), split(data, cuts))
    assert sum(isinstance(e, ProtocolError) for e in events) <= 1
    assert sum(isinstance(e, StreamHeader) for e in events) <= 1


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
