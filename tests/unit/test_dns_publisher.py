"""SrvPublisher: rebuilds only when what the records show changes, logs it once, bumps the
serial, answers the new set at once and hands it to the RFC 2136 sender.

The server runs on a loopback port the kernel picks; no harness needed."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Sequence
from typing import Any, ClassVar

import dns.asyncquery
import dns.exception
import dns.message
import dns.rrset
import pytest

from xmppgw import config
from xmppgw.config import Address, Config
from xmppgw.dns import rfc2136
from xmppgw.dns.publisher import SrvPublisher
from xmppgw.dns.records import Health
from xmppgw.slb.farm import RealState

CONFIG = """[gateway]
domains = ["example.test"]

[[vserver]]
name = "P5222"
virtual = "127.0.0.1:5222"
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
[[serverfarm.real]]
address = "10.0.0.1"
[[serverfarm.real]]
address = "10.0.0.2"

[srv]
listen = "127.0.0.1:5353"
{extra}
"""


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    warning = error = info

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.lines if event == name]


class World:
    """The gateway's side: what `health()` returns, changed by the test."""

    def __init__(self, cfg: Config) -> None:
        self.base = Health.from_config(cfg)
        self.health = self.base

    def set(self, real: str, state: RealState, up: tuple[str, ...] = ("P5222",)) -> None:
        self.health = Health(frozenset(up), {**self.base.real_states, ("XMPP", real): state})


def make(extra: str = "", port_zero: bool = True) -> tuple[Config, World, Log, SrvPublisher]:
    cfg = config.loads(CONFIG.format(extra=extra))
    if port_zero:  # let the kernel pick: no clash with anything else on the machine
        assert cfg.srv is not None
        cfg = dataclasses.replace(cfg, srv=dataclasses.replace(
            cfg.srv, listen=Address("127.0.0.1", 0)))
    world, log = World(cfg), Log()
    return cfg, world, log, SrvPublisher(cfg, log, lambda: world.health)


async def srv_targets(publisher: SrvPublisher) -> set[str]:
    assert publisher.server is not None
    host, port = publisher.server.address
    q = dns.message.make_query("_xmpp-client._tcp.example.test", "SRV")
    response = await dns.asyncquery.udp(q, host, port=port, timeout=2)
    return {rd.target.to_text() for rrset in response.answer for rd in rrset}


async def test_a_failed_real_leaves_the_answers_at_once_and_is_logged_once() -> None:
    _cfg, world, log, publisher = make()
    await publisher.start()
    try:
        first = publisher.published.serial
        assert await srv_targets(publisher) == {"xmpp.example.test.",
                                                "real-10-0-0-1.example.test.",
                                                "real-10-0-0-2.example.test."}
        world.set("10.0.0.2", RealState.FAILED)
        assert publisher.refresh()
        assert publisher.published.serial == first + 1
        assert await srv_targets(publisher) == {"xmpp.example.test.",
                                                "real-10-0-0-1.example.test."}
        [changed] = log.events("srv_changed")
        assert changed["serial"] == first + 1
        assert changed["added"] == []
        assert sorted(changed["removed"]) == [
            "_xmpp-client._tcp.example.test. 30 IN SRV 20 8 5222 real-10-0-0-2.example.test.",
            "real-10-0-0-2.example.test. 30 IN A 10.0.0.2"]
        assert not publisher.refresh()  # nothing changed: no new serial, no log line
        assert publisher.published.serial == first + 1 and len(log.events("srv_changed")) == 1
    finally:
        await publisher.stop()


async def test_states_the_records_cannot_show_cause_no_rebuild() -> None:
    _cfg, world, log, publisher = make()
    await publisher.start()
    try:
        serial = publisher.published.serial
        for state in (RealState.MAXCONNS, RealState.TESTING, RealState.OPERATIONAL):
            world.set("10.0.0.1", state)
            assert not publisher.refresh()
        assert publisher.published.serial == serial and not log.events("srv_changed")
    finally:
        await publisher.stop()


async def test_changed_coalesces_into_one_rebuild_per_loop_turn() -> None:
    _cfg, world, log, publisher = make()
    calls = 0
    health = publisher.health

    def counting() -> Health:
        nonlocal calls
        calls += 1
        return health()

    publisher.health = counting
    await publisher.start()
    try:
        calls = 0
        world.set("10.0.0.1", RealState.PROBE_FAILED)
        for _ in range(100):
            publisher.changed()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert calls == 1
        assert len(log.events("srv_changed")) == 1
    finally:
        await publisher.stop()
    publisher.changed()  # after stop: nothing is scheduled, nothing raises


async def test_the_vserver_going_down_removes_the_gateway_target() -> None:
    _cfg, world, _log, publisher = make()
    await publisher.start()
    try:
        world.set("10.0.0.1", RealState.OPERATIONAL, up=())
        assert publisher.refresh()
        assert await srv_targets(publisher) == {"real-10-0-0-1.example.test.",
                                                "real-10-0-0-2.example.test."}
    finally:
        await publisher.stop()


class FakeSender:
    made: ClassVar[list[FakeSender]] = []

    def __init__(self, cfg: Any, zones: tuple[str, ...], log: Any) -> None:
        self.zones = zones
        self.published: list[list[str]] = []
        self.stopped = False
        FakeSender.made.append(self)

    async def start(self) -> None:
        pass

    def publish(self, rrsets: Sequence[dns.rrset.RRset]) -> None:
        self.published.append(sorted(r.to_text() for r in rrsets))

    async def stop(self) -> None:
        self.stopped = True


async def test_the_update_sender_gets_every_new_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rfc2136, "UpdateSender", FakeSender)
    FakeSender.made.clear()
    _cfg, world, _log, publisher = make('[srv.update]\nserver = "127.0.0.1:5300"\n')
    await publisher.start()
    [sender] = FakeSender.made
    assert sender.zones == ("example.test",)
    assert len(sender.published) == 1
    assert not any(" SOA " in text or " NS " in text for text in sender.published[0])
    world.set("10.0.0.1", RealState.FAILED)
    publisher.refresh()
    assert len(sender.published) == 2
    assert not any("10-0-0-1" in text for text in sender.published[1])
    await publisher.stop()
    assert sender.stopped


async def test_a_port_in_use_is_an_oserror_naming_the_address() -> None:
    _cfg, _world, _log, first = make()
    await first.start()
    try:
        assert first.server is not None
        host, port = first.server.address
        cfg = config.loads(CONFIG.format(extra="").replace("127.0.0.1:5353", f"{host}:{port}"))
        second = SrvPublisher(cfg, Log(), lambda: Health.from_config(cfg))
        with pytest.raises(OSError, match=f"cannot listen on {host}:{port}"):
            await second.start()
        await second.stop()
    finally:
        await first.stop()


async def test_the_timer_catches_changes_no_engine_event_announced() -> None:
    """A retry running out or another worker's FAILED mark calls no `changed()`."""
    _cfg, world, log, publisher = make()
    await publisher.start()
    try:
        world.set("10.0.0.2", RealState.FAILED)
        for _ in range(100):  # the timer runs every second; allow a busy machine 10
            if log.events("srv_changed"):
                break
            await asyncio.sleep(0.1)
        assert log.events("srv_changed")
    finally:
        await publisher.stop()


# --- reload ------------------------------------------------------------------------------------


def with_listen(cfg: Config, host: str, port: int) -> Config:
    assert cfg.srv is not None
    return dataclasses.replace(cfg, srv=dataclasses.replace(cfg.srv, listen=Address(host, port)))


async def test_reload_publishes_new_reals_and_ttl_at_once_on_the_same_socket() -> None:
    cfg, _world, log, publisher = make()
    await publisher.start()
    try:
        assert publisher.server is not None
        server, serial = publisher.server, publisher.published.serial
        text = CONFIG.format(extra="ttl = 5").replace(
            '[srv]', '[[serverfarm.real]]\naddress = "10.0.0.3"\n\n[srv]')
        new = with_listen(config.loads(text), "127.0.0.1", 0)
        new = dataclasses.replace(new, srv=dataclasses.replace(new.srv, listen=cfg.srv.listen))
        await publisher.reload(new)
        assert publisher.server is server  # same listen: not rebound
        assert publisher.published.serial == serial + 1
        assert "real-10-0-0-3.example.test." in await srv_targets(publisher)
        assert all(r.ttl == 5 for r in publisher.published.rrsets())
        assert len(log.events("srv_changed")) == 1
    finally:
        await publisher.stop()


async def test_reload_moves_the_listener_or_keeps_the_old_one_if_it_cannot() -> None:
    cfg, _world, log, publisher = make()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    await publisher.start()
    try:
        assert publisher.server is not None
        old_address = publisher.server.address
        await publisher.reload(with_listen(cfg, *blocker.getsockname()))
        [failed] = log.events("srv_listen_failed")
        assert failed["kept"] == "127.0.0.1:0"
        assert publisher.server.address == old_address
        assert "real-10-0-0-1.example.test." in await srv_targets(publisher)
        await publisher.reload(with_listen(cfg, "127.0.0.2", 0))
        assert publisher.server is not None and publisher.server.address[0] == "127.0.0.2"
        assert "real-10-0-0-1.example.test." in await srv_targets(publisher)
        with pytest.raises((dns.exception.Timeout, ConnectionRefusedError)):  # closed
            await dns.asyncquery.udp(dns.message.make_query("example.test", "SOA"),
                                     old_address[0], port=old_address[1], timeout=0.5)
    finally:
        blocker.close()
        await publisher.stop()


async def test_reload_without_srv_stops_publishing_and_with_it_starts_again() -> None:
    cfg, _world, log, publisher = make()
    await publisher.start()
    await publisher.reload(dataclasses.replace(cfg, srv=None))
    assert publisher.server is None and log.events("srv_stopped")
    publisher.changed()  # harmless while stopped
    await publisher.reload(cfg)
    try:
        assert publisher.server is not None
        assert "xmpp.example.test." in await srv_targets(publisher)
    finally:
        await publisher.stop()
