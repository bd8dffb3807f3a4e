"""Layering: the contracts in pyproject.toml (`[tool.importlinter]`) hold, and no module of
xmppgw imports itself back.

The pure parts (`wire/`, `slb/`, `health/state.py`, `dns/records.py`, the connection
machine) decide and never do I/O or read a clock: nothing they import, directly or through
other xmppgw modules, reaches asyncio, socket, selectors or time. Imports under
`if TYPE_CHECKING:` never run and are not counted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_the_import_contracts_are_kept() -> None:
    run = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_no_module_of_xmppgw_imports_itself_back() -> None:
    """Module by module, not only between siblings (which the acyclic_siblings contract
    checks): an import cycle works only as long as the import order happens to allow it."""
    graph = grimp.build_graph("xmppgw", exclude_type_checking_imports=True, cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert cycles == []


def test_no_two_modules_import_each_other_even_for_type_checking() -> None:
    """A pair that imports each other only under `if TYPE_CHECKING:` still reads as one
    module in two files: the parts of the gateway see it through `net/core.py`'s Protocol
    instead of importing `net/gateway.py`."""
    graph = grimp.build_graph("xmppgw", exclude_type_checking_imports=False, cache_dir=None)
    pairs = sorted({tuple(sorted((module, imported)))
                    for module in graph.modules
                    for imported in graph.find_modules_directly_imported_by(module)
                    if module in graph.find_modules_directly_imported_by(imported)})
    assert pairs == []
