"""The configuration reference: generated from the model, complete, and current.

Every key's description lives beside its default in `xmppgw/config/model.py`; these tests
fail when a key is added without one, when the reference and the loader disagree about
which keys exist, or when docs/configuration.md is stale."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from xmppgw import config
from xmppgw.config import loader, model
from xmppgw.config.reference import (
    REGENERATE,
    SECTIONS,
    default_text,
    documented_keys,
    key_fields,
    render,
    toml_key,
    type_name,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "configuration.md"

# Every section present, with only its required keys: what the loader then knows in each
# table is exactly the "known here" list an operator sees.
FULL = [
    ("[gateway]", []),
    ("[gateway.keepalive]", []),
    ("[[serverfarm]]", ['name = "F"']),
    ("[[serverfarm.probe]]", ['type = "tcp"']),
    ("[[serverfarm.real]]", ['address = "127.0.0.2"']),
    ("[serverfarm.real.faildetect]", []),
    ("[[serverfarm.real.probe]]", ['type = "tcp"']),
    ("[[vserver]]", ['name = "V"', 'virtual = "127.0.0.1:5222"', 'serverfarm = "F"']),
    ("[[vserver.route]]", ['kind = "s2s"', 'serverfarm = "F"']),
    ("[vserver.limits]", []),
    ("[srv]", ['zones = ["example.test"]']),
    ("[srv.update]", ['server = "127.0.0.1"']),
]


def full_text(extra: dict[str, str] | None = None) -> str:
    extra = extra or {}
    return "\n".join("\n".join([header, *lines, *([extra[header]] if header in extra else [])])
                     for header, lines in FULL) + "\n"


def header_of(path: tuple[str, ...], array: bool) -> str:
    name = ".".join(path)
    return f"[[{name}]]" if array else f"[{name}]"


def test_the_full_config_loads() -> None:
    config.loads(full_text(), "full.toml")


def test_every_key_has_a_description_type_and_default() -> None:
    missing = []
    for section in SECTIONS:
        for f in key_fields(section.cls):
            if not (f.metadata.get("doc") or "").strip():
                missing.append(f"{section.cls.__name__}.{f.name}")
            type_name(f)  # raises if the TOML type cannot be told
            assert default_text(f)
    assert not missing, (
        f"these config fields have no description: {', '.join(missing)}; give each one "
        f"`_k(..., doc=...)` in xmppgw/config/model.py, then run `{REGENERATE}`")


def test_every_config_class_is_in_the_reference() -> None:
    documented = {s.cls for s in SECTIONS}
    for cls in (model.GatewayConfig, model.Keepalive, model.VserverConfig, model.Route,
                model.Limits, model.ServerfarmConfig, model.RealConfig, model.Faildetect,
                model.ProbeConfig, model.SrvConfig, model.SrvUpdate):
        assert cls in documented, cls.__name__


def test_the_reference_is_current() -> None:
    assert REFERENCE.exists(), f"docs/configuration.md is missing: run `{REGENERATE}`"
    assert REFERENCE.read_text(encoding="utf-8") == render(), (
        f"docs/configuration.md is stale (the config model changed): run `{REGENERATE}`")


def loader_keys(monkeypatch: pytest.MonkeyPatch, text: str) -> dict[tuple[str, ...], set[str]]:
    """The keys the loader knows in each table it reads, by table path (indexes dropped)."""
    seen: dict[tuple[str, ...], set[str]] = {}
    done = loader._Section.done

    def record(self: loader._Section) -> None:
        path = tuple(k for k in self.keypath if isinstance(k, str))
        seen.setdefault(path, set()).update(self.used)
        done(self)

    monkeypatch.setattr(loader._Section, "done", record)
    config.loads(text, "full.toml")
    return seen


def test_the_documented_keys_are_the_loaders(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = loader_keys(monkeypatch, full_text())
    expected: dict[tuple[str, ...], set[str]] = {}
    for section in SECTIONS:
        for path in (section.path, *section.also):
            expected[path] = documented_keys(section)
    top = seen.pop(())
    assert top == {s.path[0] for s in SECTIONS if len(s.path) == 1}
    assert set(seen) == set(expected), "a table the loader reads is not in SECTIONS (or back)"
    for path, keys in expected.items():
        assert seen[path] == keys, (
            f"[{'.'.join(path)}]: read by the loader only: {sorted(seen[path] - keys)}; "
            f"documented only: {sorted(keys - seen[path])}")


def test_each_documented_key_is_accepted_in_its_table() -> None:
    """Each key written into its table is never refused as unknown (its value may be)."""
    for section in SECTIONS:
        for path in (section.path, *section.also):
            header = header_of(path, section.array)
            present = {line.split(" = ")[0] for h, lines in FULL if h == header for line in lines}
            for f in key_fields(section.cls):
                key = toml_key(f)
                if key in present or type_name(f).startswith(("table", "array of tables")):
                    continue  # set already, or a table of its own (FULL has each one)
                try:
                    config.loads(full_text({header: f"{key} = 1"}), "full.toml")
                except config.ConfigError as exc:
                    unknown = [p for p in exc.problems if "unknown key" in p]
                    assert not unknown, f"{header} {key}: {unknown}"


def test_toml_names_differ_from_field_names_where_the_loader_says() -> None:
    names = {(s.cls.__name__, f.name): toml_key(f) for s in SECTIONS for f in key_fields(s.cls)}
    assert names[("ServerfarmConfig", "reals")] == "real"
    assert names[("ServerfarmConfig", "probes")] == "probe"
    assert names[("RealConfig", "probes")] == "probe"
    assert names[("VserverConfig", "routes")] == "route"
    assert "implicit" not in {f.name for f in key_fields(model.ProbeConfig)}
    assert all(dataclasses.fields(model.ProbeConfig))


def test_the_reference_has_a_table_per_section_with_ios_names() -> None:
    text = render()
    for title in ("## `[gateway]`", "## `[[serverfarm.real]]`",
                  "## `[[serverfarm.probe]]` and `[[serverfarm.real.probe]]`", "## `[srv.update]`"):
        assert title in text
    assert "| `weight` | integer | `8` |  | `weight` | Share of new connections: 1 to 255, IOS's range. |" in text
    assert "`faildetect numconns N`" in text
