"""CLI polish (issue 19): `--version`, "did you mean" for a misspelt key or value, a clear
word when the control socket's directory cannot be made, and `config-reference`."""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support.configs import MINIMAL, refused
from xmppgw import cli, config
from xmppgw.config.reference import render


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"xmppgw {version('xmppgw')}\n"


def test_a_misspelt_key_gets_a_suggestion() -> None:
    [problem] = refused(MINIMAL.replace('name = "F"', 'name = "F"\nmax_conecting = 4'))
    assert problem.startswith("test.toml:11: serverfarm[0] (F).max_conecting: unknown key (known "
                              "here: ")
    assert problem.endswith("; did you mean 'max_connecting'?")
    [problem] = refused(MINIMAL.replace('address = "127.0.0.2"',
                                        'address = "127.0.0.2"\nwieght = 2'))
    assert problem.endswith("; did you mean 'weight'?")
    [problem] = refused(MINIMAL.replace("[gateway]", "[gateway]\nmetrcs = \"127.0.0.1:9\""))
    assert problem.endswith("; did you mean 'metrics'?")  # known even when not given


def test_a_key_far_from_every_known_one_gets_no_guess() -> None:
    [problem] = refused(MINIMAL.replace('name = "F"', 'name = "F"\nzzzz = 4'))
    assert problem.endswith(")") and "did you mean" not in problem


def test_a_misspelt_value_gets_a_suggestion() -> None:
    [problem] = refused(MINIMAL.replace('name = "F"', 'name = "F"\npredictor = "leastconn"'))
    assert problem.endswith("must be one of roundrobin, leastconns, sourcehash; "
                            "did you mean 'leastconns'?")
    [problem] = refused(MINIMAL.replace('serverfarm = "F"', 'serverfarm = "F"\nmode = "STARTTLS"'))
    assert problem.endswith("; did you mean 'starttls'?")
    [problem] = refused(MINIMAL.replace('serverfarm = "F"',
                                        'serverfarm = "F"\nkinds = ["c2s", "componnet"]'))
    assert problem.endswith("(known: c2s, s2s, component); did you mean 'component'?")
    [problem] = refused(MINIMAL.replace('name = "F"', 'name = "F"\npredictor = "x"'))
    assert "did you mean" not in problem


def write(tmp_path: Path, control_socket: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(MINIMAL.replace("[gateway]", f"[gateway]\ncontrol_socket = {control_socket!r}"
                                    .replace("'", '"')), encoding="utf-8")
    return path


def test_run_says_when_the_socket_directory_cannot_be_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A parent that is a file: refused before anything starts, naming the key and the fix."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = write(tmp_path, str(blocker / "run" / "xmppgw.sock"))
    assert cli.main(["run", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: gateway.control_socket = ")
    assert f"the directory {blocker / 'run'} cannot be created: {blocker} is not a directory" in err
    assert "set gateway.control_socket to another path" in err


def test_run_says_which_directory_to_create(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory this user may not create (as /run/xmppgw for a service user): the message
    names the directory to create, how, and the key to set instead. (The tests may run as
    root, whom os.access never refuses, so the refusal is simulated.)"""
    parent = tmp_path / "run"
    parent.mkdir()
    path = write(tmp_path, str(parent / "xmppgw" / "xmppgw.sock"))
    cfg = config.load(path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == parent
                        else real_access(p, mode))
    problem = cli.control_socket_problem(cfg)
    assert problem is not None
    assert f"the directory {parent / 'xmppgw'} does not exist" in problem
    assert "install -d -m 0750 -o " in problem and "RuntimeDirectory=xmppgw" in problem
    assert "or set gateway.control_socket to a path" in problem


def test_a_socket_directory_that_can_be_made_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, str(tmp_path / "new" / "deeper" / "xmppgw.sock"))
    assert cli.control_socket_problem(config.load(path)) is None
    assert cli.control_socket_problem(config.loads(MINIMAL)) is None  # no socket: nothing to say
    assert not (tmp_path / "new").exists()  # the check creates nothing


def test_config_reference_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config-reference"]) == 0
    assert capsys.readouterr().out == render()
    out = tmp_path / "ref.md"
    assert cli.main(["config-reference", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render()
