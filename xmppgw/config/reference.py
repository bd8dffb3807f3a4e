"""The configuration reference (docs/configuration.md), generated from the model.

Every key's meaning, unit and IOS name live beside its default, in the metadata of its
field in `model` (`_k(...)`); this module only lays them out, one Markdown table per TOML
section. `tests/unit/test_config_reference.py` fails when a field has no description, when a
key the loader reads is missing here, or when docs/configuration.md is not this output.

    xmppgw config-reference > docs/configuration.md

(`REGENERATE`, as the page's header says; `-o FILE` and `python -m
xmppgw.config.reference` write the same text.)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

from xmppgw.config.model import (
    MAX_INTEGER,
    MAX_SECONDS,
    Faildetect,
    GatewayConfig,
    Keepalive,
    Limits,
    ProbeConfig,
    RealConfig,
    Route,
    ServerfarmConfig,
    SrvConfig,
    SrvUpdate,
    VserverConfig,
)

REGENERATE = "xmppgw config-reference > docs/configuration.md"


@dataclass(frozen=True)
class Section:
    """One TOML table: its key path (`("serverfarm", "real")`), whether it is an array of
    tables (`[[...]]`), the model class its keys fill, other paths with the same keys, and
    a line of introduction."""

    path: tuple[str, ...]
    array: bool
    cls: type
    intro: str
    also: tuple[tuple[str, ...], ...] = ()

    @property
    def title(self) -> str:
        names = [self.path, *self.also]
        return " and ".join(_table_name(p, self.array) for p in names)


def _table_name(path: tuple[str, ...], array: bool) -> str:
    name = ".".join(path)
    return f"`[[{name}]]`" if array else f"`[{name}]`"


# In the order a config file is usually written.
SECTIONS: tuple[Section, ...] = (
    Section(("gateway",), False, GatewayConfig,
            "The gateway as a whole, and the defaults its vservers and serverfarms inherit."),
    Section(("gateway", "keepalive"), False, Keepalive,
            "TCP keepalive and `TCP_USER_TIMEOUT` on both legs. Relayed XMPP streams sit idle "
            "for hours, so the gateway never times them out itself; the kernel notices a "
            "vanished peer instead."),
    Section(("vserver",), True, VserverConfig,
            "A virtual server, as IOS `ip slb vserver`: an address to listen on and the farm "
            "its streams go to."),
    Section(("vserver", "route"), True, Route,
            "Sends streams of one kind and/or to one domain to another farm than the "
            "vserver's default. The first match wins."),
    Section(("vserver", "limits"), False, Limits,
            "Per-vserver admission limits (IOS `synguard` and `maxconns`). A connection counts "
            "from accept, before its header. Over a limit a cleartext stream gets "
            "`<policy-violation/>` and a direct-TLS one is closed. With `workers > 1` the "
            "per-source limits apply per worker."),
    Section(("serverfarm",), True, ServerfarmConfig,
            "A serverfarm, as IOS `ip slb serverfarm`: the reals, how one is picked, and how "
            "attempts on them are timed."),
    Section(("serverfarm", "real"), True, RealConfig,
            "One real server of the farm, as IOS `real IP`."),
    Section(("serverfarm", "real", "faildetect"), False, Faildetect,
            "IOS `faildetect numconns N numclients M`: whichever comes first marks the real "
            "FAILED."),
    Section(("serverfarm", "probe"), True, ProbeConfig,
            "An active health probe. A real's own `[[serverfarm.real.probe]]` list replaces "
            "the farm's. A real is PROBE_FAILED while any one of its probes has failed `fall` "
            "runs in a row.", also=(("serverfarm", "real", "probe"),)),
    Section(("srv",), False, SrvConfig,
            "The SRV records published from live health: an embedded authoritative server "
            "(`listen`), RFC 2136 updates (`[srv.update]`), or both. Names are absolute, "
            "lower case, without the trailing dot."),
    Section(("srv", "update"), False, SrvUpdate,
            "RFC 2136 updates, signed with a TSIG key, to a primary you run (BIND, Knot, "
            "PowerDNS)."),
)


def key_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that a file sets (not those marked `NOT_A_KEY`)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("not_a_key")]


def toml_key(f: dataclasses.Field) -> str:
    return f.metadata.get("toml") or f.name


def documented_keys(section: Section) -> set[str]:
    return {toml_key(f) for f in key_fields(section.cls)}


_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
          "tuple[str, ...]": "array of strings"}


def type_name(f: dataclasses.Field) -> str:
    """The TOML type: the field's `type` metadata, else read from its annotation."""
    if f.metadata.get("type"):
        return f.metadata["type"]
    annotation = str(f.type).removesuffix(" | None")
    if annotation not in _TYPES:
        raise ValueError(f"{f.name}: say its TOML type (`type=` in model._k): {f.type}")
    return _TYPES[annotation]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("shown"):
        return f.metadata["shown"]
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    if f.default is None:
        return "none"
    return f"`{_toml_value(f.default)}`"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|")


def render() -> str:
    """docs/configuration.md."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from xmppgw/config/model.py: do not edit by hand. Regenerate with",
        f"     `{REGENERATE}`. -->",
        "",
        ("The gateway reads one TOML file (`xmppgw run -c FILE`; `xmppgw check -c FILE` "
         "validates it). This page is generated from the configuration model, where each "
         "key's default, unit, IOS name and meaning are written once."),
        "",
        ("- Durations are in seconds; a whole number (`retry = 30`) is as good as `30.0`. "
         f"A duration is at most {MAX_SECONDS} s (a day) and an integer at most "
         f"{MAX_INTEGER}, unless its key gives another bound (`weight`, `retry`, the "
         "keepalive keys, ports, percentages)."),
        ("- A key not listed here is refused, with a suggestion when it is close to a known "
         "one; every problem names the file, the line and the key."),
        ("- *IOS* names the Cisco IOS SLB command a key stands for; *none* means IOS has no "
         "such setting."),
        "",
    ]
    for section in SECTIONS:
        out += [f"## {section.title}", "", section.intro, "",
                "| key | type | default | unit | IOS | meaning |",
                "|---|---|---|---|---|---|"]
        for f in key_fields(section.cls):
            m = f.metadata
            out.append("| " + " | ".join([
                f"`{toml_key(f)}`", _cell(type_name(f)), _cell(default_text(f)),
                _cell(m.get("unit")), _cell(m.get("ios") and _ios(m["ios"])), _cell(m.get("doc")),
            ]) + " |")
        out.append("")
    return "\n".join(out)


def _ios(text: str) -> str:
    """IOS commands in code spans; prose such as "none (HAProxy `backup`)" as it is."""
    return text if "`" in text or text.startswith(("none", "the ")) else f"`{text}`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xmppgw config-reference",
                                     description="print the configuration reference (Markdown)")
    parser.add_argument("-o", "--output", help="write it to this file (docs/configuration.md)")
    args = parser.parse_args(argv)
    return write(args.output)


def write(output: str | None) -> int:
    text = render()
    if output:
        with open(output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
