"""`PredictConfig`: the options of `mammokit predict` (the model and its preprocessing come from the run folder).

YAML keys = these field names (`mammokit predict -c FILE`). Kept apart from `mammokit.infer.predictor` so
that reading a predict config imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from mammokit.config import ConfigError
from mammokit.constants import AUTO as AUTO
from mammokit.constants import PRECISIONS as PRECISIONS
from mammokit.constants import Precision as Precision
from mammokit.explain.names import CAM_LABELS as CAM_LABELS
from mammokit.explain.names import CAM_METHODS as CAM_METHODS
from mammokit.explain.names import DEFAULT_CAM_METHOD as DEFAULT_CAM_METHOD
from mammokit.explain.names import PATCH_MALIGNANT as PATCH_MALIGNANT
from mammokit.explain.names import CamMethod as CamMethod

# What computes p(malignant) (`--backend` of predict and serve, their config values and the docs): "auto" chooses
# on this machine (infer.backend_select); the others name one runtime.
Backend = Literal["auto", "torch", "torch-bf16", "onnx", "openvino"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
# The heatmaps a prediction may ask for (`--heatmap` of predict and serve, the serve API's enum, /v1/model).
HeatmapKind = Literal["none", "gradcam", "patch", "both"]
HEATMAP_KINDS: tuple[str, ...] = typing.get_args(HeatmapKind)
REPORT_HEATMAP_KINDS = tuple(k for k in HEATMAP_KINDS if k != "both")  # evaluate's report shows one kind at a time
# The CAM methods (`--gradcam-method`), their captions and the primary patch map are explain's names (`explain.names`)
# what each named backend computes in; "auto" chooses among the float32 ones only (infer.backend_select)
BACKEND_PRECISION: dict[str, str] = {"torch": "float32", "onnx": "float32", "openvino": "float32",
                                     "torch-bf16": "bfloat16"}  # fmt: skip
# the module each named backend runs on, and how to install it (a backend named explicitly must be there; auto
# chooses among the runtimes that import)
BACKEND_RUNTIME: dict[str, str] = {
    "torch": "torch",
    "torch-bf16": "torch",
    "onnx": "onnxruntime",
    "openvino": "openvino",
}
RUNTIME_INSTALL: dict[str, str] = {"torch": "pip install torch", "onnxruntime": "pip install 'mammokit[onnx]'",
                                   "openvino": "pip install openvino"}  # fmt: skip
# the backends that run the torch graph (`scoring.core.TorchScorer`, in the backend's BACKEND_PRECISION)
TORCH_BACKENDS: tuple[str, ...] = ("torch", "torch-bf16")
_REDUCED_BACKEND = {"bfloat16": "torch-bf16"}  # the backend that computes in each reduced precision


def resolve_precision(backend: str, precision: str | None) -> tuple[str, str]:
    """(the backend to load, the precision it computes in) for `--backend` and `--precision`.

    `precision` None means float32, unless the backend named is itself reduced precision (`torch-bf16`).
    `auto` with float32 lets `backend_select` choose among the float32 runtimes; with bfloat16 it is torch under
    bfloat16 autocast, as is `torch` with bfloat16. A float32-only runtime asked for bfloat16, or `torch-bf16`
    asked for float32, is a ConfigError that says what to pass instead.
    """
    named = BACKEND_PRECISION.get(backend)
    if precision is None:
        return backend, named or "float32"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if backend == AUTO or (backend == "torch" and precision != "float32"):
        return (backend if precision == "float32" else _REDUCED_BACKEND[precision]), precision
    if named != precision:
        raise ConfigError(
            f"backend {backend!r} computes in {named}, not {precision}: pass --backend auto (or torch) with "
            f"--precision {precision}, or drop --precision"
        )
    return backend, precision


@dataclass
class PredictConfig:
    """Options of `mammokit predict` (the model and its preprocessing come from the run folder)."""

    heatmap: HeatmapKind = "none"  # which heatmaps to render
    # auto = the fastest backend within the accuracy bar on this machine (measured once per run, RUN/cache);
    # torch = float32; torch-bf16; onnx = onnxruntime only, torch is never imported; openvino where installed
    backend: Backend = AUTO
    # None = float32 (or what --backend names); bfloat16 only when asked: recorded in every output
    precision: Precision | None = None
    device: str = "auto"  # auto = cuda if available (torch) / CUDA provider if installed (onnx)
    batch_size: int = 4  # images per forward pass
    workers: int = 2  # reader processes: decoding runs isolated from the model, in parallel with it
    patch_run: str | None = None  # patch-classifier run for patch heatmaps (default: model.json parent_run)
    gradcam_layer: str = "auto"  # auto = the deepest stride-16 trunk stage; or a module name such as top, trunk
    gradcam_method: CamMethod = DEFAULT_CAM_METHOD
    patch_stride: int = 16  # patch-map stride in prepared pixels (divides the patch trunk's stride, 32)
    overlay_alpha: float = 0.7  # opacity of the heatmap at the top of its colour scale
    overlay_max_side: int = 1536  # longer side of each half of the overlay PNG; 0 = the original resolution
    channels_last: bool = (
        True  # torch backend: NHWC memory format, 1.5-1.9x faster on CPU (benchmarks/bench_predict.py)
    )
    tta: bool | None = None  # mean over the 4 flips; None = as calibration.json was fitted (plain without one)
    assume_pixel_spacing: float | None = None  # source mm per pixel for files without a spacing tag

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.patch_stride < 1:
            raise ConfigError(f"patch_stride must be >= 1 pixel, got {self.patch_stride}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ConfigError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")
        resolve_precision(self.backend, self.precision)  # a backend that cannot run in the precision asked
        if self.heatmap != "none" and self.backend == "onnx":
            raise ConfigError("heatmaps need the torch backend (Grad-CAM needs gradients); drop --heatmap or --backend")
