"""Where a key path sits in the TOML source, so every problem names its line.

tomllib keeps no positions; `Locator` finds them again from the text. `problem` is the one
format every refusal uses, the loader's and `resolve`'s alike:
`file:line: serverfarm[0].real[3].weight: message`.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

KeyPath = tuple[str | int, ...]


Names = dict[KeyPath, str]  # ("serverfarm", 1) -> "XMPP": a table's name, where known


def format_keypath(keypath: KeyPath, names: Names | None = None) -> str:
    """`serverfarm[1] (XMPP).real[0].weight`: indexes as in the file, a farm's or vserver's
    name after its index when `names` knows it (an operator thinks of them by name)."""
    out = ""
    for n, part in enumerate(keypath):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        name = (names or {}).get(keypath[:n + 1])
        if isinstance(part, int) and name:
            out += f" ({name})"
    return out or "(top level)"


def table_names(farms: Any, vservers: Any = None) -> Names:
    """`format_keypath`'s names for the serverfarms and vservers: each one's `name` where it
    is one printable word. `farms`, `vservers`: the TOML's `serverfarm` and `vserver` arrays
    (dicts) or the Config's tuples."""
    out: Names = {}
    for key, tables in (("serverfarm", farms), ("vserver", vservers)):
        if not isinstance(tables, (list, tuple)):
            continue
        for i, table in enumerate(tables):
            name = table.get("name") if isinstance(table, dict) else getattr(table, "name", None)
            if isinstance(name, str) and name and all(c.isprintable() and not c.isspace()
                                                      for c in name):
                out[(key, i)] = name
    return out


def where(path: str, line: int | None) -> str:
    """"file:line", or just "file" when no line matched."""
    return f"{path}:{line}" if line else path


def problem(where_: str, keypath: KeyPath, message: str, names: Names | None = None) -> str:
    return f"{where_}: {format_keypath(keypath, names)}: {message}"


class Locator:
    """Maps a key path such as ("serverfarm", 0, "real", 2, "weight") to a source line.

    tomllib keeps no positions, so this re-reads the text with a small scanner: table
    headers (counting `[[array]]` entries per parent), `key =` lines, and inside a value the
    elements of arrays and the keys of inline tables, so that the second of
    `real = [ {address = "a"}, {address = "b"} ]` written over several lines is found at
    its own line. It only has to be right for files tomllib accepted, which keeps it small:
    on anything it cannot follow it stops and keeps what it found.
    """

    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, KeyPath]] = []
        try:
            _Scanner(text, self.lines).document()
        except (IndexError, ValueError):
            pass  # not TOML after all (tomllib accepted it, so never in practice)

    def line_of(self, keypath: KeyPath) -> int | None:
        """The line that best matches: the key itself, else its nearest enclosing table,
        else the first line inside it (`[[gateway]]` for "gateway" written as an array)."""
        best, best_len = None, 0
        for number, path in self.lines:
            n = _common_prefix(path, keypath)
            if n == len(path) and n > best_len:
                best, best_len = number, n
        if best is None and keypath:
            best = next((number for number, path in self.lines
                         if path[:len(keypath)] == keypath), None)
        return best


class _Scanner:
    """One pass over TOML text (TOML 1.0), appending (line, key path) to `out` for each
    table header, key, array element and inline-table key it meets."""

    _BARE = re.compile(r"[A-Za-z0-9_-]+")
    _SCALAR_END = re.compile(r"[,\]}#\r\n]")

    def __init__(self, text: str, out: list[tuple[int, KeyPath]]) -> None:
        self.text = text
        self.out = out
        self.i = 0
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    def document(self) -> None:
        table: KeyPath = ()
        last_index: dict[KeyPath, int] = {}
        while True:
            self.skip(newlines=True)
            if self.i >= len(self.text):
                return
            line = self.line()
            if self.text[self.i] == "[":
                array = self.text.startswith("[[", self.i)
                self.i += 2 if array else 1
                keys = self.key()
                self.i = self.text.index("]", self.i) + (2 if array else 1)
                path: KeyPath = ()
                for k in keys[:-1]:
                    path += (k,)
                    if path in last_index:
                        path += (last_index[path],)
                path += (keys[-1],)
                if array:
                    last_index[path] = last_index.get(path, -1) + 1
                    path += (last_index[path],)
                table = path
                self.out.append((line, table))
            else:
                self.keyval(table, line)

    def keyval(self, table: KeyPath, line: int) -> None:
        path = table + self.key()
        self.out.append((line, path))
        self.skip()
        if self.text[self.i] != "=":
            raise ValueError("expected =")
        self.i += 1
        self.skip()
        self.value(path)

    def key(self) -> tuple[str, ...]:
        """A dotted key, its parts unquoted (escapes in quoted keys are kept as written)."""
        parts: list[str] = []
        while True:
            self.skip()
            quote = self.text[self.i]
            if quote in "\"'":
                end = self.string_end(self.i, quote)
                parts.append(self.text[self.i + 1:end - 1])
                self.i = end
            else:
                match = self._BARE.match(self.text, self.i)
                if not match:
                    raise ValueError("expected a key")
                parts.append(match.group())
                self.i = match.end()
            self.skip()
            if self.i < len(self.text) and self.text[self.i] == ".":
                self.i += 1
                continue
            return tuple(parts)

    def value(self, path: KeyPath) -> None:
        char = self.text[self.i]
        if char == "[":
            self.i += 1
            index = 0
            while True:
                self.skip(newlines=True)
                if self.text[self.i] == "]":
                    self.i += 1
                    return
                self.out.append((self.line(), path + (index,)))
                self.value(path + (index,))
                index += 1
                self.separator("]")
        elif char == "{":
            self.i += 1
            while True:
                self.skip(newlines=True)  # TOML 1.1 allows newlines here; harmless for 1.0
                if self.text[self.i] == "}":
                    self.i += 1
                    return
                self.keyval(path, self.line())
                self.separator("}")
        elif char in "\"'":
            self.i = self.string_end(self.i, char)
        else:
            match = self._SCALAR_END.search(self.text, self.i)
            self.i = match.start() if match else len(self.text)

    def separator(self, closing: str) -> None:
        """Past the comma after an element; the closing bracket is left for the caller."""
        self.skip(newlines=True)
        if self.text[self.i] == ",":
            self.i += 1
        elif self.text[self.i] != closing:
            raise ValueError(f"expected , or {closing}")

    def string_end(self, start: int, quote: str) -> int:
        """The index just past the string (basic, literal or multi-line) opening at `start`."""
        text = self.text
        if text.startswith(quote * 3, start):
            end = text.index(quote * 3, start + 3)
            while text.startswith(quote, end + 3):  # up to two quotes may close the content
                end += 1
            if quote == '"':
                while _escaped(text, end):
                    end = text.index(quote * 3, end + 1)
                    while text.startswith(quote, end + 3):
                        end += 1
            return end + 3
        end = start + 1
        while True:
            end = text.index(quote, end)
            if quote == "'" or not _escaped(text, end):
                return end + 1
            end += 1

    def skip(self, newlines: bool = False) -> None:
        """Past blanks, and with `newlines` past line ends and comments too."""
        text = self.text
        while self.i < len(text):
            char = text[self.i]
            if char in " \t" or (newlines and char in "\r\n"):
                self.i += 1
            elif char == "#" and newlines:
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            else:
                return

    def line(self) -> int:
        return bisect.bisect_right(self.line_starts, self.i)


def _escaped(text: str, index: int) -> bool:
    """True if the character at `index` follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def _common_prefix(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
