"""`xmppgw example-config`: the shipped examples are conf/'s files (package data through the
xmppgw/examples symlink), printed as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmppgw.cli import main

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_without_a_name_it_lists_conf(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["example-config"]) == 0
    names = capsys.readouterr().out.split()
    assert names == sorted(p.name.removesuffix(".toml") for p in CONF.iterdir()
                           if p.suffix in (".toml", ".service"))
    assert {"seed", "demo", "xmppgw.service"} <= set(names)


@pytest.mark.parametrize("name, file", [("seed", "seed.toml"), ("seed.toml", "seed.toml"),
                                        ("xmppgw.service", "xmppgw.service")])
def test_a_name_prints_the_file(name: str, file: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["example-config", name]) == 0
    assert capsys.readouterr().out == (CONF / file).read_text()


def test_an_unknown_name_lists_the_known(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["example-config", "nope"]) == 1
    assert "seed" in capsys.readouterr().err
