"""Where a key path sits in the TOML source, so every problem names its line.

tomllib keeps no positions; `Locator` finds them again from the text. `problem` is the one
format every refusal uses, the loader's and `resolve`'s alike:
`file:line: serverfarm[0].real[3].weight: message`.
"""

from __future__ import annotations

import re
from typing import Any

KeyPath = tuple[str | int, ...]


def format_keypath(keypath: KeyPath) -> str:
    out = ""
    for part in keypath:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def where(path: str, line: int | None) -> str:
    """"file:line", or just "file" when no line matched."""
    return f"{path}:{line}" if line else path


def problem(where_: str, keypath: KeyPath, message: str) -> str:
    return f"{where_}: {format_keypath(keypath)}: {message}"


class Locator:
    """Maps a key path such as ("serverfarm", 0, "real", 2, "weight") to a source line.

    tomllib keeps no positions, so this re-reads the text the cheap way: table headers and
    `key =` lines, counting `[[array]]` entries per parent. It only has to be right for
    files tomllib accepted, which keeps it simple.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
    _KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\- ]+?)\s*=""")

    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, tuple[str | int, ...]]] = []
        self._index(text)

    def _index(self, text: str) -> None:
        table: tuple[str | int, ...] = ()
        last_index: dict[tuple[str | int, ...], int] = {}
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                keys = [k.strip().strip("\"'") for k in header.group(2).split(".")]
                path: tuple[str | int, ...] = ()
                for k in keys[:-1]:
                    path += (k,)
                    if path in last_index:
                        path += (last_index[path],)
                path += (keys[-1],)
                if header.group(1) == "[[":
                    last_index[path] = last_index.get(path, -1) + 1
                    path += (last_index[path],)
                table = path
                self.lines.append((number, table))
                continue
            key = self._KEY.match(line)
            if key and not line.lstrip().startswith("#"):
                parts = tuple(k.strip().strip("\"'") for k in key.group(1).split("."))
                self.lines.append((number, table + parts))

    def line_of(self, keypath: tuple[str | int, ...]) -> int | None:
        """The line that best matches: the key itself, else its nearest enclosing table."""
        best, best_len = None, 0
        for number, path in self.lines:
            n = _common_prefix(path, keypath)
            if n == len(path) and n > best_len:
                best, best_len = number, n
        return best


def _common_prefix(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
