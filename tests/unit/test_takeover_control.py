"""The control socket's path in a takeover (xmppgw/control/server.py): the new gateway binds
beside the old one and renames its socket over the path; the old one, stopping, leaves the
file alone since it is not its own any more. Real Unix sockets in a temporary directory."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xmppgw.control.server import ControlServer, request


class Log:
    def warning(self, *_a: Any, **_k: Any) -> None:
        pass


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="xmppgw-ctl-"))  # AF_UNIX paths hold 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def server(path: Path, name: str) -> ControlServer:
    return ControlServer(str(path), lambda _request: {"ok": True, "data": name}, Log())


async def ask(path: Path) -> Any:
    reply = await asyncio.get_running_loop().run_in_executor(
        None, request, str(path), {"command": "show"})
    return reply["data"]


async def test_the_new_socket_takes_the_path_and_the_old_one_leaves_it(short_dir: Path) -> None:
    path = short_dir / "xmppgw.sock"
    old, new = server(path, "old"), server(short_dir / "xmppgw.sock.takeover-1", "new")
    await old.start()
    await new.start()
    assert await ask(path) == "old"
    new.move_to(str(path))
    assert await ask(path) == "new"  # rename(2): the path names the new socket at once
    assert not old.owns_path() and new.owns_path()
    await old.stop()
    assert path.exists() and await ask(path) == "new"  # the old one did not remove it
    await new.stop()
    assert not path.exists()
    assert sorted(short_dir.iterdir()) == []


async def test_a_conversation_owns_its_connection(short_dir: Path) -> None:
    path = short_dir / "xmppgw.sock"
    steps: list[Any] = []

    async def converse(first: dict[str, Any], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        steps.append(first["command"])
        writer.write(b'{"ok": true, "data": "offered"}\n')
        steps.append(json.loads(await reader.readline())["command"])
        writer.write(b'{"ok": true, "data": "released"}\n')
        await writer.drain()

    control = ControlServer(str(path), lambda _r: {"ok": True}, Log(),
                            conversations={"takeover": converse})
    await control.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"command": "takeover"}\n')
        assert json.loads(await reader.readline())["data"] == "offered"
        writer.write(b'{"command": "release"}\n')
        assert json.loads(await reader.readline())["data"] == "released"
        assert await reader.read() == b""  # then the server closes it
        writer.close()
        assert steps == ["takeover", "release"]
    finally:
        await control.stop()


def test_a_gateway_that_accepts_but_does_not_answer_is_named_so(short_dir: Path) -> None:
    """A stopped gateway: the kernel completes the connection (its backlog), nobody answers.
    The client says it connected, and how long it waited, rather than "timed out"."""
    path = short_dir / "stopped.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stopped:
        stopped.bind(str(path))
        stopped.listen()
        with pytest.raises(TimeoutError) as caught:
            request(str(path), {"command": "show"}, timeout=0.2)
        assert caught.value.strerror is not None
        assert caught.value.strerror.startswith("connected, but got no answer within 0.2 s")


def test_a_takeover_that_gets_no_answer_names_the_socket_and_the_wait() -> None:
    from xmppgw.net.takeover import EXCHANGE_TIMEOUT, TakeoverError, _receive

    ours, stopped = socket.socketpair()
    with ours, stopped:
        ours.settimeout(0.1)
        with pytest.raises(TakeoverError) as caught:
            _receive(ours, "/run/xmppgw/xmppgw.sock")
    text = caught.value.strerror or ""
    assert "on /run/xmppgw/xmppgw.sock accepted the connection but did not answer the " \
        f"takeover within {EXCHANGE_TIMEOUT:g} s" in text, text
