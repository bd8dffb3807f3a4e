"""Active health probes: each real is checked by `tcp`, `xmpp-stream` or `xmpp-ping` probes,
and `fall` failed probes in a row take it out of the picks (PROBE_FAILED) until `rise`
successful ones bring it back.

- `state.py`: the pure part. When each probe is due, rise/fall counting, what a real's
  verdict is; every call takes `now`, so timelines are unit-tested on a fake clock.
- `wire.py`: the pure reader of a server's stream opening (header, features, stream error).
- `checks.py`: the probes themselves, one connection each (asyncio; slixmpp for the login).
- `runner.py`: the thin asyncio loop that starts what is due and hands verdicts to the
  gateway, which tells the engine (`Serverfarm.probe_result`) and, with `workers > 1`, the
  other workers through the shared table.

Passive failure detection (faildetect, retry) still works beside the probes: a probe sees a
real that is unwell before any client does, and sees a spare that is out of service, so an
operator knows its health before switching it in.
"""
