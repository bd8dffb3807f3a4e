"""An ejabberd cluster run inside a network namespace, for tests/integration/test_pair.py.

    ip netns exec NS python -m tests.support.pair_servers BASE_DIR DOMAIN USERS ADDRESS...

The harness's EjabberdCluster checks readiness by connecting to the nodes' addresses, and
runs `ejabberdctl` next to their epmd: both only work from inside the namespace, so this
process lives there. It starts the cluster (one node per ADDRESS), registers `user0` ..
`user{USERS-1}` (password "secret"), prints one JSON line {"ready": true} (or {"error": ...})
and then answers one command per line on stdin with one JSON line on stdout:

    sessions   -> [{"jid", "resource", "node", "ip"}, ...]  (connected_users_info)

End of input, SIGTERM or SIGINT stop the cluster and end the process.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from tests.harness.ejabberd import EjabberdCluster

PASSWORD = "secret"
SHORTS = "pairej"  # node names pairej1_<pid>@localhost ...: never the main harness's


def _say(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


def _stop(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    base, domain, users, *addresses = argv
    signal.signal(signal.SIGTERM, _stop)
    cluster = EjabberdCluster(Path(base), domain,
                              [(f"{SHORTS}{i + 1}", a) for i, a in enumerate(addresses)],
                              resolver=None)
    try:
        try:
            cluster.start()
            cluster.register_many({f"user{i}": PASSWORD for i in range(int(users))})
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with it
            _say({"error": f"{type(exc).__name__}: {exc}"})
            return 1
        _say({"ready": True, "nodes": cluster.node_names})
        for line in sys.stdin:
            if line.strip() == "sessions":
                _say([{"jid": s.jid, "resource": s.resource, "node": s.node, "ip": s.ip}
                      for s in cluster.connected_users_info()])
            else:
                _say({"error": f"unknown command {line.strip()!r}"})
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
