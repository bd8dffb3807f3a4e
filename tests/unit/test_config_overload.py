"""The overload keys (docs/failover-and-overload.md, "Reconnect storms"): defaults,
overrides, and errors that name the file, line and key."""

from __future__ import annotations

import pytest

from xmppgw import config
from xmppgw.config import ConfigError

FARM = """
[[vserver]]
name = "V"
virtual = "127.0.0.1:5222"
serverfarm = "F"

[[serverfarm]]
name = "F"
{farm}
[[serverfarm.real]]
address = "10.0.0.1"
{real}
"""


def load(farm: str = "", real: str = "", gateway: str = "") -> config.Config:
    return config.loads(f"[gateway]\n{gateway}\n" + FARM.format(farm=farm, real=real),
                        "test.toml")


def test_defaults_tell_a_busy_real_from_a_dead_one() -> None:
    cfg = load()
    farm = cfg.farm("F")
    assert farm.connect_timeout == 4.0  # beyond the SYN retransmissions at 1 s and 3 s
    assert (farm.max_connecting, farm.queue_timeout, farm.queue_length) == (8, 10.0, 4096)
    assert farm.panic_threshold == 50
    assert farm.reals[0].max_connecting is None  # the farm's
    assert cfg.vservers[0].negotiation_timeout == 60.0


def test_overrides() -> None:
    cfg = load(farm="max_connecting = 0\nqueue_timeout = 2\npanic_threshold = 0",
               real="max_connecting = 3", gateway="negotiation_timeout = 5")
    farm = cfg.farm("F")
    assert farm.max_connecting is None and farm.queue_timeout == 2.0
    assert farm.panic_threshold == 0 and farm.reals[0].max_connecting == 3
    assert cfg.vservers[0].negotiation_timeout == 5.0


@pytest.mark.parametrize("farm, real, message", [
    ("panic_threshold = 150", "", ("test.toml:11: serverfarm[0] (F).panic_threshold: must be a "
                                   "percentage, 0 (off) to 100")),
    ("max_connecting = -1", "", "test.toml:11: serverfarm[0] (F).max_connecting: must be at least 0"),
    ("queue_timeout = -1", "", "test.toml:11: serverfarm[0] (F).queue_timeout: must be 0 (off) or more"),
    ("", "max_connecting = \"many\"", ("test.toml:14: serverfarm[0] (F).real[0].max_connecting: "
                                       "must be an integer, not a string ('many')")),
])
def test_bad_values_name_file_line_and_key(farm: str, real: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(farm=farm, real=real)
    assert message in info.value.problems, info.value.problems
