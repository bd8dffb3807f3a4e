"""CPU per stream open of two (or more) xmppgw trees, side by side: a before/after that a busy
machine skews least.

    python3 bench/ab.py BEFORE_DIR,AFTER_DIR [--rounds 4]

Each directory holds an `xmppgw` package (e.g. `git archive HEAD~1 xmppgw | tar -x -C DIR`).
One backend, one gateway per tree on its own address, and bench.py's stream-open load
against each in turn, alternating, `rounds` times; for each window: opens/s and the
gateway's user and kernel CPU µs per open (/proc/PID/stat over the window). Printed, no
results files written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

import bench as b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", help="comma-separated directories, each with an xmppgw package")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="xmppgw-ab-"))
    with contextlib.ExitStack() as stack:
        setup = b.Setup(workdir, 1, False, stack)
        setup.backends(bulk=False)
        targets = []
        for i, tree in enumerate(trees):
            os.environ["BENCH_XMPPGW_SRC"] = tree  # read by bench.py's _repo_env at start
            host = f"127.0.8.{20 + i}"
            targets.append((tree, b.Target(f"xmppgw{i}", host, setup.xmppgw(host, ["xmpp"]))))
        print(f"# background CPU use before the rounds: {b.background_busy():.0f}%")
        for r in range(args.rounds):
            for tree, target in targets:
                hs = b.measure_handshakes(target)
                opens = hs["rate"] * b.HANDSHAKE_SECONDS
                user = hs["user_pct"] / 100 * b.HANDSHAKE_SECONDS / opens * 1e6
                kernel = hs["sys_pct"] / 100 * b.HANDSHAKE_SECONDS / opens * 1e6
                print(f"round {r + 1} {tree}: {hs['rate']:,.0f} opens/s, user {user:.0f} µs, "
                      f"kernel {kernel:.0f} µs, total {user + kernel:.0f} µs per open",
                      flush=True)
    left = b.leftovers(workdir)
    return 0 if not left else 1


if __name__ == "__main__":
    raise SystemExit(main())
