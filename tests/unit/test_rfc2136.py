"""RFC 2136 updates: the planner's timelines on a fake clock (first replace, diffs, coalescing,
backoff, one update in flight), the update messages, the TSIG key file reader, and the
sender's asyncio shell with a fake transport (no network, no wall-clock assertions)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import pytest

from xmppgw.config import Address, SrvUpdate
from xmppgw.dns.rfc2136 import (
    KeyFileError,
    TsigKey,
    UpdatePlanner,
    UpdateSender,
    load_key_file,
    parse_key_file,
)

ZONE = "example.test"
CLIENT = "_xmpp-client._tcp.example.test."
SECRET = "k+yEVbQdLkx/z6Gor2xB0zCJvXbfh2m/sB4iEUVsoEk="
KEYGEN_OUTPUT = f'key "xmppgw-update" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'


def srv(*targets: str, name: str = CLIENT, ttl: int = 30) -> dns.rrset.RRset:
    """An SRV RRset: the gateway at priority 10, then each target at 20."""
    rdatas = [f"{10 if i == 0 else 20} 0 5222 {t}." for i, t in enumerate(targets)]
    return dns.rrset.from_text(name, ttl, "IN", "SRV", *rdatas)


def a(name: str, *addresses: str, ttl: int = 30) -> dns.rrset.RRset:
    return dns.rrset.from_text(name, ttl, "IN", "A", *addresses)


GW = "xmpp.example.test"
R1, R2 = "real-127-0-2-1.example.test", "real-127-0-2-2.example.test"
ALL_UP = [srv(GW, R1, R2), a(GW + ".", "127.0.1.30"), a(R1 + ".", "127.0.2.1"),
          a(R2 + ".", "127.0.2.2")]
R2_DOWN = [srv(GW, R1), a(GW + ".", "127.0.1.30"), a(R1 + ".", "127.0.2.1")]


def planner(coalesce: float = 1.0, retry_min: float = 1.0, retry_max: float = 8.0,
            zones: tuple[str, ...] = (ZONE,)) -> UpdatePlanner:
    return UpdatePlanner(zones, coalesce, retry_min, retry_max)


def keys(rrsets: Any) -> set[tuple[str, str]]:
    return {(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in rrsets}


def synced(p: UpdatePlanner, rrsets: list[dns.rrset.RRset], now: float = 0.0) -> float:
    """Publish, send and acknowledge: the primary holds `rrsets`. Returns the time after."""
    p.publish(rrsets, now)
    now += p.coalesce
    (update,) = p.take_due(now)
    p.acknowledged(update, now)
    return now


# --- first update, later diffs ---------------------------------------------------------------


def test_first_update_replaces_every_rrset_we_publish_after_the_window() -> None:
    p = planner(coalesce=1.0)
    assert p.publish(ALL_UP, 0.0) == []
    assert p.next_wakeup() == 1.0
    assert p.take_due(0.99) == []
    (update,) = p.take_due(1.0)
    assert update.first
    assert keys(update.replace) == keys(ALL_UP)
    assert update.delete == ()
    assert update.records == 6


def test_later_updates_carry_only_what_changed() -> None:
    p = planner()
    now = synced(p, ALL_UP)
    p.publish(R2_DOWN, now)
    (update,) = p.take_due(now + 1.0)
    assert not update.first
    assert keys(update.replace) == {(CLIENT, "SRV")}
    assert [(n.to_text(), dns.rdatatype.to_text(t)) for n, t in update.delete] == [
        (R2 + ".", "A")]


def test_an_unchanged_set_sends_nothing() -> None:
    p = planner()
    now = synced(p, ALL_UP)
    p.publish(list(reversed(ALL_UP)), now)
    assert p.next_wakeup() is None
    assert p.take_due(now + 10) == []
    assert p.idle()


def test_a_ttl_change_alone_is_sent() -> None:
    """dnspython's RRset equality ignores the TTL; the planner must not."""
    p = planner()
    now = synced(p, ALL_UP)
    p.publish([srv(GW, R1, R2, ttl=60), *ALL_UP[1:]], now)
    (update,) = p.take_due(now + 1.0)
    assert keys(update.replace) == {(CLIENT, "SRV")}
    assert update.replace[0].ttl == 60


def test_an_empty_set_deletes_everything_acknowledged() -> None:
    p = planner()
    now = synced(p, ALL_UP)
    p.publish([], now)
    (update,) = p.take_due(now + 1.0)
    assert update.replace == ()
    assert len(update.delete) == 4


def test_nothing_to_send_before_anything_is_published() -> None:
    p = planner()
    assert p.next_wakeup() is None
    assert p.take_due(100.0) == []
    p.publish([], 0.0)  # nothing wanted, nothing known: nothing to delete either
    assert p.take_due(100.0) == []


# --- coalescing --------------------------------------------------------------------------------


def test_changes_within_the_window_go_in_one_update() -> None:
    p = planner(coalesce=2.0)
    now = synced(p, ALL_UP)
    p.publish(R2_DOWN, 10.0)             # opens the window: due at 12
    p.publish([srv(GW), *R2_DOWN[1:2]], 11.5)  # R1 goes too, inside the window
    assert p.next_wakeup() == 12.0       # the window does not slide
    assert p.take_due(11.9) == []
    (update,) = p.take_due(12.0)
    assert update.replace[0] == srv(GW)
    assert len(update.delete) == 2       # both reals' A records
    assert now < 10.0


def test_a_flap_within_the_window_sends_nothing() -> None:
    p = planner(coalesce=1.0)
    now = synced(p, ALL_UP)
    p.publish(R2_DOWN, now + 5.0)        # down ...
    assert p.next_wakeup() == now + 6.0
    p.publish(ALL_UP, now + 5.5)         # ... and up again inside the window
    assert p.next_wakeup() is None
    assert p.take_due(now + 6.0) == []
    p.publish(R2_DOWN, now + 7.0)        # a later change opens a new window
    assert p.next_wakeup() == now + 8.0


def test_changes_that_cancel_out_by_the_end_of_the_window_send_nothing() -> None:
    p = planner(coalesce=1.0)
    now = synced(p, ALL_UP)
    p.publish(R2_DOWN, now)
    p.publish([*R2_DOWN, a("extra.example.test.", "10.0.0.1")], now + 0.2)
    p.publish(ALL_UP, now + 0.4)
    assert p.take_due(now + 1.0) == []
    assert p.idle()


def test_zero_coalesce_sends_at_once() -> None:
    p = planner(coalesce=0.0)
    p.publish(ALL_UP, 3.0)
    assert p.next_wakeup() == 3.0
    assert len(p.take_due(3.0)) == 1


# --- one update in flight per zone -------------------------------------------------------------


def test_changes_while_an_update_is_in_flight_wait_for_it() -> None:
    p = planner(coalesce=1.0)
    p.publish(ALL_UP, 0.0)
    (first,) = p.take_due(1.0)
    p.publish(R2_DOWN, 1.2)              # while `first` is on its way
    assert p.take_due(5.0) == []         # never two at once for a zone
    assert p.next_wakeup() is None       # nothing until `first` ends
    p.acknowledged(first, 1.5)
    assert p.next_wakeup() == 2.2        # the window opened at 1.2, at the change
    (second,) = p.take_due(2.2)
    assert keys(second.replace) == {(CLIENT, "SRV")}


def test_a_change_undone_while_in_flight_sends_nothing_after() -> None:
    p = planner()
    p.publish(ALL_UP, 0.0)
    (first,) = p.take_due(1.0)
    p.publish(R2_DOWN, 1.1)
    p.publish(ALL_UP, 1.2)               # back to what `first` carries
    p.acknowledged(first, 1.3)
    assert p.next_wakeup() is None
    assert p.idle()


def test_only_the_update_in_flight_can_be_reported() -> None:
    p = planner()
    p.publish(ALL_UP, 0.0)
    (update,) = p.take_due(1.0)
    p.acknowledged(update, 1.1)
    with pytest.raises(ValueError, match="not the one in flight"):
        p.acknowledged(update, 1.2)


# --- backoff -----------------------------------------------------------------------------------


def test_failures_back_off_doubling_to_retry_max_and_a_success_resets() -> None:
    p = planner(coalesce=0.5, retry_min=1.0, retry_max=8.0)
    p.publish(ALL_UP, 0.0)
    now, delays = 0.5, []
    for _ in range(6):
        (update,) = p.take_due(now)
        delays.append(p.failed(update, now))
        assert p.take_due(now + delays[-1] - 0.01) == []
        now = p.next_wakeup()
        assert now is not None
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert p.failures(ZONE) == 6
    (update,) = p.take_due(now)
    assert update.first                  # still never acknowledged: still a full replace
    p.acknowledged(update, now)
    assert p.failures(ZONE) == 0
    p.publish(R2_DOWN, now + 1)          # a fresh change: the window, no backoff
    assert p.next_wakeup() == now + 1.5


def test_a_retry_carries_the_latest_desired_set() -> None:
    p = planner(coalesce=1.0, retry_min=2.0)
    now = synced(p, ALL_UP)
    p.publish(R2_DOWN, now)
    (update,) = p.take_due(now + 1)
    p.failed(update, now + 1)
    p.publish([srv(GW), *R2_DOWN[1:2]], now + 1.5)  # R1 down as well, during the backoff
    assert p.next_wakeup() == now + 3                # the backoff, not a new window
    (retry,) = p.take_due(now + 3)
    assert retry.replace[0] == srv(GW)
    assert len(retry.delete) == 2


def test_rrsets_of_a_failed_update_are_sent_again_even_when_back_to_acknowledged() -> None:
    """A timed-out update may have been applied: what it touched is unknown, so resent."""
    p = planner(coalesce=1.0, retry_min=1.0)
    now = synced(p, ALL_UP)
    p.publish(R2_DOWN, now)
    (update,) = p.take_due(now + 1)
    p.failed(update, now + 1)
    p.publish(ALL_UP, now + 1.5)         # R2 is back: equal to the acknowledged set
    (retry,) = p.take_due(now + 2)
    assert keys(retry.replace) == {(CLIENT, "SRV"), (R2 + ".", "A")}
    p.acknowledged(retry, now + 2)
    assert p.idle()


def test_a_failed_delete_is_retried_as_a_delete() -> None:
    p = planner(coalesce=0.0)
    now = synced(p, ALL_UP)
    p.publish([], now)
    (update,) = p.take_due(now)
    p.failed(update, now)
    (retry,) = p.take_due(now + 1)
    assert retry.replace == () and len(retry.delete) == 4


def test_expedite_skips_the_window_and_the_backoff() -> None:
    p = planner(coalesce=10.0, retry_min=30.0, retry_max=60.0)
    p.publish(ALL_UP, 0.0)
    p.expedite(1.0)
    (update,) = p.take_due(1.0)
    p.failed(update, 1.0)
    assert p.next_wakeup() == 31.0
    p.expedite(2.0)
    assert len(p.take_due(2.0)) == 1
    assert p.unsent() == ["example.test"]


# --- zones -------------------------------------------------------------------------------------


def test_each_zone_gets_its_own_update_and_its_own_backoff() -> None:
    p = planner(coalesce=0.0, zones=("example.test", "other.test"))
    other = srv("xmpp.other.test", name="_xmpp-client._tcp.other.test.")
    p.publish([*ALL_UP, other], 0.0)
    updates = {u.zone.to_text(): u for u in p.take_due(0.0)}
    assert set(updates) == {"example.test.", "other.test."}
    assert keys(updates["other.test."].replace) == keys([other])
    p.failed(updates["other.test."], 0.0)          # other.test's primary refuses
    p.acknowledged(updates["example.test."], 0.0)
    p.publish([*R2_DOWN, other], 0.1)
    assert [u.zone.to_text() for u in p.take_due(0.1)] == ["example.test."]


def test_a_name_goes_to_the_most_specific_zone() -> None:
    p = planner(coalesce=0.0, zones=("example.test", "muc.example.test"))
    muc = srv("xmpp.example.test", name="_xmpp-server._tcp.muc.example.test.")
    p.publish([muc, *ALL_UP], 0.0)
    zones = {u.zone.to_text(): keys(u.replace) for u in p.take_due(0.0)}
    assert zones["muc.example.test."] == keys([muc])
    assert keys([muc]) & zones["example.test."] == set()


def test_names_outside_the_zones_and_soa_ns_are_ignored_and_reported() -> None:
    p = planner(coalesce=0.0)
    soa = dns.rrset.from_text("example.test.", 30, "IN", "SOA", "ns. h. 1 2 3 4 5")
    ns = dns.rrset.from_text("example.test.", 30, "IN", "NS", "ns.example.test.")
    ignored = p.publish([*ALL_UP, a("xmpp.elsewhere.test.", "10.0.0.1"), soa, ns], 0.0)
    assert ignored == ["xmpp.elsewhere.test. A: not under any zone",
                       "example.test. SOA: not ours to publish",
                       "example.test. NS: not ours to publish"]
    (update,) = p.take_due(0.0)
    assert keys(update.replace) == keys(ALL_UP)


def test_two_rrsets_for_one_name_and_type_are_merged() -> None:
    p = planner(coalesce=0.0)
    p.publish([a(GW + ".", "127.0.1.30"), a(GW + ".", "127.0.1.31")], 0.0)
    (update,) = p.take_due(0.0)
    assert sorted(r.to_text() for r in update.replace[0]) == ["127.0.1.30", "127.0.1.31"]


# --- messages ----------------------------------------------------------------------------------


def test_the_message_deletes_and_adds_each_rrset_and_deletes_the_gone_ones() -> None:
    p = planner(coalesce=0.0)
    now = synced(p, ALL_UP)
    p.publish(R2_DOWN, now)
    (update,) = p.take_due(now)
    msg = update.message()
    assert msg.zone[0].name == dns.name.from_text(ZONE)
    update_section = msg.to_text().split(";UPDATE\n")[1].split(";ADDITIONAL")[0]
    assert update_section.splitlines() == [
        f"{CLIENT} ANY SRV",                            # delete the RRset ...
        f"{CLIENT} 30 IN SRV 10 0 5222 {GW}.",          # ... add it back as it should be
        f"{CLIENT} 30 IN SRV 20 0 5222 {R1}.",
        f"{R2}. ANY A",                                  # the gone real's address
    ]
    assert msg.prerequisite == []


def test_the_message_is_signed_with_the_key() -> None:
    key = parse_key_file(KEYGEN_OUTPUT)
    p = planner(coalesce=0.0)
    p.publish(ALL_UP, 0.0)
    (update,) = p.take_due(0.0)
    wire = update.message(key).to_wire()
    back = dns.message.from_wire(wire, keyring=key.to_dnspython())
    assert back.had_tsig
    assert back.keyname == dns.name.from_text("xmppgw-update")
    assert back.keyalgorithm == dns.tsig.HMAC_SHA256


# --- key files ---------------------------------------------------------------------------------


def test_key_file_as_tsig_keygen_writes_it() -> None:
    key = parse_key_file(KEYGEN_OUTPUT)
    assert (key.name, key.algorithm, len(key.secret)) == ("xmppgw-update", "hmac-sha256", 32)
    assert SECRET not in repr(key) and "secret" not in repr(key)


@pytest.mark.skipif(shutil.which("tsig-keygen") is None, reason="bind9-utils not installed")
@pytest.mark.parametrize("algorithm", ["hmac-sha256", "hmac-sha512", "hmac-md5"])
def test_key_file_from_the_real_tsig_keygen(tmp_path: Path, algorithm: str) -> None:
    out = subprocess.run(["tsig-keygen", "-a", algorithm, "ddns.key"], capture_output=True,
                         text=True, check=True).stdout
    (tmp_path / "k").write_text(out)
    key = load_key_file(tmp_path / "k")
    assert (key.name, key.algorithm) == ("ddns.key", algorithm)
    assert key.to_dnspython().algorithm.to_text().lower().startswith(algorithm)


def test_key_file_with_comments_unquoted_name_and_one_line() -> None:
    text = f"""# made by hand
// for the gateway
/* a block
   comment */ key gw.example {{ algorithm "HMAC-SHA512"; secret "{SECRET}"; }};
"""
    key = parse_key_file(text)
    assert (key.name, key.algorithm) == ("gw.example", "hmac-sha512")


def test_key_file_clauses_in_any_order() -> None:
    key = parse_key_file(f'key "k" {{ secret "{SECRET}"; algorithm hmac-sha1; }};')
    assert key.algorithm == "hmac-sha1"


@pytest.mark.parametrize(("text", "message"), [
    ("", ("k.key: no key statement (expected key \"name\" { algorithm hmac-sha256; "
         "secret \"...\"; }; as tsig-keygen writes it)")),
    ("# only a comment\n", "k.key: no key statement"),
    ('options { directory "/tmp"; };', ("k.key:1: expected a key statement "
                                        "(key \"name\" { ... };), found 'options'")),
    ('key "k" {\n algorithm hmac-sha256;\n};', "k.key:1: key 'k' has no secret clause"),
    (f'key "k" {{\n secret "{SECRET}";\n}};', "k.key:1: key 'k' has no algorithm clause"),
    (f'key "k" {{\n algorithm hmac-sha3;\n secret "{SECRET}";\n}};',
     ("k.key:2: key 'k': unknown algorithm 'hmac-sha3' (known: hmac-md5, hmac-sha1, "
     "hmac-sha224, hmac-sha256, hmac-sha384, hmac-sha512)")),
    ('key "k" {\n algorithm hmac-sha256;\n secret "not*base64";\n};',
     "k.key:3: key 'k': the secret is not base64 (as tsig-keygen writes it)"),
    (f'key "k" {{\n algorithm hmac-sha256\n secret "{SECRET}";\n}};',
     "k.key:3: expected ';' after algorithm 'hmac-sha256', found 'secret'"),
    (f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }}',
     "k.key:1: expected ';' after the '}' of key 'k', found the end of the file"),
    (f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}";',
     "k.key:1: expected '}' to close key 'k', found the end of the file"),
    (f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; port 53; }};',
     "k.key:1: unknown clause 'port' in key 'k' (known: algorithm, secret)"),
    ('key "k" { secret "abc', "k.key:1: unterminated string"),
    ('# a key\n/* key "k" {', "k.key:2: unterminated comment"),
    ((f'key "a" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n'
     f'key "b" {{ algorithm hmac-sha256; secret "{SECRET}"; }};'),
     ("k.key: holds 2 keys: 'a' (line 1), 'b' (line 2); give a file with the one key for "
     "updates")),
    ('key { algorithm hmac-sha256; };', ("k.key:1: expected the key's name after 'key', "
                                        "found '{'")),
])
def test_key_file_faults_say_where_and_what(text: str, message: str) -> None:
    with pytest.raises(KeyFileError) as info:
        parse_key_file(text, "k.key")
    assert str(info.value).startswith(message)


def test_a_bad_secret_is_never_echoed() -> None:
    secret = "hunter2-is-not-base64!"
    with pytest.raises(KeyFileError) as info:
        parse_key_file(f'key "k" {{ algorithm hmac-sha256; secret "{secret}"; }};')
    assert secret not in str(info.value)


def test_an_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"/missing\.key: cannot read: No such file"):
        load_key_file(tmp_path / "missing.key")


# --- the sender (asyncio, fake transport) ------------------------------------------------------


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


class FakePrimary:
    """Answers each update with the next rcode of `script` (then NOERROR); an exception in
    the script is raised instead, as the transport would."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.received: list[dns.message.Message] = []
        self.arrived = asyncio.Event()

    async def __call__(self, message: Any, host: str, port: int,
                       timeout: float) -> dns.message.Message:
        assert (host, port) == ("127.0.4.54", 53)
        self.received.append(message)
        self.arrived.set()
        step = self.script.pop(0) if self.script else dns.rcode.NOERROR
        if isinstance(step, BaseException):
            raise step
        if step == "hang":
            await asyncio.Event().wait()
        response = dns.message.make_response(message)
        response.set_rcode(step)
        return response


def sender(primary: FakePrimary, log: RecordingLog, key_file: str | None = None,
           **update: float) -> UpdateSender:
    config = SrvUpdate(Address("127.0.4.54", 53), key_file,
                       **{"coalesce": 0.0, "retry_min": 0.01, "retry_max": 0.02, **update})
    return UpdateSender(config, (ZONE,), log, send=primary)


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_sender_sends_and_logs_srv_updated(tmp_path: Path) -> None:
    (tmp_path / "k").write_text(KEYGEN_OUTPUT)
    primary, log = FakePrimary(), RecordingLog()
    s = sender(primary, log, key_file=str(tmp_path / "k"))
    s.publish(ALL_UP)                      # before start: kept, sent once started
    await s.start()
    await wait_for(lambda: log.lines, "a log line")
    await s.stop()
    assert log.lines == [("info", "srv_updated", {
        "zone": "example.test", "server": "127.0.4.54:53", "rrsets": 4, "records": 6,
        "deleted": 0, "first": True})]
    assert primary.received[0].keyname == dns.name.from_text("xmppgw-update")


async def test_sender_retries_refusals_and_timeouts_then_succeeds() -> None:
    primary, log = FakePrimary(dns.rcode.REFUSED, dns.rcode.NOTAUTH,
                               dns.exception.Timeout(), ConnectionRefusedError(111, "refused")), RecordingLog()
    s = sender(primary, log)
    await s.start()
    s.publish(ALL_UP)
    await wait_for(lambda: "srv_updated" in log.events(), "srv_updated")
    await s.stop()
    failures = [kw for level, event, kw in log.lines if event == "srv_update_failed"]
    assert [f.get("rcode") or f.get("reason") for f in failures] == [
        "REFUSED", "NOTAUTH", "timeout", "ConnectionRefusedError: refused"]
    assert [f["retry_in"] for f in failures] == [0.01, 0.02, 0.02, 0.02]
    assert [f["failures"] for f in failures] == [1, 2, 3, 4]
    assert all(level == "warning" for level, event, _ in log.lines if event != "srv_updated")
    assert len(primary.received) == 5


async def test_sender_stop_cancels_an_update_in_flight_after_the_grace() -> None:
    primary, log = FakePrimary("hang"), RecordingLog()
    s = sender(primary, log)
    await s.start()
    s.publish(ALL_UP)
    await asyncio.wait_for(primary.arrived.wait(), 5)
    await asyncio.wait_for(s.stop(grace=0.05), 5)
    assert log.lines == [("warning", "srv_update_unsent",
                          {"server": "127.0.4.54:53", "zones": ["example.test"]})]


async def test_sender_stop_sends_what_waits_in_the_window_first() -> None:
    """A graceful gateway stop withdraws its own targets just before stopping the sender:
    that last set must not die in the coalescing window."""
    primary, log = FakePrimary(), RecordingLog()
    s = sender(primary, log, coalesce=3600.0)
    await s.start()
    s.publish(ALL_UP)
    await asyncio.wait_for(s.stop(), 5)
    assert len(primary.received) == 1
    assert log.events() == ["srv_updated"]


async def test_sender_stop_without_grace_sends_nothing() -> None:
    primary, log = FakePrimary(), RecordingLog()
    s = sender(primary, log, coalesce=3600.0)
    await s.start()
    s.publish(ALL_UP)
    await s.stop(grace=0)
    assert primary.received == []
    assert log.events() == ["srv_update_unsent"]


async def test_sender_with_a_bad_key_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "k").write_text('key "k" { algorithm hmac-sha256; };')
    s = sender(FakePrimary(), RecordingLog(), key_file=str(tmp_path / "k"))
    with pytest.raises(KeyFileError, match="has no secret clause"):
        await s.start()
    await s.stop()


def test_tsig_key_builds_a_dnspython_key() -> None:
    key = TsigKey("k", "hmac-md5", b"0123456789abcdef")
    assert key.to_dnspython().algorithm == dns.tsig.HMAC_MD5
