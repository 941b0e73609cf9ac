"""Prediction inputs: files, folders and CSV lists -> an ordered list of `InputItem` (path + image id).

`mammokit predict` accepts any mix of
* image files (DICOM with or without the `.dcm` extension, PNG, PGM, JPEG),
* folders, searched recursively for those files (extension-less files count when they carry the
  DICOM "DICM" magic at byte 128),
* CSV lists with a `path` column (relative paths are relative to the CSV's folder) and an optional
  `image_id` column.

Image ids default to the file stem; ids that would collide (two `1-1.dcm` in different folders, the
usual CBIS-DDSM layout) get the parent folder names prepended until they are unique, so output
files never overwrite each other. NumPy/stdlib only: the ONNX path uses it without torch.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mammokit.io.dicom import has_dicom_magic

IMAGE_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom", ".png", ".pgm", ".jpg", ".jpeg"})


class InputError(ValueError):
    """An input argument (file, folder or CSV) cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class InputItem:
    """One image to predict."""

    path: Path
    image_id: str
    source: str  # the argument it came from (a file, a folder or a CSV list), for error reports
    error: str | None = None  # why this input cannot be used (reported per item in errors.csv, never read)
    # optional columns of a CSV input list: who the woman is and which breast/view, for a bilateral model's
    # pairing (`infer.pairing`); a given laterality/view also overrides the file's header for pairing
    patient_id: str | None = None
    laterality: str | None = None
    view: str | None = None


is_dicom_file = has_dicom_magic  # the one DICOM magic check lives in mammokit.io.dicom


def _is_candidate(path: Path) -> bool:
    if path.name.startswith("."):
        return False  # hidden files, e.g. atomic-write temporaries or macOS resource forks
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return path.suffix == "" and is_dicom_file(path)


def _is_under(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        return path.resolve().is_relative_to(folder)
    except OSError:
        return False


def _walk_folder(folder: Path, exclude: Path | None) -> list[Path]:
    # sorted so that output order (and id disambiguation) is reproducible across file systems; files under the
    # command's own output folder are never inputs (a second run would otherwise read its own overlays)
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_candidate(p) and not _is_under(p, exclude))


PAIRING_COLUMNS: tuple[str, ...] = ("patient_id", "laterality", "view")  # optional columns of a CSV input list


def _read_csv_list(csv_path: Path) -> list[tuple[Path, str | None, dict[str, str | None]]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "path" not in fields:
            raise InputError(
                f"{csv_path}: a CSV input list needs a 'path' column (and optionally 'image_id', and for a bilateral "
                "model 'patient_id', 'laterality', 'view'); "
                f"found columns {fields}"
            )
        rows: list[tuple[Path, str | None, dict[str, str | None]]] = []
        for row in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not row.get("path"):
                continue
            path = Path(row["path"]).expanduser()
            if not path.is_absolute():
                path = csv_path.parent / path
            rows.append((path, row.get("image_id") or None, {c: row.get(c) or None for c in PAIRING_COLUMNS}))
    return rows


def _safe_id(text: str) -> str:
    """Make an id safe to use in a file name (heatmap PNGs are named after it)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "image"


def _unique_ids(paths: Sequence[Path], given: Sequence[str | None]) -> list[str]:
    """File stems, with parent folders prepended where stems collide; user-given ids are kept as given."""
    depth = [0] * len(paths)

    def make(i: int) -> str:
        if given[i]:
            return _safe_id(str(given[i]))
        folders = paths[i].parent.parts[-depth[i] :] if depth[i] else ()
        return _safe_id("_".join([*folders, paths[i].stem]))

    ids = [make(i) for i in range(len(paths))]
    for _ in range(64):  # each round adds one folder level to colliding auto ids
        seen: dict[str, list[int]] = {}
        for i, image_id in enumerate(ids):
            seen.setdefault(image_id, []).append(i)
        clashes = [idx for idx in seen.values() if len(idx) > 1]
        if not clashes:
            return ids
        progressed = False
        for idx in clashes:
            for i in idx:
                if not given[i] and depth[i] < len(paths[i].parent.parts):
                    depth[i] += 1
                    ids[i] = make(i)
                    progressed = True
        if not progressed:
            break
    # still clashing (same path listed twice, or user ids repeated): number them in order
    counts: dict[str, int] = {}
    out = []
    for image_id in ids:
        n = counts.get(image_id, 0)
        counts[image_id] = n + 1
        out.append(image_id if n == 0 else f"{image_id}_{n}")
    return out


def collect_inputs(args: Iterable[str | Path], *, exclude: str | Path | None = None) -> list[InputItem]:
    """Expand files, folders and CSV lists into `InputItem`s (in argument order).

    Nothing here stops the batch: an argument that cannot be used (a missing file, a folder without any image,
    a CSV list without a `path` column, a file inside `exclude`) becomes an item whose `error` says why, and
    is reported in errors.csv with the rest.

    Args:
        args: files, folders and CSV lists.
        exclude: the command's output folder; nothing under it is read (folders skip it, files in it are errors).
    """
    skip_dir = Path(exclude).expanduser().resolve() if exclude is not None else None
    paths: list[Path] = []
    given: list[str | None] = []
    sources: list[str] = []
    errors: list[str | None] = []
    pairing: list[dict[str, str | None]] = []

    def add(path: Path, image_id: str | None, source: str, error: str | None = None, extra: dict | None = None) -> None:
        if error is None and _is_under(path, skip_dir):
            error = f"{path}: inside the output folder {skip_dir}; outputs are never read as inputs"
        paths.append(path)
        given.append(image_id)
        sources.append(source)
        errors.append(error)
        pairing.append(extra or {})

    for arg in args:
        p = Path(arg).expanduser()
        if p.is_dir():
            found = _walk_folder(p, skip_dir)
            if not found:
                add(p, None, str(p), f"{p}: a folder with no images (looked recursively for "
                    f"{', '.join(sorted(IMAGE_SUFFIXES))} and extension-less DICOM files)")  # fmt: skip
            for path in found:
                add(path, None, str(p))
        elif p.suffix.lower() == ".csv" and p.is_file():
            try:
                rows = _read_csv_list(p)
            except (InputError, OSError, UnicodeDecodeError, csv.Error) as exc:
                add(p, None, str(p), str(exc) if isinstance(exc, InputError) else f"{p}: unreadable CSV list ({exc})")
                continue
            for path, image_id, extra in rows:
                add(path, image_id, str(p), extra=extra)
        else:
            add(p, None, str(p))  # a missing file is reported per item by the reader ("file not found")
    ids = _unique_ids(paths, given)
    return [
        InputItem(path=p, image_id=i, source=s, error=e, **x)
        for p, i, s, e, x in zip(paths, ids, sources, errors, pairing, strict=True)
    ]
