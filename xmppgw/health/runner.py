"""The asyncio side of the probes: one small loop that starts what `HealthSchedule` says is
due, one task per probe run, and hands each result back to the schedule.

All the decisions (when, rise/fall, the real's verdict) are in `state.py`; this module only
waits, runs checks and reports. It logs a probe's verdict when it changes (a `probe` line,
with the last error), never each run: a farm probed every 2 s would otherwise write a line
per real every 2 s. A real's verdict goes to `on_verdict`, which the gateway turns into
`Serverfarm.probe_result` and, with `workers > 1`, into the shared table.

With `workers > 1` only worker 0 runs probes: the reals are probed once per gateway, not
once per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from xmppgw.config import ProbeConfig, ServerfarmConfig
from xmppgw.health.checks import Check, make_check, probe_once, tls_context
from xmppgw.health.state import HealthSchedule, Outcome, ProbeChange, ProbeState, RealVerdict

VerdictHandler = Callable[[RealVerdict], None]
# Event loop timers fire up to a clock tick early (uvloop counts whole milliseconds): what is
# due this close to now starts now, instead of the loop spinning until the tick passes.
TIMER_SLACK = 0.002


class ProbeRunner:
    def __init__(self, farms: Iterable[ServerfarmConfig], log: Any,
                 on_verdict: VerdictHandler) -> None:
        loop = asyncio.get_running_loop()
        farms = list(farms)
        self.schedule = HealthSchedule(farms, loop.time())
        self.log = log
        self.on_verdict = on_verdict
        self._addresses = {(f.name, str(r.address)): r.address.host
                           for f in farms for r in f.reals}
        self._proxy = {f.name: f.proxy_protocol for f in farms}
        self._implicit = [f for f in farms if f.implicit_probe]
        self._checks: dict[int, Check] = {}
        self._tls: dict[int, ssl.SSLContext] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self.schedule)

    def start(self) -> None:
        for farm in self._implicit:  # the operator configured no probe here: say why one runs
            probe = farm.probes[0]
            self.log.info("implicit_probe", farm=farm.name, type=probe.type,
                          interval=probe.interval, timeout=probe.timeout, rise=probe.rise,
                          fall=probe.fall, reason="[srv] publishes this farm's reals and it "
                          "has no probes; `probe = []` on the farm turns this off")
        self.log.info("probes_started", reals=len(self.schedule.reals),
                      probes=len(self.schedule.probes),
                      implicit=[f.name for f in self._implicit])
        self._main = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the runs in flight, log persistent sessions out (briefly), close all."""
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.shutdown() for c in self._checks.values()),
                             return_exceptions=True)
        self._checks.clear()

    def describe(self, farm: str, real: str, now: float, wall: float) -> list[dict[str, Any]]:
        health = self.schedule.real(farm, real)
        return [] if health is None else [p.describe(now, wall) for p in health.probes]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            for probe in self.schedule.start_due(loop.time() + TIMER_SLACK):
                task = loop.create_task(self._probe(probe))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            wake = self.schedule.next_wake()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake):
                    await self._wake.wait()  # a run ended: its next one may be due sooner

    async def _probe(self, probe: ProbeState) -> None:
        loop = asyncio.get_running_loop()
        try:
            outcome = await probe_once(self._check(probe), probe.config.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep probing whatever one run did
            outcome = Outcome(False, f"probe error: {type(exc).__name__}: {exc}")
        change, verdict = self.schedule.finish(probe, outcome, loop.time())
        self._wake.set()
        if change is not None:
            self._log_change(change, probe)
        if verdict is not None:
            try:
                self.on_verdict(verdict)
            except Exception as exc:  # noqa: BLE001 - a bug there must not stop the probes
                self.log.error("probe_verdict_failed", farm=verdict.farm, real=verdict.real,
                               error=f"{type(exc).__name__}: {exc}")

    def _check(self, probe: ProbeState) -> Check:
        """One Check per probe of a real, kept: a persistent ping keeps its session in it."""
        check = self._checks.get(id(probe))
        if check is None:
            host = self._addresses[(probe.farm, probe.real)]
            check = make_check(probe.config, host, probe.port, self._tls_for(probe.config),
                               self._proxy[probe.farm])
            self._checks[id(probe)] = check
        return check

    def _tls_for(self, config: ProbeConfig) -> ssl.SSLContext | None:
        if config.type != "xmpp-ping":
            return None
        if id(config) not in self._tls:  # one per probe config, shared by the farm's reals
            self._tls[id(config)] = tls_context(config)
        return self._tls[id(config)]

    def _log_change(self, change: ProbeChange, probe: ProbeState) -> None:
        rtt = None if probe.last is None or probe.last.rtt is None else round(probe.last.rtt, 6)
        self.log.warning("probe", farm=change.farm, real=change.real, type=change.probe,
                         port=change.port, result="ok" if change.up else "failed",
                         error=change.error, reason=change.reason, rtt=rtt)
