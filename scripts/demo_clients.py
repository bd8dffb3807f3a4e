"""One process of the demo's client population: the chaos suite's storm clients
(tests/support/storm_client.py, ``--mode stay``: they log in again when cut) that also send a
XEP-0199 ping to their server every ``--ping-interval`` seconds while logged in, and print
``{"event": "ping", "ok": ...}`` for each. Started by scripts/demo.py (DemoClients)."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import storm_client
from tests.support.storm_client import emit

PING_INTERVAL = 1.0
PING_TIMEOUT = 3.0


class PingingClient(storm_client.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pinger: asyncio.Task[None] | None = None
        self.xmpp.register_plugin("xep_0199")
        self.xmpp.add_event_handler("session_start", self._start_pinging)
        self.xmpp.add_event_handler("disconnected", self._stop_pinging)

    def _start_pinging(self, _event: Any) -> None:
        self._stop_pinging(None)
        self.pinger = asyncio.ensure_future(self._ping_forever())

    def _stop_pinging(self, _event: Any) -> None:
        if self.pinger is not None:
            self.pinger.cancel()
            self.pinger = None

    async def _ping_forever(self) -> None:
        await asyncio.sleep(random.uniform(0, PING_INTERVAL))
        while not self.stopping:
            began = time.time()
            try:
                await self.xmpp.plugin["xep_0199"].ping(jid=self.args.domain,
                                                        timeout=PING_TIMEOUT)
                emit("ping", client=self.index, ok=True, rtt=round(time.time() - began, 4))
            except asyncio.CancelledError:
                raise  # cut: the `down` line says so
            except Exception as exc:  # noqa: BLE001 - a failed ping is a figure, not a crash
                emit("ping", client=self.index, ok=False, reason=type(exc).__name__)
            await asyncio.sleep(max(0.0, PING_INTERVAL - (time.time() - began)))

    def stop(self) -> None:
        self._stop_pinging(None)
        super().stop()


def main(argv: list[str]) -> None:
    global PING_INTERVAL
    if "--ping-interval" in argv:
        i = argv.index("--ping-interval")
        PING_INTERVAL = float(argv[i + 1])
        del argv[i:i + 2]
    storm_client.Client = PingingClient  # type: ignore[misc]
    asyncio.run(storm_client.main(storm_client.parse(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
