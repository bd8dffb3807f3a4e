"""The docs pages say what the code does, so they cannot drift from it:

- docs/troubleshooting.md names only log events the gateway really logs, stream errors it
  really sends (and every one it sends), and TLS alerts it really sends;
- docs/from-cisco-slb.md maps every line of the seed's `ip slb` running-config.

Events and conditions are read from xmppgw/ with `ast`, not from a list kept by hand."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from xmppgw.wire.errors import CONDITIONS

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "xmppgw"
DOCS = ROOT / "docs"
SEED_IOS = ROOT / "tests" / "data" / "seed-ios.cfg"  # the seed article's running-config

LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
# The first words of the IOS SLB commands in the seed's running-config; the file also keeps
# the article's prose lines between the blocks, as the article printed them.
IOS_WORDS = {"ip", "virtual", "serverfarm", "inservice", "no", "nat", "predictor", "real",
             "weight", "reassign", "faildetect", "retry"}


def modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SOURCE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def is_logger(node: ast.expr) -> bool:
    """`log`, `self.log`, `gw.log`, `logger`: what the gateway logs through."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name in ("log", "logger")


def event_argument(call: ast.Call) -> ast.expr | None:
    """The event of a log call: `log.warning("real_state", ...)`, or the connection
    machine's `Log(level, "stream_error", {...})` command."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in LEVELS and is_logger(func.value):
        return call.args[0] if call.args else None
    if isinstance(func, ast.Name) and func.id == "Log" and len(call.args) >= 2:
        return call.args[1]
    return None


@cache
def emitted_events() -> frozenset[str]:
    """Every event name xmppgw/ logs: string literals in a log call's event argument
    (`"a" if x else "b"` included), or assigned in the same function to the name passed."""
    events: set[str] = set()
    for _, tree in modules():
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            assigned: dict[str, set[str]] = {}
            for node in ast.walk(func):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            assigned.setdefault(target.id, set()).update(strings(node.value))
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and (arg := event_argument(node)) is not None:
                    names = assigned.get(arg.id, set()) if isinstance(arg, ast.Name) \
                        else strings(arg)
                    events.update(n for n in names if re.fullmatch(r"[a-z][a-z0-9_]*", n))
    return frozenset(events)


@cache
def conditions_sent() -> frozenset[str]:
    """The RFC 6120 conditions the gateway sends. Only the connection machine sends stream
    errors (`stream_error(condition, ...)` in xmppgw/connection.py), with conditions of its
    own or from the protocol readers' refusals (xmppgw/wire/): the conditions written as
    literals there. wire/errors.py is left out: it lists every condition, sent or not."""
    found: set[str] = set()
    for path, tree in modules():
        deciders = path == SOURCE / "connection.py" or path.parent == SOURCE / "wire"
        if deciders and path != SOURCE / "wire" / "errors.py":
            found |= strings(tree)
    return frozenset(CONDITIONS & found)


@cache
def names_used() -> frozenset[str]:
    """Names read (not assigned) anywhere in xmppgw/: `tls.UNRECOGNIZED_NAME`, `DECODE_ERROR`."""
    used: set[str] = set()
    for _, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                used.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                used.add(node.id)
    return frozenset(used)


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# ------------------------------------------------------------------------ troubleshooting


def test_the_event_extraction_finds_known_events() -> None:
    """The extractor itself: events logged through each form of call are found."""
    assert {"real_state", "farm_panic", "farm_panic_end", "stream_error", "tls_alert",
            "connection", "started", "worker_started"} <= emitted_events()


def test_troubleshooting_names_only_events_the_gateway_logs() -> None:
    named = set(re.findall(r'"event": "([a-z0-9_]+)"', page("troubleshooting.md")))
    assert len(named) >= 20, named  # the page is written in that form
    assert named <= emitted_events(), sorted(named - emitted_events())


def test_troubleshooting_names_only_stream_errors_the_gateway_sends() -> None:
    named = set(re.findall(r"<([a-z-]+)/>", page("troubleshooting.md"))) & CONDITIONS
    sent = conditions_sent()
    assert named <= sent, sorted(named - sent)


def test_every_stream_error_the_gateway_sends_is_in_the_answer_table() -> None:
    answers = page("troubleshooting.md").split("## What the gateway answers", 1)[1]
    named = set(re.findall(r"<([a-z-]+)/>", answers))
    sent = conditions_sent()
    assert sent, "no condition found in xmppgw/"
    assert sent <= named, sorted(sent - named)


def test_troubleshooting_names_only_tls_alerts_the_gateway_sends() -> None:
    named = set(re.findall(r"`([a-z_]+)` alert", page("troubleshooting.md")))
    assert named, "the page names no TLS alert"
    unsent = {alert for alert in named if alert.upper() not in names_used()}
    assert not unsent, sorted(unsent)


# ------------------------------------------------------------------------ from Cisco SLB


def seed_ios_lines() -> list[str]:
    """The IOS command lines of the seed's running-config, each once, in order."""
    lines: list[str] = []
    for raw in SEED_IOS.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("!"):
            continue
        if line.split()[0] not in IOS_WORDS:
            prose = len(line.split()) > 6 and line[-1] in ".:"
            assert prose, f"neither IOS nor the article's prose: {line!r}"
            continue
        if line not in lines:
            lines.append(line)
    return lines


def test_the_seed_has_its_ip_slb_lines() -> None:
    lines = seed_ios_lines()
    assert [line for line in lines if line.startswith("ip slb ")] == [
        "ip slb vserver P5222", "ip slb vserver P5223", "ip slb vserver P5269",
        "ip slb serverfarm XMPP"]
    assert "faildetect numconns 16 numclients 5" in lines and "no inservice" in lines


def test_from_cisco_slb_maps_every_line_of_the_seed() -> None:
    text = page("from-cisco-slb.md")
    mapping = text.split("## The seed's running-config, line by line", 1)[1].split("\n## ", 1)[0]
    rows = [row for row in mapping.splitlines() if row.startswith("| `")]
    mapped = {cell for row in rows for cell in re.findall(r"`([^`]+)`", row)}
    missing = [line for line in seed_ios_lines() if line not in mapped]
    assert not missing, missing
    first_cells = [re.findall(r"`([^`]+)`", row.split("|")[1]) for row in rows]
    # each row maps an IOS line to something: a key or a command in its xmppgw cell
    assert all(cells for cells in first_cells)
    assert all(re.search(r"`[^`]+`", row.split("|")[2]) for row in rows)
