"""`xmppgw run --takeover`: a new gateway process takes the listening sockets of the running
one over its control socket, and the old one lets its streams end (docs/upgrade.md).

The exchange, on one connection to the old gateway's control socket (one JSON object per
line, as every control command):

1. new -> old `{"command": "takeover", "pid": P}`. The old process answers with the
   handover message (`net/handover.py`: the listening sockets' addresses, the operator's
   admin state, each real's health) and the listening sockets themselves as SCM_RIGHTS
   ancillary data (unix(7)); it goes on accepting. With `gateway.workers > 1` it refuses.
2. The new process matches the sockets to its vservers by address (`plan_sockets`), binds
   the new ones, starts accepting (both processes accept on the same sockets for a moment:
   the kernel gives each connection to one of them), binds its control socket beside the
   old one and rename(2)s it over the configured path (atomic: a client always finds one).
3. new -> old `{"command": "release", "drain": S}`. The old process stops accepting (it
   closes its copies of the sockets, never shutdown(2) them: that would stop the new
   process's listeners too; a socket the new config no longer has is closed with the last
   copy), stops its probes and its metrics and SRV listeners, answers
   `{"ok": true, ...}`, and keeps every established stream until it ends or S seconds have
   passed; then streams still in cleartext get `<system-shutdown/>` (RFC 6120 §4.9.3.21),
   the rest are closed, and it exits. It sends no STOPPING=1: it is no longer the service.
   Just before step 3 the new process tells systemd `MAINPID=<its pid>` and `READY=1`
   (the unit needs NotifyAccess=all), so the old one's exit is not the service's end.
4. The new process starts its metrics and SRV listeners.

If the new process fails before step 3 it simply exits (its copies of the sockets close),
and the old process, seeing the connection end without a release, carries on as before.

One takeover at a time: from step 1 the connection holds a claim on the old process, freed
the moment that connection ends (or at RELEASE_WAIT without a release). Another takeover
meanwhile is refused at once, naming the claim's pid and since when it is held. Each side
names the other by the pid the kernel gives for the control connection (SO_PEERCRED,
unix(7)), not by the pid written in the message; a message naming another pid (a process in
another pid namespace, or one lying) is logged beside it as `claimed_pid`.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from xmppgw import notify
from xmppgw.config import Config
from xmppgw.net.gateway import Gateway
from xmppgw.net.handover import (
    MAX_SOCKETS,
    Handover,
    HandoverError,
    farm_health,
    plan_sockets,
    restore_health,
)
from xmppgw.net.operator import drain_left

RELEASE_WAIT = 30.0  # seconds the old process waits for step 3 before carrying on
EXCHANGE_TIMEOUT = 15.0  # seconds the new process waits for each answer
LINGER = 2.0  # seconds for closed streams to be released before the old process exits
DEFAULT_DRAIN = 300.0


class TakeoverError(OSError):
    """The takeover could not start (nothing was changed in the old gateway)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


# --- who is on the other end ------------------------------------------------------------------


def peer_pid(sock: socket.socket) -> int | None:
    """The pid the kernel gives for the peer of a connected AF_UNIX socket (SO_PEERCRED,
    unix(7): the process that connected, or for a client the one that called listen(2)),
    in our pid namespace; None if it gives none (0: the peer is in a namespace we cannot
    see)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", creds)[0]
    return pid if pid > 0 else None


def pid_fields(role: str, kernel: int | None, claimed: Any) -> dict[str, Any]:
    """Log fields naming a peer: `<role>_pid` is the kernel's word (the claim when the kernel
    gives none), and `claimed_pid` is added when the message said something else."""
    fields: dict[str, Any] = {f"{role}_pid": kernel if kernel is not None else claimed}
    if kernel is not None and claimed != kernel:
        fields["claimed_pid"] = claimed
    return fields


def _utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Claim:
    """A takeover under way on this (old) process: `pid` the successor's (the kernel's word,
    else its claim), `since` and `expires` wall-clock seconds (Unix time)."""

    pid: Any
    since: float
    expires: float

    def refusal(self, released: bool, now: float) -> str:
        """What a second takeover is told, at once."""
        if released:
            return (f"this gateway was taken over by pid {self.pid} (claimed at "
                    f"{_utc(self.since)}): it only lets its streams end now")
        return (f"a takeover by pid {self.pid} is under way since {_utc(self.since)} "
                f"({max(0.0, now - self.since):.0f} s ago); it is given up at "
                f"{_utc(self.expires)} unless that process releases this one first, or at "
                "once if its connection ends")


# --- the old process ---------------------------------------------------------------------------


class Releaser:
    """The old gateway's side: the `takeover` control command, then the wind-down.

    `done` is called once the streams are gone (or closed at the deadline): the caller then
    stops the gateway without a STOPPING=1 (`released` is True by then)."""

    def __init__(self, gateway: Gateway, done: Callable[[], None]) -> None:
        self.gateway = gateway
        self.done = done
        self.claim: Claim | None = None  # held from the offer until release or abort
        self.released = False
        self._task: asyncio.Task[None] | None = None

    async def converse(self, request: dict[str, Any], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        gw = self.gateway
        peer = pid_fields("new", peer_pid(writer.get_extra_info("socket")), request.get("pid"))
        refusal = self._refusal()
        if refusal is not None:
            gw.log.warning("takeover_refused", reason=refusal, **peer)
            writer.write(json.dumps({"ok": False, "error": refusal}).encode() + b"\n")
            await writer.drain()
            return
        now = time.time()
        self.claim = Claim(peer["new_pid"], now, now + RELEASE_WAIT)
        try:
            await self._hand_over(peer, reader, writer)
        finally:
            if not self.released:
                self.claim = None  # the connection ended (or timed out): free at once

    def _refusal(self) -> str | None:
        gw = self.gateway
        if gw.multi:
            return (f"this gateway runs gateway.workers = {gw.config.gateway.workers}: "
                    "takeover needs workers = 1 on both sides (restart it instead)")
        if self.claim is not None:
            return self.claim.refusal(self.released, time.time())
        if gw.stopping:
            return "this gateway is stopping"
        return None

    async def _hand_over(self, peer: dict[str, Any], reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        gw = self.gateway
        loop = asyncio.get_running_loop()
        listening = [(vs.name, sock) for vs in gw.listeners.listening() if not vs.retired
                     for sock in vs.server.sockets]
        if len(listening) > MAX_SOCKETS:
            writer.write(json.dumps({"ok": False, "error": f"more than {MAX_SOCKETS} "
                                     "listening sockets"}).encode() + b"\n")
            return
        message = Handover(
            pid=os.getpid(),
            listeners=tuple((name, *sock.getsockname()[:2]) for name, sock in listening),
            real_admin={key: held for key, row in gw.rows.reals.items()
                        if (held := gw.admin.real(row)) is not None},
            vserver_admin={name: held for name, row in gw.rows.vservers.items()
                           if (held := gw.admin.vserver(row)) is not None},
            health=farm_health(gw.farms.values(), loop.time()))
        for farm in gw.farms.values():  # a retry that elapsed just now: logged here too
            gw.engine_changed(farm)
        await _send_with_fds(writer, message.encode(), [s.fileno() for _, s in listening])
        gw.log.warning("takeover_offered", sockets=[n for n, _ in listening], **peer)
        reason = "the new process went away before the release"
        try:
            line = await asyncio.wait_for(reader.readline(), RELEASE_WAIT)
            step = json.loads(line) if line else None
        except TimeoutError:
            step, reason = None, f"no release within {RELEASE_WAIT:g} s"
        except (ValueError, ConnectionError):
            step = None
        if not isinstance(step, dict) or step.get("command") != "release":
            gw.log.warning("takeover_aborted", reason=reason, **peer)
            return
        drain = float(step.get("drain", DEFAULT_DRAIN))
        await self._release(peer, drain)
        writer.write(json.dumps({"ok": True, "data": {
            "pid": os.getpid(), "sessions": len(gw.sessions), "drain": drain}}).encode() + b"\n")
        await writer.drain()

    async def _release(self, peer: dict[str, Any], drain: float) -> None:
        """Stop accepting and hand over the side listeners; the streams go on."""
        gw = self.gateway
        self.released = True
        gw.stopping = True  # nothing listens again here (operator.apply_vservers)
        for vs in gw.listeners.vservers:
            if vs.server is not None:
                vs.server.close()  # our copies only: no shutdown(2), the new process accepts
                vs.server = None
        if gw.control is not None:
            gw.control.close()  # the path is the new process's now: not unlinked
        await gw.stop_side()
        gw.log.warning("takeover_released", sessions=len(gw.sessions), drain=drain, **peer)
        self._task = asyncio.get_running_loop().create_task(self._wind_down(drain))

    async def _wind_down(self, drain: float) -> None:
        """Streams end on their own until `drain` seconds have passed; then, as on SIGTERM,
        cleartext ones get `<system-shutdown/>` and the rest are closed."""
        gw = self.gateway
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain
        while gw.sessions and loop.time() < deadline:
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
        if gw.sessions:
            left = list(gw.sessions)
            told = sum(session.system_shutdown() for session in left)
            for session in left:
                session.close()
            gw.log.warning("takeover_drain_deadline", closing=len(left),
                           told_system_shutdown=told, waited=drain)
            linger = loop.time() + LINGER
            while gw.sessions and loop.time() < linger:
                await asyncio.sleep(0.02)
        gw.log.warning("takeover_drained", sessions=len(gw.sessions))
        self.done()


async def _send_with_fds(writer: asyncio.StreamWriter, data: bytes, fds: list[int]) -> None:
    """`data` with `fds` as SCM_RIGHTS on the control connection (the transport has written
    nothing yet, so the bytes stay in order)."""
    raw = writer.get_extra_info("socket")
    with socket.socket(fileno=os.dup(raw.fileno())) as sock:
        sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):
        writer.write(data[sent:])
    await writer.drain()


# --- the new process ---------------------------------------------------------------------------


async def take_over(config: Config, log: Any, drain: float) -> Gateway:
    """Steps 1 to 4 from the new process: the running gateway's sockets, state and control
    path become ours; returns the started gateway. TakeoverError (an OSError) if it cannot
    start: the old gateway then runs on untouched."""
    path = config.gateway.control_socket
    if not path:
        raise TakeoverError(f"{config.path}: --takeover needs gateway.control_socket (the "
                            "running gateway is asked for its sockets there)")
    loop = asyncio.get_running_loop()
    conn = await loop.run_in_executor(None, _ask, path)
    try:
        gateway = await _adopt(config, log, conn)
        gateway.take_control_path()
        # Before the release: the old process may exit at once (no streams), and systemd
        # must know by then that the service's main process is this one.
        notify.notify(f"MAINPID={os.getpid()}", "READY=1")
        answer = await loop.run_in_executor(None, _release, conn, drain)
    finally:
        conn.close()
    if answer is None:
        log.warning("takeover_no_answer", reason="the old gateway did not confirm the "
                    "release (it may have exited): its sockets are ours anyway")
    # The old process has let go: this one is the only one serving, so a metrics or SRV
    # port it cannot take must not stop it; it goes on without that side, saying so.
    for exc in await gateway.start_side(fatal=False):
        log.error("takeover_side_failed", error=exc.strerror or str(exc))
    return gateway


def _ask(path: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(EXCHANGE_TIMEOUT)
    try:
        conn.connect(path)
        conn.sendall(json.dumps({"command": "takeover", "pid": os.getpid()}).encode() + b"\n")
    except OSError as exc:
        conn.close()
        raise TakeoverError(f"no running gateway answers on {path}: "
                            f"{exc.strerror or exc}") from None
    return conn


async def _adopt(config: Config, log: Any, conn: socket.socket) -> Gateway:
    loop = asyncio.get_running_loop()
    line, fds = await loop.run_in_executor(None, _receive, conn)
    sockets = [socket.socket(fileno=fd) for fd in fds]
    try:
        handover = _decode(line, len(sockets))
        offered = [s.getsockname()[:2] for s in sockets]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    old_peer = pid_fields("old", peer_pid(conn), handover.pid)
    old_pid = old_peer["old_pid"]
    plan = plan_sockets(offered, config.vservers)
    for i in plan.close:
        sockets[i].close()
    adopted = {name: sockets[i] for name, i in plan.adopt.items()}
    gateway = Gateway(config, log, sockets=dict(adopted))
    for (farm, real), (inservice, until) in handover.real_admin.items():
        row = gateway.rows.reals.get((farm, real))
        if row is not None:
            gateway.admin.set_real(row, inservice, until)
    for name, (inservice, until) in handover.vserver_admin.items():
        row = gateway.rows.vservers.get(name)
        if row is not None:
            gateway.admin.set_vserver(row, inservice, until)
    wall = time.time()  # the engine takes the operator's word too, so it is no change
    admin = {key: (inservice, drain_left(until, wall))
             for key, (inservice, until) in handover.real_admin.items()}
    restored = restore_health(gateway.farms, handover.health, loop.time(), admin)
    for farm, real, state, age in restored.carried:  # once, not as a change: see handover.py
        log.warning("real_state_carried", farm=farm, real=real, state=str(state),
                    age=round(age, 3), old_pid=old_pid)
    try:
        await gateway.start(handover=True)
    finally:
        for sock in gateway.listeners.sockets.values():  # received, but not listened on
            sock.close()
        gateway.listeners.sockets.clear()
    if gateway.health is not None:  # PROBE_FAILED reals: their probes start down
        for farm, real in restored.probe_down:
            health = gateway.health.schedule.real(farm, real)
            for probe in health.probes if health is not None else ():
                probe.up, probe.streak = False, 0
    log.warning("takeover_adopted", **old_peer, adopted=sorted(plan.adopt),
                bound=list(plan.bind), closed=[handover.listeners[i][0] for i in plan.close],
                carried_admin=len(handover.real_admin) + len(handover.vserver_admin),
                carried_health=sum(h.has_counts() for h in handover.health),
                carried_states=len(restored.carried))
    return gateway


def _receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    """The handover line and the descriptors that came with it (blocking)."""
    try:
        data, fds, flags, _ = socket.recv_fds(conn, 1 << 16, MAX_SOCKETS)
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise TakeoverError("the listening sockets did not all arrive (MSG_CTRUNC)")
        while data and not data.endswith(b"\n"):
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise TakeoverError("the running gateway did not answer the takeover") from None
    return data, fds


def _decode(line: bytes, received: int) -> Handover:
    try:
        reply = json.loads(line) if line else None
    except ValueError:
        reply = None
    if isinstance(reply, dict) and reply.get("ok") is False:
        raise TakeoverError(f"the running gateway refused: {reply.get('error')}")
    try:
        handover = Handover.decode(line)
    except HandoverError as exc:
        raise TakeoverError(f"the running gateway's answer: {exc} (is it another version "
                            "of xmppgw?)") from None
    if received != len(handover.listeners):
        raise TakeoverError(f"{received} sockets received, {len(handover.listeners)} "
                            "announced")
    return handover


def _release(conn: socket.socket, drain: float) -> dict[str, Any] | None:
    """Step 3 (blocking); the old process's answer, or None if none came."""
    try:
        conn.sendall(json.dumps({"command": "release", "drain": drain}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(1 << 16)
            if not chunk:
                return None
            data += chunk
        answer = json.loads(data)
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


# --- SIGUSR2: start the successor from the running gateway (systemd) ---------------------------


def spawn_successor(config: Config, log: Any,
                    drain: float = DEFAULT_DRAIN) -> subprocess.Popen[bytes] | None:
    """`xmppgw run --takeover --drain <drain> -c <our config>` as our child, with our stdout
    and stderr: under systemd it runs in the service's cgroup, so its MAINPID= is accepted.
    `drain` is our own `--drain`: the successor gives us as long, and passes it on."""
    argv = [sys.executable, "-m", "xmppgw", "run", "--takeover", "--drain", f"{drain:g}",
            "-c", str(config.path)]
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    except OSError as exc:
        log.error("takeover_spawn_failed", error=exc.strerror or str(exc))
        return None
    log.warning("takeover_spawned", pid=child.pid, argv=argv)
    _watch(child, log)
    return child


def _watch(child: subprocess.Popen[bytes], log: Any) -> None:
    """Reap the successor if it exits while we run (a failed takeover: we carry on)."""
    code = child.poll()
    if code is None:
        asyncio.get_running_loop().call_later(1.0, _watch, child, log)
    elif code != 0:
        log.error("takeover_successor_failed", pid=child.pid, status=code)
