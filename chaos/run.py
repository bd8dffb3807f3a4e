"""`python -m chaos run [--quick] [--scenario NAME ...]`: the chaos suite's runner.

It starts the harness's real servers (tests/harness: a 3-node ejabberd cluster, Prosody, a DNS
stub), the topology of chaos/topology.py (toxiproxy between the gateway and each real) and a
population of slixmpp clients that log in (STARTTLS on 5222, direct TLS on 5223), ping every
second (XEP-0199) and log in again with backoff when cut (scripts/demo.py's DemoClients), plus
new users arriving at a steady rate (log in, ping, log out: scripts/demo.py's Churn, open-loop): the "new logins". Then it plays the
scenarios of chaos/scenarios.py one after the other, each with asserted outcomes, printing a
table row as each ends; the table goes to chaos/results/ as Markdown and JSON with the date and
the machine. A failed assertion makes the run exit 1.

`run_suite(servers, workdir, ...)` takes a running `Servers`, so
tests/integration/test_chaos.py runs the quick version against the test session's servers.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.progress import Progress
from chaos.topology import VIP, Real, Toxics, gateway_config, reals
from tests.harness.servers import Servers
from tests.support.gateway import GatewayProcess
from tests.support.storm import source_addresses
from tests.support.wait import wait_for

RESULTS = ROOT / "chaos" / "results"
COLUMNS = ("scenario", "logins tried", "failed", "sessions cut",
           "median / p99 time to log in again (s)", "new logins median / p99 (s)",
           "messages sent", "lost", "duplicated", "gateway errors logged", "outcome")


def load_demo() -> ModuleType:
    """scripts/demo.py (not a package): its client population, churn and gateway watch."""
    name = "xmppgw_demo"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Sizes:
    clients: int
    processes: int  # STARTTLS client processes (direct TLS: one)
    arrivals: float  # new short logins per second
    control: float  # the latency scenario's window without the toxic
    window: float  # how long a toxic stays
    settle: float
    drain: int  # the planned drain's deadline, s
    srv_clients: int  # SRV-only clients (no gateway) beside the gateway's
    srv_timeout: float  # their bound, s (a black-holed first target costs slixmpp ~134 s)
    pairs: int  # message pairs (half slixmpp, half aioxmpp)
    message_interval: float  # s between a sender's messages

    @classmethod
    def quick(cls) -> Sizes:
        return cls(clients=24, processes=2, arrivals=4.0, control=5.0, window=8.0, settle=2.0,
                   drain=4, srv_clients=4, srv_timeout=10.0, pairs=2, message_interval=0.1)

    @classmethod
    def full(cls) -> Sizes:
        return cls(clients=150, processes=4, arrivals=10.0, control=8.0, window=20.0,
                   settle=5.0, drain=10, srv_clients=8, srv_timeout=30.0, pairs=6,
                   message_interval=0.1)


@dataclass
class Result:
    scenario: str
    logins_tried: int = 0
    failed: int = 0
    sessions_cut: int = 0
    relogin_median_s: float | None = None
    relogin_p99_s: float | None = None
    login_median_s: float | None = None  # new logins (arrivals, or SRV-only clients)
    login_p99_s: float | None = None
    messages_sent: int | None = None
    messages_lost: int | None = None
    messages_duplicated: int | None = None
    gateway_errors: int | None = 0  # None: a row without the gateway
    ok: bool = False
    asserted: bool = True  # False: a measurement beside the others (outcome "measured")
    checks: list[str] = field(default_factory=list)  # each asserted outcome, with its figures
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def check(self, ok: bool, text: str) -> None:
        self.checks.append(("ok: " if ok else "FAILED: ") + text)
        if not ok:
            self.failures.append(text)

    def row(self) -> list[str]:
        def s(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"
        def n(v: int | None) -> str:
            return "-" if v is None else str(v)
        return [self.scenario, str(self.logins_tried), str(self.failed), str(self.sessions_cut),
                f"{s(self.relogin_median_s)} / {s(self.relogin_p99_s)}",
                f"{s(self.login_median_s)} / {s(self.login_p99_s)}",
                n(self.messages_sent), n(self.messages_lost), n(self.messages_duplicated),
                n(self.gateway_errors), self.outcome()]

    def outcome(self) -> str:
        if not self.ok:
            return "FAILED"
        return "ok" if self.asserted else "measured"


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Arrival:
    """One new user's login: wall-clock start and end, seconds until the session started
    (None if it did not), and why it failed."""

    began: float
    ended: float
    login_s: float | None
    reason: str | None = None


def make_arrivals(servers: Servers, vip: str, rate: float) -> Any:
    """scripts/demo.py's Churn (log in, ping, log out), open-loop: `rate` new logins a
    second however long each takes, as new users arrive (the demo's keeps 4 in flight, so a
    slow real would slow the arrivals down); 200 in flight is a bound never reached unless
    logins hang. Each login's start and time to log in are kept too (`arrivals`): a
    scenario counts the failures of logins that began after a fault was detected."""
    from tests.harness.client import xmpp_session

    demo = load_demo()

    class TimedChurn(demo.Churn):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.arrivals: list[Arrival] = []

        async def _one(self, user: str) -> None:
            self._serial += 1
            jid = f"{self.servers.jid(user)}/{self.resource}{self._serial}"
            began, login_s = time.time(), None
            try:
                async with xmpp_session(jid, self.servers.password, self.vip, 5222,
                                        timeout=self.login_timeout) as client:
                    login_s = time.time() - began
                    await client.plugin["xep_0199"].ping(jid=self.servers.ejabberd_domain,
                                                         timeout=self.ping_timeout)
                self.ok.append(time.time())
                self.arrivals.append(Arrival(began, time.time(), login_s))
            except Exception as exc:  # noqa: BLE001 - a failed login is a figure
                self.failed.append((time.time(), str(exc)[:200]))
                self.arrivals.append(Arrival(began, time.time(), login_s, str(exc)[:200]))

    return TimedChurn(servers, vip, interval=1.0 / rate, in_flight=200,
                      login_timeout=20.0, ping_timeout=10.0, resource="arrival")


class Lab:
    """The running topology: toxiproxy, gateway, clients, churn; and what they said."""

    def __init__(self, servers: Servers, workdir: Path, sizes: Sizes, vip: str = VIP,
                 progress: Progress | None = None, spare: bool = False) -> None:
        self.servers, self.workdir, self.sizes, self.vip = servers, workdir, sizes, vip
        self.progress = progress or Progress(COLUMNS, live=False)
        self.say = self.progress.say
        self.want_spare = spare
        self.spare: dict[str, Any] = {"up": False, "error": "not started"}
        self.demo = load_demo()
        self.reals: list[Real] = reals(servers)
        self.stack = ExitStack()
        self._stop = threading.Event()

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.stack.close()

    def _start(self) -> None:
        demo, sizes = self.demo, self.sizes
        # a dead upstream is what the suite makes happen (and the spare has no node): quiet
        logging.getLogger("chaos.toxiproxy").setLevel(logging.ERROR)
        self.toxics = Toxics(self.servers, self.vip).start()
        self.stack.callback(self.toxics.stop)
        if self.want_spare:
            self._start_spare()
        control = self.workdir / "ctl" / "xmppgw.sock"
        control.parent.mkdir(parents=True, exist_ok=True)
        self.gateway = GatewayProcess(gateway_config(self.servers, control, self.vip),
                                      self.workdir, "xmppgw").start()
        self.stack.callback(self.gateway.stop)
        self.watch = demo.GatewayWatch(self.gateway, str(control))
        starttls = sizes.clients * 2 // 3
        common = {"host": self.vip, "domain": self.servers.ejabberd_domain,
                  "password": self.servers.password, "user_prefix": "user",
                  "resource": "chaos", "mode": "stay", "sources": source_addresses(12),
                  "attempt_timeout": 20.0}
        self.populations = [
            demo.DemoClients(self.workdir / "clients-5222", first=0, port=5222,
                             clients=starttls, processes=sizes.processes, **common),
            demo.DemoClients(self.workdir / "clients-5223", first=starttls, port=5223,
                             direct_tls=True, clients=sizes.clients - starttls, processes=1,
                             **common),
        ]
        for population in self.populations:
            population.start()
            self.stack.callback(population.quit)
        self.churn = make_arrivals(self.servers, self.vip, sizes.arrivals)
        self.figures = demo.Figures(self.populations, self.churn)
        poller = threading.Thread(target=self._poll, daemon=True)
        poller.start()
        self.stack.callback(poller.join, 5)
        self.stack.callback(self._stop.set)
        self.say(f"gateway up on {self.vip} (pid {self.gateway.pid}), toxiproxy at "
                 f"{self.toxics.url} ({self.toxics.server.kind}), reals "
                 f"{', '.join(r.address for r in self.reals)}")
        began = time.time()
        for population in self.populations:
            population.go()
        wait_for(self.figures.all_up, 90, "every client logged in")
        self.say(f"{sizes.clients} clients logged in in {time.time() - began:.1f} s "
                 f"({starttls} STARTTLS on 5222, {sizes.clients - starttls} direct TLS on 5223)")
        self.churn.start()
        self.stack.callback(self.churn.stop)

    def _poll(self) -> None:
        last_status = 0.0
        while not self._stop.is_set():
            self.watch.poll_log()
            self.watch.poll_show()
            if time.monotonic() - last_status >= (1 if self.progress.live else 5):
                last_status = time.monotonic()
                self.progress.status(self.status())
            self._stop.wait(0.5)

    def status(self) -> str:
        f = self.figures.now()
        states = " ".join(f"{r.address}={self.watch.state(r.address) or '?'}"
                          for r in self.reals)
        return (f"clients {f['connected']}/{self.figures.total()} up; failed logins "
                f"{f['failed_logins']}; cuts {f['cuts']}; {states}")

    def _start_spare(self) -> None:
        """The seed's spare: a standalone ejabberd node on the spare real's node address
        (the harness's cluster has three), with ejabberd's default-backlog listeners and
        every test account, started in the background (it takes a while); dead if it
        cannot start, which the spare scenario then says."""
        from chaos.topology import SPARE_NODE
        from tests.harness.ejabberd import EjabberdCluster
        from tests.harness.servers import DEFAULT_BACKLOG_LISTENERS, DNS_ADDRESS

        cluster = EjabberdCluster(self.workdir / "spare", self.servers.ejabberd_domain,
                                  (("ej4", SPARE_NODE),), resolver=DNS_ADDRESS,
                                  extra_listeners=DEFAULT_BACKLOG_LISTENERS)
        self.spare = {"up": False, "error": None, "cluster": cluster}

        def start() -> None:
            try:
                cluster.start()
                cluster.register_many(self.servers.users)
                self.spare["up"] = True
                self.say(f"spare node ej4 up on {SPARE_NODE} (its real out of service)")
            except Exception as exc:  # noqa: BLE001 - the spare scenario reports it
                self.spare["error"] = str(exc)[:300]
                self.say(f"spare node could not start: {exc!s:.150}")

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        self.spare["thread"] = thread
        self.stack.callback(cluster.stop)
        self.stack.callback(thread.join, 120)

    def ctl(self, *args: str) -> str:
        """`xmppgw <args> -c <the gateway's config>` (the operator's command line)."""
        import subprocess

        done = subprocess.run([sys.executable, "-m", "xmppgw", *args, "-c",
                               str(self.gateway.config_path)], capture_output=True, text=True,
                              timeout=30, cwd=ROOT, check=False)
        out = (done.stdout + done.stderr).strip()
        self.say(f"$ xmppgw {' '.join(args)}: {out[:200]}")
        if done.returncode != 0:
            raise RuntimeError(f"xmppgw {' '.join(args)} exited {done.returncode}: {out}")
        return out

    # --- figures since a moment -------------------------------------------------------------

    def records(self, event: str, since: float) -> list[dict[str, Any]]:
        return [r for r in self.figures.records(event) if r["t"] >= since]

    def mark(self) -> int:
        """A place in the gateway's log: records after it are `gateway_since(mark)`."""
        self.watch.poll_log()
        with self.watch.lock:
            return len(self.watch.records)

    def gateway_since(self, mark: int, event: str | None = None) -> list[dict[str, Any]]:
        self.watch.poll_log()
        with self.watch.lock:
            records = self.watch.records[mark:]
        return [r for r in records if event is None or r.get("event") == event]

    def gateway_errors(self, mark: int) -> list[dict[str, Any]]:
        """Log lines at error level or above, and stream errors sent to clients."""
        return [r for r in self.gateway_since(mark)
                if str(r.get("level", "")).lower() in ("error", "critical")
                or (r.get("event") == "connection" and r.get("error") not in (None, "drained"))]

    def relogin_times(self, since: float) -> list[float]:
        """For every session cut since `since`: seconds until that client logged in again."""
        ups: dict[int, list[float]] = {}
        for r in self.records("up", since):
            ups.setdefault(r["client"], []).append(r["t"])
        out = []
        for r in self.records("down", since):
            later = [t for t in ups.get(r["client"], []) if t >= r["t"]]
            if later:
                out.append(min(later) - r["t"])
        return out

    def fill(self, result: Result, since: float, mark: int) -> None:
        """The table's figures for the window since `since`."""
        ups, fails = self.records("up", since), self.records("fail", since)
        churn_ok = [t for t in self.churn.ok if t >= since]
        churn_failed = [(t, why) for t, why in self.churn.failed if t >= since]
        result.logins_tried = len(ups) + len(fails) + len(churn_ok) + len(churn_failed)
        result.failed = len(fails) + len(churn_failed)
        result.sessions_cut = len(self.records("down", since))
        times = self.relogin_times(since)
        result.relogin_median_s = round(statistics.median(times), 3) if times else None
        result.relogin_p99_s = round(percentile(times, 0.99) or 0.0, 3) if times else None
        errors = self.gateway_errors(mark)
        result.gateway_errors = len(errors)
        result.details["failures"] = sorted(
            [(round(r["t"] - since, 2), f"client {r.get('client')}", str(r.get("reason"))[:100])
             for r in fails]
            + [(round(t - since, 2), "arrival", why[:100]) for t, why in churn_failed])[:30]
        result.details["failed_reasons"] = sorted(
            {str(r.get("reason"))[:120] for r in fails} | {why[:120] for _, why in churn_failed})
        logins = [a.login_s for a in self.churn.arrivals
                  if a.began >= since and a.login_s is not None]
        if logins:
            result.login_median_s = round(statistics.median(logins), 3)
            result.login_p99_s = round(percentile(logins, 0.99) or 0.0, 3)
        result.details["gateway_errors"] = [
            {k: v for k, v in r.items() if k in ("event", "level", "error", "real", "message")}
            for r in errors[:10]]

    def failures_begun_after(self, t: float) -> list[str]:
        """Failed logins that began at or after `t` (wall clock): arrivals by their start;
        the population's by their end less the attempt's bound when it timed out (a failure
        before the bound happened about when it was reported)."""
        out = [f"arrival: {a.reason}" for a in self.churn.arrivals
               if a.reason is not None and a.began >= t]
        for r in self.figures.records("fail"):
            reason = str(r.get("reason"))
            began = r["t"] - (20.0 if reason.startswith("no session after") else 0.0)
            if began >= t:
                out.append(f"client {r.get('client')}: {reason}")
        return out

    def real_states(self, real: Real, mark: int = 0) -> list[str]:
        """The real's state changes logged since `mark`."""
        return [r["new"] for r in self.gateway_since(mark, "real_state")
                if r.get("real") == real.address]

    def conns(self, real: Real) -> int:
        """The real's current connections as `show reals` has them (0 if not listed)."""
        self.watch.poll_show()
        with self.watch.lock:
            text = self.watch.reals_text
        for line in text.splitlines():
            words = line.split()
            if len(words) > 4 and words[0] == real.address and words[4].isdigit():
                return int(words[4])
        return 0

    def operational(self) -> bool:
        return all(self.watch.state(r.address) == "OPERATIONAL" for r in self.reals[:3])


# --- the run ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}


def print_row(cells: Sequence[str]) -> None:
    print("| " + " | ".join(cells) + " |", flush=True)


def markdown(results: list[Result], meta: dict[str, Any]) -> str:
    about = (f"Machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs, "
             f"Python {meta['machine']['python']}. Mode: {meta['mode']} "
             f"({meta['clients']} clients), {meta['seconds']:.0f} s once the servers were up; "
             f"Toxiproxy: {meta.get('toxiproxy')}. Outcome: {'ok' if meta['ok'] else 'FAILED'}."
             + (f"\n\nNote: {meta['note']}" if meta.get("note") else ""))
    lines = [f"# Chaos suite run, {meta['date']}", "", about, "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r.row()) + " |" for r in results]
    lines.append("")
    for r in results:
        lines.append(f"## {r.scenario}")
        lines.append("")
        lines += [f"- {c}" for c in r.checks]
        lines.append("")
    return "\n".join(lines)


def write_results(results: list[Result], meta: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"chaos-{meta['date'].replace(':', '').replace('-', '')}-{meta['mode']}"
    (directory / f"{stem}.json").write_text(json.dumps(
        {**meta, "results": [asdict(r) for r in results]}, indent=2, default=str) + "\n")
    path = directory / f"{stem}.md"
    path.write_text(markdown(results, meta))
    return path


def run_suite(servers: Servers, workdir: Path, *, quick: bool = False,
              scenarios: Sequence[str] = (), results_dir: Path = RESULTS,
              vip: str = VIP, live: bool | None = None,
              note: str = "") -> tuple[list[Result], Path]:
    """Play `scenarios` (default: all, or the quick set with `quick`, in the suite's order)
    against running `servers`; returns the results and the Markdown file written. The
    cluster is left as it was found (a killed or stopped node is started again)."""
    from chaos.scenarios import QUICK, SCENARIOS

    names = list(scenarios) or list(QUICK if quick else SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    names = [n for n in SCENARIOS if n in names]  # the suite's order
    sizes = Sizes.quick() if quick else Sizes.full()
    began = time.monotonic()
    progress = Progress(COLUMNS, live=live)
    results: list[Result] = []
    try:
        with Lab(servers, workdir, sizes, vip, progress, spare="spare" in names) as lab:
            for index, name in enumerate(names, 1):
                progress.scenario(index, len(names), name,
                                  SCENARIOS[name].__doc__.strip().splitlines()[0])
                results += play(lab, name, SCENARIOS[name], progress)
            toxiproxy = lab.toxics.server.kind
    finally:
        progress.stop()
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(), "mode": "quick" if quick else "full",
            "clients": sizes.clients, "seconds": round(time.monotonic() - began, 1),
            "toxiproxy": toxiproxy, "note": note, "ok": all(r.ok for r in results)}
    path = write_results(results, meta, results_dir)
    if progress.live:  # the panel is gone: the table once more, as lines
        print_row(COLUMNS)
        for r in results:
            print_row(r.row())
    print(f"chaos: results: {path} (and .json)", flush=True)
    return results, path


def play(lab: Lab, name: str, scenario: Callable[[Lab, Result], Any],
         progress: Progress) -> list[Result]:
    """One scenario: its row, and the extra rows it returns (a side-by-side measurement)."""
    result = Result(name)
    extra: list[Result] = []
    t0 = time.monotonic()
    try:
        extra = list(scenario(lab, result) or [])
    except Exception as exc:  # noqa: BLE001 - a scenario that breaks fails, the run goes on
        result.check(False, f"the scenario raised {type(exc).__name__}: {exc}")
    for r in (result, *extra):
        r.seconds = r.seconds or round(time.monotonic() - t0, 1)
        r.ok = not r.failures
        for c in r.checks:
            progress.say(f"  {r.scenario}: {c}")
        progress.row(r.row())
    return [result, *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the servers and play the scenarios")
    run.add_argument("--quick", action="store_true", help="small population, short windows")
    run.add_argument("--scenario", action="append", default=[], metavar="NAME",
                     help="play only this scenario (repeatable)")
    run.add_argument("--results", type=Path, default=RESULTS, help="where the tables go")
    run.add_argument("--note", default="", help="a line for the results (e.g. the machine "
                     "was shared)")
    run.add_argument("--plain", action="store_true", help="plain lines, no live panel")
    args = parser.parse_args(argv)

    from tests.harness.fixtures import make_base_dir

    base = make_base_dir()  # traversable by the ejabberd and prosody users
    print(f"chaos: starting a 3-node ejabberd cluster, Prosody and a DNS stub under {base}",
          flush=True)
    try:
        with Servers(base) as servers:
            results, _ = run_suite(servers, base / "chaos", quick=args.quick,
                                   scenarios=args.scenario, results_dir=args.results,
                                   live=False if args.plain else None, note=args.note)
    except KeyboardInterrupt:
        print("chaos: interrupted", flush=True)
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)
    failed = [r.scenario for r in results if not r.ok]
    print(f"chaos: {'FAILED: ' + ', '.join(failed) if failed else 'every outcome held'}",
          flush=True)
    return 1 if failed else 0
