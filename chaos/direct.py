"""The seed's argument, measured: clients with no gateway, resolving SRV themselves.

slixmpp given no host resolves `_xmpp-client._tcp.<domain>` (with aiodns) and tries the
records in priority order, as RFC 6120 section 3.2.1 says a client must. Here the records
name the ejabberd nodes directly (served by the harness's DNS stub), the faulty node's record
first; each client gets `timeout` seconds to log in. A client that has not logged in by then
counts as a failed login, reported with the bound (a black-holed first target costs slixmpp
about 134 s: Linux's six SYN retries, then the next record), so the run does not wait minutes.

`srv_records` puts the records in the stub and takes them out again; `srv_logins` runs the
clients concurrently in a thread of its own and returns each one's outcome and time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from tests.harness.dnsstub import DnsStub


@dataclass
class Login:
    ok: bool
    seconds: float
    reason: str = ""


@contextmanager
def srv_records(dns: DnsStub, domain: str, targets: Sequence[tuple[str, int]]) -> Iterator[None]:
    """`_xmpp-client._tcp.<domain>` SRV records, one per (address, port) in `targets`, in
    that priority order (0, 10, 20, ...), each naming `srvN.<domain>` with its A record."""
    name = f"_xmpp-client._tcp.{domain}"
    hosts = [f"srv{i + 1}.{domain}" for i in range(len(targets))]
    for i, ((address, port), host) in enumerate(zip(targets, hosts, strict=True)):
        dns.add_srv(name, 10 * i, 0, port, host)
        dns.add_a(host, address)
    try:
        yield
    finally:
        dns.remove(name)
        for host in hosts:
            dns.remove(host)


def srv_logins(jids: Sequence[str], password: str, nameserver: str,
               timeout: float) -> list[Login]:
    """Log each of `jids` in (concurrently) by SRV lookup at `nameserver`, no host given;
    each has `timeout` s. Returns one Login per JID, in order."""
    out: list[Login] = []

    def main() -> None:
        out.extend(asyncio.run(_all(jids, password, nameserver, timeout)))

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    thread.join(timeout + 30)
    return out or [Login(False, timeout, "the clients' thread did not finish")] * len(jids)


async def _all(jids: Sequence[str], password: str, nameserver: str,
               timeout: float) -> list[Login]:
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    return list(await asyncio.gather(*(_one(j, password, nameserver, timeout) for j in jids)))


async def _one(jid: str, password: str, nameserver: str, timeout: float) -> Login:
    from slixmpp import ClientXMPP

    class SrvClient(ClientXMPP):  # type: ignore[misc]
        def configure_dns(self, resolver: Any, domain: str | None = None,
                          port: int | None = None) -> None:
            if resolver is not None:
                resolver.nameservers = [nameserver]

    client = SrvClient(jid, password)
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE
    client.enable_direct_tls, client.enable_starttls, client.enable_plaintext = False, True, False
    client.use_ipv6 = False
    started = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start",
                             lambda _: started.done() or started.set_result(None))
    client.add_event_handler("failed_all_auth", lambda _: started.done() or started.set_exception(
        RuntimeError("authentication failed")))
    began = time.monotonic()
    client.connect()  # no host: SRV
    try:
        await asyncio.wait_for(started, timeout)
        return Login(True, round(time.monotonic() - began, 3))
    except TimeoutError:
        return Login(False, timeout, f"no session within the {timeout:g} s bound")
    except Exception as exc:  # noqa: BLE001 - a failed login is a figure
        return Login(False, round(time.monotonic() - began, 3), str(exc)[:120])
    finally:
        client.cancel_connection_attempt()
        with suppress(Exception):
            await asyncio.wait_for(client.disconnect(wait=1.0), 2.0)
        client.abort()
