"""One client connection's I/O: the asyncio adapter of `xmppgw.connection.ClientConnection`.

The machine decides everything (sniff, route, the connect plan, stream errors, timeouts,
drains, shutdown); this module owns the sockets, transports, the one timer and the splice
pipes, feeds the machine events with the loop's clock and carries out the commands it
answers. Both legs are asyncio Protocols: no task per direction, and flow control by pausing
the reading side when the writing side's buffer is full, so a slow peer never grows memory
without bound. Once a stream is opaque bytes skip the machine (`direct`), and may move to a
zero-copy splice relay.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Any

from xmppgw.connection import (
    CLIENT,
    KEEP_OPEN,
    OPAQUE,
    AbortAttempt,
    AbortClient,
    ClientConnection,
    Close,
    Command,
    Dial,
    Done,
    EngineChanged,
    GoOpaque,
    HalfClose,
    LimitRefused,
    Log,
    Note,
    PauseClient,
    Relay,
    ResumeClient,
    SendClient,
    SendReal,
    SetTimer,
)
from xmppgw.net.sockopts import apply_keepalive
from xmppgw.net.splice import SpliceRelay
from xmppgw.slb.plan import ConnectPlan, Detach, DetachedAttempt

if TYPE_CHECKING:
    from xmppgw.config import Keepalive
    from xmppgw.net.host import SessionHost, VserverHandle
    from xmppgw.slb.farm import Real

# Kept importable from here: tests and tools read them as session constants.
from xmppgw.connection import LINGER_BYTES, LINGER_TIME, MAX_CONNECT_BUFFER  # noqa: F401

# The attempts of a session with none in flight: one shared empty dict (only `_dial` adds
# to a session's own), so an idle relayed stream carries no dict of its own.
_NO_LEGS: dict[int, UpstreamLeg] = {}


class ClientSession(asyncio.Protocol):
    """The accepted client connection: its transport, its attempts and relay legs, its
    timer; the machine (`conn`) holds the rest."""

    __slots__ = ("conn", "direct", "host", "legs", "loop", "relay", "splice_wanted", "timer",
                 "timer_when", "transport", "upstream", "vserver")

    def __init__(self, host: SessionHost, vserver: VserverHandle,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.host = host
        self.vserver = vserver
        self.loop = loop or asyncio.get_running_loop()
        self.conn = ClientConnection(host, vserver, self, host.metrics is not None)
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamLeg | None = None
        self.legs: dict[int, UpstreamLeg] = _NO_LEGS  # attempts in flight, by attempt id
        self.relay: SpliceRelay | None = None  # the zero-copy relay, once handed over
        self.timer: asyncio.TimerHandle | None = None
        self.timer_when = 0.0  # when `timer` fires (loop time)
        self.splice_wanted = False
        self.direct = False  # committed and opaque: bytes go straight through

    # --- what the gateway reads and calls (see net/host.py) ------------------------------

    @property
    def client(self) -> str:
        return self.conn.client

    @property
    def real(self) -> Real | None:
        return self.conn.real

    @property
    def started(self) -> float:
        """Loop time of the accept."""
        return self.conn.started

    def drain(self, reals: Any, vservers: Any) -> bool:
        """A drain ended for these reals or vservers: close if it is ours (True)."""
        if not self.conn.drains(reals, vservers):
            return False
        self.run(self.conn.drain(self.loop.time()))
        return True

    def system_shutdown(self) -> bool:
        """The gateway is stopping; True if the client was told `<system-shutdown/>`."""
        told, commands = self.conn.shutdown(self.loop.time())
        self.run(commands)
        return told

    def close(self) -> None:
        """Close both legs; idempotent."""
        self.run(self.conn.close(self.loop.time()))

    def resume(self, plan: ConnectPlan) -> None:
        """The farm took this connection off its queue (`plan.owner` is this session)."""
        self.run(self.conn.wake(plan, self.loop.time()))

    def upstream_keepalive(self, keepalive: Keepalive) -> None:
        """Called by the gateway's periodic sweep; once per upstream leg."""
        leg = self.upstream
        if leg is not None and not leg.keepalive and leg.transport is not None:
            leg.keepalive = True
            apply_keepalive(leg.transport.get_extra_info("socket"), keepalive)

    # --- the client leg --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.host.sessions.add(self)  # (keepalive: inherited from the listening socket)
        self.run(self.conn.start(transport.get_extra_info("peername"),
                                 transport.get_extra_info("sockname"), self.loop.time()))

    def data_received(self, data: bytes) -> None:
        if self.direct:
            conn = self.conn
            conn.bytes_from_client += len(data)
            conn.client_prior, conn.client_at = conn.real_at, self.loop.time()
            self.upstream.transport.write(data)  # type: ignore[union-attr]
            if self.splice_wanted:
                self.try_splice()
            return
        self.run(self.conn.client_data(data, self.loop.time()))

    def eof_received(self) -> bool:
        self.run(self.conn.client_eof(self.loop.time()))
        return self.conn.phase in KEEP_OPEN

    def connection_lost(self, exc: Exception | None) -> None:
        if self.relay is not None:
            return  # the transport let go after the handover: the splice relay owns the socket
        self.run(self.conn.client_lost(self.loop.time()))

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()
        if self.splice_wanted:
            self.try_splice()

    # --- the real's leg, once committed ---------------------------------------------------

    def from_real(self, data: bytes) -> None:
        if self.direct:
            self.conn.bytes_to_client += len(data)
            self.conn.real_at = self.loop.time()
            self.transport.write(data)  # type: ignore[union-attr]
            if self.splice_wanted:
                self.try_splice()
            return
        self.run(self.conn.real_data(data, self.loop.time()))

    def real_eof(self) -> bool:
        self.run(self.conn.real_eof(self.loop.time()))
        return True

    def real_lost(self) -> None:
        self.upstream = None
        self.run(self.conn.real_lost(self.loop.time()))

    # --- attempts (an UpstreamLeg before the commit) ---------------------------------------

    def attempt_connected(self, leg: UpstreamLeg) -> None:
        if self.legs.get(leg.attempt_id) is not leg:
            leg.abort()  # a late handshake for an attempt already given up
            return
        self.run(self.conn.attempt_connected(leg.attempt_id, self.loop.time()))

    def attempt_data(self, leg: UpstreamLeg, data: bytes) -> None:
        if self.legs.get(leg.attempt_id) is leg:
            self.run(self.conn.attempt_data(leg.attempt_id, data, self.loop.time()))

    def attempt_failed(self, leg: UpstreamLeg, reason: str) -> None:
        if self.legs.pop(leg.attempt_id, None) is not leg:
            return
        leg.abort()
        self.run(self.conn.attempt_failed(leg.attempt_id, reason, self.loop.time()))

    def connect_failed(self, leg: UpstreamLeg, exc: OSError) -> None:
        """The TCP connect of `leg` failed (refused, unreachable...)."""
        reason = exc.strerror or type(exc).__name__
        if leg.verdict is not None:
            leg.orphan_ended(lambda now: leg.verdict.on_failed(now, reason),  # type: ignore[union-attr]
                             reason)
        else:
            self.attempt_failed(leg, reason)

    # --- carrying out the machine's commands -----------------------------------------------

    def run(self, commands: list[Command]) -> None:
        """Carry out `commands` in order (see xmppgw.connection)."""
        for command in commands:
            kind = type(command)
            if kind is SendReal:
                leg = self.upstream or self.legs.get(command.attempt)  # type: ignore[union-attr]
                if leg is not None and leg.transport is not None:
                    leg.transport.write(command.data)  # type: ignore[union-attr]
            elif kind is SendClient:
                self.transport.write(command.data)  # type: ignore[union-attr]
            elif kind is SetTimer:
                self._set_timer(command.at)  # type: ignore[union-attr]
            elif kind is EngineChanged:
                self.host.engine_changed(command.farm)  # type: ignore[union-attr]
            elif kind is Log:
                getattr(self.host.log, command.level)(command.event, **command.fields)  # type: ignore[union-attr]
            elif kind is Note:
                getattr(self.host.metrics, command.metric)(*command.args)  # type: ignore[union-attr]
            elif kind is Dial:
                self._dial(command)  # type: ignore[arg-type]
            elif kind is Relay:
                self._relay(command.attempt)  # type: ignore[union-attr]
            elif kind is GoOpaque:
                self.direct = True
                self.splice_wanted = command.splice and self.host.pipes is not None  # type: ignore[union-attr]
            elif kind is Close:
                self._close(command.linger)  # type: ignore[union-attr]
            elif kind is Done:
                self.host.sessions.discard(self)
            elif kind is AbortAttempt:
                leg = self.legs.pop(command.attempt, None)  # type: ignore[union-attr]
                if leg is not None:
                    leg.abort()
            elif kind is Detach:
                leg = self.legs.pop(command.attempt_id, None)  # type: ignore[union-attr]
                if leg is not None:
                    leg.detach(command.verdict)  # type: ignore[union-attr]
                else:
                    command.verdict.cancel(self.loop.time())  # type: ignore[union-attr]
            elif kind is HalfClose:
                self._half_close(command.side)  # type: ignore[union-attr]
            elif kind is PauseClient:
                self.transport.pause_reading()  # type: ignore[union-attr]
            elif kind is ResumeClient:
                self.transport.resume_reading()  # type: ignore[union-attr]
            elif kind is AbortClient:
                self.transport.abort()  # type: ignore[union-attr]
            elif kind is LimitRefused:
                self.vserver.note_refusal(self.host.log, self.conn.client, command.reason,  # type: ignore[union-attr]
                                          self.loop.time())
                if self.host.metrics is not None:
                    self.host.metrics.limit_refused(self.vserver.name, command.reason)  # type: ignore[union-attr]
        if self.splice_wanted:
            self.try_splice()

    def _set_timer(self, at: float | None) -> None:
        """Keep one loop timer at or before the machine's deadline `at`. A deadline that
        moves later (header read -> connect timeout -> response -> negotiation, four times
        in a stream's first milliseconds) keeps the armed timer, which re-arms itself when
        it fires early (`_timer_fired`); only an earlier deadline or none replaces it."""
        timer = self.timer
        if timer is not None:
            if at is not None and self.timer_when <= at:
                return
            timer.cancel()
            self.timer = None
        if at is not None:
            self.timer = self.loop.call_at(at, self._timer_fired)
            self.timer_when = at

    def _timer_fired(self) -> None:
        self.timer = None
        at, now = self.conn.timer_at, self.loop.time()
        if at is None:
            return
        if now < at:
            if self.timer_when < at:  # armed for a deadline that has moved later since
                self.timer = self.loop.call_at(at, self._timer_fired)
                self.timer_when = at
                return
            now = at  # the loop may run a timer a clock tick early
        self.run(self.conn.timer(now))

    def _dial(self, dial: Dial) -> None:
        leg = UpstreamLeg(self, dial.attempt, dial.real)
        if self.legs is _NO_LEGS:
            self.legs = {}
        self.legs[dial.attempt] = leg
        # The leg is its own protocol factory and the task's done callback: no coroutine of
        # ours and no closure per attempt (asyncio offers no connect without a task).
        leg.task = self.loop.create_task(self.loop.create_connection(leg, dial.host, dial.port))
        leg.task.add_done_callback(leg.connect_done)

    def _relay(self, attempt: int) -> None:
        """The attempt won: its leg is the real's; every other attempt is dropped."""
        leg = self.legs.pop(attempt)
        for other in self.legs.values():
            other.abort()
        self.legs = _NO_LEGS
        self.upstream = leg

    def _half_close(self, side: str) -> None:
        transport = self.transport if side == CLIENT else (
            self.upstream.transport if self.upstream is not None else None)
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
        else:
            self.close()

    def _close(self, linger: bool) -> None:
        """Close both legs, flushing what is buffered; with `linger` the client's write side
        is shut and its bytes are read (and dropped by the machine) until the next Close."""
        self.direct = False
        self.splice_wanted = False
        for leg in self.legs.values():
            leg.abort()
        self.legs = _NO_LEGS
        if self.relay is not None:
            self.relay.close()  # reports the end through _splice_ended
        transport = self.transport
        if transport is not None:
            if linger and not transport.is_closing() and transport.can_write_eof():
                transport.write_eof()  # after the buffered error document
                transport.resume_reading()
            else:
                transport.close()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    # --- zero-copy relay --------------------------------------------------------------------

    def try_splice(self) -> None:
        """Hand both sockets to a zero-copy relay, at a moment no byte waits in user space.

        Called when the stream goes opaque and again after writes and when a side drains,
        until both write buffers are empty. A half-closed stream stays on the copy relay.
        """
        upstream = self.upstream
        if not self.direct or upstream is None or self.conn.phase is not OPAQUE:
            return
        client_t, upstream_t = self.transport, upstream.transport
        if client_t.get_write_buffer_size() or upstream_t.get_write_buffer_size():  # type: ignore[union-attr]
            return
        self.splice_wanted = False
        if self.conn.client_fin or self.conn.real_fin:
            return
        try:
            client = _take_socket(client_t)  # type: ignore[arg-type]
            try:
                real = _take_socket(upstream_t)  # type: ignore[arg-type]
            except OSError:
                client.close()
                raise
        except OSError:
            return  # stay on the copy relay
        apply_keepalive(real, self.host.config.gateway.keepalive)  # a long-lived stream
        self.conn.handed_to_splice()
        self.upstream = None
        self.direct = False
        self.relay = SpliceRelay(self.loop, self.host.pipes, client, real,  # type: ignore[arg-type]
                                 self._splice_ended)
        client_t.abort()  # the transports let go of their descriptors, not the sockets
        upstream_t.abort()  # type: ignore[union-attr]
        # Retired: an idle spliced stream keeps neither transport nor the upstream leg alive.
        self.transport = None
        upstream.transport = None
        self.relay.start()

    def _splice_ended(self, relay: SpliceRelay) -> None:
        self.run(self.conn.splice_ended(relay.up.moved, relay.down.moved, self.loop.time(),
                                        bool(relay.real_first), relay.up.last,
                                        relay.up.prior))


class UpstreamLeg(asyncio.Protocol):
    """One connection to a real: an attempt until the machine commits it, then the relay's
    upstream leg. Everything is handed to the session."""

    __slots__ = ("attempt_id", "keepalive", "real", "session", "task", "timer", "transport",
                 "verdict")

    def __init__(self, session: ClientSession, attempt_id: int, real: Real) -> None:
        self.session = session
        self.attempt_id = attempt_id
        self.real = real
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.keepalive = False
        self.verdict: DetachedAttempt | None = None  # set when the attempt lost a hedge race
        self.timer: asyncio.TimerHandle | None = None

    # --- a hedge loser (see plan.Detach): dials on alone until it has a verdict -------------

    def detach(self, verdict: DetachedAttempt) -> None:
        """No longer the session's; still dialling, owing the engine its verdict."""
        self.verdict = verdict
        self.session.host.orphans.add(self)
        self.timer = self.session.loop.call_at(
            verdict.deadline, self.orphan_ended, verdict.on_timer, "timeout")

    def orphan_ended(self, report: Any, failure: str | None = None) -> None:
        """Report the verdict once (`report(now)`), stop dialling, let go; a failure is
        logged as any attempt's is."""
        session = self.session
        host, farm = session.host, session.conn.farm
        if self not in host.orphans:
            return
        host.orphans.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.abort()
        report(session.loop.time())
        if failure is not None and farm is not None:
            host.log.warning("real_attempt_failed", farm=farm.name, real=self.real.name,
                             client=session.conn.client, reason=failure, hedged=True)
        if farm is not None:
            host.engine_changed(farm)

    def cancel_orphan(self) -> None:
        """The gateway stops: no verdict."""
        if self.verdict is not None:
            self.orphan_ended(self.verdict.cancel)

    # --- asyncio callbacks -----------------------------------------------------------------

    def __call__(self) -> UpstreamLeg:
        """The protocol factory of its own connection (`loop.create_connection(leg, ...)`)."""
        return self

    def connect_done(self, task: asyncio.Task[Any]) -> None:
        """The connect task ended: nothing to do on success (connection_made said so)."""
        self.task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, OSError):
            self.session.connect_failed(self, exc)
        else:  # a bug, not the network: the loop's handler reports it as a task's would
            self.session.loop.call_exception_handler({
                "message": "connect to a real failed", "exception": exc, "task": task})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.verdict is not None:  # a late handshake: the real is alive, only slower
            self.orphan_ended(self.verdict.on_connected)
            return
        self.session.attempt_connected(self)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session.upstream is self:
            session.from_real(data)
        elif self.verdict is None:
            session.attempt_data(self, data)

    def eof_received(self) -> bool:
        if self.session.upstream is self:
            return self.session.real_eof()
        if self.verdict is None:
            self.session.attempt_failed(self, "closed before answering")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session.upstream is self:
            self.session.real_lost()
        elif self.verdict is None:
            self.session.attempt_failed(self, "reset" if exc else "closed before answering")

    def pause_writing(self) -> None:
        if self.session.upstream is self and self.session.transport is not None:
            self.session.transport.pause_reading()

    def resume_writing(self) -> None:
        session = self.session
        if session.upstream is not self:
            return
        if session.transport is not None and not session.conn.paused:
            session.transport.resume_reading()
        if session.splice_wanted:
            session.try_splice()

    def abort(self) -> None:
        """Drop this attempt: stop dialling, or reset the connection (nothing to flush)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()


def _take_socket(transport: asyncio.Transport) -> socket.socket:
    """A socket object of our own on the transport's connection (a dup'd descriptor)."""
    fd = os.dup(transport.get_extra_info("socket").fileno())
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock
