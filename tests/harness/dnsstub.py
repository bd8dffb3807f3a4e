"""A tiny authoritative DNS server for the test servers' resolvers.

ejabberd's Erlang resolver (through ``inetrc`` -> ``{resolv_conf, ...}``) and Prosody's
lua-unbound (``unbound = { resolvconf = ... }``) can only be pointed at a nameserver on port
53; neither lets a test inject SRV records any other way. This stub answers from a mutable
table, so a test can publish ``_xmpp-server._tcp.DOMAIN`` records (e.g. pointing at the
gateway) before the servers first try to federate.

Semantics: authoritative answers; a name it knows with the asked type -> the records; a name
it knows (or an empty non-terminal above one) without that type -> NODATA; anything else ->
NXDOMAIN. TTL defaults to 0 so resolvers do not cache what a test may change.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

RecordTable = dict[dns.name.Name, dict[dns.rdatatype.RdataType, list[dns.rdata.Rdata]]]


@dataclass
class Zone:
    """The mutable record table, safe to change while the server threads answer."""

    ttl: int = 0
    records: RecordTable = field(default_factory=lambda: defaultdict(dict))
    queries: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, rdtype: dns.rdatatype.RdataType, text: str) -> None:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)
        with self.lock:
            self.records[_name(name)].setdefault(rdtype, []).append(rdata)

    def remove(self, name: str, rdtype: dns.rdatatype.RdataType | None = None) -> None:
        key = _name(name)
        with self.lock:
            if rdtype is None:
                self.records.pop(key, None)
                return
            self.records.get(key, {}).pop(rdtype, None)
            if key in self.records and not self.records[key]:
                del self.records[key]

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """Build the authoritative response to ``query`` (one question, as resolvers send)."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        with self.lock:
            self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
            rdatas = self.records.get(question.name, {}).get(question.rdtype)
            exists = any(name.is_subdomain(question.name) for name in self.records)
            if rdatas:
                rrset = dns.rrset.from_rdata_list(question.name, self.ttl, rdatas)
                response.answer.append(rrset)
        if not rdatas and not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response


def _name(text: str) -> dns.name.Name:
    """Absolute DNS name; dnspython compares and hashes names case-insensitively."""
    return dns.name.from_text(text)


def _reply_wire(zone: Zone, wire: bytes) -> bytes | None:
    """Parse one query and return the wire response, or None for garbage (dropped)."""
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # noqa: BLE001 - any undecodable datagram is simply ignored
        return None
    return zone.answer(query).to_wire()


class _UDPHandler(socketserver.BaseRequestHandler):
    server: _UDPServer

    def handle(self) -> None:
        data, sock = self.request
        reply = _reply_wire(self.server.zone, data)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TCPHandler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        """Answer length-prefixed queries until the client closes (RFC 7766 pipelining)."""
        conn: socket.socket = self.request
        conn.settimeout(10)
        try:
            while (header := _recv_exact(conn, 2)) is not None:
                wire = _recv_exact(conn, struct.unpack("!H", header)[0])
                reply = _reply_wire(self.server.zone, wire) if wire else None
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class _UDPServer(socketserver.ThreadingUDPServer):
    allow_reuse_address = False  # on UDP it would let a second stub share the port silently
    daemon_threads = True

    def __init__(self, address: tuple[str, int], zone: Zone) -> None:
        self.zone = zone
        super().__init__(address, _UDPHandler)


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128  # socketserver's default backlog of 5 drops bursts of lookups

    def __init__(self, address: tuple[str, int], zone: Zone) -> None:
        self.zone = zone
        super().__init__(address, _TCPHandler)


class DnsStub:
    """Authoritative DNS on (address, port) over UDP and TCP, answering from a mutable table.

    >>> stub = DnsStub("127.0.4.53").start()
    >>> stub.add_srv("_xmpp-server._tcp.pr.test", 0, 0, 5269, "127.0.3.1")
    >>> stub.stop()
    """

    def __init__(self, address: str, port: int = 53, ttl: int = 0) -> None:
        self.address = address
        self.port = port
        self.zone = Zone(ttl=ttl)
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> DnsStub:
        """Bind both sockets (raises OSError if taken) and serve in daemon threads."""
        try:
            for cls in (_UDPServer, _TCPServer):
                self._servers.append(cls((self.address, self.port), self.zone))
        except BaseException:
            self.stop()
            raise
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"dnsstub-{type(server).__name__}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and close the sockets; safe to call twice or after a failed start."""
        for server, thread in zip(self._servers, self._threads, strict=False):
            server.shutdown()
            thread.join(timeout=5)
        for server in self._servers:
            server.server_close()
        self._servers, self._threads = [], []

    def add_srv(self, name: str, priority: int, weight: int, port: int, target: str) -> None:
        """Add an SRV record; ``target`` may be a numeric address (ejabberd then skips the
        A lookup it would do through libc, which cannot see this stub) or ``.``."""
        self.zone.add(name, dns.rdatatype.SRV, f"{priority} {weight} {port} {_absolute(target)}")

    def add_a(self, name: str, ip: str) -> None:
        """Add an A record."""
        self.zone.add(name, dns.rdatatype.A, ip)

    def add_aaaa(self, name: str, ip: str) -> None:
        """Add an AAAA record."""
        self.zone.add(name, dns.rdatatype.AAAA, ip)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Forget ``name`` (all types) or only its records of ``rdtype`` (e.g. "SRV")."""
        self.zone.remove(name, dns.rdatatype.from_text(rdtype) if rdtype else None)

    @property
    def queries(self) -> list[tuple[str, str]]:
        """(name, type) of every query answered so far, oldest first (for assertions)."""
        with self.zone.lock:
            return list(self.zone.queries)


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."
