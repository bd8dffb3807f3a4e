"""One client connection's way through the gateway.

accept -> sniff (stream header or TLS ClientHello) -> route -> pick a real -> connect
(reassign on failure) -> replay the buffered bytes exactly -> relay both ways -> close.

The pure parts decide (readers in `xmppgw.wire`, the engine in `xmppgw.slb`); this module
only moves bytes, runs timers and reports outcomes. Both legs are asyncio Protocols: no task
per direction, and flow control by pausing the reading side when the writing side's buffer
is full, so a slow peer never grows memory without bound.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from xmppgw.net.sockopts import apply_keepalive
from xmppgw.net.splice import SpliceRelay
from xmppgw.slb.plan import (Abort, Action, Commit, Connect, ConnectPlan, Detach,
                              DetachedAttempt, GiveUp, Queued, Replay)
from xmppgw.wire import clienthello as tls
from xmppgw.wire import proxyproto
from xmppgw.wire.errors import stream_error, stream_header
from xmppgw.wire.stream import Opaque, ProtocolError, StartTLSTracker, StreamHeader

if TYPE_CHECKING:
    from xmppgw.config import Keepalive
    from xmppgw.net.gateway import Gateway, VserverRuntime
    from xmppgw.slb.farm import Real, Serverfarm
    from xmppgw.slb.limits import Admission

ALPN_KINDS = {"xmpp-client": "c2s", "xmpp-server": "s2s"}  # XEP-0368 §3

NO_BYTES: list[bytes] = []  # shared empty list for committed legs: never appended to
# While a real is being found the client is still read, so a client that leaves (FIN or
# reset) is seen at once and its attempts are dropped with no verdict on the real; past
# this many buffered bytes reading pauses until the commit (the kernel's window holds more).
MAX_CONNECT_BUFFER = 65536
# After a stream error: the write side is shut, what the client still sends is read and
# dropped for this long (at most LINGER_BYTES), then the socket closes. Closing with unread
# data would send a reset that can destroy the error document in flight (HAProxy, nginx).
LINGER_TIME = 2.0
LINGER_BYTES = 4 << 20

# Phases of a session, in order.
SNIFFING, CONNECTING, RELAYING, SPLICED, CLOSED = (
    "sniffing", "connecting", "relaying", "spliced", "closed")


class ClientSession(asyncio.Protocol):
    """The accepted client connection; owns the upstream leg and the connection record."""

    __slots__ = (
        "admission",
        "alpn",
        "buffer",
        "bytes_from_client",
        "bytes_to_client",
        "client",
        "client_eof",
        "client_lost",
        "connect_started",
        "domain",
        "error",
        "farm",
        "gateway",
        "header_timer",
        "hello",
        "buffered",
        "lingering",
        "linger_timer",
        "negotiation_timer",
        "kind",
        "legs",
        "local",
        "loop",
        "paused_for_connect",
        "peer",
        "phase",
        "plan",
        "plan_timer",
        "proxy_header",
        "proxy_reader",
        "real",
        "relay",
        "sni",
        "splice_wanted",
        "started",
        "starttls",
        "tracker",
        "transport",
        "upstream",
        "upstream_eof",
        "vserver",
    )

    def __init__(self, gateway: Gateway, vserver: VserverRuntime) -> None:
        self.gateway = gateway
        self.vserver = vserver
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamLeg | None = None
        self.phase = SNIFFING
        self.client = "?"
        self.started = time.monotonic()
        self.buffer: list[bytes] | None = []
        cfg = vserver.config
        self.tracker: StartTLSTracker | None = None
        self.hello: tls.ClientHelloReader | None = None
        if cfg.mode == "starttls":
            self.tracker = StartTLSTracker(cfg.max_header_bytes, cfg.require_starttls)
        else:
            self.hello = tls.ClientHelloReader(cfg.max_hello_bytes)
        self.header_timer: asyncio.TimerHandle | None = None
        self.negotiation_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None
        self.lingering = -1  # bytes dropped after a stream error; -1: not lingering
        self.buffered = 0  # client bytes held while connecting
        self.plan: ConnectPlan | None = None
        self.plan_timer: asyncio.TimerHandle | None = None
        self.legs: dict[int, UpstreamLeg] = {}  # attempts in flight, by attempt id
        self.relay: SpliceRelay | None = None  # the zero-copy relay, once handed over
        self.splice_wanted = False
        self.kind: str | None = None
        self.domain: str | None = None
        self.farm: Serverfarm | None = None
        self.real: Real | None = None
        self.sni: str | None = None
        self.alpn: tuple[str, ...] = ()
        self.starttls = False
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.error: str | None = None
        self.client_eof = False
        self.upstream_eof = False
        self.client_lost = False
        self.paused_for_connect = False
        self.peer: tuple[str, int] | None = None  # the client (from PROXY when trusted)
        self.local: tuple[str, int] | None = None  # the address it connected to
        self.proxy_reader: proxyproto.ProxyHeaderReader | None = None
        self.proxy_header: bytes | None = None  # what this session's real legs start with
        self.admission: Admission | None = None  # the limits that counted this connection
        self.connect_started = 0.0

    # --- client leg -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.lingering = -1
        peer = transport.get_extra_info("peername")
        self.client = _format_peer(peer)  # (keepalive: inherited from the listening socket)
        self.gateway.sessions.add(self)
        if self.gateway.metrics is not None:
            self.gateway.metrics.opened(self.vserver.name)
        local = transport.get_extra_info("sockname")
        if not peer or not local:
            # Reset before accept() returned: asyncio could not read the addresses. Such a
            # connection cannot be limited per IP nor announced in a PROXY header: end it.
            self.error = "no-peer-address"
            self.close()
            return
        self.peer, self.local = peer[:2], local[:2]
        cfg = self.vserver.config
        self.header_timer = self.loop.call_later(cfg.header_timeout, self._header_timed_out)
        self.negotiation_timer = self.loop.call_later(cfg.negotiation_timeout,
                                                      self._negotiation_timed_out)
        if self.vserver.config.accept_proxy and self.peer is not None and _listed(
                self.peer[0], self.vserver.config.accept_proxy):
            self.proxy_reader = proxyproto.ProxyHeaderReader()  # limits count the real client
        else:
            self._admit()

    def _admit(self) -> None:
        """`[vserver.limits]`, counted from accept (or from the PROXY header, which names the
        client): over a limit a cleartext stream gets `<policy-violation/>`, TLS a close."""
        admission = self.vserver.admission
        if admission is None or self.peer is None:
            return
        verdict = admission.admit(self.peer[0], self.loop.time())
        if verdict.ok:
            self.admission = admission
            return
        self.vserver.note_refusal(self.gateway.log, self.client, verdict.reason or "limit",
                                  self.loop.time())
        if self.gateway.metrics is not None:
            self.gateway.metrics.limit_refused(self.vserver.name, verdict.reason or "limit")
        if self.vserver.config.mode == "starttls":
            self.fail("policy-violation", f"connection limit {verdict.reason} reached")
        else:
            self.error = "policy-violation"
            self.close()

    def _proxy_data(self, data: bytes) -> None:
        """The PROXY header an upstream balancer puts first; then the client's own bytes."""
        event = self.proxy_reader.feed(data)  # type: ignore[union-attr]
        if event is proxyproto.NEED_MORE:
            return
        self.proxy_reader = None
        if isinstance(event, proxyproto.ProxyError):
            self.error = "bad-proxy-header"
            self.gateway.log.info("proxy_refused", client=self.client,
                                  vserver=self.vserver.name, reason=event.reason)
            self.close()
            return
        if event.src is not None:  # LOCAL / UNKNOWN: the balancer's own connection
            self.peer, self.client = event.src, _format_peer(event.src)
            self.local = event.dst or self.local
        self._admit()
        if event.rest and self.phase is not CLOSED:
            self.data_received(event.rest)

    def data_received(self, data: bytes) -> None:
        if self.proxy_reader is not None:
            self._proxy_data(data)
            return
        self.bytes_from_client += len(data)
        if self.phase is SNIFFING:
            self.buffer.append(data)  # type: ignore[union-attr]
            if self.tracker is not None:
                self._starttls_events(self.tracker.client_data(data))
            else:
                self._hello_events(self.hello.feed(data))  # type: ignore[union-attr]
        elif self.phase is CONNECTING:
            self.buffer.append(data)  # type: ignore[union-attr]
            self.buffered += len(data)
            if self.buffered > MAX_CONNECT_BUFFER and not self.paused_for_connect:
                self.paused_for_connect = True
                self.transport.pause_reading()  # type: ignore[union-attr]
            if self.tracker is not None:
                self._starttls_events(self.tracker.client_data(data))
        elif self.lingering >= 0:
            self.lingering += len(data)
            if self.lingering > LINGER_BYTES:
                self.transport.abort()  # type: ignore[union-attr]
        elif self.phase is RELAYING:
            if self.tracker is not None:
                self._starttls_events(self.tracker.client_data(data))
                if self.phase is not RELAYING:
                    return  # a policy violation closed the session: do not forward
            self.upstream.transport.write(data)  # type: ignore[union-attr]
            if self.splice_wanted:
                self._try_splice()

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.proxy_reader is not None:
            self.error = "bad-proxy-header"
            self.proxy_reader = None
        if self.phase is RELAYING:
            self._half_close(self.upstream.transport)  # type: ignore[union-attr]
            return True
        if self.phase is CONNECTING:
            return True  # passed on once the replay is written
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.relay is not None:
            return  # the transport let go after the handover: the splice relay owns the socket
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        self.client_lost = True
        if self.phase is not CLOSED:
            self.close()
        self._finish_if_done()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()
        if self.splice_wanted:
            self._try_splice()

    # --- sniffing and routing -----------------------------------------------------------

    def _starttls_events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, ProtocolError):
                self.fail(event.condition, event.text)
                return
            if isinstance(event, StreamHeader) and self.phase is SNIFFING:
                self._route_stream(event)
                if self.phase is CLOSED:
                    return
            elif isinstance(event, Opaque):
                self._went_opaque(event)

    def _route_stream(self, header: StreamHeader) -> None:
        self._cancel_header_timer()
        self.kind = header.kind
        self.domain = header.to.lower() if header.to else None
        cfg = self.vserver.config
        if header.kind not in cfg.kinds:
            self.fail("invalid-namespace", f"{header.namespace} streams are not served here")
            return
        if not self.gateway.config.serves(self.domain):
            self.fail("host-unknown", f"this gateway does not serve {self.domain or 'streams without to'}")
            return
        farm_name = cfg.farm_for(header.kind, self.domain)
        if farm_name is None:
            if any(r.matches(header.kind, None) or r.kind == header.kind for r in cfg.routes):
                self.fail("host-unknown", f"no serverfarm for {self.domain}")
            else:
                self.fail("invalid-namespace", f"no serverfarm for {header.kind} streams")
            return
        self._start_connect(farm_name)

    def _hello_events(self, events: list[tls.ClientHelloEvent]) -> None:
        for event in events:
            if isinstance(event, tls.HelloError):
                self.fail_tls(event.alert, event.reason)
                return
            self._route_hello(event)

    def _route_hello(self, hello: tls.ClientHello) -> None:
        """XEP-0368: SNI names the domain, ALPN (optional, so never required) the kind."""
        self._cancel_header_timer()
        self.sni = self.domain = hello.sni
        self.alpn = hello.alpn
        self.kind = next((ALPN_KINDS[p] for p in hello.alpn if p in ALPN_KINDS), None)
        cfg = self.vserver.config
        if self.kind is not None and self.kind not in cfg.kinds:
            self.fail_tls(tls.NO_APPLICATION_PROTOCOL, f"{self.kind} is not served here")
            return
        if hello.sni is not None and not self.gateway.config.serves(hello.sni):
            self.fail_tls(tls.UNRECOGNIZED_NAME, f"this gateway does not serve {hello.sni}")
            return
        farm_name = cfg.farm_for(self.kind, self.domain)
        if farm_name is None:
            self.fail_tls(tls.UNRECOGNIZED_NAME, f"no serverfarm for {self.domain}")
            return
        self._start_connect(farm_name)

    def _went_opaque(self, event: Opaque) -> None:
        self.starttls = event.starttls
        self.tracker = None  # relay opaquely from here on
        self._cancel_negotiation_timer()
        self.splice_wanted = self.gateway.pipes is not None

    def _try_splice(self) -> None:
        """Hand both sockets to a zero-copy relay, at a moment no byte waits in user space.

        Called when the stream goes opaque and again after writes and when a side drains,
        until both write buffers are empty. A half-closed stream stays on the copy relay.
        """
        upstream = self.upstream
        if self.phase is not RELAYING or self.tracker is not None or upstream is None:
            return
        client_t, upstream_t = self.transport, upstream.transport
        if client_t.get_write_buffer_size() or upstream_t.get_write_buffer_size():  # type: ignore[union-attr]
            return
        self.splice_wanted = False
        if self.client_eof or self.upstream_eof:
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
        apply_keepalive(real, self.gateway.config.gateway.keepalive)  # a long-lived stream
        self.phase = SPLICED
        self.upstream = None
        self.relay = SpliceRelay(self.loop, self.gateway.pipes, client, real,  # type: ignore[arg-type]
                                 self._splice_ended)
        client_t.abort()  # the transports let go of their descriptors, not the sockets
        upstream_t.abort()  # type: ignore[union-attr]
        self.relay.start()

    def _splice_ended(self, relay: SpliceRelay) -> None:
        self.bytes_from_client += relay.up.moved
        self.bytes_to_client += relay.down.moved
        if self.real is not None and self.farm is not None:
            self.farm.closed(self.real, self.loop.time())
            self.gateway.engine_changed(self.farm)
        self.phase = CLOSED
        self.client_lost = True
        self._finish_if_done()

    def _header_timed_out(self) -> None:
        self.header_timer = None
        if self.phase is not SNIFFING:
            return
        if self.tracker is not None:
            self.fail("connection-timeout",
                      f"no stream header within {self.vserver.config.header_timeout:g} s")
        else:
            self.error = "hello-timeout"
            self.close()

    def _negotiation_timed_out(self) -> None:
        """The cleartext phase (header, features, STARTTLS, or the ClientHello and the
        connect) outlived `negotiation_timeout`: a parked stream must not hold two sockets
        for ever (there is rightly no idle timeout once a stream is opaque)."""
        self.negotiation_timer = None
        if self.phase is CLOSED or (self.phase is RELAYING and self.tracker is None):
            return
        text = f"no TLS within {self.vserver.config.negotiation_timeout:g} s"
        if self.vserver.config.mode == "starttls":
            self.fail("connection-timeout", text)
        else:
            self.error = "negotiation-timeout"
            self.gateway.log.info("tls_alert", client=self.client, vserver=self.vserver.name,
                                  alert=None, reason=text)
            self.close()

    def _cancel_negotiation_timer(self) -> None:
        if self.negotiation_timer is not None:
            self.negotiation_timer.cancel()
            self.negotiation_timer = None

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    # --- connecting: the ConnectPlan decides, this layer carries out -----------------------

    def _start_connect(self, farm_name: str) -> None:
        self.phase = CONNECTING
        self.connect_started = self.loop.time()
        self.farm = self.gateway.farms[farm_name]
        # The client's bytes are held until a real has answered (they may have to be
        # replayed to another real); reading goes on, up to MAX_CONNECT_BUFFER, so a client
        # that leaves is seen at once.
        self.buffered = sum(map(len, self.buffer))  # type: ignore[arg-type]
        self.plan = ConnectPlan.for_farm(self.farm, self.client, self.loop.time())
        self.plan.owner = self
        self.gateway.sync_peers(self.farm)
        self._carry_out(self.plan.start(self.loop.time()))

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Connect):
                self._dial(action.attempt_id, action.real)
            elif isinstance(action, Replay):
                leg = self.legs.get(action.attempt_id)
                if leg is not None and self.buffer is not None:
                    leg.transport.write(b"".join(self.buffer))  # type: ignore[union-attr]
            elif isinstance(action, Commit):
                self._commit(action.attempt_id, action.real)
            elif isinstance(action, Abort):
                self._abort_attempt(action.attempt_id)
            elif isinstance(action, GiveUp):
                self._give_up(action.reason)
            elif isinstance(action, Detach):
                leg = self.legs.pop(action.attempt_id, None)
                if leg is not None:
                    leg.detach(action.verdict)
                else:
                    action.verdict.cancel(self.loop.time())
            elif isinstance(action, Queued) and self.gateway.metrics is not None:
                self.gateway.metrics.queued(self.farm.name)  # type: ignore[union-attr]
        if self.farm is not None:
            self.gateway.engine_changed(self.farm)
        if self.real is not None:
            self.plan = None  # committed: the real owns the connection; free the attempts
        self._arm_plan_timer()

    def resume(self, plan: ConnectPlan) -> None:
        """The farm took this connection off its queue: a real has room for it now."""
        if plan is self.plan and self.phase is CONNECTING:
            self._carry_out(plan.on_wake(self.loop.time()))

    def _dial(self, attempt_id: int, real: Real) -> None:
        host, port = real.endpoint(self.vserver.config.virtual.port)  # type: ignore[arg-type]
        leg = UpstreamLeg(self, attempt_id, real)
        self.legs[attempt_id] = leg
        leg.task = self.loop.create_task(self._open(leg, host, port))

    async def _open(self, leg: UpstreamLeg, host: str, port: int) -> None:
        try:
            await self.loop.create_connection(lambda: leg, host, port)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if leg.verdict is not None:
                leg.orphan_ended(lambda now: leg.verdict.on_failed(now, reason),  # type: ignore[union-attr]
                                 reason)
            else:
                self.attempt_failed(leg, reason)

    def _commit(self, attempt_id: int, real: Real) -> None:
        """The real answered: it owns the connection; relay what it sent, wake the client."""
        leg = self.legs.pop(attempt_id)
        for other in self.legs.values():
            other.abort()
        self.legs.clear()
        self.real = real
        self.upstream = leg
        self.phase = RELAYING
        self.buffer = None
        self.buffered = 0
        if self.tracker is None:  # TLS from the first byte: nothing left to negotiate here
            self._cancel_negotiation_timer()
        if self.gateway.metrics is not None:
            self.gateway.metrics.committed(self.vserver.name, self.farm.name,  # type: ignore[union-attr]
                                           real.name, self.loop.time() - self.connect_started)
        if self.gateway.config.gateway.log_connect:  # HAProxy's `option logasap`
            self.gateway.log.info("connected", client=self.client, vserver=self.vserver.name,
                                  kind=self.kind, to=self.domain, sni=self.sni,
                                  farm=self.farm.name, real=real.name)  # type: ignore[union-attr]
        early, leg.early = leg.early, NO_BYTES
        for data in early:
            self.from_server(data)
        if self.client_eof:
            self._half_close(leg.transport)  # type: ignore[arg-type]
        elif self.paused_for_connect:
            self.paused_for_connect = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self.splice_wanted:
            self._try_splice()

    def _abort_attempt(self, attempt_id: int) -> None:
        leg = self.legs.pop(attempt_id, None)
        if leg is None:
            return
        leg.abort()
        attempt = self.plan.attempt(attempt_id) if self.plan is not None else None
        if attempt is not None and attempt.reason is not None:  # a verdict: worth a line
            self._log_attempt_failure(leg.real, attempt.reason)

    def _give_up(self, reason: str) -> None:
        text = f"{reason} in serverfarm {self.farm.name}"  # type: ignore[union-attr]
        if self.vserver.config.mode == "starttls":
            self.fail("remote-connection-failed", text)
        else:
            self.fail_tls(tls.INTERNAL_ERROR, text)

    def _arm_plan_timer(self) -> None:
        if self.plan_timer is not None:
            self.plan_timer.cancel()
            self.plan_timer = None
        plan = self.plan
        if plan is not None and not plan.done and plan.deadline is not None:
            self.plan_timer = self.loop.call_at(plan.deadline, self._plan_timer_fired)

    def _plan_timer_fired(self) -> None:
        self.plan_timer = None
        if self.plan is not None and not self.plan.done:
            self.gateway.sync_peers(self.farm)  # type: ignore[arg-type]
            self._carry_out(self.plan.on_timer(self.loop.time()))

    def _log_attempt_failure(self, real: Real, reason: str) -> None:
        self.gateway.log.warning("real_attempt_failed", farm=self.farm.name,  # type: ignore[union-attr]
                                 real=real.name, client=self.client, reason=reason)

    # --- attempt callbacks (an UpstreamLeg before it is committed) ------------------------------

    def attempt_connected(self, leg: UpstreamLeg) -> None:
        if self.legs.get(leg.attempt_id) is not leg or self.plan is None:
            leg.abort()  # a late handshake for an attempt already given up
            return
        self._carry_out(self.plan.on_connected(leg.attempt_id, self.loop.time()))

    def attempt_data(self, leg: UpstreamLeg, data: bytes) -> None:
        if self.legs.get(leg.attempt_id) is not leg or self.plan is None:
            return
        leg.early.append(data)
        self._carry_out(self.plan.on_response(leg.attempt_id, self.loop.time()))

    def attempt_failed(self, leg: UpstreamLeg, reason: str) -> None:
        if self.legs.pop(leg.attempt_id, None) is not leg or self.plan is None:
            return
        leg.abort()
        self._log_attempt_failure(leg.real, reason)
        self.gateway.sync_peers(self.farm)  # type: ignore[arg-type]
        self._carry_out(self.plan.on_failed(leg.attempt_id, self.loop.time(), reason))

    def upstream_keepalive(self, keepalive: Keepalive) -> None:
        """Called by the gateway's periodic sweep; once per upstream leg."""
        leg = self.upstream
        if leg is not None and not leg.keepalive and leg.transport is not None:
            leg.keepalive = True
            apply_keepalive(leg.transport.get_extra_info("socket"), keepalive)

    # --- upstream leg callbacks -------------------------------------------------------------

    def from_server(self, data: bytes) -> None:
        self.bytes_to_client += len(data)
        if self.tracker is not None:
            for event in self.tracker.server_data(data):
                if isinstance(event, Opaque):
                    self._went_opaque(event)
        self.transport.write(data)  # type: ignore[union-attr]
        if self.splice_wanted:
            self._try_splice()

    def server_eof(self) -> bool:
        self.upstream_eof = True
        self._half_close(self.transport)  # type: ignore[arg-type]
        return True

    def server_lost(self) -> None:
        if self.real is not None and self.farm is not None:
            # The plan reported the success (farm.connected) and was freed at the commit;
            # the connection's end is reported here, once: server_lost runs once per leg.
            self.farm.closed(self.real, self.loop.time())
            self.gateway.engine_changed(self.farm)
        self.upstream = None
        if self.phase is not CLOSED:
            self.close()
        self._finish_if_done()

    # --- ending -----------------------------------------------------------------------------

    def fail(self, condition: str, text: str) -> None:
        """Answer with a stream error (RFC 6120 §4.9) and close both legs."""
        if self.phase is CLOSED:
            return
        self.error = condition
        if self.transport is not None and not self.transport.is_closing():
            out = b""
            if self.bytes_to_client == 0:  # the client has no stream header from us yet
                header = self.tracker.header if self.tracker is not None else None
                out = stream_header(
                    namespace=header.namespace if header else "jabber:client",
                    from_=self._error_from(),
                    to=header.from_ if header else None,
                    dialback=bool(header and header.dialback),
                )
            self.transport.write(out + stream_error(condition, text))
        self.gateway.log.info("stream_error", client=self.client, vserver=self.vserver.name,
                              condition=condition, text=text)
        self.close(linger=True)

    def system_shutdown(self) -> bool:
        """The gateway is stopping: a stream we can still speak into gets
        `<system-shutdown/>` (True); an opaque one (TLS) is left to end or time out."""
        if self.phase is CLOSED:
            return False
        if self.phase in (SNIFFING, CONNECTING):
            if self.tracker is None:
                self.error = "system-shutdown"
                self.close()  # a TLS client that sent no byte we could answer in
                return False
            self.fail("system-shutdown", "the gateway is shutting down")
            return True
        if self.phase is RELAYING and self.tracker is not None \
                and self.tracker.server_between_elements():
            self.transport.write(stream_error(  # type: ignore[union-attr]
                "system-shutdown", "the gateway is shutting down"))
            self.error = "system-shutdown"
            self.close()
            return True
        return False

    def fail_tls(self, alert: int, reason: str) -> None:
        """A TLS client gets a TLS answer: a fatal alert (RFC 8446 §6), then close."""
        if self.phase is CLOSED:
            return
        self.error = f"tls-alert-{alert}"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(tls.alert_record(alert))
        self.gateway.log.info("tls_alert", client=self.client, vserver=self.vserver.name,
                              alert=alert, reason=reason)
        self.close(linger=True)

    def _error_from(self) -> str | None:
        """§4.9.1.3: the domain asked for if served, else the gateway's own name, else none."""
        gw = self.gateway.config
        if self.domain and gw.gateway.domains and gw.serves(self.domain):
            return self.domain
        return gw.gateway.name

    def close(self, linger: bool = False) -> None:
        """Close both legs, flushing what is buffered; idempotent.

        `linger` (after an error we wrote to the client): shut the write side and read and
        drop what the client still sends for up to LINGER_TIME before closing, so the error
        reaches it instead of a reset."""
        if self.phase is CLOSED:
            return
        self.phase = CLOSED
        self._cancel_header_timer()
        self._cancel_negotiation_timer()
        if self.plan is not None and not self.plan.done:
            self.plan.cancel(self.loop.time())  # the client left first: no verdict on reals
        if self.plan_timer is not None:
            self.plan_timer.cancel()
            self.plan_timer = None
        for leg in self.legs.values():
            leg.abort()
        self.legs.clear()
        if self.relay is not None:
            self.relay.close()  # reports the end through _splice_ended
        if linger and self._start_linger():
            pass
        elif self.transport is not None:
            self.transport.close()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        self.buffer = None
        self.tracker = None
        self.hello = None

    def _start_linger(self) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing() or self.client_eof \
                or not transport.can_write_eof():
            return False
        transport.write_eof()  # after the buffered error document
        self.lingering = 0
        transport.resume_reading()
        self.linger_timer = self.loop.call_later(LINGER_TIME, transport.close)
        return True

    def _half_close(self, transport: asyncio.Transport) -> None:
        """Pass a FIN on; once both directions have ended, close."""
        if self.client_eof and self.upstream_eof:
            self.close()
        elif transport.can_write_eof():
            transport.write_eof()
        else:
            self.close()

    def proxy_header_for_real(self) -> bytes:
        """PROXY v1/v2 for a real of a `proxy_protocol` farm: the client's address and the
        one it connected to, so the real logs and limits the client, not the gateway. v2
        also names the host the client asked for (SNI or the stream's `to`)."""
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

    def _finish_if_done(self) -> None:
        if self.client_lost and self.upstream is None and self in self.gateway.sessions:
            self.gateway.sessions.discard(self)
            if self.admission is not None and self.peer is not None:
                self.admission.release(self.peer[0], self.loop.time())
            if self.gateway.metrics is not None:
                self.gateway.metrics.closed(
                    self.vserver.name, self.error, self.bytes_from_client, self.bytes_to_client,
                    self.farm.name if self.farm else None, self.real.name if self.real else None)
            self.gateway.log.info(
                "connection",
                client=self.client,
                vserver=self.vserver.name,
                kind=self.kind,
                to=self.domain,
                sni=self.sni,
                alpn=list(self.alpn) or None,
                starttls=self.starttls,
                spliced=self.relay is not None,
                farm=self.farm.name if self.farm else None,
                real=self.real.name if self.real else None,
                bytes_from_client=self.bytes_from_client,
                bytes_to_client=self.bytes_to_client,
                duration=round(time.monotonic() - self.started, 3),
                error=self.error,
            )


class UpstreamLeg(asyncio.Protocol):
    """One connection to a real: an attempt until the plan commits it, then the relay's
    upstream leg. Everything is handed to the session."""

    __slots__ = ("attempt_id", "early", "keepalive", "real", "session", "task", "timer",
                 "transport", "verdict")

    def __init__(self, session: ClientSession, attempt_id: int, real: Real) -> None:
        self.session = session
        self.attempt_id = attempt_id
        self.real = real
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.early: list[bytes] = []  # the real's first bytes, held until the commit
        self.keepalive = False
        self.verdict: DetachedAttempt | None = None  # set when the attempt lost a hedge race
        self.timer: asyncio.TimerHandle | None = None

    # --- a hedge loser (see plan.Detach): dials on alone until it has a verdict -------------

    def detach(self, verdict: DetachedAttempt) -> None:
        """No longer the session's; still dialling, owing the engine its verdict."""
        self.verdict = verdict
        self.early = NO_BYTES
        gateway = self.session.gateway
        gateway.orphans.add(self)
        self.timer = self.session.loop.call_at(
            verdict.deadline, self.orphan_ended, verdict.on_timer, "timeout")

    def orphan_ended(self, report: Any, failure: str | None = None) -> None:
        """Report the verdict once (`report(now)`), stop dialling, let go; a failure is
        logged as any attempt's is."""
        session, gateway = self.session, self.session.gateway
        if self not in gateway.orphans:
            return
        gateway.orphans.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.abort()
        report(session.loop.time())
        if failure is not None and session.farm is not None:
            gateway.log.warning("real_attempt_failed", farm=session.farm.name,
                                real=self.real.name, client=session.client, reason=failure,
                                hedged=True)
        if session.farm is not None:
            gateway.engine_changed(session.farm)

    def cancel_orphan(self) -> None:
        """The gateway stops: no verdict."""
        if self.verdict is not None:
            self.orphan_ended(self.verdict.cancel)

    # --- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.verdict is not None:  # a late handshake: the real is alive, only slower
            self.orphan_ended(self.verdict.on_connected)
            return
        header = self.session.proxy_header_for_real()
        if header:
            transport.write(header)  # type: ignore[attr-defined]  # one write, first
        self.session.attempt_connected(self)

    def data_received(self, data: bytes) -> None:
        if self.session.upstream is self:
            self.session.from_server(data)
        elif self.verdict is None:
            self.session.attempt_data(self, data)

    def eof_received(self) -> bool:
        if self.session.upstream is self:
            return self.session.server_eof()
        if self.verdict is None:
            self.session.attempt_failed(self, "closed before answering")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session.upstream is self:
            self.session.server_lost()
        elif self.verdict is None:
            self.session.attempt_failed(self, "reset" if exc else "closed before answering")

    def pause_writing(self) -> None:
        if self.session.upstream is self and self.session.transport is not None:
            self.session.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.session.upstream is not self:
            return
        if self.session.transport is not None and not self.session.paused_for_connect:
            self.session.transport.resume_reading()
        if self.session.splice_wanted:
            self.session._try_splice()

    def abort(self) -> None:
        """Drop this attempt: stop dialling, or reset the connection (nothing to flush)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()


def _listed(ip: str, networks: tuple[Any, ...]) -> bool:
    """Is the peer one of the balancers a PROXY header is believed from?"""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in networks)


def _format_peer(peer: Any) -> str:
    if not peer:
        return "?"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _take_socket(transport: asyncio.Transport) -> socket.socket:
    """A socket object of our own on the transport's connection (a dup'd descriptor)."""
    fd = os.dup(transport.get_extra_info("socket").fileno())
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock
