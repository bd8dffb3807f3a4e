"""The documentation site builds with `mkdocs build --strict`: a broken link, a page left out
of the nav or a bad config fails here, so it fails CI (mkdocs is in the `test` extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mkdocs_build(config_file: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_file),
         "-d", str(site)],
        capture_output=True, text=True, timeout=120, check=False, cwd=config_file.parent)


def test_docs_build_strictly(tmp_path: Path) -> None:
    result = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, (
        "`mkdocs build --strict` failed (is mkdocs installed? pip install -e '.[test]'):\n"
        + result.stdout + result.stderr)
    page = (tmp_path / "site" / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "max_connecting" in page


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The strictness is real: the same site with one dead link does not build."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text(encoding="utf-8") + "\nSee [nothing](no-such-page.md).\n",
                     encoding="utf-8")
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr
