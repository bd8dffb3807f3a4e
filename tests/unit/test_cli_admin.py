"""The admin commands (`show`, `real`, `vserver`, `reload`) and their arguments: the ones
that only talk to the running gateway read its control socket even from a config being
edited; every `--drain` is checked alike; argument errors exit 2 (argparse's usage status)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.configs import MINIMAL
from xmppgw import cli


def write(tmp_path: Path, text: str) -> tuple[Path, Path]:
    """The config at gw.toml, with a control socket nobody listens on."""
    sock = tmp_path / "gw.sock"
    path = tmp_path / "gw.toml"
    path.write_text(text.replace("[gateway]", f'[gateway]\ncontrol_socket = "{sock}"'),
                    encoding="utf-8")
    return path, sock


BAD = MINIMAL.replace('name = "F"', 'name = "F"\npredictor = "leastconn"\nnat = "x"')


@pytest.mark.parametrize("argv", [
    ["show", "reals"],
    ["show", "serverfarms", "detail", "--json"],
    ["real", "F", "127.0.0.2", "no-inservice", "--drain", "60"],
    ["vserver", "V", "inservice"],
])
def test_commands_that_only_talk_to_the_gateway_use_a_config_being_edited(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Two problems unrelated to the socket: a warning line, then the gateway is asked (here
    nobody answers, which is the proof it was asked)."""
    path, sock = write(tmp_path, BAD)
    assert cli.main([*argv, "-c", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"xmppgw: warning: {path} has 2 problems (`xmppgw check -c {path}` "
                      "lists them); only its gateway.control_socket is used here")
    assert err[1].startswith(f"xmppgw: cannot reach the gateway at {sock}: ")
    assert len(err) == 2


def test_reload_still_refuses_a_bad_config(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = write(tmp_path, BAD)
    assert cli.main(["reload", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "predictor: must be one of" in err and "cannot reach" not in err
    assert "warning" not in err and "not reloaded" in err


@pytest.mark.parametrize("text, expect", [
    (BAD.replace("[gateway]", "[gateway]\ncontrol_socket = 5").replace(
        'control_socket = "', 'xcontrol_socket = "'), "control_socket: must be a string"),
    (BAD + "\n[[[", "TOML syntax error"),
])
def test_a_bad_socket_value_or_no_toml_still_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expect: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    assert cli.control_socket_of(str(path)) is None
    err = capsys.readouterr().err
    assert expect in err and "cannot reach" not in err and "warning" not in err


def test_a_good_config_gives_its_socket_quietly(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path, sock = write(tmp_path, MINIMAL)
    assert cli.control_socket_of(str(path)) == str(sock)
    (tmp_path / "plain.toml").write_text(MINIMAL, encoding="utf-8")
    assert cli.control_socket_of(str(tmp_path / "plain.toml")) == ""
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "NaN", "x", "1e400"])
@pytest.mark.parametrize("argv", [
    ["run", "--takeover"],
    ["real", "F", "127.0.0.2", "no-inservice"],
    ["vserver", "V", "no-inservice"],
])
def test_every_drain_is_finite_and_not_negative(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        value: str) -> None:
    path, _ = write(tmp_path, MINIMAL)
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "-c", str(path), f"--drain={value}"])
    assert info.value.code == 2
    assert f"argument --drain: must be 0 or more seconds, not {value!r}" in (
        capsys.readouterr().err)


def test_drain_values_that_are_fine() -> None:
    assert cli.drain_seconds("0") == 0.0
    assert cli.drain_seconds("600") == 600.0
    assert cli.drain_seconds("1.5") == 1.5
    assert str(cli.drain_seconds("-0")) == "0.0"  # not -0.0 in the log


def test_drain_with_inservice_is_a_usage_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = write(tmp_path, MINIMAL)
    assert cli.main(["real", "F", "127.0.0.2", "inservice", "--drain", "5",
                     "-c", str(path)]) == 2
    assert capsys.readouterr().err == "xmppgw: --drain goes with no-inservice\n"


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "x"])
def test_check_timeout_is_finite_and_positive(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    path, _ = write(tmp_path, MINIMAL)
    with pytest.raises(SystemExit) as info:
        cli.main(["check", "-c", str(path), "--reach", f"--timeout={value}"])
    assert info.value.code == 2
    assert f"argument --timeout: must be more than 0 seconds, not {value!r}" in (
        capsys.readouterr().err)
    assert cli.timeout_seconds("0.5") == 0.5


def test_a_gateway_that_takes_the_connection_but_never_answers_is_named_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not "cannot reach": the kernel accepted for it (a stopped or overloaded gateway)."""
    import errno

    from xmppgw.control import server

    def silent(path: object, payload: object, timeout: float) -> dict:
        raise TimeoutError(errno.ETIMEDOUT, f"connected, but got no answer within {timeout:g} s")

    monkeypatch.setattr(server, "request", silent)
    path, sock = write(tmp_path, MINIMAL)
    assert cli.main(["show", "reals", "-c", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"xmppgw: no answer from the gateway at {sock}: connected, but got no answer within 30 s"]


def test_socket_names_the_gateway_when_the_config_does_not_even_parse(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--socket PATH` instead of `-c`: the way in when the file on disk is half edited."""
    path, sock = write(tmp_path, MINIMAL + "\nbogus = \n")
    assert cli.main(["show", "reals", "-c", str(path)]) == 1
    assert "TOML syntax error" in capsys.readouterr().err
    for argv in (["show", "reals"], ["real", "F", "127.0.0.2", "no-inservice"],
                 ["vserver", "V", "inservice"]):
        assert cli.main([*argv, "--socket", str(sock)]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"xmppgw: cannot reach the gateway at {sock}: No such file or directory"]
    with pytest.raises(SystemExit) as usage:  # one of the two, not both
        cli.main(["show", "reals", "-c", str(path), "--socket", str(sock)])
    assert usage.value.code == 2
