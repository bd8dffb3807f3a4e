"""The bundled Toxiproxy server (chaos/toxiproxy), run with the unit tests: its tests live
in chaos/tests/test_toxiproxy.py and are collected here as well."""

from chaos.tests.test_toxiproxy import *  # noqa: F401,F403
from chaos.tests.test_toxiproxy import (  # noqa: F401  (fixtures: star-import skips _names)
    client,
    echo,
    threaded_echo,
    tp,
)
