"""`[[serverfarm.probe]]` and `[[serverfarm.real.probe]]`: the issue's form as written, the
defaults, and each refusal word for word. The password never shows in a message or a repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmppgw import config
from xmppgw.config import IMPLICIT_PROBE, ConfigError, ProbeConfig
from xmppgw.health.runner import ProbeRunner

HEAD = """\
[[vserver]]
name = "V"
virtual = "127.0.0.1:5222"
serverfarm = "F"

[[serverfarm]]
name = "F"
"""
REALS = """
[[serverfarm.real]]
address = "127.0.0.2"

[[serverfarm.real]]
address = "127.0.0.3:5333"
"""

ISSUE_FORM = """
[[serverfarm.probe]]
type = "xmpp-ping"          # tcp | xmpp-stream | xmpp-ping
interval = 2
timeout = 2
rise = 2
fall = 2
domain = "example.test"
jid = "probe@example.test"
password_file = "{secret}"
"""


def checked(text: str) -> config.Config:
    """What the master runs: the pure parse, then the I/O step (secrets, files)."""
    return config.resolve(config.loads(text, "test.toml"))


def probes_of(text: str) -> tuple[ProbeConfig, ...]:
    return checked(text).serverfarms[0].probes


def refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        checked(text)
    return info.value.problems


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "probe.secret"
    path.write_text("s3cret-pw\n")
    path.chmod(0o600)
    return path


def test_the_issues_form_works_as_written(secret: Path) -> None:
    [probe] = probes_of(HEAD + ISSUE_FORM.format(secret=secret) + REALS)
    assert (probe.type, probe.interval, probe.timeout, probe.rise, probe.fall) == (
        "xmpp-ping", 2.0, 2.0, 2, 2)
    assert (probe.domain, probe.jid, probe.target_domain) == (
        "example.test", "probe@example.test", "example.test")
    assert probe.password == "s3cret-pw"  # one line, the newline dropped
    assert (probe.persistent, probe.tls_verify, probe.tls_ca_file) == (True, True, None)


def test_defaults_and_the_ports_they_give() -> None:
    cfg = config.loads(HEAD + '[[serverfarm.probe]]\ntype = "xmpp-stream"\n'
                       'domain = "example.test"\nkind = "s2s"\n' + REALS)
    farm = cfg.serverfarms[0]
    [probe] = farm.probes
    assert (probe.interval, probe.timeout, probe.rise, probe.fall) == (5.0, 2.0, 2, 3)
    assert (probe.kind, probe.expect_starttls, probe.port) == ("s2s", False, None)
    assert [probe.port_for(r.address) for r in farm.reals] == [5269, 5333]


def test_a_real_may_replace_the_farms_probes_or_have_none() -> None:
    text = HEAD + '[[serverfarm.probe]]\ntype = "tcp"\n' + """
[[serverfarm.real]]
address = "127.0.0.2"

[[serverfarm.real]]
address = "127.0.0.3"
[[serverfarm.real.probe]]
type = "xmpp-stream"
domain = "pr.test"
port = 5322

[[serverfarm.real]]
address = "127.0.0.4"
probe = []
"""
    farm = config.loads(text).serverfarms[0]
    assert [[(p.type, p.port) for p in farm.probes_for(r)] for r in farm.reals] == [
        [("tcp", None)], [("xmpp-stream", 5322)], []]


def test_no_probes_is_the_default() -> None:
    farm = config.loads(HEAD + REALS).serverfarms[0]
    assert farm.probes == ()
    assert all(r.probes is None and farm.probes_for(r) == () for r in farm.reals)


def test_refusals_name_line_and_key() -> None:
    text = HEAD + """
[[serverfarm.probe]]
type = "http"

[[serverfarm.probe]]
type = "xmpp-stream"
fall = 0
port = 70000

[[serverfarm.probe]]
type = "xmpp-ping"
jid = "probe"
persistent = "yes"

[[serverfarm.probe]]
type = "tcp"
domain = "example.test"
kind = "s2s"
""" + REALS
    assert refused(text) == [
        "test.toml:10: serverfarm[0] (F).probe[0].type: must be one of tcp, xmpp-stream, xmpp-ping",
        "test.toml:12: serverfarm[0] (F).probe[1].domain: is required for type = \"xmpp-stream\"",
        "test.toml:14: serverfarm[0] (F).probe[1].fall: must be at least 1",
        "test.toml:15: serverfarm[0] (F).probe[1].port: 70000 is not a port (1-65535)",
        ("test.toml:17: serverfarm[0] (F).probe[2].password_file: is required for "
         "type = \"xmpp-ping\" (or give password)"),
        "test.toml:19: serverfarm[0] (F).probe[2].jid: 'probe' is not a jid of the form user@domain",
        ("test.toml:20: serverfarm[0] (F).probe[2].persistent: must be true or false, "
         "not a string ('yes')"),
        ("test.toml:24: serverfarm[0] (F).probe[3].domain: applies only to type = \"xmpp-stream\" "
         "or \"xmpp-ping\""),
        "test.toml:25: serverfarm[0] (F).probe[3].kind: applies only to type = \"xmpp-stream\"",
    ]  # in line order


def test_unknown_probe_key_lists_the_known_ones() -> None:
    [problem] = refused(HEAD + '[[serverfarm.probe]]\ntype = "tcp"\nintervall = 2\n' + REALS)
    assert problem.startswith("test.toml:10: serverfarm[0] (F).probe[0].intervall: unknown key")
    assert "interval" in problem and "password_file" in problem


def test_a_real_probe_is_checked_like_a_farm_probe() -> None:
    text = HEAD + REALS + '[[serverfarm.real.probe]]\ntype = "xmpp-stream"\n'
    assert refused(text) == [
        ("test.toml:14: serverfarm[0] (F).real[1].probe[0].domain: is required for "
         "type = \"xmpp-stream\"")]


def test_password_sources(tmp_path: Path, secret: Path) -> None:
    ping = HEAD + '[[serverfarm.probe]]\ntype = "xmpp-ping"\njid = "probe@example.test"\n'
    both = ping + f'password = "x"\npassword_file = "{secret}"\n' + REALS
    assert refused(both) == [
        ("test.toml:12: serverfarm[0] (F).probe[0].password_file: give password or password_file, "
         "not both")]
    missing = tmp_path / "nope.secret"
    assert refused(ping + f'password_file = "{missing}"\n' + REALS) == [
        (f"test.toml:11: serverfarm[0] (F).probe[0].password_file: cannot read {missing}: "
         "No such file or directory")]
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    assert refused(ping + f'password_file = "{empty}"\n' + REALS) == [
        f"test.toml:11: serverfarm[0] (F).probe[0].password_file: {empty} is empty"]
    [inline] = probes_of(ping + 'password = "inline-pw"\n' + REALS)
    assert inline.password == "inline-pw"


def test_the_password_never_shows(secret: Path) -> None:
    [probe] = probes_of(HEAD + ISSUE_FORM.format(secret=secret) + REALS)
    assert "s3cret-pw" not in repr(probe)
    assert "s3cret-pw" not in repr(checked(HEAD + ISSUE_FORM.format(secret=secret) + REALS))
    ping = HEAD + '[[serverfarm.probe]]\ntype = "xmpp-ping"\njid = "probe@example.test"\n'
    [problem] = refused(ping + "password = 8675309\n" + REALS)
    assert problem == ("test.toml:11: serverfarm[0] (F).probe[0].password: must be a string, "
                       "not an integer")
    assert "8675309" not in problem


def test_tls_ca_file_must_exist(tmp_path: Path) -> None:
    text = HEAD + ('[[serverfarm.probe]]\ntype = "xmpp-ping"\njid = "probe@example.test"\n'
                   f'password = "x"\ntls_ca_file = "{tmp_path}/ca.pem"\n') + REALS
    assert refused(text) == [
        f"test.toml:12: serverfarm[0] (F).probe[0].tls_ca_file: {tmp_path}/ca.pem: no such file"]


def test_loads_reads_no_file_and_resolve_does(tmp_path: Path, secret: Path) -> None:
    """`loads` is pure: a password_file or tls_ca_file that does not exist parses, and
    nothing is read; `resolve` reads and checks them, naming file, line and key."""
    missing = tmp_path / "nope.secret"
    text = HEAD + ('[[serverfarm.probe]]\ntype = "xmpp-ping"\njid = "probe@example.test"\n'
                   f'password_file = "{missing}"\ntls_ca_file = "{tmp_path}/ca.pem"\n') + REALS
    parsed = config.loads(text, "test.toml")
    [probe] = parsed.serverfarms[0].probes
    assert probe.password is None and probe.password_file == str(missing)
    assert [(r.kind, r.where) for r in parsed.external] == [
        ("file", "test.toml:12"), ("secret", "test.toml:11")]
    with pytest.raises(ConfigError) as info:
        config.resolve(parsed)
    assert info.value.problems == [
        f"test.toml:12: serverfarm[0] (F).probe[0].tls_ca_file: {tmp_path}/ca.pem: no such file",
        (f"test.toml:11: serverfarm[0] (F).probe[0].password_file: cannot read {missing}: "
         "No such file or directory")]
    # Once the file exists, the same parsed config resolves: loads looked at nothing.
    missing.write_text("late-pw\n")
    (tmp_path / "ca.pem").write_text("")
    resolved = config.resolve(parsed)
    assert resolved.serverfarms[0].probes[0].password == "late-pw"
    assert resolved.external == () and parsed.serverfarms[0].probes[0].password is None


def test_resolve_fills_a_real_probes_secret(secret: Path) -> None:
    text = HEAD + REALS + ('[[serverfarm.real.probe]]\ntype = "xmpp-ping"\n'
                           f'jid = "probe@example.test"\npassword_file = "{secret}"\n')
    farm = checked(text).serverfarms[0]
    assert farm.reals[0].probes is None
    assert [p.password for p in farm.reals[1].probes or ()] == ["s3cret-pw"]


def test_a_resolved_config_pickles_with_its_secret(secret: Path) -> None:
    """Workers receive the master's resolved config as it is (net/shared.py ConfigSlot)."""
    import pickle

    cfg = checked(HEAD + ISSUE_FORM.format(secret=secret) + REALS)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert pickle.loads(pickle.dumps(cfg)).serverfarms[0].probes[0].password == "s3cret-pw"


# --- the implicit tcp probe of a farm whose reals are published in SRV records ------------

SRV = '\n[srv]\nzones = ["example.test"]\nlisten = "127.0.0.1:5353"\n'


def test_srv_gives_an_unprobed_published_farm_an_implicit_tcp_probe() -> None:
    """A real whose address is published must be watched: without probes a stopped real
    stays in the answers while no client happens to fail on it."""
    farm = config.loads(HEAD + REALS + SRV).serverfarms[0]
    assert farm.probes == (IMPLICIT_PROBE,) and farm.implicit_probe
    probe = IMPLICIT_PROBE
    assert (probe.type, probe.implicit, probe.interval, probe.timeout, probe.rise,
            probe.fall) == ("tcp", True, 5.0, 2.0, 2, 3)
    assert [farm.probes_for(r) for r in farm.reals] == [(IMPLICIT_PROBE,)] * 2
    assert [probe.port_for(r.address) for r in farm.reals] == [5222, 5333]


def test_without_srv_or_published_reals_there_is_no_implicit_probe() -> None:
    assert config.loads(HEAD + REALS).serverfarms[0].probes == ()
    off = config.loads(HEAD + REALS + SRV + "publish_reals = false\n").serverfarms[0]
    assert off.probes == () and not off.implicit_probe


def test_probe_empty_on_the_farm_turns_the_implicit_probe_off() -> None:
    farm = config.loads(HEAD + "probe = []\n" + REALS + SRV).serverfarms[0]
    assert farm.probes == () and all(farm.probes_for(r) == () for r in farm.reals)


def test_configured_probes_are_kept_as_they_are() -> None:
    text = HEAD + '[[serverfarm.probe]]\ntype = "xmpp-stream"\ndomain = "example.test"\n'
    farm = config.loads(text + REALS + SRV).serverfarms[0]
    assert [(p.type, p.implicit) for p in farm.probes] == [("xmpp-stream", False)]
    assert farm.probes == config.loads(text + REALS).serverfarms[0].probes


def test_a_reals_own_list_wins_over_the_implicit_probe() -> None:
    farm = config.loads(HEAD + """
[[serverfarm.real]]
address = "127.0.0.2"
probe = []

[[serverfarm.real]]
address = "127.0.0.3"
[[serverfarm.real.probe]]
type = "tcp"
port = 5333
""" + SRV).serverfarms[0]
    assert farm.probes == (IMPLICIT_PROBE,)
    assert [[(p.port, p.implicit) for p in farm.probes_for(r)] for r in farm.reals] == [
        [], [(5333, False)]]


def test_only_farms_a_published_vserver_sends_c2s_or_s2s_to() -> None:
    text = """
[[vserver]]
name = "COMP"
virtual = "127.0.0.1:5347"
kinds = ["component"]
serverfarm = "C"

[[vserver]]
name = "C2S"
virtual = "127.0.0.1:5222"
serverfarm = "X"
[[vserver.route]]
domain = "muc.example.test"
serverfarm = "M"
[[vserver.route]]
kind = "component"
serverfarm = "C2"

[[vserver]]
name = "UNPUBLISHED"
virtual = "127.0.0.1:5999"
srv = []
serverfarm = "U"
""" + "".join(f'\n[[serverfarm]]\nname = "{name}"\n[[serverfarm.real]]\naddress = "{ip}"\n'
              for name, ip in (("C", "10.0.0.1"), ("X", "10.0.0.2"), ("M", "10.0.0.3"),
                               ("C2", "10.0.0.4"), ("U", "10.0.0.5"), ("IDLE", "10.0.0.6")))
    cfg = config.loads(text + SRV)
    assert {f.name for f in cfg.serverfarms if f.implicit_probe} == {"X", "M"}


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def __getattr__(self, level: str) -> object:
        return lambda event, **kw: self.lines.append((event, kw))


async def test_the_start_log_names_the_farms_with_an_implicit_probe() -> None:
    cfg = config.loads(HEAD + REALS + SRV)
    log = Log()
    runner = ProbeRunner(cfg.serverfarms, log, lambda verdict: None)
    runner.start()
    await runner.stop()
    events = dict(log.lines)
    assert events["implicit_probe"]["farm"] == "F"
    assert (events["implicit_probe"]["type"], events["implicit_probe"]["interval"],
            events["implicit_probe"]["fall"]) == ("tcp", 5.0, 3)
    assert events["probes_started"] == {"reals": 2, "probes": 2, "implicit": ["F"]}
    [state] = runner.describe("F", "127.0.0.2", 0.0, 0.0)[:1]
    assert (state["type"], state["implicit"]) == ("tcp", True)
