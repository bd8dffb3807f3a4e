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

from xmppgw.config import Config
from xmppgw.log import flush as flush_log
from xmppgw.net.gateway import Gateway, listen_socket
from xmppgw.net.shared import SharedTable

LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None
RESPAWN_PAUSE = 1.0  # a worker that dies at once is not restarted in a tight loop


def run(config: Config, log: Any, loop_factory: LoopFactory) -> int:
    if config.gateway.workers == 1:
        return run_worker(config, log, loop_factory)
    try:
        sockets = bind_all(config)
    except OSError as exc:
        print(f"xmppgw: {exc.strerror}", file=sys.stderr, flush=True)
        log.error("start_failed", error=exc.strerror)
        return 1
    reals = sum(len(f.reals) for f in config.serverfarms)
    return Master(config, log, loop_factory, sockets, SharedTable(config.gateway.workers, reals)).run()


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
               shared: SharedTable | None = None,
               sockets: dict[str, socket.socket] | None = None) -> int:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(_serve(config, log, worker, shared, sockets))
        except OSError as exc:
            print(f"xmppgw: {exc.strerror}", file=sys.stderr, flush=True)
            log.error("start_failed", error=exc.strerror)
            return 1
    return 0


async def _serve(config: Config, log: Any, worker: int, shared: SharedTable | None,
                 sockets: dict[str, socket.socket] | None) -> None:
    gateway = Gateway(config, log, worker, shared, sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    event = "started" if shared is None else "worker_started"
    log.info(event, config=config.path, loop=type(loop).__module__, pid=os.getpid())
    await stop.wait()
    log.info("stopping" if shared is None else "worker_stopping")
    await gateway.stop()
    if shared is None:
        log.info("stopped")


class Master:
    def __init__(self, config: Config, log: Any, loop_factory: LoopFactory,
                 sockets: list[dict[str, socket.socket]], shared: SharedTable) -> None:
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
        for worker in range(len(self.sockets)):
            self._spawn(worker)
        self.log.info("started", config=self.config.path, workers=len(self.sockets),
                      pid=os.getpid())
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            worker, started = self.children.pop(pid)
            if self.stopping:
                continue
            self.log.warning("worker_exited", worker=worker, pid=pid,
                             status=os.waitstatus_to_exitcode(status))
            self.shared.clear(worker)
            if time.monotonic() - started < RESPAWN_PAUSE:
                time.sleep(RESPAWN_PAUSE)
            self._spawn(worker)
        for sockets in self.sockets:
            for sock in sockets.values():
                sock.close()
        self.log.info("stopped")
        return 0

    def _stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            self.log.info("stopping", signal=signal.Signals(signum).name)
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _spawn(self, worker: int) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = (worker, time.monotonic())
            return
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            for other, sockets in enumerate(self.sockets):
                if other != worker:
                    for sock in sockets.values():
                        sock.close()
            code = run_worker(self.config, self.log.bind(worker=worker), self.loop_factory,
                              worker, self.shared, self.sockets[worker])
        finally:
            flush_log()
            os._exit(code)
