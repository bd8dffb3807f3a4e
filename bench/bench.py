"""xmppgw against HAProxy (TCP mode) and a direct connection, on loopback.

    python3 bench/bench.py [--rounds 3] [--workers 1]     the figures (bash bench/run.sh)
    python3 bench/bench.py --only rss|parked|opens         one figure, printed (a busy machine)
    python3 bench/bench.py --only scaling [--proxies xmppgw]  1 and 2 workers under CPU quotas
    python3 bench/bench.py profile [--seconds 10]          handshake profile (bench/profile.sh)
    python3 bench/bench.py profile --cprofile --label X    cProfile call counts, results/profiles/
    python3 bench/bench.py profile --syscalls [--seconds 4] [--rounds 3]   CPU and syscalls per
                                                           open, HAProxy and xmppgw (strace -c)

HAProxy runs twice: with its defaults and at its best (splice-auto, tuned buffers); each
ratio is xmppgw over the better of the two. BENCH_XMPPGW_SRC=DIR measures the xmppgw package
found in DIR instead of this checkout's (a before/after comparison).

Every figure is measured for every target in each round, the targets in a rotating order
(A/B/C, B/C/A, ...), and the median over the rounds is reported. Results go to
bench/results/latest.json and latest.md; every number comes from this run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import quota
from common import (
    BACKEND_HOST,
    FLOOR_HOST,
    HAPROXY_BEST_HOST,
    HAPROXY_HOST,
    PORTS,
    RSS_HAPROXY_HOST,
    RSS_XMPPGW_HOST,
    TWO_HAPROXY_HOST,
    TWO_XMPPGW_HOST,
    XMPPGW_HOST,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable

BULK_SECONDS = 3.0
HANDSHAKE_SECONDS = 4.0
HANDSHAKE_CLIENTS = 32  # over HANDSHAKE_PROCS load processes
HANDSHAKE_PROCS = 2
LATENCY_COUNT = 20_000  # round trips per target and round
RSS_STEPS = (1000, 4000, 9000)
HOLDERS = 3  # 9k connections over 3 client processes: 3k fds each
HAPROXY_MAXCONN = 9800  # 2 fds per connection: under the 20,000 fd limit
# With splice-auto HAProxy reserves pipes per connection too: it refuses to start under the
# 20,000 fd limit unless maxconn stays near 6,000 (../shared/README.md).
HAPROXY_BEST_MAXCONN = 6000
# HAProxy at its best (the reference the issue asks for): kernel splicing whenever it pays
# (`option splice-auto`), 64 KiB buffers instead of 16 KiB, 256 KiB pipes.
HAPROXY_BEST_TUNING = ("    tune.bufsize 65536", "    tune.pipesize 262144")
PARKED_STREAMS = 3000  # streams held before STARTTLS for the parked-RSS figure
# Workers scaling under a CPU quota (bench/quota.py): each worker or thread of the proxy gets
# this much of a core, the load clients and the backend the rest of the 2 vCPUs.
QUOTA_CORES = 0.25  # small enough that HAProxy, at ~14k opens per CPU-second, is held by it
QUOTA_MODES = ("free", "shared", "split")  # no quota; n x unit for the whole proxy; unit each
QUIET_PCT = 10  # background CPU use (% of all CPUs) above which a run is flagged


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------


@dataclass
class Target:
    name: str  # direct, haproxy, haproxy_best, xmppgw
    host: str
    proc: subprocess.Popen | None = None  # the proxy, for RSS and CPU

    def addr(self, service: str) -> str:
        return f"{self.host}:{PORTS[service]}"


def wait_listening(host: str, port: int, proc: subprocess.Popen, what: str,
                   timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} does not listen on {host}:{port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running(cmd: list[str], what: str, listen: list[tuple[str, int]], logfile: Path,
            **kw) -> Iterator[subprocess.Popen]:
    """A long-running process, stopped (TERM, then KILL) whatever happens."""
    with open(logfile, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=kw.pop("stdout", subprocess.DEVNULL), stderr=err,
                                cwd=BENCH, **kw)
    try:
        try:
            for host, port in listen:
                wait_listening(host, port, proc, what)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; {logfile}:\n{logfile.read_text()[-2000:]}") from None
        yield proc
    finally:
        stop(proc)


def tree(pid: int) -> list[int]:
    """pid and its descendants (a multi-process xmppgw counts as a whole)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cpu_times(pid: int) -> tuple[float, float]:
    """User and kernel CPU seconds of pid and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
    return user / tick, system / tick


@contextlib.contextmanager
def pinned(pids: list[int], cpus: set[int]) -> Iterator[None]:
    """Every thread of these processes (and their children) on `cpus`, then back on all."""
    def pin(to: set[int]) -> None:
        for pid in pids:
            for p in tree(pid):
                for task in Path(f"/proc/{p}/task").iterdir():
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(int(task.name), to)
    everywhere = set(range(os.cpu_count() or 1))
    pin(cpus)
    try:
        yield
    finally:
        pin(everywhere)


def background_busy(seconds: float = 0.5) -> float:
    """% of all CPUs busy while the benchmark itself is idle: anything else running on the
    machine (other tests, builds) skews every figure, so each round records it."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)
    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return 100 * (busy1 - busy0) / max(total1 - total0, 1)


def run_json(args: list[str], timeout: float = 60, cpus: set[int] | None = None) -> Any:
    """A client run: the last stdout line is its JSON result."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    done = subprocess.run([PY, str(BENCH / "clients.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=BENCH, preexec_fn=pin, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"clients.py {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- proxy configs ----------------------------------------------------------------------------


def haproxy_config(host: str, threads: int, services: list[str], best: bool = False) -> str:
    """TCP mode, one frontend/backend per service; a log line per connection, as xmppgw
    writes one, so both do the same bookkeeping. `best`: splice-auto and tuned buffers."""
    maxconn = HAPROXY_BEST_MAXCONN if best else HAPROXY_MAXCONN
    out = [
        "global",
        f"    nbthread {threads}",
        f"    maxconn {maxconn}",
        *(HAPROXY_BEST_TUNING if best else ()),
        "    log stdout format raw local0",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        *(("    option splice-auto",) if best else ()),
        f"    maxconn {maxconn}",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
    ]
    for svc in services:
        out += [f"listen {svc}", f"    bind {host}:{PORTS[svc]} backlog 4096",
                f"    server real {BACKEND_HOST}:{PORTS[svc]}"]
    return "\n".join(out) + "\n"


def xmppgw_config(host: str, workers: int | None, services: list[str]) -> str:
    out = ["[gateway]", 'name = "gw.example.test"', 'domains = ["example.test"]',
           'log_format = "json"']
    if workers is not None:
        out.append(f"workers = {workers}")
    for svc in services:
        mode = "directtls" if svc == "xmpps" else "starttls"
        out += ["", "[[vserver]]", f'name = "{svc}"', f'virtual = "{host}:{PORTS[svc]}"',
                f'mode = "{mode}"', f'serverfarm = "{svc}"']
    for svc in services:
        out += ["", "[[serverfarm]]", f'name = "{svc}"', "[[serverfarm.real]]",
                f'address = "{BACKEND_HOST}:{PORTS[svc]}"']
    return "\n".join(out) + "\n"


def workers_accepted(workdir: Path, workers: int) -> tuple[bool, str]:
    """Does this xmppgw's config take `[gateway] workers`? `xmppgw check` decides."""
    path = workdir / "workers-check.toml"
    path.write_text(xmppgw_config(XMPPGW_HOST, workers, ["xmpp"]))
    done = subprocess.run([PY, "-m", "xmppgw", "check", "-c", str(path)], capture_output=True,
                          text=True, cwd=REPO, check=False)
    return done.returncode == 0, (done.stderr or done.stdout).strip()


@dataclass
class Setup:
    workdir: Path
    workers: int  # xmppgw workers = HAProxy threads
    workers_key: bool  # pass `workers` to xmppgw
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    backend_procs: list[subprocess.Popen] = field(default_factory=list)

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def haproxy(self, host: str, services: list[str], best: bool = False) -> subprocess.Popen:
        cfg = self.workdir / f"haproxy-{host}.cfg"
        cfg.write_text(haproxy_config(host, self.workers, services, best))
        return self.stack.enter_context(running(
            ["haproxy", "-db", "-f", str(cfg)], "haproxy",
            [(host, PORTS[s]) for s in services], self.log(f"haproxy-{host}")))

    def xmppgw(self, host: str, services: list[str]) -> subprocess.Popen:
        cfg = self.workdir / f"xmppgw-{host}.toml"
        cfg.write_text(xmppgw_config(host, self.workers if self.workers_key else None, services))
        return self.stack.enter_context(running(
            [PY, "-m", "xmppgw", "run", "-c", str(cfg)], "xmppgw",
            [(host, PORTS[s]) for s in services], self.log(f"xmppgw-{host}"), env=_repo_env()))

    def floor(self, host: str) -> subprocess.Popen:
        """bench/floor.py on the xmpp port: the runtime's share of a stream open."""
        return self.stack.enter_context(running(
            [PY, str(BENCH / "floor.py"), f"{host}:{PORTS['xmpp']}",
             f"{BACKEND_HOST}:{PORTS['xmpp']}"], "python floor", [(host, PORTS["xmpp"])],
            self.log(f"floor-{host}")))

    def backends(self, bulk: bool = True) -> None:
        """The XMPP responder; with `bulk` also the bulk sink/source and iperf3 -s."""
        xmpp, xmpps, sink, source, iperf = ((BACKEND_HOST, PORTS[s])
                                            for s in ("xmpp", "xmpps", "sink", "source", "iperf"))
        commands = [([PY, str(BENCH / "backend.py"), "xmpp", _hp(xmpp), _hp(xmpps)],
                     "xmpp backend", [xmpp, xmpps])]
        if bulk:
            commands += [
                ([PY, str(BENCH / "backend.py"), "bulk", _hp(sink), _hp(source)], "bulk backend",
                 [sink, source]),
                (["iperf3", "-s", "-B", BACKEND_HOST, "-p", str(iperf[1])], "iperf3 -s", [iperf]),
            ]
        self.backend_procs = [
            self.stack.enter_context(running(cmd, what, listen, self.log(what.replace(" ", "-"))))
            for cmd, what, listen in commands]


def _hp(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _repo_env() -> dict[str, str]:
    env = dict(os.environ)
    # BENCH_XMPPGW_SRC: another checkout's xmppgw (a before/after comparison)
    src = os.environ.get("BENCH_XMPPGW_SRC", str(REPO))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --- the measurements: one function per figure, one target per call ---------------------------


def measure_bulk(target: Target, direction: str) -> float:
    """GB/s of stanza-like bytes over one stream, after a real stream header."""
    service = "sink" if direction == "up" else "source"
    return run_json(["bulk", target.addr(service), direction, str(BULK_SECONDS)])["GBps"]


def measure_iperf(target: Target) -> float:
    """iperf3 client->server GB/s (TCP proxies only: iperf3 sends no stream header)."""
    done = subprocess.run(["iperf3", "-c", target.host, "-p", str(PORTS["iperf"]),
                           "-B", "127.0.7.200", "-t", str(int(BULK_SECONDS)), "-J"],
                          capture_output=True, text=True, timeout=60, check=False)
    report = json.loads(done.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    return report["end"]["sum_received"]["bits_per_second"] / 8 / 1e9


def measure_handshakes(target: Target, seconds: float = HANDSHAKE_SECONDS,
                       at_start: Callable[[], None] | None = None,
                       service: str = "xmpp") -> dict:
    """Stream opens per second, HANDSHAKE_CLIENTS loops over HANDSHAKE_PROCS processes, and
    the proxy's CPU use over the same window (`at_start` runs when the window opens).
    `service` "xmpps": direct-TLS opens (a ClientHello, the backend's first record)."""
    start = time.time() + 1.0  # every process is up and warm by then
    per_proc = HANDSHAKE_CLIENTS // HANDSHAKE_PROCS
    procs = [subprocess.Popen([PY, str(BENCH / "clients.py"), "handshakes", target.addr(service),
                               str(per_proc), str(i), str(start), str(seconds),
                               *(["tls"] if service == "xmpps" else [])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=BENCH)
             for i in range(HANDSHAKE_PROCS)]
    try:
        time.sleep(max(0.0, start - time.time()))
        cpu0 = cpu_times(target.proc.pid) if target.proc else None
        if at_start is not None:
            at_start()
        time.sleep(max(0.0, start + seconds - time.time()))
        cpu1 = cpu_times(target.proc.pid) if target.proc else None
        results = []
        for p in procs:
            out, err = p.communicate(timeout=30)
            if p.returncode != 0:
                raise RuntimeError(f"handshake client failed:\n{err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            stop(p)
    ok = sum(r["ok"] for r in results)
    failed = sum(r["bad"] + r["errors"] for r in results)
    if failed:
        log(f"    {target.name}: {failed} failed handshakes, e.g. "
            f"{next((r['first_error'] for r in results if r['first_error']), 'a wrong answer')}")
    out = {"rate": ok / seconds, "failed": failed}
    if cpu0 is not None and cpu1 is not None:
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        out.update(cpu_pct=100 * (user + system) / seconds, user_pct=100 * user / seconds,
                   sys_pct=100 * system / seconds, per_cpu_second=ok / max(user + system, 1e-9))
    return out


@contextlib.contextmanager
def under_quota(pid: int, workers: int, mode: str,
                cores: float = QUOTA_CORES) -> Iterator[list[quota.Group]]:
    """The proxy `pid` (all its processes and threads) under a CPU quota for the block, then
    back in our own cgroup, the groups removed. `mode` "shared": one group, `workers` x
    `cores`; "split": one group of `cores` per worker (xmppgw's worker processes, the master
    with the first; HAProxy's threads); "free": no quota (no group)."""
    if mode == "free":
        yield []
        return
    count = workers if mode == "split" else 1
    procs = tree(pid)
    if count > 1 and len(procs) == 1 and quota.hierarchy()[0] == "v2":
        # Threads one by one need v1 here (v2: threaded subtrees, not done): one group
        log("cgroup v2: a threaded proxy's workers share one group (as `shared`)")
        count = 1
    with quota.groups(count) as groups:
        for g in groups:
            g.limit(cores * workers / count)
        if count == 1:
            for p in procs:
                groups[0].add_process(p)
        else:
            ids, threads = quota.units(pid, [p for p in procs if p != pid])
            if not threads:
                groups[0].add_process(pid)  # the master: idle, beside worker 0
            for g, part in zip(groups, quota.assign(count, ids)):
                for i in part:
                    (g.add_thread if threads else g.add_process)(i)
        yield groups


def measure_quota(target: Target, workers: int, mode: str, cores: float = QUOTA_CORES) -> dict:
    """`measure_handshakes` with the proxy under_quota; adds how often the quota bit (periods
    throttled, summed over the groups) and the share of the budget used (near 100%: the
    quota held the proxy; well under: the load generator did, and the row says little)."""
    with under_quota(target.proc.pid, workers, mode, cores) as groups:
        before = [g.throttled() for g in groups]
        hs = measure_handshakes(target)
        after = [g.throttled() for g in groups]
    if mode != "free":
        hs["throttled_periods"] = sum(a[0] - b[0] for a, b in zip(after, before))
        hs["budget_used_pct"] = hs["cpu_pct"] / (cores * workers)
    return hs


def quota_note() -> str:
    """Which quota method this machine gives, or why there is none."""
    try:
        version, base = quota.hierarchy()
        with quota.groups(1):  # can we make (and remove) a group? root, a writable cgroupfs
            pass
    except OSError as exc:
        return f"no CPU quota possible: {exc}"
    what = "cpu.max" if version == "v2" else "cpu.cfs_quota_us/cpu.cfs_period_us"
    return (f"cgroup {version} cpu controller ({what}, {quota.PERIOD_US // 1000} ms period) "
            f"under {base}")


def measure_latency(setup: Setup, targets: list[Target], one_cpu: bool) -> dict[str, dict]:
    """p50/p99 of a 100-byte stanza round trip over one established stream per target; the
    targets take turns round trip by round trip. `one_cpu`: client, backend and proxies all
    on CPU 0, so no hop waits for another CPU to wake up; what is left is the work."""
    args = ["latency", str(LATENCY_COUNT), *(t.addr("xmpp") for t in targets)]
    if one_cpu:
        procs = [p.pid for p in setup.backend_procs] + [t.proc.pid for t in targets if t.proc]
        with pinned(procs, {0}):
            results = run_json(args, cpus={0})
    else:
        results = run_json(args)
    return {t.name: r for t, r in zip(targets, results)}


def measure_rss(setup: Setup, kind: str, steps: tuple[int, ...] = RSS_STEPS,
                parked: bool = False) -> dict[int, float]:
    """KiB of proxy RSS per idle proxied stream at each of `steps`, on a fresh proxy.
    The streams are held by HOLDERS client processes (the fd limit), past STARTTLS, or with
    `parked` before it (header and features exchanged, then silence)."""
    host = RSS_HAPROXY_HOST if kind == "haproxy" else RSS_XMPPGW_HOST
    with contextlib.ExitStack() as stack:
        sub = Setup(setup.workdir, setup.workers, setup.workers_key, stack)
        proc = sub.haproxy(host, ["xmpp"]) if kind == "haproxy" else sub.xmppgw(host, ["xmpp"])
        holders = [stack.enter_context(running(
            [PY, str(BENCH / "clients.py"), "hold", f"{host}:{PORTS['xmpp']}", str(3 + i),
             *(["parked"] if parked else [])],
            "holder", [],
            setup.log("holder"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for i in range(HOLDERS)]

        def hold(total: int) -> None:
            shares = [total // HOLDERS + (i < total % HOLDERS) for i in range(HOLDERS)]
            for h, n in zip(holders, shares):
                h.stdin.write(f"hold {n}\n")
                h.stdin.flush()
            held = sum(json.loads(h.stdout.readline())["held"] for h in holders)
            if held != total:
                raise RuntimeError(f"{kind}: held {held} streams of {total}")

        hold(30)  # warm the path once (lazy imports, first allocations), then let go
        hold(0)
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        out = {}
        for n in steps:
            hold(n)
            time.sleep(0.5)
            out[n] = (rss_kib(proc.pid) - before) / n
        for h in holders:
            h.stdin.close()  # the holders close their streams and exit
        for h in holders:
            h.wait(10)
    return out


# --- the run ------------------------------------------------------------------------------------


FIGURES = [  # key, label (as printed), unit, lower is better
    ("bulk_up", "bulk client->server, GB/s (own tool)", "GB/s", False),
    ("bulk_down", "bulk server->client, GB/s (own tool)", "GB/s", False),
    ("iperf3", "bulk client->server, GB/s (iperf3)", "GB/s", False),
    ("handshakes", "stream opens/s, 32 clients", "1/s", False),
    ("handshake_cpu", "proxy CPU during opens, % of a core", "%", True),
    ("handshakes_per_cpu", "stream opens per proxy CPU-second", "1/CPU-s", False),
    ("tls_handshakes", "direct-TLS (5223) opens/s, 32 clients", "1/s", False),
    ("tls_handshakes_per_cpu", "direct-TLS opens per proxy CPU-second", "1/CPU-s", False),
    ("handshakes_2w", "stream opens/s, workers = 2 / nbthread 2", "1/s", False),
    ("scale_2w", "opens/s with 2 workers over 1, no quota (same round)", "x", False),
    ("handshakes_q1", f"stream opens/s, 1 worker, {QUOTA_CORES}-core CPU quota", "1/s", False),
    ("handshakes_q2", f"stream opens/s, 2 workers, {QUOTA_CORES}-core quota each", "1/s",
     False),
    ("scale_2w_quota", f"opens/s with 2 workers over 1, {QUOTA_CORES}-core quota per worker",
     "x", False),
    ("budget_2w_quota", "share of the 2 workers' quota used, %", "%", False),
    *[(f"{where}_{added}{q}", f"{'added ' if added else ''}{q} µs, 100 B stanza RTT, {label}",
       "µs", True)
      for where, label in (("free", "free sched."), ("cpu0", "one CPU"))
      for added in ("", "added_") for q in ("p50", "p99")],
    *[(f"rss_{n}", f"RSS KiB per idle stream, {n // 1000}k streams", "KiB", True)
      for n in RSS_STEPS],
    ("rss_parked", f"RSS KiB per stream parked before STARTTLS, {PARKED_STREAMS // 1000}k",
     "KiB", True),
    ("dns", "DNS answers/s (dnsperf, embedded DNS)", "1/s", False),
]
SKIPPED = {"dns": "measured by bench/dns.sh against BIND: see results/dns-latest.md"}
MEMORY_KEYS = (*[f"rss_{n}" for n in RSS_STEPS], "rss_parked")
QUOTA_KEYS = ("handshakes_q1", "handshakes_q2", "scale_2w_quota", "budget_2w_quota")
NOT_APPLICABLE = {  # (figure, target): why there is no number
    ("iperf3", "xmppgw"): "n/a (no header)",
    **{(k, "direct"): "-" for k in
       ("handshake_cpu", "handshakes_per_cpu", "free_added_p50", "free_added_p99",
        "cpu0_added_p50", "cpu0_added_p99", "tls_handshakes_per_cpu", "handshakes_2w",
        "scale_2w", *QUOTA_KEYS, *MEMORY_KEYS)},
    **{(k, "haproxy_best"): "-" for k in ("handshakes_2w", "scale_2w", *QUOTA_KEYS)},
    # Idle streams never splice; the defaults' maxconn also admits the 9k step.
    **{(k, "haproxy_best"): "(defaults)" for k in MEMORY_KEYS},
}
TARGETS = ("direct", "haproxy", "haproxy_best", "xmppgw")


def run_rounds(setup: Setup, rounds: int, quiet: list[float]) -> dict[str, dict[str, list[float]]]:
    """Every figure for every target, `rounds` times; `quiet` gets the background CPU use
    measured before each round."""
    runs: dict[str, dict[str, list[float]]] = {k: {t: [] for t in TARGETS} for k, *_ in FIGURES}
    setup.backends()
    proxied = ["xmpp", "xmpps", "sink", "source", "iperf"]
    targets = [Target("direct", BACKEND_HOST),
               Target("haproxy", HAPROXY_HOST, setup.haproxy(HAPROXY_HOST, proxied)),
               Target("haproxy_best", HAPROXY_BEST_HOST,
                      setup.haproxy(HAPROXY_BEST_HOST, proxied, best=True)),
               Target("xmppgw", XMPPGW_HOST,
                      setup.xmppgw(XMPPGW_HOST, ["xmpp", "xmpps", "sink", "source"]))]
    # Two workers against two threads, beside the single ones (only when those are single).
    twos: list[Target] = []
    if setup.workers == 1 and setup.workers_key:
        two = Setup(setup.workdir, 2, True, setup.stack)
        twos = [Target("haproxy", TWO_HAPROXY_HOST, two.haproxy(TWO_HAPROXY_HOST, ["xmpp"])),
                Target("xmppgw", TWO_XMPPGW_HOST, two.xmppgw(TWO_XMPPGW_HOST, ["xmpp"]))]
    run_json(["latency", "500", *(t.addr("xmpp") for t in targets)])  # warm every path
    note = quota_note()
    quota_ok = not note.startswith("no CPU quota")
    log(note)

    def record(key: str, target: Target, value: float) -> None:
        runs[key][target.name].append(value)
        log(f"    {key:<20} {target.name:<8} {value:,.3f}")

    for r in range(rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        quiet.append(background_busy())
        log(f"round {r + 1}/{rounds}: {' / '.join(t.name for t in order)} "
            f"(background CPU use {quiet[-1]:.0f}%)")
        for t in order:
            record("bulk_up", t, measure_bulk(t, "up"))
        for t in order:
            record("bulk_down", t, measure_bulk(t, "down"))
        for t in order:
            if t.name != "xmppgw":
                record("iperf3", t, measure_iperf(t))
        for t in order:
            hs = measure_handshakes(t)
            record("handshakes", t, hs["rate"])
            if "cpu_pct" in hs:
                record("handshake_cpu", t, hs["cpu_pct"])
                record("handshakes_per_cpu", t, hs["per_cpu_second"])
        for t in order:
            hs = measure_handshakes(t, service="xmpps")
            record("tls_handshakes", t, hs["rate"])
            if "per_cpu_second" in hs:
                record("tls_handshakes_per_cpu", t, hs["per_cpu_second"])
        for t in twos:
            rate = measure_handshakes(t)["rate"]
            record("handshakes_2w", t, rate)
            record("scale_2w", t, rate / runs["handshakes"][t.name][-1])
        # The same two against one under a CPU quota per worker (bench/quota.py), so the
        # second worker cannot take its CPU from the load generator.
        ones = {t.name: t for t in targets}
        for t in twos if quota_ok else ():
            one = measure_quota(ones[t.name], 1, "split")
            two = measure_quota(t, 2, "split")
            record("handshakes_q1", t, one["rate"])
            record("handshakes_q2", t, two["rate"])
            record("scale_2w_quota", t, two["rate"] / one["rate"])
            record("budget_2w_quota", t, two["budget_used_pct"])
        for where, one_cpu in (("free", False), ("cpu0", True)):
            lat = measure_latency(setup, order, one_cpu)
            for t in order:
                for q in ("p50", "p99"):
                    record(f"{where}_{q}", t, lat[t.name][f"{q}_us"])
            for t in targets[1:]:  # paired with the direct figure of the same run
                for q in ("p50", "p99"):
                    record(f"{where}_added_{q}", t,
                           lat[t.name][f"{q}_us"] - lat["direct"][f"{q}_us"])
    for r in range(rounds):
        quiet.append(background_busy())
        log(f"memory round {r + 1}/{rounds} (background CPU use {quiet[-1]:.0f}%)")
        for kind in (("haproxy", "xmppgw") if r % 2 == 0 else ("xmppgw", "haproxy")):
            for n, kib in measure_rss(setup, kind).items():
                record(f"rss_{n}", Target(kind, ""), kib)
            for kib in measure_rss(setup, kind, (PARKED_STREAMS,), parked=True).values():
                record("rss_parked", Target(kind, ""), kib)
    return runs


def summarize(runs: dict[str, dict[str, list[float]]]) -> dict:
    figures = {}
    for key, label, unit, lower in FIGURES:
        row: dict = {"label": label, "unit": unit, "lower_is_better": lower, "runs": runs[key]}
        for t in TARGETS:
            row[t] = statistics.median(runs[key][t]) if runs[key][t] else None
        # The reference is HAProxy at its better: defaults or splice-auto and tuned buffers.
        known = [row[t] for t in ("haproxy", "haproxy_best") if row[t] is not None]
        row["reference"] = (min(known) if lower else max(known)) if known else None
        if row["reference"] and row["xmppgw"] is not None and key != "budget_2w_quota":
            row["ratio"] = row["xmppgw"] / row["reference"]
        if key in SKIPPED:
            row["skipped"] = SKIPPED[key]
        figures[key] = row
    return figures


def goals(f: dict) -> list[dict]:
    """Issue 15's goals, against HAProxy at its better (defaults or splice-auto)."""
    def g(text: str, met: bool, detail: str) -> dict:
        return {"goal": text, "met": met, "detail": detail}
    up, down = f["bulk_up"]["ratio"], f["bulk_down"]["ratio"]
    per_cpu = f["handshakes_per_cpu"]["ratio"]
    rss = [(n, f[f"rss_{n}"]) for n in RSS_STEPS]
    parked = f["rss_parked"]
    added = [(where, f[f"{where}_added_p99"]) for where in ("free", "cpu0")]
    quota = f["scale_2w_quota"]["xmppgw"] is not None
    scale = f["scale_2w_quota"] if quota else f["scale_2w"]
    return [
        g("bulk >= 1.0x HAProxy at its best", up >= 1 and down >= 1,
          f"x{up:.2f} client->server, x{down:.2f} server->client"),
        g("with 2 workers, opens/s >= 1.8x one worker's",
          (scale["xmppgw"] or 0) >= 1.8,
          (f"x{scale['xmppgw'] or 0:.2f} (HAProxy nbthread 2: x{scale['haproxy'] or 0:.2f}"
           + (f", {f['budget_2w_quota']['haproxy'] or 0:.0f}% of its quota used" if quota else "")
           + f") {'under a ' + str(QUOTA_CORES) + '-core CPU quota per worker' if quota else ''}"
           f"; no quota, 2 vCPUs shared with the load clients: x{f['scale_2w']['xmppgw'] or 0:.2f}"
           f" (HAProxy x{f['scale_2w']['haproxy'] or 0:.2f})")),
        g("stream opens per proxy CPU-second >= 0.5x HAProxy's", per_cpu >= 0.5,
          f"x{per_cpu:.2f}; opens/s x{f['handshakes']['ratio']:.2f} (noisy on a shared machine)"),
        g("RSS per stream parked before STARTTLS <= 2x HAProxy's", parked["ratio"] <= 2,
          f"{parked['xmppgw']:.1f} vs {parked['reference']:.1f} KiB, x{parked['ratio']:.2f}"),
        g("RSS per idle stream after <proceed/> <= 1.0x HAProxy's",
          all(r["ratio"] <= 1 for _, r in rss),
          ", ".join(f"{n // 1000}k: {r['xmppgw']:.1f} vs {r['reference']:.1f} KiB"
                    for n, r in rss)),
        g("added p99 per small stanza <= HAProxy's + 50 µs",
          all(r["xmppgw"] <= r["reference"] + 50 for _, r in added),
          ", ".join(f"{where}: {r['xmppgw']:.0f} vs {r['reference']:.0f} µs"
                    for where, r in added)),
    ]


def _cell(f: dict, key: str, target: str) -> str:
    if key in SKIPPED:
        return SKIPPED[key] if target == "direct" else ""
    if (key, target) in NOT_APPLICABLE:
        return NOT_APPLICABLE[(key, target)]
    v = f[key][target]
    if v is None:
        return "-"
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"


def table(figures: dict) -> list[list[str]]:
    rows = [["figure", "direct", "HAProxy", "HAProxy splice", "xmppgw",
             "xmppgw/best HAProxy"]]
    for key, label, _, _ in FIGURES:
        f = figures
        ratio = f[key].get("ratio")
        rows.append([label, *(_cell(f, key, t) for t in TARGETS),
                     f"{ratio:.2f}" if ratio is not None else ""])
    return rows


def render_text(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 1)]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import uvloop

    def first_line(cmd: list[str]) -> str | None:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0] if out else None

    return {"nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "uvloop": uvloop.__version__,
            "haproxy": first_line(["haproxy", "-v"]), "iperf3": first_line(["iperf3", "--version"])}


def source_version() -> dict:
    """The xmppgw measured: the commit, and whether xmppgw/ differs from it (read-only git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, text=True,
                              capture_output=True, check=False).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "modified": bool(git("status", "--porcelain", "--", "xmppgw"))}


def leftovers(workdir: Path) -> list[str]:
    """Processes of this run still alive (should be none): whatever names the work dir,
    bench/ or one of the benchmark's addresses, except this process and its parents."""
    ours = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        ours.add(pid)
    marks = (str(workdir), str(BENCH), "127.0.7.", "127.0.8.")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in ours:
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            if any(mark in cmd for mark in marks):
                found.append(f"{entry.name}: {cmd}")
    return found


def main_only_rss(args: argparse.Namespace, workdir: Path) -> int:
    """`--only rss`: the RSS-per-idle-stream figure for xmppgw alone, `rounds` fresh proxies,
    printed (no results files written)."""
    accepted, _ = workers_accepted(workdir, args.workers)
    workers = args.workers if accepted else 1
    per_round = []
    with contextlib.ExitStack() as stack:
        setup = Setup(workdir, workers, accepted, stack)
        setup.backends(bulk=False)
        for r in range(args.rounds):
            out = measure_rss(setup, "xmppgw")
            per_round.append(out)
            log(f"rss round {r + 1}/{args.rounds}: "
                + ", ".join(f"{n // 1000}k {kib:.3f}" for n, kib in out.items()) + " KiB/stream")
    print(json.dumps({"rss_kib_per_stream": [{str(n): round(k, 3) for n, k in o.items()}
                                             for o in per_round]}))
    return 0


def main_only_parked(args: argparse.Namespace, workdir: Path) -> int:
    """`--only parked`: RSS per stream parked before STARTTLS, HAProxy (defaults) and
    xmppgw, `rounds` fresh proxies each, printed (no results files written)."""
    accepted, _ = workers_accepted(workdir, args.workers)
    workers = args.workers if accepted else 1
    out: dict[str, list[float]] = {"haproxy": [], "xmppgw": []}
    with contextlib.ExitStack() as stack:
        setup = Setup(workdir, workers, accepted, stack)
        setup.backends(bulk=False)
        for r in range(args.rounds):
            for kind, figures in out.items():
                kib = measure_rss(setup, kind, (PARKED_STREAMS,), parked=True)[PARKED_STREAMS]
                figures.append(round(kib, 3))
                log(f"parked round {r + 1}/{args.rounds}: {kind} {kib:.3f} KiB/stream")
    print(json.dumps({"parked_kib_per_stream": out, "streams": PARKED_STREAMS}))
    return 0


def main_only_opens(args: argparse.Namespace, workdir: Path) -> int:
    """`--only opens`: stream opens per xmppgw CPU-second (and µs of CPU per open), `rounds`
    windows on one xmppgw, printed: the figure a shared machine skews least."""
    out = []
    with contextlib.ExitStack() as stack:
        setup = Setup(workdir, 1, False, stack)
        setup.backends(bulk=False)
        target = Target("xmppgw", XMPPGW_HOST, setup.xmppgw(XMPPGW_HOST, ["xmpp"]))
        for r in range(args.rounds):
            hs = measure_handshakes(target)
            out.append(round(hs["per_cpu_second"]))
            log(f"opens round {r + 1}/{args.rounds}: {_load_line(hs)}, "
                f"{hs['per_cpu_second']:,.0f} per CPU-second")
    print(json.dumps({"opens_per_cpu_second": out,
                      "cpu_us_per_open": [round(1e6 / x) for x in out]}))
    return 0


def main_only_scaling(args: argparse.Namespace, workdir: Path) -> int:
    """`--only scaling`: stream opens/s with 1 and 2 workers (HAProxy: nbthread 1 and 2),
    with no quota, under one shared quota (2 x QUOTA_CORES for two) and with each worker its
    own QUOTA_CORES; `rounds` rounds, the targets in a rotating order each time. Printed, with
    the median per row and of the per-round ratios 2/1 (no results files written)."""
    kinds = args.proxies.split(",")
    note = quota_note()
    log(note)
    modes = QUOTA_MODES if not note.startswith("no CPU quota") else ("free",)
    rows: dict[str, list[dict]] = {}
    quiet: list[float] = []
    with contextlib.ExitStack() as stack:
        base = Setup(workdir, 1, True, stack)
        base.backends(bulk=False)
        targets: list[tuple[str, int, Target]] = []
        for workers, (hosts) in ((1, (HAPROXY_HOST, XMPPGW_HOST)),
                                 (2, (TWO_HAPROXY_HOST, TWO_XMPPGW_HOST))):
            setup = Setup(workdir, workers, True, stack)
            if "haproxy" in kinds:
                targets.append(("haproxy", workers, Target(
                    "haproxy", hosts[0], setup.haproxy(hosts[0], ["xmpp"]))))
            if "xmppgw" in kinds:
                targets.append(("xmppgw", workers, Target(
                    "xmppgw", hosts[1], setup.xmppgw(hosts[1], ["xmpp"]))))
        run_json(["latency", "200", *(t.addr("xmpp") for _, _, t in targets)])  # warm
        for r in range(args.rounds):
            quiet.append(background_busy())
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            log(f"round {r + 1}/{args.rounds} (background CPU use {quiet[-1]:.0f}%)")
            for mode in modes:
                for kind, workers, t in order:
                    hs = measure_quota(t, workers, mode, args.quota_cores)
                    rows.setdefault(f"{kind} {workers} {mode}", []).append(hs)
                    log(f"    {kind:<8} {workers} {mode:<6} {hs['rate']:8,.0f} opens/s, "
                        f"CPU {hs['cpu_pct']:4.0f}% ({hs['per_cpu_second']:,.0f}/CPU-s)"
                        + (f", budget used {hs['budget_used_pct']:.0f}%, throttled "
                           f"{hs['throttled_periods']} periods" if mode != "free" else ""))
    out: dict[str, Any] = {"quota": note, "quota_cores_per_worker": args.quota_cores,
                           "rounds": args.rounds, "background_cpu_pct": quiet,
                           "xmppgw": source_version(), "rows": {}}
    for key, runs in rows.items():
        out["rows"][key] = {
            "rate": [round(h["rate"]) for h in runs],
            "per_cpu_second": [round(h["per_cpu_second"]) for h in runs],
            "cpu_pct": [round(h["cpu_pct"]) for h in runs],
            **({"budget_used_pct": [round(h["budget_used_pct"]) for h in runs],
                "throttled_periods": [h["throttled_periods"] for h in runs]}
               if "budget_used_pct" in runs[0] else {})}
    print(f"# {note}; {args.quota_cores} core per worker; median of {args.rounds} rounds; "
          f"background CPU use before the rounds {', '.join(f'{q:.0f}%' for q in quiet)}")
    for kind in kinds:
        for mode in modes:
            one, two = rows.get(f"{kind} 1 {mode}"), rows.get(f"{kind} 2 {mode}")
            if not one or not two:
                continue
            ratios = [b["rate"] / a["rate"] for a, b in zip(one, two)]
            out.setdefault("scaling", {})[f"{kind} {mode}"] = [round(x, 3) for x in ratios]
            print(f"{kind:<8} {mode:<6} 1: {statistics.median(h['rate'] for h in one):7,.0f} "
                  f"opens/s ({statistics.median(h['per_cpu_second'] for h in one):6,.0f}/CPU-s)"
                  f"  2: {statistics.median(h['rate'] for h in two):7,.0f} opens/s "
                  f"({statistics.median(h['per_cpu_second'] for h in two):6,.0f}/CPU-s)  "
                  f"2 over 1: x{statistics.median(ratios):.2f} "
                  f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})"
                  + (f"; budget used 1: {statistics.median(h['budget_used_pct'] for h in one):.0f}%"
                     f", 2: {statistics.median(h['budget_used_pct'] for h in two):.0f}%"
                     if mode != "free" else ""))
    print(json.dumps(out))
    return 0


def main_bench(args: argparse.Namespace, workdir: Path) -> int:
    if args.only == "rss":
        return main_only_rss(args, workdir)
    if args.only == "parked":
        return main_only_parked(args, workdir)
    if args.only == "opens":
        return main_only_opens(args, workdir)
    if args.only == "scaling":
        return main_only_scaling(args, workdir)
    RESULTS.mkdir(exist_ok=True)
    accepted, message = workers_accepted(workdir, args.workers)
    workers = args.workers if accepted else 1
    note = (f"xmppgw takes `[gateway] workers = {workers}`; HAProxy nbthread {workers}"
            if accepted else
            f"xmppgw refuses `[gateway] workers` ({message.splitlines()[0] if message else '?'}):"
            f" ran 1 xmppgw process and HAProxy nbthread 1")
    log(note)
    started = datetime.datetime.now(datetime.UTC)
    quiet: list[float] = []
    try:
        with contextlib.ExitStack() as stack:
            setup = Setup(workdir, workers, accepted, stack)
            runs = run_rounds(setup, args.rounds, quiet)
    finally:
        left = leftovers(workdir)
    figures = summarize(runs)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.datetime.now(datetime.UTC) - started).total_seconds()),
        "machine": machine(),
        "xmppgw": source_version(),
        "params": {"rounds": args.rounds, "workers": workers, "workers_note": note,
                   "bulk_seconds": BULK_SECONDS, "handshake_seconds": HANDSHAKE_SECONDS,
                   "handshake_clients": HANDSHAKE_CLIENTS, "handshake_processes": HANDSHAKE_PROCS,
                   "latency_round_trips": LATENCY_COUNT, "rss_holder_processes": HOLDERS},
        "figures": figures,
        "goals": goals(figures),
        "background_cpu_pct": [round(q, 1) for q in quiet],
        "leftover_processes": left,
    }
    rows = table(figures)
    m, v = result["machine"], result["xmppgw"]
    header = (f"{result['date']}, xmppgw {v['commit']}{' (modified)' if v['modified'] else ''}, "
              f"{m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}, "
              f"Python {m['python']}, {' '.join((m['haproxy'] or '?').split()[:3])}; {note}; "
              f"median of {args.rounds} rounds")
    goal_lines = [f"- {'met' if x['met'] else 'NOT met'}: {x['goal']} ({x['detail']})"
                  for x in result["goals"]]
    busiest = max(quiet)
    goal_lines.append(
        f"- WARNING: the machine was not idle (background CPU use up to {busiest:.0f}% before "
        f"a round): the figures are skewed; run again" if busiest > QUIET_PCT else
        f"- background CPU use before each round: {busiest:.0f}% at most (machine idle)")
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / "latest.md").write_text(f"{header}\n\n{render_markdown(rows)}\n\n"
                                       + "\n".join(goal_lines) + "\n")
    print(header)
    print()
    print(render_text(rows))
    print()
    print("\n".join(goal_lines))
    print(f"\nleftover processes: {left or 'none'}")
    print(f"results: {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'}")
    return 0 if not left else 1


# --- profile ------------------------------------------------------------------------------------


PYSPY_PASSES = [  # title, extra py-spy flags
    ("Python frames (py-spy --function --nonblocking)", ["--nonblocking"]),
    (("with native frames: uvloop, libc, the interpreter (py-spy --function --native; "
      "the process is paused for each sample, so it runs a little slower)"), ["--native"]),
]


def strace_counts(path: Path) -> dict[str, tuple[int, int]]:
    """`strace -c` summary -> {syscall: (calls, errors)}."""
    out: dict[str, tuple[int, int]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(parts) in (5, 6) and parts[0][0].isdigit() and parts[-1] != "total":
            errors = int(parts[4]) if len(parts) == 6 else 0
            out[parts[-1]] = (int(parts[3]), errors)
    return out


def measure_syscalls(target: Target, workdir: Path, seconds: float) -> dict:
    """The stream-open load once untraced (the CPU split: strace slows what it traces) and
    once under `strace -c -f` (system calls by name). Per open: divided by the opens the
    clients counted in the window, and, as a check, by the connections the proxy accepted
    while traced (accept calls that succeeded: attaching takes a moment)."""
    free = measure_handshakes(target, seconds)
    opens = free["rate"] * seconds
    summary = workdir / f"strace-{target.name}.txt"
    tracer: list[subprocess.Popen] = []

    def attach() -> None:
        pids = tree(target.proc.pid)  # xmppgw with workers: every process
        tracer.append(subprocess.Popen(
            ["strace", "-c", "-f", "-o", str(summary), *(f"-p{p}" for p in pids)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))

    try:
        traced = measure_handshakes(target, seconds, attach)
    finally:
        for p in tracer:
            p.send_signal(signal.SIGINT)  # detach and write the summary
            _, err = p.communicate(timeout=30)
            if p.returncode not in (0, -signal.SIGINT, 130) and not summary.exists():
                raise RuntimeError(f"strace failed: {err[-500:]}")
    counts = strace_counts(summary)
    accepted = sum(calls - errors for name, (calls, errors) in counts.items()
                   if name in ("accept", "accept4"))
    traced_opens = traced["rate"] * seconds
    return {"rate": free["rate"], "user_us": 1e6 * free["user_pct"] / 100 / free["rate"],
            "sys_us": 1e6 * free["sys_pct"] / 100 / free["rate"], "opens_untraced": opens,
            "traced_rate": traced["rate"], "traced_opens": traced_opens, "accepted": accepted,
            "calls": {name: calls for name, (calls, _) in counts.items()},
            "errors": {name: errors for name, (_, errors) in counts.items() if errors}}


def main_syscalls(args: argparse.Namespace, workdir: Path) -> int:
    """`profile --syscalls`: HAProxy (defaults, nbthread N) and xmppgw (N workers, `--workers`,
    default 1) under the same stream-open load: user and kernel CPU µs per open (untraced) and
    system calls per open by name (traced); with `--quota shared|split` the proxy is under
    the CPU quota of `--only scaling`. Writes results/profiles/syscalls-per-open[-N-workers]
    [-quota-MODE].txt."""
    if shutil.which("strace") is None:
        raise SystemExit("strace is not installed (apt-get install strace)")
    seconds, rounds = args.seconds, args.rounds
    quiet: list[float] = []
    workers = args.workers
    with contextlib.ExitStack() as stack:
        setup = Setup(workdir, workers, workers > 1, stack)
        setup.backends(bulk=False)
        targets = [Target("haproxy", HAPROXY_HOST, setup.haproxy(HAPROXY_HOST, ["xmpp"])),
                   Target("xmppgw", XMPPGW_HOST, setup.xmppgw(XMPPGW_HOST, ["xmpp"]))]
        if workers == 1 and args.quota == "free":  # the floor is one process, unconstrained
            targets.insert(1, Target("floor", FLOOR_HOST, setup.floor(FLOOR_HOST)))
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        run_json(["latency", "200", *(t.addr("xmpp") for t in targets)])  # warm
        for r in range(rounds):
            quiet.append(background_busy())
            for t in targets if r % 2 == 0 else targets[::-1]:
                with under_quota(t.proc.pid, workers, args.quota):
                    out = measure_syscalls(t, workdir, seconds)
                runs[t.name].append(out)
                log(f"round {r + 1}/{rounds} {t.name}: {out['rate']:,.0f} opens/s untraced, "
                    f"{out['user_us']:.0f} µs user + {out['sys_us']:.0f} µs kernel per open; "
                    f"traced {out['traced_rate']:,.0f} opens/s, "
                    f"{sum(out['calls'].values()) / max(out['accepted'], 1):.1f} syscalls "
                    f"per accepted connection")
    text = syscalls_text(runs, quiet, seconds, workers, args.quota)
    (RESULTS / "profiles").mkdir(parents=True, exist_ok=True)
    name = "syscalls-per-open" + (f"-{workers}-workers" if workers > 1 else "") + (
        f"-quota-{args.quota}" if args.quota != "free" else "")
    path = RESULTS / "profiles" / f"{name}.txt"
    path.write_text(text)
    print(text)
    left = leftovers(workdir)
    print(f"leftover processes: {left or 'none'}\nprofile: {path}")
    return 0 if not left else 1


def syscalls_text(runs: dict[str, list[dict]], quiet: list[float], seconds: float,
                  workers: int = 1, mode: str = "free") -> str:
    """The report: CPU split per open (median over rounds), then system calls per open by
    name (all traced rounds pooled, per accepted connection), HAProxy beside xmppgw."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    version, m = source_version(), machine()
    med = {k: {f: statistics.median(r[f] for r in rs) for f in ("rate", "user_us", "sys_us")}
           for k, rs in runs.items()}
    per_open: dict[str, dict[str, float]] = {}
    for kind, rs in runs.items():
        accepted = sum(r["accepted"] for r in rs) or 1
        names = {n for r in rs for n in r["calls"]}
        per_open[kind] = {n: sum(r["calls"].get(n, 0) for r in rs) / accepted for n in names}
    names = sorted(set(per_open["haproxy"]) | set(per_open["xmppgw"]),
                   key=lambda n: -(per_open["xmppgw"].get(n, 0) + per_open["haproxy"].get(n, 0)))
    floor = "floor" in runs
    lines = [
        (f"# System calls and CPU per stream open: HAProxy (defaults, nbthread {workers}) and "
         f"xmppgw {version['commit']}{' (modified)' if version['modified'] else ''} "
         f"({workers} worker{'s' if workers > 1 else ''}), {now}"
         + (f"; each worker under a {QUOTA_CORES}-core CPU quota ({mode})"
            if mode != "free" else "")),
        (f"# {m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"uvloop {m['uvloop']}, {' '.join((m['haproxy'] or '?').split()[:3])}"),
        (f"# load: bench.py's stream-open load ({HANDSHAKE_CLIENTS} clients over "
        f"{HANDSHAKE_PROCS} processes: connect, header, the real's header and features, "
        f"close), {seconds:g} s windows, {len(runs['xmppgw'])} rounds per proxy, "
        f"alternating; background CPU use before the rounds: "
        f"{', '.join(f'{q:.0f}%' for q in quiet)}"),
        ("# CPU: /proc/PID/stat utime and stime over an untraced window (strace slows the "
        "traced process), divided by the opens the clients counted."),
        ("# System calls: `strace -c -f -p PID` over a second window, divided by the "
        "connections the proxy accepted while traced (successful accept/accept4 calls)."),
        ("# regenerate: python3 bench/bench.py profile --syscalls [--rounds 3] [--seconds 4] "
         "[--workers 2 --quota split]"),
        *((("# floor: bench/floor.py, the least any Python/uvloop relay does for the same steps "
           "(accept, read the header, connect, send it, relay the answer, pass the FIN on, "
           "close, a log line): the runtime's share of an open; xmppgw - floor is xmppgw's "
           "own work"),) if floor else ()),
        "",
        "## CPU per open, untraced (median over rounds)",
        "",
        (f"{'':<10}{'opens/s':>10}{'user µs':>10}{'kernel µs':>11}{'total µs':>10}"
        f"{'opens per CPU-s / HAProxy':>27}"),
    ]
    for kind in runs:
        x = med[kind]
        total_us = x["user_us"] + x["sys_us"]
        haproxy_us = med["haproxy"]["user_us"] + med["haproxy"]["sys_us"]
        lines.append(f"{kind:<10}{x['rate']:>10,.0f}{x['user_us']:>10.1f}{x['sys_us']:>11.1f}"
                     f"{total_us:>10.1f}{haproxy_us / total_us:>27.2f}")
    lines += ["", "## rounds", ""]
    for kind, rs in runs.items():
        for r in rs:
            lines.append(
                f"{kind:<8} untraced {r['rate']:7,.0f} opens/s, {r['user_us']:6.1f} µs user "
                f"{r['sys_us']:6.1f} µs kernel; traced {r['traced_rate']:7,.0f} opens/s, "
                f"{r['traced_opens']:7,.0f} opens counted, {r['accepted']:7,} accepted")
    total = {k: sum(v.values()) for k, v in per_open.items()}
    if floor:
        names = sorted(set(names) | set(per_open["floor"]),
                       key=lambda n: -(per_open["xmppgw"].get(n, 0)
                                       + per_open["haproxy"].get(n, 0)))
    lines += ["", "## system calls per open (per accepted connection, traced rounds pooled)",
              "", f"{'syscall':<18}{'HAProxy':>9}" + (f"{'floor':>9}" if floor else "")
              + f"{'xmppgw':>9}{'xmppgw - HAProxy':>18}"]
    for n in [*names, "total"]:
        got = total if n == "total" else {k: v.get(n, 0.0) for k, v in per_open.items()}
        h, x = got["haproxy"], got["xmppgw"]
        if h >= 0.005 or x >= 0.005 or got.get("floor", 0.0) >= 0.005:
            lines.append(f"{n:<18}{h:>9.2f}" + (f"{got['floor']:>9.2f}" if floor else "")
                         + f"{x:>9.2f}{x - h:>+18.2f}")
    errs = {k: {n: sum(r["errors"].get(n, 0) for r in rs) /
                (sum(r["accepted"] for r in rs) or 1)
                for n in {n for r in rs for n in r["errors"]}} for k, rs in runs.items()}
    lines += ["", "## of which failed (EAGAIN and the like), per open", ""]
    for kind, e in errs.items():
        lines.append(f"{kind:<8} " + (", ".join(f"{n} {v:.2f}" for n, v in
                                                sorted(e.items(), key=lambda kv: -kv[1])
                                                if v >= 0.005) or "none"))
    return "\n".join(lines) + "\n"


def main_profile(args: argparse.Namespace, workdir: Path) -> int:
    """The stream-open load against xmppgw under py-spy, once for the Python frames and once
    with native frames; cProfile if py-spy cannot attach or with `--cprofile` (deterministic
    call counts, for a machine shared with other work: written under results/profiles/)."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "profile-handshake.txt"
    seconds = args.seconds
    sections = []
    if args.syscalls:
        return main_syscalls(args, workdir)
    if args.cprofile:
        (RESULTS / "profiles").mkdir(exist_ok=True)
        out = RESULTS / "profiles" / f"handshake-cprofile-{args.label}.txt"
        sections = [cprofile_report(workdir, seconds)]
    else:
        sections = pyspy_sections(workdir, seconds)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    version = source_version()
    text = (f"# xmppgw {version['commit']}{' (modified)' if version['modified'] else ''} under "
            f"the stream-open load of bench.py ({HANDSHAKE_CLIENTS} clients, "
            f"{HANDSHAKE_PROCS} processes, {seconds:g} s per pass), {now}\n"
            f"# regenerate: bash bench/profile.sh\n\n" + "\n\n".join(sections))
    out.write_text(text)
    print(text)
    left = leftovers(workdir)
    print(f"leftover processes: {left or 'none'}\nprofile: {out}")
    return 0 if not left else 1


def pyspy_sections(workdir: Path, seconds: float) -> list[str]:
    """The load under py-spy, Python frames then native ones; cProfile if py-spy fails."""
    sections: list[str] = []
    with contextlib.ExitStack() as stack:
        setup = Setup(workdir, 1, False, stack)
        setup.backends(bulk=False)
        gw = setup.xmppgw(XMPPGW_HOST, ["xmpp"])
        target = Target("xmppgw", XMPPGW_HOST, gw)
        for title, flags in PYSPY_PASSES:
            folded = workdir / "handshake.folded"
            spy: list[subprocess.Popen] = []

            def attach(spy=spy, flags=flags, folded=folded) -> None:  # as the load starts
                spy.append(subprocess.Popen(
                    ["py-spy", "record", "-p", str(gw.pid), "-d", str(int(seconds)), "-r", "200",
                     "--function", *flags, "--format", "raw", "-o", str(folded)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))

            try:
                hs = measure_handshakes(target, seconds + 1, attach)
            finally:
                err = ""
                for p in spy:
                    _, err = p.communicate(timeout=seconds + 60)
            if not (spy and spy[0].returncode == 0 and folded.exists()):
                log(f"py-spy failed ({err.strip()[-300:]})")
                break
            sections.append(f"# {title}\n# {_load_line(hs)}\n\n"
                            + folded_report(folded.read_text()))
            folded.unlink()
    if len(sections) < len(PYSPY_PASSES):
        log("py-spy could not profile xmppgw here: falling back to cProfile")
        sections = [cprofile_report(workdir, seconds)]
    return sections


def _load_line(hs: dict) -> str:
    return (f"{hs['rate']:,.0f} stream opens/s; xmppgw CPU {hs['cpu_pct']:.0f}% of a core "
            f"({hs['user_pct']:.0f}% user, {hs['sys_pct']:.0f}% kernel)")


ENTRY_POINTS = ("<frozen runpy>", "xmppgw/__main__.py", "xmppgw/cli.py", "xmppgw/net/workers.py",
                "asyncio/runners.py")


def folded_report(folded: str, top: int = 25) -> str:
    """py-spy's collapsed stacks -> own time per function, where the hottest are called from
    (the nearest Python frame: which xmppgw code makes that syscall), and total time per
    Python function of the gateway (with its callees)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    callers: dict[str, dict[str, int]] = {}
    samples = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + n
        caller = next((f for f in reversed(frames[:-1]) if ".py:" in f), "?")
        callers.setdefault(leaf, {})
        callers[leaf][caller] = callers[leaf].get(caller, 0) + n
        for frame in set(frames):
            if ".py:" in frame and not any(e in frame for e in ENTRY_POINTS):
                total[frame] = total.get(frame, 0) + n

    def pct(n: int) -> str:
        return f"{100 * n / samples:6.1f}%"

    hottest = sorted(own.items(), key=lambda kv: -kv[1])
    out = [f"{samples} samples (py-spy leaves out those where the thread waits idle)", "",
           f"## top {top} by own time (the function itself, not its callees)"]
    out += [f"{pct(n)}  {name}" for name, n in hottest[:top]]
    out += ["", "## the 10 hottest, by nearest Python caller"]
    for name, _ in hottest[:10]:
        out.append(f"  {name}")
        out += [f"  {pct(n)}    <- {caller}" for caller, n in
                sorted(callers[name].items(), key=lambda kv: -kv[1])[:3]]
    title = f"top {top} Python functions by total time (with their callees; entry points left out)"
    out += ["", f"## {title}"]
    out += [f"{pct(n)}  {name}" for name, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(out) + "\n"


def cprofile_report(workdir: Path, seconds: float) -> str:
    """Fallback: xmppgw run under cProfile for the same load."""
    import io
    import pstats
    prof = workdir / "xmppgw.prof"
    with contextlib.ExitStack() as stack:
        setup = Setup(workdir, 1, False, stack)
        setup.backends(bulk=False)
        cfg = workdir / "xmppgw-prof.toml"
        cfg.write_text(xmppgw_config(XMPPGW_HOST, None, ["xmpp"]))
        gw = stack.enter_context(running(
            [PY, "-m", "cProfile", "-o", str(prof), "-m", "xmppgw", "run", "-c", str(cfg)],
            "xmppgw (cProfile)", [(XMPPGW_HOST, PORTS["xmpp"])], setup.log("xmppgw-prof"),
            env=_repo_env()))
        hs = measure_handshakes(Target("xmppgw", XMPPGW_HOST, gw), seconds)
        # Without the profiler, the same load: CPU per open (what a shared machine skews least)
        plain = setup.xmppgw(XMPPGW_HOST.replace(".2", ".6"), ["xmpp"])
        free = measure_handshakes(Target("xmppgw", XMPPGW_HOST.replace(".2", ".6"), plain),
                                  seconds)
    buf = io.StringIO()
    buf.write(f"# cProfile; {hs['rate'] * seconds:,.0f} stream opens profiled "
              f"({_load_line(hs)})\n# without the profiler: {_load_line(free)}, "
              f"{free['per_cpu_second']:,.0f} opens per CPU-second "
              f"({1e6 / free['per_cpu_second']:.0f} µs of xmppgw CPU per open)\n")
    pstats.Stats(str(prof), stream=buf).sort_stats("tottime").print_stats(30)
    pstats.Stats(str(prof), stream=buf).sort_stats("cumulative").print_stats(70)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="bench", choices=["bench", "profile"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1,
                        help="xmppgw workers and HAProxy threads (default 1)")
    parser.add_argument("--seconds", type=float, default=10, help="profile: load duration")
    parser.add_argument("--cprofile", action="store_true",
                        help="profile: cProfile instead of py-spy (call counts)")
    parser.add_argument("--label", default="latest", help="profile --cprofile: file name part")
    parser.add_argument("--quota", choices=QUOTA_MODES, default="free",
                        help=f"profile --syscalls: the proxy under a {QUOTA_CORES}-core quota "
                             "per worker (shared or split, as --only scaling)")
    parser.add_argument("--syscalls", action="store_true",
                        help="profile: CPU µs and system calls per open, HAProxy and xmppgw "
                             "(results/profiles/syscalls-per-open.txt)")
    parser.add_argument("--quota-cores", type=float, default=QUOTA_CORES,
                        help="--only scaling: CPU quota per worker, in cores")
    parser.add_argument("--proxies", default="haproxy,xmppgw",
                        help="--only scaling: which proxies (comma-separated)")
    parser.add_argument("--only", choices=["rss", "parked", "opens", "scaling"],
                        help="bench: only this figure, for xmppgw (rss: RSS per idle stream; "
                             "parked: RSS per stream parked before STARTTLS, HAProxy too; "
                             "opens: stream opens per xmppgw CPU-second; scaling: opens/s "
                             "with 1 and 2 workers, free and under CPU quotas)")
    args = parser.parse_args()
    # a TERM (or ^C) unwinds through every finally: no process is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="xmppgw-bench-"))  # configs and logs of this run
    try:
        return (main_bench if args.command == "bench" else main_profile)(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
