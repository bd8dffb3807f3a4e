"""The SRV records published from the config and live health: pure data, every rule.

The first test is the issue's own example: the seed config plus `[srv] listen` only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest

from xmppgw import config
from xmppgw.config import Config
from xmppgw.dns.records import Health, Published, build, services_of
from xmppgw.slb.farm import RealState

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "data" / "seed-config.toml"  # the seed article's config, as written
SRV_LISTEN = '\n[srv]\nlisten = "127.0.0.1:5353"\n'
REALS = ("213.134.162.162", "213.134.162.163", "213.134.162.164")
SPARE = "213.134.162.165"


def seed() -> Config:
    return config.loads(SEED.read_text() + SRV_LISTEN, "seed+srv.toml")


def records(published: Published, name: str, rdtype: str) -> set[str]:
    """The record texts at `name` (absolute, no final dot) of `rdtype`, empty if none."""
    owner = dns.name.from_text(name)
    zone = published.zone_for(owner)
    assert zone is not None, f"{name} is in no zone"
    rrset = zone.find(owner, dns.rdatatype.from_text(rdtype))
    return set() if rrset is None else {rd.to_text() for rd in rrset}


def srv(published: Published, service: str, zone: str = "example.test") -> set[str]:
    return records(published, f"{service}.{zone}", "SRV")


def states(**by_real: RealState) -> dict[tuple[str, str], RealState]:
    """{"r162": FAILED} -> the seed farm's real 213.134.162.162 FAILED."""
    return {("XMPP", f"213.134.162.{key[1:]}"): state for key, state in by_real.items()}


def health(cfg: Config, up: tuple[str, ...] | None = None,
           **by_real: RealState) -> Health:
    base = Health.from_config(cfg)
    return Health(frozenset(up) if up is not None else base.vservers_up,
                  {**base.real_states, **states(**by_real)})


def minimal(vservers: str, srv_extra: str = "", reals: str = "") -> Config:
    """One farm F (reals 10.0.0.1, 10.0.0.2 unless `reals`), the given vservers, [srv]."""
    reals = reals or '[[serverfarm.real]]\naddress = "10.0.0.1"\n' \
                     '[[serverfarm.real]]\naddress = "10.0.0.2"\nweight = 3\n'
    text = f"""[gateway]
domains = ["example.test"]
{vservers}
[[serverfarm]]
name = "F"
{reals}
[srv]
listen = "127.0.0.1:5353"
{srv_extra}"""
    return config.loads(text, "test.toml")


def vserver(name: str, virtual: str, extra: str = "") -> str:
    return f'[[vserver]]\nname = "{name}"\nvirtual = "{virtual}"\nserverfarm = "F"\n{extra}\n'


# --- the example -------------------------------------------------------------------


def test_seed_with_only_listen_added_publishes_the_gateway_first_then_the_reals() -> None:
    cfg = seed()
    published = build(cfg, Health.from_config(cfg), 7)
    for service, port in (("_xmpp-client._tcp", 5222), ("_xmpps-client._tcp", 5223),
                          ("_xmpp-server._tcp", 5269)):
        assert srv(published, service) == {f"10 1 {port} xmpp.example.test."} | {
            f"20 5 {port} real-{r.replace('.', '-')}.example.test." for r in REALS}
    assert records(published, "xmpp.example.test", "A") == {"213.134.161.161"}
    for real in REALS:
        assert records(published, f"real-{real.replace('.', '-')}.example.test", "A") == {real}
    # the spare (inservice = false) is not published, and no A names it
    assert not any(SPARE in line for line in published.content())
    # no vserver is direct TLS s2s: the name exists with no records (NODATA, not NXDOMAIN)
    zone = published.zone_for(dns.name.from_text("example.test"))
    assert zone is not None
    assert srv(published, "_xmpps-server._tcp") == set()
    assert zone.exists(dns.name.from_text("_xmpps-server._tcp.example.test"))
    assert zone.exists(dns.name.from_text("_tcp.example.test"))  # an empty non-terminal
    assert not zone.exists(dns.name.from_text("www.example.test"))


def test_apex_has_soa_with_the_serial_and_ns_with_the_listen_address() -> None:
    cfg = seed()
    published = build(cfg, Health.from_config(cfg), 1234)
    assert records(published, "example.test", "SOA") == {
        "ns.example.test. hostmaster.example.test. 1234 3600 600 604800 30"}
    assert records(published, "example.test", "NS") == {"ns.example.test."}
    assert records(published, "ns.example.test", "A") == {"127.0.0.1"}
    assert build(cfg, Health.from_config(cfg), 2**32 + 5).serial == 5  # 32-bit serial


# --- live health ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", [RealState.FAILED, RealState.PROBE_FAILED,
                                   RealState.OUTOFSERVICE])
def test_a_real_that_cannot_take_connections_disappears(state: RealState) -> None:
    cfg = seed()
    published = build(cfg, health(cfg, r163=state), 1)
    assert srv(published, "_xmpp-client._tcp") == {
        "10 1 5222 xmpp.example.test.", "20 5 5222 real-213-134-162-162.example.test.",
        "20 5 5222 real-213-134-162-164.example.test."}
    assert not any("213-134-162-163" in line or "213.134.162.163" in line
                   for line in published.content())


@pytest.mark.parametrize("state", [RealState.TESTING, RealState.MAXCONNS,
                                   RealState.OPERATIONAL])
def test_a_real_that_can_take_connections_stays(state: RealState) -> None:
    cfg = seed()
    published = build(cfg, health(cfg, r163=state), 1)
    assert "20 5 5222 real-213-134-162-163.example.test." in srv(published, "_xmpp-client._tcp")


def test_the_spare_put_in_service_at_run_time_is_published() -> None:
    cfg = seed()
    published = build(cfg, health(cfg, r165=RealState.OPERATIONAL), 1)
    assert "20 5 5222 real-213-134-162-165.example.test." in srv(published, "_xmpp-client._tcp")


def test_a_vserver_down_publishes_no_gateway_target_but_keeps_its_reals() -> None:
    cfg = seed()
    published = build(cfg, health(cfg, up=("P5223", "P5269")), 1)
    assert srv(published, "_xmpp-client._tcp") == {
        f"20 5 5222 real-{r.replace('.', '-')}.example.test." for r in REALS}
    assert "10 1 5223 xmpp.example.test." in srv(published, "_xmpps-client._tcp")
    everything_down = build(cfg, health(cfg, up=(), r162=RealState.FAILED,
                                        r163=RealState.FAILED, r164=RealState.FAILED), 1)
    assert srv(everything_down, "_xmpp-client._tcp") == set()  # NODATA, never "."
    assert records(everything_down, "xmpp.example.test", "A") == set()


def test_visible_health_ignores_what_the_records_cannot_show() -> None:
    cfg = seed()
    assert health(cfg, r162=RealState.MAXCONNS).visible(cfg) == \
        health(cfg, r162=RealState.TESTING).visible(cfg)
    assert health(cfg, r162=RealState.FAILED).visible(cfg) != health(cfg).visible(cfg)


# --- which vserver feeds which service --------------------------------------------------------


@pytest.mark.parametrize(("extra", "expected"), [
    ('virtual_port = 5222', ("_xmpp-client._tcp",)),
    ('virtual_port = 5269', ("_xmpp-server._tcp",)),
    ('virtual_port = 5270\nmode = "directtls"', ("_xmpps-server._tcp",)),
    ('virtual_port = 5223\nmode = "directtls"', ("_xmpps-client._tcp",)),
    ('virtual_port = 5222\nkinds = ["s2s"]', ("_xmpp-server._tcp",)),
    ('virtual_port = 443\nmode = "directtls"\nkinds = ["c2s", "component"]',
     ("_xmpps-client._tcp",)),
    ('virtual_port = 443\nmode = "directtls"', ("_xmpps-client._tcp", "_xmpps-server._tcp")),
    ('virtual_port = 5347\nkinds = ["component"]', ()),
    ('virtual_port = 5222\nsrv = ["_xmpp-client._tcp", "_xmpp-server._tcp"]',
     ("_xmpp-client._tcp", "_xmpp-server._tcp")),
])
def test_services_of_a_vserver(extra: str, expected: tuple[str, ...]) -> None:
    port_line, _, rest = extra.partition("\n")
    port = port_line.split("=")[1].strip()
    cfg = minimal(vserver("V", f"192.0.2.1:{port}", rest))
    assert services_of(cfg.vservers[0]) == expected


def test_a_both_vserver_is_published_for_starttls_and_direct_tls() -> None:
    """`mode = "both"` serves both on one port: `_xmpp-` and `_xmpps-`, the gateway on its
    port for each; the reals' direct-TLS records name their direct-TLS port."""
    cfg = minimal(vserver("BOTH", "192.0.2.1:5222", 'mode = "both"\nkinds = ["c2s"]'))
    assert services_of(cfg.vservers[0]) == ("_xmpp-client._tcp", "_xmpps-client._tcp")
    published = build(cfg, Health.from_config(cfg), 1)
    starttls, direct = srv(published, "_xmpp-client._tcp"), srv(published, "_xmpps-client._tcp")
    assert any(" 5222 xmpp." in r for r in direct)  # the gateway: one port for both
    assert {r.split()[2] for r in starttls if "real-" in r} == {"5222"}
    assert {r.split()[2] for r in direct if "real-" in r} == {"5223"}


def test_vservers_on_different_addresses_get_a_target_name_each() -> None:
    cfg = minimal(vserver("C2S", "192.0.2.1:5222") + vserver("S2S_main", "192.0.2.2:5269"))
    published = build(cfg, Health.from_config(cfg), 1)
    assert "10 1 5222 xmpp-c2s.example.test." in srv(published, "_xmpp-client._tcp")
    assert "10 1 5269 xmpp-s2s-main.example.test." in srv(published, "_xmpp-server._tcp")
    assert records(published, "xmpp-c2s.example.test", "A") == {"192.0.2.1"}
    assert records(published, "xmpp-s2s-main.example.test", "A") == {"192.0.2.2"}


def test_configured_addresses_replace_the_virtual_ones() -> None:
    cfg = minimal(vserver("C2S", "0.0.0.0:5222") + vserver("S2S", "[::]:5269"),
                  'addresses = ["198.51.100.7", "2001:db8::7"]\nns = ["ns1.example.test"]')
    published = build(cfg, Health.from_config(cfg), 1)
    assert records(published, "xmpp.example.test", "A") == {"198.51.100.7"}
    assert records(published, "xmpp.example.test", "AAAA") == {"2001:db8::7"}
    assert records(published, "example.test", "NS") == {"ns1.example.test."}
    assert records(published, "ns1.example.test", "A") == {"127.0.0.1"}


def test_a_wildcard_vserver_without_addresses_publishes_no_gateway_target() -> None:
    """No address to give for xmpp.example.test: an SRV naming it would lead nowhere."""
    cfg = minimal(vserver("C2S", "0.0.0.0:5222"))
    published = build(cfg, Health.from_config(cfg), 1)
    assert srv(published, "_xmpp-client._tcp") == {"20 8 5222 real-10-0-0-1.example.test.",
                                                   "20 3 5222 real-10-0-0-2.example.test."}


def test_an_absolute_target_outside_the_zones_is_named_and_left_to_the_operator() -> None:
    cfg = minimal(vserver("C2S", "192.0.2.1:5222"), 'target = "gw.example.net."')
    published = build(cfg, Health.from_config(cfg), 1)
    assert "10 1 5222 gw.example.net." in srv(published, "_xmpp-client._tcp")
    assert published.zone_for(dns.name.from_text("gw.example.net")) is None
    assert "gw.example.net. is outside these zones" in published.to_zone_text()


def test_standby_reals_come_after_the_others_and_publish_reals_off_hides_all() -> None:
    reals = ('[[serverfarm.real]]\naddress = "10.0.0.1"\n'
             '[[serverfarm.real]]\naddress = "10.0.0.9:15222"\nstandby = true\n')
    cfg = minimal(vserver("C2S", "192.0.2.1:5222"), reals=reals)
    assert srv(build(cfg, Health.from_config(cfg), 1), "_xmpp-client._tcp") == {
        "10 1 5222 xmpp.example.test.", "20 8 5222 real-10-0-0-1.example.test.",
        "21 8 15222 real-10-0-0-9.example.test."}  # the real's own port wins (nat server)
    off = minimal(vserver("C2S", "192.0.2.1:5222"), "publish_reals = false", reals)
    assert srv(build(off, Health.from_config(off), 1), "_xmpp-client._tcp") == {
        "10 1 5222 xmpp.example.test."}


def test_real_host_names_ipv6_reals_and_priorities_from_the_config() -> None:
    reals = ('[[serverfarm.real]]\naddress = "10.0.0.1"\n'
             '[[serverfarm.real]]\naddress = "2001:db8::5"\n')
    cfg = minimal(vserver("C2S", "192.0.2.1:5222"),
                  'gateway_priority = 0\nreal_priority = 5\nttl = 60\n'
                  '[srv.real_hosts]\n"10.0.0.1" = "node1.example.test"\n', reals)
    published = build(cfg, Health.from_config(cfg), 1)
    assert srv(published, "_xmpp-client._tcp") == {
        "0 1 5222 xmpp.example.test.", "5 8 5222 node1.example.test.",
        "5 8 5222 real-2001-db8--5.example.test."}
    assert records(published, "node1.example.test", "A") == {"10.0.0.1"}
    assert records(published, "real-2001-db8--5.example.test", "AAAA") == {"2001:db8::5"}
    assert all(r.ttl == 60 for r in published.rrsets())


def test_routes_decide_the_farm_per_kind_and_zone() -> None:
    text = f"""[gateway]
domains = ["example.test", "chat.test"]
{vserver("S2S", "192.0.2.1:5269")}
[[vserver.route]]
domain = "chat.test"
serverfarm = "CHAT"
[[serverfarm]]
name = "F"
[[serverfarm.real]]
address = "10.0.0.1"
[[serverfarm]]
name = "CHAT"
[[serverfarm.real]]
address = "10.0.1.1"
[srv]
listen = "127.0.0.1:53"
"""
    cfg = config.loads(text)
    published = build(cfg, Health.from_config(cfg), 1)
    assert srv(published, "_xmpp-server._tcp") == {"10 1 5269 xmpp.example.test.",
                                                    "20 8 5269 real-10-0-0-1.example.test."}
    assert srv(published, "_xmpp-server._tcp", "chat.test") == {
        "10 1 5269 xmpp.chat.test.", "20 8 5269 real-10-0-1-1.chat.test."}
    assert srv(published, "_xmpp-client._tcp", "chat.test") == set()


# --- what leaves the gateway ------------------------------------------------------------------


def test_update_rrsets_are_srv_and_their_targets_addresses_only() -> None:
    cfg = seed()
    update = build(cfg, Health.from_config(cfg), 1).update_rrsets()
    types = {dns.rdatatype.to_text(r.rdtype) for r in update}
    assert types == {"SRV", "A"}
    assert dns.name.from_text("ns.example.test") not in {r.name for r in update}


def test_zone_text_is_a_zone_file_with_every_record() -> None:
    cfg = seed()
    published = build(cfg, Health.from_config(cfg), 99)
    zone = dns.zone.from_text(published.to_zone_text("a test"), relativize=False)
    parsed = {line for name, _ttl, rdata in zone.iterate_rdatas()
              for line in [f"{name} {dns.rdatatype.to_text(rdata.rdtype)} {rdata}"]}
    expected = {f"{r.name} {dns.rdatatype.to_text(r.rdtype)} {rd}"
                for r in published.rrsets() for rd in r}
    assert parsed == expected


def test_xmppgw_zone_without_a_running_gateway_prints_the_config_set(tmp_path: Path) -> None:
    text = seed_text_with(f'control_socket = "{tmp_path / "none.sock"}"')
    path = tmp_path / "gw.toml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "xmppgw", "zone", "-c", str(path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "from the config (no gateway answered at" in result.stdout
    zone = dns.zone.from_text(result.stdout, relativize=False)
    rdataset = zone.find_rdataset("_xmpp-client._tcp.example.test.", "SRV")
    assert {rd.to_text() for rd in rdataset} == {"10 1 5222 xmpp.example.test."} | {
        f"20 5 5222 real-{r.replace('.', '-')}.example.test." for r in REALS}


def test_xmppgw_zone_needs_an_srv_section(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(seed_text_with("").replace(SRV_LISTEN, ""))
    result = subprocess.run([sys.executable, "-m", "xmppgw", "zone", "-c", str(path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)
    assert result.returncode == 1
    assert "no [srv] section" in result.stderr


def seed_text_with(control_line: str) -> str:
    seed()  # skips if absent
    text = SEED.read_text()
    lines = [control_line if line.startswith("control_socket") else line
             for line in text.splitlines()]
    return "\n".join(lines) + SRV_LISTEN
