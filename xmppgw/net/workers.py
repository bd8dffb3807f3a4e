"""Running the gateway: one process, or a master and `workers` forked workers.

With `workers = N` the master binds N listening sockets per vserver with SO_REUSEPORT (so a
bind error is reported once, before any fork, and the kernel spreads new connections over
the workers), makes the shared table of SLB counters, forks the workers and restarts any
that dies. SIGTERM/SIGINT to the master stop every worker cleanly. Only worker 0 serves the
control socket; what it shows is summed over the workers through the shared table.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from xmppgw import config as configmod
from xmppgw import notify
from xmppgw.config import Config
from xmppgw.log import flush as flush_log
from xmppgw.metrics import cleanup_multiprocess, prepare_multiprocess, worker_died
from xmppgw.net.gateway import Gateway
from xmppgw.net.listeners import listen_socket
from xmppgw.net.reload import ReloadRefused
from xmppgw.net.shared import WorkerShared, make_shared
from xmppgw.net.takeover import DEFAULT_DRAIN, Releaser, spawn_successor, take_over

LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None
RESPAWN_PAUSE = 1.0  # a worker that dies at once is not restarted in a tight loop


def run(config: Config, log: Any, loop_factory: LoopFactory,
        takeover: bool = False, drain: float = DEFAULT_DRAIN) -> int:
    """`takeover`: take the running gateway's sockets over (`xmppgw run --takeover`), and
    give its streams `drain` seconds to end (net/takeover.py; workers = 1 only). A
    successor started by SIGUSR2 is given the same `drain`."""
    if takeover:
        if config.gateway.workers != 1:
            print("xmppgw: --takeover needs gateway.workers = 1 (this config has "
                  f"{config.gateway.workers}): restart the gateway instead",
                  file=sys.stderr, flush=True)
            return 1
        return run_worker(config, log, loop_factory, takeover=True, drain=drain)
    if config.gateway.workers == 1:
        return run_worker(config, log, loop_factory, drain=drain)
    metrics_dir = prepare_multiprocess() if config.gateway.metrics else None
    try:
        return _run_master(config, log, loop_factory)
    finally:
        if metrics_dir is not None:
            cleanup_multiprocess(metrics_dir)


def _run_master(config: Config, log: Any, loop_factory: LoopFactory) -> int:
    try:
        sockets = bind_all(config)
    except OSError as exc:
        start_failed(log, exc.strerror)
        return 1
    return Master(config, log, loop_factory, sockets,
                  make_shared(config, config.gateway.workers)).run()


def bind_all(config: Config) -> list[dict[str, socket.socket]]:
    """One SO_REUSEPORT socket per worker per vserver in service, all bound before forking."""
    per_worker: list[dict[str, socket.socket]] = [{} for _ in range(config.gateway.workers)]
    try:
        for vs in config.vservers:
            if vs.inservice:
                for sockets in per_worker:
                    sockets[vs.name] = listen_socket(vs, config.gateway.keepalive,
                                                     reuse_port=True)
    except OSError:
        for sockets in per_worker:
            for sock in sockets.values():
                sock.close()
        raise
    return per_worker


def run_worker(config: Config, log: Any, loop_factory: LoopFactory, worker: int = 0,
               shared: WorkerShared | None = None,
               sockets: dict[str, socket.socket] | None = None,
               ready_fd: int | None = None, takeover: bool = False,
               drain: float = DEFAULT_DRAIN) -> int:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(_serve(config, log, worker, shared, sockets, ready_fd, takeover,
                              drain))
        except OSError as exc:
            start_failed(log, exc.strerror)
            return 1
    return 0


def start_failed(log: Any, error: str | None) -> None:
    """The log's `start_failed` line, and the same words plainly on stderr for whoever
    reads that apart (systemd's journal, a script capturing stderr); not when stdout and
    stderr are both the terminal, where the log line, in the chosen format, already shows."""
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        print(f"xmppgw: {error}", file=sys.stderr, flush=True)
    log.error("start_failed", error=error)


async def _serve(config: Config, log: Any, worker: int, shared: WorkerShared | None,
                 sockets: dict[str, socket.socket] | None, ready_fd: int | None,
                 takeover: bool = False, drain: float = DEFAULT_DRAIN) -> None:
    """Serve until SIGTERM/SIGINT, or until the streams are gone after a takeover by a new
    process (net/takeover.py). Once every listener is bound: READY=1 to systemd when this is
    the only process (`take_over` sends it with MAINPID=), else one byte on `ready_fd` (the
    master's, see `Master.run`). SIGUSR2 (one process): start the successor."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if takeover:
        gateway = await take_over(config, log, drain)
    else:
        gateway = Gateway(config, log, worker, shared, sockets)
    releaser = Releaser(gateway, stop.set)
    gateway.conversations["takeover"] = releaser.converse
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reload = gateway.reload_from_slot if shared is not None else lambda: _reload_file(gateway)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
    if shared is None:
        loop.add_signal_handler(signal.SIGUSR2, lambda: spawn_successor(config, log, drain))
    if not takeover:
        await gateway.start()
    if shared is None:
        if not takeover:  # after a takeover: MAINPID= and READY=1 are sent (take_over)
            notify.ready()
    elif ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    event = "started" if shared is None else "worker_started"
    log.info(event, config=config.path, loop=type(loop).__module__, pid=os.getpid())
    await stop.wait()
    if shared is None and not releaser.released:  # handed over: no longer the service
        notify.stopping()
    log.info("stopping" if shared is None else "worker_stopping")
    await gateway.stop(graceful=True)  # after a takeover too: a SIGTERM may cut the drain short
    if shared is None:
        log.info("stopped")


async def _reload_file(gateway: Gateway) -> None:
    """SIGHUP with one process: check the file, then apply it; a bad one changes nothing."""
    try:
        config = configmod.load(gateway.config.path)
        await gateway.reload(config)
    except configmod.ConfigError as exc:
        gateway.log.error("reload_refused", problems=exc.problems)
    except ReloadRefused as exc:
        gateway.log.error("reload_refused", problems=[str(exc)])


class Master:
    def __init__(self, config: Config, log: Any, loop_factory: LoopFactory,
                 sockets: list[dict[str, socket.socket]], shared: WorkerShared) -> None:
        self.config = config
        self.log = log
        self.loop_factory = loop_factory
        self.sockets = sockets
        self.shared = shared
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker, started)
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)
        signal.signal(signal.SIGUSR2, self._no_takeover)
        ready_r, ready_w = os.pipe()
        for worker in range(len(self.sockets)):
            self._spawn(worker, (ready_r, ready_w))
        os.close(ready_w)
        self._notify_ready(ready_r)
        self.log.info("started", config=self.config.path, workers=len(self.sockets),
                      pid=os.getpid())
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            worker, started = self.children.pop(pid)
            worker_died(pid)
            if self.stopping:
                continue
            self.log.warning("worker_exited", worker=worker, pid=pid,
                             status=os.waitstatus_to_exitcode(status))
            self.shared.table.clear(worker)
            if time.monotonic() - started < RESPAWN_PAUSE:
                time.sleep(RESPAWN_PAUSE)
            self._spawn(worker)
        for sockets in self.sockets:
            for sock in sockets.values():
                sock.close()
        self.log.info("stopped")
        return 0

    def _notify_ready(self, ready_r: int) -> None:
        """READY=1 to systemd once every first worker has started (each writes one byte when
        its listeners and, for worker 0, the control socket are up). A worker that dies first
        closes its end without writing: then READY=1 is not sent, and systemd's start
        timeout ends a gateway that cannot start."""
        got = b""
        with os.fdopen(ready_r, "rb", buffering=0) as pipe:
            while len(got) < len(self.sockets):
                chunk = pipe.read(len(self.sockets) - len(got))
                if not chunk:
                    break
                got += chunk
        if len(got) == len(self.sockets) and not self.stopping:
            notify.ready()

    def _stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            notify.stopping()
            self.log.info("stopping", signal=signal.Signals(signum).name)
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _no_takeover(self, _signum: int, _frame: object) -> None:
        self.log.error("takeover_refused", reason=f"gateway.workers = {len(self.sockets)}: "
                       "takeover needs workers = 1 (restart the gateway instead)")

    def _reload(self, _signum: int, _frame: object) -> None:
        """SIGHUP (also sent by worker 0 for `xmppgw reload`): check and resolve the file once
        (secrets read here), put the resulting config where the workers read it, and tell
        them. A bad file changes nothing."""
        try:
            config = configmod.load(self.config.path)
        except configmod.ConfigError as exc:
            self.log.error("reload_refused", problems=exc.problems)
            return
        if self.shared.rows.missing(config):
            self.log.error("reload_refused", problems=[
                "more reals or vservers than the shared tables hold: restart instead"])
            return
        notify.reloading()
        self.shared.rows.assign(config)
        self.shared.slot.write(config)
        self._drop_moved_sockets(config)
        self.config = config  # what a respawned worker starts with
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
        notify.ready()  # handed out: each worker applies it from the slot at once

    def _drop_moved_sockets(self, config: Config) -> None:
        """Our copies of listening sockets whose vserver is gone or moved: closed, so only
        the workers' new sockets take its clients (workers bind the new ones themselves)."""
        keep = {v.name: (v.virtual, v.mode) for v in config.vservers}
        old = {v.name: (v.virtual, v.mode) for v in self.config.vservers}
        for sockets in self.sockets:
            for name in [n for n in sockets if keep.get(n) != old.get(n)]:
                sockets.pop(name).close()

    def _spawn(self, worker: int, ready: tuple[int, int] | None = None) -> None:
        """Fork worker `worker`; `ready` (read end, write end): the first workers' pipe
        to `_notify_ready` (a respawned worker has none)."""
        pid = os.fork()
        if pid:
            self.children[pid] = (worker, time.monotonic())
            return
        code = 1
        try:
            if ready is not None:
                os.close(ready[0])
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            signal.signal(signal.SIGUSR2, signal.SIG_DFL)
            for other, sockets in enumerate(self.sockets):
                if other != worker:
                    for sock in sockets.values():
                        sock.close()
            code = run_worker(self.config, self.log.bind(worker=worker), self.loop_factory,
                              worker, self.shared, self.sockets[worker],
                              ready[1] if ready is not None else None)
        finally:
            flush_log()
            os._exit(code)
