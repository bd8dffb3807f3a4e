"""`show` output in IOS's layout, from a snapshot (`control/snapshot.py`): pure, so the seed's
lines are tested word for word without a running gateway. Each function takes the typed
`GatewaySnapshot` or its JSON shape (what the control socket carries).

The seed's `show ip slb serverfarms detail`:

    XMPP predictor = LEASTCONNS, nat =SERVER, interface(s) =
    virtuals inservice: 4, reals = 4, bind id = 0
    Real servers:
    213.134.162.162, weight = 5, OPERATIONAL, conns = 415
    ...
    Total connections = 1245
"""

from __future__ import annotations

from typing import Any

from xmppgw.control.snapshot import (
    FarmSnapshot,
    GatewaySnapshot,
    ProbeSnapshot,
    RealSnapshot,
    typed,
)

Snapshot = GatewaySnapshot | dict[str, Any]


def serverfarms_detail(snapshot: Snapshot) -> str:
    blocks = []
    for farm in typed(snapshot).serverfarms:
        head = (f"{farm.name} predictor = {farm.predictor.upper()}, "
                f"nat = {farm.nat.upper()}, interface(s) = <none>")
        counts = (f"virtuals inservice: {farm.virtuals_inservice}, "
                  f"reals = {len(farm.reals)}, bind id = 0")
        lines = [head, counts, *_overload_lines(farm), "Real servers:"]
        lines += [f"{r.address}, weight = {r.weight}, {r.state}, conns = {r.conns}"
                  + (f", {drain_text(r)}" if r.drain_end else "") for r in farm.reals]
        lines.append(f"Total connections = {farm.conns}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def drain_text(real: RealSnapshot) -> str:
    """`drain ends 2026-11-29T23:59:00Z (in 540s)`, or `... (ended)` once passed."""
    left = real.drain_left or 0.0
    return f"drain ends {real.drain_end} ({f'in {left:.0f}s' if left > 0 else 'ended'})"


def _overload_lines(farm: FarmSnapshot) -> list[str]:
    """Only when there is something to say, so a quiet farm reads exactly as IOS's."""
    lines = []
    if farm.panic:
        lines.append(panic_line(farm))
    if farm.queue:
        lines.append(f"queue = {farm.queue} waiting for a real with room"
                     f" (queued since start {farm.queued_total},"
                     f" timed out {farm.queue_timeouts})")
    return lines


def panic_line(farm: FarmSnapshot) -> str:
    return (f"PANIC: {farm.available} of {farm.inservice} reals in service available,"
            f" under panic_threshold {farm.panic_threshold}%: balancing over all in service")


def serverfarms(snapshot: Snapshot) -> str:
    farms = typed(snapshot).serverfarms
    rows = [("server farm", "predictor", "nat", "reals", "bind id")]
    rows += [(f.name, f.predictor.upper(), f.nat[0].upper(), str(len(f.reals)), "0")
             for f in farms]
    notes = [f"{f.name}: {line}" for f in farms for line in _overload_lines(f)]
    return _table(rows) + "".join(f"{line}\n" for line in notes)


def reals(snapshot: Snapshot, detail: bool = False) -> str:
    """`show ip slb reals [detail]`: one row per real, counters in detail.

    With probes configured, detail adds a `probe` column (each probe's verdict and last
    round trip) and, under the table, the last error of every probe whose last run failed:
    a real going PROBE_FAILED should say why without a trip to the log. A real out of
    service with `--drain` gets a line under the table saying when its streams close."""
    snap = typed(snapshot)
    probed = detail and any(r.probes for _, r in snap.reals())
    head = ("real", "server farm", "weight", "state", "conns")
    if detail:
        head += ("connecting", "total", "failed", "reassigns", "since")
    if probed:
        head += ("probe",)
    rows = [head]
    errors = []
    drains = [f"{r.address} ({farm.name}): {drain_text(r)}"
              for farm, r in snap.reals() if detail and r.drain_end]
    for farm, r in snap.reals():
        row = (r.address, farm.name, str(r.weight), r.state, str(r.conns))
        if detail:
            limit = r.max_connecting
            row += (f"{r.connecting}/{limit if limit else '-'}",
                    str(r.total), str(r.failed_attempts), str(r.reassigns),
                    f"{r.state_age:.0f}s")
        if probed:
            row += (", ".join(_probe_cell(p) for p in r.probes) or "-",)
            errors += [f"{r.address} ({farm.name}) {p.type}:{p.port}: {p.last_error}"
                       for p in r.probes if p.last_result == "failed"]
        rows.append(row)
    table = _table(rows)
    if drains:
        table += "\ndraining:\n" + "".join(f"{line}\n" for line in drains)
    if not errors:
        return table
    return table + "\nprobe errors:\n" + "".join(f"{line}\n" for line in errors)


def _probe_cell(probe: ProbeSnapshot) -> str:
    """`xmpp-ping up 0.6ms`; `down` in capitals, as an operator scans for it."""
    verdict = "up" if probe.verdict == "up" else "DOWN"
    rtt = "" if probe.last_rtt is None or verdict != "up" else (
        f" {probe.last_rtt * 1000:.1f}ms")
    implicit = " (implicit)" if probe.implicit else ""
    return f"{probe.type}{implicit} {verdict}{rtt}"


def vservers(snapshot: Snapshot) -> str:
    rows = [("slb vserver", "virtual", "mode", "state", "conns")]
    rows += [(v.name, v.virtual, v.mode, "OPERATIONAL" if v.inservice else "OUTOFSERVICE",
              str(v.conns)) for v in typed(snapshot).vservers]
    return _table(rows)


def conns(snapshot: Snapshot) -> str:
    """`show ip slb conns`: one row per client connection (of worker 0 with workers)."""
    snap = typed(snapshot)
    rows = [("vserver", "client", "real", "kind", "to", "state", "age")]
    rows += [(c.vserver, c.client, c.real or "-", c.kind or "-", c.to or "-", c.state,
              f"{c.age:.0f}s") for c in snap.conns or ()]
    note = snap.conns_note
    return _table(rows) + (f"({note})\n" if note else "")


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n"
