"""Training quality on synthetic data (slow: many CPU minutes).

Runs the pipeline of `benchmarks/bench_patch_init.py` once, at the paper-like settings (synthetic CBIS-DDSM,
60 women, 256x192 prepared images, full S10 patches of 5 classes, EfficientNet-Lite0 from the offline ImageNet
weights, the default configs' schedules: patch 1/2/3 epochs, whole image 2/6 epochs):

* the patch classifier reaches >= 0.85 accuracy on the held-out (test-split) patches, 5 classes;
* the whole-image model trained from it reaches a held-out AUC >= 0.90;
* the no-patch-init baseline trained on the same CPU budget is reported alongside (no threshold: it is the
  comparison the benchmark exists for).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_patch_init.py"


def _bench_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_patch_init", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict:
    result = _bench_module().run_benchmark(
        tmp_path_factory.mktemp("quality"),
        per_lesion=10,
        background=10,
        patch_epochs=(1, 2, 3),
        whole_epochs=(2, 6),
    )
    print(json.dumps(result, indent=2))  # the figures, visible with `pytest -s`
    return result


@pytest.mark.slow
def test_patch_classifier_accuracy_on_held_out_patches(figures: dict) -> None:
    assert len(figures["patch"]["test_per_class_acc"]) == 5
    assert figures["patch"]["test_acc"] >= 0.85


@pytest.mark.slow
def test_whole_image_from_patch_stage_auc(figures: dict) -> None:
    assert figures["a_patch_then_whole"]["test_auc"] >= 0.90
    # the baseline ran on (about) the same CPU budget and produced a held-out AUC as well
    assert 0.0 <= figures["b_no_patch_init"]["test_auc"] <= 1.0
