"""Write the phantom in the CBIS-DDSM layout: TCIA "classic" DICOM tree + the four case-description CSVs.

Tree (datasets.md §2.1, §2.4 variant 1), relative to the output folder:

    Mass-Training_P_00001_LEFT_CC/<StudyUID>/<SeriesUID>/000000.dcm        full mammogram
    Mass-Training_P_00001_LEFT_CC_1/<StudyUID>/<SeriesUID>/000000.dcm      crop   (mass rows)
    Mass-Training_P_00001_LEFT_CC_1/<StudyUID>/<SeriesUID>/000001.dcm      mask   (mass rows)
    Calc-Test_P_00004_RIGHT_MLO_1/<StudyUID>/<SeriesUID>/000000.dcm        mask   (calc rows: names swapped)
    Calc-Test_P_00004_RIGHT_MLO_1/<StudyUID>/<SeriesUID>/000001.dcm        crop
    mass_case_description_train_set.csv, ..._test_set.csv, calc_case_description_{train,test}_set.csv

Reproduced quirks of the real release (§2.2): CRLF line endings; one path value per row ending in an
embedded newline inside its quotes (the mask path in mass files, the crop path in calc files);
`breast_density` (mass) vs `breast density` (calc); crop/mask file names swapped between mass and calc files
and, in some mass rows, the mask written as `000000.dcm` in its own series (crop and mask then sit in
different series directories), in some calc rows the crop likewise; a view with both masses and
calcifications stored twice (under `Mass-...` and `Calc-...`, different UIDs); a few patients whose mass and
calcification rows sit in different official splits; no normal images (breasts without lesions are left out).
"""

from __future__ import annotations

import csv
import functools
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammokit.synth.dicom import synth_uid, to_uint16, write_cbis_dicom
from mammokit.synth.model import RenderedLesion, RenderedView, Woman
from mammokit.synth.parallel import map_women
from mammokit.synth.render import render_view
from mammokit.synth.sampling import sample_women
from mammokit.utils.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

MASS_HEADER: tuple[str, ...] = (
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "mass shape", "mass margins", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
)  # fmt: skip
CALC_HEADER: tuple[str, ...] = (
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "calc type", "calc distribution", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
)  # fmt: skip
CSV_NAMES: dict[tuple[str, str], str] = {
    ("mass", "Training"): "mass_case_description_train_set.csv",
    ("mass", "Test"): "mass_case_description_test_set.csv",
    ("calcification", "Training"): "calc_case_description_train_set.csv",
    ("calcification", "Test"): "calc_case_description_test_set.csv",
}
_SIDE_WORD = {"L": "LEFT", "R": "RIGHT"}
_TAG_SPLIT = 0x5B17  # stream tag of the split / quirk draws


@dataclass(frozen=True)
class CbisOptions:
    """Layout options of the CBIS-DDSM writer.

    Attributes:
        test_fraction: share of women in the official Test split (the real release: ~20 %).
        cross_fraction: share of women with both masses and calcifications whose calcification rows go to the
            other official split (the real release has 31 such patients).
        mask_quirk_fraction: share of mass rows whose mask is `000000.dcm` in a series of its own (real: ~7 %);
            the same share of calc rows gets the crop that way (real: 1 row in 1872).
    """

    test_fraction: float = 0.2
    cross_fraction: float = 0.3
    mask_quirk_fraction: float = 0.08


def patient_id(woman: Woman) -> str:
    """`P_xxxxx`: increasing with the woman's index, with gaps as in the real numbering."""
    offset = int(np.random.default_rng([woman.seed, woman.index, _TAG_SPLIT, 1]).integers(0, 3))
    return f"P_{1 + 3 * woman.index + offset:05d}"


def _splits(woman: Woman, options: CbisOptions) -> dict[str, str]:
    """Official split per abnormality type ("mass"/"calcification" -> "Training"/"Test")."""
    rng = np.random.default_rng([woman.seed, woman.index, _TAG_SPLIT])
    base = "Test" if rng.random() < options.test_fraction else "Training"
    kinds = {lesion.kind for lesion in woman.lesions}
    cross = rng.random() < options.cross_fraction and kinds == {"mass", "calcification"}
    other = "Training" if base == "Test" else "Test"
    return {"mass": base, "calcification": other if cross else base}


def _crop_box(lesion: RenderedLesion, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Lesion bounding box with a margin of 20 % of its size (at least 4 px), clipped to the image."""
    r0, c0, r1, c1 = lesion.bbox
    margin = max(4, int(0.2 * max(r1 - r0, c1 - c0)))
    return max(r0 - margin, 0), max(c0 - margin, 0), min(r1 + margin, shape[0]), min(c1 + margin, shape[1])


class _Writer:
    """Writes the DICOMs of views and collects their CSV rows and counts.

    `write_cbis_ddsm` gives each woman a writer of her own (in a worker process when `workers` > 1; the
    writer is pickled back with her rows) and `merge`s them, in cohort order, into one that writes the CSVs:
    the rows then come out in the same order whatever the number of workers.
    """

    def __init__(self, out: Path, seed: int, options: CbisOptions) -> None:
        self.out, self.seed, self.options = out, seed, options
        self.rows: dict[tuple[str, str], list[list[str]]] = {key: [] for key in CSV_NAMES}
        self.patients: set[str] = set()
        self.views = self.full_images = self.files = 0
        self.lesions = self.malignant_lesions = self.malignant_images = 0

    def merge(self, other: _Writer) -> None:
        """Append `other`'s rows and add its counts (call in cohort order)."""
        for key, rows in other.rows.items():
            self.rows[key].extend(rows)
        self.patients |= other.patients
        self.views += other.views
        self.full_images += other.full_images
        self.files += other.files
        self.lesions += other.lesions
        self.malignant_lesions += other.malignant_lesions
        self.malignant_images += other.malignant_images

    def _dicom(self, folder: str, name: str, pixels: np.ndarray, description: str, series_key: str, **kw: Any) -> str:
        study = synth_uid(self.seed, folder, "study")
        series = synth_uid(self.seed, folder, series_key, "series")
        sop = synth_uid(self.seed, folder, series_key, name, "sop")
        rel = f"{folder}/{study}/{series}/{name}"
        write_cbis_dicom(
            self.out / rel, pixels, patient_id=folder, study_uid=study, series_uid=series, sop_uid=sop,
            series_description=description, **kw,
        )  # fmt: skip
        self.files += 1
        return rel

    def write_view(self, woman: Woman, view: RenderedView, splits: dict[str, str], study_date: str) -> None:
        pid = patient_id(woman)
        pixels = to_uint16(view.image)
        side_word = _SIDE_WORD[view.side]
        quirk_rng = np.random.default_rng([self.seed, woman.index, _TAG_SPLIT, 2, ord(view.side), len(view.view)])
        common = {"laterality": view.side, "view": view.view, "study_date": study_date}
        self.patients.add(pid)
        self.views += 1
        self.malignant_images += int(view.malignant)
        self.lesions += len(view.lesions)
        self.malignant_lesions += sum(lesion.spec.malignant for lesion in view.lesions)
        for kind, prefix in (("mass", "Mass"), ("calcification", "Calc")):
            lesions = [lesion for lesion in view.lesions if lesion.spec.kind == kind]
            if not lesions:
                continue
            split = splits[kind]
            folder = f"{prefix}-{split}_{pid}_{side_word}_{view.view}"
            full_path = self._dicom(folder, "000000.dcm", pixels, "full mammogram images", "full", **common)
            self.full_images += 1
            for abn_id, lesion in enumerate(lesions, start=1):
                roi_folder = f"{folder}_{abn_id}"
                r0, c0, r1, c1 = _crop_box(lesion, pixels.shape)
                crop = np.ascontiguousarray(pixels[r0:r1, c0:c1])
                mask = np.where(lesion.mask, np.uint8(255), np.uint8(0))
                quirk = bool(quirk_rng.random() < self.options.mask_quirk_fraction)
                roi = dict(common, series_number=1)
                if kind == "mass":  # crop 000000 + mask 000001 in one series; quirk: mask 000000 in its own
                    crop_path = self._dicom(roi_folder, "000000.dcm", crop, "cropped images", "roi", **roi)
                    if quirk:
                        mask_path = self._dicom(roi_folder, "000000.dcm", mask, "ROI mask images", "mask", **roi)
                    else:
                        mask_path = self._dicom(
                            roi_folder, "000001.dcm", mask, "ROI mask images", "roi", instance_number=2, **roi
                        )
                else:  # calc: mask 000000 + crop 000001; quirk: crop 000000 in its own series
                    mask_path = self._dicom(roi_folder, "000000.dcm", mask, "ROI mask images", "roi", **roi)
                    if quirk:
                        crop_path = self._dicom(roi_folder, "000000.dcm", crop, "cropped images", "crop", **roi)
                    else:
                        crop_path = self._dicom(
                            roi_folder, "000001.dcm", crop, "cropped images", "roi", instance_number=2, **roi
                        )
                spec = lesion.spec
                if kind == "mass":
                    descriptors = [spec.shape, spec.margins]
                    mask_path += "\n"  # the real mass files end the mask path with a newline inside its quotes
                else:
                    descriptors = [spec.calc_type, spec.distribution]
                    crop_path += "\n"  # ... and the real calc files the crop path
                self.rows[(kind, split)].append(
                    [pid, str(woman.density), side_word, view.view, str(abn_id), kind, *descriptors,
                     str(spec.assessment), spec.pathology, str(spec.subtlety), full_path, crop_path, mask_path]
                )  # fmt: skip

    def write_csvs(self) -> dict[str, str]:
        paths = {}
        for (kind, split), rows in self.rows.items():
            buf = io.StringIO(newline="")
            writer = csv.writer(buf, lineterminator="\r\n")  # QUOTE_MINIMAL: only the newline-bearing path
            writer.writerow(MASS_HEADER if kind == "mass" else CALC_HEADER)
            writer.writerows(rows)
            path = self.out / CSV_NAMES[(kind, split)]
            atomic_write_bytes(path, buf.getvalue().encode("ascii"))
            paths[CSV_NAMES[(kind, split)]] = str(path)
        return paths


def _write_woman(woman: Woman, *, out: Path, seed: int, height: int, width: int, options: CbisOptions) -> _Writer:
    """Render and write one woman's DICOMs; returns her writer (rows and counts) for `_Writer.merge`.

    Module-level so that `map_women` can run it in a worker process (a `functools.partial` of it pickles).
    """
    writer = _Writer(out, seed, options)
    splits = _splits(woman, options)
    date_rng = np.random.default_rng([seed, woman.index, _TAG_SPLIT, 3])
    study_date = f"{2016}{int(date_rng.integers(1, 13)):02d}{int(date_rng.integers(1, 29)):02d}"
    for breast in woman.breasts:
        if breast.normal:
            continue  # CBIS-DDSM holds no normal images
        for view_name in ("CC", "MLO"):
            view = render_view(woman, breast.side, view_name, height=height, width=width)
            writer.write_view(woman, view, splits, study_date)
    return writer


def write_cbis_ddsm(
    out: Path,
    *,
    women: int,
    seed: int,
    height: int,
    width: int,
    options: CbisOptions | None = None,
    workers: int = 1,
    **sampling: Any,
) -> dict[str, Any]:
    """Render `women` women and write them in the CBIS-DDSM layout under `out`; returns a summary.

    `workers` > 1 renders and writes the women in that many processes (`map_women`); the files are the same.
    """
    options = options or CbisOptions()
    cohort = sample_women(women, seed, at_least_one_lesion=True, **sampling)
    writer = _Writer(out, seed, options)
    task = functools.partial(_write_woman, out=out, seed=seed, height=height, width=width, options=options)
    for woman_writer in map_women(task, cohort, workers):
        writer.merge(woman_writer)
    csvs = writer.write_csvs()
    log.info(
        "wrote %d views (%d DICOM files) of %d patients in the CBIS-DDSM layout",
        writer.views, writer.files, len(writer.patients),
    )  # fmt: skip
    return {
        "layout": "cbis-ddsm",
        "out": str(out),
        "seed": seed,
        "height": height,
        "width": width,
        "women": len(writer.patients),
        "views": writer.views,
        "images": writer.full_images,
        "dicom_files": writer.files,
        "lesions": writer.lesions,
        "malignant_lesions": writer.malignant_lesions,
        "malignant_images": writer.malignant_images,
        "normal_images": 0,
        "csv": csvs,
    }
