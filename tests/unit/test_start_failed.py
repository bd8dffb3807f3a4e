"""`start_failed` (a vserver cannot listen, say) is said once on a terminal: the log line,
in the chosen format; the plain stderr line only where stderr is read apart."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest

from xmppgw.net.workers import start_failed


class Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.records.append((event, fields))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


ERROR = "vserver P5222: cannot listen on 127.0.0.1:5222: Address already in use"


def test_on_a_terminal_only_the_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    err = Terminal()
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", err)
    log = Log()
    start_failed(log, ERROR)
    assert log.records == [("start_failed", {"error": ERROR})]
    assert err.getvalue() == ""


def test_stderr_read_apart_gets_the_plain_line(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", err)
    log = Log()
    start_failed(log, ERROR)
    assert err.getvalue() == f"xmppgw: {ERROR}\n"
    assert log.records == [("start_failed", {"error": ERROR})]
