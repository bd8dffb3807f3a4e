"""Config texts and helpers the config tests share."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from xmppgw import config
from xmppgw.config import ConfigError

MINIMAL = """\
[gateway]
domains = ["example.test"]

[[vserver]]
name = "V"
virtual = "127.0.0.1:5222"
serverfarm = "F"

[[serverfarm]]
name = "F"

[[serverfarm.real]]
address = "127.0.0.2"
"""


def refused(text: str) -> list[str]:
    """The problems `loads` reports for `text` (read as "test.toml"); it must refuse it."""
    with pytest.raises(ConfigError) as info:
        config.loads(text, "test.toml")
    return info.value.problems


# --- a gateway in front of one farm, for the integration tests ---------------------------------


def toml_value(value: Any) -> str:
    """`value` as TOML: strings, booleans, numbers, lists and inline tables (the values a
    test config holds; a JSON string is a TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_table(header: str, keys: Mapping[str, Any]) -> str:
    """`[header]` (or `[[header]]` written so) and its keys, one a line, None left out."""
    lines = [f"{k} = {toml_value(v)}" for k, v in keys.items() if v is not None]
    return "\n".join([f"\n{header}", *lines]) + "\n"


def gateway_config(*, domain: str, vip: str, reals: Iterable[Mapping[str, Any]],
                   control: str | Path | None = None, gateway: Mapping[str, Any] | None = None,
                   vserver: Mapping[str, Any] | None = None,
                   farm: Mapping[str, Any] | None = None,
                   probes: Iterable[Mapping[str, Any]] = (), extra: str = "") -> str:
    """One gateway, one vserver on `vip` ("host:port") and one farm of `reals` (each real's
    keys, `address` first), as the integration tests write them.

    `[gateway]` gets `domains = [domain]`, `control_socket` if `control` is given, then
    `gateway`'s keys. The vserver is `{"name": "P5222", "mode": "starttls", "serverfarm":
    "XMPP"}` updated with `vserver`, the farm `{"name": "XMPP", "predictor": "leastconns"}`
    updated with `farm`; a key given as None is left out (the config's default). `probes`
    are the farm's `[[serverfarm.probe]]` tables; `extra` is TOML text added at the end
    (more vservers, `[srv]`)."""
    gateway_keys = {"control_socket": None if control is None else str(control),
                    "domains": [domain], **(gateway or {})}
    farm_keys = {"name": "XMPP", "predictor": "leastconns", **(farm or {})}
    vserver_keys = {"name": "P5222", "virtual": vip, "mode": "starttls",
                    "serverfarm": farm_keys["name"], **(vserver or {})}
    parts = [toml_table("[gateway]", gateway_keys), toml_table("[[vserver]]", vserver_keys),
             toml_table("[[serverfarm]]", farm_keys)]
    parts += [toml_table("[[serverfarm.probe]]", probe) for probe in probes]
    parts += [toml_table("[[serverfarm.real]]", real) for real in reals]
    return "".join(parts) + extra
