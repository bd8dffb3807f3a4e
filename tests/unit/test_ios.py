"""`xmppgw import-ios`: the seed's running-config imports as the seed's xmppgw config, every
unmapped command is reported with its line, and an imported config checks and runs."""

from __future__ import annotations

import dataclasses
import io
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from xmppgw import cli, config
from xmppgw.ios import import_ios

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SEED_ARTICLE = DATA / "seed-article.txt"  # the seed article, as published


def same(a: config.Config, b: config.Config) -> bool:
    """Configs equal in everything but the file they came from."""
    return dataclasses.replace(a, path="") == dataclasses.replace(b, path="")


def imported(text: str, **kw: object) -> config.Config:
    return config.loads(import_ios(text, **kw).toml)  # type: ignore[arg-type]


def messages(text: str) -> dict[int, str]:
    return {f.line: f.message for f in import_ios(text).findings}


# --------------------------------------------------------------------------- the seed


def test_seed_block_imports_as_the_seed_config() -> None:
    result = import_ios((DATA / "seed-ios.cfg").read_text(), domains=["example.test"])
    assert result.findings == ()
    assert (result.blocks, result.farms, result.reals, result.vservers) == (4, 1, 4, 3)
    assert same(config.loads(result.toml), config.load(DATA / "seed-config.toml"))


def test_the_ios_block_is_the_articles() -> None:
    block = (DATA / "seed-ios.cfg").read_text().splitlines()[2:]
    assert "\n".join(block) in SEED_ARTICLE.read_text()


def test_the_whole_seed_article_imports_the_same() -> None:
    """Prose around the config (hundreds of non-slb lines in a real running-config) is
    skipped silently, and ends the blocks."""
    result = import_ios(SEED_ARTICLE.read_text(), domains=["example.test"])
    assert result.findings == ()
    assert same(config.loads(result.toml), config.load(DATA / "seed-config.toml"))


def test_indentation_does_not_matter() -> None:
    text = (DATA / "ios-full.cfg").read_text()
    flat = "\n".join(line.strip() for line in text.splitlines())
    assert same(imported(text), imported(flat))


# --------------------------------------------------------------------------- a full config

FULL = (DATA / "ios-full.cfg").read_text()


def test_full_config_values() -> None:
    cfg = imported(FULL, domains=["example.test"])
    assert [v.name for v in cfg.vservers] == ["C2S", "S2SDIRECT", "ODD"]
    c2s, s2s, odd = cfg.vservers
    assert (str(c2s.virtual), c2s.mode, c2s.serverfarm, c2s.inservice) == \
        ("198.51.100.1:5222", "starttls", "XMPP", True)
    assert (s2s.mode, s2s.serverfarm, s2s.inservice) == ("directtls", "S2S", False)
    assert (str(odd.virtual), odd.mode) == ("[2001:db8::1]:8080", "starttls")
    xmpp, s2s_farm = cfg.serverfarms
    assert (xmpp.predictor, s2s_farm.predictor) == ("leastconns", "roundrobin")
    r11, r12, r13 = xmpp.reals
    assert (r11.weight, r11.faildetect, r11.maxconns, r11.inservice) == \
        (5, config.Faildetect(1, 1), 500, True)  # IOS: numclients defaults to 1 for numconns 1
    assert (str(r12.address), r12.weight, r12.reassign, r12.retry, r12.inservice) == \
        ("192.0.2.12:5222", 200, 2, 15.0, True)
    assert (r13.weight, r13.reassign, r13.faildetect, r13.retry, r13.inservice) == \
        (8, 3, config.Faildetect(8, 2), 60.0, False)  # IOS defaults are xmppgw's
    assert s2s_farm.reals[0].faildetect == config.Faildetect(4, 3)
    assert cfg.gateway.domains == ("example.test",)


@pytest.mark.parametrize("line,start", [
    (6, "not imported, nor its 2 sub-command lines"),   # ip slb probe
    (13, "not imported: the probe is an `ip slb probe`"),
    (17, "partly imported: imported as `maxconns = 500`"),
    (23, "partly imported: imported as `inservice = true`"),
    (26, "not imported: no per-real connection rate"),
    (27, "not imported: unknown command here"),          # frobnicate
    (28, "not imported: xmppgw leaves established"),     # failaction purge
    (31, "not imported: xmppgw always connects"),        # nat client
    (32, "not imported: xmppgw predictors are"),         # predictor route-map
    (39, "partly imported: imported as `serverfarm = \"XMPP\"`; `backup S2S`"),
    (40, "not imported: xmppgw keeps no sticky table"),
    (41, "not imported: counts half-open TCP"),          # synguard
    (42, "not imported: xmppgw never times out"),        # idle
    (43, "not imported: xmppgw keeps no connection table"),  # delay
    (44, "not imported: xmppgw does not filter clients"),
    (45, "not imported: xmppgw replicates no"),
    (49, "partly imported: imported as port 5270; `service ftp`"),
    (53, "not imported: no `virtual IP tcp PORT`"),      # vserver DNS dropped
    (54, "not imported: xmppgw balances TCP only"),
    (58, "not imported: serverfarm MISSING is not defined"),
    (64, "note: 8080 is not an XMPP port"),
])
def test_every_unmapped_command_is_reported_with_its_line(line: int, start: str) -> None:
    assert messages(FULL)[line].startswith(start)


def test_nothing_else_is_reported() -> None:
    """Lines outside `ip slb` blocks (hostname, interface, ip route) are not findings."""
    assert sorted(messages(FULL)) == [6, 13, 17, 23, 26, 27, 28, 31, 32, 39, 40, 41, 42, 43,
                                      44, 45, 49, 53, 54, 58, 64]


def test_findings_are_also_comments_in_the_toml() -> None:
    toml = import_ios(FULL).toml
    assert "# IOS line 41: `synguard 100`: not imported: counts half-open TCP" in toml
    assert toml.index("synguard 100") < toml.index('name = "S2SDIRECT"')


def test_unmapped_command_format() -> None:
    finding = import_ios(FULL).findings[1]
    assert str(finding).startswith("line 13: `probe XMPPTCP`: not imported: ")


def test_ios_defaults_out_of_service() -> None:
    cfg = imported("ip slb serverfarm F\n real 10.0.0.1\nip slb vserver V\n"
                   " virtual 10.0.0.100 tcp 5222\n serverfarm F\n")
    assert cfg.farm("F").reals[0].inservice is False  # IOS: not in service until `inservice`
    assert cfg.vservers[0].inservice is False


def test_top_level_lines_end_blocks_silently() -> None:
    text = textwrap.dedent("""\
        ip slb serverfarm F
        real 10.0.0.1
        inservice
        no ip domain-lookup
        weight 5
        hostname router
        inservice
        """)
    assert import_ios(text).findings == ()
    real = imported(text).farm("F").reals[0]
    assert (real.weight, real.inservice) == (8, True)


def test_bad_and_duplicate_reals_and_commands_outside_a_real() -> None:
    text = textwrap.dedent("""\
        ip slb serverfarm F
         weight 3
         real 10.0.0.1
          weight x
          faildetect numconns
          inservice
         real 10.0.0.1
         real example.test
         real 10.0.0.2 99999
        """)
    found = messages(text)
    assert found[2] == "not imported: a real server command outside any `real`"
    assert found[4] == "not imported: expected `weight NUMBER`"
    assert found[5].startswith("not imported: expected `faildetect numconns N")
    assert found[7] == "not imported: real 10.0.0.1 is already in serverfarm F"
    assert found[8] == found[9] == "not imported: expected `real IP [PORT]`"
    assert len(imported(text).farm("F").reals) == 1


def test_vserver_edge_cases() -> None:
    text = textwrap.dedent("""\
        ip slb serverfarm F
         real 10.0.0.1
          inservice
        ip slb vserver A
         virtual 10.0.0.100 255.255.255.0 tcp 5222
         serverfarm F
        ip slb vserver B
         virtual 10.0.0.100 255.255.255.255 tcp 5222
         serverfarm F
         inservice
        ip slb vserver C
         virtual 10.0.0.100 tcp 5222
         serverfarm F
        ip slb vserver D
         virtual 10.0.0.101 tcp
         serverfarm F
        ip slb vserver B
         no inservice
        """)
    found = messages(text)
    assert found[5].startswith("not imported: a virtual network (mask)")
    assert found[4] == "not imported: no `virtual IP tcp PORT`"
    assert found[11] == ("not imported: another vserver already listens on the same "
                         "virtual address")
    assert found[15].startswith("not imported: expected a port number")
    assert found[17].startswith("note: this vserver was defined before")
    cfg = imported(text)
    assert [(v.name, str(v.virtual), v.inservice) for v in cfg.vservers] == \
        [("B", "10.0.0.100:5222", False)]


# --------------------------------------------------------------------------- the command


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_toml_and_reports_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "import-ios", str(DATA / "seed-ios.cfg"),
                             "--domain", "example.test")
    assert code == 0
    assert same(config.loads(out), config.load(DATA / "seed-config.toml"))
    assert err.strip().endswith("read 53 lines, 4 `ip slb` blocks: 1 serverfarms with 4 "
                                "reals, 3 vservers; 0 commands not imported, 0 partly")
    code, out, err = run_cli(capsys, "import-ios", str(DATA / "ios-full.cfg"))
    assert code == 0 and config.loads(out).gateway.domains == ()
    assert "line 41: `synguard 100`: not imported: " in err.splitlines()[11]


def test_cli_output_file_stdin_and_failures(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out_file = tmp_path / "imported.toml"
    code, out, _ = run_cli(capsys, "import-ios", str(DATA / "seed-ios.cfg"), "-o",
                           str(out_file), "--control-socket", str(tmp_path / "s.sock"))
    assert code == 0 and out == ""
    assert config.load(out_file).gateway.control_socket == str(tmp_path / "s.sock")
    monkeypatch.setattr(sys, "stdin", io.StringIO((DATA / "seed-ios.cfg").read_text()))
    assert run_cli(capsys, "import-ios", "-")[0] == 0
    code, _, err = run_cli(capsys, "import-ios", str(tmp_path / "missing.cfg"))
    assert code == 1 and "cannot read" in err
    (tmp_path / "none.cfg").write_text("hostname router\ninterface Vlan1\n")
    code, _, err = run_cli(capsys, "import-ios", str(tmp_path / "none.cfg"))
    assert code == 1 and "no `ip slb serverfarm` or `ip slb vserver` block" in err
    code, out, err = run_cli(capsys, "import-ios", str(DATA / "seed-ios.cfg"),
                             "--domain", "not a domain")
    assert code == 1 and out == "" and "gateway.domains" in err


# --------------------------------------------------------------------------- it runs

VIP = "127.0.1.40"
REALS = {"213.134.162.162": "127.0.1.41", "213.134.162.163": "127.0.1.42",
         "213.134.162.164": "127.0.1.43", "213.134.162.165": "127.0.1.44"}
SERVER_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' id='r1' "
                 b"from='example.test' version='1.0'>")
CLIENT_HEADER = (b"<?xml version='1.0'?><stream:stream to='example.test' "
                 b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                 b"version='1.0'>")


class Listeners:
    """A tiny XMPP-ish real on each address and port: answers a stream header with one."""

    def __init__(self, hosts: list[str], ports: list[int]) -> None:
        self.received: dict[tuple[str, int], bytes] = {}
        self.socks = []
        for host in hosts:
            for port in ports:
                sock = socket.create_server((host, port))
                sock.settimeout(0.2)
                self.socks.append(sock)
        self.stopping = False
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True)
                        for s in self.socks]
        for thread in self.threads:
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        while not self.stopping:
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while not data.endswith(b">") or b"<stream:stream" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.received[sock.getsockname()] = data
                    conn.sendall(SERVER_HEADER)
                    conn.recv(4096)  # until the gateway closes
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        for thread in self.threads:
            thread.join(2)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    ls = Listeners(list(REALS.values()), [5222, 5223, 5269])
    yield ls
    ls.close()


def test_imported_seed_checks_and_runs(listeners: Listeners, tmp_path: Path) -> None:
    from tests.support.gateway import GatewayProcess

    result = subprocess.run(
        [sys.executable, "-m", "xmppgw", "import-ios", str(DATA / "seed-ios.cfg"),
         "--domain", "example.test", "--control-socket", str(tmp_path / "gw.sock")],
        capture_output=True, text=True, timeout=60, check=True, cwd=ROOT)
    toml = result.stdout.replace("213.134.161.161", VIP)
    for public, local in REALS.items():
        toml = toml.replace(f'"{public}"', f'"{local}"')
    path = tmp_path / "imported.toml"
    path.write_text(toml)
    check = subprocess.run([sys.executable, "-m", "xmppgw", "check", "-c", str(path),
                            "--reach"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                           check=False)
    assert check.returncode == 0, check.stderr
    assert ("reach: 9 of 9 (serverfarm, real, port) answered; "
            "not in service (not counted): 3 of 3 answered") in check.stdout  # the spare

    gw = GatewayProcess(toml, tmp_path / "gw").start()
    try:
        with socket.create_connection((VIP, 5222), timeout=10) as client:
            client.sendall(CLIENT_HEADER)
            reply = b""
            while not reply.endswith(b"version='1.0'>"):
                chunk = client.recv(4096)
                assert chunk, gw.log_text()[-3000:]
                reply += chunk
        assert reply == SERVER_HEADER  # the real's bytes, exactly
        served = [addr for addr, data in listeners.received.items() if data == CLIENT_HEADER]
        assert len(served) == 1 and served[0][0] in list(REALS.values())[:3]  # not the spare
        assert served[0][1] == 5222
    finally:
        code = gw.stop()
    assert code == 0, gw.log_text()[-3000:]
    assert "Traceback" not in gw.log_text()


def test_an_output_file_that_cannot_be_written_is_one_line_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "missing-dir" / "x.toml"
    code = cli.main(["import-ios", str(DATA / "seed-ios.cfg"), "-o", str(target)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"xmppgw: cannot write {target}: No such file or directory" in err
    assert "Traceback" not in err and not target.exists()
