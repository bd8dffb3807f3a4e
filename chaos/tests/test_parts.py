"""The chaos suite's own parts, without the real servers: the message format and tally
(chaos/messaging.py), which Toxiproxy server the suite drives (chaos/topology.py: TOXIPROXY_URL,
a `toxiproxy-server` on PATH, else the bundled one), the nftables SYN blackhole
(chaos/faults.py) and the plain progress lines (chaos/progress.py). Collected with the unit
tests through tests/unit/test_toxiproxy_server.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chaos.messaging import Tally, body, parse
from chaos.progress import Progress
from chaos.topology import Toxics

ROOT = Path(__file__).resolve().parents[2]
TEST_NET = "127.0.86"  # not the suite's 127.0.66 / 127.0.67: a run beside these tests is fine
TEST_CLIENT_NET = "127.0.87.1"


def test_message_body_checks_out_and_a_changed_byte_does_not() -> None:
    text = body(3, 41, "payload with spaces")
    assert parse(text) == (3, 41)
    assert parse(text.replace("with", "wiTh")) is None
    assert parse(text[:-1] + ("0" if text[-1] != "0" else "1")) is None


def test_tally_counts_lost_and_duplicated() -> None:
    tally = Tally()
    tally.sent = {(0, 0): 1.0, (0, 1): 2.0, (1, 0): 3.0}
    tally.received.update([(0, 0), (0, 0), (0, 0), (1, 0)])
    assert tally.lost() == 1  # (0, 1)
    assert tally.duplicated() == 2  # (0, 0) twice more


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def separate_server() -> Iterator[int]:
    """The bundled server started on its own, as a separate `toxiproxy-server` would be."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "chaos.toxiproxy", "--port", str(port),
                             "--log-level", "error"], cwd=ROOT)
    try:
        _wait_listening(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


SERVERS = SimpleNamespace(ejabberd_addresses=["127.0.2.1", "127.0.2.2", "127.0.2.3"])


def _check_drives(toxics: Toxics, port: int) -> None:
    proxies = _get(f"http://127.0.0.1:{port}/proxies")
    assert proxies["real1-5222"]["listen"] == f"{TEST_NET}.1:5222"
    assert proxies["real1-5222"]["upstream"] == "127.0.2.1:5322"
    assert proxies["real4-5269"]["upstream"] == "127.0.2.4:5269"
    assert proxies["client-5223"]["upstream"] == "127.0.86.70:5223"
    host, client_port = toxics.client_link(5222)
    assert (host, client_port) != (TEST_CLIENT_NET, 0) and client_port > 0
    toxics.add_client(type="slicer", name="s", attributes={"average_size": 10})
    assert [t["name"] for t in _get(f"http://127.0.0.1:{port}/proxies/client-5222/toxics")] \
        == ["s"]
    toxics.remove_client("s")
    assert _get(f"http://127.0.0.1:{port}/proxies/client-5222/toxics") == []


def test_toxiproxy_url_names_the_server_the_suite_drives(
        separate_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOXIPROXY_URL", f"http://127.0.0.1:{separate_server}")
    toxics = Toxics(SERVERS, vip="127.0.86.70", net=TEST_NET,  # type: ignore[arg-type]
                    client_net=TEST_CLIENT_NET).start()
    try:
        assert toxics.server.bundled is None and toxics.server.process is None
        assert toxics.server.kind.startswith("TOXIPROXY_URL")
        _check_drives(toxics, separate_server)
    finally:
        toxics.stop()
    assert _get(f"http://127.0.0.1:{separate_server}/proxies") == {}  # ours removed
    assert _get(f"http://127.0.0.1:{separate_server}/version")  # and the server left running


def test_a_toxiproxy_server_on_path_is_started_and_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # stands in for Shopify's binary: same flags (-host, -port), the bundled server behind
    binary = tmp_path / "toxiproxy-server"
    binary.write_text(f"""#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -host) H=$2; shift 2;; -port) P=$2; shift 2;; *) shift;; esac; done
cd {ROOT} && exec {sys.executable} -m chaos.toxiproxy --host "$H" --port "$P" --log-level error
""")
    binary.chmod(0o755)
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    toxics = Toxics(SERVERS, vip="127.0.86.70", net=TEST_NET,  # type: ignore[arg-type]
                    client_net=TEST_CLIENT_NET).start()
    process = toxics.server.process
    try:
        assert process is not None and toxics.server.bundled is None
        assert str(binary) in toxics.server.kind
        _check_drives(toxics, toxics.server.port)
    finally:
        toxics.stop()
    assert process.poll() is not None


def test_without_either_the_bundled_server_runs_in_a_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    toxics = Toxics(SERVERS, vip="127.0.86.70", net=TEST_NET,  # type: ignore[arg-type]
                    client_net=TEST_CLIENT_NET).start()
    try:
        assert toxics.server.bundled is not None and toxics.server.kind.startswith("bundled")
        _check_drives(toxics, toxics.server.port)
    finally:
        toxics.stop()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")
def test_blackhole_drops_new_connections_only_while_it_lasts() -> None:
    from chaos.faults import TABLE, blackhole

    table = TABLE + "_test"  # not the one a chaos run beside this test may be using
    with socket.socket() as listener:
        listener.bind((f"{TEST_NET}.9", 0))
        listener.listen(8)
        address = listener.getsockname()
        established = socket.create_connection(address, 2)
        peer, _ = listener.accept()
        with established, peer:
            with blackhole([(address[0], [address[1]])], table=table):
                with pytest.raises(TimeoutError):
                    socket.create_connection(address, 1.0)
                established.sendall(b"still here")  # no SYN needed: it goes on
                assert peer.recv(100) == b"still here"
            assert table not in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                               text=True, check=True).stdout
            socket.create_connection(address, 2).close()


def test_progress_without_a_terminal_prints_plain_lines(
        capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(["scenario", "outcome"], live=False)
    progress.scenario(1, 2, "kill", "kill -9 of one node")
    progress.row(["kill", "ok"])
    progress.stop()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| scenario | outcome |"
    assert out[-1] == "| kill | ok |"
    assert any("== kill: kill -9 of one node" in line for line in out)
