"""A fuzz target per reader: mutated inputs, each fed whole, a byte at a time and in random
splits, must give the same events, only the reader's documented ones, with bounded state.

The inputs are seeded corpora (what clients and servers really send) mutated at random:
hostile pieces inserted (byte order marks, NUL, non-ASCII, UTF-16, markup fragments),
bytes replaced, slices dropped or repeated, two inputs spliced. The generator is seeded,
so a failure names the seed and case that reproduce it.

CI runs a bounded number of cases per reader; more on demand:

    XMPPGW_FUZZ_CASES=20000 XMPPGW_FUZZ_SEED=7 pytest tests/unit/test_fuzz.py

The count and seed each target ran with are printed in the test summary ("fuzz cases").
"""

from __future__ import annotations

import codecs
import itertools
import os
import random
from collections.abc import Callable, Iterator

import pytest

from tests.unit.test_clienthello import GOOD as GOOD_HELLO
from tests.unit.test_clienthello import REAL as REAL_HELLO
from tests.unit.test_clienthello import alpn_ext, handshake, hello_body, records, sni_ext
from tests.unit.test_probes_wire import EJABBERD_C2S, EJABBERD_S2S, HOST_UNKNOWN
from tests.unit.test_stream import AUTH, C2S, COMPONENT, PROCEED, S2S, SERVER, STARTTLS
from xmppgw.health.wire import GreetingReader, judge
from xmppgw.wire.clienthello import ClientHello, ClientHelloReader, HelloError
from xmppgw.wire.errors import CONDITIONS
from xmppgw.wire.proxyproto import (
    NEED_MORE,
    ProxyError,
    ProxyHeader,
    ProxyHeaderReader,
    encode_v1,
    encode_v2,
)
from xmppgw.wire.stream import (
    Element,
    Opaque,
    ProtocolError,
    StartTLSTracker,
    StreamHeader,
    StreamReader,
)

CASES = int(os.environ.get("XMPPGW_FUZZ_CASES", "500"))
SEED = int(os.environ.get("XMPPGW_FUZZ_SEED", "20240601"))

HOSTILE = [
    codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE,
    codecs.BOM_UTF32_BE, b"\x00", b"\x00\x00", b"\x01", b"\x1b", b"\x7f", b"\x80", b"\xc0",
    b"\xc3", b"\xc3\xa9", b"\xed\xa0\x80", b"\xef\xbf\xbf", b"\xf4\x90\x80\x80", b"\xff",
    "\U0001f600".encode(), "١".encode(), "<stream:stream>".encode("utf-16-le"),
    b"<", b">", b"/>", b"</", b"'", b'"', b"=", b"&", b";", b"&amp;", b"&#0;", b"&#x10FFFF;",
    b"<!--", b"-->", b"<![CDATA[", b"]]>", b"<?", b"?>", b"<!DOCTYPE x>", b"]", b" ",
    b"\r\n", b"\t", b"\x16\x03\x01", b"\x16\x03\x03\x00\x05", b"\r\n\r\n\x00\r\nQUIT\n",
    b"PROXY ", b"TCP4 ", b"..", b".", b":", b"%",
]

STREAM_SEEDS = [
    C2S, S2S, COMPONENT, C2S + STARTTLS, C2S + AUTH, S2S + STARTTLS, C2S + b" \n" + STARTTLS,
    C2S + STARTTLS + AUTH, C2S + b"<message to='a@b'><body>x</body></message>",
    C2S + b"</stream:stream>", codecs.BOM_UTF8 + C2S, STARTTLS[:-2] + b"></starttls>",
]
SERVER_SEEDS = [SERVER, SERVER + PROCEED, EJABBERD_C2S, EJABBERD_S2S, HOST_UNKNOWN,
                SERVER + b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"]
HELLO_SEEDS = [REAL_HELLO, GOOD_HELLO,
               records(handshake(hello_body(sni_ext(b"example.test") +
                                            alpn_ext(b"xmpp-server"))), [7, 40])]
PROXY_SEEDS = [
    encode_v1(("192.0.2.1", 56324), ("192.0.2.11", 5222)) + C2S,
    encode_v1(("2001:db8::1", 1), ("2001:db8::2", 5269)),
    encode_v2(("192.0.2.1", 56324), ("192.0.2.11", 5222), alpn=b"xmpp-client",
              authority="example.test") + REAL_HELLO[:20],
    encode_v2(("2001:db8::1", 1), ("2001:db8::2", 5269)), encode_v2(None, None, local=True),
    b"PROXY UNKNOWN\r\n",
]


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One seed changed by one to four random operations."""
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(data))
        op = rng.randrange(6)
        if op == 0:
            data[at:at] = rng.choice(HOSTILE)
        elif op == 1 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 2:
            del data[at:at + rng.randint(1, 16)]
        elif op == 3:
            data[at:at] = data[at:at + rng.randint(1, 32)]
        elif op == 4:
            other = rng.choice(seeds)
            data[at:] = other[rng.randint(0, len(other)):]
        else:
            del data[at:]
    return bytes(data)


def splits(rng: random.Random, data: bytes) -> Iterator[list[bytes]]:
    """The same bytes whole, a byte at a time, and cut at random points (twice)."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for _ in range(2):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12)))
                      if len(data) > 1 else [])
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in itertools.pairwise(bounds)]


def fuzz(record_property: Callable[[str, object], None], seeds: list[bytes],
         run: Callable[[list[bytes]], object]) -> None:
    """Every case's result must be the same for each split of it."""
    rng = random.Random(SEED)
    for case in range(CASES):
        data = mutate(rng, seeds)
        results = [run(chunks) for chunks in splits(rng, data)]
        assert all(r == results[0] for r in results), (
            f"seed {SEED} case {case}: {data!r} splits differently: {results}")
    record_property("fuzz_cases", f"{CASES} cases, seed {SEED}")


# --- the targets --------------------------------------------------------------------------


def read_stream(reader: StreamReader, chunks: list[bytes]) -> list[object]:
    events: list[object] = []
    for chunk in chunks:
        new = reader.feed(chunk)
        assert all(isinstance(e, StreamHeader | Element | ProtocolError) for e in new), new
        events += new
        assert reader.buffered <= reader.max_token_bytes
    errors = [e for e in events if isinstance(e, ProtocolError)]
    assert errors in ([], events[-1:]) and all(e.condition in CONDITIONS for e in errors)
    headers = [e for e in events if isinstance(e, StreamHeader)]
    assert headers in ([], events[:1])
    return events


@pytest.mark.parametrize("limits", [(4096, 65536), (None, 65536), (128, 64)])
def test_fuzz_stream_reader(record_property: Callable[[str, object], None],
                            limits: tuple[int | None, int]) -> None:
    fuzz(record_property, STREAM_SEEDS + SERVER_SEEDS,
         lambda chunks: read_stream(StreamReader(*limits), chunks))


def track(require: bool, side: str, chunks: list[bytes]) -> list[object]:
    tracker = StartTLSTracker(require_starttls=require, max_cleartext_bytes=600)
    if side == "server":
        tracker.client_data(C2S + STARTTLS)
    feed = tracker.client_data if side == "client" else tracker.server_data
    events: list[object] = []
    for chunk in chunks:
        new = feed(chunk)
        assert all(isinstance(e, StreamHeader | Element | ProtocolError | Opaque)
                   for e in new), new
        events += new
    decisive = [e for e in events if isinstance(e, ProtocolError | Opaque)]
    assert decisive in ([], events[-1:])  # one verdict at most, and nothing after it
    return events


@pytest.mark.parametrize(("require", "side"), [(False, "client"), (True, "client"),
                                               (False, "server")])
def test_fuzz_starttls_tracker(record_property: Callable[[str, object], None],
                               require: bool, side: str) -> None:
    seeds = STREAM_SEEDS if side == "client" else SERVER_SEEDS
    fuzz(record_property, seeds, lambda chunks: track(require, side, chunks))


def greet(chunks: list[bytes]) -> object:
    reader = GreetingReader()
    for chunk in chunks:
        reader.feed(chunk)
        assert reader.buffered <= reader.max_token_bytes
    return (reader.error, reader.header, reader.first, reader.children, reader.complete,
            judge(reader, "c2s", True))


def test_fuzz_probe_greeting_reader(record_property: Callable[[str, object], None]) -> None:
    fuzz(record_property, SERVER_SEEDS, greet)


def hello(chunks: list[bytes]) -> list[object]:
    reader = ClientHelloReader(max_bytes=1024)
    events: list[object] = []
    for chunk in chunks:
        new = reader.feed(chunk)
        assert all(isinstance(e, ClientHello | HelloError) for e in new), new
        events += new
        assert reader.buffered <= 1024
    assert len(events) <= 1
    return events


def test_fuzz_client_hello_reader(record_property: Callable[[str, object], None]) -> None:
    fuzz(record_property, HELLO_SEEDS, hello)


def proxy(chunks: list[bytes]) -> object:
    """The verdict, with `rest` made whole (it holds what came in the deciding chunk)."""
    reader = ProxyHeaderReader()
    for i, chunk in enumerate(chunks):
        event = reader.feed(chunk)
        assert event is NEED_MORE or isinstance(event, ProxyHeader | ProxyError), event
        assert reader.buffered <= 16 + reader.max_v2_length
        if isinstance(event, ProxyHeader):
            return (event.version, event.command, event.family, event.src, event.dst,
                    dict(event.tlvs), event.consumed, event.rest + b"".join(chunks[i + 1:]))
        if isinstance(event, ProxyError):
            return event
    return NEED_MORE


def test_fuzz_proxy_header_reader(record_property: Callable[[str, object], None]) -> None:
    fuzz(record_property, PROXY_SEEDS, proxy)
