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

If the new process fails before step 3 it says why (`{"command": "abort", "reason": R}`,
logged by the old process) and exits (its copies of the sockets close); the old process,
seeing the connection end without a release, carries on as before.

Never two gateways: when the release is not confirmed (the old process gave the takeover up
after RELEASE_WAIT, say while the new one was stopped), the new process serves only if the
old one has exited (`process_gone`); while it lives, the new process closes what it took and
exits non-zero (`after_release`). The old process, giving a takeover up, takes its control
socket's path back if the new one had already renamed its own over it (`rebind_control`),
then and again on each late line and at the connection's end, and answers a late release
with a refusal. While the claim is held (and after the release) it refuses the operator
commands that would change it (`Releaser.guard`): they would not be carried over.

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
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from xmppgw import notify
from xmppgw.config import Config
from xmppgw.control.server import ControlServer
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
READ_ONLY = frozenset({"show", "zone"})  # control commands answered while a claim is held


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


def process_gone(pid: int | None, pidfd: int | None = None) -> bool:
    """Whether the process has exited (a zombie, not yet reaped, counts as exited). With a
    `pidfd` (pidfd_open(2), taken while the process was known alive): readable once it has
    exited, whatever became of its pid since. Else kill(pid, 0) and /proc/<pid>/stat. False
    when it cannot be told (no pid): not known to be gone."""
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], 0)[0])
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # none, or only a message's claim
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, as another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def open_pidfd(pid: int | None) -> int | None:
    """pidfd_open(2) on `pid`, or None (no pid, a kernel before 5.3, the process gone)."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


Verdict = Literal["serve", "alone", "give_up"]


def after_release(answer: dict[str, Any] | None, old_gone: bool,
                  old_pid: int | None) -> tuple[Verdict, str]:
    """What the new process does after step 3, and why. "serve": the old process confirmed
    the release. "alone": it did not, but it has exited: its sockets are ours only. "give_up":
    it did not, and it lives (it gave the takeover up, or is stopped, or is stopping): this
    process must not serve beside it (two gateways on one port, with two engines)."""
    if isinstance(answer, dict) and answer.get("ok") is True:
        return "serve", "released"
    why = (f"it answered: {answer.get('error')}" if isinstance(answer, dict)
           else "no answer")
    if old_gone:
        return "alone", (f"the old gateway (pid {old_pid}) did not confirm the release ({why}) "
                         "and has exited: its sockets are ours alone")
    return "give_up", (f"the old gateway (pid {old_pid}) did not confirm the release ({why}) "
                       "and is still running: it serves on, and this process gives up (two "
                       "gateways must not serve the same ports)")


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

    def command_refusal(self, released: bool, now: float) -> str:
        """What an operator command that would change the gateway is told meanwhile."""
        if released:
            return (f"refused: this gateway was taken over by pid {self.pid} and only lets its "
                    "streams end; the control socket is the new process's")
        return (f"refused while {self.refusal(False, now)}: a change made now would not be "
                "carried over to the new process; try again once the takeover is done")


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
        self._rebinding = asyncio.Lock()

    def guard(self, request: dict[str, Any]) -> str | None:
        """Why an operator command is refused now (a claim is held, or this gateway was
        taken over), or None; `show` and `zone` are always answered."""
        if self.claim is None or request.get("command") in READ_ONLY:
            return None
        return self.claim.command_refusal(self.released, time.time())

    async def converse(self, request: dict[str, Any], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        gw = self.gateway
        if gw.control is not None:
            gw.control.guard = self.guard
        kernel_pid = peer_pid(writer.get_extra_info("socket"))
        peer = pid_fields("new", kernel_pid, request.get("pid"))
        refusal = self._refusal()
        if refusal is not None:
            gw.log.warning("takeover_refused", reason=refusal, **peer)
            writer.write(json.dumps({"ok": False, "error": refusal}).encode() + b"\n")
            await writer.drain()
            return
        now = time.time()
        self.claim = Claim(peer["new_pid"], now, now + RELEASE_WAIT)
        aborted = None
        try:
            aborted = await self._hand_over(peer, kernel_pid, reader, writer)
        finally:
            if not self.released:
                self.claim = None  # the connection ended (or timed out): free at once
        if aborted is not None:
            await self._after_abort(peer, aborted, reader, writer)

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

    async def _hand_over(self, peer: dict[str, Any], kernel_pid: int | None,
                         reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> str | None:
        """Steps 1 and 3; the reason when the takeover is given up after the offer.
        `kernel_pid`: the new process as SO_PEERCRED names it (None: not known here)."""
        gw = self.gateway
        loop = asyncio.get_running_loop()
        listening = [(vs.name, sock) for vs in gw.listeners.listening() if not vs.retired
                     for sock in vs.server.sockets]
        if len(listening) > MAX_SOCKETS:
            writer.write(json.dumps({"ok": False, "error": f"more than {MAX_SOCKETS} "
                                     "listening sockets"}).encode() + b"\n")
            return None
        message = Handover(
            pid=os.getpid(),
            listeners=tuple((name, *sock.getsockname()[:2]) for name, sock in listening),
            real_admin={key: held for key, row in gw.rows.reals.items()
                        if (held := gw.admin.real(row)) is not None},
            vserver_admin={name: held for name, row in gw.rows.vservers.items()
                           if (held := gw.admin.vserver(row)) is not None},
            health=farm_health(gw.farms.values(), loop.time()),
            panic=tuple(farm.name for farm in gw.farms.values() if farm.panic))
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
        if isinstance(step, dict) and step.get("command") == "abort":
            reason = f"the new process gave up: {step.get('reason')}"
        elif (isinstance(step, dict) and step.get("command") == "release"
              and process_gone(kernel_pid)):
            # It gave up (and exited) while this process could not answer (stopped, say):
            # releasing now would leave nobody accepting.
            step = None
        if not isinstance(step, dict) or step.get("command") != "release":
            gw.log.warning("takeover_aborted", reason=reason, **peer)
            return reason
        drain = float(step.get("drain", DEFAULT_DRAIN))
        await self._release(peer, drain)
        writer.write(json.dumps({"ok": True, "data": {
            "pid": os.getpid(), "sessions": len(gw.sessions), "drain": drain}}).encode() + b"\n")
        await writer.drain()
        return None

    async def _after_abort(self, peer: dict[str, Any], reason: str,
                           reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A takeover given up after the offer: this process serves on, so its control path
        must name it again if the new process renamed its own over it (it does so before it
        sends the release: so now, on each late line, and when the connection ends). A late
        release is refused: the new process then gives up (`after_release`)."""
        await self._take_path_back(peer)
        refusal = json.dumps({"ok": False, "error": f"the takeover was given up ({reason}): "
                              f"pid {os.getpid()} serves on"}).encode() + b"\n"
        try:
            while await reader.readline():  # a stalled process holds only this connection
                await self._take_path_back(peer)
                writer.write(refusal)
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        await self._take_path_back(peer)

    async def _take_path_back(self, peer: dict[str, Any]) -> None:
        gw = self.gateway
        async with self._rebinding:
            if (gw.control is None or gw.stopping or self.released or self.claim is not None
                    or gw.control.owns_path()):
                return  # ours still, or another takeover is under way (its abort does this)
            if await rebind_control(gw):
                # The new process said MAINPID= before its release: systemd must take this
                # one for the service's main process again.
                notify.notify(f"MAINPID={os.getpid()}")
                gw.log.warning("takeover_control_reclaimed", path=str(gw.control.path),
                               **peer)

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


async def rebind_control(gw: Gateway) -> bool:
    """Make the configured control path name this gateway again: a fresh socket is bound
    beside it and renamed over it (rename(2): a client finds one gateway or the other), and
    the old listener, whose file another process replaced, is closed (connections under way
    go on). True if done; an error is logged (`takeover_control_lost`) and False if not."""
    control = gw.control
    path = gw.config.gateway.control_socket
    if control is None or not path:
        return False
    fresh = ControlServer(f"{path}.rebind-{os.getpid()}", control.handler, gw.log,
                          gw.config.gateway.control_group, control.conversations)
    fresh.guard = control.guard
    try:
        await fresh.start()
        fresh.move_to(path)
    except OSError as exc:
        fresh.close()
        gw.log.error("takeover_control_lost", path=path, error=exc.strerror or str(exc))
        return False
    control.close()  # not unlinked: the path is the fresh socket's
    gw.control = fresh
    return True


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
    start, or if the old process did not confirm the release and still runs: the old
    gateway then runs on, and this process has closed what it took."""
    path = config.gateway.control_socket
    if not path:
        raise TakeoverError(f"{config.path}: --takeover needs gateway.control_socket (the "
                            "running gateway is asked for its sockets there)")
    loop = asyncio.get_running_loop()
    conn = await loop.run_in_executor(None, _ask, path)
    old_pid = peer_pid(conn)
    old_pidfd = open_pidfd(old_pid)  # now, while it answers: no pid reuse can fool it later
    try:
        try:
            gateway = await _adopt(config, log, conn, path)
        except OSError as exc:  # the old process logs why, not only that we went away
            await loop.run_in_executor(None, _give_up, conn, exc.strerror or str(exc))
            raise
        if gateway.control is not None:  # until the release is confirmed: see `_not_yet`
            gateway.control.guard = _not_yet(old_pid)
        gateway.take_control_path()
        # Before the release: the old process may exit at once (no streams), and systemd
        # must know by then that the service's main process is this one.
        notify.notify(f"MAINPID={os.getpid()}", "READY=1")
        answer = await loop.run_in_executor(None, _release, conn, drain)
        verdict, why = after_release(answer, process_gone(old_pid, old_pidfd), old_pid)
        if verdict == "give_up":
            log.error("takeover_given_up", reason=why, old_pid=old_pid)
            if old_pid is not None:
                notify.notify(f"MAINPID={old_pid}")  # the service's main process again
            # Before the connection closes: the old process takes the control path back
            # when it sees it end, and our socket file must be gone (or replaced) by then.
            await gateway.stop()
            raise TakeoverError(why)
    finally:
        conn.close()
        if old_pidfd is not None:
            os.close(old_pidfd)
    if gateway.control is not None:
        gateway.control.guard = None
    if verdict == "alone":
        log.warning("takeover_no_answer", reason=why, old_pid=old_pid)
        if gateway.control is not None and not gateway.control.owns_path():
            await rebind_control(gateway)  # the old one took it back, then exited
    # The old process has let go: this one is the only one serving, so a metrics or SRV
    # port it cannot take must not stop it; it goes on without that side, saying so.
    for exc in await gateway.start_side(fatal=False):
        log.error("takeover_side_failed", error=exc.strerror or str(exc))
    return gateway


def _not_yet(old_pid: int | None) -> Callable[[dict[str, Any]], str | None]:
    """The new process's guard until the old one has let go: a change it accepted now
    would be lost if it gives up (`after_release`)."""
    def guard(request: dict[str, Any]) -> str | None:
        if request.get("command") in READ_ONLY:
            return None
        return (f"refused: pid {os.getpid()} is taking over from pid {old_pid} and the old "
                "gateway has not let go yet; try again in a moment")
    return guard


def _give_up(conn: socket.socket, reason: str) -> None:
    """Tell the old process why this one goes away before the release (best effort)."""
    try:
        conn.sendall(json.dumps({"command": "abort", "reason": reason}).encode() + b"\n")
    except OSError:
        pass


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


async def _adopt(config: Config, log: Any, conn: socket.socket, path: str) -> Gateway:
    loop = asyncio.get_running_loop()
    line, fds = await loop.run_in_executor(None, _receive, conn, path)
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
    restored = restore_health(gateway.farms, handover.health, loop.time(), admin,
                              handover.panic)
    try:
        await gateway.start(handover=True)
    finally:
        for sock in gateway.listeners.sockets.values():  # received, but not listened on
            sock.close()
        gateway.listeners.sockets.clear()
    # Said once it is sure to serve (a vserver it cannot bind stops it first), not as changes
    for farm, real, state, age in restored.carried:  # see handover.py
        log.warning("real_state_carried", farm=farm, real=real, state=str(state),
                    age=round(age, 3), old_pid=old_pid)
    for farm, available, inservice, threshold in restored.panic_carried:
        log.warning("farm_panic_carried", farm=farm, available=available,
                    inservice=inservice, threshold=threshold, old_pid=old_pid)
    if gateway.health is not None:  # PROBE_FAILED reals: their probes start down
        for farm, real in restored.probe_down:
            health = gateway.health.schedule.real(farm, real)
            for probe in health.probes if health is not None else ():
                probe.up, probe.streak = False, 0
    listening = {vs.name for vs in gateway.listeners.listening()}
    log.warning("takeover_adopted", **old_peer,
                adopted=sorted(name for name in plan.adopt if name in listening),
                bound=[name for name in plan.bind if name in listening],
                out_of_service=sorted({*plan.adopt, *plan.bind} - listening),
                closed=[handover.listeners[i][0] for i in plan.close],
                carried_admin=len(handover.real_admin) + len(handover.vserver_admin),
                carried_health=sum(h.has_counts() for h in handover.health),
                carried_states=len(restored.carried))
    return gateway


def _receive(conn: socket.socket, path: str) -> tuple[bytes, list[int]]:
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
        raise TakeoverError(f"the gateway on {path} accepted the connection but did not "
                            f"answer the takeover within {EXCHANGE_TIMEOUT:g} s (is it stopped "
                            "or overloaded?): nothing was changed") from None
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


# The successor SIGUSR2 started, while it runs (one process, one successor at a time).
_successor: list[subprocess.Popen[bytes]] = []


def spawn_successor(config: Config, log: Any,
                    drain: float = DEFAULT_DRAIN) -> subprocess.Popen[bytes] | None:
    """`xmppgw run --takeover --drain <drain> -c <our config>` as our child, with our stdout
    and stderr: under systemd it runs in the service's cgroup, so its MAINPID= is accepted.
    `drain` is our own `--drain`: the successor gives us as long, and passes it on. While
    the one started before still runs, none is started: `takeover_already_running` says
    so, with its pid."""
    running = [child for child in _successor if child.poll() is None]
    if running:
        log.warning("takeover_already_running", pid=running[0].pid,
                    reason="SIGUSR2 ignored: the successor it started before still runs")
        return None
    _successor.clear()
    argv = [sys.executable, "-m", "xmppgw", "run", "--takeover", "--drain", f"{drain:g}",
            "-c", str(config.path)]
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    except OSError as exc:
        log.error("takeover_spawn_failed", error=exc.strerror or str(exc))
        return None
    log.warning("takeover_spawned", pid=child.pid, argv=argv)
    _successor.append(child)
    _watch(child, log)
    return child


def _watch(child: subprocess.Popen[bytes], log: Any) -> None:
    """Reap the successor if it exits while we run (a failed takeover: we carry on)."""
    code = child.poll()
    if code is None:
        asyncio.get_running_loop().call_later(1.0, _watch, child, log)
    elif code != 0:
        log.error("takeover_successor_failed", pid=child.pid, status=code)
