"""The pure parts of the benchmark's tools (bench/): reading strace's summary, and spreading
a proxy's workers over CPU-quota groups. The measurements themselves are not tested here:
they need the machine's clock and cgroups."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():  # bench/ is scripts, not a package: its modules import each other by name
    sys.path.insert(0, str(BENCH))
    try:
        import quota

        import bench as module
        yield module, quota
    finally:
        sys.path.remove(str(BENCH))


SUMMARY = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 31.02    0.010399           2      4012           read
 12.10    0.004057           1      3002      1001 epoll_ctl
  9.77    0.003275           3      1001      1001 connect
  0.40    0.000134           0       998           accept4
------ ----------- ----------- --------- --------- ----------------
100.00    0.033525           3      9013      2002 total
"""


def test_strace_summary_gives_calls_and_errors_per_syscall(bench, tmp_path: Path) -> None:
    module, _ = bench
    path = tmp_path / "strace.txt"
    path.write_text(SUMMARY)
    assert module.strace_counts(path) == {
        "read": (4012, 0), "epoll_ctl": (3002, 1001), "connect": (1001, 1001),
        "accept4": (998, 0)}


def test_workers_go_round_robin_over_the_groups(bench) -> None:
    _, quota = bench
    assert quota.assign(2, [11, 12]) == [[11], [12]]
    assert quota.assign(2, [11, 12, 13]) == [[11, 13], [12]]
    assert quota.assign(1, [11, 12]) == [[11, 12]]


def test_a_forked_proxy_is_split_by_process_a_threaded_one_by_thread(bench) -> None:
    _, quota = bench
    assert quota.units(1, [7, 8]) == ([7, 8], False)
    ids, threads = quota.units(int(Path("/proc/self").resolve().name), [])
    assert threads and int(Path("/proc/self").resolve().name) in ids
