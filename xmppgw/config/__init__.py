"""Configuration: TOML parsed and validated once into frozen, typed objects.

Every other module reads these objects, never the raw TOML. A bad file is refused as a
whole with every problem listed, each naming the file, the line and the key path, because
an operator fixing a config at 3 a.m. should not have to guess which `[[serverfarm.real]]`
is meant.

- `model`: the frozen dataclasses, with every default;
- `loader`: `loads(text, path)`, pure: it reads nothing but its argument;
- `resolver`: `resolve(config)`, the I/O (groups, files, secrets), and `load(path)`:
  read, `loads`, `resolve`;
- `locator`: the line a key path sits at, for messages;
- `reference`: docs/configuration.md, generated from the model's field metadata.
"""

from xmppgw.config.loader import loads
from xmppgw.config.model import (
    IMPLICIT_PROBE,
    KINDS,
    MODES,
    PROBE_KINDS,
    PROBE_TYPES,
    SRV_SERVICES,
    Address,
    Config,
    ConfigError,
    ExternalRef,
    Faildetect,
    GatewayConfig,
    Keepalive,
    Limits,
    ProbeConfig,
    RealConfig,
    Route,
    ServerfarmConfig,
    SrvConfig,
    SrvUpdate,
    VserverConfig,
    domain_matches,
    parse_address,
)
from xmppgw.config.resolver import load, resolve

__all__ = [
    "IMPLICIT_PROBE", "KINDS", "MODES", "PROBE_KINDS", "PROBE_TYPES", "SRV_SERVICES", "Address",
    "Config", "ConfigError", "ExternalRef", "Faildetect", "GatewayConfig", "Keepalive", "Limits",
    "ProbeConfig", "RealConfig", "Route", "ServerfarmConfig", "SrvConfig", "SrvUpdate",
    "VserverConfig", "domain_matches", "load", "loads", "parse_address", "resolve",
]
