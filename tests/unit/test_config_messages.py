"""Config problems read top to bottom: each at its own line (array elements included), in
line order, farms named by their name, and a file that is not UTF-8 told where."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.configs import MINIMAL, refused
from xmppgw import config


def test_every_bad_domain_is_reported_at_its_index_and_line() -> None:
    text = MINIMAL.replace('domains = ["example.test"]', """domains = [
    "example.test",
    "bad domain",
    "ok.test",
    "also bad!",
    7,
]""")
    assert refused(text) == [
        "test.toml:4: gateway.domains[1]: 'bad domain' is not a domain name or *.suffix",
        "test.toml:6: gateway.domains[3]: 'also bad!' is not a domain name or *.suffix",
        "test.toml:7: gateway.domains[4]: must be a string, not an integer (7)",
    ]


def test_kinds_and_zones_are_checked_element_by_element_too() -> None:
    text = MINIMAL.replace('serverfarm = "F"', 'serverfarm = "F"\nkinds = ["c2s", "x", "y"]')
    problems = refused(text)
    assert [p.split(": ")[1] for p in problems] == ["vserver[0] (V).kinds[1]", "vserver[0] (V).kinds[2]"]
    problems = refused(MINIMAL + '\n[srv]\nlisten = "127.0.0.1:5300"\nzones = ["a.test", "b c"]\n')
    assert problems == ["test.toml:17: srv.zones[1]: 'b c' is not a domain name or *.suffix"]


def test_a_table_written_as_an_array_gets_its_line() -> None:
    [problem] = refused(MINIMAL.replace("[gateway]", "[[gateway]]"))
    assert problem == "test.toml:1: gateway: must be a table, not an array"


def test_problems_come_in_line_order() -> None:
    """The vserver's problem is found after the farm's (vservers are read later), but it
    sits above it in the file."""
    text = MINIMAL.replace('serverfarm = "F"', 'serverfarm = "F"\nmode = "x"').replace(
        'name = "F"', 'name = "F"\npredictor = "y"').replace("[gateway]", "[gateway]\nworkers = 0")
    lines = [int(p.split(":")[1]) for p in refused(text)]
    assert len(lines) == 3 and lines == sorted(lines)


def test_a_farm_is_named_by_its_name_where_known() -> None:
    text = MINIMAL + '\n[[serverfarm]]\nname = "XMPP"\npredictor = "z"\n' \
        '[[serverfarm.real]]\naddress = "127.0.0.3"\nweight = 0\n' \
        '\n[[serverfarm]]\npredictor = "z"\n'
    problems = refused(text)
    assert problems[0].startswith("test.toml:17: serverfarm[1] (XMPP).predictor: must be one of")
    assert problems[1] == "test.toml:20: serverfarm[1] (XMPP).real[0].weight: must be at least 1"
    assert problems[2] == "test.toml:22: serverfarm[2].name: is required"  # no name known
    assert problems[3].startswith("test.toml:23: serverfarm[2].predictor: ")


def test_resolve_names_the_farm_too(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "F"', f'name = "F"\n[[serverfarm.probe]]\ntype = "xmpp-ping"\n'
                           f'jid = "a@example.test"\npassword_file = "{tmp_path}/missing"')
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    [problem] = info.value.problems
    assert problem.startswith(f"{path}:14: serverfarm[0] (F).probe[0].password_file: cannot read")


def test_a_file_that_is_not_utf8_is_told_where(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_bytes(MINIMAL.replace('name = "V"', 'name = "V\xe9"').encode("latin-1"))
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    offset = MINIMAL.index('name = "V"') + len('name = "V')
    assert info.value.problems == [
        f"{path}:5: not UTF-8 text: invalid continuation byte 0xe9 at byte {offset} (column 10)"]


def test_a_byte_order_mark_is_taken_off(tmp_path: Path) -> None:
    """Editors on Windows start UTF-8 files with one; TOML's parser would call it a bad
    statement on line 1."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert config.load(path).serverfarms[0].name == "F"


def test_a_huge_weight_names_the_weight_s_own_bound() -> None:
    text = MINIMAL.replace('address = "127.0.0.2"',
                           'address = "127.0.0.2"\nweight = 99999999999999999999')
    with pytest.raises(config.ConfigError) as caught:
        config.loads(text, "w.toml")
    [problem] = caught.value.problems
    assert "weight: must be at most 255" in problem, problem
