"""Reload: what a new config changes (`diff`, pure), and the thin step that applies it.

`diff(old, new)` compares two `Config` objects and says which serverfarms, reals and vservers
are added, removed or changed, which run-time operator overrides the new file takes back,
and whether the probes and the SRV publisher must (re)start. It reads no clock and touches
no socket, so it is unit-tested on plain configs (tests/unit/test_reload.py).

`apply` carries a plan out on a running gateway without dropping a connection: farms and
reals are reconfigured in place (`Serverfarm.reconfigure`; a removed real takes no new
connections, its connections run to their end), a vserver whose address or mode changed is
retired and listened on anew, and what an operator changed at run time (`real ...
no-inservice`) stays unless the new file changes that very setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xmppgw.slb.farm import Serverfarm

if TYPE_CHECKING:
    from xmppgw.config import Config, ServerfarmConfig
    from xmppgw.net.core import GatewayCore

RealKey = tuple[str, str]  # (serverfarm, real address as `show` prints it)


class ReloadRefused(Exception):
    """A config that checks out but cannot be applied to the running gateway."""


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload changes. Names are in the new config's order (removed ones in the old's)."""

    farms_added: tuple[str, ...] = ()
    farms_removed: tuple[str, ...] = ()
    farms_changed: tuple[str, ...] = ()  # in both configs, settings or reals differ
    reals_added: tuple[RealKey, ...] = ()  # every real of an added farm too
    reals_removed: tuple[RealKey, ...] = ()  # every real of a removed farm too
    reals_changed: tuple[RealKey, ...] = ()  # in both, some setting differs
    vservers_added: tuple[str, ...] = ()  # a new listener: new names, and the moved ones
    vservers_moved: tuple[str, ...] = ()  # virtual or mode changed: old listener retired
    vservers_removed: tuple[str, ...] = ()
    vservers_changed: tuple[str, ...] = ()  # kept listening, some setting differs
    clear_reals: tuple[RealKey, ...] = ()  # operator overrides the new file takes back
    clear_vservers: tuple[str, ...] = ()
    restart_probes: bool = False  # some farm's or real's probes differ (also from none)
    srv: str | None = None  # "start", "stop" or "reload" the SRV publisher; None: no [srv]
    workers_changed: bool = False  # gateway.workers differs: that part takes a restart

    def summary(self) -> dict[str, list[str]]:
        """What `xmppgw reload` prints and the `reloaded` log line carries."""
        return {"reals_added": [f"{farm}/{real}" for farm, real in self.reals_added],
                "reals_removed": [f"{farm}/{real}" for farm, real in self.reals_removed],
                "vservers_added": list(self.vservers_added),
                "vservers_removed": list(self.vservers_removed)}


def diff(old: Config, new: Config) -> ReloadPlan:
    """What applying `new` to a gateway running `old` changes."""
    old_farms = {f.name: f for f in old.serverfarms}
    new_names = {f.name for f in new.serverfarms}
    farms_added, farms_changed = [], []
    reals_added: list[RealKey] = []
    reals_removed: list[RealKey] = []
    reals_changed: list[RealKey] = []
    clear_reals: list[RealKey] = []
    for farm in new.serverfarms:
        before = old_farms.get(farm.name)
        if before is None:
            farms_added.append(farm.name)
            reals_added += _keys(farm)
            continue
        if before != farm:
            farms_changed.append(farm.name)
        previous = {str(r.address): r for r in before.reals}
        now = {str(r.address) for r in farm.reals}
        for real in farm.reals:
            key = (farm.name, str(real.address))
            was = previous.get(key[1])
            if was is None:
                reals_added.append(key)
            elif was != real:
                reals_changed.append(key)
                if was.inservice != real.inservice:  # the file's word beats the operator's
                    clear_reals.append(key)
        gone = [(farm.name, name) for name in previous if name not in now]
        reals_removed += gone
        clear_reals += gone
    farms_removed = [f.name for f in old.serverfarms if f.name not in new_names]
    for name in farms_removed:
        reals_removed += _keys(old_farms[name])

    old_vservers = {v.name: v for v in old.vservers}
    new_vservers = {v.name for v in new.vservers}
    vservers_added, vservers_moved, vservers_changed = [], [], []
    clear_vservers = []
    for vs in new.vservers:
        before = old_vservers.get(vs.name)
        if before is not None and (before.virtual, before.mode) != (vs.virtual, vs.mode):
            vservers_moved.append(vs.name)
            before = None
        if before is None:
            vservers_added.append(vs.name)
            clear_vservers.append(vs.name)
            continue
        if before != vs:
            vservers_changed.append(vs.name)
        if before.inservice != vs.inservice:
            clear_vservers.append(vs.name)
    vservers_removed = [v.name for v in old.vservers if v.name not in new_vservers]

    if new.srv is None:
        srv = None if old.srv is None else "stop"
    else:
        srv = "start" if old.srv is None else "reload"
    return ReloadPlan(
        farms_added=tuple(farms_added), farms_removed=tuple(farms_removed),
        farms_changed=tuple(farms_changed), reals_added=tuple(reals_added),
        reals_removed=tuple(reals_removed), reals_changed=tuple(reals_changed),
        vservers_added=tuple(vservers_added), vservers_moved=tuple(vservers_moved),
        vservers_removed=tuple(vservers_removed), vservers_changed=tuple(vservers_changed),
        clear_reals=tuple(clear_reals), clear_vservers=tuple(clear_vservers),
        restart_probes=_probes_of(old) != _probes_of(new), srv=srv,
        workers_changed=old.gateway.workers != new.gateway.workers)


def _keys(farm: ServerfarmConfig) -> list[RealKey]:
    return [(farm.name, str(r.address)) for r in farm.reals]


def _probes_of(config: Config) -> list[Any]:
    return [(f.name, f.probes, [(r.address, r.probes) for r in f.reals])
            for f in config.serverfarms]


async def apply(gateway: GatewayCore, plan: ReloadPlan, config: Config, now: float) -> None:
    """Carry `plan` (from `diff(gateway.config, config)`) out on the running gateway; `now`
    is the loop's clock. The shared tables already have rows for `config`."""
    rows, admin = gateway.rows, gateway.admin
    for key in plan.clear_reals:
        admin.clear_real(rows.reals[key])
    for name in plan.clear_vservers:
        admin.clear_vserver(rows.vservers[name])
    for farm_config in config.serverfarms:
        if farm_config.name in plan.farms_added:
            gateway.farms[farm_config.name] = Serverfarm(farm_config, now)
        else:  # every kept farm takes its new config (and a fresh predictor)
            gateway.farms[farm_config.name].reconfigure(farm_config, now)
    for name in plan.farms_removed:
        del gateway.farms[name]  # its reals' connections run on: the sessions hold them
    gateway.config = config
    gateway.listeners.reconfigure(config, moved=set(plan.vservers_moved))
    gateway.index_reals()
    for farm in gateway.farms.values():
        gateway.engine_changed(farm)
    gateway.operator.forget_admin()  # the reals may be new objects: apply every override
    await gateway.operator.apply_vservers()
    if gateway.worker == 0:  # worker 0 probes and publishes for every worker
        if plan.restart_probes:
            await gateway.start_probes(config)
        await gateway.reload_srv(config, plan.srv)
