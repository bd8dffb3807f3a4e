"""The container image (Containerfile), built as an operator builds it (scripts/container.sh:
base image if podman lacks it, wheelhouse, `podman build`), run with host networking in
front of the harness's ejabberd cluster: a slixmpp client logs in through it, the gateway
inside runs as the image's user, not root, and the image's HEALTHCHECK asks the control
socket (healthy while the gateway answers there, unhealthy once it cannot).

Needs podman, runc and debootstrap (scripts/setup.sh installs them) and root; without them
the build fails and so does this test: a machine that cannot build the image must not pass
it. The first run on a machine also builds the base image (debootstrap, about half a minute);
later runs reuse it, and an unchanged wheelhouse reuses every layer.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.client import xmpp_session
from tests.harness.servers import Servers
from tests.support.configs import gateway_config
from tests.support.gateway import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SCRIPT = ROOT / "scripts" / "container.sh"
IMAGE = "localhost/xmppgw:latest"
VIP = "127.0.1.40"  # on loopback; no other test listens there
USER_UID = 10001    # the Containerfile's XMPPGW_UID
CONFIG_IN_IMAGE = "/etc/xmppgw/xmppgw.toml"
SOCKET = "/run/xmppgw/xmppgw.sock"  # the directory the image makes for the user
NAME_PREFIX = "xmppgw-test-"  # then the pid of the pytest process


def container_sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """scripts/container.sh with `args`: `podman ...` runs podman with the options this
    machine needs (runc, cgroupfs, limits), as an operator would."""
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=ROOT)


def podman(*args: str, timeout: float = 60) -> str:
    result = container_sh("podman", *args, timeout=timeout)
    assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def image() -> str:
    """The image, built by scripts/container.sh: before the servers, so that a cold build
    does not hold the machine's one harness."""
    began = time.monotonic()
    built = container_sh(timeout=840)
    assert built.returncode == 0, (
        "scripts/container.sh failed (podman, runc and debootstrap come from "
        f"scripts/setup.sh):\n{built.stdout}\n{built.stderr}")
    print(f"\ncontainer image built in {time.monotonic() - began:.0f} s:\n{built.stderr}")
    return IMAGE


def container_config(servers: Servers) -> str:
    return gateway_config(
        domain=servers.ejabberd_domain, vip=f"{VIP}:5222", control=SOCKET,
        gateway={"log_format": "json", "log_connect": True}, vserver={"name": "C5222"},
        reals=[{"address": address} for address in servers.ejabberd_addresses])


@pytest.fixture
def container(image: str, servers: Servers, tmp_path: Path) -> Iterator[str]:
    """The gateway container, running the test's config mounted as the image's default
    config file; always removed, whatever happened."""
    config = tmp_path / "xmppgw.toml"
    config.write_text(container_config(servers))
    config.chmod(0o644)  # read by the image's user, not root
    remove_stale_containers()
    name = f"{NAME_PREFIX}{os.getpid()}"
    try:
        podman("run", "--detach", "--name", name, "--network", "host",
               "--volume", f"{config}:{CONFIG_IN_IMAGE}:ro", image)
        wait_for_record(name, lambda r: r.get("event") == "started", timeout=30)
        yield name
    finally:
        container_sh("podman", "rm", "--force", "--time", "5", name, timeout=60)
    assert container_sh("podman", "container", "exists", name).returncode == 1


def remove_stale_containers() -> None:
    """Containers an earlier run of this test left behind (it was killed): they would
    hold the test's address. Their names carry the pid of the pytest that made them."""
    names = podman("ps", "--all", "--filter", f"name=^{NAME_PREFIX}",
                   "--format", "{{.Names}}").split()
    for name in names:
        pid = name.removeprefix(NAME_PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            container_sh("podman", "rm", "--force", "--time", "0", name)


def records(name: str) -> list[dict[str, Any]]:
    """The gateway's JSON log lines so far (`podman logs`)."""
    result = container_sh("podman", "logs", name)
    out = []
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def wait_for_record(name: str, predicate: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in records(name) if predicate(r)]
        if found:
            return found[0]
        state = podman("inspect", "--format", "{{.State.Status}}", name).strip()
        if state != "running" or time.monotonic() > deadline:
            logs = container_sh("podman", "logs", name)
            raise AssertionError(f"container {name} ({state}): no such log record within "
                                 f"{timeout} s:\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")
        time.sleep(0.3)


def healthcheck(name: str) -> subprocess.CompletedProcess[str]:
    return container_sh("podman", "healthcheck", "run", name)


def test_the_image_declares_its_user_ports_and_healthcheck(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image))[0]
    config = inspected["Config"]
    assert config["User"] == "xmppgw"
    assert set(config["ExposedPorts"]) == {"5222/tcp", "5223/tcp", "5269/tcp"}
    # podman keeps a HEALTHCHECK only in the docker image format, and shows it beside Config
    assert "docker" in inspected["ManifestType"], inspected["ManifestType"]
    assert inspected["Healthcheck"]["Test"] == [
        "CMD", "xmppgw", "show", "vservers", "-c", CONFIG_IN_IMAGE]
    assert config["Entrypoint"] == ["xmppgw"]
    assert config["Cmd"] == ["run", "-c", CONFIG_IN_IMAGE]
    # conf/ is the default config: the shipped examples, and the seed as xmppgw.toml
    listed = podman("run", "--rm", "--network", "none", "--entrypoint", "ls", image,
                    "/etc/xmppgw").split()
    assert {"seed.toml", "demo.toml", "xmppgw.service", "xmppgw.toml"} <= set(listed)
    checked = podman("run", "--rm", "--network", "none", image, "check", "-c",
                     CONFIG_IN_IMAGE)
    assert "OK: 3 vservers, 1 serverfarms, 4 reals" in checked


async def test_a_client_logs_in_through_the_container_run_by_a_non_root_user(
        image: str, servers: Servers, container: str) -> None:
    jid = servers.jid("user187") + "/container"
    async with xmpp_session(jid, servers.password, VIP, 5222) as client:
        rtt = await client.plugin["xep_0199"].ping(jid=servers.ejabberd_domain, timeout=10)
        assert rtt >= 0
        port = client.transport.get_extra_info("sockname")[1]
    record = wait_for_record(container, lambda r: r.get("event") == "connection"
                             and r.get("client") == f"127.0.0.1:{port}")
    assert record["vserver"] == "C5222" and record["starttls"] is True
    assert record["real"] in servers.ejabberd_addresses and record["error"] is None

    # the gateway, seen from the host: its process's real and effective uid
    pid = int(podman("inspect", "--format", "{{.State.Pid}}", container))
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(USER_UID)] * 4, status
    assert "xmppgw" in Path(f"/proc/{pid}/cmdline").read_text()
    # and as podman reports every process of the container
    users = podman("top", container, "user", "huser", "args").splitlines()[1:]
    assert users and all(line.split()[:2] == ["xmppgw", str(USER_UID)] for line in users), users


def test_the_healthcheck_asks_the_control_socket(image: str, container: str) -> None:
    result = healthcheck(container)
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads(podman("inspect", container))[0]["State"]
    health = state.get("Health") or state.get("Healthcheck")
    assert health["Status"] == "healthy", health
    assert "P5222" not in health["Log"][-1]["Output"]  # the test's config, not the seed's
    assert "C5222" in health["Log"][-1]["Output"]
    # Without its socket the gateway runs on but cannot be asked: the check must say so
    podman("exec", container, "rm", SOCKET)
    result = healthcheck(container)
    assert result.returncode != 0 and "unhealthy" in result.stdout + result.stderr, (
        result.stdout + result.stderr)
