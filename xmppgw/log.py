"""structlog set-up: JSON lines for machines, console rendering on a terminal.

Info lines (one per connection) are written through a small buffer flushed at most
`FLUSH_DELAY` later (or when it fills, and always at exit): one write system call per busy
moment rather than one per connection, which the handshake profile showed in its top
entries. Warnings and errors are written at once.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import json
import logging
import sys
import time
from typing import Any, TextIO

FLUSH_DELAY = 0.05
FLUSH_BYTES = 65536


class BufferedLineLogger:
    """structlog logger: lines gather in memory and are written together, soon."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._scheduled = False
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        self._lines.append(message)
        self._size += len(message)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)
                self._scheduled = True
            except RuntimeError:  # no event loop (start-up, the master process): write now
                self.flush()

    log = debug = info = msg

    def warning(self, message: str) -> None:
        """Warnings and worse (state changes, failed attempts) are written at once."""
        self.msg(message)
        self.flush()

    warn = err = error = critical = exception = warning

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stdout closed: nothing more can be said


class BufferedLoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self.logger = BufferedLineLogger(stream)

    def __call__(self, *_args: Any) -> BufferedLineLogger:
        return self.logger


FORMATS = ("auto", "json", "console")  # `gateway.log_format`

_LEVELS = {"warn": "warning", "exception": "error"}  # structlog's add_log_level mapping


class JSONLine:
    """structlog's add_log_level, TimeStamper(fmt="iso", utc=True) and JSONRenderer in one
    processor, with the same output: one call instead of three for every connection's line,
    and the date and time of day formatted once a second, not per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        from structlog.processors import JSONRenderer

        self._fallback = JSONRenderer()._dumps_kw["default"]

    def timestamp(self, now: float) -> str:
        """`datetime.now(UTC).isoformat()` with Z for +00:00 (microseconds left out when
        zero, as isoformat does)."""
        second = int(now)
        micro = round((now - second) * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = datetime.datetime.fromtimestamp(
                second, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"

    def __call__(self, _logger: Any, method: str, event_dict: dict[str, Any]) -> str:
        event_dict["level"] = _LEVELS.get(method, method)
        event_dict["timestamp"] = self.timestamp(time.time())
        return json.dumps(event_dict, default=self._fallback)


def configure(fmt: str = "auto", stream: TextIO | None = None) -> Any:
    """One JSON object per line unless a person is watching (`auto` + a terminal)."""
    # Imported here, not at the top: structlog pulls in rich (about 50 ms), and the short
    # commands (`show`, keepalived's check every second) read FORMATS without logging.
    import structlog

    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    factory: Any = (structlog.PrintLoggerFactory(stream) if fmt == "console"
                    else BufferedLoggerFactory(stream))
    processors: list[Any] = ([
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.dev.ConsoleRenderer(),
    ] if fmt == "console" else [JSONLine()])
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger("xmppgw")


def flush() -> None:
    """Write out what is buffered: before a process ends without running atexit (os._exit)."""
    import structlog

    factory = structlog.get_config().get("logger_factory")
    if isinstance(factory, BufferedLoggerFactory):
        factory.logger.flush()
