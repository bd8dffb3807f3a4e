"""What the benchmark's processes share: addresses, the XMPP bytes on the wire, small helpers.

Everything the benchmark starts listens on 127.0.7.0/24 (backends, client source addresses)
or 127.0.8.0/24 (the proxies), so it can run beside the project's integration tests.
"""

from __future__ import annotations

import socket

BACKEND_HOST = "127.0.7.1"  # the backends, and the "direct" target
HAPROXY_HOST = "127.0.8.1"
XMPPGW_HOST = "127.0.8.2"
RSS_HAPROXY_HOST = "127.0.8.3"  # fresh proxies for the memory figure
RSS_XMPPGW_HOST = "127.0.8.4"
HAPROXY_BEST_HOST = "127.0.8.5"  # HAProxy at its best: splicing on, tuned buffers
# 127.0.8.6: bench.py profile's xmppgw without the profiler
TWO_HAPROXY_HOST = "127.0.8.7"  # nbthread 2
TWO_XMPPGW_HOST = "127.0.8.8"  # workers = 2
FLOOR_HOST = "127.0.8.9"  # bench/floor.py: the least a Python/uvloop relay does per open

# One port per service, the same on every target: target = (host, PORTS[service]).
PORTS = {"xmpp": 5222, "xmpps": 5223, "sink": 5301, "source": 5302, "iperf": 5201}

# The client's c2s stream header, exactly as the issue gives it.
HEADER = (b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
# The backend's answer: its own header and stream features offering STARTTLS.
REPLY = (b"<?xml version='1.0'?><stream:stream from='example.test' id='bench-0001' "
         b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
         b"version='1.0'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
         b"<required/></starttls></stream:features>")
FEATURES_END = b"</stream:features>"
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
PRESENCE = b"<presence/>"  # a first stanza without STARTTLS: the gateway stops parsing


def _client_hello(sni: bytes) -> bytes:
    """A TLS 1.3 ClientHello record naming `sni` and ALPN xmpp-client (XEP-0368), as a
    direct-TLS client opens; enough for a proxy that routes on SNI, not for a TLS server."""
    def vec(data: bytes, size: int) -> bytes:
        return len(data).to_bytes(size, "big") + data

    def ext(kind: int, data: bytes) -> bytes:
        return kind.to_bytes(2, "big") + vec(data, 2)

    exts = (ext(0, vec(b"\x00" + vec(sni, 2), 2))
            + ext(16, vec(vec(b"xmpp-client", 1), 2))
            + ext(43, vec(b"\x03\x04\x03\x03", 1)))
    body = (b"\x03\x03" + bytes(32) + vec(bytes(32), 1) + vec(b"\x13\x01", 2)
            + vec(b"\x00", 1) + vec(exts, 2))
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + vec(handshake, 2)


# Direct TLS (XEP-0368, port 5223): the client's ClientHello, and the backend's first bytes
# (a record that stands for its ServerHello: the proxies relay it without looking).
CLIENT_HELLO = _client_hello(b"example.test")
SERVER_HELLO = b"\x16\x03\x03\x00\x40" + bytes(64)


def stanza(size: int = 100) -> bytes:
    """A chat message of exactly `size` bytes."""
    head, tail = b"<message to='b@example.test' type='chat'><body>", b"</body></message>"
    return head + b"x" * (size - len(head) - len(tail)) + tail


STANZA = stanza(100)
CHUNK = 1 << 20
PAYLOAD = (STANZA * (CHUNK // len(STANZA) + 1))[:CHUNK]  # 1 MiB of stanza-like bytes


def header_end(buf: bytes | bytearray) -> int:
    """Index just past the client's `<stream:stream ...>` tag, or -1 if not complete yet."""
    start = buf.find(b"<stream:stream")
    if start < 0:
        return -1
    end = buf.find(b">", start)
    return -1 if end < 0 else end + 1


def source_ip(group: int, index: int) -> str:
    """Client source addresses 127.0.7.16-.255: several, so ephemeral ports never run out."""
    return f"127.0.7.{16 + (group * 16 + index) % 240}"


def client_socket(src: str) -> socket.socket:
    """A TCP socket bound to `src`, its port chosen at connect() (IP_BIND_ADDRESS_NO_PORT),
    so the kernel can reuse a port for another destination."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((src, 0))
    return sock


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)
