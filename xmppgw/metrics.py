"""Prometheus metrics (`gateway.metrics = "ADDRESS:PORT"`), with prometheus_client.

Two kinds of figures:

- events counted where they happen (connections by outcome, bytes, limit refusals, time to
  the first server byte): prometheus_client metrics. With `workers > 1` they use the
  library's multiprocess mode (each worker writes its own files under
  PROMETHEUS_MULTIPROC_DIR, the scrape sums them), which is why `prepare_multiprocess`
  must run before anything imports prometheus_client;
- state read at scrape time (each real's state, connections, failures; probe round
  trips): a collector over the gateway's snapshot, which already sums the workers through
  the shared table. Served by worker 0, which holds the control socket and the probes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from xmppgw.slb.types import RealState

if TYPE_CHECKING:
    from xmppgw.control.snapshot import GatewaySnapshot

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Buckets for time to first server byte: a healthy real answers a stream header in
# milliseconds; the upper ones catch hedged and reassigned connects (connect_timeout, 1 s).
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REAL_STATES = tuple(s.value for s in RealState)  # every state show prints, from the engine


def prepare_multiprocess() -> str:
    """A fresh directory for the workers' metric files; set before prometheus_client loads."""
    path = tempfile.mkdtemp(prefix="xmppgw-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def cleanup_multiprocess(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def worker_died(pid: int) -> None:
    """A dead worker's live gauges (active connections) must stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class Metrics:
    """The event metrics of one worker; the session calls these at a connection's turns."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.active = Gauge("xmppgw_connections_active", "Client connections open now",
                            ["vserver"], multiprocess_mode="livesum")
        self.connections = Counter(
            "xmppgw_connections", "Client connections ended, by error (none: a normal end; "
            "else the stream error condition, TLS alert, limit or drain)", ["vserver", "error"])
        self.bytes = Counter("xmppgw_bytes", "Bytes from and to clients (the gateway's own "
                             "answers included), counted when a connection ends",
                             ["vserver", "direction"])
        self.refused = Counter("xmppgw_limit_refused", "Connections refused by a limit",
                               ["vserver", "limit"])
        self.real_bytes = Counter("xmppgw_real_bytes", "Bytes relayed to and from each real, "
                                  "counted when a connection ends",
                                  ["serverfarm", "real", "direction"])
        self.real_connections = Counter("xmppgw_real_connections",
                                        "Client connections handed to a real",
                                        ["serverfarm", "real"])
        self.queued_conns = Counter("xmppgw_queued_connections", "Client connections that "
                                    "waited in a serverfarm's queue (every real at "
                                    "max_connecting)", ["serverfarm"])
        self.health_checks = Counter(
            "xmppgw_health_checks", "Connections from an accept_proxy balancer that ended "
            "without a byte (or with a PROXY LOCAL header alone): its TCP health checks",
            ["vserver"])
        self.ttfb = Histogram("xmppgw_time_to_first_server_byte_seconds",
                              "From the first connect attempt to the real's first byte",
                              ["vserver", "serverfarm"], buckets=TTFB_BUCKETS)

    def opened(self, vserver: str) -> None:
        self.active.labels(vserver).inc()

    def closed(self, vserver: str, error: str | None, from_client: int, to_client: int,
               farm: str | None = None, real: str | None = None,
               from_gateway: int = 0) -> None:
        """A connection ended. `to_client` counts every byte the client was sent,
        `from_gateway` of them the gateway's own answers (a stream error, an alert), which
        the per-real figures leave out."""
        self.active.labels(vserver).dec()
        self.connections.labels(vserver, error or "none").inc()
        self.bytes.labels(vserver, "from_client").inc(from_client)
        self.bytes.labels(vserver, "to_client").inc(to_client)
        if farm is not None and real is not None:
            self.real_bytes.labels(farm, real, "to_real").inc(from_client)
            self.real_bytes.labels(farm, real, "from_real").inc(to_client - from_gateway)

    def committed(self, vserver: str, farm: str, real: str, seconds: float) -> None:
        self.real_connections.labels(farm, real).inc()
        self.ttfb.labels(vserver, farm).observe(seconds)

    def health_check(self, vserver: str) -> None:
        self.health_checks.labels(vserver).inc()

    def limit_refused(self, vserver: str, limit: str) -> None:
        self.refused.labels(vserver, limit).inc()

    def queued(self, farm: str) -> None:
        self.queued_conns.labels(farm).inc()


class StateCollector:
    """Gateway-wide state at scrape time, from the same snapshot `xmppgw show` prints."""

    def __init__(self, snapshot: Callable[[], GatewaySnapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Any]:
        """Nothing up front: registering must not take a snapshot (it would wait on the
        event loop from the event loop's own thread)."""
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        data = self.snapshot()
        state = GaugeMetricFamily("xmppgw_real_state", "1 for the real's current state",
                                  labels=["serverfarm", "real", "state"])
        conns = GaugeMetricFamily("xmppgw_real_conns", "Connections the real owns (all "
                                  "workers)", labels=["serverfarm", "real"])
        weight = GaugeMetricFamily("xmppgw_real_weight", "Configured weight",
                                   labels=["serverfarm", "real"])
        failed = CounterMetricFamily("xmppgw_real_failed_attempts", "Failed connect attempts",
                                     labels=["serverfarm", "real"])
        reassigns = CounterMetricFamily("xmppgw_real_reassigns", "Connections moved on to "
                                        "another real after a failed attempt",
                                        labels=["serverfarm", "real"])
        rtt = GaugeMetricFamily("xmppgw_probe_rtt_seconds", "Last probe round trip",
                                labels=["serverfarm", "real", "type"])
        up = GaugeMetricFamily("xmppgw_probe_up", "1 if the probe's verdict is up",
                               labels=["serverfarm", "real", "type"])
        vserver_up = GaugeMetricFamily("xmppgw_vserver_inservice", "1 if it takes clients",
                                       labels=["vserver"])
        connecting = GaugeMetricFamily("xmppgw_real_connecting", "Attempts in flight to the "
                                       "real (all workers; max_connecting caps them)",
                                       labels=["serverfarm", "real"])
        queue = GaugeMetricFamily("xmppgw_serverfarm_queue", "Client connections waiting "
                                  "for a real with room (this worker)", labels=["serverfarm"])
        panic = GaugeMetricFamily("xmppgw_serverfarm_panic", "1 while the serverfarm is in "
                                  "panic mode (too few reals available: all in service "
                                  "are used)", labels=["serverfarm"])
        for farm in data.serverfarms:
            queue.add_metric([farm.name], farm.queue)
            panic.add_metric([farm.name], 1.0 if farm.panic else 0.0)
            for real in farm.reals:
                key = [farm.name, real.address]
                for name in REAL_STATES:
                    state.add_metric([*key, name], 1.0 if real.state == name else 0.0)
                conns.add_metric(key, real.conns)
                connecting.add_metric(key, real.connecting)
                weight.add_metric(key, real.weight)
                failed.add_metric(key, real.failed_attempts)
                reassigns.add_metric(key, real.reassigns)
                for probe in real.probes:
                    labels = [*key, probe.type]
                    up.add_metric(labels, 1.0 if probe.verdict == "up" else 0.0)
                    if probe.last_rtt is not None:
                        rtt.add_metric(labels, probe.last_rtt)
        for vs in data.vservers:
            vserver_up.add_metric([vs.name], 1.0 if vs.inservice else 0.0)
        yield from (state, conns, weight, failed, reassigns, rtt, up, vserver_up, connecting,
                    queue, panic)


def serve(host: str, port: int, snapshot: Callable[[], GatewaySnapshot]) -> Any:
    """The /metrics HTTP listener (a thread of prometheus_client's), for worker 0.

    The snapshot is taken on the event loop's thread: `snapshot` must be thread-safe to call
    (the gateway passes one that hops to its loop)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as mp

    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        mp.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    registry.register(StateCollector(snapshot))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
