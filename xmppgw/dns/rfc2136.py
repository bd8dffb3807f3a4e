"""RFC 2136 dynamic updates to a primary the operator runs (BIND, Knot, PowerDNS).

Two parts, so the rules are tested on a fake clock and the I/O stays thin:

- `UpdatePlanner` (pure: no sockets, no clock, no logging) holds, per zone, the desired set,
  the last set the primary acknowledged, and when to send next. It turns their difference
  into `Update`s of whole RRsets: every (name, type) that changed is deleted and added again
  in one message, every (name, type) that went away is deleted. Deleting and re-adding the
  whole RRset, rather than single records, makes each update idempotent: sending it twice,
  or after a timeout that the primary did act on, leaves the same zone.
- `UpdateSender` (asyncio) signs the updates with TSIG, sends them over TCP and reports the
  primary's answer back to the planner.

The rules, in the planner:

- **First update replaces.** Until the primary has acknowledged one update for a zone, we do
  not know what is at our names (an earlier run, an operator's hand edit), so the first one
  replaces every RRset we publish. Later ones carry only what changed since the last
  acknowledged state.
- **Coalescing.** The first change not yet sent opens a window of `coalesce` seconds; every
  change inside it goes in the same update, sent when the window closes. Only the net
  difference is sent: a real that flaps down and up inside the window sends nothing.
- **One update in flight per zone.** Changes made while one is on its way are sent after it,
  in the next window.
- **Backoff.** A refusal (any rcode but NOERROR), a timeout or an unreachable primary is
  retried after `retry_min`, doubling up to `retry_max`; the retry carries the latest desired
  state, not the stale one. The RRsets a failed update touched count as unknown (a timed-out
  update may have been applied), so they are sent again even if they are back to what was
  acknowledged before. A success resets the backoff.
- **SOA serials are the primary's business**: an RFC 2136 primary bumps the serial itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update

from xmppgw.config import SrvUpdate

UPDATE_TIMEOUT = 5.0  # one update's round trip; past it the update has failed (and is retried)
STOP_GRACE = 2.0  # how long stop() waits for what is still pending to reach the primary
NOT_PUBLISHED = (dns.rdatatype.SOA, dns.rdatatype.NS)  # the primary's own: never ours to touch

Key = tuple[dns.name.Name, dns.rdatatype.RdataType]


# ---------------------------------------------------------------------------------------
# TSIG key files
# ---------------------------------------------------------------------------------------

# BIND's names for the HMAC algorithms (`algorithm hmac-sha256;`) -> the TSIG algorithm name.
ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file, the line and the fault."""


@dataclass(frozen=True, slots=True)
class TsigKey:
    """One TSIG key. The secret stays out of the repr, so no log line or traceback holds it."""

    name: str
    algorithm: str
    secret: bytes = field(repr=False)

    def to_dnspython(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, ALGORITHMS[self.algorithm])


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>(?:\#|//)[^\n]*|/\*.*?\*/)
  | (?P<open_comment>/\*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<punct>[{};])
  | (?P<word>[^\s{};"]+)
""", re.VERBOSE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    line: int
    quoted: bool = False


def _tokens(text: str, source: str) -> list[_Token]:
    """named.conf tokens: words, quoted strings, `{ } ;`; comments in all three styles."""
    out: list[_Token] = []
    pos, line = 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # only an unterminated string gets here
            raise KeyFileError(f"{source}:{line}: unterminated string")
        kind, value = match.lastgroup, match.group()
        if kind == "open_comment":
            raise KeyFileError(f"{source}:{line}: unterminated comment")
        if kind == "string":
            out.append(_Token(re.sub(r"\\(.)", r"\1", value[1:-1]), line, quoted=True))
        elif kind in ("punct", "word"):
            out.append(_Token(value, line))
        line += value.count("\n")
        pos = match.end()
    return out


class _KeyParser:
    """`key NAME { algorithm ALG; secret "BASE64"; };`, as `tsig-keygen` writes it."""

    def __init__(self, tokens: list[_Token], source: str) -> None:
        self.tokens = tokens
        self.source = source
        self.pos = 0

    def fail(self, message: str, token: _Token | None = None) -> KeyFileError:
        token = token or self.peek()
        line = token.line if token else (self.tokens[-1].line if self.tokens else 1)
        return KeyFileError(f"{self.source}:{line}: {message}")

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self, expected: str) -> _Token:
        token = self.peek()
        if token is None:
            raise self.fail(f"expected {expected}, found the end of the file")
        self.pos += 1
        return token

    def expect(self, punct: str, after: str) -> None:
        token = self.next(f"'{punct}' {after}")
        if token.text != punct or token.quoted:
            raise self.fail(f"expected '{punct}' {after}, found {token.text!r}", token)

    def keys(self) -> list[tuple[TsigKey, int]]:
        keys = []
        while self.peek() is not None:
            keys.append(self.key())
        return keys

    def key(self) -> tuple[TsigKey, int]:
        start = self.next("a key statement")
        if start.text != "key" or start.quoted:
            raise self.fail(f"expected a key statement (key \"name\" {{ ... }};), found "
                            f"{start.text!r}", start)
        name = self.next("the key's name")
        if name.text in "{};" and not name.quoted:
            raise self.fail(f"expected the key's name after 'key', found {name.text!r}", name)
        self.expect("{", f"after key {name.text!r}")
        clauses = self.clauses(name.text)
        self.expect(";", f"after the '}}' of key {name.text!r}")
        return self.build(name, clauses), start.line

    def clauses(self, key_name: str) -> dict[str, _Token]:
        clauses: dict[str, _Token] = {}
        while True:
            word = self.next(f"'}}' to close key {key_name!r}")
            if word.text == "}" and not word.quoted:
                return clauses
            if word.text not in ("algorithm", "secret") or word.quoted:
                raise self.fail(f"unknown clause {word.text!r} in key {key_name!r} (known: "
                                "algorithm, secret)", word)
            if word.text in clauses:
                raise self.fail(f"key {key_name!r} has two {word.text} clauses", word)
            value = self.next(f"a value after {word.text}")
            if value.text in "{};" and not value.quoted:
                raise self.fail(f"expected a value after {word.text}, found {value.text!r}",
                                value)
            self.expect(";", f"after {word.text} {value.text[:20]!r}")
            clauses[word.text] = value

    def build(self, name: _Token, clauses: dict[str, _Token]) -> TsigKey:
        for needed in ("algorithm", "secret"):
            if needed not in clauses:
                raise self.fail(f"key {name.text!r} has no {needed} clause", name)
        algorithm = clauses["algorithm"].text.lower()
        if algorithm not in ALGORITHMS:
            raise self.fail(f"key {name.text!r}: unknown algorithm {algorithm!r} (known: "
                            f"{', '.join(ALGORITHMS)})", clauses["algorithm"])
        try:
            secret = base64.b64decode(re.sub(r"\s+", "", clauses["secret"].text), validate=True)
        except ValueError:
            secret = b""
        if not secret:
            # The secret itself is never echoed: the file exists to keep it out of sight.
            raise self.fail(f"key {name.text!r}: the secret is not base64 (as tsig-keygen "
                            "writes it)", clauses["secret"])
        try:
            dns.name.from_text(name.text)
        except dns.exception.DNSException as exc:
            raise self.fail(f"key name {name.text!r} is not a DNS name: {exc}", name) from None
        return TsigKey(name.text, algorithm, secret)


def parse_key_file(text: str, source: str = "<key file>") -> TsigKey:
    """The one key of a BIND key file (`tsig-keygen NAME > FILE`).

    dnspython 2.8+ has `dns.tsigkeyring.from_file`, but it matches one regular expression:
    comments or a second key break it, and every fault is the same bare "Error while parsing",
    while an operator needs to know which line is wrong. This reads the named.conf grammar
    for `key` statements and says exactly what is missing. A file with several keys is
    refused: `[srv.update]` names a file, not a key, so the choice must not be a guess.
    """
    keys = _KeyParser(_tokens(text, source), source).keys()
    if not keys:
        raise KeyFileError(f"{source}: no key statement (expected key \"name\" {{ algorithm "
                           "hmac-sha256; secret \"...\"; }; as tsig-keygen writes it)")
    if len(keys) > 1:
        names = ", ".join(f"{k.name!r} (line {line})" for k, line in keys)
        raise KeyFileError(f"{source}: holds {len(keys)} keys: {names}; give a file with the "
                           "one key for updates")
    return keys[0][0]


def load_key_file(path: str | Path) -> TsigKey:
    """Read and parse a key file; every fault is a KeyFileError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: not UTF-8 text: {exc.reason}") from None
    return parse_key_file(text, str(path))


# ---------------------------------------------------------------------------------------
# The planner (pure)
# ---------------------------------------------------------------------------------------


class _Unknown:
    """What the primary holds for an RRset a failed update touched: we cannot know."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True, slots=True)
class Update:
    """One RFC 2136 message's worth of changes to one zone.

    `snapshot` is the zone's desired state the update was built from: once acknowledged it
    is what the primary holds."""

    zone: dns.name.Name
    replace: tuple[dns.rrset.RRset, ...]
    delete: tuple[Key, ...]
    snapshot: dict[Key, dns.rrset.RRset] = field(repr=False)
    first: bool = False

    @property
    def records(self) -> int:
        return sum(len(rrset) for rrset in self.replace)

    def message(self, key: TsigKey | None = None) -> dns.update.UpdateMessage:
        """The update as a DNS message, TSIG-signed with `key` if given. No prerequisites:
        we own these RRsets, and whole-RRset replacement is right whatever is there."""
        if key is None:
            msg = dns.update.UpdateMessage(self.zone)
        else:
            msg = dns.update.UpdateMessage(self.zone, keyring=key.to_dnspython())
        for rrset in self.replace:
            msg.replace(rrset.name, rrset.to_rdataset())
        for name, rdtype in self.delete:
            msg.delete(name, rdtype)
        return msg


def _same(acked: Any, desired: dns.rrset.RRset) -> bool:
    """RRset equality ignores the TTL; a changed TTL must go out too."""
    return acked is not None and acked is not UNKNOWN and acked == desired \
        and acked.ttl == desired.ttl


class _Zone:
    """One zone's state: what we want, what the primary acknowledged, when to send."""

    def __init__(self, name: dns.name.Name) -> None:
        self.name = name
        self.desired: dict[Key, dns.rrset.RRset] = {}
        self.acked: dict[Key, Any] = {}   # value UNKNOWN after a failed update touched it
        self.synced = False               # the primary acknowledged an update of ours
        self.due: float | None = None     # when the next update goes out
        self.in_flight: Update | None = None
        self.failures = 0                 # consecutive, for the backoff
        self.not_before = float("-inf")   # no update before this (backoff)

    def diff(self) -> tuple[list[dns.rrset.RRset], list[Key]]:
        replace = [rrset for key, rrset in self.desired.items()
                   if not self.synced or not _same(self.acked.get(key), rrset)]
        delete = [key for key in self.acked if key not in self.desired]
        return replace, delete

    def pending(self) -> bool:
        """Something to send, judged against what will be acknowledged: the update in flight
        if there is one (it is assumed to succeed; a failure reschedules anyway)."""
        if self.in_flight is None:
            replace, delete = self.diff()
            return bool(replace or delete)
        sent = self.in_flight.snapshot
        return sent.keys() != self.desired.keys() or not all(
            _same(sent[k], rrset) for k, rrset in self.desired.items())


class UpdatePlanner:
    """Desired RRsets in, `Update`s out, with coalescing and backoff; `now` is passed in."""

    def __init__(self, zones: Iterable[str], coalesce: float, retry_min: float,
                 retry_max: float) -> None:
        self.coalesce = coalesce
        self.retry_min = retry_min
        self.retry_max = retry_max
        names = [dns.name.from_text(z) for z in zones]
        # Most specific first: a name under a delegated child zone belongs to the child.
        self._zones = {n: _Zone(n) for n in sorted(names, key=len, reverse=True)}

    def zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        return next((z for z in self._zones if name.is_subdomain(z)), None)

    def publish(self, rrsets: Sequence[dns.rrset.RRset], now: float) -> list[str]:
        """Set the full desired set. Returns what was ignored (a name under none of the
        zones, or an SOA/NS RRset), for the caller to log: a bug, but not a reason to stop
        publishing the rest."""
        wanted: dict[dns.name.Name, dict[Key, dns.rrset.RRset]] = {z: {} for z in self._zones}
        ignored = []
        for rrset in rrsets:
            zone = self.zone_of(rrset.name)
            if zone is None or rrset.rdtype in NOT_PUBLISHED:
                why = "not under any zone" if zone is None else "not ours to publish"
                ignored.append(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}: {why}")
                continue
            key = (rrset.name, rrset.rdtype)
            if key in wanted[zone]:  # two RRsets for one (name, type): one RRset
                rrset = _merged(wanted[zone][key], rrset)
            wanted[zone][key] = rrset
        for zone, desired in wanted.items():
            state = self._zones[zone]
            state.desired = desired
            self._reschedule(state, now)
        return ignored

    def take_due(self, now: float) -> list[Update]:
        """The updates to send now; each zone's is in flight until acknowledged or failed."""
        updates = []
        for state in self._zones.values():
            if state.in_flight is not None or state.due is None or state.due > now:
                continue
            state.due = None
            replace, delete = state.diff()
            if not (replace or delete):
                continue  # changes that cancelled out within the window
            state.in_flight = Update(state.name, tuple(replace), tuple(delete),
                                     dict(state.desired), first=not state.synced)
            updates.append(state.in_flight)
        return updates

    def next_wakeup(self) -> float | None:
        """When `take_due` will next have something, or None: nothing to do until a publish
        or the end of an update in flight."""
        dues = [z.due for z in self._zones.values() if z.in_flight is None and z.due is not None]
        return min(dues, default=None)

    def acknowledged(self, update: Update, now: float) -> None:
        """The primary answered NOERROR: its zone now holds the update's snapshot."""
        state = self._finish(update)
        state.acked = dict(update.snapshot)
        state.synced = True
        state.failures = 0
        state.not_before = float("-inf")
        self._reschedule(state, now)

    def failed(self, update: Update, now: float) -> float:
        """The update was refused or got no answer: retry after the backoff delay, which is
        returned (for the log line)."""
        state = self._finish(update)
        for rrset in update.replace:
            state.acked[(rrset.name, rrset.rdtype)] = UNKNOWN
        for key in update.delete:
            state.acked[key] = UNKNOWN
        state.failures += 1
        delay = min(self.retry_max, self.retry_min * 2 ** (state.failures - 1))
        state.not_before = now + delay
        state.due = None
        self._reschedule(state, now)
        return delay

    def expedite(self, now: float) -> None:
        """Send what waits now: the rest of a coalescing window or of a backoff is skipped
        (the gateway is stopping, and the primary should hear the last set)."""
        for state in self._zones.values():
            if state.due is not None:
                state.due = now

    def idle(self) -> bool:
        """Nothing in flight and nothing waiting: the primary holds what we want."""
        return all(z.in_flight is None and z.due is None for z in self._zones.values())

    def unsent(self) -> list[str]:
        """The zones whose primary does not hold the desired set yet (for the log)."""
        return [z.name.to_text(omit_final_dot=True) for z in self._zones.values()
                if z.in_flight is not None or z.due is not None]

    def failures(self, zone: str) -> int:
        return self._zones[dns.name.from_text(zone)].failures

    def _finish(self, update: Update) -> _Zone:
        state = self._zones[update.zone]
        if state.in_flight is not update:
            raise ValueError(f"update for {update.zone} is not the one in flight")
        state.in_flight = None
        return state

    def _reschedule(self, state: _Zone, now: float) -> None:
        """Open a coalescing window at the first change not yet sent; close it if the
        changes cancelled out; never before the backoff allows."""
        if not state.pending():
            state.due = None
        elif state.due is None:
            state.due = max(now + self.coalesce, state.not_before)


def _merged(a: dns.rrset.RRset, b: dns.rrset.RRset) -> dns.rrset.RRset:
    out = a.copy()
    out.update(b)
    return out


# ---------------------------------------------------------------------------------------
# The sender (asyncio)
# ---------------------------------------------------------------------------------------


Send = Callable[[dns.message.Message, str, int, float], Any]  # awaitable response


async def _send_tcp(message: dns.message.Message, host: str, port: int,
                    timeout: float) -> dns.message.Message:
    """TCP: an update with many records fits without truncation, and a refused connection
    says at once that the primary is down, where UDP would wait for the timeout."""
    return await dns.asyncquery.tcp(message, host, timeout=timeout, port=port)


class UpdateSender:
    """Keeps the primary's zones equal to the last `publish`ed set, in the background.

    `start()` reads the key file (a bad one raises KeyFileError: better refused at start than
    failing every update) and starts the loop; `publish()` may be called before or after,
    any number of times, and never blocks; `stop()` gives what is still pending one last,
    bounded chance, then cancels. It never empties the zone: the records stay as last
    published (a restarting gateway should not make the service vanish from DNS)."""

    def __init__(self, config: SrvUpdate, zones: tuple[str, ...], log: Any, *,
                 clock: Callable[[], float] = time.monotonic,
                 timeout: float = UPDATE_TIMEOUT, send: Send = _send_tcp) -> None:
        self.config = config
        self.log = log
        self.timeout = timeout
        self.planner = UpdatePlanner(zones, config.coalesce, config.retry_min, config.retry_max)
        self._clock = clock
        self._send = send
        self._key: TsigKey | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever an update ends
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.config.key_file is not None:
            self._key = await asyncio.to_thread(load_key_file, self.config.key_file)
        self._task = asyncio.create_task(self._run(), name="srv-update")

    def publish(self, rrsets: Sequence[dns.rrset.RRset]) -> None:
        ignored = self.planner.publish(rrsets, self._clock())
        if ignored:
            self.log.warning("srv_update_ignored", rrsets=ignored)
        self._wake.set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Send what is pending at once (skipping the coalescing window and any backoff) and
        wait up to `grace` seconds for the primary to take it, then cancel everything.

        A graceful gateway stop withdraws the gateway's own SRV targets just before this, so
        the primary should hear of it; `grace = 0` cancels at once (a reload that replaces
        the sender). What is still unacknowledged then is logged as `srv_update_unsent`."""
        if self._task is not None and grace > 0:
            self.planner.expedite(self._clock())
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._until_idle(), grace)
        tasks = [t for t in (self._task, *self._sends) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.planner.idle():
            self.log.warning("srv_update_unsent", server=str(self.config.server),
                             zones=self.planner.unsent())

    async def _until_idle(self) -> None:
        while not self.planner.idle():
            self._progress.clear()
            await self._progress.wait()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            for update in self.planner.take_due(self._clock()):
                task = asyncio.create_task(self._update(update), name=f"srv-update {update.zone}")
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
            wakeup = self.planner.next_wakeup()
            timeout = None if wakeup is None else max(0.0, wakeup - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _update(self, update: Update) -> None:
        problem = await self._exchange(update)
        zone = update.zone.to_text(omit_final_dot=True)
        if problem is None:
            self.planner.acknowledged(update, self._clock())
            self.log.info("srv_updated", zone=zone, server=str(self.config.server),
                          rrsets=len(update.replace), records=update.records,
                          deleted=len(update.delete), first=update.first)
        else:
            delay = self.planner.failed(update, self._clock())
            self.log.warning("srv_update_failed", zone=zone, server=str(self.config.server),
                             retry_in=round(delay, 3), failures=self.planner.failures(zone),
                             **problem)
        self._wake.set()
        self._progress.set()

    async def _exchange(self, update: Update) -> dict[str, str] | None:
        """Send one update; None if the primary acknowledged it, else what went wrong."""
        server = self.config.server
        try:
            response = await self._send(update.message(self._key), server.host,
                                        server.port or 53, self.timeout)
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            return {"reason": _reason(exc)}
        except Exception as exc:  # noqa: BLE001 - a zone must never stay "in flight" forever
            return {"reason": f"unexpected {_reason(exc)}"}
        rcode = response.rcode()
        return None if rcode == dns.rcode.NOERROR else {"rcode": dns.rcode.to_text(rcode)}


def _reason(exc: BaseException) -> str:
    """A short, stable description: `dns.exception.Timeout` has an empty str on some paths."""
    if isinstance(exc, dns.exception.Timeout):
        return "timeout"
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
