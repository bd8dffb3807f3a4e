"""Where a client session meets the gateway: the one narrow interface between them.

`net/session.py` (one connection's I/O) needs these members of the gateway and no others;
`net/gateway.py` implements them, and it and `net/operator.py` drive sessions only through
`ClientSession`'s public methods (`drain`, `system_shutdown`, `close`, `resume`,
`upstream_keepalive`). Neither module
imports the other's internals, so there is no import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from xmppgw.connection import Vserver

if TYPE_CHECKING:
    from collections.abc import Mapping

    from xmppgw.config import Config
    from xmppgw.metrics import Metrics
    from xmppgw.net.splice import PipePool
    from xmppgw.slb.farm import Serverfarm


class VserverHandle(Vserver, Protocol):
    """A vserver at run time (`listeners.VserverRuntime`): what the machine reads of it
    (`connection.Vserver`), and where the adapter counts refusals."""

    def note_refusal(self, log: Any, client: str, reason: str, now: float) -> None:
        """Count an admission refusal; log at most one line per second."""


class SessionHost(Protocol):
    """The gateway as a session sees it.

    - `config`: the current config (a reload replaces it); `farms`: serverfarms by name;
    - `log` (structlog-like), `metrics` (None when off), `pipes` (the splice pipe pool, None
      when the relay copies);
    - `sessions`: the live sessions (a session adds itself at accept, removes itself once
      logged); `orphans`: hedge losers still owing the engine a verdict (plan.Detach);
    - `sync_peers(farm)`: before the engine picks, what the other workers hold;
    - `engine_changed(farm)`: after the engine ran: log state changes, publish, wake waiters.
    """

    @property
    def config(self) -> Config: ...

    @property
    def farms(self) -> Mapping[str, Serverfarm]: ...

    log: Any
    metrics: Metrics | None
    pipes: PipePool | None
    sessions: set[Any]
    orphans: set[Any]

    def sync_peers(self, farm: Serverfarm) -> None: ...

    def engine_changed(self, farm: Serverfarm) -> None: ...
