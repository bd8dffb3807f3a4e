"""The session gateway: conf/demo.toml as shipped (so the demo's config is tested too), plus
a vserver only the tests use."""

from __future__ import annotations

from pathlib import Path

from tests.harness.servers import Servers

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "conf" / "demo.toml"
VIP = "127.0.1.1"
S2S_VIP = VIP
STRICT_PORT = 5322  # a c2s vserver with require_starttls
BOTH_PORT = 5422  # a c2s vserver with mode = "both": STARTTLS and direct TLS on one port

TEST_ONLY = """
[[vserver]]
name = "STRICT"
virtual = "{vip}:{port}"
require_starttls = true
serverfarm = "XMPP5222"

[[vserver]]
name = "BOTH"
virtual = "{vip}:{both_port}"
mode = "both"
kinds = ["c2s"]
serverfarm = "XMPP5222"

[[serverfarm]]
name = "XMPP5222"  # STARTTLS to the nodes' 5222, direct TLS to their 5223 (directtls_port)
{reals}
"""


def gateway_config(servers: Servers) -> str:
    """conf/demo.toml must describe the harness's servers: checked here, not assumed."""
    text = DEMO_CONFIG.read_text()
    for address in [*servers.ejabberd_addresses, servers.prosody_address]:
        assert f'address = "{address}"' in text, f"conf/demo.toml lacks real {address}"
    reals = "".join(f'[[serverfarm.real]]\naddress = "{a}:5222"\n'
                    for a in servers.ejabberd_addresses)
    # streams left open at the end of the session get 2 s, not the default 10 s, to end
    text = text.replace("[gateway]\n", "[gateway]\nshutdown_timeout = 2\n", 1)
    return text + TEST_ONLY.format(vip=VIP, port=STRICT_PORT, both_port=BOTH_PORT, reals=reals)
