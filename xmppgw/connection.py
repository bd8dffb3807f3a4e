"""One client connection's life as a pure state machine (sans-IO, the h11 model).

`ClientConnection` is fed events with the time (`now`, seconds on a monotonic clock) and
answers with commands for the I/O layer to carry out, in order. It does no I/O and reads no
clock: the asyncio adapter (`xmppgw.net.session`) owns sockets, transports, timers and
splice pipes, and nothing else. Every decision is taken here: the PROXY header in
(`accept_proxy`) and out (`proxy_protocol`), admission (`[vserver.limits]`), sniffing (the
stream header or the TLS ClientHello), routing (vserver kinds, `gateway.domains`, routes),
the choice of stream error (RFC 6120 §4.9) or TLS alert (RFC 8446 §6), `require_starttls`,
the connect plan (`slb/plan.py`: connect, reassign, hedge, queue), the header and
negotiation timeouts, `<system-shutdown/>`, drains and the linger after an error.

Phases, in order (`Phase`):

    AWAIT_PROXY ─► SNIFFING ─► CONNECTING ─► CLEARTEXT_RELAY ─► OPAQUE ─► CLOSED
         └────────────┴─────────────┴──────────────┴─► LINGERING ─► CLOSED

- AWAIT_PROXY: the peer is a listed balancer; its PROXY header comes first.
- SNIFFING: reading the client's stream header (starttls mode) or ClientHello (directtls).
  The first byte is looked at before either (`_first_byte`): on a `both` vserver it decides
  (0x16, a TLS handshake record: the ClientHello; anything else: the XML stream); on a
  single-mode vserver a client speaking the other protocol is answered in its own language.
- CONNECTING: routed; the connect plan looks for a real; the client's bytes are held.
- CLEARTEXT_RELAY: a real answered; bytes flow both ways while the STARTTLS tracker watches.
- OPAQUE: TLS (or a stream we stopped following): bytes flow untouched, maybe spliced.
- LINGERING: an error was written; the client's bytes are read and dropped for LINGER_TIME.
- CLOSED: both legs are being closed; `Done` once both are gone and the record is logged.

Events are methods (`start`, `client_data`, `client_eof`, `client_lost`, `attempt_connected`,
`attempt_data`, `attempt_failed`, `real_data`, `real_eof`, `real_lost`, `handed_to_splice`,
`splice_ended`, `timer`, `wake`, `drain`, `shutdown`, `close`); each returns a list of
commands (the classes below). The machine keeps one timer: `SetTimer(at)` whenever its
earliest deadline moves; the adapter calls `timer(now)` when it fires.

Cost: a stream's setup goes through about six events, each answering a short list of small
command objects; once committed and opaque the adapter relays without calling the machine.
`bench/run.sh --rounds 1` on a busy machine, before/after this split, two runs each: stream
opens per proxy CPU-second 3,112 / 3,184 before, 3,169 / 2,676 after (within the noise of a
loaded machine); RSS per idle stream at 9k streams 3.98 / 3.88 KiB before, 4.51 / 4.59 KiB
after. Since then a spliced stream lets go of what it no longer needs (the retired client
transport, the upstream leg's, the attempts dict, the connect start time): `bench.py --only
rss`, 9k streams, median of 12 runs each: 4.07 KiB (before the split) -> 3.43 KiB.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from xmppgw.addresses import client_ip, unmapped
from xmppgw.slb.plan import (
    Abort,
    Action,
    Commit,
    Connect,
    ConnectPlan,
    Detach,
    GiveUp,
    Queued,
    Replay,
)
from xmppgw.wire import clienthello as tls
from xmppgw.wire import proxyproto
from xmppgw.wire.errors import VERSION, reply_version, stream_error, stream_header
from xmppgw.wire.stream import Opaque, ProtocolError, StartTLSTracker, StreamHeader

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from xmppgw.config import Config, VserverConfig
    from xmppgw.slb.farm import Real, Serverfarm
    from xmppgw.slb.limits import Admission

ALPN_KINDS = {"xmpp-client": "c2s", "xmpp-server": "s2s"}  # XEP-0368 §3

# While a real is being found the client is still read, so a client that leaves (FIN or
# reset) is seen at once and its attempts are dropped with no verdict on the real; past
# this many buffered bytes reading pauses until the commit (the kernel's window holds more).
MAX_CONNECT_BUFFER = 65536
# The real's cleartext (its header and features) is relayed at once but read only when it
# matters: once the client has asked for STARTTLS (the <proceed/> must be seen), when the
# gateway would write into the stream (shutdown), or past this many bytes. A stream that
# opens and closes without STARTTLS never pays for parsing the real's side.
MAX_SERVER_HELD = 16384
# After a stream error: the write side is shut, what the client still sends is read and
# dropped for this long (seconds, at most LINGER_BYTES), then the socket closes. Closing with
# unread data would send a reset that can destroy the error document in flight (HAProxy, nginx).
LINGER_TIME = 2.0
# A real that closes a stream within this many seconds of the client's last bytes, which
# the real had not prompted within this time before, is most likely answering the client's
# `</stream:stream>` (a logout): not counted by the mass-close rule (`Serverfarm.closed`).
REPLY_TIME = 1.0
# Nor does a stream younger than this (seconds since accept): a real refusing or ending a
# stream at login (a failed authentication, a quick login-logout) is not going away.
SETTLED_TIME = 2.0
LINGER_BYTES = 4 << 20

SHUTDOWN_TEXT = "the gateway is shutting down"
DRAIN_TEXT = "this node is being taken out of service"

# The first byte of a TLS connection: a handshake record (RFC 8446 §5.1, ContentType 22).
TLS_HANDSHAKE = 0x16
# First bytes of an XML stream: '<', whitespace (XML 1.0 §2.3 S) or a UTF-8 byte order mark.
XML_FIRST = frozenset(b"< \t\r\n\xef")

# Client-chosen text (the stream's `to`, SNI, ALPN names, stream error texts quoting client
# input, PROXY reasons) is cut to this many characters in log lines and in the <text/> of
# our stream errors, and a list (ALPN) to LOG_ITEMS_MAX names of at most LOG_ITEM_MAX
# characters: a client must not write kilobytes into every log line (a 6 KB ClientHello
# would put its whole ALPN list into the connection line).
LOG_TEXT_MAX = 256
LOG_ITEMS_MAX = 8
LOG_ITEM_MAX = 64


class Phase(Enum):
    # Members are singletons compared by identity: hash them by identity too, in C; Enum's
    # own __hash__ is a Python call on every `phase in KEEP_OPEN` (several per event).
    __hash__ = object.__hash__

    AWAIT_PROXY = "await_proxy"
    SNIFFING = "sniffing"
    CONNECTING = "connecting"
    CLEARTEXT_RELAY = "cleartext_relay"
    OPAQUE = "opaque"
    LINGERING = "lingering"
    CLOSED = "closed"


AWAIT_PROXY, SNIFFING, CONNECTING = Phase.AWAIT_PROXY, Phase.SNIFFING, Phase.CONNECTING
CLEARTEXT_RELAY, OPAQUE = Phase.CLEARTEXT_RELAY, Phase.OPAQUE
LINGERING, CLOSED = Phase.LINGERING, Phase.CLOSED
_BEFORE_HEADER = frozenset({AWAIT_PROXY, SNIFFING})
_RELAYING = frozenset({CLEARTEXT_RELAY, OPAQUE})
_ENDED = frozenset({LINGERING, CLOSED})
#: Phases in which a client FIN is passed on (or held for the replay) rather than closing.
KEEP_OPEN = frozenset({CONNECTING, CLEARTEXT_RELAY, OPAQUE})

CLIENT, REAL = "client", "real"
# `show conns` keeps the words it printed before the machine had finer phases.
_STATE_LABELS = {AWAIT_PROXY: "SNIFFING", SNIFFING: "SNIFFING", CONNECTING: "CONNECTING",
                 CLEARTEXT_RELAY: "RELAYING", OPAQUE: "RELAYING", LINGERING: "CLOSED",
                 CLOSED: "CLOSED"}


# --- commands ---------------------------------------------------------------------------


@dataclass(slots=True)
class SendClient:
    """Write these bytes to the client."""

    data: bytes


@dataclass(slots=True)
class SendReal:
    """Write these bytes to the real of attempt `attempt` (the committed one once relaying)."""

    attempt: int
    data: bytes


@dataclass(slots=True)
class Dial:
    """Open a TCP connection to `real` at (host, port); report it as attempt `attempt`."""

    attempt: int
    real: Real
    host: str
    port: int


@dataclass(slots=True)
class AbortAttempt:
    """Stop dialling attempt `attempt`, or reset its connection (nothing to flush)."""

    attempt: int


@dataclass(slots=True)
class Relay:
    """Attempt `attempt` won: its connection is the real's leg; relay both ways from here."""

    attempt: int


@dataclass(slots=True)
class GoOpaque:
    """Nothing left to look at: relay without the machine; `splice` allows handing both
    sockets to a zero-copy relay once no byte waits in user space."""

    splice: bool


@dataclass(slots=True)
class HalfClose:
    """Pass a FIN on: shut the write side of `side` (CLIENT or REAL)."""

    side: str


@dataclass(slots=True)
class PauseClient:
    """Stop reading the client (too much held while connecting)."""


@dataclass(slots=True)
class ResumeClient:
    """Read the client again."""


@dataclass(slots=True)
class Close:
    """Close every leg, flushing what is buffered; abort attempts; stop a splice relay.

    `linger`: instead of closing the client, shut its write side and keep reading (and
    dropping) until a later `Close()`."""

    linger: bool = False


@dataclass(slots=True)
class AbortClient:
    """Reset the client connection (a lingering client sent too much)."""


@dataclass(slots=True)
class SetTimer:
    """Call `timer(now)` at `at` (same clock as `now`); None: no timer."""

    at: float | None


@dataclass(slots=True)
class Log:
    """A log record: `level` is the logger method (info, warning)."""

    level: str
    event: str
    fields: dict[str, Any]


@dataclass(slots=True)
class Note:
    """A metrics note: `Metrics.<metric>(*args)` (only emitted when metrics are on)."""

    metric: str
    args: tuple[Any, ...]


@dataclass(slots=True)
class LimitRefused:
    """Admission refused this client (`[vserver.limits]`): count and rate-limit the log."""

    reason: str


@dataclass(slots=True, eq=False)
class EngineChanged:
    """The engine ran for `farm`: log its state changes, publish counters, wake waiters."""

    farm: Serverfarm

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EngineChanged) and other.farm is self.farm


@dataclass(slots=True)
class Done:
    """Both legs are gone and the connection is logged: forget it."""


Command = (SendClient | SendReal | Dial | AbortAttempt | Detach | Relay | GoOpaque | HalfClose
           | PauseClient | ResumeClient | Close | AbortClient | SetTimer | Log | Note
           | LimitRefused | EngineChanged | Done)

PAUSE_CLIENT, RESUME_CLIENT, ABORT_CLIENT, DONE = PauseClient(), ResumeClient(), AbortClient(), Done()
CLOSE, CLOSE_LINGER = Close(False), Close(True)


# --- what the machine reads of its surroundings ------------------------------------------


class Engine(Protocol):
    """The gateway as the machine sees it: the current config (a reload replaces it), the
    serverfarms by name, and `sync_peers(farm)`, which brings what the other workers hold of
    each real into the farm before the engine picks (a no-op with one worker)."""

    @property
    def config(self) -> Config: ...

    @property
    def farms(self) -> Mapping[str, Serverfarm]: ...

    def sync_peers(self, farm: Serverfarm) -> None: ...


class Vserver(Protocol):
    """A vserver at run time: its config (a reload may replace it) and its admission."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> VserverConfig: ...

    @property
    def admission(self) -> Admission | None: ...


class ClientConnection:
    """One accepted client connection, from accept to its log line."""

    __slots__ = (
        "admission",
        "alpn",
        "balancer_local",
        "buffer",
        "buffered",
        "bytes_from_client",
        "bytes_to_client",
        "client",
        "client_at",
        "client_fin",
        "client_gone",
        "client_prior",
        "committed",
        "connect_started",
        "domain",
        "engine",
        "error",
        "farm",
        "finished",
        "from_gateway",
        "header_at",
        "held",
        "hello",
        "kind",
        "linger_at",
        "lingered",
        "local",
        "negotiation_at",
        "notes",
        "owner",
        "paused",
        "peer",
        "phase",
        "plan",
        "proxy_header",
        "proxy_reader",
        "real",
        "real_at",
        "real_fin",
        "real_first",
        "real_open",
        "sni",
        "sniffed",
        "spliced",
        "started",
        "starttls",
        "starttls_mode",
        "timer_at",
        "tracker",
        "vserver",
        "wrong_mode",
    )

    def __init__(self, engine: Engine, vserver: Vserver, owner: object = None,
                 notes: bool = False) -> None:
        """`owner` is what the farm's queue hands back on a wake (`plan.owner`); `notes`:
        emit `Note` commands (metrics are on)."""
        self.engine = engine
        self.vserver = vserver
        self.owner = owner
        self.notes = notes
        cfg = vserver.config
        # A `both` vserver reads an XML stream until a first byte 0x16 says TLS; until then
        # (and for admission, timeouts and shutdown) it answers in XML.
        self.starttls_mode = cfg.mode != "directtls"
        self.sniffed = False  # the client's first byte has been looked at
        self.wrong_mode = False  # an XML stream on a directtls vserver: refused at its header
        self.from_gateway = 0  # bytes of the gateway's own answers, within bytes_to_client
        self.balancer_local = False  # a listed balancer's PROXY LOCAL: its own connection
        self.tracker: StartTLSTracker | None = None
        self.hello: tls.ClientHelloReader | None = None
        self.held: list[bytes] | None = None  # the real's cleartext not read yet
        if self.starttls_mode:
            self.tracker = StartTLSTracker(cfg.max_header_bytes, cfg.require_starttls)
        else:
            self.hello = tls.ClientHelloReader(cfg.max_hello_bytes)
        self.phase = SNIFFING
        self.client = "?"
        self.peer: tuple[str, int] | None = None  # the client (from PROXY when trusted)
        self.local: tuple[str, int] | None = None  # the address it connected to
        self.started = 0.0
        self.buffer: list[bytes] | None = []  # client bytes held until the commit
        self.buffered = 0
        self.proxy_reader: proxyproto.ProxyHeaderReader | None = None
        self.proxy_header: bytes | None = None  # what this connection's real legs start with
        self.admission: Admission | None = None  # the limits that counted this connection
        self.header_at: float | None = None
        self.negotiation_at: float | None = None
        self.linger_at: float | None = None
        self.timer_at: float | None = None  # the deadline last given out by SetTimer
        self.lingered = 0
        self.plan: ConnectPlan | None = None
        self.connect_started = 0.0
        self.committed = 0  # the winning attempt's id
        self.kind: str | None = None
        self.domain: str | None = None
        self.sni: str | None = None
        self.alpn: tuple[str, ...] = ()
        self.farm: Serverfarm | None = None
        self.real: Real | None = None
        self.starttls = False
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.error: str | None = None
        self.client_fin = False
        # The mass-close rule: when the client last sent bytes, when the real last sent
        # bytes, and when the real had last sent bytes before the client's last ones.
        self.client_at = self.real_at = self.client_prior = 0.0
        self.real_fin = False
        self.real_first = False  # the real's side ended the stream (not the client, not us)
        self.client_gone = False
        self.real_open = False
        self.paused = False  # reading paused while connecting
        self.spliced = False
        self.finished = False

    # --- events: the client leg ----------------------------------------------------------

    def start(self, peer: Any, local: Any, now: float) -> list[Command]:
        """The client connected from `peer` to `local` ((host, port, ...) or None when the
        kernel could not tell: then the connection ends at once, `no-peer-address`).

        Arms `header_timeout` and `negotiation_timeout`; a listed balancer's PROXY header
        is awaited before admission counts the client it names."""
        out: list[Command] = []
        self.started = now
        self.client = format_peer(peer)
        if self.notes:
            out.append(Note("opened", (self.vserver.name,)))
        if not peer or not local:
            # Reset before accept() returned. Such a connection cannot be limited per IP nor
            # announced in a PROXY header: end it.
            self.error = "no-peer-address"
            self._close(out, now)
            return self._timed(out)
        self.peer, self.local = tuple(peer[:2]), tuple(local[:2])  # type: ignore[assignment]
        cfg = self.vserver.config
        self.header_at = now + cfg.header_timeout
        self.negotiation_at = now + cfg.negotiation_timeout
        if cfg.accept_proxy and listed(self.peer[0], cfg.accept_proxy):  # type: ignore[index]
            self.phase = AWAIT_PROXY  # limits count the client it names, not the balancer
            self.proxy_reader = proxyproto.ProxyHeaderReader()
        else:
            self._admit(out, now)
        return self._timed(out)

    def client_data(self, data: bytes, now: float) -> list[Command]:
        """Bytes from the client."""
        out: list[Command] = []
        phase = self.phase
        if phase is AWAIT_PROXY:
            self._proxy_data(data, out, now)
            return self._timed(out)
        self._client_bytes(data, out, now)
        return self._timed(out)

    def _client_bytes(self, data: bytes, out: list[Command], now: float) -> None:
        self.bytes_from_client += len(data)
        self.client_prior, self.client_at = self.real_at, now
        phase = self.phase
        if phase is SNIFFING:
            if not self.sniffed:
                self.sniffed = True
                if not self._first_byte(data[0], out, now):
                    return
            self.buffer.append(data)  # type: ignore[union-attr]
            if self.tracker is not None:
                self._starttls_events(self.tracker.client_data(data), out, now)
            else:
                self._hello_events(self.hello.feed(data), out, now)  # type: ignore[union-attr]
        elif phase is CONNECTING:
            self.buffer.append(data)  # type: ignore[union-attr]
            self.buffered += len(data)
            if self.buffered > MAX_CONNECT_BUFFER and not self.paused:
                self.paused = True
                out.append(PAUSE_CLIENT)
            if self.tracker is not None:
                self._starttls_events(self.tracker.client_data(data), out, now)
        elif phase is LINGERING:
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                out.append(ABORT_CLIENT)
        elif phase is CLEARTEXT_RELAY or phase is OPAQUE:
            if self.tracker is not None:
                self._starttls_events(self.tracker.client_data(data), out, now)
                if self.phase not in _RELAYING:
                    return  # a policy violation closed the connection: do not forward
            out.append(SendReal(self.committed, data))

    def client_eof(self, now: float) -> list[Command]:
        """The client sent its FIN. Relaying: passed on to the real; otherwise the
        connection closes (see KEEP_OPEN).

        Connecting (an attempt in flight, or queued for a slot): the client has left. An
        XMPP stream needs both directions (RFC 6120 §4.4), so a client that ends its side
        before any real answered will not read one; as HAProxy's `abortonclose`, it is not
        kept in the queue nor opened on a real (`client-left`), and no real is judged by
        it."""
        out: list[Command] = []
        self.client_fin = True
        phase = self.phase
        if phase is AWAIT_PROXY:
            if not self._health_check(out):
                self.error = "bad-proxy-header"
            self.proxy_reader = None
            self._close(out, now)
        elif phase in _RELAYING:
            self._half_close(REAL, out, now)
        elif phase is CONNECTING:
            self.error = "client-left"
            self._close(out, now)
        else:
            self._health_check(out)
            self._close(out, now)
        return self._timed(out)

    def client_lost(self, now: float) -> list[Command]:
        """The client connection is gone (closed by either side, or reset); while
        connecting, as its FIN: `client-left`, no verdict on any real."""
        out: list[Command] = []
        self.client_gone = True
        self.linger_at = None
        if self.phase is LINGERING:
            self.phase = CLOSED
        else:
            if self.phase is CONNECTING:
                self.error = "client-left"
            self._health_check(out)
            self._close(out, now)
        self._finish_if_done(out, now)
        return self._timed(out)

    # --- events: attempts (before the commit) ------------------------------------------

    def attempt_connected(self, attempt: int, now: float) -> list[Command]:
        """The TCP handshake of `attempt` completed."""
        if self.plan is None:
            return [AbortAttempt(attempt)]  # a late handshake for an attempt given up
        out: list[Command] = []
        self._carry_out(self.plan.on_connected(attempt, now), out, now)
        return self._timed(out)

    def attempt_data(self, attempt: int, data: bytes, now: float) -> list[Command]:
        """The real of `attempt` sent its first bytes: it wins (see ConnectPlan)."""
        if self.plan is None:
            return []
        out: list[Command] = []
        self._carry_out(self.plan.on_response(attempt, now), out, now, data)
        return self._timed(out)

    def attempt_failed(self, attempt: int, reason: str, now: float) -> list[Command]:
        """`attempt` was refused, reset, or closed before answering (its connection is
        already dropped by the I/O layer)."""
        plan = self.plan
        if plan is None:
            return []
        out: list[Command] = []
        self._log_attempt_failure(plan.attempt(attempt).real, reason, out)
        self.engine.sync_peers(self.farm)  # type: ignore[arg-type]
        self._carry_out(plan.on_failed(attempt, now, reason), out, now)
        return self._timed(out)

    def wake(self, plan: ConnectPlan, now: float) -> list[Command]:
        """The farm took this connection off its queue: a real has room for it now."""
        if plan is not self.plan or self.phase is not CONNECTING:
            return []
        out: list[Command] = []
        self._carry_out(plan.on_wake(now), out, now)
        return self._timed(out)

    # --- events: the real's leg (after the commit) -------------------------------------

    def real_data(self, data: bytes, now: float) -> list[Command]:
        """Bytes from the committed real."""
        if self.phase in _ENDED:
            return []
        out: list[Command] = []
        self.real_at = now
        self._from_real(data, out)
        return self._timed(out)

    def real_eof(self, now: float) -> list[Command]:
        """The real sent its FIN: passed on to the client."""
        out: list[Command] = []
        self.real_fin = True
        if self.phase not in _ENDED:
            self._by_real_first(now)
            self._half_close(CLIENT, out, now)
        return self._timed(out)

    def real_lost(self, now: float) -> list[Command]:
        """The real's connection is gone: its end is reported to the engine, once."""
        out: list[Command] = []
        self.real_open = False
        if self.phase not in _ENDED:
            self._by_real_first(now)
        self._report_closed(out, now)
        self._close(out, now)
        self._finish_if_done(out, now)
        return self._timed(out)

    def _by_real_first(self, now: float) -> None:
        """The real's leg ended while the stream was open: the real's side closed first
        unless the client had already sent its FIN or gone, or the client spoke first in
        the closing exchange: bytes from the client within REPLY_TIME before this end, not
        prompted by bytes from the real just before them, are most likely a logout's
        `</stream:stream>` that the real answers and closes on (RFC 6120 §4.4). A server
        going away speaks first (`<system-shutdown/>`), the client answers, the real
        closes: that counts. Nor does a stream younger than SETTLED_TIME count.

        Timing alone, as the streams are opaque: clients that had traffic from the real
        just before logging out together look the same, hence the rule is off by default
        (`mass_close_streams = 0`)."""
        if self.client_fin or self.client_gone or now - self.started < SETTLED_TIME:
            return
        quiet = now - self.client_at >= REPLY_TIME
        prompted = self.client_at - self.client_prior < REPLY_TIME
        if quiet or prompted:
            self.real_first = True

    def handed_to_splice(self) -> None:
        """The adapter handed both sockets to a zero-copy relay (see `splice_ended`)."""
        self.spliced = True

    def _health_check(self, out: list[Command]) -> bool:
        """The connection ends: was it a listed balancer's TCP health check? One from an
        `accept_proxy` network that sent no byte at all (connect, close), or a PROXY LOCAL
        header and nothing after it (the v2 spec's form of a check). Such a one is counted
        (`health_check`) and its connection line is a debug one, not a `bad-proxy-header`
        every few seconds per balancer. True if it was one."""
        if self.error is not None:
            return False
        if self.phase is AWAIT_PROXY:
            silent = self.proxy_reader is not None and self.proxy_reader.buffered == 0
        else:
            silent = (self.phase is SNIFFING and self.balancer_local
                      and self.bytes_from_client == 0)
        if not silent:
            return False
        self.error = "health-check"
        if self.notes:
            out.append(Note("health_check", (self.vserver.name,)))
        return True

    def splice_ended(self, up: int, down: int, now: float, real_first: bool = False,
                     client_at: float = 0.0, client_prior: float = 0.0) -> list[Command]:
        """The zero-copy relay ended having moved `up` bytes client→real, `down` back;
        `real_first`: the real's socket ended first (EOF or error), not the client's and
        not a close by the gateway; `client_at`: when the relay last read client bytes
        (loop time, 0 if none), `client_prior`: when it had last read the real's before."""
        out: list[Command] = []
        if client_at > self.client_at:
            self.client_at, self.client_prior = client_at, client_prior
        if real_first and self.phase not in _ENDED:
            self._by_real_first(now)
        self.bytes_from_client += up
        self.bytes_to_client += down
        self.spliced = True
        self.real_open = False
        self._report_closed(out, now)
        self.phase = CLOSED
        self.client_gone = True
        self._finish_if_done(out, now)
        return self._timed(out)

    # --- events: timers and the gateway --------------------------------------------------

    def timer(self, now: float) -> list[Command]:
        """The timer set by the last `SetTimer` fired: handle whatever is due by `now`."""
        out: list[Command] = []
        self.timer_at = None
        while True:
            phase = self.phase
            if phase is LINGERING:
                if self.linger_at is not None and self.linger_at <= now:
                    self.linger_at = None
                    self.phase = CLOSED
                    out.append(CLOSE)
                break
            if phase is CLOSED:
                break
            due = self._due(now)
            if due is None:
                break
            if due == 0:
                self._header_timed_out(out, now)
            elif due == 1:
                self._negotiation_timed_out(out, now)
            else:
                self.engine.sync_peers(self.farm)  # type: ignore[arg-type]
                self._carry_out(self.plan.on_timer(now), out, now)  # type: ignore[union-attr]
        return self._timed(out)

    def drains(self, reals: Collection[Real], vservers: Collection[Any]) -> bool:
        """Does a drain that ended for these reals or vservers end this connection?"""
        return self.real in reals or self.vserver in vservers

    def drain(self, now: float) -> list[Command]:
        """A drain ended (`real ... no-inservice --drain`, or a vserver's): close. A stream
        still in cleartext, between two of the real's top-level elements, is told
        `<system-shutdown/>` first (RFC 6120 §4.9.3.21), as at shutdown, so its client
        reconnects at once instead of reading a bare close."""
        out: list[Command] = []
        if self.phase is CLEARTEXT_RELAY and self._server_between_elements(out):
            self._answer(stream_error("system-shutdown", DRAIN_TEXT), out)
        self.error = "drained"
        self._close(out, now)
        return self._timed(out)

    def shutdown(self, now: float) -> tuple[bool, list[Command]]:
        """The gateway is stopping. A stream we can still speak into gets
        `<system-shutdown/>` (RFC 6120 §4.9.3.21) and True: before the commit with a header
        first if needed; relaying only between two of the server's top-level elements. A
        TLS client that sent no byte we could answer in is closed (False); an opaque stream
        is left to end or time out (False)."""
        out: list[Command] = []
        told = False
        phase = self.phase
        if phase in _BEFORE_HEADER or phase is CONNECTING:
            if self.tracker is None:
                self.error = "system-shutdown"
                self._close(out, now)
            else:
                self._fail("system-shutdown", SHUTDOWN_TEXT, out, now)
                told = True
        elif phase is CLEARTEXT_RELAY and self._server_between_elements(out):
            self._answer(stream_error("system-shutdown", SHUTDOWN_TEXT), out)
            self.error = "system-shutdown"
            self._close(out, now)
            told = True
        return told, self._timed(out)

    def _server_between_elements(self, out: list[Command]) -> bool:
        """The real's stream is between top-level elements (read up to its last byte)."""
        self._read_held(out)
        return self.tracker is not None and self.tracker.server_between_elements()

    def close(self, now: float) -> list[Command]:
        """Close both legs (the gateway stops); idempotent."""
        out: list[Command] = []
        self._close(out, now)
        return self._timed(out)

    # --- what the adapter reads ----------------------------------------------------------

    @property
    def state(self) -> str:
        """For `show conns`: SNIFFING, CONNECTING, RELAYING, SPLICED or CLOSED."""
        if self.spliced and self.phase is not CLOSED:
            return "SPLICED"
        return _STATE_LABELS[self.phase]

    def proxy_header_for_real(self) -> bytes:
        """PROXY v1/v2 for a real of a `proxy_protocol` farm: the client's address and the
        one it connected to, so the real logs and limits the client, not the gateway. v2
        also names the host the client asked for (SNI or the stream's `to`). Empty when the
        farm wants none."""
        version = self.farm.config.proxy_protocol if self.farm is not None else None
        if version is None or self.peer is None or self.local is None:
            return b""
        if self.proxy_header is None:
            if version == "v1":
                self.proxy_header = proxyproto.encode_v1(self.peer, self.local)
            else:
                try:
                    self.proxy_header = proxyproto.encode_v2(self.peer, self.local,
                                                             authority=self.domain)
                except ValueError:  # a `to` no AUTHORITY TLV can carry: leave it out
                    self.proxy_header = proxyproto.encode_v2(self.peer, self.local)
        return self.proxy_header

    # --- admission and PROXY in ----------------------------------------------------------

    def _admit(self, out: list[Command], now: float) -> None:
        """`[vserver.limits]`, counted from accept (or from the PROXY header, which names the
        client): over a limit a cleartext stream gets `<policy-violation/>`, TLS a close."""
        admission = self.vserver.admission
        if admission is None or self.peer is None:
            return
        verdict = admission.admit(self.peer[0], now)
        if verdict.ok:
            self.admission = admission
            return
        reason = verdict.reason or "limit"
        out.append(LimitRefused(reason))
        if self.starttls_mode:
            self._fail("policy-violation", f"connection limit {reason} reached", out, now)
        else:
            self.error = "policy-violation"
            self._close(out, now)

    def _proxy_data(self, data: bytes, out: list[Command], now: float) -> None:
        """The PROXY header a listed balancer puts first; then the client's own bytes."""
        event = self.proxy_reader.feed(data)  # type: ignore[union-attr]
        if event is proxyproto.NEED_MORE:
            return
        self.proxy_reader = None
        if isinstance(event, proxyproto.ProxyError):
            self.error = "bad-proxy-header"
            out.append(Log("info", "proxy_refused", {
                "client": self.client, "vserver": self.vserver.name,
                "reason": clip(event.reason)}))
            self._close(out, now)
            return
        self.phase = SNIFFING
        if event.src is not None:  # LOCAL / UNKNOWN: the balancer's own connection
            self.peer, self.client = event.src, format_peer(event.src)
            self.local = event.dst or self.local
        else:
            self.balancer_local = True
        self._admit(out, now)
        if event.rest and self.phase is not CLOSED and self.phase is not LINGERING:
            self._client_bytes(event.rest, out, now)

    # --- sniffing and routing ------------------------------------------------------------

    def _first_byte(self, byte: int, out: list[Command], now: float) -> bool:
        """The client's first byte: which protocol it speaks. False if that ended it.

        `both`: 0x16 (a TLS handshake record, RFC 8446 §5.1) is direct TLS (XEP-0368), read
        as a ClientHello; anything else is read as an XML stream (STARTTLS). On a single-mode
        vserver a client speaking the other protocol is answered in its own language: a
        ClientHello on a starttls vserver gets a fatal `unexpected_message` alert (RFC 8446
        §6.2: a message not appropriate here; not `protocol_version`, which would invite a
        TLS version fallback on the same port), and an XML stream on a directtls vserver is
        read up to its header and gets `<policy-violation/>` naming the STARTTLS port (see
        `_route_stream`), instead of an alert a plain XMPP client cannot read."""
        cfg = self.vserver.config
        tls_first = byte == TLS_HANDSHAKE
        if cfg.mode == "both":
            if tls_first:
                self.starttls_mode = False
                self.tracker = None
                self.hello = tls.ClientHelloReader(cfg.max_hello_bytes)
            return True
        if cfg.mode == "starttls":
            if tls_first:
                self.starttls_mode = False
                self._fail_tls(tls.UNEXPECTED_MESSAGE,
                               "a TLS ClientHello on a STARTTLS port" + self._elsewhere(True),
                               out, now)
                return False
            return True
        if byte in XML_FIRST:  # directtls: a plain XMPP client
            self.wrong_mode = True
            self.starttls_mode = True
            self.hello = None
            self.tracker = StartTLSTracker(cfg.max_header_bytes)
        return True

    def _elsewhere(self, direct_tls: bool) -> str:
        """Where this gateway serves the other protocol: `; <what> is on port N` for an
        in-service vserver of that mode (or `both`) serving one of this vserver's kinds,
        one on the same address first; empty if there is none."""
        cfg = self.vserver.config
        modes = ("directtls", "both") if direct_tls else ("starttls", "both")
        found = [v for v in self.engine.config.vservers
                 if v.mode in modes and v.inservice and set(v.kinds) & set(cfg.kinds)]
        if not found:
            return ""
        found.sort(key=lambda v: v.virtual.host != cfg.virtual.host)
        what = "direct TLS (XEP-0368)" if direct_tls else "STARTTLS"
        return f"; {what} is on port {found[0].virtual.port}"

    def _starttls_events(self, events: list[Any], out: list[Command], now: float) -> None:
        for event in events:
            if isinstance(event, ProtocolError):
                self._fail(event.condition, event.text, out, now)
                return
            if isinstance(event, StreamHeader) and self.phase is SNIFFING:
                self._route_stream(event, out, now)
                if self.phase in _ENDED:
                    return
            elif isinstance(event, Opaque):
                self._went_opaque(event, out)

    def _route_stream(self, header: StreamHeader, out: list[Command], now: float) -> None:
        """RFC 6120 §4.7: the kind (content namespace) and `to` pick the serverfarm."""
        self.header_at = None
        self.kind = header.kind
        self.domain = header.to.lower() if header.to else None
        cfg = self.vserver.config
        if self.wrong_mode:
            self._fail("policy-violation",
                       "this port speaks direct TLS only: TLS first, then the stream"
                       + self._elsewhere(False), out, now)
            return
        if header.kind not in cfg.kinds:
            self._fail("invalid-namespace", f"{header.namespace} streams are not served here",
                       out, now)
            return
        if not self.engine.config.serves(self.domain):
            self._fail("host-unknown",
                       f"this gateway does not serve {self.domain or 'streams without to'}",
                       out, now)
            return
        farm_name = cfg.farm_for(header.kind, self.domain)
        if farm_name is None:
            if any(r.matches(header.kind, None) or r.kind == header.kind for r in cfg.routes):
                self._fail("host-unknown", f"no serverfarm for {self.domain}", out, now)
            else:
                self._fail("invalid-namespace", f"no serverfarm for {header.kind} streams",
                           out, now)
            return
        self._start_connect(farm_name, out, now)

    def _hello_events(self, events: list[tls.ClientHelloEvent], out: list[Command],
                      now: float) -> None:
        if events:
            self.hello = None  # decided: the reader's buffers are not needed again
        for event in events:
            if isinstance(event, tls.HelloError):
                self._fail_tls(event.alert, event.reason, out, now)
                return
            self._route_hello(event, out, now)

    def _route_hello(self, hello: tls.ClientHello, out: list[Command], now: float) -> None:
        """XEP-0368: SNI names the domain, ALPN (optional, so never required) the kind."""
        self.header_at = None
        # An IP literal as SNI (RFC 6066 §3 forbids it; clients send it) names no domain:
        # routed as no SNI, logged as sent.
        self.domain = hello.sni
        self.sni = hello.sni if hello.sni is not None else hello.sni_ip
        self.alpn = hello.alpn
        self.kind = next((ALPN_KINDS[p] for p in hello.alpn if p in ALPN_KINDS), None)
        cfg = self.vserver.config
        if self.kind is not None and self.kind not in cfg.kinds:
            self._fail_tls(tls.NO_APPLICATION_PROTOCOL, f"{self.kind} is not served here",
                           out, now)
            return
        if hello.sni is not None and not self.engine.config.serves(hello.sni):
            self._fail_tls(tls.UNRECOGNIZED_NAME, f"this gateway does not serve {hello.sni}",
                           out, now)
            return
        farm_name = cfg.farm_for(self.kind, self.domain)
        if farm_name is None:
            self._fail_tls(tls.UNRECOGNIZED_NAME, f"no serverfarm for {self.domain}", out, now)
            return
        self._start_connect(farm_name, out, now)

    def _went_opaque(self, event: Opaque, out: list[Command]) -> None:
        """STARTTLS `<proceed/>` (TLS follows), `<failure/>`, or a stream we stop following:
        relay without looking from here (no idle timeout once opaque)."""
        self.starttls = event.starttls
        self.tracker = None
        self.held = None
        self.negotiation_at = None
        if self.phase is CLEARTEXT_RELAY:
            self.phase = OPAQUE
            out.append(GoOpaque(True))
        # Still connecting: the commit goes opaque at once.

    # --- connecting: the ConnectPlan decides ----------------------------------------------

    def _start_connect(self, farm_name: str, out: list[Command], now: float) -> None:
        self.phase = CONNECTING
        self.connect_started = now
        farm = self.farm = self.engine.farms[farm_name]
        # The client's bytes are held until a real has answered (they may have to be
        # replayed to another real); reading goes on, up to MAX_CONNECT_BUFFER, so a client
        # that leaves is seen at once.
        self.buffered = sum(map(len, self.buffer))  # type: ignore[arg-type]
        self.plan = ConnectPlan.for_farm(farm, client_ip(self.peer[0]) if self.peer else "?")
        self.plan.owner = self.owner
        self.engine.sync_peers(farm)
        self._carry_out(self.plan.start(now), out, now)

    def _carry_out(self, actions: list[Action], out: list[Command], now: float,
                   early: bytes = b"") -> None:
        """Turn the plan's actions into commands; `early` is the real's first bytes (the
        ones that made it win)."""
        for action in actions:
            if isinstance(action, Connect):
                host, port = self._endpoint(action.real)
                out.append(Dial(action.attempt_id, action.real, host, port))
            elif isinstance(action, Replay):
                if self.buffer is not None:
                    out.append(SendReal(action.attempt_id,
                                        self.proxy_header_for_real() + b"".join(self.buffer)))
            elif isinstance(action, Commit):
                self._commit(action.attempt_id, action.real, early, out, now)
            elif isinstance(action, Abort):
                out.append(AbortAttempt(action.attempt_id))
                attempt = self.plan.attempt(action.attempt_id)  # type: ignore[union-attr]
                if attempt.reason is not None:  # a verdict: worth a line
                    self._log_attempt_failure(attempt.real, attempt.reason, out)
            elif isinstance(action, GiveUp):
                text = f"{action.reason} in serverfarm {self.farm.name}"  # type: ignore[union-attr]
                if self.starttls_mode:
                    self._fail("remote-connection-failed", text, out, now)
                else:
                    self._fail_tls(tls.INTERNAL_ERROR, text, out, now)
            elif isinstance(action, Detach):
                out.append(action)
            elif isinstance(action, Queued) and self.notes:
                out.append(Note("queued", (self.farm.name,)))  # type: ignore[union-attr]
        if self.farm is not None:
            out.append(EngineChanged(self.farm))
        if self.real is not None:
            self.plan = None  # committed: the real owns the connection; free the attempts

    def _endpoint(self, real: Real) -> tuple[str, int]:
        """Where to reach `real`: direct TLS from a `both` vserver goes to its direct-TLS
        port (`directtls_port`, the real's, else the farm's, 5223 by default); every other
        stream to the real's own port, else the vserver's (IOS `nat server`)."""
        cfg = self.vserver.config
        if cfg.mode == "both" and not self.starttls_mode and self.farm is not None:
            return self.farm.config.directtls_endpoint(real.config)
        return real.endpoint(cfg.virtual.port)

    def _commit(self, attempt: int, real: Real, early: bytes, out: list[Command],
                now: float) -> None:
        """The real answered: it owns the connection; relay what it sent, wake the client."""
        self.real = real
        self.committed = attempt
        self.real_open = True
        self.buffer = None
        self.buffered = 0
        farm = self.farm
        if self.notes:
            out.append(Note("committed", (self.vserver.name, farm.name, real.name,  # type: ignore[union-attr]
                                          now - self.connect_started)))
        self.connect_started = 0.0  # read only here: a relayed stream holds no float for it
        if self.engine.config.gateway.log_connect:  # HAProxy's `option logasap`
            out.append(Log("info", "connected", {
                "client": self.client, "vserver": self.vserver.name, "kind": self.kind,
                "to": clip(self.domain), "sni": clip(self.sni),
                "farm": farm.name,  # type: ignore[union-attr]
                "real": real.name}))
        out.append(Relay(attempt))
        if self.tracker is None:  # TLS from the first byte, or opaque while connecting
            self.negotiation_at = None
            self.phase = OPAQUE
            out.append(GoOpaque(True))  # direct TLS is as opaque as after <proceed/>
        else:
            self.phase = CLEARTEXT_RELAY
        if early:
            self._from_real(early, out)
        if self.paused:  # (a client FIN while connecting closed the connection instead)
            self.paused = False
            out.append(RESUME_CLIENT)

    def _from_real(self, data: bytes, out: list[Command]) -> None:
        self.bytes_to_client += len(data)
        tracker = self.tracker
        if tracker is not None:
            held = self.held
            if tracker.starttls_requested or (
                    (sum(map(len, held)) if held else 0) + len(data) > MAX_SERVER_HELD):
                self._read_held(out)
                self._read_server(data, out)
            elif held is None:
                self.held = [data]
            else:
                held.append(data)
        out.append(SendClient(data))

    def _read_held(self, out: list[Command]) -> None:
        """Read what the real sent that was relayed unread (see MAX_SERVER_HELD)."""
        held, self.held = self.held, None
        if held:
            self._read_server(b"".join(held), out)

    def _read_server(self, data: bytes, out: list[Command]) -> None:
        if self.tracker is not None:
            for event in self.tracker.server_data(data):
                if isinstance(event, Opaque):
                    self._went_opaque(event, out)

    def _log_attempt_failure(self, real: Real, reason: str, out: list[Command]) -> None:
        out.append(Log("warning", "real_attempt_failed", {
            "farm": self.farm.name, "real": real.name,  # type: ignore[union-attr]
            "client": self.client, "reason": reason}))

    def _report_closed(self, out: list[Command], now: float) -> None:
        if self.real is not None and self.farm is not None:
            # The plan reported the success (farm.connected) and was freed at the commit;
            # the connection's end is reported here, once.
            burst = self.farm.closed(self.real, now, self.real_first)
            if burst is not None:
                out.append(Log("warning", "real_mass_close", {
                    "farm": burst.farm, "real": burst.real, "closes": burst.closes,
                    "held": burst.held, "still_open": burst.still_open, "window": burst.window,
                    "action": "failed" if burst.failed else "kept: last available real"}))
            out.append(EngineChanged(self.farm))

    # --- timers ----------------------------------------------------------------------------

    def _due(self, now: float) -> int | None:
        """The earliest deadline due by `now`: 0 header, 1 negotiation, 2 the plan's."""
        best: tuple[float, int] | None = None
        if self.header_at is not None and self.header_at <= now:
            best = (self.header_at, 0)
        if self.negotiation_at is not None and self.negotiation_at <= now and (
                best is None or self.negotiation_at < best[0]):
            best = (self.negotiation_at, 1)
        plan = self.plan
        if plan is not None and not plan.done and self.phase is CONNECTING:
            at = plan.deadline
            if at is not None and at <= now and (best is None or at < best[0]):
                best = (at, 2)
        return None if best is None else best[1]

    def _deadline(self) -> float | None:
        phase = self.phase
        if phase is LINGERING:
            return self.linger_at
        if phase is CLOSED:
            return None
        at = self.header_at
        if self.negotiation_at is not None and (at is None or self.negotiation_at < at):
            at = self.negotiation_at
        plan = self.plan
        if phase is CONNECTING and plan is not None and not plan.done:
            p = plan.deadline
            if p is not None and (at is None or p < at):
                at = p
        return at

    def _timed(self, out: list[Command]) -> list[Command]:
        """Append SetTimer when the earliest deadline moved."""
        at = self._deadline()
        if at != self.timer_at:
            self.timer_at = at
            out.append(SetTimer(at))
        return out

    def _header_timed_out(self, out: list[Command], now: float) -> None:
        self.header_at = None
        if self.tracker is not None:
            self._fail("connection-timeout",
                       f"no stream header within {self.vserver.config.header_timeout:g} s",
                       out, now)
        else:
            self.error = "hello-timeout"
            self._close(out, now)

    def _negotiation_timed_out(self, out: list[Command], now: float) -> None:
        """The cleartext phase (header, features, STARTTLS, or the ClientHello and the
        connect) outlived `negotiation_timeout`: a parked stream must not hold two sockets
        for ever (there is rightly no idle timeout once a stream is opaque)."""
        self.negotiation_at = None
        text = f"no TLS within {self.vserver.config.negotiation_timeout:g} s"
        if self.starttls_mode:
            self._fail("connection-timeout", text, out, now)
        else:
            self.error = "negotiation-timeout"
            out.append(Log("info", "tls_alert", {"client": self.client,
                                                 "vserver": self.vserver.name, "alert": None,
                                                 "reason": text}))
            self._close(out, now)

    # --- ending ----------------------------------------------------------------------------

    def _fail(self, condition: str, text: str, out: list[Command], now: float) -> None:
        """Answer with a stream error (RFC 6120 §4.9) and close both legs, lingering.

        A client that has no stream header from us yet gets one first (§4.9.1.2), in its
        own content namespace, `to` its `from`, `from` as §4.9.1.3 says (`_error_from`)."""
        if self.phase in _ENDED:
            return
        self.error = condition
        text = clip(text)  # type: ignore[assignment]  # it may quote the client
        if not self.client_gone:
            head = b""
            if self.bytes_to_client == 0:
                header = self.tracker.header if self.tracker is not None else None
                head = stream_header(
                    namespace=header.namespace if header else "jabber:client",
                    from_=self._error_from(),
                    to=header.from_ if header else None,
                    dialback=bool(header and header.dialback),
                    # §4.7.5: the lower of the client's version and ours; none if it sent
                    # none; ours if its header never parsed.
                    version=reply_version(header.version) if header else VERSION,
                )
            self._answer(head + stream_error(condition, text), out)
        out.append(Log("info", "stream_error", {"client": self.client,
                                                "vserver": self.vserver.name,
                                                "condition": condition, "text": text}))
        self._close(out, now, linger=True)

    def _fail_tls(self, alert: int, reason: str, out: list[Command], now: float) -> None:
        """A TLS client gets a TLS answer: a fatal alert (RFC 8446 §6), then close."""
        if self.phase in _ENDED:
            return
        self.error = f"tls-alert-{alert}"
        if not self.client_gone:
            self._answer(tls.alert_record(alert), out)
        out.append(Log("info", "tls_alert", {"client": self.client,
                                             "vserver": self.vserver.name, "alert": alert,
                                             "reason": clip(reason)}))
        self._close(out, now, linger=True)

    def _answer(self, data: bytes, out: list[Command]) -> None:
        """Send the gateway's own answer (a stream error, an alert): counted in
        bytes_to_client like a real's bytes, and apart (`from_gateway`) for the per-real
        metrics, which count only what came from the real."""
        self.bytes_to_client += len(data)
        self.from_gateway += len(data)
        out.append(SendClient(data))

    def _error_from(self) -> str | None:
        """§4.9.1.3: the domain asked for if served, else the gateway's own name, else none."""
        gw = self.engine.config
        if self.domain and gw.gateway.domains and gw.serves(self.domain):
            return self.domain
        return gw.gateway.name

    def _half_close(self, side: str, out: list[Command], now: float) -> None:
        """Pass a FIN on; once both directions have ended, close."""
        if self.client_fin and self.real_fin:
            self._close(out, now)
        else:
            out.append(HalfClose(side))

    def _close(self, out: list[Command], now: float, linger: bool = False) -> None:
        """Close both legs; idempotent. The client left first: no verdict on reals.

        `linger` (after an error written to the client): unless the client has gone or
        sent its FIN, read and drop what it still sends for up to LINGER_TIME, so the error
        reaches it instead of a reset."""
        if self.phase in _ENDED:
            return
        self.header_at = self.negotiation_at = None
        if self.plan is not None and not self.plan.done:
            self.plan.cancel(now)  # the I/O layer aborts every attempt on Close
        if linger and not self.client_gone and not self.client_fin:
            self.phase = LINGERING
            self.lingered = 0
            self.linger_at = now + LINGER_TIME
            out.append(CLOSE_LINGER)
        else:
            self.phase = CLOSED
            out.append(CLOSE)
        self.buffer = None
        self.tracker = None
        self.held = None
        self.hello = None

    def _finish_if_done(self, out: list[Command], now: float) -> None:
        if not self.client_gone or self.real_open or self.finished:
            return
        self.finished = True
        if self.admission is not None and self.peer is not None:
            self.admission.release(self.peer[0], now)
        farm = self.farm.name if self.farm is not None else None
        real = self.real.name if self.real is not None else None
        if self.notes:
            out.append(Note("closed", (self.vserver.name, self.error, self.bytes_from_client,
                                       self.bytes_to_client, farm, real, self.from_gateway)))
        # A balancer's health check every few seconds is not worth an info line.
        level = "debug" if self.error == "health-check" else "info"
        out.append(Log(level, "connection", {
            "client": self.client, "vserver": self.vserver.name,
            "mode": "starttls" if self.starttls_mode else "directtls", "kind": self.kind,
            "to": clip(self.domain), "sni": clip(self.sni), "alpn": clip_items(self.alpn),
            "starttls": self.starttls, "spliced": self.spliced, "farm": farm, "real": real,
            "real_port": self._endpoint(self.real)[1] if self.real is not None else None,
            "bytes_from_client": self.bytes_from_client,
            "bytes_to_client": self.bytes_to_client,
            "duration": round(now - self.started, 3), "error": self.error}))
        out.append(DONE)


def clip(text: str | None, limit: int = LOG_TEXT_MAX) -> str | None:
    """Client-chosen `text` cut to `limit` characters, saying how much was cut."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text) - limit} more)"


def clip_items(items: tuple[str, ...]) -> list[str] | None:
    """A client-chosen list (ALPN names) for a log line: at most LOG_ITEMS_MAX names of at
    most LOG_ITEM_MAX characters, then one `...(N more)` entry; None when empty."""
    if not items:
        return None
    out = [clip(i, LOG_ITEM_MAX) for i in items[:LOG_ITEMS_MAX]]
    if len(items) > LOG_ITEMS_MAX:
        out.append(f"...({len(items) - LOG_ITEMS_MAX} more)")
    return out  # type: ignore[return-value]


def listed(ip: str, networks: tuple[Any, ...]) -> bool:
    """Is the peer one of the balancers a PROXY header is believed from? (An IPv4-mapped
    IPv6 peer counts as its IPv4 address.)"""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    address = unmapped(address)
    return any(address.version == net.version and address in net for net in networks)


def format_peer(peer: Any) -> str:
    """`host:port`, `[v6]:port`, or `?` when unknown."""
    if not peer:
        return "?"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
