"""An asyncio implementation of the Toxiproxy 2.x server: its HTTP API (on aiohttp) and its
toxics. Start it with `python -m chaos.toxiproxy [--host 127.0.0.1] [--port 8474]`, or embed
`ToxiproxyServer` (in a running loop) or `ThreadedToxiproxy` (in a thread of its own)."""

from chaos.toxiproxy.api import VERSION, make_app
from chaos.toxiproxy.server import ThreadedToxiproxy, ToxiproxyServer

__all__ = ["VERSION", "ThreadedToxiproxy", "ToxiproxyServer", "make_app"]
