"""`xmppgw check --reach`: every (farm, real, port) a vserver sends traffic to is dialled, and
what does not answer is reported (the seed's warning about a vserver whose service is
missing on the reals). Local listeners on 127.0.6.50-59."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xmppgw import cli, config

BASE = """
[[vserver]]
name = "P5222"
virtual = "127.0.6.50:5222"
serverfarm = "XMPP"

[[vserver]]
name = "P5269"
virtual = "127.0.6.50:5269"
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
[[serverfarm.real]]
address = "127.0.6.51"
[[serverfarm.real]]
address = "127.0.6.52"
"""


@pytest.fixture
def listen() -> Iterator[list[socket.socket]]:
    """Open listeners; the kernel completes handshakes without accept()."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def open_port(socks: list[socket.socket], host: str, port: int, backlog: int = 16) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    socks.append(sock)


def check(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str,
          *extra: str) -> tuple[int, str, str]:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    code = cli.main(["check", "-c", str(path), "--reach", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_all_answer(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                    listen: list[socket.socket]) -> None:
    for host in ("127.0.6.51", "127.0.6.52"):
        for port in (5222, 5269):
            open_port(listen, host, port)
    code, out, err = check(capsys, tmp_path, BASE)
    assert code == 0, err
    assert out.splitlines()[-1].endswith("reach: 4 of 4 (serverfarm, real, port) answered")
    assert err == ""


def test_missing_service_is_reported_per_real_and_port(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, listen: list[socket.socket]) -> None:
    """5222 open, 5269 closed on both reals: the P5269 vserver would fail the whole farm."""
    for host in ("127.0.6.51", "127.0.6.52"):
        open_port(listen, host, 5222)
    code, out, err = check(capsys, tmp_path, BASE)
    assert code == 1
    lines = err.splitlines()
    assert lines[:2] == [
        "reach: serverfarm XMPP, real 127.0.6.51, port 5269: Connection refused (vserver P5269)",
        "reach: serverfarm XMPP, real 127.0.6.52, port 5269: Connection refused (vserver P5269)",
    ]
    assert "faildetect then marks the whole farm FAILED" in lines[2]
    assert len(lines) == 3  # the vserver's port is the diagnosis: no other hint
    assert "reach: 2 of 4 (serverfarm, real, port) answered\n" in out
    assert ": OK: 2 vservers, 1 serverfarms, 2 reals" in out  # the config itself is fine


def test_out_of_service_failures_do_not_count(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, listen: list[socket.socket]) -> None:
    open_port(listen, "127.0.6.51", 5222)
    text = """
[[vserver]]
name = "P5222"
virtual = "127.0.6.50:5222"
serverfarm = "XMPP"

[[vserver]]
name = "OFF"
virtual = "127.0.6.50:5223"
serverfarm = "XMPP"
inservice = false

[[serverfarm]]
name = "XMPP"
[[serverfarm.real]]
address = "127.0.6.51"
[[serverfarm.real]]
address = "127.0.6.53"
inservice = false   # the spare, switched off
"""
    code, out, err = check(capsys, tmp_path, text)
    assert code == 0, err
    assert ("reach: serverfarm XMPP, real 127.0.6.53, port 5222: Connection refused "
            "(vserver P5222) (not in service: not counted)") in err
    assert "real 127.0.6.51, port 5223: Connection refused (vserver OFF) (not in service" in err
    # The count is over what counts, as the exit status is; the spares are told apart.
    assert out.splitlines()[-1].endswith(
        "reach: 1 of 1 (serverfarm, real, port) answered; "
        "not in service (not counted): 0 of 3 answered")
    assert "FAILED" not in err


def test_routes_real_ports_and_dedup(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     listen: list[socket.socket]) -> None:
    open_port(listen, "127.0.6.54", 15222)
    text = """
[[vserver]]
name = "C2S"
virtual = "127.0.6.50:5222"
serverfarm = "XMPP"
[[vserver.route]]
domain = "muc.example.test"
serverfarm = "MUC"

[[vserver]]
name = "S2S"
virtual = "127.0.6.50:5269"
serverfarm = "MUC"

[[serverfarm]]
name = "XMPP"
[[serverfarm.real]]
address = "127.0.6.54:15222"

[[serverfarm]]
name = "MUC"
[[serverfarm.real]]
address = "127.0.6.55:15269"
"""
    path = tmp_path / "gw.toml"
    path.write_text(text)
    assert cli.reach_targets(config.load(path)) == [
        ("XMPP", "127.0.6.54", 15222, ("C2S",), True),
        ("MUC", "127.0.6.55", 15269, ("C2S", "S2S"), True),
    ]
    code, out, err = check(capsys, tmp_path, text)
    assert code == 1
    assert err.splitlines()[0] == ("reach: serverfarm MUC, real 127.0.6.55, port 15269: "
                                   "Connection refused (vserver C2S, S2S)")
    assert "reach: 1 of 2" in out
    # The real gives its own port: not "a vserver whose port its reals do not serve".
    assert "a vserver whose port" not in err
    assert "a real that does not answer on the port it gives" in err


def test_a_real_that_never_answers_times_out(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path,
                                             listen: list[socket.socket]) -> None:
    """A listener whose accept queue is full drops SYNs: the connect waits, then gives up."""
    open_port(listen, "127.0.6.56", 5222, backlog=0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.6.56", 5222))
        fillers.append(filler)
    time.sleep(0.2)
    text = """
[[vserver]]
name = "P5222"
virtual = "127.0.6.50:5222"
serverfarm = "SLOW"

[[serverfarm]]
name = "SLOW"
[[serverfarm.real]]
address = "127.0.6.56"
"""
    try:
        started = time.monotonic()
        code, _, err = check(capsys, tmp_path, text, "--timeout", "0.3")
        elapsed = time.monotonic() - started
    finally:
        for filler in fillers:
            filler.close()
    assert code == 1
    assert "real 127.0.6.56, port 5222: no answer within 0.3 s (vserver P5222)" in err
    assert elapsed < 2.0  # concurrent: one timeout for the lot


def test_bad_config_is_not_dialled(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = check(capsys, tmp_path, BASE.replace('serverfarm = "XMPP"', 'serverfarm = "X"'))
    assert code == 1 and "no serverfarm named 'X'" in err and "reach" not in out


def test_both_mode_vserver_dials_the_direct_tls_port_too(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path,
                                                          listen: list[socket.socket]) -> None:
    """A `mode = "both"` vserver sends ClientHellos to each real's direct-TLS port (the real's
    own `directtls_port`, else the farm's): a real that serves 5222 but not that port fails."""
    open_port(listen, "127.0.6.57", 5222)
    open_port(listen, "127.0.6.58", 5222)
    open_port(listen, "127.0.6.58", 15223)
    text = """
[[vserver]]
name = "C2S"
virtual = "127.0.6.50:5222"
mode = "both"
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
[[serverfarm.real]]
address = "127.0.6.57"
[[serverfarm.real]]
address = "127.0.6.58"
directtls_port = 15223
"""
    path = tmp_path / "gw.toml"
    path.write_text(text)
    assert cli.reach_targets(config.load(path)) == [
        ("XMPP", "127.0.6.57", 5222, ("C2S",), True),
        ("XMPP", "127.0.6.57", 5223, ("C2S",), True),
        ("XMPP", "127.0.6.58", 5222, ("C2S",), True),
        ("XMPP", "127.0.6.58", 15223, ("C2S",), True),
    ]
    code, out, err = check(capsys, tmp_path, text)
    assert code == 1
    assert err.splitlines()[0] == ("reach: serverfarm XMPP, real 127.0.6.57, port 5223: "
                                   "Connection refused (vserver C2S)")
    assert "reach: 3 of 4" in out
    assert "a vserver whose port" not in err  # 5223 is the farm's directtls_port
    assert "a real that does not answer on the port it gives" in err
