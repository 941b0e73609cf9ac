"""Shared by the serve tests: a tiny random-weight run pair, a synthetic 4-view DICOM exam, a ready TestClient."""

from __future__ import annotations

import time
from pathlib import Path

from test_predict_support import make_tiny_runs

SERVE_HW = (128, 96)  # model input; the synthetic exam is 256 x 192 (above the default 128-px minimum)


def make_runs(root: Path, seed: int = 0) -> Path:
    """A whole-image run (+ its patch run for patch heatmaps) with random weights, as training writes them."""
    whole, _ = make_tiny_runs(root, SERVE_HW, seed=seed)
    return whole


def make_exam(root: Path) -> list[Path]:
    """One synthetic woman in the INbreast layout: four FFDM DICOMs (L/R x CC/MLO) with laterality and view tags."""
    from mammokit.synth import SynthConfig, generate

    generate(root, SynthConfig(layout="inbreast", women=1, seed=3, height=256, width=192))
    return sorted((root / "AllDICOMs").glob("*.dcm"))


def wait_ready(client, timeout_s: float = 600.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            return
        assert "failed" not in response.json()["detail"], response.json()
        time.sleep(0.05)
    raise AssertionError("the models did not load in time")


def multipart(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
