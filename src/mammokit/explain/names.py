"""The heatmap names, defined once: the CAM methods (`--gradcam-method`, `explain.cam.CAM_CLASSES`), their captions
and the primary patch map. `infer.config` offers them beside the other prediction options; torch-free."""

from __future__ import annotations

import typing
from typing import Literal

PATCH_MALIGNANT = "patch_malignant"  # the map of the summed malignant patch classes (the primary patch map)
# The class activation map methods of pytorch-grad-cam (`--gradcam-method`; `explain.cam.CAM_CLASSES`).
CamMethod = Literal["gradcam", "gradcam++", "hirescam"]
CAM_METHODS: tuple[str, ...] = typing.get_args(CamMethod)
CAM_LABELS: dict[str, str] = dict(zip(CAM_METHODS, ("Grad-CAM", "Grad-CAM++", "HiResCAM"), strict=True))  # captions
DEFAULT_CAM_METHOD: CamMethod = "hirescam"  # localises best on the phantom and on mini-MIAS (docs/prediction.md)
