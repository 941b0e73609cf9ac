"""Each name set a user picks from is defined once (infer.config) and every surface offers exactly it:
argparse choices, config Literals, the serve API's enum, the backend rule, and docs/prediction.md."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

from mammokit.cli import build_parser
from mammokit.explain.cam import CAM_CLASSES
from mammokit.infer import backend_select
from mammokit.infer.config import (
    AUTO,
    BACKEND_PRECISION,
    BACKEND_RUNTIME,
    BACKENDS,
    CAM_LABELS,
    CAM_METHODS,
    HEATMAP_KINDS,
    PRECISIONS,
    REPORT_HEATMAP_KINDS,
    RUNTIME_INSTALL,
    TORCH_BACKENDS,
    PredictConfig,
)
from mammokit.serve.app import _PREDICT_FORM_SCHEMA
from mammokit.serve.settings import ServeConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _choices(command: str, flag: str) -> tuple[str, ...]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return tuple(next(a for a in sub._actions if flag in a.option_strings).choices)


def _literal(cls: type, field: str) -> tuple[str, ...]:
    hint = typing.get_type_hints(cls)[field]
    return typing.get_args(hint)


def test_backend_names_come_from_one_place():
    assert _choices("predict", "--backend") == _choices("serve", "--backend") == BACKENDS
    assert _literal(PredictConfig, "backend") == _literal(ServeConfig, "backend") == BACKENDS
    assert set(backend_select.ORDER) == set(BACKEND_PRECISION) == set(BACKENDS) - {AUTO}
    assert set(BACKEND_RUNTIME) == set(BACKEND_PRECISION) and set(BACKEND_RUNTIME.values()) == set(RUNTIME_INSTALL)
    assert set(TORCH_BACKENDS) == {n for n, runtime in BACKEND_RUNTIME.items() if runtime == "torch"}
    # one spelling of the compute precisions: what the backends compute in, what users ask for, what TorchScorer takes
    assert set(BACKEND_PRECISION.values()) == set(PRECISIONS)
    rows = re.findall(r"^\| `([a-z0-9-]+)`", (DOCS / "prediction.md").read_text().split("## Backends", 1)[1], re.M)
    assert tuple(rows[: len(BACKENDS)]) == BACKENDS  # the docs' backend table, in the same order
    assert f"[--backend {'|'.join(BACKENDS)}]" in (DOCS / "prediction.md").read_text()


def test_heatmap_kinds_come_from_one_place():
    assert _choices("predict", "--heatmap") == _choices("serve", "--heatmap") == HEATMAP_KINDS
    assert _literal(PredictConfig, "heatmap") == _literal(ServeConfig, "default_heatmap") == HEATMAP_KINDS
    assert tuple(_PREDICT_FORM_SCHEMA["properties"]["heatmap"]["enum"]) == HEATMAP_KINDS
    assert _choices("evaluate", "--heatmap") == REPORT_HEATMAP_KINDS and set(REPORT_HEATMAP_KINDS) < set(HEATMAP_KINDS)
    assert f"[--heatmap {'|'.join(HEATMAP_KINDS)}]" in (DOCS / "prediction.md").read_text()


def test_cam_methods_come_from_one_place():
    assert _choices("predict", "--gradcam-method") == _literal(PredictConfig, "gradcam_method") == CAM_METHODS
    assert tuple(CAM_CLASSES) == tuple(CAM_LABELS) == CAM_METHODS
    assert f"[--gradcam-method {'|'.join(CAM_METHODS)}]" in (DOCS / "prediction.md").read_text()


def test_device_names_map_in_one_place():
    from mammokit.utils.device import lightning_accelerator, resolve_device, torch_device_name, trainer_device

    assert [torch_device_name(n) for n in ("gpu", " CUDA:1", "cpu", "auto")] == ["cuda", "cuda:1", "cpu", "auto"]
    assert [lightning_accelerator(n) for n in ("cuda", "cuda:1", "gpu", "cpu", "mps", "auto")] == [
        "gpu", "gpu", "gpu", "cpu", "mps", "auto"
    ]  # fmt: skip
    assert trainer_device("auto") == {} and trainer_device("cpu") == {"accelerator": "cpu"}
    assert trainer_device("cuda:1") == {"accelerator": "gpu", "devices": "1,"}  # index 1, not one device
    cpu = resolve_device("cpu")
    assert resolve_device(cpu) is cpu and str(resolve_device("CPU")) == "cpu"


def test_run_names_are_made_unique_by_one_rule():
    from mammokit.run import unique_run_names

    assert unique_run_names(["whole", "whole", "patch", "whole"]) == ["whole", "whole-2", "patch", "whole-3"]
    assert unique_run_names(["ensemble", "whole"], reserved=("ensemble",)) == ["ensemble-2", "whole"]
