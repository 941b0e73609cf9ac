"""`PredictConfig`: the options of `mammokit predict` (the model and its preprocessing come from the run folder).

YAML keys = these field names (`mammokit predict -c FILE`). Kept apart from `mammokit.infer.predictor` so
that reading a predict config imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mammokit.config import ConfigError


@dataclass
class PredictConfig:
    """Options of `mammokit predict` (the model and its preprocessing come from the run folder)."""

    heatmap: Literal["none", "gradcam", "patch", "both"] = "none"  # which heatmaps to render
    # auto = the fastest backend within the accuracy bar on this machine (measured once per run, RUN/cache);
    # torch = float32; torch-bf16; onnx = onnxruntime only, torch is never imported; openvino where installed
    backend: Literal["auto", "torch", "torch-bf16", "onnx", "openvino"] = "auto"
    device: str = "auto"  # auto = cuda if available (torch) / CUDA provider if installed (onnx)
    batch_size: int = 4  # images per forward pass
    workers: int = 2  # reader processes: decoding runs isolated from the model, in parallel with it
    patch_run: str | None = None  # patch-classifier run for patch heatmaps (default: model.json parent_run)
    gradcam_layer: str = "auto"  # auto = the deepest stride-16 trunk stage; or a module name such as top, trunk
    gradcam_method: Literal["gradcam", "gradcam++", "hirescam"] = "hirescam"  # localises best (docs/prediction.md)
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
        if self.heatmap != "none" and self.backend == "onnx":
            raise ConfigError("heatmaps need the torch backend (Grad-CAM needs gradients); drop --heatmap or --backend")
