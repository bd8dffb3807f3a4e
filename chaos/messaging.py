"""Pairs of clients exchanging numbered, checksummed messages through the gateway.

Two independent client implementations: slixmpp (STARTTLS) and aioxmpp (direct TLS,
XEP-0368), both with XEP-0198 stream management on (slixmpp's `xep_0198` plugin; aioxmpp
negotiates it by itself when the server offers it, as ejabberd's mod_stream_mgmt does). In
each pair one client sends a message every `interval` seconds to the other's full JID, of the
form `<pair> <seq> <payload> <digest>`, where digest is the first 32 hex digits of the SHA-256
of the rest; the receiver checks the digest and counts each (pair, seq) it gets.

So a message is *lost* if it was sent and never received, *corrupted* if its digest does not
match, and *duplicated* if received more than once. XEP-0198 (section 4, resumption) makes a
server resend the stanzas a resumed stream had not acknowledged, and a client resend its own
(section 5): a duplicate is only allowed on a stream that was cut and resumed; with no cut,
none is.

Everything runs on one asyncio loop in a thread of its own (`Messaging.run`), so the runner
stays synchronous.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import ssl
import string
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

DIGEST_HEX = 32


def body(pair: int, seq: int, payload: str) -> str:
    text = f"{pair} {seq} {payload}"
    return f"{text} {hashlib.sha256(text.encode()).hexdigest()[:DIGEST_HEX]}"


def parse(text: str) -> tuple[int, int] | None:
    """(pair, seq) of an intact message body, None if it does not check out."""
    head, _, digest = text.rpartition(" ")
    if hashlib.sha256(head.encode()).hexdigest()[:DIGEST_HEX] != digest:
        return None
    pair, seq, _payload = head.split(" ", 2)
    return int(pair), int(seq)


@dataclass
class Tally:
    """What the pairs did: messages sent (pair, seq) -> time, received counts, corrupted
    bodies, cuts (streams lost), resumptions (XEP-0198), login failures."""

    sent: dict[tuple[int, int], float] = field(default_factory=dict)
    received: Counter[tuple[int, int]] = field(default_factory=Counter)
    corrupted: int = 0
    cuts: int = 0
    resumed: int = 0
    login_failures: list[str] = field(default_factory=list)
    logins: int = 0
    sm_enabled: int = 0  # streams on which XEP-0198 was enabled

    def lost(self) -> int:
        return sum(1 for key in self.sent if key not in self.received)

    def duplicated(self) -> int:
        return sum(n - 1 for n in self.received.values() if n > 1)


def _payload() -> str:
    return "".join(random.choices(string.ascii_letters + string.digits,
                                  k=random.randint(200, 1500)))


# --- slixmpp ---------------------------------------------------------------------------------


class SlixEnd:
    """One slixmpp client with XEP-0198 on: logs in, logs in again (resuming) when cut."""

    impl = "slixmpp"

    def __init__(self, jid: str, password: str, host: str, port: int, tally: Tally,
                 on_body: Callable[[str], None] | None = None) -> None:
        from slixmpp import ClientXMPP

        self.jid, self.host, self.port, self.tally = jid, host, port, tally
        self.stopping = False
        xmpp = ClientXMPP(jid, password)
        xmpp.register_plugin("xep_0198")
        xmpp.ssl_context.check_hostname = False
        xmpp.ssl_context.verify_mode = ssl.CERT_NONE
        xmpp.enable_direct_tls, xmpp.enable_starttls, xmpp.enable_plaintext = False, True, False
        self.started = asyncio.get_running_loop().create_future()
        xmpp.add_event_handler("session_start", self._session_start)
        xmpp.add_event_handler("session_resumed", self._resumed)
        xmpp.add_event_handler("sm_enabled", lambda _: self._count("sm_enabled"))
        xmpp.add_event_handler("disconnected", self._disconnected)
        if on_body is not None:
            xmpp.add_event_handler("message", lambda msg: on_body(str(msg["body"])))
        self.xmpp = xmpp

    def _count(self, what: str) -> None:
        setattr(self.tally, what, getattr(self.tally, what) + 1)

    def _session_start(self, _event: Any) -> None:
        self.xmpp.send_presence()
        self._count("logins")
        if not self.started.done():
            self.started.set_result(None)

    def _resumed(self, _event: Any) -> None:
        self._count("resumed")

    def _disconnected(self, _reason: Any) -> None:
        if self.stopping:
            return
        if self.started.done():
            self._count("cuts")
        asyncio.get_running_loop().call_later(0.5, self._reconnect)

    def _reconnect(self) -> None:
        if not self.stopping:
            self.xmpp.connect(self.host, self.port)

    async def login(self, timeout: float) -> None:
        self.xmpp.connect(self.host, self.port)
        await asyncio.wait_for(asyncio.shield(self.started), timeout)

    def send(self, to: str, text: str) -> None:
        self.xmpp.send_message(mto=to, mbody=text, mtype="chat")

    async def close(self) -> None:
        self.stopping = True
        self.xmpp.cancel_connection_attempt()
        with suppress(Exception):
            await asyncio.wait_for(self.xmpp.disconnect(wait=2.0), 3.0)
        self.xmpp.abort()


# --- aioxmpp ---------------------------------------------------------------------------------


class AioEnd:
    """One aioxmpp client (direct TLS): aioxmpp reconnects and resumes (XEP-0198) on its own."""

    impl = "aioxmpp"

    def __init__(self, jid: str, password: str, host: str, port: int, tally: Tally,
                 on_body: Callable[[str], None] | None = None) -> None:
        import aioxmpp
        import aioxmpp.connector
        import aioxmpp.dispatcher

        self.jid, self.tally = jid, tally
        self.aioxmpp = aioxmpp
        self.client = aioxmpp.PresenceManagedClient(
            aioxmpp.JID.fromstr(jid),
            aioxmpp.make_security_layer(password, no_verify=True),
            override_peer=[(host, port, aioxmpp.connector.XMPPOverTLSConnector())],
            logger=logging.getLogger("chaos.aioxmpp"))
        self.client.on_stream_established.connect(self._established)
        self.client.on_stream_suspended.connect(lambda *_: self._count("cuts"))
        self.client.on_stream_resumed.connect(lambda *_: self._count("resumed"))
        self.client.on_failure.connect(lambda exc: tally.login_failures.append(
            f"aioxmpp {jid}: {exc!s:.150}"))
        self.on_body = on_body
        if on_body is not None:
            dispatcher = self.client.summon(aioxmpp.dispatcher.SimpleMessageDispatcher)
            dispatcher.register_callback(aioxmpp.MessageType.CHAT, None, self._message)
        self.started = asyncio.get_running_loop().create_future()
        self._context: Any = None

    def _count(self, what: str) -> None:
        setattr(self.tally, what, getattr(self.tally, what) + 1)

    def _established(self, *_: Any) -> None:
        self._count("logins")
        if self.client.stream.sm_enabled:
            self._count("sm_enabled")
        if not self.started.done():
            self.started.set_result(None)

    def _message(self, msg: Any) -> None:
        text = msg.body.any() if msg.body else ""
        assert self.on_body is not None
        self.on_body(str(text))

    async def login(self, timeout: float) -> None:
        self.client.presence = self.aioxmpp.PresenceState(True)  # starts the client
        await asyncio.wait_for(asyncio.shield(self.started), timeout)

    def send(self, to: str, text: str) -> None:
        msg = self.aioxmpp.Message(type_=self.aioxmpp.MessageType.CHAT,
                                   to=self.aioxmpp.JID.fromstr(to))
        msg.body[None] = text
        self.client.enqueue(msg)

    async def close(self) -> None:
        if self.client.running:
            self.client.stop()
            with suppress(Exception):
                await asyncio.wait_for(self.client.on_stopped.future(), 5.0)


# --- the pairs -------------------------------------------------------------------------------


@dataclass
class Link:
    """Where a client implementation connects: (host, port), e.g. a toxiproxy proxy in front
    of one of the gateway's vservers."""

    host: str
    port: int


class Messaging:
    """`pairs` sender/receiver pairs, half slixmpp (to `starttls`), half aioxmpp (to
    `directtls`), sending a message every `interval` s each while `run(seconds)` lasts."""

    def __init__(self, jid: Callable[[str], str], password: str, starttls: Link,
                 directtls: Link, *, pairs: int, interval: float = 0.1,
                 first_user: int = 0, login_timeout: float = 30.0) -> None:
        self.jid, self.password = jid, password
        self.starttls, self.directtls = starttls, directtls
        self.pairs, self.interval = pairs, interval
        self.first_user, self.login_timeout = first_user, login_timeout
        self.tally = Tally()
        self.impls: Counter[str] = Counter()

    def run(self, seconds: float, drain: float = 20.0) -> Tally:
        """Log every pair in, send for `seconds`, wait up to `drain` s for what is in flight,
        log out; in a thread with its own loop. Returns the tally."""
        error: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(self._main(seconds, drain))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                error.append(exc)

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        thread.join(seconds + drain + self.login_timeout + 30)
        if error:
            raise error[0]
        return self.tally

    def _on_body(self, text: str) -> None:
        key = parse(text)
        if key is None:
            self.tally.corrupted += 1
        else:
            self.tally.received[key] += 1

    async def _main(self, seconds: float, drain: float) -> None:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        ends: list[tuple[Any, Any, str]] = []  # (sender, receiver, receiver's JID)
        for pair in range(self.pairs):
            cls, link = (SlixEnd, self.starttls) if pair % 2 == 0 else (AioEnd, self.directtls)
            user = self.first_user + 2 * pair
            a = self.jid(f"user{user}") + "/msgs"
            b = self.jid(f"user{user + 1}") + "/msgs"
            sender = cls(a, self.password, link.host, link.port, self.tally)
            receiver = cls(b, self.password, link.host, link.port, self.tally, self._on_body)
            ends.append((sender, receiver, b))
            self.impls[cls.impl] += 1
        clients = [c for s, r, _ in ends for c in (s, r)]
        try:
            results = await asyncio.gather(*(c.login(self.login_timeout) for c in clients),
                                           return_exceptions=True)
            for c, r in zip(clients, results, strict=True):
                if isinstance(r, BaseException):
                    self.tally.login_failures.append(f"{c.impl} {c.jid}: {r!r:.150}")
            live = [(i, s, to) for i, (s, r, to) in enumerate(ends)
                    if s.started.done() and r.started.done()]
            await asyncio.gather(*(self._send(i, s, to, seconds) for i, s, to in live))
            deadline = time.monotonic() + drain
            while time.monotonic() < deadline and self.tally.lost():
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # a late duplicate would come now
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def _send(self, pair: int, sender: Any, to: str, seconds: float) -> None:
        await asyncio.sleep(random.uniform(0, self.interval))
        end = time.monotonic() + seconds
        seq = 0
        while time.monotonic() < end:
            sender.send(to, body(pair, seq, _payload()))
            self.tally.sent[(pair, seq)] = time.time()
            seq += 1
            await asyncio.sleep(self.interval)
