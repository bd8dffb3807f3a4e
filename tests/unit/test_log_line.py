"""The JSON log line: one processor writing what structlog's three wrote (level, timestamp,
JSON), byte for byte, for every connection's line."""

from __future__ import annotations

import datetime
import json

import pytest
import structlog

from xmppgw.log import JSONLine


@pytest.mark.parametrize("now", [0.0, 1.5, 1764447906.0, 1764447906.123456, 1764447906.9999996,
                                 1764447906.0000004, 1764447959.999999, 2e9 + 0.25])
def test_the_timestamp_is_structlog_s(now: float) -> None:
    expected = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).isoformat()
    assert JSONLine().timestamp(now) == expected.replace("+00:00", "Z")


def test_a_line_is_what_the_three_processors_made() -> None:
    line = JSONLine()
    fields = {"client": "198.51.100.7:40000", "to": None, "starttls": True, "bytes": 5,
              "obj": object()}
    ours = json.loads(line(None, "warn", dict(fields)))
    chain = dict(fields)
    for processor in (structlog.processors.add_log_level,
                      structlog.processors.TimeStamper(fmt="iso", utc=True)):
        chain = processor(None, "warn", chain)
    theirs = json.loads(structlog.processors.JSONRenderer()(None, "warn", chain))
    assert list(ours) == list(theirs)  # the same keys in the same order
    assert ours["level"] == theirs["level"] == "warning"
    assert ours["obj"] == theirs["obj"]  # repr() of what JSON cannot say
    ours.pop("timestamp"), theirs.pop("timestamp")
    assert ours == theirs
