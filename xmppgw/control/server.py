"""The control socket: a Unix socket only the gateway's own user (or root) may use.

One JSON object per line in each direction: {"command": "show"} -> {"ok": true, "data": ...}.
The socket file is created mode 0600 (no window with a wider mode: the umask is set around
bind), and each peer's credentials (SO_PEERCRED) are checked as well, so a socket an operator
chmods wider still refuses other users.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import json
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]
# A command that owns its connection after the first line (`takeover`: sockets are passed
# over it, then it waits for the next step); only this user or root may start one.
Conversation = Callable[[dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter],
                        Awaitable[None]]
# Says why a (non-conversation) request is refused now, or None: a gateway whose takeover
# claim is held refuses the commands that would change it (net/takeover.py).
Guard = Callable[[dict[str, Any]], str | None]
MAX_REQUEST = 65536
REQUEST_TIMEOUT = 10.0


class ControlServer:
    """`group` (gateway.control_group): members of that group may use the socket as well;
    the file is then mode 0660 and owned by the group."""

    def __init__(self, path: str, handler: Handler, log: Any, group: str | None = None,
                 conversations: dict[str, Conversation] | None = None) -> None:
        self.path = Path(path)
        self.handler = handler
        self.log = log
        self.group = grp.getgrnam(group) if group else None
        self.server: asyncio.AbstractServer | None = None
        self.conversations = conversations if conversations is not None else {}
        self.guard: Guard | None = None
        self._inode: tuple[int, int] | None = None  # the socket file we bound (dev, inode)

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale(self.path)
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                          limit=MAX_REQUEST)
        finally:
            os.umask(old)
        if self.group is None:
            os.chmod(self.path, 0o600)
        else:
            os.chown(self.path, -1, self.group.gr_gid)
            os.chmod(self.path, 0o660)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)

    def owns_path(self) -> bool:
        """The path still names the socket we bound (a takeover renames its own over it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def move_to(self, path: str) -> None:
        """rename(2) our socket file to `path`, atomically replacing the file there (the old
        gateway's, in a takeover): a client connecting meanwhile reaches one or the other,
        never no one."""
        os.rename(self.path, path)
        self.path = Path(path)

    def close(self) -> None:
        """Stop accepting (connections under way go on), and remove the socket file if it is
        still ours."""
        if self.server is not None:
            self.server.close()
        if self.owns_path():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._inode = None

    async def stop(self) -> None:
        server = self.server
        self.close()
        if server is not None:
            await server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # Read the request in every case (bounded in size and time), so a refused client
            # gets its answer rather than a reset in the middle of its write.
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            uid, gid = _peer_ids(writer.get_extra_info("socket"))
            conversation = self._conversation(line)
            if not self._allowed(uid, gid) or (
                    conversation is not None and uid not in (0, os.getuid())):
                self.log.warning("control_refused", uid=uid)
                reply: dict[str, Any] = {"ok": False, "error": "permission denied"}
            elif conversation is not None:
                await conversation[0](conversation[1], reader, writer)
                return
            else:
                reply = await self._answer(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that went away, stalled or sent too much gets nothing more
        finally:
            writer.close()

    def _conversation(self, line: bytes) -> tuple[Conversation, dict[str, Any]] | None:
        try:
            request = json.loads(line)
        except ValueError:
            return None
        if not isinstance(request, dict) or request.get("command") not in self.conversations:
            return None
        return self.conversations[request["command"]], request

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return {"ok": False, "error": "expected one JSON object per line"}
        refusal = self.guard(request) if self.guard is not None else None
        if refusal is not None:
            return {"ok": False, "error": refusal}
        result = self.handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        return result  # type: ignore[return-value]


    def _allowed(self, uid: int, gid: int) -> bool:
        if uid in (0, os.getuid()):
            return True
        if self.group is None:
            return False
        if gid == self.group.gr_gid:
            return True
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            return False
        return name in self.group.gr_mem


def _peer_ids(sock: Any) -> tuple[int, int]:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", creds)
    return uid, gid


def _remove_stale(path: Path) -> None:
    """A socket file left by a gateway that died is removed; a live one is an error."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(98, f"control socket {path} is in use: is another gateway running?")


def request(path: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """The client side, for the CLI: one request, one reply. `timeout` in seconds, for the
    connect and for the reply each; OSError if either fails (TimeoutError saying that it
    connected when the reply is what did not come: a stopped or overloaded gateway)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            sock.sendall(json.dumps(payload).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise TimeoutError(errno.ETIMEDOUT, f"connected, but got no answer within "
                               f"{timeout:g} s (is the gateway stopped or overloaded?)") from None
    return json.loads(data)
