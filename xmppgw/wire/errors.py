"""Stream error documents (RFC 6120 §4.9).

A stream error is sent inside a stream: if the gateway has not yet sent a stream header
to the peer, it sends its own first (§4.9.1.1), in the content namespace the peer used, then
`<stream:error>` with the condition in `urn:ietf:params:xml:ns:xmpp-streams`, then
`</stream:stream>`, and closes the TCP connection.
"""

from __future__ import annotations

import re
import secrets
from xml.sax.saxutils import escape

STREAMS_NS = "http://etherx.jabber.org/streams"
STREAM_ERRORS_NS = "urn:ietf:params:xml:ns:xmpp-streams"

#: RFC 6120 §4.9.3: the defined conditions; anything else is a programming error.
CONDITIONS = frozenset({
    "bad-format", "bad-namespace-prefix", "conflict", "connection-timeout", "host-gone",
    "host-unknown", "improper-addressing", "internal-server-error", "invalid-from",
    "invalid-namespace", "invalid-xml", "not-authorized", "not-well-formed",
    "policy-violation", "remote-connection-failed", "reset", "resource-constraint",
    "restricted-xml", "see-other-host", "system-shutdown", "undefined-condition",
    "unsupported-encoding", "unsupported-feature", "unsupported-stanza-type",
    "unsupported-version",
})


#: The XMPP version the gateway speaks in its own headers (RFC 6120 §4.7.5).
VERSION = "1.0"
_VERSION_RE = re.compile(r"([0-9]+)\.([0-9]+)")


def reply_version(client: str | None, unknown: str | None = VERSION) -> str | None:
    """The `version` of the gateway's error header (RFC 6120 §4.7.5): the lower of the
    client's and VERSION ('1.0'), major and minor compared as separate integers (leading
    zeros ignored); None (no attribute) when the client's header had none, as a pre-1.0
    peer expects. `unknown`: the answer when `client` is not a version number at all."""
    if client is None:
        return None
    match = _VERSION_RE.fullmatch(client)
    if match is None:
        return unknown
    theirs = (int(match[1]), int(match[2]))
    ours = tuple(int(n) for n in VERSION.split("."))
    return f"{theirs[0]}.{theirs[1]}" if theirs < ours else VERSION


def _attr(value: str) -> str:
    return "'" + escape(value, {"'": "&apos;", '"': "&quot;"}) + "'"


def stream_header(namespace: str = "jabber:client", from_: str | None = None,
                  to: str | None = None, dialback: bool = False,
                  version: str | None = VERSION) -> bytes:
    """The gateway's own opening header, used only to carry an error (§4.9.1.1).

    `from_` is a domain the peer asked for and the gateway serves, else the gateway's own
    configured name, else absent (§4.9.1.3 for host-unknown). `version`: see
    `reply_version` (§4.7.5); None leaves the attribute out.
    """
    attrs = [f"xmlns={_attr(namespace)}", f"xmlns:stream={_attr(STREAMS_NS)}"]
    if dialback:
        attrs.append("xmlns:db='jabber:server:dialback'")
    if from_:
        attrs.append(f"from={_attr(from_)}")
    if to:
        attrs.append(f"to={_attr(to)}")
    attrs.append(f"id={_attr(secrets.token_hex(8))}")
    if version is not None:
        attrs.append(f"version={_attr(version)}")
    return ("<?xml version='1.0'?><stream:stream " + " ".join(attrs) + ">").encode()


def stream_error(condition: str, text: str | None = None) -> bytes:
    """`<stream:error>` with its condition, then the closing `</stream:stream>`."""
    if condition not in CONDITIONS:
        raise ValueError(f"not an RFC 6120 stream error condition: {condition}")
    body = f"<{condition} xmlns='{STREAM_ERRORS_NS}'/>"
    if text:
        body += f"<text xmlns='{STREAM_ERRORS_NS}' xml:lang='en'>{escape(text)}</text>"
    return f"<stream:error>{body}</stream:error></stream:stream>".encode()
