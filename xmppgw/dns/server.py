"""The embedded authoritative DNS server: `answer()` (pure) and a thin asyncio UDP/TCP layer.

`answer(wire, published, max_udp, over_tcp)` turns one query into one response, or None
when nothing must be sent. It never raises, whatever the bytes, because one bad datagram
must not stop a server that clients depend on to find the gateway. The rules:
- authoritative only: AA set inside the zones, RA never set, REFUSED for any name outside
  them (no recursion, no open resolver);
- NXDOMAIN for a name that does not exist; NOERROR with no answer (NODATA) for a name that
  exists without the type asked, the zone's SOA in the authority section of both
  (RFC 2308), so resolvers cache the negative answer for the TTL;
- FORMERR when the header is readable and the rest is not; a packet too short to carry an
  ID, or a response (QR set), gets nothing: answering responses invites loops;
- no answer bigger than the query invites: 512 bytes without EDNS, else the query's EDNS
  size capped by `max_udp`. What does not fit loses its additional records first, then
  goes out with TC set and no records, and the client retries over TCP (RFC 7766);
- ANY gets one RRset (RFC 8482 §4.1), AXFR/IXFR are REFUSED, other opcodes NOTIMP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from xmppgw.config import Address
from xmppgw.dns.records import ANY_PREFERENCE, Published, ZoneRecords

RdataType = dns.rdatatype.RdataType
HEADER = 12
PLAIN_UDP = 512             # RFC 1035 §4.2.1: without EDNS a UDP answer stays within this
DEFAULT_MAX_UDP = 1232      # DNS flag day 2020: no IP fragmentation on common paths
TCP_MAX = 65535
TCP_IDLE = 10.0             # RFC 7766 §6.2.3: seconds a quiet TCP client keeps its slot
TCP_MAX_CLIENTS = 256       # beyond this, the oldest TCP connection makes room
UDP_RCVBUF = 1 << 20        # room for bursts, so a flood is dropped by the kernel, not us
PORT_ZERO_ATTEMPTS = 20     # listen port 0 (tests): tries for a number free for UDP and TCP
UDP_SEND_BACKLOG = 1 << 20  # answers waiting to be sent beyond this are dropped, not queued


def answer(wire: bytes, published: Published, max_udp: int | None = None,
           over_tcp: bool = False) -> bytes | None:
    """The response to the query `wire`, or None if nothing must be sent."""
    if len(wire) < HEADER or wire[2] & 0x80:
        return None  # no ID to answer to, or a response: answering those invites loops
    opcode = (wire[2] >> 3) & 0x0F
    if opcode != dns.opcode.QUERY:
        return _header_only(wire, dns.rcode.NOTIMP)
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # noqa: BLE001 - any undecodable query is a FORMERR, whatever the cause
        return _header_only(wire, dns.rcode.FORMERR)
    try:
        response = respond(query, published, max_udp)
        return render(response, _size_limit(query, max_udp, over_tcp))
    except Exception:  # noqa: BLE001 - a bug here must cost one answer, not the server
        return _header_only(wire, dns.rcode.SERVFAIL)


def respond(query: dns.message.Message, published: Published,
            max_udp: int | None = None) -> dns.message.Message:
    """The response message for a parsed query (no size limit applied yet)."""
    response = dns.message.make_response(query, our_payload=max_udp or DEFAULT_MAX_UDP)
    if query.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)  # RFC 6891 §6.1.3: we speak EDNS version 0
        return response
    problem = _refusal(query)
    if problem is not None:
        response.set_rcode(problem)
        return response
    question = query.question[0]
    zone = published.zone_for(question.name)
    if zone is None:
        response.set_rcode(dns.rcode.REFUSED)  # not ours: an authoritative server only
        return response
    response.flags |= dns.flags.AA
    _fill(response, zone, published, question.name, question.rdtype)
    return response


def _refusal(query: dns.message.Message) -> dns.rcode.Rcode | None:
    """The rcode for a query we will not look up, or None to look it up."""
    if len(query.question) != 1 or query.answer or query.authority:
        return dns.rcode.FORMERR
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return dns.rcode.REFUSED  # CHAOS version.bind and friends: nothing to tell
    if question.rdtype in (RdataType.AXFR, RdataType.IXFR):
        return dns.rcode.REFUSED  # no zone transfers: the records are one `xmppgw zone` away
    if question.rdtype in (RdataType.OPT, RdataType.TSIG, RdataType.TKEY):
        return dns.rcode.FORMERR  # these are not questions
    if dns.rdatatype.is_metatype(question.rdtype) and question.rdtype != RdataType.ANY:
        return dns.rcode.NOTIMP  # MAILA, MAILB
    return None


def _fill(response: dns.message.Message, zone: ZoneRecords, published: Published,
          name: Any, rdtype: RdataType) -> None:
    """Answer, NODATA or NXDOMAIN for a name in `zone`."""
    if not zone.exists(name):
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(zone.soa)
        return
    if rdtype == RdataType.ANY:
        rrset = zone.first_of(name, ANY_PREFERENCE)
    else:
        rrset = zone.find(name, rdtype)
    if rrset is None:
        response.authority.append(zone.soa)  # NODATA (RFC 2308 §2.2)
        return
    response.answer.append(rrset)
    if rdtype != RdataType.ANY:
        response.additional.extend(_additional(rrset, published))


def _additional(rrset: dns.rrset.RRset, published: Published) -> list[dns.rrset.RRset]:
    """A/AAAA of the names an SRV or NS answer points at (RFC 2782 "Additional data")."""
    if rrset.rdtype not in (RdataType.SRV, RdataType.NS):
        return []
    out: list[dns.rrset.RRset] = []
    for rdata in rrset:
        for extra in published.addresses(rdata.target):
            if extra not in out:
                out.append(extra)
    return out


def _size_limit(query: dns.message.Message, max_udp: int | None, over_tcp: bool) -> int:
    if over_tcp:
        return TCP_MAX
    if query.edns < 0:
        return PLAIN_UDP
    return max(PLAIN_UDP, min(query.payload, max_udp or DEFAULT_MAX_UDP))


def render(response: dns.message.Message, limit: int) -> bytes:
    """Wire form within `limit` bytes: drop additional records first (RFC 2181 §9: no TC
    for those), then send TC with no records, so the client retries over TCP."""
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        pass
    response.additional = []
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        pass
    response.answer = []
    response.authority = []
    response.flags |= dns.flags.TC
    return response.to_wire(max_size=limit)


def _header_only(wire: bytes, rcode: int) -> bytes:
    """A bare response header: same ID, opcode and RD, the rcode, no sections. Never
    longer than the query, so even a flood of junk cannot be amplified."""
    flags = int.from_bytes(wire[2:4], "big")
    out = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | (rcode & 0x0F)
    return wire[:2] + out.to_bytes(2, "big") + bytes(8)


# --- the asyncio layer ---------------------------------------------------------------------


class AnswerCache:
    """Answers to repeated queries without building them again.

    A response depends only on the query's bytes after its 2-byte ID, the published set,
    the transport and `max_udp` -- and on chance: dnspython shuffles the records of an
    RRset on every answer (BIND's `rrset-order random`), which spreads the clients that take
    the first SRV record of a priority instead of weighing them. So the bytes after the ID
    are the key, up to `variants` differently shuffled answers are kept per key, and a hit
    is one of them picked at random, with the asking query's ID in front.

    Building an answer with dnspython costs ~150 µs; a hit costs a dict lookup. Only
    NOERROR and NXDOMAIN answers are kept (a flood of junk must not push the real ones
    out), for at most `size` keys, and all are dropped when the published set changes."""

    def __init__(self, size: int = 4096, variants: int = 8) -> None:
        self.size = size
        self.variants = variants
        self._published: Published | None = None
        self._answers: dict[tuple[bytes, bool], list[bytes]] = {}

    def answer(self, wire: bytes, published: Published, max_udp: int | None,
               over_tcp: bool = False) -> bytes | None:
        if published is not self._published:
            self._answers.clear()
            self._published = published
        key = (wire[2:], over_tcp)
        cached = self._answers.get(key)
        if cached is not None and len(cached) >= self.variants:
            return wire[:2] + random.choice(cached)
        reply = answer(wire, published, max_udp, over_tcp)
        if reply is None or reply[3] & 0x0F not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return reply
        if cached is None:
            if len(self._answers) >= self.size:
                del self._answers[next(iter(self._answers))]  # the oldest key
            cached = self._answers[key] = []
        cached.append(reply[2:])
        return reply


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        transport = self.transport
        if transport is None or transport.get_write_buffer_size() > UDP_SEND_BACKLOG:
            return  # the kernel cannot keep up: drop, as it would, rather than grow memory
        if addr[1] == 0:
            return  # no port to answer to
        reply = self.server.cache.answer(data, self.server.published(), self.server.max_udp)
        if reply is not None:
            transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier answer: that client is gone, nothing to do


class DnsServer:
    """UDP and TCP on one address; answers from whatever `published()` returns now."""

    def __init__(self, listen: Address, published: Callable[[], Published], log: Any,
                 max_udp: int = DEFAULT_MAX_UDP, tcp_idle: float = TCP_IDLE,
                 tcp_max_clients: int = TCP_MAX_CLIENTS) -> None:
        self.listen = listen
        self.published = published
        self.log = log
        self.max_udp = max_udp
        self.tcp_idle = tcp_idle
        self.tcp_max_clients = tcp_max_clients
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._clients: dict[asyncio.StreamWriter, None] = {}  # oldest first
        self.cache = AnswerCache()

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port the kernel chose, if `listen` asked for port 0)."""
        assert self._udp is not None
        host, port = self._udp.get_extra_info("sockname")[:2]
        return host, port

    async def start(self) -> None:
        """Bind UDP and TCP; an OSError names the address (port 53 needs root or
        CAP_NET_BIND_SERVICE).

        With port 0 the kernel picks the UDP port, and TCP must take the same number, which
        another program may hold for TCP: then both are tried again on another port."""
        attempts = PORT_ZERO_ATTEMPTS if not self.listen.port else 1
        for attempt in range(1, attempts + 1):
            try:
                await self._bind()
                return
            except OSError as exc:
                await self.stop()
                if exc.errno != errno.EADDRINUSE or attempt == attempts:
                    raise OSError(exc.errno, f"dns server: cannot listen on {self.listen}: "
                                  f"{exc.strerror or exc}") from None

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        udp = _socket(self.listen, socket.SOCK_DGRAM)
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        tcp = _socket(Address(self.listen.host, self.address[1]), socket.SOCK_STREAM)
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp, limit=TCP_MAX + 2)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._clients):
                writer.close()
            await self._tcp.wait_closed()
            self._tcp = None

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """Length-prefixed queries, answered in order, until the client closes, goes quiet
        for `tcp_idle`, or sends something we drop (RFC 7766 §6.2.4 lets us close).

        At `tcp_max_clients` the oldest connection is closed to make room (RFC 7766 §6.2.3):
        connections held open and idle then cost their holder the slot, not a new client."""
        while len(self._clients) >= self.tcp_max_clients:
            oldest = next(iter(self._clients))
            del self._clients[oldest]
            oldest.close()
        self._clients[writer] = None
        try:
            while True:
                size = int.from_bytes(await self._read(reader, 2), "big")
                reply = self.cache.answer(await self._read(reader, size), self.published(),
                                          self.max_udp, over_tcp=True)
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await asyncio.wait_for(writer.drain(), self.tcp_idle)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._clients.pop(writer, None)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, size: int) -> bytes:
        return await asyncio.wait_for(reader.readexactly(size), self.tcp_idle)


def _socket(listen: Address, kind: socket.SocketKind) -> socket.socket:
    family = socket.AF_INET6 if listen.family_v6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind((listen.host, listen.port or 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
