"""structlog set-up: JSON lines for machines, console rendering on a terminal.

Info lines (one per connection) are written through a small buffer flushed at most
`FLUSH_DELAY` later (or when it fills, and always at exit): one write system call per busy
moment rather than one per connection, which the handshake profile showed in its top
entries. Warnings and errors are written at once.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
from typing import Any, TextIO

import structlog

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


def configure(fmt: str = "auto", stream: TextIO | None = None) -> Any:
    """One JSON object per line unless a person is watching (`auto` + a terminal)."""
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer() if fmt == "console"
                else structlog.processors.JSONRenderer())
    factory: Any = (structlog.PrintLoggerFactory(stream) if fmt == "console"
                    else BufferedLoggerFactory(stream))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger("xmppgw")


def flush() -> None:
    """Write out what is buffered: before a process ends without running atexit (os._exit)."""
    factory = structlog.get_config().get("logger_factory")
    if isinstance(factory, BufferedLoggerFactory):
        factory.logger.flush()
