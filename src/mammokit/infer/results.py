"""What prediction hands back: `Prediction` (one image), `PredictionFailure` (one input that could not be predicted),
`PreparedImage` (one file read and prepared) and `HeatmapOptions` (how heatmaps are made). NumPy only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mammokit.infer.inputs import InputItem
from mammokit.io.meta import MammoMeta

if TYPE_CHECKING:
    from mammokit.data.geometry import Geometry


@dataclass(frozen=True)
class HeatmapOptions:
    """How heatmaps are made (docs/prediction.md, "Heatmaps").

    gradcam_layer: "auto" (the deepest stride-16 trunk stage, `explain.cam.default_cam_layer`) or a
        module name of the whole-image model, e.g. "top", "trunk", "trunk.body.layer3".
    gradcam_method: "gradcam", "gradcam++" or "hirescam".
    patch_stride: patch-map stride in prepared pixels (divides the patch trunk's stride; None = that stride).
    """

    gradcam_layer: str = "auto"
    gradcam_method: str = "hirescam"
    patch_stride: int | None = 16


@dataclass
class Prediction:
    """The result for one image. Heatmaps are on the original file's pixel grid (H, W)."""

    image_id: str
    path: str
    prob_malignant: float  # calibrated when the run has calibration.json, else = prob_uncalibrated
    call: int | None  # 1 = malignant at the run's operating threshold; None for an ensemble (no stored threshold)
    threshold: float | None  # the run's operating threshold on prob_uncalibrated; None for an ensemble
    laterality: str | None
    view: str | None
    prob_uncalibrated: float
    heatmap: np.ndarray | None = None  # the primary map (Grad-CAM if computed, else "patch_malignant")
    # "gradcam", "patch_malignant" (sum of the malignant classes), "patch_<class>" -> (H, W)
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    meta: MammoMeta | None = None
    # an ensemble's prediction (`infer.ensemble`): each member run's prediction of this image, without heatmaps
    members: list[Prediction] = field(default_factory=list)
    # > 1: the breast was larger than the model's canvas and was shrunk by this factor to fit (Geometry.fit_scale)
    fit_scale: float = 1.0
    # bilateral models (`infer.pairing`): "contralateral" (scored beside the other breast's same view) or
    # "single" (no partner in the call: scored with itself); None for a one-image model
    context: str | None = None

    def to_record(self) -> dict[str, Any]:
        """Flat, JSON-able row (no arrays, no header fields beyond laterality/view); call/threshold None for an
        ensemble."""
        return {
            "image_id": self.image_id,
            "input": self.path,
            "laterality": self.laterality,
            "view": self.view,
            "prob_malignant": round(float(self.prob_malignant), 6),
            "prob_uncalibrated": round(float(self.prob_uncalibrated), 6),
            "call": None if self.call is None else int(self.call),
            "threshold": None if self.threshold is None else float(self.threshold),
            "fit_scale": round(float(self.fit_scale), 4),
            "context": self.context,
        }


@dataclass
class PredictionFailure:
    """An input that could not be predicted; the batch goes on without it."""

    image_id: str
    path: str
    stage: str  # "read" (reading / preprocessing) or "model"
    error: str

    def to_record(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "input": self.path, "stage": self.stage, "error": self.error}


@dataclass
class PreparedImage:
    """One file read and prepared: model input, geometry back to the original, and what overlays need."""

    item: InputItem
    x: np.ndarray  # (1, H, W) float32 normalised network input, for Grad-CAM (scoring uses image_u16)
    image_u16: np.ndarray  # (H, W) prepared image
    geometry: Geometry  # prepared grid -> original grid (`Geometry.to_original`, `fit_scale`)
    meta: MammoMeta
    pixels: np.ndarray | None = None  # (H0, W0) original pixels, kept only when heatmaps are wanted
    # bilateral models: the partner's prepared image and the context (`infer.pairing.attach_partners`)
    partner_u16: np.ndarray | None = None
    context: str | None = None
