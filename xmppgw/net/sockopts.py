"""Socket options for both legs of a relayed connection."""

from __future__ import annotations

import socket
from typing import Any

from xmppgw.config import Keepalive


def apply_keepalive(sock: Any, keepalive: Keepalive) -> None:
    """TCP keepalive plus TCP_USER_TIMEOUT, so a peer that vanished is noticed by the kernel.

    The gateway never idles out a relayed stream (XMPP sessions sit quiet for hours; an
    idle timeout is the classic cause of dropped sessions behind HAProxy): the kernel's
    probes find dead peers instead. Options a platform lacks are skipped.
    """
    if sock is None:
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), int(keepalive.idle)),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), int(keepalive.interval)),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), keepalive.count),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None),
         int(keepalive.user_timeout * 1000)),
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    ]
    for level, name, value in options:
        if name is None:
            continue
        try:
            sock.setsockopt(level, name, max(1, value))
        except OSError:
            pass  # the peer may already be gone; nothing to tune then


# Linux's <linux/in.h> value; Python's socket module has no name for it before 3.12.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def apply_freebind(sock: socket.socket) -> None:
    """Let `sock` bind an address this host does not hold (yet): `IP_FREEBIND`, ip(7).

    A gateway of a VRRP pair listens on the shared address before keepalived moves it here.
    Linux honours the option for IPv6 sockets as well. OSError if the platform lacks it."""
    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
