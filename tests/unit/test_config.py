"""Config: the seed loads as it is; every bad input is refused naming file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.configs import MINIMAL, gateway_config, refused
from xmppgw import config
from xmppgw.config import Address, ConfigError, parse_address
from xmppgw.config.locator import Locator

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "data" / "seed-config.toml"  # the seed article's config, as written
SHIPPED = ROOT / "conf" / "seed.toml"

def test_seed_config_loads_as_it_is() -> None:
    cfg = config.load(SEED)
    assert [v.name for v in cfg.vservers] == ["P5222", "P5223", "P5269"]
    assert [v.mode for v in cfg.vservers] == ["starttls", "directtls", "starttls"]
    farm = cfg.farm("XMPP")
    assert (farm.predictor, farm.nat) == ("leastconns", "server")
    assert [r.inservice for r in farm.reals] == [True, True, True, False]
    real = farm.reals[0]
    assert (real.weight, real.reassign, real.retry) == (5, 4, 30.0)
    assert (real.faildetect.numconns, real.faildetect.numclients) == (16, 5)
    assert real.address.with_port(5223) == ("213.134.162.162", 5223)
    assert cfg.gateway.domains == ("example.test",)


def test_shipped_seed_is_the_seed_with_loopback_addresses() -> None:
    """conf/seed.toml keeps every key of the seed; only addresses differ."""
    shipped = config.load(SHIPPED)
    seed = config.load(SEED)
    assert [r.weight for r in shipped.farm("XMPP").reals] == [
        r.weight for r in seed.farm("XMPP").reals]
    assert [v.mode for v in shipped.vservers] == [v.mode for v in seed.vservers]
    assert all(v.virtual.host.startswith("127.") for v in shipped.vservers)


def test_defaults() -> None:
    cfg = config.loads(MINIMAL)
    vs, real = cfg.vservers[0], cfg.serverfarms[0].reals[0]
    assert (vs.mode, vs.header_timeout, vs.max_header_bytes, vs.kinds) == (
        "starttls", 10.0, 4096, ("c2s", "s2s"))
    assert (real.weight, real.reassign, real.retry, real.inservice) == (8, 3, 60.0, True)
    assert (real.faildetect.numconns, real.faildetect.numclients) == (8, 2)
    assert cfg.gateway.keepalive.idle == 60.0


def test_unknown_key_names_file_line_and_path() -> None:
    text = MINIMAL.replace('address = "127.0.0.2"', 'address = "127.0.0.2"\nwieght = 3')
    [problem] = refused(text)
    assert problem.startswith("test.toml:14: serverfarm[0] (F).real[0].wieght: unknown key")
    assert "weight" in problem  # the known keys are listed


INLINE_REALS = MINIMAL.replace('[[serverfarm.real]]\naddress = "127.0.0.2"\n', """\
real = [
  {address = "127.0.0.2"},
  {address = "127.0.0.3", wieght = 3},
  { address = "127.0.0.4", weight = 0 },
]
""")


def test_bad_key_in_an_inline_real_names_that_reals_line() -> None:
    """Reals written as an array of inline tables: each problem names the line of its own
    real (and key), not the line of `real = [`."""
    lines = INLINE_REALS.splitlines()
    second = 1 + next(i for i, line in enumerate(lines) if "wieght" in line)
    weight = 1 + next(i for i, line in enumerate(lines) if "weight = 0" in line)
    assert lines[12 - 1] == "real = ["  # the array opens on line 12, the reals follow it
    problems = refused(INLINE_REALS)
    assert problems[0].startswith(f"test.toml:{second}: serverfarm[0] (F).real[1].wieght: unknown key")
    assert problems[1] == f"test.toml:{weight}: serverfarm[0] (F).real[2].weight: must be at least 1"
    assert (second, weight) == (14, 15)


def test_inline_real_and_array_element_lines() -> None:
    """The locator finds an inline table's own line, an array element's, and is not fooled by
    a header-like line inside a multi-line string."""
    text = (
        'notes = """\n[[serverfarm]]\nname = 1\n"""\n'    # lines 1-4
        "[[serverfarm]]\n"                                # line 5
        'real = [ {address = "a"},\n'                      # line 6
        '  {address = "b", probe = {type = "tcp"}} ]\n'    # line 7
    )
    locate = Locator(text).line_of
    assert locate(("serverfarm", 0)) == 5
    assert locate(("serverfarm", 0, "real", 0, "address")) == 6
    assert locate(("serverfarm", 0, "real", 1)) == 7
    assert locate(("serverfarm", 0, "real", 1, "probe", "type")) == 7
    assert locate(("serverfarm", 0, "real", 1, "nosuchkey")) == 7
    assert locate(("serverfarm", 1)) is None


def test_the_integration_tests_config_builder_writes_what_it_is_given() -> None:
    """tests/support/configs.py's gateway_config: the keys given, a None left out."""
    text = gateway_config(
        domain="example.test", vip="127.0.0.1:5222", control="/run/x/ctl.sock",
        gateway={"log_connect": True, "metrics": None}, vserver={"name": "C2S", "mode": None},
        farm={"nat": "server"}, probes=[{"type": "tcp", "interval": 1}],
        reals=[{"address": "127.0.0.2:5222", "inservice": False,
                "faildetect": {"numconns": 3, "numclients": 2}}])
    cfg = config.loads(text, "test.toml")
    [vs], [farm] = cfg.vservers, cfg.serverfarms
    assert (vs.name, vs.mode, str(vs.virtual), vs.serverfarm) == (
        "C2S", "starttls", "127.0.0.1:5222", "XMPP")
    assert (cfg.gateway.control_socket, cfg.gateway.log_connect, cfg.gateway.metrics) == (
        "/run/x/ctl.sock", True, None)
    assert (farm.name, farm.predictor, farm.nat) == ("XMPP", "leastconns", "server")
    [real] = farm.reals
    assert (real.inservice, real.faildetect.numconns, real.faildetect.numclients) == (
        False, 3, 2)
    assert "metrics" not in text and "mode" not in text


def test_wrong_type() -> None:
    [problem] = refused(MINIMAL.replace('name = "F"\n\n[[', 'name = "F"\npredictor = 3\n\n[['))
    assert problem == ("test.toml:11: serverfarm[0] (F).predictor: must be a string, "
                       "not an integer (3)")


def test_bool_is_not_an_integer() -> None:
    [problem] = refused(MINIMAL + "weight = true\n")
    assert "serverfarm[0] (F).real[0].weight: must be an integer, not a boolean" in problem


def test_missing_serverfarm() -> None:
    [problem] = refused(MINIMAL.replace('serverfarm = "F"', 'serverfarm = "G"'))
    assert problem == "test.toml:7: vserver[0] (V).serverfarm: no serverfarm named 'G' (F)"


def test_duplicate_virtual_and_real_addresses() -> None:
    text = MINIMAL + """
[[vserver]]
name = "W"
virtual = "127.0.0.1:5222"
serverfarm = "F"
""" + '\n[[serverfarm.real]]\naddress = "127.0.0.2"\n'
    problems = refused(text)
    assert "test.toml:17: vserver[1] (W).virtual: duplicate virtual address 127.0.0.1:5222" in problems
    assert any(p.startswith("test.toml:21: serverfarm[0] (F).real[1].address: duplicate address")
               for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    text = MINIMAL.replace('mode', 'x').replace('"127.0.0.1:5222"', '"127.0.0.1"') + "weight = 0\n"
    problems = refused(text)
    assert len(problems) == 2
    assert "vserver[0] (V).virtual: needs a port" in problems[0] or "needs a port" in problems[1]
    assert any("weight: must be at least 1" in p for p in problems)


@pytest.mark.parametrize("value, message", [
    ('"starttls2"', "must be one of starttls, directtls"),
    ("[1]", "must be a string"),
])
def test_mode_values(value: str, message: str) -> None:
    text = MINIMAL.replace('serverfarm = "F"\n', f'serverfarm = "F"\nmode = {value}\n', 1)
    [problem] = refused(text)
    assert "vserver[0] (V).mode" in problem and message in problem


def test_mode_both_and_the_direct_tls_ports() -> None:
    """`mode = "both"`: direct TLS goes to the real's `directtls_port`, else the farm's,
    5223 unless set; require_starttls applies to its XML streams."""
    text = MINIMAL.replace('serverfarm = "F"\n', 'serverfarm = "F"\nmode = "both"\n'
                           'require_starttls = true\n', 1)
    text = text.replace('name = "F"\n', 'name = "F"\ndirecttls_port = 5270\n')
    text += '[[serverfarm.real]]\naddress = "127.0.0.3:5322"\ndirecttls_port = 5999\n'
    cfg = config.loads(text)
    assert cfg.vservers[0].mode == "both" and cfg.vservers[0].require_starttls
    farm = cfg.serverfarms[0]
    assert [farm.directtls_endpoint(r) for r in farm.reals] == [("127.0.0.2", 5270),
                                                                ("127.0.0.3", 5999)]
    assert config.loads(MINIMAL).serverfarms[0].directtls_port == 5223
    [problem] = refused(MINIMAL.replace('name = "F"\n', 'name = "F"\ndirecttls_port = 0\n'))
    assert "serverfarm[0] (F).directtls_port: 0 is not a port" in problem
    [problem] = refused(MINIMAL.replace('serverfarm = "F"\n', 'serverfarm = "F"\n'
                                        'mode = "directtls"\nrequire_starttls = true\n', 1))
    assert "require_starttls" in problem


def test_routes_and_kinds() -> None:
    text = MINIMAL + """
[[serverfarm]]
name = "S2S"
[[serverfarm.real]]
address = "127.0.0.3"
""" + """
[[vserver]]
name = "W"
virtual = "[::1]:5269"
kinds = ["s2s", "component"]
serverfarm = "F"
[[vserver.route]]
kind = "s2s"
domain = "*.example.test"
serverfarm = "S2S"
"""
    cfg = config.loads(text)
    w = cfg.vservers[1]
    assert w.virtual == Address("::1", 5269)
    assert w.farm_for("s2s", "muc.example.test") == "S2S"
    assert w.farm_for("s2s", "example.test") == "F"
    assert w.farm_for("c2s", "muc.example.test") == "F"
    assert refused(text.replace('kind = "s2s"\n', 'kind = "s3s"\n'))[0].endswith(
        "must be one of c2s, s2s, component; did you mean 's2s'?")
    problem = refused(text.replace('serverfarm = "S2S"\n', 'serverfarm = "NOPE"\n'))[0]
    assert "vserver[1] (W).route[0].serverfarm: no serverfarm named 'NOPE'" in problem


def test_toml_syntax_error_names_file_and_line() -> None:
    [problem] = refused("[gateway\n")
    assert problem.startswith("test.toml: TOML syntax error:") and "line 1" in problem


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.1", Address("10.0.0.1", None)),
    ("10.0.0.1:5222", Address("10.0.0.1", 5222)),
    ("::1", Address("::1", None)),
    ("[::1]:5269", Address("::1", 5269)),
    ("[2001:db8::1]", Address("2001:db8::1", None)),
])
def test_addresses(text: str, expected: Address) -> None:
    assert parse_address(text, need_port=False) == expected


@pytest.mark.parametrize("text", ["example.test:5222", "1.2.3.4:0", "1.2.3.4:99999", "[::1",
                                  "[::1]5222", "1.2.3.4:x"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text, need_port=False)


def test_domain_patterns() -> None:
    cfg = config.loads(MINIMAL.replace('["example.test"]', '["example.test", "*.muc.test"]'))
    assert cfg.serves("EXAMPLE.test") and cfg.serves("room.muc.test")
    assert not cfg.serves("muc.test") and not cfg.serves("evil.test") and not cfg.serves(None)
    assert config.loads(MINIMAL.replace('domains = ["example.test"]', "")).serves(None)


@pytest.mark.parametrize("domain, served", [
    ("x.example.test", True), ("X.Example.Test.", True), ("example.test.", True),
    ("a.b.example.test", True),
    # RFC 7622 §3.2: no empty label, and only one trailing dot (the root) is stripped.
    (".example.test", False), ("a..example.test", False), ("x.example.test..", False),
    ("example.test..", False), ("..example.test", False), (".", False), ("", False),
    ("x..", False), ("..", False),
])
def test_a_domain_with_an_empty_label_is_not_served(domain: str, served: bool) -> None:
    cfg = config.loads(MINIMAL.replace('["example.test"]', '["example.test", "*.example.test"]'))
    assert cfg.serves(domain) is served
    assert (config.domain_matches("*.example.test", domain)
            or config.domain_matches("example.test", domain)) is served


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xmppgw", *args], check=False, capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    result = run_cli("check", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert "OK: 1 vservers, 1 serverfarms, 1 reals" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace('serverfarm = "F"', 'serverfarm = "G"'))
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{bad}:7: vserver[0] (V).serverfarm: no serverfarm named 'G' (F)"
    result = run_cli("check", "-c", str(tmp_path / "missing.toml"))
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_run_refuses_a_bad_config_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nheader_timeout = -1\n")
    result = run_cli("run", "-c", str(bad))
    assert result.returncode == 1
    assert "gateway.header_timeout: must be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr


EVERY_TABLE = """\
[gateway]
[gateway.keepalive]

[[vserver]]
name = "V"
virtual = "127.0.0.1:5222"
serverfarm = "F"
[vserver.limits]
[[vserver.route]]
serverfarm = "F"
kind = "s2s"

[[serverfarm]]
name = "F"
[[serverfarm.probe]]
type = "tcp"
[[serverfarm.real]]
address = "127.0.0.2"
[serverfarm.real.faildetect]

[srv]
zones = ["example.test"]
listen = "127.0.0.1:5353"
[srv.update]
server = "127.0.0.1"
"""


def test_every_default_is_the_models() -> None:
    """Defaults are written once, in the dataclasses: a table with only its required keys
    loads as the dataclass defaults, field by field (a default changed in one place only
    fails here)."""
    import dataclasses

    cfg = config.loads(EVERY_TABLE)
    vserver, farm = cfg.vservers[0], cfg.serverfarms[0]
    assert cfg.srv is not None and cfg.srv.update is not None
    given = {("VserverConfig", "serverfarm"), ("VserverConfig", "routes"),
             ("Route", "kind"), ("ServerfarmConfig", "reals"), ("ServerfarmConfig", "probes"),
             ("SrvConfig", "listen"), ("SrvConfig", "update")}  # set in EVERY_TABLE
    checked = 0
    for obj in (cfg.gateway, cfg.gateway.keepalive, vserver, vserver.limits, vserver.routes[0],
                farm, farm.probes[0], farm.reals[0], farm.reals[0].faildetect, cfg.srv,
                cfg.srv.update):
        for f in dataclasses.fields(obj):
            if (type(obj).__name__, f.name) in given:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                continue
            assert getattr(obj, f.name) == default, (type(obj).__name__, f.name)
            checked += 1
    assert checked > 60


def test_loads_looks_nothing_up_and_resolve_does() -> None:
    """`loads` is pure: an unknown group and a missing key file parse; `resolve` (which
    `load` runs) refuses them, naming file, line and key."""
    text = MINIMAL.replace('domains = ["example.test"]',
                           'domains = ["example.test"]\ncontrol_group = "no-such-group-xq"')
    text += '\n[srv]\nlisten = "127.0.0.1:5353"\n[srv.update]\nserver = "127.0.0.1"\n' \
            'key_file = "/nonexistent/k.key"\n'
    parsed = config.loads(text, "test.toml")
    assert parsed.gateway.control_group == "no-such-group-xq"
    assert [r.kind for r in parsed.external] == ["group", "file"]
    with pytest.raises(ConfigError) as info:
        config.resolve(parsed)
    assert info.value.problems == [
        "test.toml:3: gateway.control_group: no group named 'no-such-group-xq' on this machine",
        "test.toml:20: srv.update.key_file: /nonexistent/k.key: no such file",
    ]


def test_allowed_values_come_from_their_owners() -> None:
    from xmppgw.log import FORMATS
    from xmppgw.slb.predictors import PREDICTORS
    from xmppgw.wire.proxyproto import VERSIONS

    [predictor] = refused(MINIMAL.replace('name = "F"', 'name = "F"\npredictor = "x"'))
    assert predictor.endswith(f"must be one of {', '.join(PREDICTORS)}")
    [fmt] = refused(MINIMAL.replace("[gateway]", '[gateway]\nlog_format = "x"'))
    assert fmt.endswith(f"must be one of {', '.join(FORMATS)}")
    [proxy] = refused(MINIMAL.replace('name = "F"', 'name = "F"\nproxy_protocol = "v3"'))
    assert proxy.endswith(f"must be one of {', '.join(VERSIONS)}")


@pytest.mark.parametrize("line, message", [
    ("user_timeout = inf", "gateway.keepalive.user_timeout: must be a finite number"),
    ("idle = nan", "gateway.keepalive.idle: must be a finite number"),
    ("user_timeout = 3e6", ("gateway.keepalive.user_timeout: must be at most 2147483 "
                            "(TCP_USER_TIMEOUT, in ms, is an int)")),
    ("interval = 1e9", "gateway.keepalive.interval: must be at most 32767 (TCP_KEEPINTVL)"),
    ("idle = 40000", "gateway.keepalive.idle: must be at most 32767 (TCP_KEEPIDLE)"),
    ("count = 128", "gateway.keepalive.count: must be at most 127 (TCP_KEEPCNT)"),
    ("count = 0", "gateway.keepalive.count: must be at least 1"),
])
def test_keepalive_values_the_kernel_refuses_are_refused_here(line: str, message: str) -> None:
    """`check` passed these and `run` then crashed (inf, overflow) or the kernel silently
    kept its own default (setsockopt failed): the loader names the key and the limit."""
    text = MINIMAL.replace("[[vserver]]", f"[gateway.keepalive]\n{line}\n\n[[vserver]]")
    assert refused(text) == [f"test.toml:5: {message}"]


def test_the_kernel_limits_themselves_load() -> None:
    text = MINIMAL.replace("[[vserver]]", "[gateway.keepalive]\nidle = 32767\ninterval = 32767\n"
                           "count = 127\nuser_timeout = 2147483\n\n[[vserver]]")
    keepalive = config.loads(text, "test.toml").gateway.keepalive
    assert (keepalive.idle, keepalive.interval, keepalive.count, keepalive.user_timeout) == (
        32767, 32767, 127, 2147483)


def test_a_misspelt_srv_section_is_told_about_srv() -> None:
    """`srv` is read only when present, but it is a key of the top level all the same: the
    list of known keys names it and a typo gets the suggestion."""
    problems = refused(MINIMAL + '\n[svr]\nzones = ["example.test"]\n')
    assert len(problems) == 1
    assert "svr: unknown key (known here: gateway, serverfarm, srv, vserver)" in problems[0]
    assert "srv" in problems[0].split("known here")[1].split(")", 1)[1], problems[0]


def test_a_real_given_as_a_string_is_told_the_whole_table_header() -> None:
    text = MINIMAL.replace('[[serverfarm.real]]\naddress = "127.0.0.2"\n',
                           'real = "127.0.0.2"\n')
    problems = refused(text)
    assert any("serverfarm[0] (F).real: must be an array of tables ([[serverfarm.real]])" in p
               for p in problems), problems


def test_a_duplicate_real_is_reported_at_its_own_index_after_an_invalid_one() -> None:
    text = MINIMAL.replace('[[serverfarm.real]]\naddress = "127.0.0.2"\n',
                           'real = [{address = "127.0.0.2"}, {address = "bogus"}, '
                           '{address = "127.0.0.2"}]\n')
    problems = refused(text)
    assert any("serverfarm[0] (F).real[2].address: duplicate address 127.0.0.2" in p
               for p in problems), problems
    assert not any("real[1].address: duplicate" in p for p in problems), problems


@pytest.mark.parametrize("table, name, message", [
    ("vserver", "", "must not be empty"),
    ("serverfarm", "", "must not be empty"),
    ("vserver", "my vserver", "'my vserver' must be one word"),
    ("serverfarm", "F\\nX", "must be one word"),
])
def test_names_are_one_printable_word(table: str, name: str, message: str) -> None:
    """Names are words of `show` lines and of commands (`real FARM ADDRESS no-inservice`)."""
    old = 'name = "V"' if table == "vserver" else 'name = "F"\n'
    text = MINIMAL.replace(old, f'name = "{name}"' + ("" if table == "vserver" else "\n"))
    if table == "serverfarm":
        text = text.replace('serverfarm = "F"', f'serverfarm = "{name}"')
    problems = refused(text)
    assert any(f"{table}[0].name: " in p and message in p for p in problems), problems


def test_an_empty_config_is_refused_and_domains_are_kept_once() -> None:
    assert refused("") == [("test.toml: vserver: an empty config: no [[vserver]] and no "
                            "[[serverfarm]]")]
    text = MINIMAL.replace('domains = ["example.test"]',
                           'domains = ["example.test", "EXAMPLE.test"]')
    assert config.loads(text, "test.toml").gateway.domains == ("example.test",)
