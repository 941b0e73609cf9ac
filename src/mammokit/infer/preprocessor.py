"""`Preprocessor`: a raw mammogram file -> the model input, prepared exactly as the run's training images.

It owns everything reading and preparing needs and nothing of the model: the run's `PreprocessSpec`, the
`read_mammogram` options it implies, the input normalisation (pixel mean/std) and the spacing to assume for files
without a spacing tag. It is small and picklable, so it is what the reader worker processes receive
(`infer.batch`); `Predictor` holds one, and an ensemble reads every file once with its first member's.
The code path is the one `mammokit prepare` uses (`data.geometry.prepare_pixels`), so train == predict. NumPy only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammokit.infer.inputs import InputItem
from mammokit.infer.results import PreparedImage
from mammokit.io.meta import MammoMeta
from mammokit.preprocess import PreprocessSpec, to_model_input
from mammokit.run import ModelCard


@dataclass(frozen=True)
class Preprocessor:
    """Reads and prepares files as a run's training images were.

    spec: the run's `PreprocessSpec` (model.json `input.preprocess`).
    pixel_mean, pixel_std: the run's input normalisation (the `x` Grad-CAM gets; scoring normalises in its graph).
    assume_pixel_spacing: source mm per pixel for files without a spacing tag (physical-scale runs only).
    """

    spec: PreprocessSpec
    pixel_mean: float
    pixel_std: float
    assume_pixel_spacing: float | None = None

    @classmethod
    def from_card(cls, card: ModelCard, assume_pixel_spacing: float | None = None) -> Preprocessor:
        return cls(card.input.preprocess, card.input.pixel_mean, card.input.pixel_std, assume_pixel_spacing)

    @property
    def reader_options(self) -> dict[str, Any]:
        """The `read_mammogram` options this run was trained with (runs with equal options can share a read)."""
        return {
            "voi": self.spec.voi,
            "window_index": self.spec.window_index,
            "allow_for_processing": self.spec.allow_for_processing,
        }

    def normalise(self, image_u16: np.ndarray) -> np.ndarray:
        """A prepared uint16 image -> (1, H, W) float32 network input with this run's mean/std."""
        return to_model_input(image_u16, self.pixel_mean, self.pixel_std)

    def load_image(
        self, item: InputItem | str | Path, *, keep_pixels: bool = False, data: bytes | None = None
    ) -> PreparedImage:
        """Read a file (or `data`, the file's bytes held in memory) and prepare it as training did."""
        if not isinstance(item, InputItem):
            item = InputItem(path=Path(item), image_id=Path(item).stem, source=str(item))
        pixels, meta = self.read(item, data=data)
        return self.prepare(item, pixels, meta, keep_pixels=keep_pixels)

    def read(self, item: InputItem, *, data: bytes | None = None) -> tuple[np.ndarray, MammoMeta]:
        """`read_mammogram` with this run's reader options; `data` = the file's bytes (nothing touches the disk)."""
        from mammokit.io.dicom import read_mammogram, read_mammogram_bytes

        if data is not None:
            return read_mammogram_bytes(data, name=str(item.path), **self.reader_options)
        return read_mammogram(item.path, **self.reader_options)

    def prepare(
        self, item: InputItem, pixels: np.ndarray, meta: MammoMeta, *, keep_pixels: bool = False
    ) -> PreparedImage:
        """Raw pixels + meta (from `read`) -> the model input, prepared exactly as the run's training images."""
        from mammokit.data.geometry import prepare_pixels, resolve_spacing

        if self.spec.pixel_spacing is not None:
            # the same rule as `mammokit prepare` (file tag, else the user's value); SpacingError otherwise
            spacing, _ = resolve_spacing(meta.spacing_mm, assumed=self.assume_pixel_spacing)
            meta = dataclasses.replace(meta, spacing_mm=spacing)
        image_u16, geometry = prepare_pixels(pixels, meta, self.spec)
        kept = pixels if keep_pixels else None
        return PreparedImage(item, self.normalise(image_u16), image_u16, geometry, meta, kept)
