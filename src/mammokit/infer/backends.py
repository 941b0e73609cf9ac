"""The scoring backends behind one factory: what turns a prepared batch into p(malignant).

Every backend runs the run's scoring graph (`scoring.core.probability_graph`; for ONNX Runtime and OpenVINO its
export, `infer.onnx`) and offers the `ScoringBackend` protocol. `build_backend` makes one named backend;
`load_backend` is what `Predictor.from_run` calls: a named one (checking its runtime is installed), or, for
"auto", the one `infer.backend_select` chooses on this machine.

`TorchBackend` is the torch one: the inference core's `TorchScorer`, plus Grad-CAM on the same network
(`explain.cam`), which always runs in float32 (the bf16 autocast is entered by `TorchScorer.prob_malignant` only).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from mammokit.infer.config import (
    AUTO,
    BACKEND_PRECISION,
    BACKEND_RUNTIME,
    BACKENDS,
    DEFAULT_CAM_METHOD,
    RUNTIME_INSTALL,
    TORCH_BACKENDS,
    Backend,
)
from mammokit.run import ModelCard, read_card

if TYPE_CHECKING:
    import torch

    from mammokit.explain.cam import GradCamRunner
    from mammokit.infer.backend_select import Selection
    from mammokit.scoring.core import TorchScorer


@runtime_checkable
class ScoringBackend(Protocol):
    """A runtime that scores prepared images: torch (`TorchBackend`), ONNX Runtime (`infer.onnx.OnnxBackend`) or
    OpenVINO (`infer.openvino.OpenVinoBackend`)."""

    name: str  # the backend name (`infer.config.BACKENDS`, "auto" aside)
    precision: str  # what it computes in (`infer.config.PRECISIONS`)
    device: torch.device | str  # where it runs: a torch.device, or "cpu"/"cuda" for the ONNX runtimes

    def prob_malignant(self, x: np.ndarray) -> np.ndarray:
        """float32 (B, C, H, W) in uint16 units (C = 2 for a bilateral model) -> (B,) float32 p(malignant)."""
        ...


def runtime_available(name: str) -> bool:
    """True when the runtime module imports (a missing or broken install counts as absent)."""
    try:
        importlib.import_module(name)
    except Exception:  # ImportError, or a broken wheel raising at import time: either way not usable
        return False
    return True


class TorchBackend:
    """The run's network through the inference core (`TorchScorer`), plus Grad-CAM on the same network."""

    def __init__(self, scorer: TorchScorer, positive: Sequence[int], name: str = "torch") -> None:
        self.scorer = scorer
        self.device = scorer.device
        self.positive = list(positive)
        self.name = name
        self.precision = BACKEND_PRECISION[name]
        self._gradcam: dict[tuple[str, str], GradCamRunner] = {}

    @classmethod
    def from_run(
        cls, run_dir: Path, device: str, channels_last: bool, name: str = "torch", card: ModelCard | None = None
    ) -> TorchBackend:
        from mammokit.scoring.core import TorchScorer

        card = card or read_card(run_dir)
        precision = BACKEND_PRECISION[name]
        scorer = TorchScorer.from_run(run_dir, device, channels_last=channels_last, precision=precision, card=card)
        return cls(scorer, card.positive_indices, name)

    def prob_malignant(self, x: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) in uint16 units -> (N,) p(malignant)."""
        return self.scorer.prob_malignant(x)

    def gradcam(
        self, x: np.ndarray, layer: str = "auto", method: str = DEFAULT_CAM_METHOD, flips: bool = False
    ) -> np.ndarray:
        """(B, C, H, W) normalised model input -> (B, H, W) class activation maps in [0, 1] (GradCamRunner).

        flips: average over the four flips of the input, as flip TTA averages p(malignant).
        """
        from mammokit.explain.cam import GradCamRunner

        t = self.scorer.tensor(x)
        if (layer, method) not in self._gradcam:
            self._gradcam[layer, method] = GradCamRunner(self.scorer.net, self.positive, t, layer=layer, method=method)
        return self._gradcam[layer, method](t, flips=flips)

    def gradcam_layer_name(self, layer: str = "auto") -> str:
        from mammokit.explain.cam import resolve_cam_layer

        return resolve_cam_layer(self.scorer.net, layer)[0]


def build_backend(
    name: str, run_dir: Path, device: str, *, channels_last: bool, onnx_path: Path | None, card: ModelCard | None = None
) -> ScoringBackend:
    """The backend `name` ("torch", "torch-bf16", "onnx", "openvino") of a run; the ONNX ones need `onnx_path`."""
    if name in TORCH_BACKENDS:
        return TorchBackend.from_run(run_dir, device, channels_last, name, card)
    if onnx_path is None:
        raise FileNotFoundError(f"the {name} backend needs the run's ONNX export")
    if name == "onnx":
        from mammokit.infer.onnx import OnnxBackend

        return OnnxBackend(onnx_path, device)
    if name == "openvino":
        from mammokit.infer.openvino import OpenVinoBackend

        return OpenVinoBackend(onnx_path)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def load_backend(
    run_dir: Path, card: ModelCard, device: str, backend: Backend | str, channels_last: bool
) -> tuple[ScoringBackend, Selection | None]:
    """(the backend, the auto selection or None) for `Predictor.from_run`.

    A runtime named explicitly must be installed (auto chooses among those that are). "onnx" is torch-free: it
    reads `RUN/model.onnx` from `mammokit export` (auto's cached export is auto's own).
    """
    if backend in BACKEND_RUNTIME:
        runtime = BACKEND_RUNTIME[backend]
        if not runtime_available(runtime):
            raise RuntimeError(
                f"--backend {backend} needs {runtime}, which is not installed (or does not import): "
                f"{RUNTIME_INSTALL[runtime]}, or use --backend auto, which picks among the runtimes installed"
            )
    if backend == "onnx":
        from mammokit.infer.onnx import onnx_path_for

        onnx_path = onnx_path_for(run_dir)
        return build_backend("onnx", run_dir, device, channels_last=channels_last, onnx_path=onnx_path), None
    if backend in TORCH_BACKENDS:
        return build_backend(backend, run_dir, device, channels_last=channels_last, onnx_path=None, card=card), None
    from mammokit.infer.backend_select import ensure_export, select_backend

    if backend == "openvino":
        from mammokit.infer.export_cache import BackendCache

        onnx_path = ensure_export(BackendCache.open(run_dir), torch_available=runtime_available("torch"))
        if onnx_path is None:
            raise FileNotFoundError(f"--backend openvino needs the run's ONNX export, which cannot be made here: "
                                    f"run `mammokit export {run_dir}` where torch is installed")  # fmt: skip
        return build_backend("openvino", run_dir, device, channels_last=channels_last, onnx_path=onnx_path), None
    if backend != AUTO:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    selection, impl = select_backend(run_dir, device, channels_last=channels_last, card=card)
    return impl, selection
