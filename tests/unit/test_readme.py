"""README.md is a front page (issue 19): short, its Quickstart is the two commands CI and a
new user run, its configuration is the seed's set-up and loads, and its links lead somewhere.
The rest lives in docs/ (tests/unit/test_docs_build.py, test_docs_pages.py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from xmppgw import config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_LINES = 250


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body of `## heading` up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def commands(block: str) -> list[str]:
    """The commands of a shell block, comments dropped."""
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


def test_readme_is_a_front_page() -> None:
    assert len(readme().splitlines()) < MAX_LINES


def test_quickstart_is_the_two_commands() -> None:
    quickstart = section(readme(), "Quickstart")
    block = re.search(r"```sh\n(.*?)```", quickstart, re.DOTALL)
    assert block, "the Quickstart has no sh block"
    assert commands(block.group(1)) == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_ci_runs_the_readmes_test_command() -> None:
    assert commands((ROOT / ".ci" / "run").read_text()).count("bash scripts/test.sh") == 1


def test_the_first_configuration_is_the_seeds_and_loads() -> None:
    """The config a newcomer copies is the seed article's set-up, and the loader takes it."""
    first = section(readme(), "A first configuration")
    block = re.search(r"```toml\n(.*?)```", first, re.DOTALL)
    assert block, "the configuration section has no toml block"
    loaded = config.loads(block.group(1))
    seed = config.load(ROOT / "tests" / "data" / "seed-config.toml")
    assert dataclasses.replace(loaded, path="") == dataclasses.replace(seed, path="")


def test_readmes_links_lead_to_files() -> None:
    """GitHub renders README's relative links; mkdocs never sees them, so check them here."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme())
    local = [link for link in links if "://" not in link]
    assert local, "README links to no docs page"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing
