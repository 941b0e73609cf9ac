"""Write the phantom in the INbreast layout: FFDM DICOMs, OsiriX plist XML outlines and `INbreast.csv`.

Layout (datasets.md §3; the real release is not available to the project, so this follows the documented
format and the public parsers):

    AllDICOMs/<FileName>_<16-hex patient hash>_MG_<L|R>_<CC|MLO>_ANON.dcm
    AllXML/<FileName>.xml            images with lesions only
    INbreast.csv                     `;`-separated: Patient ID;Patient age;Laterality;View;Acquisition date;
                                     File Name;ACR;Bi-Rads

Every woman contributes her four views, normal breasts included (INbreast has normal images). Image BI-RADS:
1 for a normal breast, 2 or 3 for benign lesions only, 4a/4b/4c/5/6 when a lesion is malignant, so that the
usual rule (BI-RADS >= 4 malignant) reproduces the phantom's pathology. XML outlines (`Point_px` "(x, y)", origin
top-left): one "Mass" polygon per mass; per calcification cluster one single-point "Calcification" ROI per speck
(as INbreast annotates individual calcifications) plus a "Cluster" polygon around them.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import plistlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mammokit.synth.dicom import synth_uid, to_uint16, write_ffdm_dicom
from mammokit.synth.model import RenderedLesion, RenderedView, Woman
from mammokit.synth.parallel import map_women
from mammokit.synth.render import render_woman
from mammokit.synth.sampling import sample_women
from mammokit.utils.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

CSV_HEADER: tuple[str, ...] = (
    "Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name", "ACR", "Bi-Rads",
)  # fmt: skip
PIXEL_SPACING_MM = 0.07  # INbreast detector pitch (70 µm)
BITS_STORED = 14
ROI_TYPE_POLYGON = 15  # OsiriX ROI type codes as seen in public INbreast parsers (not verified on real files)
ROI_TYPE_POINT = 19
_TAG_INBREAST = 0x1B4E


def patient_hash(woman: Woman) -> str:
    """16 hex digits standing for INbreast's anonymised patient hash (deterministic per seed and woman)."""
    return hashlib.sha256(f"mammokit-synth-{woman.seed}-{woman.index}".encode()).hexdigest()[:16]


def file_name(woman: Woman, side: str, view: str) -> str:
    """8-digit image id, unique within a cohort (woman index in the high digits)."""
    k = (0 if side == "L" else 2) + (0 if view == "CC" else 1)
    rng = np.random.default_rng([woman.seed, woman.index, _TAG_INBREAST, k])
    return f"{20000000 + woman.index * 1000 + k * 250 + int(rng.integers(0, 250)):08d}"


def image_birads(view: RenderedView) -> str:
    """BI-RADS of one image from its lesions: 1 normal, 2/3 benign, 4a/4b/4c/5/6 malignant."""
    if view.normal:
        return "1"
    malignant = [lesion.spec for lesion in view.lesions if lesion.spec.malignant]
    if malignant:
        spec = malignant[0]
        rng = np.random.default_rng([spec.shape_seed, _TAG_INBREAST])
        if spec.assessment >= 5:
            return "6" if rng.random() < 0.15 else "5"
        return ("4a", "4b", "4c")[int(rng.integers(0, 3))]
    # benign-only: BI-RADS 2 for "without callback", else 3 (probably benign)
    return "2" if all(lesion.spec.pathology == "BENIGN_WITHOUT_CALLBACK" for lesion in view.lesions) else "3"


def _fmt(v: float) -> str:
    return f"{v:.6f}"


def _roi(index: int, name: str, points_xy: np.ndarray, pixels: np.ndarray, region: np.ndarray | None) -> dict[str, Any]:
    """One OsiriX ROI dict (keys as in the real files; plistlib writes them sorted)."""
    values = pixels[region] if region is not None and region.any() else None
    if values is None:  # single point: the pixel under it
        x, y = points_xy[0]
        r = int(np.clip(round(y), 0, pixels.shape[0] - 1))
        c = int(np.clip(round(x), 0, pixels.shape[1] - 1))
        values = pixels[r : r + 1, c : c + 1].ravel()
    xs, ys = points_xy[:, 0], points_xy[:, 1]
    # polygon area by the shoelace formula, in mm²
    area_px = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))) if len(xs) >= 3 else 0.0
    cx, cy = float(xs.mean()), float(ys.mean())
    mm = PIXEL_SPACING_MM
    return {
        "Area": round(area_px * mm * mm, 6),
        "Center": f"({_fmt(cx * mm)}, {_fmt(cy * mm)}, {_fmt(0.0)})",
        "Dev": round(float(values.std()), 6),
        "IndexInImage": index,
        "Max": round(float(values.max()), 6),
        "Mean": round(float(values.mean()), 6),
        "Min": round(float(values.min()), 6),
        "Name": name,
        "NumberOfPoints": len(xs),
        "Point_mm": [f"({_fmt(x * mm)}, {_fmt(y * mm)}, {_fmt(0.0)})" for x, y in zip(xs, ys, strict=True)],
        "Point_px": [f"({_fmt(x)}, {_fmt(y)})" for x, y in zip(xs, ys, strict=True)],
        "Total": round(float(values.sum()), 6),
        "Type": ROI_TYPE_POLYGON if len(xs) >= 3 else ROI_TYPE_POINT,
    }


def roi_plist(lesions: list[RenderedLesion], pixels: np.ndarray) -> bytes:
    """The XML plist of one image: {'Images': [{'ImageIndex', 'NumberOfROIs', 'ROIs': [...]}]}."""
    rois: list[dict[str, Any]] = []
    for lesion in lesions:
        if lesion.spec.kind == "mass":
            rois.append(_roi(len(rois), "Mass", lesion.polygon, pixels, lesion.mask))
        else:
            for speck in lesion.specks:
                rois.append(_roi(len(rois), "Calcification", speck[None, :], pixels, None))
            rois.append(_roi(len(rois), "Cluster", lesion.polygon, pixels, lesion.mask))
    doc = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": rois}]}
    return plistlib.dumps(doc, fmt=plistlib.FMT_XML, sort_keys=True)


def _write_woman(
    woman: Woman, *, out: Path, seed: int, height: int, width: int
) -> tuple[list[list[str]], Counter[str]]:
    """Render and write one woman's four DICOMs (and XMLs); returns her INbreast.csv rows and her counts.

    Module-level so that `map_women` can run it in a worker process (a `functools.partial` of it pickles).
    """
    rows: list[list[str]] = []
    counts: Counter[str] = Counter()
    pid = patient_hash(woman)
    date_rng = np.random.default_rng([seed, woman.index, _TAG_INBREAST, 9])
    year, month = 2008 + int(date_rng.integers(0, 3)), int(date_rng.integers(1, 13))
    for view in render_woman(woman, height=height, width=width):
        name = file_name(woman, view.side, view.view)
        pixels = to_uint16(view.image, (1 << BITS_STORED) - 1)
        dicom_name = f"{name}_{pid}_MG_{view.side}_{view.view}_ANON.dcm"
        write_ffdm_dicom(
            out / "AllDICOMs" / dicom_name, pixels, patient_id=pid,
            study_uid=synth_uid(seed, pid, "study"), series_uid=synth_uid(seed, name, "series"),
            sop_uid=synth_uid(seed, name, "sop"), laterality=view.side, view=view.view,
            acquisition_date=f"{year}{month:02d}15", age=woman.age, bits_stored=BITS_STORED,
            pixel_spacing_mm=PIXEL_SPACING_MM,
        )  # fmt: skip
        if view.lesions:
            atomic_write_bytes(out / "AllXML" / f"{name}.xml", roi_plist(view.lesions, pixels))
            counts["xml_files"] += 1
        rows.append(
            ["removed", "removed", view.side, view.view, f"{year}{month:02d}", name, str(woman.density),
             image_birads(view)]
        )  # fmt: skip
        counts.update(view.summary_counts())
    return rows, counts


def write_inbreast(
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
    """Render `women` women (four views each) and write them in the INbreast layout under `out`.

    `workers` > 1 renders and writes the women in that many processes (`map_women`); the files are the same.
    """
    cohort = sample_women(women, seed, **sampling)
    rows: list[list[str]] = []
    counts: Counter[str] = Counter()
    task = functools.partial(_write_woman, out=out, seed=seed, height=height, width=width)
    for woman_rows, woman_counts in map_women(task, cohort, workers):  # cohort order: rows as without workers
        rows.extend(woman_rows)
        counts.update(woman_counts)
    buf = io.StringIO()
    for row in [list(CSV_HEADER), *rows]:
        buf.write(";".join(row) + "\r\n")
    atomic_write_bytes(out / "INbreast.csv", buf.getvalue().encode("ascii"))
    log.info("wrote %d images of %d women in the INbreast layout", counts["images"], len(cohort))
    return {
        "layout": "inbreast",
        "out": str(out),
        "seed": seed,
        "height": height,
        "width": width,
        "women": len(cohort),
        "images": counts["images"],
        "xml_files": counts["xml_files"],
        "lesions": counts["lesions"],
        "malignant_lesions": counts["malignant_lesions"],
        "malignant_images": counts["malignant_images"],
        "normal_images": counts["normal_images"],
        "csv": {"INbreast.csv": str(out / "INbreast.csv")},
    }
