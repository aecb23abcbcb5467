"""The layers contract of DESIGN.md: a module imports only from stages before it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (it is part of the test extra)")
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "KEPT" in out.stdout


def test_heavy_dependencies_have_one_home() -> None:
    """JAX/NumPyro only under infer/, ArviZ only in fit/compare, matplotlib only in plots, Typer/Rich in cli."""
    homes = {
        "jax": ("infer/",), "numpyro": ("infer/",), "arviz": ("fit.py", "compare.py", "sensitivity.py"),
        "matplotlib": ("plots/", "report.py"), "typer": ("cli.py",), "rich": ("cli.py",),
        "duckdb": ("data.py", "source.py", "reduce.py", "query.py"),
    }
    src = ROOT / "src" / "poolwise"
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).as_posix()
        text = path.read_text()
        for mod, allowed in homes.items():
            uses = f"import {mod}" in text or f"from {mod}" in text
            if uses:
                assert any(rel.startswith(a) or rel == a for a in allowed), f"{rel} imports {mod}"
