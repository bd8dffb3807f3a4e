"""The bundled Toxiproxy server (chaos/toxiproxy), run with the unit tests: its tests live
in chaos/tests/test_toxiproxy.py and are collected here as well, with those of the chaos
suite's other parts (chaos/tests/test_parts.py)."""

from chaos.tests.test_parts import *
from chaos.tests.test_toxiproxy import *
from chaos.tests.test_toxiproxy import (  # noqa: F401  (fixtures: star-import skips _names)
    client,
    echo,
    threaded_echo,
    tp,
)
