"""README.md is a front page (issue 19): short, its Quickstart is the two commands CI and a
new user run, its configuration is the seed's set-up and loads, and its links lead somewhere.
The rest lives in docs/ (tests/unit/test_docs_build.py, test_docs_pages.py)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from xmppgw import config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_LINES = 250


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body of `## heading` up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def commands(block: str) -> list[str]:
    """The commands of a shell block, comments dropped."""
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


def test_readme_is_a_front_page() -> None:
    assert len(readme().splitlines()) < MAX_LINES


def test_quickstart_is_the_two_commands() -> None:
    quickstart = section(readme(), "Quickstart")
    block = re.search(r"```sh\n(.*?)```", quickstart, re.DOTALL)
    assert block, "the Quickstart has no sh block"
    assert commands(block.group(1)) == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_ci_runs_the_readmes_test_command() -> None:
    assert commands((ROOT / ".ci" / "run").read_text()).count("bash scripts/test.sh") == 1


def test_the_first_configuration_is_the_seeds_and_loads() -> None:
    """The config a newcomer copies is the seed article's set-up, and the loader takes it."""
    first = section(readme(), "A first configuration")
    block = re.search(r"```toml\n(.*?)```", first, re.DOTALL)
    assert block, "the configuration section has no toml block"
    loaded = config.loads(block.group(1))
    seed = config.load(ROOT / "tests" / "data" / "seed-config.toml")
    assert dataclasses.replace(loaded, path="") == dataclasses.replace(seed, path="")


def test_readmes_links_lead_to_files() -> None:
    """GitHub renders README's relative links; mkdocs never sees them, so check them here."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme())
    local = [link for link in links if "://" not in link]
    assert local, "README links to no docs page"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


BENCH = ROOT / "bench" / "results" / "latest.json"
BENCH_PAGE = ROOT / "docs" / "benchmarks.md"


def bench_ratio(key: str) -> str:
    return f"{json.loads(BENCH.read_text())['figures'][key]['ratio']:.2f}"


def test_the_bench_figures_quoted_are_the_latest_rounds() -> None:
    """Every ratio the README and the benchmark page's summary quote is the one in
    bench/results/latest.json (the round bench/run.sh wrote), with that round's date."""
    data = json.loads(BENCH.read_text())
    stamp = data["date"][:16].replace("+", "")  # 2026-11-29T21:43
    bullet = next(line for line in section(readme(), "Measured").split("\n- ")
                  if "docs/benchmarks.md" in line)
    bullet = " ".join(bullet.split())
    assert f"{stamp}Z" in bullet, bullet
    assert (f"bulk {bench_ratio('bulk_up')} client→server and {bench_ratio('bulk_down')} "
            f"server→client, stream opens/s {bench_ratio('handshakes')}, RSS per idle stream "
            f"{bench_ratio('rss_9000')} at 9k streams and {bench_ratio('rss_parked')} per "
            "stream parked before STARTTLS") in bullet, bullet
    page = " ".join(BENCH_PAGE.read_text(encoding="utf-8").split())
    assert f"## Latest round: {stamp}Z" in page
    rss = " / ".join(bench_ratio(f"rss_{n}") for n in (1000, 4000, 9000))
    for quoted in (
        (f"bulk {bench_ratio('bulk_up')} client→server and {bench_ratio('bulk_down')} "
        "server→client"),
        (f"stream opens/s {bench_ratio('handshakes')} and {bench_ratio('handshakes_per_cpu')} "
        "per proxy CPU-second"),
        (f"(direct TLS: {bench_ratio('tls_handshakes')} and "
        f"{bench_ratio('tls_handshakes_per_cpu')})"),
        f"RSS per idle stream {rss} at 1k / 4k / 9k streams",
        f"parked before STARTTLS {bench_ratio('rss_parked')}",
        (f"added p99 per stanza {bench_ratio('free_added_p99')} (free scheduling) and "
        f"{bench_ratio('cpu0_added_p99')} (one CPU)"),
        f"xmppgw {data['xmppgw']['commit']}",
    ):
        assert quoted in page, quoted
    head, table = (ROOT / "bench" / "results" / "latest.md").read_text().strip().split("\n\n", 1)
    assert f"`bench/results/latest.md` ({head}):\n\n{table}" in \
        BENCH_PAGE.read_text(encoding="utf-8"), "the page's table is not latest.md"


SYSCALLS = ROOT / "bench" / "results" / "profiles" / "syscalls-per-open.txt"


def test_the_performance_goals_quoted_are_the_latest_round_and_profile() -> None:
    """The README's goals line: which goals latest.json says are met, the opens per
    CPU-second and quota scaling figures from it, and the Python floor's ratio from the
    committed syscall profile (its CPU table: opens per CPU-s over HAProxy's)."""
    data = json.loads(BENCH.read_text())
    figures = data["figures"]
    bullet = " ".join(next(line for line in section(readme(), "Measured").split("\n- ")
                           if "docs/performance.md" in line).split())
    met = {g["goal"]: g["met"] for g in data["goals"]}
    assert not met["stream opens per proxy CPU-second >= 0.5x HAProxy's"]
    assert not met["with 2 workers, opens/s >= 1.8x one worker's"]
    assert all(ok for goal, ok in met.items() if "bulk" in goal or "RSS" in goal
               or "p99" in goal), met
    floor = next(line.split()[-1] for line in SYSCALLS.read_text().splitlines()
                 if line.startswith("floor "))
    assert (f"stream opens per proxy CPU-second, {bench_ratio('handshakes_per_cpu')} of "
            f"HAProxy's (goal 0.5; a bare Python relay doing the same steps reaches {floor})"
            ) in bullet, bullet
    quota = figures["scale_2w_quota"]
    assert (f"two workers over one under a CPU quota, {quota['xmppgw']:.2f} (goal 1.8; "
            f"HAProxy's two threads: {quota['haproxy']:.2f})") in bullet, bullet


def test_the_chaos_figures_quoted_are_the_latest_full_runs() -> None:
    """The README's chaos line quotes the newest full run in chaos/results/: its date, its
    population, and the blackhole rows (through the gateway; SRV only, no gateway)."""
    newest = max((ROOT / "chaos" / "results").glob("chaos-*-full.json"))
    data = json.loads(newest.read_text())
    rows = {r["scenario"]: r for r in data["results"]}
    gateway, srv = rows["blackhole"], rows["blackhole: SRV only, no gateway"]
    assert data["ok"] and srv["failed"] == srv["logins_tried"]
    bullet = " ".join(next(line for line in section(readme(), "Measured").split("\n- ")
                           if "docs/chaos.md" in line).split())
    assert f"chaos suite ({data['date'][:16]}Z, {data['clients']} clients" in bullet, bullet
    assert (f"{gateway['failed']} of {gateway['logins_tried']} logins through the gateway "
            f"failed, while all {srv['logins_tried']} clients resolving SRV") in bullet, bullet
