"""Prediction's patch heatmaps: the patch-classifier run of the paper's heatmaps over a whole prepared image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mammokit.explain.names import PATCH_MALIGNANT
from mammokit.preprocess import PreprocessSpec, to_model_input

if TYPE_CHECKING:
    import torch

    from mammokit.data.geometry import Geometry
    from mammokit.io.meta import MammoMeta


def resolve_parent_run(path: str | Path | None, relative_to: Path) -> Path | None:
    """A run path as given, or relative to the run that names it (model.json's parent_run); None if not found."""
    if not path:
        return None
    p = Path(path).expanduser()
    for candidate in (p, relative_to / p, relative_to.parent / p):
        if (candidate / "model.json").is_file():
            return candidate
    return None


class PatchHeatmapper:
    """The patch run used for the paper's heatmaps, with its own preprocessing where it differs."""

    def __init__(self, run_dir: Path, device: torch.device | str, image_spec: PreprocessSpec) -> None:
        from mammokit.run import load_model

        self.run_dir = run_dir
        self.model, self.card = load_model(run_dir, device)
        self.device = device
        if self.card.task != "patch":
            raise ValueError(f"{run_dir} is a {self.card.task!r} run; patch heatmaps need a patch-classifier run")
        self.patch_hw = (self.card.input.height, self.card.input.width)
        spec = self.card.input.preprocess
        # A patch run's PreprocessSpec describes the prepared images its patches were cut from. When
        # it only records the patch size itself, the whole-image run's geometry is the one to use.
        self.spec = image_spec if (spec.height, spec.width) == self.patch_hw else spec
        self.same_geometry = self.spec == image_spec
        self.classes = list(self.card.labels)

    def maps(self, x: np.ndarray, stride: int | None = None) -> np.ndarray:
        """(B, 1, H, W) normalised with this run's mean/std -> (B, n_classes, H, W) probabilities."""
        import torch

        from mammokit.scoring.patch_maps import patch_probability_maps

        return patch_probability_maps(self.model, torch.from_numpy(x).to(self.device), self.patch_hw, stride)

    def original_maps(
        self, images: Sequence[tuple[np.ndarray, Geometry, np.ndarray | None, MammoMeta]], stride: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Patch maps of prepared images on their original pixel grids: "patch_malignant" and "patch_<class>".

        images: per image (the whole-image run's prepared uint16 image, its geometry, the original pixels or None,
            the meta); the original pixels are needed only when this run prepares images in another geometry.
        """
        from mammokit.data.geometry import prepare_pixels
        from mammokit.scoring.patch_maps import malignant_map

        if self.same_geometry:
            prepared = [(u16, geometry) for u16, geometry, _, _ in images]
        else:
            if any(pixels is None for _, _, pixels, _ in images):
                raise ValueError("patch heatmaps in another geometry need the original pixels (keep_pixels=True)")
            prepared = [prepare_pixels(pixels, meta, self.spec) for _, _, pixels, meta in images]
        mean, std = self.card.input.pixel_mean, self.card.input.pixel_std
        probs = self.maps(np.stack([to_model_input(u16, mean, std) for u16, _ in prepared]), stride)
        out = []
        for (_, geometry), per_class in zip(prepared, probs, strict=True):
            maps = {PATCH_MALIGNANT: to_original(malignant_map(per_class, self.classes), geometry)}
            maps.update({f"patch_{name}": to_original(pmap, geometry) for name, pmap in zip(self.classes, per_class,
                                                                                          strict=True)})  # fmt: skip
            out.append(maps)
        return out


def to_original(heat: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A map on the prepared grid -> float32 on the original file's pixel grid."""
    return np.asarray(geometry.to_original(np.asarray(heat, dtype=np.float32)), dtype=np.float32)
