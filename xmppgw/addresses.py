"""IP addresses as the gateway compares them: one place unmaps IPv4-mapped IPv6.

A dual-stack listener reports an IPv4 client as `::ffff:192.0.2.1`. That client is
192.0.2.1 everywhere it counts: in sourcehash (a resuming client must land on the same
real), in faildetect's distinct clients, in the per-source limits, in the `accept_proxy`
networks and in a PROXY header's family. Pure, standard library only, so `wire/`, `slb/`
and `net/` may all use it.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def unmapped(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is; any other address as is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_ip(host: str) -> str:
    """The canonical text of a client's IP address (`host` as a socket reports it, no port):
    lower case, compressed, IPv4-mapped IPv6 unmapped. A text that is not an IP literal
    (a Unix socket peer, "?") is returned as it is, so such peers are still one client.
    An IPv6 zone (`%eth0`) is dropped: it names our interface, not the client."""
    # Every open comes through here: four groups of ASCII digits, the kernel's text of an
    # IPv4 peer, are either canonical already or refused by ipaddress (then kept as they
    # are, too), so they skip the parse.
    if host.count(".") == 3 and host.isascii() and host.replace(".", "").isdigit():
        return host
    try:
        return str(unmapped(ipaddress.ip_address(host.partition("%")[0])))
    except ValueError:
        return host
