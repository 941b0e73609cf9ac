"""Synthetic mammogram phantom, written in the real file layouts of public datasets.

Deterministic from a seed: `sample_women` draws women (density, anatomy, lesions), `render_view` /
`render_woman` draw float images with breast and lesion masks, and `generate(out, SynthConfig(...))` writes
a cohort in the CBIS-DDSM, INbreast or mini-MIAS layout. See docs/synth.md.

The renderer (NumPy, SciPy) is imported on first use of one of its names, so that `mammokit.synth.config`
(read by `mammokit --help`) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mammokit.synth.config import LAYOUTS, SynthConfig

if TYPE_CHECKING:
    from mammokit.synth.generate import generate
    from mammokit.synth.model import BreastSpec, LesionSpec, RenderedLesion, RenderedView, Woman
    from mammokit.synth.render import render_view, render_woman
    from mammokit.synth.sampling import sample_woman, sample_women

_LAZY = {
    "generate": "mammokit.synth.generate",
    "BreastSpec": "mammokit.synth.model",
    "LesionSpec": "mammokit.synth.model",
    "RenderedLesion": "mammokit.synth.model",
    "RenderedView": "mammokit.synth.model",
    "Woman": "mammokit.synth.model",
    "render_view": "mammokit.synth.render",
    "render_woman": "mammokit.synth.render",
    "sample_woman": "mammokit.synth.sampling",
    "sample_women": "mammokit.synth.sampling",
}

__all__ = [
    "LAYOUTS",
    "BreastSpec",
    "LesionSpec",
    "RenderedLesion",
    "RenderedView",
    "SynthConfig",
    "Woman",
    "generate",
    "render_view",
    "render_woman",
    "sample_woman",
    "sample_women",
]


def __getattr__(name: str) -> Any:  # PEP 562: import the renderer on first use
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
