"""docs/architecture.md's package diagram is the code's, and the layering of .importlinter holds."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_graph():
    """scripts/import_graph.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_architecture_doc_shows_the_code_s_package_graph():
    pytest.importorskip("grimp")
    graph = _import_graph()
    documented = graph.doc_diagram((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert documented == graph.diagram(), (
        "docs/architecture.md is stale: run .venv/bin/python scripts/import_graph.py --write"
    )


def test_the_reduction_keeps_only_arrows_no_longer_path_implies():
    graph = _import_graph()
    edges = {"cli": {"serve", "engine", "data"}, "serve": {"engine"}, "engine": {"data"}, "data": set(), "io": set()}
    assert graph.transitive_reduction(edges) == {
        "cli": {"serve"}, "serve": {"engine"}, "engine": {"data"}, "data": set(), "io": set()
    }  # fmt: skip


def test_the_import_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.skip("import-linter is not installed (the dev extra)")
    result = subprocess.run([lint_imports, "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
