"""Keeps the published SRV records equal to what the gateway knows of its reals and vservers.

The gateway calls `changed()` after every engine run; that is cheap (one rebuild at most per
event loop turn, and only a comparison unless what the records can show changed). A 1 s
timer catches what passes no engine event: a retry timer running out (FAILED -> TESTING),
a real marked FAILED by another worker. A new set gets the next SOA serial, is logged once as
`srv_changed` with the records added and removed, is answered by the embedded server from
then on, and goes to the RFC 2136 sender when `[srv.update]` is set.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from xmppgw.config import Config, SrvConfig
from xmppgw.dns.records import Health, Published, build
from xmppgw.dns.server import DnsServer

REFRESH = 1.0  # seconds between rebuilds that no engine event asked for


class SrvPublisher:
    """The SRV records of a running gateway: built, served, sent, kept current.

    `health` returns the gateway's view now (vservers listening, each real's state)."""

    def __init__(self, config: Config, log: Any, health: Callable[[], Health]) -> None:
        if config.srv is None:
            raise ValueError("the config has no [srv] section")
        self.config = config
        self.srv = config.srv
        self.log = log
        self.health = health
        self.published: Published = build(config, Health.from_config(config), 0)
        self.server: DnsServer | None = None
        self.sender: Any = None  # xmppgw.dns.rfc2136.UpdateSender, imported only when used
        self._visible: Any = None
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """First set (serial seeded from the clock, so it grows across restarts), then the
        server and the sender, then the timer. Raises OSError (what the gateway reports as
        `start_failed`) if the server cannot listen or the update key is unusable."""
        health = self.health()
        self._visible = health.visible(self.config)
        self.published = build(self.config, health, int(time.time()))
        if self.srv.listen is not None:
            self.server = DnsServer(self.srv.listen, lambda: self.published, self.log)
            await self.server.start()
        await self._start_sender()
        self.log.info("srv_publishing", zones=list(self.srv.zones),
                      listen=str(self.srv.listen) if self.srv.listen else None,
                      update=str(self.srv.update.server) if self.srv.update else None,
                      serial=self.published.serial, records=len(self.published.content()))
        self._timer = asyncio.get_running_loop().call_later(REFRESH, self._tick)

    def changed(self) -> None:
        """The engine ran: look again soon (once per loop turn, however many calls)."""
        if self._soon is None and self._timer is not None:
            self._soon = asyncio.get_running_loop().call_soon(self.refresh)

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(REFRESH, self._tick)
        self.refresh()

    def refresh(self) -> bool:
        """Rebuild if what the records can show changed; True if a new set was published."""
        self._soon = None
        health = self.health()
        visible = health.visible(self.config)
        if visible == self._visible:
            return False
        self._visible = visible
        candidate = build(self.config, health, self.published.serial + 1)
        before, after = self.published.content(), candidate.content()
        if before == after:
            return False  # e.g. a real that failed while publish_reals is off
        self.published = candidate
        self.log.info("srv_changed", serial=candidate.serial, added=sorted(after - before),
                      removed=sorted(before - after))
        if self.sender is not None:
            self.sender.publish(candidate.update_rrsets())
        return True

    async def reload(self, config: Config) -> None:
        """A reloaded config: rebuild at once (new reals, names, TTL, zones); listen anew
        only if `listen` changed, and restart the sender only if `[srv.update]` or the zones
        changed. A new `listen` that cannot bind is logged and the old one kept, so a reload
        never leaves the zones unanswered. Without `[srv]` publishing stops."""
        if config.srv is None:
            self.log.warning("srv_stopped", reason="the reloaded config has no [srv] section")
            await self.stop()
            return
        old = self.srv
        self.config, self.srv = config, config.srv
        if self._timer is None:  # stopped by an earlier reload without [srv]: start again
            try:
                await self.start()
            except OSError as exc:
                self.log.error("srv_start_failed", error=exc.strerror or str(exc))
                await self.stop()
            return
        if config.srv.listen != old.listen:
            await self._relisten(old)
        sender_changed = (config.srv.update, config.srv.zones) != (old.update, old.zones)
        if sender_changed:
            await self._stop_sender()
        self._visible = None  # the config changed: rebuild even if the health did not
        self.refresh()
        if sender_changed:
            try:
                await self._start_sender()
            except OSError as exc:
                self.log.error("srv_update_failed", error=exc.strerror)

    async def _relisten(self, old: SrvConfig) -> None:
        server = None
        if self.srv.listen is not None:
            server = DnsServer(self.srv.listen, lambda: self.published, self.log)
            try:
                await server.start()
            except OSError as exc:
                self.log.error("srv_listen_failed", listen=str(self.srv.listen),
                               error=exc.strerror or str(exc), kept=str(old.listen))
                self.srv = replace(self.srv, listen=old.listen)
                self.config = replace(self.config, srv=self.srv)  # the NS A stays right
                return
        if self.server is not None:
            await self.server.stop()
        self.server = server

    async def _start_sender(self) -> None:
        """The RFC 2136 sender, if `[srv.update]`, given the current set at once."""
        if self.srv.update is None:
            return
        from xmppgw.dns.rfc2136 import UpdateSender

        sender = UpdateSender(self.srv.update, self.srv.zones, self.log)
        try:
            await sender.start()
        except ValueError as exc:  # a key file it cannot use: refuse it, cleanly
            raise OSError(errno.EINVAL, f"[srv.update] key_file: {exc}") from None
        self.sender = sender
        sender.publish(self.published.update_rrsets())

    async def _stop_sender(self) -> None:
        if self.sender is not None:
            await self.sender.stop()
            self.sender = None

    def zone_text(self) -> str:
        """`xmppgw zone` from the running gateway."""
        return self.published.to_zone_text("from the running gateway's live health")

    async def stop(self) -> None:
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        self._soon = self._timer = None
        if self.server is not None:
            await self.server.stop()
            self.server = None
        await self._stop_sender()
