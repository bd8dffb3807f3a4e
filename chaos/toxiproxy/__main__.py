"""`python -m chaos.toxiproxy [--host 127.0.0.1] [--port 8474] [--config proxies.json]`:
serve until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal

from chaos.toxiproxy.api import VERSION
from chaos.toxiproxy.engine import ApiError
from chaos.toxiproxy.server import ToxiproxyServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.toxiproxy",
                                     description="Toxiproxy 2.x server (asyncio)")
    parser.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8474, help="API port (default 8474)")
    parser.add_argument("--config", help="a JSON list of proxies to populate at startup "
                        "(as POST /populate takes it, like toxiproxy-server -config)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(args.host, args.port, args.config))


async def _serve(host: str, port: int, config: str | None) -> int:
    log = logging.getLogger("chaos.toxiproxy")
    server = ToxiproxyServer(host, port)
    await server.start()
    if config:
        try:
            with open(config, encoding="utf-8") as f:  # noqa: ASYNC230 - once, before serving
                proxies = await server.populate(json.load(f))
            log.info("populated %d proxies from %s", len(proxies), config)
        except (OSError, ValueError, ApiError) as exc:  # as Go: logged, and serving goes on
            log.error("failed to populate proxies from %s: %s", config, exc)
    log.info("Toxiproxy %s HTTP API on %s", VERSION, server.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
