"""Data model of the phantom: what a woman, a breast and a lesion *are* (specs) and what a rendered view holds.

Specs are drawn once per woman from a seed (`sampling.py`) and are independent of the image size; the
renderer (`render.py`) turns one (woman, side, view) into float pixels at any size. A lesion is placed in
breast coordinates (depth from the chest wall, medio-lateral and cranio-caudal offsets), so the same lesion
appears at a consistent depth in the CC and the MLO view of its breast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIDES: tuple[str, ...] = ("L", "R")
VIEWS: tuple[str, ...] = ("CC", "MLO")
LESION_KINDS: tuple[str, ...] = ("mass", "calcification")
PATHOLOGIES: tuple[str, ...] = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")


@dataclass(frozen=True)
class LesionSpec:
    """One lesion of one breast, in breast coordinates (size-independent).

    Attributes:
        kind: "mass" or "calcification".
        pathology: CBIS-DDSM pathology value ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK").
        depth: distance from the chest wall as a fraction of the breast depth (0 = chest wall, 1 = nipple).
        u: medio-lateral offset in [-1, 1] (vertical position on the CC view).
        w: cranio-caudal offset in [-1, 1] (vertical position on the MLO view).
        size: mass radius / calcification-cluster radius as a fraction of the breast depth.
        shape_seed: seed of the lesion's shape, shared by both views so the lesion looks alike in each.
        shape: CBIS `mass shape` (masses) or "" (calcifications).
        margins: CBIS `mass margins` (masses) or "".
        calc_type: CBIS `calc type` (calcifications) or "".
        distribution: CBIS `calc distribution` (calcifications) or "".
        assessment: BI-RADS assessment 0-5.
        subtlety: CBIS subtlety 1-5.
    """

    kind: str
    pathology: str
    depth: float
    u: float
    w: float
    size: float
    shape_seed: int
    shape: str = ""
    margins: str = ""
    calc_type: str = ""
    distribution: str = ""
    assessment: int = 3
    subtlety: int = 3

    @property
    def malignant(self) -> bool:
        return self.pathology.startswith("MALIGNANT")

    @property
    def patch_class(self) -> str:
        """Patch class name as in `mammokit.constants.PATCH_CLASSES_5`."""
        kind = "calc" if self.kind == "calcification" else "mass"
        return f"{kind}_{'malignant' if self.malignant else 'benign'}"


@dataclass(frozen=True)
class BreastSpec:
    """One breast: its side and its lesions (empty for a normal breast)."""

    side: str
    lesions: tuple[LesionSpec, ...] = ()

    @property
    def malignant(self) -> bool:
        return any(lesion.malignant for lesion in self.lesions)

    @property
    def normal(self) -> bool:
        return not self.lesions


@dataclass(frozen=True)
class Woman:
    """One woman of the phantom: anatomy parameters shared by her four views, and her two breasts.

    Attributes:
        index: 0-based position in the sampled cohort (stable for a given seed).
        seed: the cohort seed she was drawn from.
        density: ACR breast density 1-4 (drives the amount of fibroglandular tissue).
        density_offset: within-category jitter of the glandular threshold (women of one ACR class differ).
        age: age in years (INbreast-style metadata only).
        depth: breast depth as a fraction of the image width (CC view).
        half_height: half of the breast's vertical extent as a fraction of the image height (CC view).
        pectoral_width: pectoral-muscle triangle width at the top edge, fraction of the image width (MLO).
        pectoral_height: pectoral-muscle triangle height along the chest wall, fraction of the image height.
        breasts: the left and the right breast, in that order.
        texture_seed: seed of the fibroglandular texture.
    """

    index: int
    seed: int
    density: int
    density_offset: float
    age: int
    depth: float
    half_height: float
    pectoral_width: float
    pectoral_height: float
    breasts: tuple[BreastSpec, BreastSpec]
    texture_seed: int

    def breast(self, side: str) -> BreastSpec:
        for breast in self.breasts:
            if breast.side == side:
                return breast
        raise KeyError(f"no breast with side {side!r}; expected one of {SIDES}")

    @property
    def lesions(self) -> tuple[LesionSpec, ...]:
        return tuple(lesion for breast in self.breasts for lesion in breast.lesions)


@dataclass
class RenderedLesion:
    """One lesion as drawn on one view (image pixel coordinates, after any left/right flip).

    Attributes:
        spec: the lesion spec it came from.
        mask: bool (H, W) outline region (mass body; calcification-cluster disc), as a ROI annotator would draw.
        center: (row, col) in pixels.
        radius: radius of a circle enclosing the lesion, in pixels (mini-MIAS RADIUS).
        polygon: (N, 2) float array of (x=col, y=row) boundary points, clockwise in image coordinates.
        specks: (K, 2) float array of (x, y) centres of the individual calcifications (empty for masses).
    """

    spec: LesionSpec
    mask: np.ndarray
    center: tuple[float, float]
    radius: float
    polygon: np.ndarray
    specks: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1), end-exclusive, of the mask."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


@dataclass
class RenderedView:
    """One rendered image: float pixels in [0, 1] (MONOCHROME2: dense tissue bright), masks and lesions.

    Orientation as in the real data: left images have the chest wall on the left, right images on the right.
    """

    woman: Woman
    side: str
    view: str
    image: np.ndarray  # float32 (H, W) in [0, 1]
    breast_mask: np.ndarray  # bool (H, W)
    lesions: list[RenderedLesion]

    @property
    def malignant(self) -> bool:
        return any(lesion.spec.malignant for lesion in self.lesions)

    @property
    def normal(self) -> bool:
        return not self.lesions

    def summary_counts(self) -> dict[str, int]:
        """What this view adds to a written layout's counts (synth.json: images, normal/malignant, lesions)."""
        return {
            "images": 1,
            "normal_images": int(self.normal),
            "malignant_images": int(self.malignant),
            "lesions": len(self.lesions),
            "malignant_lesions": sum(lesion.spec.malignant for lesion in self.lesions),
        }
