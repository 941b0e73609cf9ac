"""Draw the cohort: women, their breasts and lesions, deterministically from a seed.

Every woman has her own random stream `default_rng([seed, index, tag])`, so woman `i` is the same whatever
the cohort size, and the image-size-independent specs can be rendered at any resolution.

Label independence: density, breast size and pectoral size are drawn before and independently of the
lesions; lesion size and contrast distributions are the same for benign and malignant lesions, so that
image-wide statistics do not reveal the label (see `tests/test_synth_leakage.py`).
"""

from __future__ import annotations

import numpy as np

from mammokit.synth.model import BreastSpec, LesionSpec, Woman

_TAG_WOMAN = 0x5EED  # stream tag of the woman spec draws (other streams use other tags)

# ACR density prevalence (roughly that of screening populations and of CBIS-DDSM).
_DENSITY_P = (0.15, 0.40, 0.30, 0.15)

# Descriptor vocabularies: each value occurs in the real CBIS-DDSM CSVs. The renderer draws what the
# descriptor says: benign masses round/oval and smooth, malignant masses irregular and spiculated or ill-defined;
# benign calcifications few/coarse/round, malignant ones many/fine/pleomorphic in a tight cluster.
_BENIGN_MASS_SHAPES = (("OVAL", 0.5), ("ROUND", 0.5))
_BENIGN_MASS_MARGINS = (("CIRCUMSCRIBED", 0.75), ("OBSCURED", 0.25))
_MALIGNANT_MASS_SHAPES = (("IRREGULAR", 0.7), ("IRREGULAR-ARCHITECTURAL_DISTORTION", 0.3))
_MALIGNANT_MASS_MARGINS = (("SPICULATED", 0.6), ("ILL_DEFINED-SPICULATED", 0.2), ("ILL_DEFINED", 0.2))
_BENIGN_CALC_TYPES = (("COARSE", 0.4), ("ROUND_AND_REGULAR", 0.4), ("COARSE-ROUND_AND_REGULAR", 0.2))
_BENIGN_CALC_DISTRIBUTIONS = (("CLUSTERED", 0.7), ("REGIONAL", 0.3))
_MALIGNANT_CALC_TYPES = (
    ("PLEOMORPHIC", 0.6),
    ("FINE_LINEAR_BRANCHING", 0.2),
    ("PLEOMORPHIC-FINE_LINEAR_BRANCHING", 0.2),
)
_MALIGNANT_CALC_DISTRIBUTIONS = (("CLUSTERED", 0.8), ("CLUSTERED-LINEAR", 0.2))

# Lesion sizes as a fraction of the breast depth (the same for both pathologies of a kind, so the lesion's
# area says nothing about its pathology). Masses: radius 4.5-8.5 % of the breast depth. Calcification clusters:
# benign ones spread wider (few coarse specks), malignant ones are tight (many fine specks).
MASS_SIZE = (0.045, 0.085)
CALC_SIZE_BENIGN = (0.04, 0.065)
CALC_SIZE_MALIGNANT = (0.025, 0.04)


def _choice(rng: np.random.Generator, options: tuple[tuple[str, float], ...]) -> str:
    values = [v for v, _ in options]
    probs = np.array([p for _, p in options], dtype=float)
    return values[int(rng.choice(len(values), p=probs / probs.sum()))]


def _sample_lesion(
    rng: np.random.Generator, *, kind: str, malignant: bool, avoid: list[LesionSpec] | None = None
) -> LesionSpec:
    """One lesion with its descriptors; placed away from the lesions in `avoid` (same breast)."""
    pathology = "MALIGNANT" if malignant else "BENIGN" if rng.random() < 0.7 else "BENIGN_WITHOUT_CALLBACK"
    if kind == "mass":
        size = float(rng.uniform(*MASS_SIZE))
    else:
        size = float(rng.uniform(*(CALC_SIZE_MALIGNANT if malignant else CALC_SIZE_BENIGN)))
    # Position: far enough from the chest wall, the skin and the other lesions of the breast.
    for _ in range(50):
        depth = float(rng.uniform(0.25, 0.72))
        u = float(rng.uniform(-0.55, 0.55))
        w = float(rng.uniform(-0.5, 0.6))  # MLO: lesions lower rather than in the pectoral corner
        if not avoid or all(abs(depth - o.depth) + min(abs(u - o.u), abs(w - o.w)) > 0.35 for o in avoid):
            break
    shape_seed = int(rng.integers(0, 2**31 - 1))
    subtlety = int(rng.integers(2, 6))
    if kind == "mass":
        if malignant:
            shape, margins = _choice(rng, _MALIGNANT_MASS_SHAPES), _choice(rng, _MALIGNANT_MASS_MARGINS)
            assessment = int(rng.choice([4, 5], p=[0.55, 0.45]))
        else:
            shape, margins = _choice(rng, _BENIGN_MASS_SHAPES), _choice(rng, _BENIGN_MASS_MARGINS)
            assessment = int(rng.choice([2, 3, 4], p=[0.25, 0.45, 0.3])) if pathology == "BENIGN" else 2
        return LesionSpec(
            kind, pathology, depth, u, w, size, shape_seed, shape=shape, margins=margins,
            assessment=assessment, subtlety=subtlety,
        )  # fmt: skip
    if malignant:
        calc_type, distribution = _choice(rng, _MALIGNANT_CALC_TYPES), _choice(rng, _MALIGNANT_CALC_DISTRIBUTIONS)
        assessment = int(rng.choice([4, 5], p=[0.6, 0.4]))
    else:
        calc_type = _choice(rng, _BENIGN_CALC_TYPES)
        # benign-without-callback calcifications carry no distribution in the real tables
        distribution = _choice(rng, _BENIGN_CALC_DISTRIBUTIONS) if pathology == "BENIGN" else "NA"
        assessment = int(rng.choice([2, 3, 4], p=[0.4, 0.3, 0.3])) if pathology == "BENIGN" else 2
    return LesionSpec(
        kind, pathology, depth, u, w, size, shape_seed, calc_type=calc_type, distribution=distribution,
        assessment=assessment, subtlety=subtlety,
    )  # fmt: skip


def sample_woman(
    index: int,
    seed: int,
    *,
    malignant_fraction: float = 0.5,
    normal_fraction: float = 0.4,
    mass_fraction: float = 0.5,
    second_lesion_fraction: float = 0.12,
    at_least_one_lesion: bool = False,
) -> Woman:
    """Draw woman `index` of the cohort `seed`.

    Args:
        index: 0-based woman number; woman `i` does not depend on how many women are drawn.
        seed: cohort seed.
        malignant_fraction: probability that a breast with lesions carries a malignant one.
        normal_fraction: probability that a breast has no lesion.
        mass_fraction: probability that a lesion is a mass (else a calcification cluster).
        second_lesion_fraction: probability that a breast with lesions has a second (benign or same-kind) one.
        at_least_one_lesion: redraw so that at least one breast has a lesion (CBIS-DDSM has no normal patients).
    """
    for name, value in (
        ("malignant_fraction", malignant_fraction),
        ("normal_fraction", normal_fraction),
        ("mass_fraction", mass_fraction),
        ("second_lesion_fraction", second_lesion_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    rng = np.random.default_rng([seed, index, _TAG_WOMAN])
    # Anatomy first, from its own draws, so that it is independent of the lesions.
    density = int(rng.choice(4, p=_DENSITY_P)) + 1
    density_offset = float(rng.normal(0.0, 0.18))
    age = int(rng.integers(40, 80))
    depth = float(rng.uniform(0.62, 0.82))
    half_height = float(rng.uniform(0.36, 0.44))
    pectoral_width = float(rng.uniform(0.22, 0.36))
    pectoral_height = float(rng.uniform(0.40, 0.62))
    texture_seed = int(rng.integers(0, 2**31 - 1))

    normal = rng.random(2) < normal_fraction
    if at_least_one_lesion and normal.all():
        normal[int(rng.integers(0, 2))] = False
    breasts = []
    for side, is_normal in zip(("L", "R"), normal, strict=True):
        lesions: list[LesionSpec] = []
        if not is_normal:
            malignant = bool(rng.random() < malignant_fraction)
            kind = "mass" if rng.random() < mass_fraction else "calcification"
            lesions.append(_sample_lesion(rng, kind=kind, malignant=malignant))
            if rng.random() < second_lesion_fraction:
                # A second lesion is benign: multifocal cancer would change nothing about the labels.
                kind2 = "mass" if rng.random() < mass_fraction else "calcification"
                lesions.append(_sample_lesion(rng, kind=kind2, malignant=False, avoid=lesions))
        breasts.append(BreastSpec(side, tuple(lesions)))
    return Woman(
        index=index,
        seed=seed,
        density=density,
        density_offset=density_offset,
        age=age,
        depth=depth,
        half_height=half_height,
        pectoral_width=pectoral_width,
        pectoral_height=pectoral_height,
        breasts=(breasts[0], breasts[1]),
        texture_seed=texture_seed,
    )


def sample_women(n: int, seed: int, **options: float | bool) -> list[Woman]:
    """Draw `n` women (indices 0..n-1) of the cohort `seed`; options as in `sample_woman`."""
    if n < 1:
        raise ValueError(f"the number of women must be at least 1, got {n}")
    return [sample_woman(i, seed, **options) for i in range(n)]  # type: ignore[arg-type]
