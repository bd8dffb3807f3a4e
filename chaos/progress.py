"""The runner's progress display: a rich Live panel in a terminal (the scenario under way,
elapsed time, the population's status, the table so far, the latest lines), plain lines
otherwise (no TTY, CI set, TERM=dumb), which is what CI logs and tests/integration read."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any


def want_live() -> bool:
    return (sys.stdout.isatty() and not os.environ.get("CI")
            and os.environ.get("TERM") != "dumb")


class Progress:
    """`say` a line, `status` the population's figures, `scenario` the one under way, `row`
    a finished row of the table; `stop` ends the live panel (idempotent)."""

    def __init__(self, columns: Sequence[str], live: bool | None = None,
                 prefix: str = "chaos") -> None:
        self.columns = list(columns)
        self.live = want_live() if live is None else live
        self.prefix = prefix
        self.began = time.monotonic()
        self.rows: list[list[str]] = []
        self.lines: deque[str] = deque(maxlen=10)
        self.current = "starting"
        self.status_text = ""
        self.lock = threading.Lock()
        self._live: Any = None
        if self.live:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:  # rich is optional: plain lines then
                self.live = False
            else:
                self._live = Live(get_renderable=self._render, console=Console(),
                                  refresh_per_second=2, transient=False)
                self._live.start()
        if not self.live:
            self._print_row(self.columns)

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def say(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {text}"
        with self.lock:
            self.lines.append(line)
        if not self.live:
            print(f"{self.prefix} {line}", flush=True)

    def status(self, text: str) -> None:
        with self.lock:
            self.status_text = text
        if not self.live:
            self.say("  status: " + text)

    def scenario(self, index: int, total: int, name: str, about: str) -> None:
        with self.lock:
            self.current = f"{index}/{total} {name}: {about}"
        self.say(f"== {name}: {about}")

    def row(self, cells: Sequence[str]) -> None:
        with self.lock:
            self.rows.append(list(cells))
        if not self.live:
            self._print_row(cells)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    @staticmethod
    def _print_row(cells: Sequence[str]) -> None:
        print("| " + " | ".join(cells) + " |", flush=True)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        with self.lock:
            rows, lines = list(self.rows), list(self.lines)
            current, status = self.current, self.status_text
        table = Table(expand=False)
        for column in self.columns:
            table.add_column(column, overflow="fold")
        for cells in rows:
            style = "red" if cells[-1] == "FAILED" else None
            table.add_row(*cells, style=style)
        head = Text(f"{self.elapsed():6.1f}s  {current}", style="bold")
        return Panel(Group(head, Text(status), table, Text("\n".join(lines), style="dim")),
                     title="xmppgw chaos suite")
