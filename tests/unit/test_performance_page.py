"""docs/performance.md quotes measured figures: each is read back here from the committed
results file it names, so the page cannot drift from its evidence."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
FLAT = " ".join(PAGE.split())
RESULTS = ROOT / "bench" / "results"
SYSCALLS = (RESULTS / "profiles" / "syscalls-per-open.txt").read_text()


def profile_rows() -> dict[str, list[str]]:
    """The syscall profile's CPU table (user, kernel, total, ratio) and totals line."""
    rows = {}
    cpu_table = SYSCALLS.split("## CPU per open", 1)[1].split("## rounds", 1)[0]
    for line in cpu_table.splitlines():
        parts = line.split()
        if parts and parts[0] in ("haproxy", "floor", "xmppgw"):
            rows[parts[0]] = parts[2:6]
    totals = next(line.split() for line in SYSCALLS.splitlines() if line.startswith("total "))
    for i, kind in enumerate(("haproxy", "floor", "xmppgw")):
        rows[kind].append(totals[1 + i])
    return rows


def test_the_gap_table_is_the_committed_syscall_profile() -> None:
    rows = profile_rows()
    for label, kind in (("HAProxy 2.6 (defaults)", "haproxy"),
                        ("Python floor (uvloop)", "floor"), ("xmppgw", "xmppgw")):
        assert f"| {label} | {' | '.join(rows[kind])} |" in PAGE, (label, rows[kind])


def test_the_own_work_figures_follow_from_the_profile() -> None:
    rows = {k: [float(x) for x in v] for k, v in profile_rows().items()}
    own = rows["xmppgw"][2] - rows["floor"][2]
    user = rows["xmppgw"][0] - rows["floor"][0]
    kernel = rows["xmppgw"][1] - rows["floor"][1]
    assert f"It spends about {round(own, -1):.0f} µs ({user:.0f} user, {kernel:.0f} kernel)" \
        in FLAT
    left = 2 * rows["haproxy"][2] - rows["floor"][2]  # 0.5x HAProxy's opens per CPU-second
    assert f"about {round(left, -1):.0f} µs of CPU per open for its own work" in FLAT


def test_the_goals_table_is_the_latest_round() -> None:
    figures = json.loads((RESULTS / "latest.json").read_text())["figures"]
    ratio = figures["handshakes_per_cpu"]
    assert (f"| 0.{round(ratio['ratio'] * 100):02d} ({ratio['xmppgw']:,.0f} vs "
            f"{ratio['reference']:,.0f}) | **no** |") in PAGE
    quota = figures["scale_2w_quota"]
    assert (f"{quota['xmppgw']:.2f} under a 0.25-core quota per worker (HAProxy `nbthread 2`: "
            f"{quota['haproxy']:.2f})") in FLAT
    parked = figures["rss_parked"]["ratio"]
    assert f"| {parked:.2f} (" in PAGE


def test_the_round_three_and_mypyc_figures_are_in_their_files() -> None:
    ab = (RESULTS / "profiles" / "round3-held-cleartext-ab.txt").read_text()
    before = [int(x) for x in re.findall(r"^before .* total (\d+) µs", ab, re.MULTILINE)]
    after = [int(x) for x in re.findall(r"^after .* total (\d+) µs", ab, re.MULTILINE)]
    assert f"{' / '.join(map(str, before[:4]))} µs before" in FLAT
    assert f"{' / '.join(map(str, after[:4]))} µs after" in FLAT
    assert (f"{' / '.join(map(str, before[4:]))} against "
            f"{' / '.join(map(str, after[4:]))} µs") in FLAT
    mypyc = (RESULTS / "profiles" / "mypyc-2026-11-29.txt").read_text()
    machine = re.findall(r"^(?:pure|compiled)\s+([\d.]+)\s+\(", mypyc, re.MULTILINE)
    gateway = re.findall(r"^(?:pure|compiled)\s+(\d+)\s+(\d+)\s+(\d+)", mypyc, re.MULTILINE)
    assert f"from {machine[0]} to {machine[1]} µs per open" in FLAT
    assert f"from {gateway[0][0]} to {gateway[1][0]} µs" in FLAT
    assert f"user {gateway[0][1]} → {gateway[1][1]}, kernel {gateway[0][2]} → {gateway[1][2]}" \
        in FLAT
