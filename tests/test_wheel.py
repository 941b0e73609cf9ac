"""The package as a user gets it: a wheel built from this repo, installed in a clean virtualenv, runs the demo.

What an editable install hides: package data missing from the wheel (built-in configs, report templates, the
viewer page), an import of something under the repo but outside the package, a dependency missing from
pyproject.toml. So: `pip wheel --no-deps` builds the wheel; `python -m venv` (no system site packages) makes the
environment; pip installs the wheel with its `train` extra there; `mammokit demo --preset small` runs in a folder
outside the source tree, and the module it ran is the installed one.

Dependencies come from the package registry through pip's cache (torch==2.14.1 and torchvision==0.29.1 stay pinned
by pyproject.toml), or, offline, from a folder of wheels: MAMMOKIT_WHEELHOUSE=DIR (pip --no-index --find-links DIR).
Minutes (the first time, the download of torch), so it is marked `wheel`, left out of `make test` and run by
`make test-wheel`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.wheel


def _run(cmd: list[str], *, cwd: Path, timeout: int, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
    return proc.stdout


def test_wheel_installs_in_a_clean_venv_and_runs_the_demo_outside_the_repo(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # the wheel, built from a copy of what it is made of (setuptools builds in the source folder, and a build/ left
    # there from an earlier build would bring stale modules into the wheel); no build isolation: the dev
    # environment's setuptools builds it, nothing is downloaded for it
    source_tree = tmp_path / "source"
    shutil.copytree(REPO / "src", source_tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source_tree / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(source_tree)], cwd=tmp_path, timeout=600)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("mammokit-*.whl")
    timings["build"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=300)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    python = venv / "bin" / "python"
    source = (
        ["--find-links", os.environ["MAMMOKIT_WHEELHOUSE"], "--no-index"] if "MAMMOKIT_WHEELHOUSE" in os.environ else []
    )
    _run([str(python), "-m", "pip", "install", "--quiet", *source, f"{wheel}[train]"], cwd=tmp_path, timeout=3600)
    timings["install"] = time.perf_counter() - t0

    # run where no source tree is: a fresh folder, no PYTHONPATH, the venv's own console script
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([str(python), "-c", "import mammokit, torch; print(mammokit.__file__, torch.__version__)"],
                 cwd=work, timeout=300, env=env)  # fmt: skip
    assert where.startswith(str(venv)) and "2.14.1" in where, where  # the installed copy, not src/
    t0 = time.perf_counter()
    out = _run([str(venv / "bin" / "mammokit"), "demo", "--preset", "small", "--out", "demo"], cwd=work,
               timeout=1800, env=env)  # fmt: skip
    timings["demo"] = time.perf_counter() - t0
    assert "held-out per-image AUC" in out and (work / "demo" / "eval" / "report.html").is_file(), out
    assert "GPU available" not in out  # the installed console is the quiet one too
    print("wheel test timings (s):", {k: round(v) for k, v in timings.items()})
    shutil.rmtree(venv, ignore_errors=True)  # GBs (torch): not left in the pytest temp folder
