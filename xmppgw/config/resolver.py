"""The I/O step: what a checked config names on this machine, looked up and read.

`loads` is pure; `resolve` then checks each `Config.external` value: a `control_group`
must exist, a `key_file` or `tls_ca_file` must be a file, and a probe's `password_file` is
read (its first line, newline dropped) into the probe's `password`. Its problems name the
file, line and key like the loader's. The master runs it (`load` is read + `loads` +
`resolve`), and the workers receive its result, so they apply exactly what was checked and
never read a secret themselves.
"""

from __future__ import annotations

import dataclasses
import grp
from pathlib import Path
from typing import Any

from xmppgw.config.loader import loads
from xmppgw.config.locator import KeyPath, problem, table_names
from xmppgw.config.model import Config, ConfigError, ExternalRef


def load(path: str | Path) -> Config:
    """Read, validate and resolve a config file; raises ConfigError listing every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        text = decode(raw)
    except UnicodeDecodeError as exc:
        raise ConfigError([not_utf8(str(path), raw, exc)]) from None
    return resolve(loads(text, str(path)))


def decode(raw: bytes) -> str:
    """A config file's text: UTF-8 (TOML 1.0 §Spec), a byte-order mark at the start taken
    off, as editors on Windows write one. Raises UnicodeDecodeError."""
    return raw.decode("utf-8").removeprefix("\ufeff")


def not_utf8(path: str, raw: bytes, exc: UnicodeDecodeError) -> str:
    """`file:line: not UTF-8 text: invalid start byte 0xff at byte 812 (column 5)`: where
    the first byte that is not UTF-8 sits, so an editor can go to it."""
    line = raw.count(b"\n", 0, exc.start) + 1
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    return (f"{path}:{line}: not UTF-8 text: {exc.reason} 0x{raw[exc.start]:02x} at byte "
            f"{exc.start} (column {column})")


def resolve(config: Config) -> Config:
    """The config with its groups and files checked and its secrets read; `external` empty.

    Raises ConfigError with every problem found."""
    problems: list[str] = []
    names = table_names(config.serverfarms, config.vservers)
    for ref in config.external:
        message, secret = _check(ref)
        if message is not None:
            problems.append(problem(ref.where, ref.keypath, message, names))
        elif secret is not None:
            config = _set_password(config, ref.keypath[:-1], secret)
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(config, external=())


def _check(ref: ExternalRef) -> tuple[str | None, str | None]:
    """(problem, secret read): at most one of them is set."""
    if ref.kind == "group":
        try:
            grp.getgrnam(ref.value)
        except KeyError:
            return f"no group named {ref.value!r} on this machine", None
        return None, None
    if ref.kind == "file":
        return (None if Path(ref.value).is_file() else f"{ref.value}: no such file"), None
    if ref.kind == "secret":
        try:
            text = Path(ref.value).read_text(encoding="utf-8")
        except OSError as exc:
            return f"cannot read {ref.value}: {exc.strerror}", None
        except UnicodeDecodeError:
            return f"{ref.value} is not UTF-8 text", None
        password = text.splitlines()[0] if text else ""
        if not password:
            return f"{ref.value} is empty", None
        return None, password
    raise ValueError(f"unknown external reference kind {ref.kind!r}")


# TOML table names on a key path, and the Config attribute each is held in.
_ATTRIBUTE = {"serverfarm": "serverfarms", "real": "reals", "probe": "probes"}


def _set_password(node: Any, keypath: KeyPath, password: str) -> Any:
    """`node` with the probe at `keypath` (serverfarm, i, [real, j,] probe, k) given its
    password. Indexes match: a config that loaded has dropped no table."""
    if not keypath:
        return dataclasses.replace(node, password=password)
    table, index, rest = keypath[0], keypath[1], keypath[2:]
    attribute = _ATTRIBUTE[str(table)]
    items = list(getattr(node, attribute))
    assert isinstance(index, int)
    items[index] = _set_password(items[index], rest, password)
    return dataclasses.replace(node, **{attribute: tuple(items)})
