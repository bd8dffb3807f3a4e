"""A bounded slixmpp login for tests: ``async with xmpp_session(...) as client: ...``.

slixmpp retries a failed connection forever with backoff and reports a failed login only as an
event; tests want the opposite: one attempt, a deadline, an exception that says what failed, and
a disconnect that always happens. Certificates are not verified (the servers' are self-signed).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

from slixmpp import ClientXMPP

LOGIN_TIMEOUT = 20.0
DISCONNECT_WAIT = 2.0


class LoginFailed(AssertionError):
    """The client could not connect, negotiate or authenticate within the deadline."""


def make_client(
    jid: str, password: str, direct_tls: bool = False, plugins: Sequence[str] = ("xep_0199",),
    fallback: bool = False,
) -> ClientXMPP:
    """A ClientXMPP that skips certificate checks and uses exactly one TLS mode:
    direct TLS (XEP-0368, e.g. port 5223) or STARTTLS (port 5222); with `fallback`, both, as
    slixmpp does by default (direct TLS first, then STARTTLS on the same host and port)."""
    client = ClientXMPP(jid, password)
    for plugin in plugins:
        client.register_plugin(plugin)
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE
    client.enable_direct_tls = direct_tls
    client.enable_starttls = not direct_tls or fallback
    client.enable_plaintext = False
    return client


@asynccontextmanager
async def xmpp_session(
    jid: str,
    password: str,
    host: str,
    port: int,
    *,
    direct_tls: bool = False,
    timeout: float = LOGIN_TIMEOUT,
    send_presence: bool = True,
    plugins: Sequence[str] = ("xep_0199",),
    fallback: bool = False,
) -> AsyncIterator[ClientXMPP]:
    """Log in as ``jid`` at (host, port) and yield the client once the session has started.

    Raises LoginFailed on connection failure, authentication failure or timeout; always
    disconnects on exit.
    """
    client = make_client(jid, password, direct_tls, plugins, fallback)
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fail(why: str) -> None:
        if not started.done():
            started.set_exception(LoginFailed(f"{jid} at {host}:{port}: {why}"))

    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    client.add_event_handler("failed_all_auth", lambda _: fail("authentication failed"))
    client.add_event_handler("connection_failed", lambda err: fail(f"cannot connect: {err}"))
    client.add_event_handler("disconnected", lambda reason: fail(f"disconnected: {reason}"))
    client.connect(host, port)
    try:
        try:
            await asyncio.wait_for(started, timeout)
        except TimeoutError:
            raise LoginFailed(f"{jid} at {host}:{port}: no session after {timeout}s") from None
        if send_presence:
            client.send_presence()
        yield client
    finally:
        await close(client)


async def close(client: ClientXMPP) -> None:
    """Close the stream politely, and abort the socket if the server does not answer."""
    client.cancel_connection_attempt()
    with suppress(Exception):
        await asyncio.wait_for(client.disconnect(wait=DISCONNECT_WAIT), DISCONNECT_WAIT + 1)
    client.abort()
