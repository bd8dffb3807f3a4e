"""The package as a user gets it: `python -m build` makes an sdist and a wheel without a
warning, and the wheel installed with its `probes` extra into a fresh venv gives a working
`xmppgw` that carries the example configs and the systemd unit (`xmppgw example-config`).

Needs the `build` module (the `test` extra) and pip's index (dependencies and the build
backend come from it). The wheel is built from the sdist, as `python -m build` does, so the
sdist is proved complete too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gateway import ROOT

pytestmark = pytest.mark.timeout(180)


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                            env=env, timeout=timeout, check=False)
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


def warnings_in(output: str) -> list[str]:
    # pip.conf on the CI machine names local index directories that may not exist; pip
    # warns about those on every run, whatever is installed
    return [line for line in output.splitlines()
            if re.search(r"\bwarning\b|deprecat", line, re.IGNORECASE)
            and "is ignored: it is neither a file nor" not in line]


def test_wheel_builds_without_warnings_and_installs_a_working_xmppgw(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="the `build` module: pip install -e '.[test]'")
    # PYTHONDONTWRITEBYTECODE (set by some CI shells) makes setuptools warn "byte-compiling
    # is disabled": a fact about the environment, not the package
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    dist = tmp_path / "dist"
    built = run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path, env=env)
    output = built.stdout + built.stderr
    assert not warnings_in(output), "\n".join(warnings_in(output))
    wheels = list(dist.glob("xmppgw-*.whl"))
    assert len(wheels) == 1 and len(list(dist.glob("xmppgw-*.tar.gz"))) == 1, list(dist.iterdir())

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    installed = run(venv / "bin" / "python", "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", f"{wheels[0]}[probes]", cwd=tmp_path,
                    timeout=150)
    output = installed.stdout + installed.stderr
    assert not warnings_in(output), "\n".join(warnings_in(output))

    xmppgw = venv / "bin" / "xmppgw"
    # cwd is tmp_path: the package is the venv's, not this checkout's
    names = run(xmppgw, "example-config", cwd=tmp_path).stdout.split()
    assert {"seed", "demo", "xmppgw.service"} <= set(names), names
    seed = run(xmppgw, "example-config", "seed", cwd=tmp_path).stdout
    assert seed == (ROOT / "conf" / "seed.toml").read_text()
    (tmp_path / "seed.toml").write_text(seed)
    checked = run(xmppgw, "check", "-c", tmp_path / "seed.toml", cwd=tmp_path)
    assert "OK: 3 vservers, 1 serverfarms, 4 reals" in checked.stdout, checked.stdout
    unit = run(xmppgw, "example-config", "xmppgw.service", cwd=tmp_path).stdout
    assert "Type=notify" in unit
    # the probes extra: the xmpp-ping probe's client library is there
    run(venv / "bin" / "python", "-c", "import slixmpp, xmppgw.health.runner", cwd=tmp_path)
    where = run(venv / "bin" / "python", "-c", "import xmppgw; print(xmppgw.__file__)",
                cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where
