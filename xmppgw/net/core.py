"""The gateway as its parts see it: what `operator.py`, `reload.py` and `view.py` read and
call on the running `Gateway`.

A Protocol, so those modules never import `net/gateway.py` (which imports them): the
gateway satisfies it by its shape. `listeners` and `operator` are typed loosely here, since
naming their classes would make this module and theirs import each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from xmppgw.net.host import SessionHost

if TYPE_CHECKING:
    from xmppgw.config import Config
    from xmppgw.control.server import ControlServer
    from xmppgw.dns.publisher import SrvPublisher
    from xmppgw.health.runner import ProbeRunner
    from xmppgw.net.shared import AdminTable, RowMap
    from xmppgw.slb.farm import Real


class GatewayCore(SessionHost, Protocol):
    """`SessionHost` plus what the operator, reload and view parts use.

    - `worker` (0 runs probes and SRV), `multi` (workers > 1), `stopping`;
    - `admin`, `rows`, `real_index`: the shared admin table and the row of each real;
    - `listeners` (`listeners.Listeners`), `operator` (`operator.Operator`);
    - `health`, `srv`, `control`: worker 0's probes, SRV publisher and control socket;
    - `config_generation`, `last_reload`: what the last reload applied.
    """

    worker: int
    multi: bool
    stopping: bool
    admin: AdminTable
    rows: RowMap
    real_index: dict[Real, int]
    listeners: Any
    operator: Any
    health: ProbeRunner | None
    srv: SrvPublisher | None
    control: ControlServer | None
    config_generation: int
    last_reload: dict[str, Any]

    def index_reals(self) -> None: ...

    async def start_probes(self, config: Config) -> None: ...

    async def reload_srv(self, config: Config, action: str | None) -> None: ...

    async def reload(self, config: Config) -> dict[str, Any]: ...

    def wake_waiters_if_queued(self) -> None: ...

    def counter(self, real: Real, field: str) -> int:
        """A real's counter summed over every worker."""
        ...
