"""Training-time augmentation of Shen et al. 2019 (docs/decisions.md, augmentation), for patches and whole images alike.

The paper's Keras `ImageDataGenerator` settings, per sample: random horizontal and vertical flips (p = 0.5
each), rotation uniform in +/-25 degrees, shear uniform in +/-0.2 **radians** (Keras 2.0 semantics, about
+/-11.46 degrees), x and y zoom drawn **independently** in [0.8, 1.2] (the aspect ratio changes), an
intensity shift uniform in +/-20 on the 0-255 scale, and edge replication outside the image.

Library: **albumentations** (`A.Affine` + `A.RandomBrightnessContrast` + flips), not
`torchvision.transforms.v2`, because torchvision's `RandomAffine` draws one zoom factor for both axes
(the paper's independent x/y zoom would need a hand-written matrix) and fills only with a constant (the
paper replicated the edge, `cv2.BORDER_REPLICATE` here). OpenCV's `warpAffine` on a (H, W) float32 array is
also cheap inside DataLoader workers.

Deviations from the original, recorded in docs/decisions.md:

* bilinear interpolation by default (Keras used nearest neighbour, which makes jagged rotated edges);
  `interpolation="nearest"` restores it;
* one intensity shift for the single grey channel, +/-20/255 on [0, 1] intensities, clipped to [0, 1]
  (Keras shifted each of the three replicated channels independently and clipped to the image's min/max);
* zoom is the albumentations scale factor (> 1 enlarges) drawn in [0.8, 1.2]; Keras' zoom factor divided
  the coordinates (its magnification is 1/z, in [0.83, 1.25]);
* shear is along x only (one angle, as Keras), as an affine shear x' = x + tan(a) y (Keras' matrix also
  scaled y by cos(a), at most 2 % here).

Randomness: each call draws a 63-bit seed from torch's global generator and seeds fresh NumPy/Python
generators shared by all steps. So `torch.manual_seed` makes augmentation reproducible, and DataLoader
workers (whose torch seed differs per worker and per epoch) never repeat each other's draws. We do not use
`A.Compose(seed=...)`: in albumentations 2.0.8 it gives every transform its own generator with the *same*
seed, so the horizontal and vertical flips always fire together (checked in tests/test_transforms.py).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from mammokit.config import ConfigError

Transform = Callable[[torch.Tensor], torch.Tensor]

PAPER_SHEAR_RAD = 0.2  # Keras 2.0 shear_range is in radians


@dataclass
class AugmentConfig:
    """Augmentation settings (defaults = the paper's; docs/decisions.md). Put it in a training config as-is."""

    enabled: bool = True  # False: the transform returns its input unchanged (evaluation)
    hflip_p: float = 0.5  # probability of a left-right flip
    vflip_p: float = 0.5  # probability of an up-down flip
    affine_p: float = 1.0  # probability of the rotation/shear/zoom step (Keras: every sample)
    rotate_deg: float = 25.0  # rotation uniform in [-rotate_deg, rotate_deg] degrees
    shear_deg: float = math.degrees(PAPER_SHEAR_RAD)  # x-shear uniform in +/- this (0.2 rad = 11.46 degrees)
    zoom: tuple[float, float] = (0.8, 1.2)  # scale-factor range
    zoom_independent: bool = True  # draw x and y zoom independently (paper); False keeps the aspect ratio
    intensity_p: float = 1.0  # probability of the intensity shift
    intensity_shift: float = 20.0 / 255.0  # shift uniform in +/- this, on [0, 1] intensities (paper: 20 of 255)
    interpolation: Literal["linear", "nearest"] = "linear"  # resampling of the affine step (Keras: nearest)
    fill: Literal["edge", "constant"] = "edge"  # outside the image: replicate the edge (paper) or fill_value
    fill_value: float = 0.0  # used with fill="constant"

    def validate(self) -> None:
        for name in ("hflip_p", "vflip_p", "affine_p", "intensity_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augment.{name} is a probability in [0, 1], got {value}")
        if not 0.0 <= self.rotate_deg <= 180.0:
            raise ConfigError(f"augment.rotate_deg must be in [0, 180], got {self.rotate_deg}")
        if not 0.0 <= self.shear_deg < 90.0:
            raise ConfigError(f"augment.shear_deg must be in [0, 90), got {self.shear_deg}")
        low, high = self.zoom
        if not 0.0 < low <= high:
            raise ConfigError(f"augment.zoom must be (low, high) with 0 < low <= high, got {self.zoom}")
        if not 0.0 <= self.intensity_shift <= 1.0:
            raise ConfigError(
                f"augment.intensity_shift must be in [0, 1] (fraction of full scale), got {self.intensity_shift}"
            )
        if self.interpolation not in ("linear", "nearest"):
            raise ConfigError(f"augment.interpolation must be 'linear' or 'nearest', got {self.interpolation!r}")
        if self.fill not in ("edge", "constant"):
            raise ConfigError(f"augment.fill must be 'edge' or 'constant', got {self.fill!r}")
        if not 0.0 <= self.fill_value <= 1.0:
            raise ConfigError(f"augment.fill_value must be in [0, 1], got {self.fill_value}")

    @classmethod
    def paper(cls) -> AugmentConfig:
        """The paper's augmentation (the defaults)."""
        return cls()

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation (evaluation, prediction)."""
        return cls(enabled=False)

    def only(self, *steps: str) -> AugmentConfig:
        """A copy with every step except `steps` switched off ('hflip', 'vflip', 'affine', 'intensity')."""
        unknown = set(steps) - {"hflip", "vflip", "affine", "intensity"}
        if unknown:
            raise ValueError(f"unknown augmentation steps {sorted(unknown)}; use hflip, vflip, affine, intensity")
        return replace(self, **{f"{s}_p": getattr(self, f"{s}_p") if s in steps else 0.0 for s in _STEPS})


_STEPS = ("hflip", "vflip", "affine", "intensity")
AUGMENT_PRESETS: dict[str, AugmentConfig] = {"paper": AugmentConfig.paper(), "none": AugmentConfig.none()}


def augment_preset(name: str) -> AugmentConfig:
    """'paper' or 'none' -> a fresh AugmentConfig."""
    if name not in AUGMENT_PRESETS:
        raise ConfigError(f"unknown augmentation preset {name!r}; choose one of {sorted(AUGMENT_PRESETS)}")
    return replace(AUGMENT_PRESETS[name])


def _import_albumentations() -> Any:
    # albumentations asks PyPI for a newer version at import time unless told not to; mammokit never goes online.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import albumentations as A
    except ImportError as exc:  # core installs lack the [train] extra
        raise ImportError(
            "augmentation needs albumentations: pip install 'mammokit[train]' (or albumentations>=2.0)"
        ) from exc
    return A


class PaperAugment:
    """The paper's augmentation on a (1, H, W) float tensor in [0, 1]; returns the same shape and dtype.

    Order within one draw, as in Keras: affine (rotation, shear, zoom about the centre) -> intensity shift
    -> horizontal flip -> vertical flip.
    """

    def __init__(self, cfg: AugmentConfig | None = None) -> None:
        self.cfg = cfg or AugmentConfig()
        self.cfg.validate()
        self._compose = self._build() if self.cfg.enabled else None

    def _build(self) -> Any:
        import cv2

        A = _import_albumentations()
        c = self.cfg
        zoom = (float(c.zoom[0]), float(c.zoom[1]))
        return A.Compose(
            [
                A.Affine(
                    scale={"x": zoom, "y": zoom} if c.zoom_independent else zoom,
                    keep_ratio=not c.zoom_independent,
                    rotate=(-c.rotate_deg, c.rotate_deg),
                    shear={"x": (-c.shear_deg, c.shear_deg), "y": (0.0, 0.0)},
                    interpolation=cv2.INTER_LINEAR if c.interpolation == "linear" else cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_REPLICATE if c.fill == "edge" else cv2.BORDER_CONSTANT,
                    fill=float(c.fill_value),
                    p=c.affine_p,
                ),
                A.RandomBrightnessContrast(
                    brightness_limit=(-c.intensity_shift, c.intensity_shift),
                    contrast_limit=(0.0, 0.0),
                    brightness_by_max=True,  # shift = factor x 1.0 (the float maximum): an absolute shift
                    p=c.intensity_p,
                ),
                A.HorizontalFlip(p=c.hflip_p),
                A.VerticalFlip(p=c.vflip_p),
            ]
        )

    def apply_numpy(self, image: np.ndarray, seed: int) -> np.ndarray:
        """Augment a (H, W) float32 array in [0, 1] with all randomness drawn from `seed`."""
        if self._compose is None:
            return image
        # One NumPy and one Python generator shared by all steps, so their draws are independent.
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self._compose(image=image)["image"]
        return np.ascontiguousarray(out, dtype=np.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[0] != 1 or not x.is_floating_point():
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"augmentation expects a float tensor of shape (1, H, W) in [0, 1], got {shape}")
        if self._compose is None:
            return x
        seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())
        image = x[0].detach().to("cpu", torch.float32).numpy()
        out = self.apply_numpy(image, seed)
        return torch.from_numpy(out).unsqueeze(0).to(device=x.device, dtype=x.dtype)

    def __repr__(self) -> str:
        return f"PaperAugment({self.cfg})"


def build_train_transform(cfg: AugmentConfig | None = None) -> Transform:
    """The training transform for `mammokit.data.datasets` (`transform=`): the paper's augmentation.

    Args:
        cfg: settings; None = the paper's. `AugmentConfig.none()` gives a transform that returns its input.

    Returns:
        A picklable callable (1, H, W) float tensor in [0, 1] -> same shape and dtype.
    """
    return PaperAugment(cfg)
