"""`freebind`: a vserver of a VRRP pair binds the shared address before the host holds it."""

from __future__ import annotations

import errno
import socket

import pytest

from tests.support.configs import MINIMAL, refused
from xmppgw import config
from xmppgw.config import Keepalive
from xmppgw.net.listeners import listen_socket

# TEST-NET-1 (RFC 5737): never an address of this host.
NOT_OURS = "192.0.2.200"


def _with(gateway_line: str = "", vserver_line: str = "",
          virtual: str = "127.0.0.1:5222") -> config.Config:
    text = MINIMAL.replace('domains = ["example.test"]',
                           f'domains = ["example.test"]\n{gateway_line}')
    text = text.replace('virtual = "127.0.0.1:5222"', f'virtual = "{virtual}"\n{vserver_line}')
    return config.loads(text, "test.toml")


def test_off_by_default() -> None:
    cfg = _with()
    assert cfg.gateway.freebind is False
    assert cfg.vservers[0].freebind is False


def test_a_vserver_inherits_the_gateways_and_may_set_its_own() -> None:
    assert _with("freebind = true").vservers[0].freebind is True
    assert _with("freebind = true", "freebind = false").vservers[0].freebind is False
    assert _with("", "freebind = true").vservers[0].freebind is True


def test_a_non_boolean_is_refused() -> None:
    text = MINIMAL.replace('domains = ["example.test"]',
                           'domains = ["example.test"]\nfreebind = "yes"')
    assert any("freebind" in problem for problem in refused(text))


def test_without_freebind_an_address_the_host_lacks_cannot_be_bound() -> None:
    vserver = _with(virtual=f"{NOT_OURS}:45222").vservers[0]
    with pytest.raises(OSError) as info:
        listen_socket(vserver, Keepalive())
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert "vserver V" in str(info.value)


def test_with_freebind_it_listens_on_an_address_the_host_lacks() -> None:
    vserver = _with("freebind = true", virtual=f"{NOT_OURS}:45222").vservers[0]
    sock = listen_socket(vserver, Keepalive())
    try:
        assert sock.getsockname()[0] == NOT_OURS
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        sock.close()


def test_the_shipped_pair_config_binds_every_vserver_freely_and_hashes_the_source() -> None:
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "conf" / "keepalived" / "xmppgw.toml"
    cfg = config.load(shipped)
    assert cfg.vservers and all(v.freebind for v in cfg.vservers)
    assert {v.virtual.host for v in cfg.vservers} == {"192.0.2.10"}
    assert cfg.farm("XMPP").predictor == "sourcehash"
    assert cfg.gateway.control_socket
