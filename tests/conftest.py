"""Shared fixtures: the location of ../shared/data (skip with a message where absent) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
