"""The demo: the gateway's failover, live, in about a minute, with no input.

Run by `bash scripts/demo.sh` (which installs everything first). It starts the harness's real
servers (a 3-node ejabberd cluster, Prosody, a DNS stub: tests/harness), a fourth standalone
ejabberd node as the seed's spare, and xmppgw with conf/demo-failover.toml (the seed's
topology: 5222, 5223 and 5269 on one virtual address, a leastconns farm, the spare out of
service, probes and SRV records on). A few dozen real slixmpp clients (the chaos suite's storm
clients, tests/support/storm_client.py, plus a XEP-0199 ping every second:
scripts/demo_clients.py) log in through it and stay, and a trickle of short logins arrives.

Then it plays a scenario: steady state; `kill -9` of a node (its clients are cut and log in
again through the gateway, the node goes FAILED, its SRV record disappears); the node restarted
(TESTING, then OPERATIONAL with slow start); a planned drain of another node
(`xmppgw real XMPP <node> no-inservice --drain N`: no session cut before the deadline); the
spare put in service. It ends with a summary and tears everything down, also on Ctrl-C.

In a terminal it draws a live screen (rich); with no terminal, with CI set or with --plain it
prints plain lines. --quick shortens the waits (the integration test runs that).
`run_scenario()` takes an already running `Servers`, so tests/integration/test_demo.py runs the
same scenario against the test session's servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.client import xmpp_session
from tests.harness.ejabberd import EjabberdCluster
from tests.harness.fixtures import make_base_dir
from tests.harness.servers import DNS_ADDRESS, Servers
from tests.support.gateway import GatewayProcess
from tests.support.storm import Storm, source_addresses
from tests.support.wait import wait_for
from xmppgw.control import show
from xmppgw.control.server import request
from xmppgw.control.snapshot import GatewaySnapshot

CONFIG = ROOT / "conf" / "demo-failover.toml"
CONFIG_VIP = "127.0.1.1"
CONFIG_CONTROL = "/run/xmppgw-demo/xmppgw.sock"
FARM = "XMPP"
SPARE = ("ej4", "127.0.2.4")
KILLED_INDEX = 1  # ej2: not ej1, the node the others joined
DRAINED_INDEX = 2  # ej3
CHURN_USERS = [f"user{i}" for i in range(150, 200)]
DOWN_STATES = ("FAILED", "PROBE_FAILED")
# gateway log events worth a line on screen
SHOWN_EVENTS = ("real_state", "farm_panic", "farm_panic_end", "drained", "operator_real")


@dataclass
class Timing:
    steady: float = 8.0
    settle: float = 4.0
    drain: int = 10
    spare_wait: float = 20.0
    final: float = 3.0
    status_every: float = 3.0

    @classmethod
    def quick(cls) -> Timing:
        return cls(steady=3.0, settle=1.0, drain=5, spare_wait=15.0, final=1.0,
                   status_every=2.0)


# --- the client population: the chaos suite's storm clients, pinging -------------------------


class DemoClients(Storm):
    """tests/support/storm.py's Storm, with scripts/demo_clients.py as the client process
    (a ping every second) and account numbers from `first` (client index = account number)."""

    def __init__(self, workdir: Path, *, first: int, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.first = first
        self.client_command = [sys.executable, str(ROOT / "scripts" / "demo_clients.py")]
        self.new_session = True  # Ctrl-C is ours to handle

    def quit(self, timeout: float = 10.0) -> None:
        super().quit(timeout)


class Churn:
    """A trickle of short logins (log in, ping, log out) through the gateway: what brings a
    real out of TESTING, and what lands on a real put in service.

    A new login starts every `interval` seconds while fewer than `in_flight` are under way:
    the demo keeps 4, so a slow real slows the trickle; the chaos suite gives a bound that
    is never reached, so new users arrive open-loop as real ones do. Each login has a
    resource of its own; `login_timeout` and `ping_timeout` are seconds."""

    def __init__(self, servers: Servers, vip: str, interval: float = 0.5, *,
                 in_flight: int = 4, login_timeout: float = 15.0,
                 ping_timeout: float = 5.0, resource: str = "churn") -> None:
        self.servers, self.vip, self.interval = servers, vip, interval
        self.in_flight, self.resource = in_flight, resource
        self.login_timeout, self.ping_timeout = login_timeout, ping_timeout
        self.ok: list[float] = []
        self.failed: list[tuple[float, str]] = []
        self.retried: list[tuple[float, str]] = []  # cut once, then logged in (or failed)
        self._serial = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Churn:
        # slixmpp leaves a filter task per closed client behind; asyncio logs each one
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(25)

    async def _one(self, user: str) -> None:
        """One short login; cut off, it tries once more at once, as a client reconnects:
        a login under way on a node killed with -9 is lost whatever the balancer does
        (its bytes already went there), and the figure is what the user sees."""
        self._serial += 1
        jid = f"{self.servers.jid(user)}/{self.resource}{self._serial}"
        for attempt in range(2):
            try:
                async with xmpp_session(jid, self.servers.password, self.vip, 5222,
                                        timeout=self.login_timeout) as client:
                    await client.plugin["xep_0199"].ping(jid=self.servers.ejabberd_domain,
                                                         timeout=self.ping_timeout)
                self.ok.append(time.time())
                return
            except Exception as exc:  # noqa: BLE001 - a failed login is a figure
                if attempt:
                    self.failed.append((time.time(), str(exc)[:200]))
                else:
                    self.retried.append((time.time(), str(exc)[:200]))

    async def _main(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while not self._stop.is_set():
            if len(tasks) < self.in_flight:
                task = asyncio.ensure_future(self._one(CHURN_USERS[i % len(CHURN_USERS)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(self.interval)
        if tasks:
            await asyncio.wait(tasks, timeout=max(20.0, self.login_timeout + 10))


# --- what the gateway says ----------------------------------------------------------------------


class GatewayWatch:
    """Tails the gateway's JSON log and asks its control socket for the farm once a second."""

    def __init__(self, gateway: GatewayProcess, control: str) -> None:
        self.gateway, self.control = gateway, control
        self._offset = 0
        self._partial = b""
        self.records: list[dict[str, Any]] = []
        self.farm_text = "(waiting for the gateway)"
        self.reals_text = ""
        self.lock = threading.Lock()

    def poll_log(self) -> list[dict[str, Any]]:
        path = self.gateway.log_path
        if not path.exists():
            return []
        with path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                new.append(record)
        with self.lock:
            self.records.extend(new)
        return new

    def poll_show(self) -> None:
        try:
            reply = request(self.control, {"command": "show", "conns": False}, timeout=5)
            data = GatewaySnapshot.from_json(reply["data"])
            farm, reals = show.serverfarms_detail(data), show.reals(data, detail=True)
        except (OSError, ValueError, KeyError) as exc:
            farm, reals = f"(control socket: {exc})", ""
        with self.lock:
            self.farm_text, self.reals_text = farm.rstrip(), reals.rstrip()

    def events(self, event: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if r.get("event") == event]

    def states(self, real: str) -> list[str]:
        return [r["new"] for r in self.events("real_state") if r.get("real") == real]

    def state(self, real: str) -> str | None:
        """The real's state as `show reals` has it now."""
        with self.lock:
            text = self.reals_text
        for line in text.splitlines():
            words = line.split()
            if words and words[0] == real and len(words) > 3:
                return words[3]
        return None


def describe_event(record: dict[str, Any]) -> str | None:
    event = record.get("event")
    if event == "real_state":
        return (f"real_state {record.get('real')}: {record.get('old')} -> {record.get('new')}"
                f" ({record.get('reason')})")
    if event in ("farm_panic", "farm_panic_end"):
        return (f"{event} {record.get('farm')}: available {record.get('available')}"
                f" of {record.get('inservice')} in service")
    if event == "drained":
        return f"drained: {record.get('closed')} streams closed on {record.get('reals')}"
    if event == "operator_real":
        fields = {k: v for k, v in record.items()
                  if k not in ("event", "timestamp", "level", "logger")}
        return "operator_real " + " ".join(f"{k}={v}" for k, v in fields.items())
    if event == "connection" and record.get("error") not in (None, "drained"):
        return (f"stream error <{record.get('error')}/> to {record.get('client')}"
                f" (real {record.get('real')})")
    return None


# --- the screen ---------------------------------------------------------------------------------


@dataclass
class Screen:
    """What the scenario shows: narration, gateway events, figures; drawn by `View`."""

    began: float = field(default_factory=time.monotonic)
    step: str = "starting"
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=14))
    plain: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def say(self, text: str) -> None:
        line = f"[{self.elapsed():5.1f}s] {text}"
        with self.lock:
            self.lines.append(line)
        if self.plain:
            print(f"demo {line}", flush=True)

    def narrate(self, step: str) -> None:
        with self.lock:
            self.step = step
        self.say(f"== {step}")


class Figures:
    """Clients connected/reconnecting, and per-second rates, from the population's lines."""

    def __init__(self, populations: list[Storm], churn: Churn) -> None:
        self.populations, self.churn = populations, churn

    def records(self, event: str) -> list[dict[str, Any]]:
        return [r for p in self.populations for r in p.records(event)]

    def latest(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for p in self.populations:
            out |= p.latest()
        return out

    def total(self) -> int:
        return sum(p.clients for p in self.populations)

    def all_up(self) -> bool:
        return all(p.all_up() for p in self.populations)

    def now(self, window: float = 2.0) -> dict[str, Any]:
        latest = self.latest()
        states = Counter(r["event"] for r in latest.values())
        since = time.time() - window
        pings = [r for r in self.records("ping") if r["t"] >= since]
        logins = [r for r in self.records("up") if r["t"] >= since]
        churn = [t for t in self.churn.ok if t >= since]
        return {
            "connected": states.get("up", 0),
            "reconnecting": self.total() - states.get("up", 0),
            "logins_s": (len(logins) + len(churn)) / window,
            "failed_logins": len(self.records("fail")) + len(self.churn.failed),
            "cuts": len(self.records("down")),
            "pings_ok_s": sum(1 for r in pings if r["ok"]) / window,
            "pings_failed_s": sum(1 for r in pings if not r["ok"]) / window,
        }


class View:
    """rich Live in a terminal, plain status lines otherwise; a thread keeps it current."""

    def __init__(self, screen: Screen, watch: GatewayWatch, figures: Figures,
                 status_every: float) -> None:
        self.screen, self.watch, self.figures = screen, watch, figures
        self.status_every = status_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._live: Any = None

    def start(self) -> View:
        if not self.screen.plain:
            from rich.console import Console
            from rich.live import Live
            self._live = Live(get_renderable=self.render, console=Console(),
                              refresh_per_second=4, screen=False, transient=False)
            self._live.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._live is not None:
            self._live.stop()

    def _run(self) -> None:
        last_status = 0.0
        last_show = 0.0
        while not self._stop.is_set():
            for record in self.watch.poll_log():
                text = describe_event(record)
                if text:
                    self.screen.say(f"gateway: {text}")
            now = time.monotonic()
            if now - last_show >= 1.0:
                self.watch.poll_show()
                last_show = now
            if self.screen.plain and now - last_status >= self.status_every:
                print(f"demo [{self.screen.elapsed():5.1f}s] status: {self.status_line()}",
                      flush=True)
                last_status = now
            self._stop.wait(0.25)

    def status_line(self) -> str:
        f = self.figures.now()
        reals = []
        for line in self.watch.reals_text.splitlines():
            words = line.split()
            if len(words) > 5 and words[1] == FARM:
                reals.append(f"{words[0]} {words[3]} conns={words[4]} inflight={words[5]}")
        return (f"clients {f['connected']}/{self.figures.total()} up, {f['reconnecting']} "
                f"reconnecting; logins {f['logins_s']:.1f}/s, failed {f['failed_logins']}; "
                f"pings ok {f['pings_ok_s']:.1f}/s failed {f['pings_failed_s']:.1f}/s; "
                f"cuts {f['cuts']} | " + "; ".join(reals))

    def _console_height(self) -> int:
        return self._live.console.size.height if self._live is not None else 40

    def render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        f = self.figures.now()
        with self.screen.lock:
            step, lines = self.screen.step, list(self.screen.lines)
        with self.watch.lock:
            farm, reals = self.watch.farm_text, self.watch.reals_text
        farm = farm.split("\n\n")[0]  # the XMPP farm only: the screen must fit a terminal
        reals = "\n".join(line for i, line in enumerate(reals.splitlines())
                          if i == 0 or f" {FARM} " in line)
        lines = lines[-max(4, self._console_height() - 26):]
        stats = Table.grid(padding=(0, 2))
        stats.add_column(justify="right")
        stats.add_column()
        stats.add_row("clients connected", f"[green]{f['connected']}[/] of {self.figures.total()}")
        stats.add_row("reconnecting", f"[yellow]{f['reconnecting']}[/]")
        stats.add_row("logins / s", f"{f['logins_s']:.1f}")
        stats.add_row("failed logins", f"[red]{f['failed_logins']}[/]")
        stats.add_row("sessions cut", f"{f['cuts']}")
        stats.add_row("pings ok / s", f"[green]{f['pings_ok_s']:.1f}[/]")
        stats.add_row("pings failed / s", f"[red]{f['pings_failed_s']:.1f}[/]")

        def coloured(text: str) -> Text:
            out = Text(text)
            for word, style in (("OPERATIONAL", "green"), ("PROBE_FAILED", "red"),
                                ("FAILED", "red"), ("TESTING", "yellow"),
                                ("OUTOFSERVICE", "dim"), ("PANIC", "bold red")):
                out.highlight_words([word], style=style)
            return out

        top = Table.grid(expand=True, padding=(0, 1))
        top.add_column(ratio=3)
        top.add_column(ratio=2)
        top.add_row(Panel(coloured(farm), title="xmppgw show serverfarms detail"),
                    Panel(stats, title="clients"))
        return Group(
            Panel(Text(f"{step}   ({self.screen.elapsed():.0f} s)", style="bold"),
                  title="xmppgw failover demo"),
            top,
            Panel(coloured(reals), title="xmppgw show reals detail"),
            Panel(Text("\n".join(lines)), title="what happens (gateway log events)"),
        )


# --- the scenario -------------------------------------------------------------------------------


def demo_config(vip: str, control: str) -> str:
    text = CONFIG.read_text().replace(CONFIG_VIP, vip).replace(CONFIG_CONTROL, control)
    return text


def run(*argv: str, timeout: float = 30) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                            cwd=ROOT, stdin=subprocess.DEVNULL)
    return (result.stdout + result.stderr).rstrip()


@contextmanager
def spare_node(servers: Servers, base: Path, users: list[str],
               screen: Screen) -> Iterator[dict[str, Any]]:
    """A standalone ejabberd node on the spare's address with the demo's accounts (the
    harness's cluster has three nodes), started in the background; dead if it cannot start."""
    info: dict[str, Any] = {"up": False, "error": None}
    cluster = EjabberdCluster(base / "spare", servers.ejabberd_domain, (SPARE,),
                              resolver=DNS_ADDRESS)

    def start() -> None:
        try:
            cluster.start()
            cluster.register_many({u: servers.password for u in users})
            info["up"] = True
            screen.say(f"spare node {SPARE[0]} up on {SPARE[1]} (out of service in the farm)")
        except Exception as exc:  # noqa: BLE001 - the demo goes on with a dead spare
            info["error"] = str(exc)[:300]
            screen.say(f"spare node could not start ({exc!s:.100}); it stays dead")

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    info["thread"] = thread
    try:
        yield info
    finally:
        thread.join(60)
        cluster.stop()


def dig(vip: str) -> str:
    if not shutil.which("dig"):
        return "(dig not installed)"
    out = run("dig", f"@{vip}", "-p", "5353", "+short", "+time=2", "+tries=1", "SRV",
              "_xmpp-client._tcp.example.test")
    return " | ".join(out.splitlines()) or "(no records)"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def reconnect_times(figures: Figures) -> list[float]:
    """For every cut session: seconds until that client logged in again."""
    ups: dict[int, list[float]] = {}
    for r in figures.records("up"):
        ups.setdefault(r["client"], []).append(r["t"])
    out = []
    for r in figures.records("down"):
        later = [t for t in ups.get(r["client"], []) if t >= r["t"]]
        if later:
            out.append(min(later) - r["t"])
    return out


def run_scenario(servers: Servers, workdir: Path, *, vip: str = CONFIG_VIP,
                 control: str = CONFIG_CONTROL, quick: bool = False, plain: bool = True,
                 clients: int = 36, spare: bool = True) -> dict[str, Any]:
    """Play the demo against running `servers`; return the summary's figures."""
    timing = Timing.quick() if quick else Timing()
    screen = Screen(plain=plain)
    nodes = servers.ejabberd_addresses
    killed, drained = nodes[KILLED_INDEX], nodes[DRAINED_INDEX]
    summary: dict[str, Any] = {"clients": clients, "killed": killed, "drained": drained,
                               "spare": SPARE[1]}
    Path(control).parent.mkdir(parents=True, exist_ok=True)
    starttls = clients * 2 // 3
    users = [f"user{i}" for i in range(clients)] + CHURN_USERS
    config_path = workdir / "xmppgw.toml"

    def cli(*args: str) -> str:
        screen.say(f"$ xmppgw {' '.join(args)} -c {CONFIG.relative_to(ROOT)}")
        out = run(sys.executable, "-m", "xmppgw", *args, "-c", str(config_path))
        for line in out.splitlines():
            screen.say(f"  {line}")
        return out

    with ExitStack() as stack:
        spare_info = (stack.enter_context(spare_node(servers, workdir, users, screen))
                      if spare else {"up": False, "error": "not started"})
        gateway = GatewayProcess(demo_config(vip, control), workdir, "xmppgw")
        gateway.start()
        stack.callback(gateway.stop)
        screen.say(f"xmppgw up (pid {gateway.pid}) on {vip}: 5222 STARTTLS, 5223 direct TLS, "
                   f"5269 s2s; SRV on {vip}:5353; log {gateway.log_path}")
        common = {"host": vip, "domain": servers.ejabberd_domain, "password": servers.password,
                  "user_prefix": "user", "resource": "demo", "mode": "stay",
                  "sources": source_addresses(12), "attempt_timeout": 20.0}
        populations: list[Storm] = [
            DemoClients(workdir / "clients-5222", first=0, port=5222, clients=starttls,
                        processes=2, **common),
            DemoClients(workdir / "clients-5223", first=starttls, port=5223, direct_tls=True,
                        clients=clients - starttls, processes=1, **common),
        ]
        for population in populations:
            population.start()
            stack.callback(population.quit)
        churn = Churn(servers, vip).start()
        stack.callback(churn.stop)
        watch = GatewayWatch(gateway, control)
        figures = Figures(populations, churn)
        view = View(screen, watch, figures, timing.status_every).start()
        stack.callback(view.stop)

        # 1. steady state
        screen.narrate(f"1/6 steady state: {clients} clients log in through {vip} "
                       f"({starttls} STARTTLS on 5222, {clients - starttls} direct TLS on 5223)"
                       " and ping every second")
        began = time.time()
        for population in populations:
            population.go()
        wait_for(figures.all_up, 60, "every client logged in")
        summary["initial_login_s"] = round(max(r["t"] for r in figures.records("up")) - began, 2)
        screen.say(f"all {clients} clients logged in in {summary['initial_login_s']} s")
        screen.say(f"$ dig @{vip} -p 5353 +short SRV _xmpp-client._tcp.example.test")
        screen.say(f"  {dig(vip)}")
        time.sleep(timing.steady)

        # 2. kill -9
        screen.narrate(f"2/6 kill -9 of ejabberd node {servers.ejabberd.node_names[KILLED_INDEX]}"
                       f" ({killed}): its clients are cut and log in again through the gateway")
        killed_at = time.time()
        servers.ejabberd.kill_node(KILLED_INDEX)
        try:
            wait_for(lambda: any(r["t"] >= killed_at for r in figures.records("down")), 30,
                     "the killed node's clients to be cut")
            wait_for(lambda: figures.all_up() and set(watch.states(killed)) & set(DOWN_STATES),
                     60, "every client back and the killed node failed")
            back = [r["t"] for r in figures.records("up") if r["t"] >= killed_at]
            cut = [r for r in figures.records("down") if r["t"] >= killed_at]
            summary["kill"] = {
                "cut": len(cut), "all_back": figures.all_up(),
                "seconds_until_all_back": round(max(back) - killed_at, 2) if back else None,
                "failed_logins": len([r for r in figures.records("fail")
                                      if r["t"] >= killed_at]),
            }
            screen.say(f"{len(cut)} sessions cut, all {clients} clients back "
                       f"{summary['kill']['seconds_until_all_back']} s after the kill")
            time.sleep(1.0)  # the SRV zone follows the state
            screen.say(f"$ dig @{vip} -p 5353 +short SRV _xmpp-client._tcp.example.test")
            summary["dig_after_kill"] = dig(vip)
            screen.say(f"  {summary['dig_after_kill']}")
            time.sleep(timing.settle)
        finally:
            # 3. the node back
            screen.narrate(f"3/6 restart {servers.ejabberd.node_names[KILLED_INDEX]}: after the "
                           "real's retry (10 s) it is TESTING, the next login makes it "
                           "OPERATIONAL, and slow start ramps its weight over 20 s")
            servers.ejabberd.start_node(KILLED_INDEX)
            screen.say(f"{servers.ejabberd.node_names[KILLED_INDEX]} running again")
        wait_for(lambda: watch.states(killed)[-1:] == ["OPERATIONAL"], 60,
                 "the restarted node OPERATIONAL")
        summary["killed_states"] = watch.states(killed)
        screen.say(f"$ dig @{vip} -p 5353 +short SRV _xmpp-client._tcp.example.test")
        screen.say(f"  {dig(vip)}")
        time.sleep(timing.settle)

        # 4. planned drain
        screen.narrate(f"4/6 planned drain of {servers.ejabberd.node_names[DRAINED_INDEX]} "
                       f"({drained}): no new streams, its sessions keep pinging, closed at the "
                       f"{timing.drain} s deadline, then log in on the others")
        drain_at = time.time()
        cli("real", FARM, drained, "no-inservice", "--drain", str(timing.drain))
        deadline = drain_at + timing.drain
        wait_for(lambda: watch.events("drained"), timing.drain + 20, "the drain's deadline")
        drained_record = watch.events("drained")[-1]
        drained_seen = time.time()
        wait_for(figures.all_up, 60, "every drained client back")
        downs = [r for r in figures.records("down") if r["t"] >= drain_at]
        summary["drain"] = {
            "deadline_s": timing.drain,
            "cut_before_deadline": len([r for r in downs if r["t"] < deadline - 0.5]),
            "closed_at_deadline": drained_record.get("closed"),
            "moved": len([r for r in downs if r["t"] >= deadline - 0.5]),
            "all_back": figures.all_up(),
            "seconds_until_all_back": round(max(r["t"] for r in figures.records("up"))
                                            - deadline, 2) if downs else 0.0,
        }
        screen.say(f"drain: {summary['drain']['cut_before_deadline']} sessions cut before the "
                   f"deadline, {summary['drain']['moved']} moved after it "
                   f"({drained_seen - drain_at:.1f} s)")

        # 5. the spare
        screen.narrate(f"5/6 put the spare {SPARE[1]} in service: new logins land on it "
                       "(slow start)")
        spare_thread = spare_info.get("thread")
        if spare_thread is not None:
            spare_thread.join(30)
        mark = len(watch.events("connected"))
        cli("real", FARM, SPARE[1], "inservice")
        try:
            wait_for(lambda: any(r.get("real") == SPARE[1]
                                 for r in watch.events("connected")[mark:]),
                     timing.spare_wait, "a stream on the spare")
            summary["spare_streams"] = True
        except TimeoutError:
            summary["spare_streams"] = False
        time.sleep(timing.final)
        summary["spare_states"] = watch.states(SPARE[1])
        summary["spare_up"] = spare_info.get("up", False)

        # 6. summary
        screen.narrate("6/6 summary")
        times = reconnect_times(figures)
        pings = figures.records("ping")
        summary |= {
            "logins": len(figures.records("up")) + len(churn.ok),
            "failed_logins": len(figures.records("fail")) + len(churn.failed),
            "short_logins_retried": len(churn.retried),
            "failed_login_reasons": dict(Counter(
                [str(r.get("reason"))[:80] for r in figures.records("fail")]
                + [why[:80] for _, why in churn.failed])),
            "sessions_cut": len(figures.records("down")),
            "reconnect_median_s": round(statistics.median(times), 3) if times else None,
            "reconnect_p99_s": round(percentile(times, 0.99) or 0, 3) if times else None,
            "pings_ok": sum(1 for r in pings if r["ok"]),
            "pings_failed": sum(1 for r in pings if not r["ok"]),
            "farm_panic": len(watch.events("farm_panic")),
            "stream_errors": len([r for r in watch.events("connection")
                                  if r.get("error") not in (None, "drained")]),
        }
        view.stop()
    screen.plain = True  # the teardown lines, and the summary, print as lines
    print_summary(summary, plain)
    return summary


def print_summary(s: dict[str, Any], plain: bool) -> None:
    rows = [
        ("clients", s["clients"]),
        ("logins (incl. reconnects, short logins)", s["logins"]),
        ("failed logins", s["failed_logins"]),
        ("  short logins cut once, then tried again", s["short_logins_retried"]),
        ("sessions cut", s["sessions_cut"]),
        (f"kill -9 {s['killed']}: sessions cut", s["kill"]["cut"]),
        ("  every client back", s["kill"]["all_back"]),
        ("  seconds until all back", s["kill"]["seconds_until_all_back"]),
        ("  killed node's states", " -> ".join(s["killed_states"])),
        ("time to reconnect median / p99 (s)",
         f"{s['reconnect_median_s']} / {s['reconnect_p99_s']}"),
        (f"drain {s['drained']}: cut before the {s['drain']['deadline_s']} s deadline",
         s["drain"]["cut_before_deadline"]),
        ("  closed at the deadline, moved",
         f"{s['drain']['closed_at_deadline']}, {s['drain']['moved']}"),
        (f"spare {s['spare']}: states, took streams",
         f"{' -> '.join(s['spare_states']) or '-'}, {s['spare_streams']}"),
        ("pings ok / failed", f"{s['pings_ok']} / {s['pings_failed']}"),
        ("farm_panic, stream errors", f"{s['farm_panic']}, {s['stream_errors']}"),
    ]
    if plain:
        for name, value in rows:
            print(f"demo summary: {name}: {value}", flush=True)
        print("demo summary json: " + json.dumps(s, default=str), flush=True)
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title="xmppgw failover demo: summary")
    table.add_column("")
    table.add_column("", justify="right")
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter waits")
    parser.add_argument("--plain", action="store_true", help="plain lines, no live screen")
    parser.add_argument("--clients", type=int, default=36)
    args = parser.parse_args(argv)
    plain = (args.plain or bool(os.environ.get("CI")) or os.environ.get("TERM") == "dumb"
             or not sys.stdout.isatty())
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    base = make_base_dir()  # traversable by the ejabberd and prosody users
    print(f"demo: starting a 3-node ejabberd cluster, Prosody and a DNS stub under {base} ...",
          flush=True)
    began = time.monotonic()
    code = 0
    try:
        with Servers(base) as servers:
            print(f"demo: servers up in {time.monotonic() - began:.0f} s", flush=True)
            summary = run_scenario(servers, base, quick=args.quick, plain=plain,
                                   clients=args.clients)
            ok = (summary["failed_logins"] == 0 and summary["kill"]["all_back"]
                  and summary["drain"]["cut_before_deadline"] == 0)
            code = 0 if ok else 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; tearing everything down", flush=True)
        code = 130
    finally:
        with suppress(Exception):
            shutil.rmtree(base, ignore_errors=True)
    print("demo: stopped; everything torn down", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
