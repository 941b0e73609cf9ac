"""Shared fixtures: the location of ../shared/data (skip with a message where absent) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist (`make test`: one worker process per core) each worker gets one OpenMP thread, set before
# any test module imports torch: a thread per core in every worker oversubscribes the cores, and OpenMP's idle
# threads spin-wait, and the suite's tensors are too small to gain from threads (the suite ran ~2x slower that
# way). Subprocesses the tests start inherit it. This is the one place that sets it for `make test`.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# `--backend auto` caches its ONNX export and backend choice in the user cache dir (never in a run folder): the
# tests use their own, per process, so they neither fill ~/.cache nor find an entry a previous session left.
if not os.environ.get("MAMMOKIT_CACHE_DIR"):
    import tempfile

    os.environ["MAMMOKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="mammokit-test-cache-")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MAMMOKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data_dir(name: str) -> Path:
    """Path of a dataset under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(
            f"real data not available: {path} is absent (a fresh clone has no ../shared/data; "
            "set MAMMOKIT_SHARED_DATA to its location to run this test)"
        )
    return path


@pytest.fixture
def mias_dev_dir() -> Path:
    return shared_data_dir("mini-mias-dev")


@pytest.fixture
def cbis_csv_dir() -> Path:
    return shared_data_dir("cbis-ddsm-csv")


def mias_subset(src: Path, dest: Path, names: list[str]) -> Path:
    """A mini-MIAS folder holding only `names` (mdbNNN) of `src`: links to the PGMs and an Info.txt whose listing
    keeps only their rows (a listed image without its PGM is an errors.csv row of `prepare`, by the batch rule)."""
    dest.mkdir(parents=True, exist_ok=True)
    keep = set(names)
    lines = [
        line for line in (src / "Info.txt").read_text().splitlines() if not (line[:3] == "mdb" and line[:6] not in keep)
    ]
    (dest / "Info.txt").write_text("\n".join(lines) + "\n")
    for name in names:
        (dest / f"{name}.pgm").symlink_to(src / f"{name}.pgm")
    return dest
