"""`SynthConfig`: the settings of `generate` / `mammokit synth` (YAML keys = these field names).

Kept free of NumPy and SciPy so that `mammokit --help` can show the defaults without loading the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAYOUTS: tuple[str, ...] = ("cbis-ddsm", "inbreast", "mini-mias")

# Options understood by the cohort sampler (`sampling.sample_woman`); the CBIS-DDSM writer's are `CBIS_OPTIONS`.
SAMPLING_OPTIONS: tuple[str, ...] = ("malignant_fraction", "normal_fraction", "mass_fraction", "second_lesion_fraction")
CBIS_OPTIONS: tuple[str, ...] = ("test_fraction", "cross_fraction", "mask_quirk_fraction")  # = fields of CbisOptions


@dataclass
class SynthConfig:
    """A synthetic cohort and the file layout it is written in; the same config gives byte-identical files."""

    layout: str = "cbis-ddsm"  # one of LAYOUTS
    women: int = 20  # each has left/right x CC/MLO views (mini-MIAS keeps the MLO views only)
    seed: int = 0  # cohort seed
    # The default size is half the paper's 1152 x 896 so that a demo dataset is quick to make;
    # height=1152, width=896 for the paper's whole-image resolution. mini-MIAS pads to a square.
    height: int = 576  # full-image rows
    width: int = 448  # full-image columns
    malignant_fraction: float = 0.5  # breasts with lesions whose lesion is malignant
    normal_fraction: float = 0.4  # breasts without lesions (dropped from the cbis-ddsm layout)
    mass_fraction: float = 0.5  # lesions that are masses (the rest: calcification clusters)
    second_lesion_fraction: float = 0.12  # lesion breasts with a second, benign lesion
    test_fraction: float = 0.2  # cbis-ddsm: women in the official Test split
    cross_fraction: float = 0.3  # cbis-ddsm: women with masses and calcifications split across Training/Test
    mask_quirk_fraction: float = 0.08  # cbis-ddsm: ROI rows whose mask (mass) / crop (calc) has its own series

    def sampling_options(self) -> dict[str, Any]:
        """Keyword options of `sampling.sample_woman`."""
        return {name: getattr(self, name) for name in SAMPLING_OPTIONS}

    def layout_options(self) -> dict[str, Any]:
        """Keyword options of this layout's writer (CBIS-DDSM only; the other layouts have none)."""
        return {name: getattr(self, name) for name in CBIS_OPTIONS} if self.layout == "cbis-ddsm" else {}
