"""The probes themselves: one check of one real, over asyncio, bounded in time.

- `tcp`: the TCP handshake, then close. It proves little: a hung node's kernel still
  completes handshakes.
- `xmpp-stream`: a stream opened to the configured domain; the real must answer with its
  header and `<stream:features>` (with `<starttls/>` if asked), then the stream is closed
  politely (`</stream:stream>`, and the server's own close awaited briefly).
- `xmpp-ping`: a login with the probe account (STARTTLS, SASL, resource binding) against that
  real directly, then a XEP-0199 ping to the domain. slixmpp does the XMPP: a login is too
  much protocol to write again. With `persistent = true` the session stays open and later
  runs only ping, which costs the server (and the gateway) far less than a login.

Every failure is a sentence for the operator, saying what the real did or did not do
(`timeout after 2 s waiting for the stream header`), and for a refused login that the probe,
not the node, is the thing to fix. The password is never part of a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from abc import ABC, abstractmethod
from typing import Any

from xmppgw.config import ProbeConfig
from xmppgw.health.state import Outcome
from xmppgw.health.wire import STREAM_CLOSE, GreetingReader, judge, stream_header
from xmppgw.wire.proxyproto import encode_v1, encode_v2

# Round trips are timed with perf_counter: uvloop's loop.time() moves in whole milliseconds.
CLOSE_WAIT = 1.0  # how long a polite close may wait for the server's own close
READ_SIZE = 4096


class ProbeFailed(Exception):
    """The real failed the check; the message says how, in the operator's words."""


class Check(ABC):
    """One probe of one real. `run` is bounded by the caller (`probe_once`); `phase` names
    what the check was waiting for, so a timeout says where the real stopped answering."""

    def __init__(self, config: ProbeConfig, host: str, port: int) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.phase = "connecting"
        self.proxy: str | None = None  # the farm's proxy_protocol: its reals expect a header

    def proxy_header(self, transport: asyncio.BaseTransport) -> bytes:
        """The PROXY header a real of a `proxy_protocol` farm waits for before anything else
        (ejabberd closes a connection without one), naming the probe's own addresses.

        Not v2's LOCAL command, though it exists for health checks: ejabberd 23.01 never
        answers a connection that starts with one (tried against Debian's; it waits)."""
        if self.proxy is None:
            return b""
        local, peer = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        encode = encode_v2 if self.proxy == "v2" else encode_v1
        return encode(local[:2], peer[:2])

    @abstractmethod
    async def run(self) -> Outcome:
        """One check; raises ProbeFailed, OSError or TimeoutError on failure."""

    async def close(self, ok: bool) -> None:
        """After a run: release what the run holds (a persistent ping keeps its session)."""

    async def shutdown(self) -> None:
        """The gateway stops: release everything, politely if it can be done at once."""
        await self.close(False)


async def probe_once(check: Check, timeout: float) -> Outcome:
    """Run `check` within `timeout`, then let it close (bounded apart, so a slow goodbye
    does not turn a healthy real into a failed probe). Never raises but on cancellation."""
    check.phase = "connecting"
    try:
        async with asyncio.timeout(timeout):
            outcome = await check.run()
    except TimeoutError:
        outcome = Outcome(False, f"timeout after {timeout:g} s {check.phase}")
    except ProbeFailed as exc:
        outcome = Outcome(False, str(exc))
    except OSError as exc:
        outcome = Outcome(False, f"{check.phase}: {os_error(exc)}")
    except asyncio.CancelledError:
        await _quietly(check.close(False))
        raise
    except Exception as exc:  # noqa: BLE001 - a probe bug must not stop the probing
        outcome = Outcome(False, f"probe error: {type(exc).__name__}: {exc}")
    await _quietly(check.close(outcome.ok))
    return outcome


async def _quietly(closing: Any) -> None:
    with contextlib.suppress(Exception):  # TimeoutError included
        async with asyncio.timeout(CLOSE_WAIT + 0.5):
            await closing


def os_error(exc: OSError) -> str:
    """"Connection refused", not asyncio's "Connect call failed ('10.0.0.1', 5222)"."""
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


def make_check(config: ProbeConfig, host: str, port: int,
               tls: ssl.SSLContext | None = None, proxy: str | None = None) -> Check:
    check: Check
    if config.type == "tcp":
        check = TcpCheck(config, host, port)
    elif config.type == "xmpp-stream":
        check = StreamCheck(config, host, port)
    elif config.type == "xmpp-ping":
        check = PingCheck(config, host, port, tls or tls_context(config))
    else:
        raise ValueError(f"unknown probe type {config.type!r}")
    check.proxy = proxy
    return check


def tls_context(config: ProbeConfig) -> ssl.SSLContext:
    """Made once per probe, not per login: loading the system's CA store costs ~20 ms.

    A real's certificate names the XMPP domain, not the real's address, so the name checked
    is the jid's domain (slixmpp sends it as SNI and checks it); `tls_verify = false` checks
    nothing, `tls_ca_file` trusts that CA file instead of the system's."""
    if not config.tls_verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=config.tls_ca_file)


class TcpCheck(Check):
    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        transport, _ = await loop.create_connection(asyncio.Protocol, self.host, self.port)
        rtt = time.perf_counter() - began
        transport.write(self.proxy_header(transport))  # type: ignore[attr-defined]
        transport.close()
        return Outcome(True, rtt=rtt)


class StreamCheck(Check):
    """A stream opened and closed, as a client (c2s) or a peer server (s2s) would."""

    def __init__(self, config: ProbeConfig, host: str, port: int) -> None:
        super().__init__(config, host, port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._polite = False

    async def run(self) -> Outcome:
        config = self.config
        began = time.perf_counter()
        self._polite = False
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(self.proxy_header(self._writer.transport)
                           + stream_header(config.kind, config.target_domain))
        greeting = GreetingReader()
        self.phase = "waiting for the stream header"
        while (verdict := judge(greeting, config.kind, config.expect_starttls)) is None:
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise ProbeFailed(f"connection closed {self.phase}")
            greeting.feed(data)
            if greeting.header is not None:
                self.phase = "waiting for <stream:features>"
            if greeting.consumed > 2 * READ_SIZE and not greeting.complete:
                raise ProbeFailed("no <stream:features> in the server's first 8 KiB")
        self._polite = greeting.header is not None
        if verdict.error is not None:
            raise ProbeFailed(verdict.error)
        return Outcome(True, rtt=time.perf_counter() - began)

    async def close(self, ok: bool) -> None:
        """`</stream:stream>`, then wait (briefly) for the server's close: a probe that just
        drops its connections fills a server's log with errors."""
        reader, writer, self._reader, self._writer = self._reader, self._writer, None, None
        if writer is None or reader is None:
            return
        try:
            if self._polite and not writer.is_closing():
                writer.write(STREAM_CLOSE)
                async with asyncio.timeout(CLOSE_WAIT):
                    while await reader.read(READ_SIZE):
                        pass
        except (OSError, TimeoutError):
            pass
        finally:
            writer.transport.abort()


class PingCheck(Check):
    """Log in as the probe account on this real and ping the domain (XEP-0199)."""

    def __init__(self, config: ProbeConfig, host: str, port: int, tls: ssl.SSLContext) -> None:
        super().__init__(config, host, port)
        self.tls = tls
        self.client: Any = None  # slixmpp.ClientXMPP, logged in
        self._lost = False

    async def run(self) -> Outcome:
        _need_slixmpp()
        from slixmpp.exceptions import IqError, IqTimeout

        if self.client is None or self._lost:
            self._drop()
            self.client = await self._login()
        self.phase = "waiting for the ping answer"
        began = time.perf_counter()
        try:
            await self.client.plugin["xep_0199"].ping(jid=self.config.target_domain,
                                                      timeout=self.config.timeout)
        except IqError as exc:
            raise ProbeFailed(f"ping answered with an error <{exc.condition}/>") from None
        except IqTimeout:
            raise TimeoutError from None  # said as "timeout after 2 s waiting for the ping answer"
        return Outcome(True, rtt=time.perf_counter() - began)

    async def close(self, ok: bool) -> None:
        if ok and self.config.persistent and not self._lost:
            return  # the session stays for the next run
        client, self.client = self.client, None
        if client is None:
            return
        if ok:  # log out politely; a failed session is simply dropped
            with contextlib.suppress(Exception):
                await client.disconnect(wait=CLOSE_WAIT)
        _dispose(client)

    async def shutdown(self) -> None:
        """Log a persistent session out (`</stream:stream>`), briefly, then drop it."""
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_WAIT + 0.5):
                    await client.disconnect(wait=CLOSE_WAIT)
            _dispose(client)

    def _tls_error(self, exc: BaseException) -> str:
        why = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
        return (f"TLS certificate for {self.client_domain} not accepted: {why}"
                " (see the probe's tls_ca_file and tls_verify)")

    def _lost_why(self, reason: object) -> str:
        """slixmpp reports a failed TLS handshake as a disconnection carrying the error."""
        if isinstance(reason, ssl.SSLCertVerificationError):
            return self._tls_error(reason)
        if isinstance(reason, ssl.SSLError):
            return f"TLS handshake failed: {reason.reason or reason}"
        if isinstance(reason, OSError):
            return f"disconnected {self.phase}: {os_error(reason)}"
        return f"disconnected {self.phase}" + (f": {reason}" if reason else "")

    @property
    def client_domain(self) -> str:
        """The domain logged into, which the real's certificate must name (and SNI carries)."""
        return (self.config.jid or "").rpartition("@")[2].partition("/")[0]

    def _drop(self) -> None:
        if self.client is not None:
            _dispose(self.client)
        self.client = None
        self._lost = False

    async def _login(self) -> Any:
        """One login attempt, never retried (slixmpp would retry forever with back-off), with
        every way it can fail turned into a ProbeFailed."""
        from slixmpp import ClientXMPP

        _quiet_slixmpp()
        config = self.config
        check = self

        class ProbeClient(ClientXMPP):  # type: ignore[misc]
            """Puts the PROXY header first on the TCP connection (slixmpp calls this again
            with send_event=False for the TLS transport after STARTTLS: no header there)."""

            def connection_made(self, transport: asyncio.BaseTransport,
                                send_event: bool = True) -> None:
                if send_event:
                    transport.write(check.proxy_header(transport))  # type: ignore[attr-defined]
                super().connection_made(transport, send_event=send_event)

        client = ProbeClient(config.jid, config.password or "", ssl_context=self.tls)
        client.register_plugin("xep_0199")
        client.enable_starttls = True
        client.enable_direct_tls = False
        client.enable_plaintext = False
        client.whitespace_keepalive = False
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def fail(why: str) -> None:
            if not started.done():
                started.set_exception(ProbeFailed(why))

        def phase(text: str) -> Any:
            return lambda _event: setattr(self, "phase", text)

        client.add_event_handler("connected", phase("waiting for the stream header"))
        client.add_event_handler("tls_success", phase("authenticating (SASL)"))
        client.add_event_handler("auth_success", phase("binding a resource"))
        client.add_event_handler("session_start",
                                 lambda _: started.done() or started.set_result(None))
        client.add_event_handler("failed_all_auth", lambda _: fail(
            f"authentication failed as {config.jid}: the probe account or its password is"
            " wrong (the probe is misconfigured, the node itself answered)"))
        client.add_event_handler("no_auth", lambda _: fail(
            "no SASL mechanism the probe may use (no STARTTLS offered?)"))
        client.add_event_handler("ssl_invalid_chain", lambda exc: fail(self._tls_error(exc)))
        client.add_event_handler("stream_error", lambda err: fail(
            f"stream error <{err['condition']}/>"))
        client.add_event_handler("connection_failed", lambda err: fail(
            f"connecting: {os_error(err) if isinstance(err, OSError) else err}"))
        client.add_event_handler("disconnected", lambda reason: fail(self._lost_why(reason)))
        client.connect(self.host, self.port)
        try:
            await started
            if client.transport is None or client.transport.get_extra_info("ssl_object") is None:
                raise ProbeFailed("logged in without TLS: the real offered no STARTTLS")
        except BaseException:
            _dispose(client)
            raise
        client.add_event_handler("disconnected", lambda _: self._session_lost(client))
        return client

    def _session_lost(self, client: Any) -> None:
        """The server ended the kept session (a restart, an idle timeout): log in again next
        run. Only the current session counts; an old one's late goodbye must not."""
        if client is self.client:
            self._lost = True


def _dispose(client: Any) -> None:
    """Everything a slixmpp client holds: its connection, its retry loop, its send task
    (which slixmpp cancels only when the object is collected, and the task keeps it alive)."""
    client.cancel_connection_attempt()
    client.abort()
    sender = getattr(client, "_run_out_filters", None)
    if sender is not None:
        sender.cancel()
    for name in list(client.scheduled_events):
        client.cancel_schedule(name)


def _need_slixmpp() -> None:
    """slixmpp is needed only by xmpp-ping probes: say so, rather than a bare ImportError."""
    try:
        import slixmpp  # noqa: F401
    except ImportError:
        raise ProbeFailed("the xmpp-ping probe needs the slixmpp package (pip install "
                          "slixmpp); the real was not probed") from None


def _quiet_slixmpp() -> None:
    """slixmpp reports through the logging module, which the gateway does not use: its
    lines would reach stderr unformatted. The probe reports failures itself."""
    logger = logging.getLogger("slixmpp")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
