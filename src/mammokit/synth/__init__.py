"""Synthetic mammogram phantom, written in the real file layouts of public datasets.

Deterministic from a seed: `sample_women` draws women (density, anatomy, lesions), `render_view` /
`render_woman` draw float images with breast and lesion masks, and `generate` writes a cohort in the
CBIS-DDSM, INbreast or mini-MIAS layout. See docs/synth.md.
"""

from mammokit.synth.generate import LAYOUTS, generate
from mammokit.synth.model import BreastSpec, LesionSpec, RenderedLesion, RenderedView, Woman
from mammokit.synth.render import render_view, render_woman
from mammokit.synth.sampling import sample_woman, sample_women

__all__ = [
    "LAYOUTS",
    "BreastSpec",
    "LesionSpec",
    "RenderedLesion",
    "RenderedView",
    "Woman",
    "generate",
    "render_view",
    "render_woman",
    "sample_woman",
    "sample_women",
]
