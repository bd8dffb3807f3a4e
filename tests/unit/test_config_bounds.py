"""`xmppgw check` catches what would run badly: a farm a vserver uses with no real (every
connection fails), an unused farm (a warning), and numbers beyond any sane bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.configs import MINIMAL, refused
from xmppgw import cli, config

EMPTY_FARM = MINIMAL.replace('serverfarm = "F"', 'serverfarm = "F"\n[[vserver.route]]\n'
                             'kind = "s2s"\nserverfarm = "EMPTY"') + '\n[[serverfarm]]\nname = "EMPTY"\n'


def test_a_farm_a_vserver_uses_with_no_real_is_an_error() -> None:
    [problem] = refused(EMPTY_FARM)
    assert problem == ("test.toml:18: serverfarm[1] (EMPTY): serverfarm 'EMPTY' has no "
                       "[[serverfarm.real]], and vserver V sends connections to it: every one "
                       "would fail")


def test_an_unused_farm_is_a_warning_and_check_still_passes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(MINIMAL + '\n[[serverfarm]]\nname = "SPARE"\n[[serverfarm.real]]\n'
                    'address = "127.0.0.9"\n', encoding="utf-8")
    assert config.load(path).warnings == (
        f"{path}:15: serverfarm[1] (SPARE): no vserver uses this serverfarm",)
    assert cli.main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == f"warning: {path}:15: serverfarm[1] (SPARE): no vserver uses this serverfarm\n"
    assert out.startswith(f"{path}: OK: 1 vservers, 2 serverfarms")
    assert config.loads(MINIMAL).warnings == ()


def test_an_unused_empty_farm_is_only_a_warning() -> None:
    cfg = config.loads(MINIMAL + '\n[[serverfarm]]\nname = "LATER"\n', "t.toml")
    assert cfg.warnings == ("t.toml:15: serverfarm[1] (LATER): no vserver uses this serverfarm",)


@pytest.mark.parametrize("farm_key, real_key, expect", [
    ("", "weight = 10000000000000000000000", "real[0].weight: must be at most 255 (IOS's weight range)"),
    ("", "weight = 256", "real[0].weight: must be at most 255 (IOS's weight range)"),
    ("", "retry = 1e300", "real[0].retry: must be at most 3600 (IOS's retry range)"),
    ("", "retry = 3601", "real[0].retry: must be at most 3600"),
    ("", "maxconns = 100000000000000000000000", "real[0].maxconns: must be at most 2147483647"),
    ("", "maxconns = 1e23", "real[0].maxconns: must be an integer, not a number"),
    ("queue_timeout = 1e300", "", "queue_timeout: must be at most 86400 (a day)"),
    ("connect_timeout = 86401", "", "connect_timeout: must be at most 86400 (a day)"),
    ("queue_length = 3000000000", "", "queue_length: must be at most 2147483647"),
])
def test_numbers_have_upper_bounds(farm_key: str, real_key: str, expect: str) -> None:
    text = MINIMAL.replace('name = "F"', f'name = "F"\n{farm_key}').replace(
        'address = "127.0.0.2"', f'address = "127.0.0.2"\n{real_key}')
    [problem] = refused(text)
    assert f"serverfarm[0] (F).{expect}" in problem


def test_the_bounds_themselves_are_accepted() -> None:
    text = MINIMAL.replace('name = "F"', 'name = "F"\nqueue_timeout = 86400').replace(
        'address = "127.0.0.2"', 'address = "127.0.0.2"\nweight = 255\nretry = 3600\n'
        'maxconns = 2147483647')
    real = config.loads(text).farm("F").reals[0]
    assert (real.weight, real.retry, real.maxconns) == (255, 3600.0, 2147483647)
    limits = MINIMAL.replace('serverfarm = "F"', 'serverfarm = "F"\n[vserver.limits]\n'
                             'rate_per_ip = 1000001')
    assert refused(limits)[0].endswith("rate_per_ip: must be at most 1000000 "
                                       "(connections a second)")
