"""mini-MIAS: the MIAS MiniMammographic Database (digitised film, 1024 x 1024 8-bit PGM, 200 µm pixels).

Citation: J Suckling et al (1994) "The Mammographic Image Analysis Society Digital Mammogram Database", Exerpta
Medica, International Congress Series 1069, pp 375-378.
Licence: research use only; cite the database; it may be modified but not rented, leased or sold (keep
`Licence.txt` next to any copy).
Download: the mini-MIAS archive (`all-mias.tar.gz`) from the MIAS pages hosted by the University of Essex
(http://peipa.essex.ac.uk/info/mias.html) or its mirrors; unpack so that `Info.txt` and `mdbNNN.pgm` are in one
folder.

Expected counts: 322 images of 161 women (the development portion in `../shared/data/mini-mias-dev`: 214 images,
107 women, 218 listing rows); one MLO view per breast; 1024 x 1024 pixels.

Rules implemented here:

* The listing (`REFNUM BG CLASS [SEVERITY [X Y RADIUS]]`, one row per abnormality) is read from the lines of
  `Info.txt` that start with a reference number, split on whitespace (NORM rows carry a trailing space, some rows
  end after SEVERITY or with ``*NOTE 3*``).
* A woman is a file pair: mdb(2k-1) is her right breast, mdb(2k) her left; `patient_id` = ``mdb001_002``.
* Coordinates have their origin at the bottom-left: the circle centre row is ``cy = height - Y`` (height read from
  the PGM header, 1024), column ``cx = X``.
* Label: malignant if any row of the image has severity M; benign-only and NORM images are 0.
* Lesion type: CALC -> calcification; CIRC, SPIC, MISC -> mass; ARCH, ASYM -> other (class kept in `mias_class`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mammokit.data.sources._common import DatasetError, fill_meta, find_one, finish_tables, warn_count
from mammokit.data.sources.base import DatasetSource, register_source

log = logging.getLogger(__name__)

_REF_RE = re.compile(r"^mdb(\d{3})$")
_TISSUE = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
_CLASSES = {
    "CALC": "calcification",
    "CIRC": "mass",
    "SPIC": "mass",
    "MISC": "mass",
    "ARCH": "other",
    "ASYM": "other",
    "NORM": "",
}


def parse_info(text: str) -> pd.DataFrame:
    """The listing rows of `Info.txt` as a table (ref, tissue, cls, severity, x, y, radius; NaN where absent)."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or not _REF_RE.match(tokens[0]):
            continue
        if len(tokens) < 3 or tokens[1] not in _TISSUE or tokens[2] not in _CLASSES:
            log.warning("Info.txt line %d: unreadable listing row skipped", lineno)
            continue
        severity = tokens[3] if len(tokens) > 3 and tokens[3] in ("B", "M") else ""
        coords = tokens[4:7] if severity else []
        x = y = r = np.nan
        if len(coords) == 3 and all(re.fullmatch(r"\d+(\.\d+)?", c) for c in coords):
            x, y, r = (float(c) for c in coords)
        if tokens[2] != "NORM" and not severity:
            log.warning("Info.txt line %d: abnormal row without severity; its lesion is unknown", lineno)
        rows.append(
            {"ref": tokens[0], "tissue": tokens[1], "cls": tokens[2], "severity": severity, "x": x, "y": y, "radius": r}
        )
    if not rows:
        raise DatasetError("Info.txt holds no listing rows (lines starting with mdbNNN); is it the MIAS Info.txt?")
    return pd.DataFrame(rows)


def pgm_size(path: Path) -> tuple[int, int]:
    """(rows, columns) from a binary PGM header, e.g. b'P5\\n1024 1024\\n255\\n' (comments allowed)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        line = line.split(b"#", 1)[0]
        fields.extend(line.split())
        if len(fields) >= 4:
            break
    if len(fields) < 3 or fields[0] not in (b"P5", b"P2"):
        raise DatasetError(f"{path.name}: not a PGM file (header {head[:16]!r})")
    return int(fields[2]), int(fields[1])


def woman_of(number: int) -> str:
    """Patient id of the file pair holding image `number`: 1 and 2 -> 'mdb001_002'."""
    first = number - 1 if number % 2 == 0 else number
    return f"mdb{first:03d}_{first + 1:03d}"


def listing_to_manifest(listing: pd.DataFrame, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, lesions) for the listed references whose PGM exists under `root`."""
    files = {p.stem.lower(): p for p in root.glob("*.pgm")} | {p.stem.lower(): p for p in root.glob("*.PGM")}
    listed = list(dict.fromkeys(listing["ref"]))
    warn_count("mini-MIAS images listed in Info.txt have no PGM file (skipped)", sum(r not in files for r in listed))
    warn_count("mini-MIAS PGM files are not listed in Info.txt (skipped)", len(set(files) - set(listed)))
    listing = listing[listing["ref"].isin(set(files))]
    if listing.empty:
        raise DatasetError(f"{root}: none of the images listed in Info.txt exist as mdbNNN.pgm files")

    image_rows, lesion_rows = [], []
    for ref, rows in listing.groupby("ref", sort=True):
        number = int(ref[3:])
        height, _width = pgm_size(files[ref])
        image_rows.append(
            {
                "image_id": ref,
                "patient_id": woman_of(number),
                "exam_id": woman_of(number),
                "laterality": "L" if number % 2 == 0 else "R",
                "view": "MLO",
                "path": files[ref].name,
                "label": int((rows["severity"] == "M").any()),
                "split": "",
                "density": rows["tissue"].iloc[0],
                "label_source": "severity (M in any row)",
                "abnormality_classes": ",".join(sorted(set(rows["cls"]))),
            }
        )
        for k, (_, row) in enumerate(rows[rows["cls"] != "NORM"].iterrows(), start=1):
            has_circle = not np.isnan(row["x"])
            lesion_rows.append(
                {
                    "lesion_id": f"{ref}_{k}",
                    "image_id": ref,
                    "lesion_type": _CLASSES[row["cls"]],
                    "pathology": {"M": "MALIGNANT", "B": "BENIGN"}.get(row["severity"], "UNKNOWN"),
                    "malignant": {"M": 1, "B": 0}.get(row["severity"], -1),
                    "roi_kind": "circle" if has_circle else "none",
                    "cx": row["x"],
                    "cy": height - row["y"] if has_circle else np.nan,  # origin bottom-left -> top-left rows
                    "radius": row["radius"],
                    "mias_class": row["cls"],
                }
            )
    return pd.DataFrame(image_rows), pd.DataFrame(lesion_rows)


@register_source
class MiniMias(DatasetSource):
    """mini-MIAS adapter (no options)."""

    name: ClassVar[str] = "mini-mias"
    citation: ClassVar[str] = (
        'J Suckling et al (1994) "The Mammographic Image Analysis Society Digital Mammogram Database", '
        "Exerpta Medica, International Congress Series 1069, pp 375-378"
    )
    licence: ClassVar[str] = "MIAS licence: research use only, cite, not for sale (Licence.txt)"

    options_allowed: ClassVar[tuple[str, ...]] = ()
    # the distribution's own README (Info.txt): "reduced to 200 micron pixel edge"
    pixel_spacing_mm: ClassVar[float | None] = 0.2

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        root = Path(root)
        info = find_one(root, ["Info.txt", "info.txt", "README.txt"], "mini-MIAS listing (Info.txt)")
        listing = parse_info(info.read_text(encoding="ascii", errors="replace"))
        images, lesions = listing_to_manifest(listing, root)
        # batch rule: every item left out is an errors.csv row (prepare lists `self.skipped`)
        files = {q.stem.lower(): q for q in [*root.glob("*.pgm"), *root.glob("*.PGM")]}
        for ref in dict.fromkeys(listing["ref"]):
            if ref not in files:
                self.skip("listed in Info.txt but there is no PGM file", path=f"{ref}.pgm", image_id=ref)
        for ref in sorted(set(files) - set(listing["ref"])):
            self.skip("PGM file not listed in Info.txt (no label)", path=files[ref].name, image_id=ref)
        return finish_tables(images, lesions, self.name)

    def read_image(self, row: pd.Series, root: Path, **reader_options: Any) -> tuple[np.ndarray, Any]:
        # PGM has no tags: laterality from the file number (odd right, even left), every image is an MLO view
        pixels, meta = super().read_image(row, root, **reader_options)
        return pixels, fill_meta(meta, str(row["laterality"]), str(row["view"]))
