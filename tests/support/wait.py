"""Polling for a condition, shared by the demo (scripts/demo.py), the chaos suite
(chaos/run.py, chaos/scenarios.py) and the integration tests: no product code, and nothing
here imports either of them (the chaos suite loads scripts/demo.py by path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

POLL = 0.1  # seconds between two looks


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             poll: float = POLL) -> Any:
    """The first true value `condition()` returns, looking every `poll` seconds; TimeoutError
    naming `what` if none came within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(poll)
    return result


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               poll: float = POLL) -> Any:
    """`wait_for` in a test: a timeout fails it as an assertion does."""
    try:
        return wait_for(condition, timeout, what, poll)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None
