"""Config texts and helpers the config tests share."""

from __future__ import annotations

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
