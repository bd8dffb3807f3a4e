"""dnsperf against xmppgw's embedded DNS server, with BIND 9 serving the same zone beside it.

    python3 bench/dnsbench.py [--rounds 3] [--seconds 10]        (bash bench/dns.sh)

xmppgw runs as an operator runs it (`xmppgw run`, `[srv] listen`), with a vserver and a farm
of three reals, so it answers the records of its own config. `xmppgw zone` prints those
records as a zone file, and Debian's `named` serves exactly that file: the same answers, so
the two rates compare the servers and nothing else. BIND is measured twice: with one worker
thread (`-n 1`), the same one core the embedded server has (it runs in the gateway's worker
0), and with its default of one thread per CPU.

Each round measures every server for `--seconds` with `dnsperf -l`, the servers in a rotating
order; the median over the rounds is reported, with each server's CPU use during the run
(from /proc) and dnsperf's latency and loss. Results: bench/results/dns-latest.json and
dns-latest.md. Addresses: 127.0.8.52 (the gateway's vserver), 127.0.8.53 (its DNS server),
127.0.8.54 (BIND), beside bench.py's 127.0.7.0/24 and 127.0.8.1-4.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO))  # tests.harness.bind: the same named set-up the tests use

from tests.harness.bind import Bind

ZONE = "example.test"
VSERVER_HOST = "127.0.8.52"
XMPPGW_DNS = "127.0.8.53"
BIND_HOST = "127.0.8.54"
REALS = ("127.0.7.101", "127.0.7.102", "127.0.7.103")
QUERY_TYPES = ("SRV", "A", "AAAA")  # what an XMPP client asks: the SRV, then the targets
OUTSTANDING = 100  # dnsperf -q: queries in flight
QUIET_PCT = 10
TARGETS = ("xmppgw", "bind-n1", "bind")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def xmppgw_config() -> str:
    reals = "".join(f'[[serverfarm.real]]\naddress = "{r}"\n' for r in REALS)
    return f"""# bench/dnsbench.py: the embedded DNS server of a gateway with two vservers, three reals
[gateway]
domains = ["{ZONE}"]
log_format = "json"

[[vserver]]
name = "C2S"
virtual = "{VSERVER_HOST}:5222"
kinds = ["c2s"]
serverfarm = "XMPP"

[[vserver]]
name = "S2S"
virtual = "{VSERVER_HOST}:5269"
kinds = ["s2s"]
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
{reals}
[srv]
zones = ["{ZONE}"]
listen = "{XMPPGW_DNS}:53"
"""


# --- the servers ---------------------------------------------------------------------------------


def answers_soa(host: str) -> bool:
    query = dns.message.make_query(ZONE, "SOA")
    try:
        response = dns.query.udp(query, host, timeout=0.5)
    except (dns.exception.DNSException, OSError):
        return False
    return response.rcode() == dns.rcode.NOERROR and bool(response.answer)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Xmppgw:
    """`xmppgw run` as a child process (its own session: a Ctrl-C stops it through us)."""

    def __init__(self, workdir: Path) -> None:
        self.config = workdir / "xmppgw.toml"
        self.config.write_text(xmppgw_config())
        self.log_path = workdir / "xmppgw.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def zone_text(self) -> str:
        out = subprocess.run([sys.executable, "-m", "xmppgw", "zone", "-c", str(self.config)],
                             cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout

    def start(self) -> None:
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xmppgw", "run", "-c", str(self.config)], cwd=REPO,
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"xmppgw exited {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-2000:])
            return answers_soa(XMPPGW_DNS)

        wait_for(up, f"xmppgw's DNS server on {XMPPGW_DNS}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- measuring -----------------------------------------------------------------------------------


def query_file(zone_text: str, path: Path) -> int:
    """One query per (name, type) the zone holds among QUERY_TYPES; the number of lines."""
    zone = dns.zone.from_text(zone_text, origin=ZONE, relativize=False, check_origin=False)
    lines = sorted(f"{name.to_text(omit_final_dot=True)} {dns.rdatatype.to_text(rds.rdtype)}"
                   for name, node in zone.nodes.items() for rds in node.rdatasets
                   if dns.rdatatype.to_text(rds.rdtype) in QUERY_TYPES)
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def background_cpu_pct(seconds: float = 1.0) -> float:
    """CPU in use by anything, % of all CPUs, over `seconds` (before a round)."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(values), values[3] + values[4]
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))


@dataclass
class Run:
    qps: float
    latency_ms: float
    lost_pct: float
    noerror_pct: float
    response_bytes: float
    cpu_pct: float


def dnsperf(host: str, queries: Path, seconds: float, pid: int) -> Run:
    argv = ["dnsperf", "-s", host, "-p", "53", "-d", str(queries), "-l", f"{seconds:g}",
            "-q", str(OUTSTANDING)]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         timeout=seconds + 30).stdout
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"dnsperf output without {pattern!r}:\n{out}")
        return float(match.group(1))

    sent = number(r"Queries sent:\s+(\d+)")
    return Run(
        qps=number(r"Queries per second:\s+([\d.]+)"),
        latency_ms=number(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
        lost_pct=100 * number(r"Queries lost:\s+(\d+)") / max(1.0, sent),
        noerror_pct=number(r"NOERROR \d+ \(([\d.]+)%\)") if "NOERROR" in out else 0.0,
        response_bytes=number(r"Average packet size:\s+request \d+, response (\d+)"),
        cpu_pct=cpu,
    )


# --- the run -------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    gateway = Xmppgw(workdir)
    zone_text = gateway.zone_text()
    (workdir / "example.test.zone").write_text(zone_text)
    lines = query_file(zone_text, workdir / "queries.txt")
    log(f"{lines} queries in the file ({', '.join(QUERY_TYPES)} of every name the zone has)")
    bind = Bind(workdir, address=BIND_HOST, zones=(ZONE,), zone_texts={ZONE: zone_text})
    runs: dict[str, list[Run]] = {t: [] for t in TARGETS}
    quiet: list[float] = []
    try:
        for round_no in range(args.rounds):
            quiet.append(background_cpu_pct())
            order = TARGETS[round_no % 3:] + TARGETS[:round_no % 3]
            for target in order:
                runs[target].append(measure_one(target, gateway, bind, args.seconds, workdir))
                log(f"round {round_no + 1}, {target}: {runs[target][-1].qps:,.0f} qps")
    finally:
        gateway.stop()
        bind.stop()
    return {"runs": runs, "background_cpu_pct": quiet, "queries": lines,
            "named": first_line(["named", "-v"]), "dnsperf": dnsperf_version()}


def measure_one(target: str, gateway: Xmppgw, bind: Bind, seconds: float,
                workdir: Path) -> Run:
    """Start the one server measured (nothing else of ours runs meanwhile), run dnsperf."""
    queries = workdir / "queries.txt"
    if target == "xmppgw":
        gateway.start()
        try:
            return dnsperf(XMPPGW_DNS, queries, seconds, gateway.pid)
        finally:
            gateway.stop()
    bind.threads = 1 if target == "bind-n1" else None
    bind.start()
    try:
        return dnsperf(BIND_HOST, queries, seconds, bind.pid)
    finally:
        bind.stop()


def first_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    return out.splitlines()[0] if out else None


def dnsperf_version() -> str | None:
    out = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, check=False)
    match = re.search(r"Version (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else None


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    try:
        import uvloop
        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "loop": loop}


def source_version() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, text=True,
                              capture_output=True, check=False).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "modified": bool(git("status", "--porcelain", "--", "xmppgw"))}


def summarize(runs: dict[str, list[Run]]) -> dict[str, dict[str, float]]:
    fields = ("qps", "latency_ms", "lost_pct", "noerror_pct", "response_bytes", "cpu_pct")
    out = {t: {f: statistics.median(getattr(r, f) for r in rs) for f in fields}
           for t, rs in runs.items()}
    for figures in out.values():
        figures["qps_per_cpu_second"] = figures["qps"] / max(figures["cpu_pct"] / 100, 1e-9)
    return out


def report(result: dict[str, Any]) -> str:
    f = result["figures"]
    x, n1, nd = f["xmppgw"], f["bind-n1"], f["bind"]
    rows = [
        ("answers/s (dnsperf qps)", "qps", "{:,.0f}"),
        ("server CPU, % of a core", "cpu_pct", "{:.0f}"),
        ("answers per server CPU-second", "qps_per_cpu_second", "{:,.0f}"),
        ("average latency, ms", "latency_ms", "{:.2f}"),
        ("queries lost, %", "lost_pct", "{:.2f}"),
        ("NOERROR, %", "noerror_pct", "{:.1f}"),
        ("average response, bytes", "response_bytes", "{:.0f}"),
    ]
    lines = [("| figure | xmppgw | BIND -n 1 | BIND (2 threads) | xmppgw/BIND -n 1 | "
             "xmppgw/BIND |"), "|---|---:|---:|---:|---:|---:|"]
    for label, key, fmt in rows:
        ratio = (f"{x[key] / n1[key]:.2f}" if n1[key] else "-",
                 f"{x[key] / nd[key]:.2f}" if nd[key] else "-")
        lines.append(f"| {label} | {fmt.format(x[key])} | {fmt.format(n1[key])} | "
                     f"{fmt.format(nd[key])} | {ratio[0]} | {ratio[1]} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="dnsperf -l per run")
    args = parser.parse_args()
    for tool in ("dnsperf", "named", "tsig-keygen"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            log(f"{tool} not found: apt-get install bind9 bind9-utils dnsperf")
            return 1
    started = datetime.datetime.now(datetime.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="xmppgw-dnsbench-", dir="/tmp"))
    workdir.chmod(0o755)  # named runs as `bind` and must reach its directory
    try:
        measured = measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures = summarize(measured.pop("runs"))
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "xmppgw": source_version(),
        "params": {"rounds": args.rounds, "seconds": args.seconds, "outstanding": OUTSTANDING,
                   "queries_in_file": measured["queries"]},
        "versions": {"named": measured["named"], "dnsperf": measured["dnsperf"]},
        "figures": figures,
        "ratio_qps_vs_bind_n1": figures["xmppgw"]["qps"] / figures["bind-n1"]["qps"],
        "ratio_qps_vs_bind": figures["xmppgw"]["qps"] / figures["bind"]["qps"],
        "background_cpu_pct": [round(q, 1) for q in measured["background_cpu_pct"]],
    }
    m, v = result["machine"], result["xmppgw"]
    busiest = max(result["background_cpu_pct"])
    header = (f"{result['date']}, xmppgw {v['commit']}{' (modified)' if v['modified'] else ''}, "
              f"{m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
              f"{m['loop']}, {result['versions']['named']}, dnsperf "
              f"{result['versions']['dnsperf']}; dnsperf -l {args.seconds:g} -q {OUTSTANDING}, "
              f"{measured['queries']} SRV/A/AAAA queries; median of {args.rounds} rounds")
    quiet_line = (f"- WARNING: the machine was not idle (background CPU up to {busiest:.0f}%): "
                  "run again" if busiest > QUIET_PCT else
                  f"- background CPU before each round: {busiest:.0f}% at most (machine idle)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dns-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    text = f"{header}\n\n{report(result)}\n\n{quiet_line}\n"
    (RESULTS / "dns-latest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
