"""CPU quotas for the benchmark's proxies: CFS bandwidth control through cgroups.

On 2 vCPUs shared by the proxy, the load clients and the backend, "two workers against one"
mostly measures who wins the CPU: the second worker takes it from the load generator. Under
a quota the proxy gets a fixed budget (a quarter of a core per worker or thread by default) and the
load generator the rest, so doubling the workers doubles the proxy's budget and nothing else:
opens/s over the budget is the scaling figure.

cgroup v2 (`cpu.max`) where the unified hierarchy has the cpu controller, else cgroup v1's
cpu controller (`cpu.cfs_quota_us`/`cpu.cfs_period_us`): the same CFS bandwidth control the
kernel applies either way. Our groups are made beside the benchmark's own cgroup, named
xmppgw-bench-<pid>-<i>, and removed however the run ends (their tasks moved back first).

Two placements:
- `shared`: every process and thread of the proxy in one group whose quota is n x the unit;
- `split`: one group per worker (xmppgw's worker processes, HAProxy's threads), each with one
  unit of quota, as if each worker had its own part of a core: it also measures how evenly
  the kernel and the proxy spread the connections. Threads can be placed one by one only in
  cgroup v1 (v2 would need threaded subtrees).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# A short period: under a small quota a 100 ms period stalls the proxy for tens of ms at a
# time, and 32 client loops waiting through the stall leave budget unused.
PERIOD_US = 20_000
ROOT = Path("/sys/fs/cgroup")


def _own_path(controller: str | None) -> str:
    """Our cgroup path in the v1 hierarchy of `controller`, or (None) in the unified one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or \
                (controller is not None and controller in controllers.split(",")):
            return path
    raise OSError(f"no {controller or 'unified'} line in /proc/self/cgroup")


def hierarchy() -> tuple[str, Path]:
    """("v2" or "v1", the directory our groups go into); OSError saying why if neither cgroup
    v2 with the cpu controller nor a writable cgroup v1 cpu controller is there."""
    v2 = ROOT / "cgroup.controllers"
    if v2.exists() and "cpu" in v2.read_text().split():
        base = ROOT / _own_path(None).lstrip("/")
        if "cpu" not in (base / "cgroup.subtree_control").read_text().split():
            (base / "cgroup.subtree_control").write_text("+cpu")
        return "v2", base
    v1 = ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        return "v1", v1 / _own_path("cpu").lstrip("/")
    raise OSError("no cgroup cpu controller: neither cgroup v2 with cpu in "
                  "cgroup.controllers nor a cgroup v1 cpu hierarchy under /sys/fs/cgroup")


@dataclass
class Group:
    """One cgroup of ours with a CPU quota."""

    version: str
    path: Path
    base: Path  # where its tasks go back to

    def limit(self, cores: float) -> None:
        """At most `cores` CPU-seconds per second (over every CPU), per PERIOD_US."""
        quota = max(1000, round(cores * PERIOD_US))
        if self.version == "v2":
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def add_process(self, pid: int) -> None:
        """The process and every thread of it (a child forked later follows its parent)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def add_thread(self, tid: int) -> None:
        if self.version != "v1":
            raise OSError("threads one by one need cgroup v1 (v2: threaded subtrees)")
        (self.path / "tasks").write_text(str(tid))

    def throttled(self) -> tuple[int, float]:
        """(periods throttled, seconds throttled) so far."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        if self.version == "v2":
            return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_usec", 0)) / 1e6
        return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_time", 0)) / 1e9

    def empty(self) -> None:
        """Every task back to the base cgroup (exited ones are gone already)."""
        name = "cgroup.threads" if self.version == "v2" else "tasks"
        target = self.base / ("cgroup.procs" if self.version == "v2" else "tasks")
        for _ in range(3):  # a task forked meanwhile shows up on the next pass
            tids = (self.path / name).read_text().split()
            if not tids:
                return
            for tid in tids:
                with contextlib.suppress(OSError):  # exited meanwhile
                    target.write_text(tid)


@contextlib.contextmanager
def groups(count: int) -> Iterator[list[Group]]:
    """`count` fresh cgroups with no limit yet; emptied and removed whatever happens."""
    version, base = hierarchy()
    made: list[Group] = []
    try:
        for i in range(count):
            path = base / f"xmppgw-bench-{os.getpid()}-{i}"
            path.mkdir()
            made.append(Group(version, path, base))
        yield made
    finally:
        for group in made:
            with contextlib.suppress(OSError):
                group.empty()
            with contextlib.suppress(OSError):
                group.path.rmdir()


def units(pid: int, children: list[int]) -> tuple[list[int], bool]:
    """The proxy's workers: (ids, threads?). Its child processes if it forked workers
    (xmppgw's master), else its threads (HAProxy's nbthread; one for a 1-worker xmppgw with no
    helper threads)."""
    if children:
        return children, False
    return sorted(int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()), True


def assign(count: int, ids: list[int]) -> list[list[int]]:
    """Round-robin `ids` over `count` groups: group i gets ids i, i + count, ..."""
    return [ids[i::count] for i in range(count)]
