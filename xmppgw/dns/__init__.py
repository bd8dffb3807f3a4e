"""SRV publishing from live health.

- `records`: which records, from the config and the reals' states (pure: no I/O, no clock);
- `server`: the embedded authoritative server (`answer()` is pure, the asyncio part thin);
- `publisher`: keeps the records current in the running gateway and feeds the server and
  the RFC 2136 sender (`rfc2136`)."""
