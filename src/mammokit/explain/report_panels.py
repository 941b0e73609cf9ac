"""Heatmaps of prepared images (a prepared dataset's split): for the evaluate report and the localisation benchmark.

`PreparedHeatmapper` loads a whole-image run (and its patch run) once and makes maps of prepared
uint16 images on their own grid, by kind name:

* "gradcam", "gradcam++", "hirescam": the CAM method at the stated layer rule ("auto");
  "gradcam@top", "gradcam@trunk", "hirescam@trunk.body.layer3", ...: at a named layer;
* "patch_malignant": the patch classifier's summed malignant classes at the default stride (16 px);
  "patch_malignant@32": at another stride.

`report_panels` picks the N highest-scoring malignant and N highest-scoring non-malignant images of an
evaluated split and renders one readable panel each (image | overlay | colour bar, lesion outlines,
probability, threshold and label) for the HTML report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammokit.explain.names import CAM_METHODS, PATCH_MALIGNANT
from mammokit.preprocess import to_model_input

log = logging.getLogger(__name__)

DEFAULT_PATCH_STRIDE = 16


FLIPS_SUFFIX = "+flips"


@dataclass(frozen=True)
class MapKind:
    """A parsed kind name: `family` "cam" or "patch", with the CAM method and layer or the patch stride."""

    name: str
    family: str
    method: str = "gradcam"
    layer: str = "auto"
    stride: int = DEFAULT_PATCH_STRIDE
    flips: bool = False  # CAMs: averaged over the four flips of the image ("+flips", as with flip TTA)

    @classmethod
    def parse(cls, name: str) -> MapKind:
        core = name.removesuffix(FLIPS_SUFFIX)
        base, _, arg = core.partition("@")
        if base in CAM_METHODS:
            return cls(name, "cam", method=base, layer=arg or "auto", flips=core != name)
        if base == PATCH_MALIGNANT:
            if core != name:
                raise ValueError(f"heatmap kind {name!r}: '{FLIPS_SUFFIX}' applies to class activation maps only")
            if arg and not arg.isdigit():
                raise ValueError(f"heatmap kind {name!r}: the patch stride after '@' must be a number of pixels")
            return cls(name, "patch", stride=int(arg) if arg else DEFAULT_PATCH_STRIDE)
        raise ValueError(
            f"unknown heatmap kind {name!r}: use one of {sorted(CAM_METHODS)} (optionally '@LAYER', then "
            f"'{FLIPS_SUFFIX}') or 'patch_malignant' (optionally '@STRIDE')"
        )


class PreparedHeatmapper:
    """Maps of prepared images for one whole-image run (and its patch run for the patch kinds).

    Args:
        whole_run: run folder of the whole-image model.
        patch_run: run folder of the patch classifier (None: the whole run's parent_run, if found).
        device: torch device string.
    """

    def __init__(self, whole_run: str | Path, patch_run: str | Path | None = None, device: str = "cpu") -> None:
        from mammokit.explain.patch import resolve_parent_run
        from mammokit.run import load_model
        from mammokit.utils.device import resolve_device

        self.device = resolve_device(device)
        self.whole_run = Path(whole_run)
        self.model, self.card = load_model(self.whole_run, self.device)
        self.positive = self.card.positive_indices
        self.patch_run = Path(patch_run) if patch_run else resolve_parent_run(self.card.parent_run, self.whole_run)
        self._patch: tuple[Any, Any] | None = None
        self._cams: dict[tuple[str, str], Any] = {}

    def _patch_model(self) -> tuple[Any, Any]:
        if self._patch is None:
            from mammokit.run import load_model

            if self.patch_run is None:
                raise ValueError(f"{self.whole_run}/model.json names no patch run (parent_run); pass the patch run")
            model, card = load_model(self.patch_run, self.device)
            if card.task != "patch":
                raise ValueError(f"{self.patch_run} is a {card.task!r} run, not a patch classifier")
            self._patch = (model, card)
        return self._patch

    def layer_name(self, layer: str = "auto") -> str:
        from mammokit.explain.cam import resolve_cam_layer

        return resolve_cam_layer(self.model, layer)[0]

    def maps(self, image_u16: np.ndarray, kinds: Sequence[MapKind]) -> dict[str, np.ndarray]:
        """One prepared (H, W) uint16 image -> {kind name: (H, W) float32 map on the same grid}."""
        import torch

        from mammokit.explain.cam import GradCamRunner
        from mammokit.scoring.patch_maps import malignant_map, patch_probability_maps

        out: dict[str, np.ndarray] = {}
        x = torch.from_numpy(to_model_input(image_u16, self.card.input.pixel_mean, self.card.input.pixel_std))
        x = x[None].to(self.device)  # (1, 1, H, W)
        for kind in kinds:
            if kind.family == "cam":
                key = (kind.method, kind.layer)
                if key not in self._cams:
                    self._cams[key] = GradCamRunner(self.model, self.positive, x, layer=kind.layer, method=kind.method)
                out[kind.name] = self._cams[key](x, flips=kind.flips)[0]
            else:
                model, card = self._patch_model()
                xp = torch.from_numpy(to_model_input(image_u16, card.input.pixel_mean, card.input.pixel_std))
                patch_hw = (card.input.height, card.input.width)
                probs = patch_probability_maps(model, xp[None].to(self.device), patch_hw, kind.stride)
                out[kind.name] = malignant_map(probs[0], card.labels)
        return out


def lesion_union(prepared: Path, lesions: pd.DataFrame, image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
    """Union of the prepared-grid masks of an image's malignant lesions (None when it has none)."""
    from mammokit.io.images import read_png8

    rows = lesions[(lesions["image_id"].astype(str) == image_id) & (lesions["malignant"].astype(int) == 1)]
    files = [str(f) for f in rows.get("mask_file", pd.Series(dtype=str)).fillna("") if str(f)]
    if not files:
        return None
    mask = np.zeros(shape, dtype=bool)
    for f in files:
        m = read_png8(prepared / f) > 0
        if m.shape == shape:
            mask |= m
    return mask if mask.any() else None


def report_panels(
    predictions: pd.DataFrame,
    whole_run: str | Path,
    prepared: str | Path,
    *,
    n: int = 8,
    kind: str = "gradcam",
    device: str = "cpu",
    max_side: int = 480,
) -> list[dict[str, Any]]:
    """Panels for the report: the `n` highest-scoring malignant and `n` highest-scoring non-malignant images.

    Args:
        predictions: evaluate's per-image frame (image_id, label, prob_malignant, prob_uncalibrated).
        whole_run: the run whose model explains the predictions (the first run for an ensemble).
        prepared: the prepared dataset folder (images, masks, lesions table).
        n: images per group.
        kind: a heatmap kind name (`MapKind.parse`).
        device: torch device string.
        max_side: longer side of each half of a panel in pixels.

    Returns:
        dicts with image_id, label, prob_malignant, group ("malignant" or "not malignant"), kind and png (bytes).
    """
    from mammokit.data.manifest import read_images, read_lesions
    from mammokit.explain.overlay import describe_map, panel_png, prediction_line, scale_label
    from mammokit.io.images import read_png16

    if n <= 0:
        return []
    prepared = Path(prepared)
    map_kind = MapKind.parse(kind)
    mapper = PreparedHeatmapper(whole_run, device=device)
    files = read_images(prepared).set_index("image_id")["image_file"]
    files.index = files.index.astype(str)
    lesions = read_lesions(prepared)
    threshold = float(mapper.card.threshold)
    layer = mapper.layer_name(map_kind.layer) if map_kind.family == "cam" else None
    what = describe_map(
        "gradcam" if map_kind.family == "cam" else PATCH_MALIGNANT,
        layer=layer,
        method=map_kind.method,
        stride=map_kind.stride,
        flips=map_kind.flips,
    )
    score = "prob_uncalibrated" if "prob_uncalibrated" in predictions.columns else "prob_malignant"
    panels = []
    for label, group in ((1, "malignant"), (0, "not malignant")):
        top = predictions[predictions["label"].astype(int) == label].sort_values(score, ascending=False).head(n)
        for row in top.itertuples(index=False):
            image_id = str(row.image_id)
            u16 = read_png16(prepared / files[image_id])
            heat = mapper.maps(u16, [map_kind])[map_kind.name]
            raw = float(getattr(row, score))
            png = panel_png(
                u16,
                heat,
                caption=[f"{image_id}: {what}", prediction_line(raw, threshold, int(raw >= threshold), label)],
                scale_label=scale_label("gradcam" if map_kind.family == "cam" else PATCH_MALIGNANT),
                lesion_mask=lesion_union(prepared, lesions, image_id, u16.shape) if not lesions.empty else None,
                max_side=max_side,
            )
            panels.append(
                {
                    "image_id": image_id,
                    "label": label,
                    "group": group,
                    "prob_malignant": float(row.prob_malignant),
                    "kind": map_kind.name,
                    "png": png,
                }
            )
    log.info("rendered %d heatmap panels (%s) for the report", len(panels), map_kind.name)
    return panels
