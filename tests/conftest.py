"""Session fixtures: the real servers (tests/harness) and one gateway process in front."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.fixtures import servers  # noqa: F401  (the session fixture itself)
from tests.harness.servers import Servers
from tests.support.gateway import GatewayProcess
from tests.support.topology import gateway_config


@pytest.fixture(scope="session")
def xmpp_gateway(servers: Servers,  # noqa: F811
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """xmppgw in front of the ejabberd cluster and Prosody, for the whole session."""
    gw = GatewayProcess(gateway_config(servers), tmp_path_factory.mktemp("xmpp-gateway"))
    gw.start()
    yield gw
    assert gw.stop() == 0, gw.log_text()[-3000:]
    assert "Traceback" not in gw.log_text()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many cases each fuzz target ran (tests/unit/test_fuzz.py), so a run says what it
    covered: the count is bounded in CI and raised on demand with XMPPGW_FUZZ_CASES."""
    lines = [f"{report.nodeid}: {value}"
             for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for name, value in getattr(report, "user_properties", ()) if name == "fuzz_cases"]
    if lines:
        terminalreporter.section("fuzz cases")
        for line in lines:
            terminalreporter.write_line(line)
