"""Write the phantom in the mini-MIAS layout: square 8-bit binary PGM files and the `Info.txt` listing.

Layout (datasets.md §1): `mdbNNN.pgm` (`P5`, header `P5\\n<W> <H>\\n255\\n`, 8-bit), one MLO view per breast,
files in pairs per woman (odd number = right breast, even number = left breast: `mdb001`/`mdb002` are woman 1).
The rendered image (height x width) is centred in a square matrix of side max(height, width), zero-padded, as
the real images were "clipped/padded ... and centred in the matrix" (1024 x 1024 in the real set).

`Info.txt`: a README in sections separated by lines of `=` characters, the listing after the last section
line, then a blank line and a closing `=` line, as in the real file; plain ASCII, LF line endings. The
README text is our own (the real one is under the MIAS licence); the column definitions and the row format
are the documented ones. Listing rows: `REFNUM BG CLASS SEVERITY X Y RADIUS`, one per lesion, with the origin
at the bottom-left corner (Y = side - row); normal images as `mdbNNN BG NORM ` with the trailing space.
Classes: CIRC (benign, circumscribed mass), SPIC (spiculated malignant mass), MISC (ill-defined malignant mass),
CALC (calcification cluster; RADIUS encloses the cluster). BG: F (ACR 1), G (ACR 2), D (ACR 3-4).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mammokit.synth.model import LesionSpec, RenderedView, Woman
from mammokit.synth.parallel import map_women
from mammokit.synth.render import render_view
from mammokit.synth.sampling import sample_women
from mammokit.utils.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

_BACKGROUND_TISSUE = {1: "F", 2: "G", 3: "D", 4: "D"}
_RULE = "=" * 65
MAX_WOMEN = 499  # three-digit reference numbers, two per woman

README = f"""              mammokit SYNTHETIC MAMMOGRAM PHANTOM
                  mini-MIAS file layout



This folder holds synthetic mammograms made by `mammokit synth`
in the file layout of the MIAS MiniMammographic Database. No image
shows a real person. The images are 8-bit binary PGM files, one
medio-lateral oblique view per breast, centred in a square matrix.

{_RULE}

REFERENCE:

File layout of: J Suckling et al (1994) "The Mammographic Image
Analysis Society Digital Mammogram Database" Exerpta Medica.
International Congress Series 1069 pp375-378.

{_RULE}

INFORMATION:

This file lists the films in this folder and provides
details as follows:

1st column: reference number.

2nd column: Character of background tissue:
                F - Fatty
                G - Fatty-glandular
                D - Dense-glandular

3rd column: Class of abnormality present:
                CALC - Calcification
                CIRC - Well-defined/circumscribed masses
                SPIC - Spiculated masses
                MISC - Other, ill-defined masses
                NORM - Normal

4th column: Severity of abnormality;
                B - Benign
                M - Malignant

5th,6th columns: x,y image-coordinates of centre of abnormality.

7th column: Approximate radius (in pixels) of a circle enclosing
            the abnormality.

NOTES
=====
1) The list is arranged in pairs of films, where each pair
   represents the left (even filename numbers) and right mammograms
   (odd filename numbers) of a single patient.

2) The images have been centered in a square matrix.

3) When calcifications are present, centre locations and radii
   apply to clusters rather than individual calcifications.
   Coordinate system origin is the bottom-left corner.

{_RULE}

"""


def mias_class(spec: LesionSpec) -> str:
    """MIAS abnormality class of a lesion."""
    if spec.kind == "calcification":
        return "CALC"
    if not spec.malignant:
        return "CIRC"
    return "SPIC" if "SPICULATED" in spec.margins else "MISC"


def refnum(woman_index: int, side: str) -> str:
    """`mdbNNN`: woman i has mdb(2i+1) (right) and mdb(2i+2) (left)."""
    return f"mdb{2 * woman_index + (1 if side == 'R' else 2):03d}"


def pgm_bytes(pixels: np.ndarray) -> bytes:
    """Binary PGM (P5) of an 8-bit image: header `P5\\n<width> <height>\\n255\\n` then the rows."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"PGM needs a 2-D uint8 image, got {pixels.dtype} {pixels.shape}")
    return f"P5\n{pixels.shape[1]} {pixels.shape[0]}\n255\n".encode("ascii") + pixels.tobytes()


def _square(view: RenderedView) -> tuple[np.ndarray, int, int]:
    """8-bit image centred in a zero-padded square; returns (pixels, row offset, column offset)."""
    h, w = view.image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side), dtype=np.uint8)
    out[top : top + h, left : left + w] = (np.clip(view.image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out, top, left


def listing_rows(name: str, view: RenderedView, top: int, left: int, side: int) -> list[str]:
    """Info.txt rows of one image (origin bottom-left)."""
    bg = _BACKGROUND_TISSUE[view.woman.density]
    if view.normal:
        return [f"{name} {bg} NORM "]
    rows = []
    for lesion in view.lesions:
        x = round(lesion.center[1] + left)
        y = side - round(lesion.center[0] + top)
        radius = max(1, int(np.ceil(lesion.radius)))
        severity = "M" if lesion.spec.malignant else "B"
        rows.append(f"{name} {bg} {mias_class(lesion.spec)} {severity} {x} {y} {radius}")
    return rows


def _write_woman(woman: Woman, *, out: Path, height: int, width: int) -> tuple[list[str], Counter[str]]:
    """Render and write one woman's two MLO views (PGM); returns her Info.txt rows and her counts.

    Module-level so that `map_women` can run it in a worker process (a `functools.partial` of it pickles).
    """
    listing: list[str] = []
    counts: Counter[str] = Counter()
    side_px = max(height, width)
    for side in ("R", "L"):  # odd number (right) first, as in the real listing
        view = render_view(woman, side, "MLO", height=height, width=width)
        name = refnum(woman.index, side)
        pixels, top, left = _square(view)
        atomic_write_bytes(out / f"{name}.pgm", pgm_bytes(pixels))
        listing.extend(listing_rows(name, view, top, left, side_px))
        counts.update(view.summary_counts())
    return listing, counts


def write_mini_mias(
    out: Path,
    *,
    women: int,
    seed: int,
    height: int,
    width: int,
    options: Any = None,
    workers: int = 1,
    **sampling: Any,
) -> dict[str, Any]:
    """Render the MLO views of `women` women and write them in the mini-MIAS layout under `out`.

    `workers` > 1 renders and writes the women in that many processes (`map_women`); the files are the same.
    """
    if women > MAX_WOMEN:
        raise ValueError(f"the mini-MIAS layout numbers images mdb001..mdb998: at most {MAX_WOMEN} women, got {women}")
    cohort = sample_women(women, seed, **sampling)
    listing: list[str] = []
    counts: Counter[str] = Counter()
    side_px = max(height, width)
    task = functools.partial(_write_woman, out=out, height=height, width=width)
    for woman_listing, woman_counts in map_women(task, cohort, workers):  # cohort order: listing as without workers
        listing.extend(woman_listing)
        counts.update(woman_counts)
    atomic_write_text(out / "Info.txt", README + "\n".join(listing) + "\n\n" + _RULE + "\n")
    atomic_write_text(
        out / "Licence.txt",
        "Synthetic images generated by mammokit synth (no real person is shown).\n"
        "They may be used, copied and modified without restriction.\n",
    )
    log.info("wrote %d images of %d women in the mini-MIAS layout", counts["images"], len(cohort))
    return {
        "layout": "mini-mias",
        "out": str(out),
        "seed": seed,
        "height": side_px,
        "width": side_px,
        "women": len(cohort),
        "images": counts["images"],
        "lesions": counts["lesions"],
        "malignant_lesions": counts["malignant_lesions"],
        "malignant_images": counts["malignant_images"],
        "normal_images": counts["normal_images"],
        "csv": {"Info.txt": str(out / "Info.txt")},
    }
