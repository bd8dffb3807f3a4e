"""The control socket's gate, tried as another Unix user (`nobody`, primary group
`nogroup`): refused by default, answered once `control_group` names that user's group."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xmppgw.control.server import ControlServer

pytestmark = pytest.mark.integration

CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": exc.strerror})); sys.exit(0)
s.sendall(b'{"command": "show"}\\n')
print(s.makefile().readline().strip())
"""


class Log:
    def __getattr__(self, _level: str) -> object:
        return lambda *_a, **_k: None


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="xmppgw-ctlgroup-"))
    path.chmod(0o755)  # traversable: the socket's own mode and SO_PEERCRED must do the work
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def ask_as_nobody(path: Path) -> dict[str, object]:
    """The system's python3 (the test's venv may not be readable by other users)."""
    proc = await asyncio.create_subprocess_exec(
        "su", "nobody", "-s", "/bin/sh", "-c", "/usr/bin/python3 -c \"$0\" \"$1\"", CLIENT,
        str(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    return json.loads(out)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize("group", [None, "nogroup"])
async def test_only_the_owner_root_and_the_control_group(sock_dir: Path,
                                                         group: str | None) -> None:
    path = sock_dir / "xmppgw.sock"
    server = ControlServer(str(path), lambda _request: {"ok": True, "data": "hello"}, Log(),
                           group)
    await server.start()
    try:
        mode = path.stat().st_mode & 0o777
        reply = await ask_as_nobody(path)
    finally:
        await server.stop()
    assert mode == (0o600 if group is None else 0o660)
    if group is None:
        assert reply in ({"connect": "Permission denied"},
                         {"ok": False, "error": "permission denied"})
    else:
        assert reply == {"ok": True, "data": "hello"}
