"""The full set of real servers the integration tests run against, started in parallel.

Layout (all loopback, nothing bound to 0.0.0.0 except Erlang's epmd/distribution on 127.0.0.1):

- DNS stub on 127.0.4.53:53, the resolver of every server below. It starts with records for
  ``pr.test`` (SRV c2s/s2s and A -> Prosody) and none for ``example.test``: tests publish those
  (e.g. pointing at the gateway) before the first federation attempt, because ejabberd refuses
  a domain for minutes after a failed s2s lookup.
- ejabberd cluster for ``example.test``: nodes ej1/ej2/ej3 on 127.0.2.1/.2/.3, ports 5222
  (STARTTLS), 5223 (direct TLS), 5269 (s2s), all with a raised accept backlog
  (``ejabberd.LISTEN_BACKLOG``); 5282 (STARTTLS, PROXY protocol first); and 5322 (STARTTLS)
  and 5323 (direct TLS) with ejabberd's default backlog (5), as operators run it
  (``DEFAULT_BACKLOG_PORTS``, for the reconnect-storm tests).
- Prosody for ``pr.test`` on 127.0.3.1 (5222, 5269); its private hosts file maps
  ``example.test`` to 127.0.1.1, the gateway's virtual address (its s2s vserver is on 5269).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from .dnsstub import DnsStub
from .ejabberd import EJABBERD_DEFAULT, EjabberdCluster
from .lock import HarnessLock
from .proc import parallel
from .prosody import Prosody

PASSWORD = "secret"
DNS_ADDRESS = "127.0.4.53"
EJABBERD_DOMAIN = "example.test"
EJABBERD_NODES: tuple[tuple[str, str], ...] = (
    ("ej1", "127.0.2.1"),
    ("ej2", "127.0.2.2"),
    ("ej3", "127.0.2.3"),
)
PROSODY_DOMAIN = "pr.test"
PROSODY_ADDRESS = "127.0.3.1"
GATEWAY_S2S_ADDRESS = "127.0.1.1"
DEFAULT_PROSODY_HOSTS: Mapping[str, str] = {EJABBERD_DOMAIN: GATEWAY_S2S_ADDRESS}
# A c2s listener on every node that expects a PROXY header first (v1 or v2: ejabberd reads
# both), for the gateway's `proxy_protocol` farms.
PROXY_C2S_PORT = 5282
PROXY_LISTENERS = ({"port": PROXY_C2S_PORT, "module": "ejabberd_c2s", "starttls": True,
                    "use_proxy_protocol": True},)
# ejabberd's default backlog (5), as operators run it: the same c2s listeners as 5222 and
# 5223 (STARTTLS, direct TLS; same certificate), on other ports and without a `backlog` key.
# The other listeners keep the raised backlog; the reconnect-storm tests use these.
DEFAULT_BACKLOG_C2S_PORT = 5322
DEFAULT_BACKLOG_C2S_TLS_PORT = 5323
DEFAULT_BACKLOG_PORTS = (DEFAULT_BACKLOG_C2S_PORT, DEFAULT_BACKLOG_C2S_TLS_PORT)
DEFAULT_BACKLOG_LISTENERS = (
    {"port": DEFAULT_BACKLOG_C2S_PORT, "module": "ejabberd_c2s", "starttls": True,
     "backlog": EJABBERD_DEFAULT},
    {"port": DEFAULT_BACKLOG_C2S_TLS_PORT, "module": "ejabberd_c2s", "tls": True,
     "backlog": EJABBERD_DEFAULT},
)
NAMED_USERS = ("alice", "bob", "carol")
NUMBERED_USERS = 200
PROSODY_USERS = ("pat",)


class Servers:
    """DNS stub + 3-node ejabberd cluster + Prosody, with their test accounts.

    ``prosody_hosts`` is Prosody's private hosts file (default: ``example.test`` at the
    gateway's s2s address); ``ejabberd_extra_listeners`` go to every node (see
    EjabberdCluster): by default the ``use_proxy_protocol`` listener (PROXY_LISTENERS) and
    the default-backlog listeners (DEFAULT_BACKLOG_LISTENERS).

    ``Servers(base_dir).start()`` brings everything up (raising, with log tails, if anything
    fails; whatever did start is stopped first); ``stop()`` always tears everything down and
    may be called any number of times.
    """

    def __init__(
        self,
        base_dir: Path,
        prosody_hosts: Mapping[str, str] = DEFAULT_PROSODY_HOSTS,
        ejabberd_extra_listeners: Sequence[Mapping[str, Any]] = (
            *PROXY_LISTENERS, *DEFAULT_BACKLOG_LISTENERS),
    ) -> None:
        self.base_dir = Path(base_dir)
        self.password = PASSWORD
        self.dns = DnsStub(DNS_ADDRESS)
        self.ejabberd = EjabberdCluster(
            self.base_dir, EJABBERD_DOMAIN, EJABBERD_NODES, resolver=DNS_ADDRESS,
            extra_listeners=ejabberd_extra_listeners,
        )
        self.prosody = Prosody(
            self.base_dir, PROSODY_DOMAIN, PROSODY_ADDRESS, resolver=DNS_ADDRESS,
            hosts=prosody_hosts,
        )
        # user -> password, per server
        self.users: dict[str, str] = {u: PASSWORD for u in NAMED_USERS} | {
            f"user{i}": PASSWORD for i in range(NUMBERED_USERS)
        }
        self.prosody_users: dict[str, str] = {u: PASSWORD for u in PROSODY_USERS}
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self._lock = HarnessLock()

    # ----- addresses and names ------------------------------------------------------------

    @property
    def dns_address(self) -> str:
        return DNS_ADDRESS

    @property
    def ejabberd_domain(self) -> str:
        return self.ejabberd.domain

    @property
    def ejabberd_addresses(self) -> list[str]:
        return self.ejabberd.addresses

    @property
    def prosody_domain(self) -> str:
        return self.prosody.domain

    @property
    def prosody_address(self) -> str:
        return self.prosody.address

    @property
    def ejabberd_cert(self) -> Path:
        """Self-signed certificate (its own CA) the ejabberd nodes present."""
        return self.ejabberd.cert_path

    @property
    def prosody_cert(self) -> Path:
        """Self-signed certificate (its own CA) Prosody presents."""
        return self.prosody.cert_path

    def jid(self, user: str) -> str:
        """Bare JID of a test account, on whichever server holds it."""
        domain = self.prosody_domain if user in self.prosody_users else self.ejabberd_domain
        return f"{user}@{domain}"

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self) -> Servers:
        """Start the three parts in parallel threads; on failure stop everything, re-raise.

        Waits first for any other harness on this machine to stop (tests/harness/lock.py).
        """
        waited = self._lock.acquire()
        if waited >= 1:
            self.timings["waited for harness lock"] = round(waited, 1)
        began = time.monotonic()
        try:
            parallel(
                [self._start_dns, self._start_ejabberd, self._start_prosody], "servers"
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Tear everything down; each part is stopped even if another one fails to."""
        errors: list[BaseException] = []
        for stop in (self.ejabberd.stop, self.prosody.stop, self.dns.stop):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest, report after
                errors.append(exc)
        self._lock.release()
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- the three parts ----------------------------------------------------------------

    def _timed(self, what: str, began: float) -> None:
        self.timings[what] = round(time.monotonic() - began, 2)

    def _start_dns(self) -> None:
        began = time.monotonic()
        self.dns.start()
        self.dns.add_srv(f"_xmpp-client._tcp.{PROSODY_DOMAIN}", 0, 0, 5222, PROSODY_ADDRESS)
        self.dns.add_srv(f"_xmpp-server._tcp.{PROSODY_DOMAIN}", 0, 0, 5269, PROSODY_ADDRESS)
        self.dns.add_a(PROSODY_DOMAIN, PROSODY_ADDRESS)
        self._timed("dns", began)

    def _start_ejabberd(self) -> None:
        began = time.monotonic()
        self.ejabberd.start()
        self._timed("ejabberd cluster", began)
        began = time.monotonic()
        self.ejabberd.register_many(self.users)
        self._timed(f"ejabberd register {len(self.users)} users", began)

    def _start_prosody(self) -> None:
        began = time.monotonic()
        self.prosody.start()
        for user, password in self.prosody_users.items():
            self.prosody.register(user, password)
        self._timed("prosody", began)
