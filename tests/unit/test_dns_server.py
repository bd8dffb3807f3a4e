"""`answer()`: the embedded server's DNS rules, one query at a time, no sockets.

Each rule of the module docstring is a test here; hypothesis then throws random bytes and
mangled queries at it: it must never raise, never answer a response, and never send more
than the query invites."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmppgw import config
from xmppgw.dns.records import Health, Published, build
from xmppgw.dns.server import answer

BASE = """[gateway]
domains = ["example.test"]

[[vserver]]
name = "P5222"
virtual = "192.0.2.1:5222"
serverfarm = "XMPP"

[[vserver]]
name = "P5269"
virtual = "192.0.2.1:5269"
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
{reals}
[srv]
listen = "127.0.0.1:5353"
"""


def published_with(reals: int) -> Published:
    text = BASE.format(reals="".join(f'[[serverfarm.real]]\naddress = "10.0.{i // 200}.{i % 200 + 1}"\n'
                                     for i in range(reals)))
    cfg = config.loads(text)
    return build(cfg, Health.from_config(cfg), 42)


SMALL = published_with(3)
LARGE = published_with(40)  # the SRV answer alone is over 1232 bytes
MIDDLE = published_with(8)  # the SRV answer fits in 512 bytes, its additional A do not


def query(name: str, rdtype: str = "A", *, edns: int = -1, payload: int = 1232,
          rdclass: str = "IN", rd: bool = True) -> dns.message.QueryMessage:
    q = dns.message.make_query(name, rdtype, rdclass, use_edns=edns, payload=payload)
    if not rd:
        q.flags &= ~dns.flags.RD
    return q


def ask(q: dns.message.Message, published: Published = SMALL, max_udp: int | None = None,
        over_tcp: bool = False) -> dns.message.Message:
    wire = answer(q.to_wire(), published, max_udp, over_tcp)
    assert wire is not None
    response = dns.message.from_wire(wire)
    assert response.id == q.id
    assert response.flags & dns.flags.QR
    assert not response.flags & dns.flags.RA  # never a recursive resolver
    return response


def texts(response: dns.message.Message, section: str = "answer") -> set[str]:
    return {f"{r.name} {dns.rdatatype.to_text(r.rdtype)} {rd}"
            for r in getattr(response, section) for rd in r}


# --- answers ---------------------------------------------------------------------------------


def test_srv_answer_is_authoritative_with_the_targets_addresses() -> None:
    response = ask(query("_xmpp-client._tcp.example.test", "SRV"))
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert response.flags & dns.flags.RD  # copied from the query, RA stays clear
    assert texts(response) == {
        "_xmpp-client._tcp.example.test. SRV 10 1 5222 xmpp.example.test.",
        "_xmpp-client._tcp.example.test. SRV 20 8 5222 real-10-0-0-1.example.test.",
        "_xmpp-client._tcp.example.test. SRV 20 8 5222 real-10-0-0-2.example.test.",
        "_xmpp-client._tcp.example.test. SRV 20 8 5222 real-10-0-0-3.example.test."}
    assert texts(response, "additional") == {
        "xmpp.example.test. A 192.0.2.1", "real-10-0-0-1.example.test. A 10.0.0.1",
        "real-10-0-0-2.example.test. A 10.0.0.2", "real-10-0-0-3.example.test. A 10.0.0.3"}
    assert all(r.ttl == 30 for r in response.answer)


@pytest.mark.parametrize(("name", "rdtype", "expected"), [
    ("xmpp.example.test", "A", "xmpp.example.test. A 192.0.2.1"),
    ("real-10-0-0-2.example.test", "A", "real-10-0-0-2.example.test. A 10.0.0.2"),
    ("example.test", "NS", "example.test. NS ns.example.test."),
    ("example.test", "SOA",
     "example.test. SOA ns.example.test. hostmaster.example.test. 42 3600 600 604800 30"),
    ("ns.example.test", "A", "ns.example.test. A 127.0.0.1"),
    ("_xmpp-server._tcp.example.test", "SRV",
     "_xmpp-server._tcp.example.test. SRV 10 1 5269 xmpp.example.test."),
])
def test_each_record_type(name: str, rdtype: str, expected: str) -> None:
    response = ask(query(name, rdtype))
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert expected in texts(response)


def test_ns_answer_carries_its_glue() -> None:
    response = ask(query("example.test", "NS"))
    assert texts(response, "additional") == {"ns.example.test. A 127.0.0.1"}


def test_names_are_case_insensitive_and_the_question_keeps_its_case() -> None:
    q = query("_XMPP-Client._TCP.Example.TEST", "srv")
    response = ask(q)
    assert response.rcode() == dns.rcode.NOERROR and len(response.answer) == 1
    wire = answer(q.to_wire(), SMALL)
    assert wire is not None and b"\x0c_XMPP-Client\x04_TCP\x07Example\x04TEST" in wire


# --- negative answers ------------------------------------------------------------------------


def soa_in_authority(response: dns.message.Message) -> bool:
    return [dns.rdatatype.to_text(r.rdtype) for r in response.authority] == ["SOA"]


@pytest.mark.parametrize("name", ["www.example.test", "foo.xmpp.example.test",
                                  "_xmpp-client._udp.example.test", "_jabber._tcp.example.test"])
def test_nxdomain_for_names_that_do_not_exist(name: str) -> None:
    response = ask(query(name, "A"))
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA and not response.answer
    assert soa_in_authority(response)  # RFC 2308: resolvers cache the negative answer


@pytest.mark.parametrize(("name", "rdtype"), [
    ("xmpp.example.test", "AAAA"),                 # a host with an A only
    ("_xmpps-server._tcp.example.test", "SRV"),    # a service with no target: NODATA
    ("_tcp.example.test", "A"),                    # an empty non-terminal
    ("_xmpp-client._tcp.example.test", "TXT"),
    ("example.test", "MX"),
])
def test_nodata_for_names_that_exist_without_the_type(name: str, rdtype: str) -> None:
    response = ask(query(name, rdtype))
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA and not response.answer
    assert soa_in_authority(response)


@pytest.mark.parametrize(("name", "rdtype", "rdclass"), [
    ("example.org", "A", "IN"), ("test", "SOA", "IN"), (".", "NS", "IN"),
    ("example.testing", "A", "IN"),  # a suffix of the string, not a parent in the tree
    ("version.bind", "TXT", "CH"), ("example.test", "SOA", "CH"),
    ("example.test", "AXFR", "IN"), ("example.test", "IXFR", "IN"),
])
def test_refused_outside_the_zones_for_other_classes_and_transfers(
        name: str, rdtype: str, rdclass: str) -> None:
    response = ask(query(name, rdtype, rdclass=rdclass))
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & dns.flags.AA and not response.answer


def test_rd_clear_stays_clear() -> None:
    response = ask(query("example.org", "A", rd=False))
    assert not response.flags & (dns.flags.RD | dns.flags.RA)


# --- malformed and unusual queries -----------------------------------------------------------


def test_responses_and_runts_get_nothing() -> None:
    wire = bytearray(query("example.test", "SOA").to_wire())
    wire[2] |= 0x80  # QR: this is a response
    assert answer(bytes(wire), SMALL) is None
    assert answer(b"", SMALL) is None
    assert answer(b"\x12\x34\x01\x00\x00\x01", SMALL) is None  # shorter than a header


@pytest.mark.parametrize("wire", [
    b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",                  # question missing
    b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",           # label past the end
    b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer loop
    b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01junk",  # trailing bytes
])
def test_formerr_when_the_header_is_readable_and_the_rest_is_not(wire: bytes) -> None:
    reply = answer(wire, SMALL)
    assert reply is not None and len(reply) <= len(wire)
    response = dns.message.from_wire(reply)
    assert response.id == 0xABCD and response.rcode() == dns.rcode.FORMERR
    assert response.flags & dns.flags.RD


def test_formerr_for_two_questions_or_records_in_a_query() -> None:
    q = query("example.test", "SOA")
    q.question.append(query("xmpp.example.test", "A").question[0])
    assert ask(q).rcode() == dns.rcode.FORMERR
    q = query("example.test", "SOA")
    q.answer.append(ask(query("xmpp.example.test")).answer[0])
    assert ask(q).rcode() == dns.rcode.FORMERR


def test_other_opcodes_are_not_implemented() -> None:
    for opcode in (dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS):
        wire = bytearray(query("example.test", "SOA").to_wire())
        wire[2] = (wire[2] & 0x87) | (opcode << 3)
        reply = answer(bytes(wire), SMALL)
        assert reply is not None and len(reply) == 12
        assert reply[3] & 0x0F == dns.rcode.NOTIMP and reply[:2] == bytes(wire[:2])


def test_edns_version_1_gets_badvers() -> None:
    response = ask(query("example.test", "SOA", edns=1))
    assert response.rcode() == dns.rcode.BADVERS and response.edns == 0


def test_any_gets_one_rrset_and_no_additional() -> None:
    response = ask(query("_xmpp-client._tcp.example.test", "ANY"))
    assert [dns.rdatatype.to_text(r.rdtype) for r in response.answer] == ["SRV"]
    assert not response.additional
    apex = ask(query("example.test", "ANY"))
    assert len(apex.answer) == 1 and apex.rcode() == dns.rcode.NOERROR
    empty = ask(query("_xmpps-server._tcp.example.test", "ANY"))
    assert not empty.answer and soa_in_authority(empty)


# --- sizes: TC, EDNS, TCP --------------------------------------------------------------------


def test_without_edns_an_answer_over_512_bytes_is_truncated() -> None:
    q = query("_xmpp-client._tcp.example.test", "SRV")
    wire = answer(q.to_wire(), LARGE)
    assert wire is not None and len(wire) <= 512
    response = dns.message.from_wire(wire)
    assert response.flags & dns.flags.TC and not response.answer
    assert response.flags & dns.flags.AA


def test_over_tcp_the_whole_answer_goes() -> None:
    response = ask(query("_xmpp-client._tcp.example.test", "SRV"), LARGE, over_tcp=True)
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == 41  # the gateway and 40 reals
    assert len(response.additional) == 41


def test_edns_size_is_honoured_up_to_the_servers_cap() -> None:
    q = query("_xmpp-client._tcp.example.test", "SRV", edns=0, payload=4096)
    capped = answer(q.to_wire(), LARGE)  # default cap 1232
    assert capped is not None and len(capped) <= 1232
    assert dns.message.from_wire(capped).flags & dns.flags.TC
    full = answer(q.to_wire(), LARGE, max_udp=4096)
    assert full is not None and 1232 < len(full) <= 4096
    response = dns.message.from_wire(full)
    assert not response.flags & dns.flags.TC and len(response.answer[0]) == 41
    assert response.payload == 4096  # what we advertise: the cap


def test_a_tiny_edns_size_counts_as_512() -> None:
    q = query("_xmpp-client._tcp.example.test", "SRV", edns=0, payload=100)
    wire = answer(q.to_wire(), MIDDLE)
    assert wire is not None and 100 < len(wire) <= 512


def test_additional_records_are_dropped_before_the_answer_is_truncated() -> None:
    q = query("_xmpp-client._tcp.example.test", "SRV")
    wire = answer(q.to_wire(), MIDDLE)
    assert wire is not None and len(wire) <= 512
    response = dns.message.from_wire(wire)
    assert not response.flags & dns.flags.TC  # RFC 2181 §9: no TC for missing additionals
    assert len(response.answer[0]) == 9 and not response.additional


# --- hypothesis: whatever arrives --------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_and_never_amplify(wire: bytes) -> None:
    reply = answer(wire, LARGE)
    if reply is None:
        return
    assert len(reply) >= 12 and reply[:2] == wire[:2] and reply[2] & 0x80
    assert len(reply) <= 512  # none of these carries an EDNS size that invites more


NAMES = st.sampled_from(["example.test", "_xmpp-client._tcp.example.test", "xmpp.example.test",
                         "_tcp.example.test", "nope.example.test", "example.org", "."])
TYPES = st.sampled_from(["A", "AAAA", "SRV", "NS", "SOA", "ANY", "TXT", "AXFR", "MX"])


@settings(max_examples=500, deadline=None)
@given(NAMES, TYPES, st.integers(-1, 0), st.integers(0, 65535), st.sampled_from([None, 4096]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4))
def test_queries_mangled_or_not_get_at_most_what_they_invite(
        name: str, rdtype: str, edns: int, payload: int, max_udp: int | None,
        flips: list[tuple[int, int]]) -> None:
    q = query(name, rdtype, edns=edns, payload=payload)
    wire = bytearray(q.to_wire())
    for position, value in flips:
        if position < len(wire):
            wire[position] = value
    reply = answer(bytes(wire), LARGE, max_udp)
    if reply is None:
        assert len(wire) < 12 or wire[2] & 0x80
        return
    limit = 512 if edns < 0 else max(512, min(payload, max_udp or 1232))
    if flips:  # a flipped byte may have turned EDNS on, or changed the size it asks for
        limit = max(limit, max_udp or 1232)
    assert len(reply) <= limit
    struct.unpack("!HHHHHH", reply[:12])


def same_answer(a: bytes | None, b: bytes | None) -> bool:
    """Equal but for the order of records inside an RRset (dnspython shuffles them)."""
    if a is None or b is None or a[3] & 0x0F not in (0, 3):
        return a == b
    x, y = dns.message.from_wire(a), dns.message.from_wire(b)

    def records(message: dns.message.Message, part: str) -> list[str]:
        return sorted(f"{rrset.name} {rrset.ttl} {rdata}"
                      for rrset in getattr(message, part) for rdata in rrset)

    return (x.id, x.flags, x.rcode(), x.question) == (y.id, y.flags, y.rcode(), y.question) \
        and all(records(x, part) == records(y, part)
                for part in ("answer", "authority", "additional"))


@given(st.binary(max_size=80), st.integers(0, 0xFFFF))
@settings(max_examples=200, deadline=None)
def test_the_answer_cache_answers_as_answer_does(junk: bytes, qid: int) -> None:
    """Whatever the query, a cached answer is the uncached one (records shuffled alike),
    with the asking query's ID; a new published set is never answered from the old one's."""
    from xmppgw.dns.server import AnswerCache

    cache = AnswerCache(size=4, variants=2)
    good = query("_xmpp-client._tcp.example.test", "SRV").to_wire()
    asked = qid.to_bytes(2, "big") + good[2:]
    for wire in (good, junk, good[:2] + junk, asked, good, asked, good):
        assert same_answer(cache.answer(wire, SMALL, 1232), answer(wire, SMALL, 1232))
        assert same_answer(cache.answer(wire, SMALL, 1232, over_tcp=True),
                           answer(wire, SMALL, 1232, over_tcp=True))
    assert same_answer(cache.answer(good, LARGE, 1232), answer(good, LARGE, 1232))


def test_the_answer_cache_keeps_shuffling_and_only_good_answers() -> None:
    from xmppgw.dns.server import AnswerCache

    cache = AnswerCache(size=2, variants=32)
    srv = query("_xmpp-client._tcp.example.test", "SRV").to_wire()
    firsts = set()
    for _ in range(200):
        reply = dns.message.from_wire(cache.answer(srv, SMALL, 1232))  # type: ignore[arg-type]
        firsts.add(str(reply.answer[0][0].target))
    # The order still varies. (All 32 variants starting alike: p = 4 x 4^-32, never.)
    assert len(firsts) > 1
    for name in ("nothing.example.test", "xmpp.example.test"):
        cache.answer(query(name, "SRV").to_wire(), SMALL, 1232)
    cache.answer(b"\x00\x01" + b"\x01" * 30, SMALL, 1232)  # FORMERR: not kept
    assert len(cache._answers) == 2
