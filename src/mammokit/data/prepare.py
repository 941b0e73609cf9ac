"""`prepare_dataset`: a raw dataset (through its adapter) -> a prepared folder of canonical 16-bit PNGs.

For every image of the adapter's manifest: read it (`source.read_image`), run `prepare_pixels` (segment,
crop, orient, resize, intensity), write `images/<image_id>.png` (uint16) and one `masks/<lesion_id>.png`
(uint8 0/255, prepared geometry) per lesion with an ROI, then a per-image record
`records/<image_id>.json` (geometry, reader metadata, lesion masks, the config hash). Then the tables:
`manifest.parquet`, `lesions.parquet`, `errors.csv` and `dataset.json` (see docs/architecture.md).

Guarantees:

* **Resumable and idempotent.** Every file is written atomically, the record last. A re-run skips an
  image whose record has the same image-config hash, whose source file has the same size and mtime,
  and whose PNGs exist with the right size; a killed run therefore loses only the images in flight.
  Re-running a finished folder rewrites identical tables.
* **Bad files never abort the batch.** Each failure (unreadable file, refused DICOM, blank image, bad
  ROI) becomes a row of `errors.csv` with its stage and reason; `PrepareReport.ok` says whether
  anything failed. Images that failed are left out of the manifest; a lesion whose ROI failed keeps
  its image and gets an empty `mask_file`.
* **A full disk stops the run, and the folder never looks complete.** ENOSPC/EDQUOT is not an image's fault:
  it is never an errors.csv row. The run stops with a `DiskFullError` (the folder, the space available and
  about how much more is needed); manifest.parquet, lesions.parquet, errors.csv and dataset.json, removed when
  a run starts, are written only after every image is done, dataset.json last. Run again after freeing space:
  finished images are reused.
* **Parallel and isolated**: images are read in `workers` child processes (one image per task; see
  `mammokit.utils.pool`), so a decoder that panics or aborts costs that image, not the batch.
* Splits are assigned on the whole source table before any image is read, so a failure (or a later
  fix) never moves other patients between splits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammokit.config import to_dict
from mammokit.data.geometry import Geometry, shrink_stats
from mammokit.data.manifest import (
    DATASET_JSON,
    ERRORS_FILE,
    IMAGES_FILE,
    LESIONS_FILE,
    empty_lesions,
    validate_images,
    validate_lesions,
    write_table,
)
from mammokit.data.prepare_config import PrepareConfig, SplitConfig
from mammokit.utils.atomic import atomic_write_json, atomic_write_with
from mammokit.utils.diskfull import bytes_under, disk_full_guard, is_disk_full
from mammokit.version import __version__

log = logging.getLogger(__name__)

PREPARE_FORMAT = 2  # bump when the record or image format changes; part of the config hash
IMAGES_DIR, MASKS_DIR, RECORDS_DIR = "images", "masks", "records"
ERROR_COLUMNS = ("image_id", "lesion_id", "path", "stage", "reason")
# Geometry fields copied into the manifest (enough to rebuild it: `Geometry.from_dict({c: row[c] for c in ...})`)
GEOMETRY_COLUMNS = (
    "orig_height",
    "orig_width",
    "crop_y0",
    "crop_y1",
    "crop_x0",
    "crop_x1",
    "flipped",
    "out_height",
    "out_width",
    "pad_top",
    "pad_bottom",
    "pad_left",
    "pad_right",
    "orientation_source",
    "spacing_mm",
    "out_spacing_mm",
    "fit_scale",
)
# reader metadata copied into the record and (some of it) into the manifest; never patient identifiers
_META_FIELDS = (
    "source_format",
    "bits_stored",
    "photometric",
    "laterality",
    "view",
    "spacing_mm",
    "manufacturer",
    "transfer_syntax",
    "voi_applied",
)


class PrepareError(ValueError):
    """The dataset as a whole cannot be prepared (e.g. the adapter finds no images)."""


@dataclass
class PrepareReport:
    """What `prepare_dataset` did; `ok` is False when any image or lesion failed."""

    out: Path
    n_images: int  # images in the source manifest
    n_written: int  # images prepared in this run
    n_reused: int  # images skipped because valid outputs existed (resumed run)
    n_failed: int  # images that failed (listed in errors.csv)
    n_lesions: int  # lesions of prepared images
    n_lesion_failed: int  # lesions whose ROI could not be rasterised
    n_masks: int  # lesion masks written (lesions with roi_kind 'none' get none)
    config_hash: str
    elapsed_s: float
    errors: list[dict[str, str]] = field(default_factory=list)
    n_shrunk: int = 0  # images whose breast was larger than the canvas and was shrunk to fit (physical scale)
    max_fit_scale: float = 1.0  # the largest of those shrink factors

    @property
    def ok(self) -> bool:
        return self.n_failed == 0 and self.n_lesion_failed == 0

    def summary(self) -> str:
        done = self.n_written + self.n_reused
        text = (
            f"prepared {done}/{self.n_images} images ({self.n_written} written, {self.n_reused} reused) "
            f"with {self.n_masks} lesion masks ({self.n_lesions} lesions) in {self.elapsed_s:.1f} s "
            f"-> {self.out}"
        )
        if self.n_shrunk:
            text += (
                f"; {self.n_shrunk} image(s) with a breast larger than the canvas shrunk to fit "
                f"(by up to {self.max_fit_scale:.2f}x, column fit_scale of the manifest)"
            )
        if not self.ok:
            text += (
                f"; FAILED: {self.n_failed} image(s), {self.n_lesion_failed} lesion(s), "
                f"reasons in {self.out / ERRORS_FILE}"
            )
        return text


def config_hash(obj: Any) -> str:
    """Stable 16-hex-digit hash of a JSON-able configuration (key order does not matter)."""
    text = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --- per-image work (runs in worker processes) --------------------------------------------------------------

_WORKER_SOURCE: Any = None


def _init_worker(source: Any) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _source_path(row: dict[str, Any], root: Path) -> Path:
    path = Path(str(row["path"]))
    return path if path.is_absolute() else root / path


def _source_stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _png_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from a PNG header, or None if the file is missing or not a PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def _valid_record(record_path: Path, image_hash: str, out: Path, stat: list[int] | None) -> dict | None:
    """The record of a finished image if it and its files are valid for this configuration, else None."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("image_config_hash") != image_hash or record.get("source_stat") != stat:
        return None
    if record.get("lesion_errors"):  # retry lesions that failed last time (the mask file may have been fixed)
        return None
    geo = record.get("geometry", {})
    if _png_size(out / record.get("image_file", "")) != (geo.get("out_height"), geo.get("out_width")):
        return None
    for lesion in record.get("lesions", []):
        if lesion.get("mask_file") and _png_size(out / lesion["mask_file"]) is None:
            return None
    return record


def _prepare_one(task: dict[str, Any]) -> dict[str, Any]:
    """Prepare one image and its lesion masks; never raises (failures come back as a result)."""
    from mammokit.data.geometry import SpacingError, prepare_pixels, resolve_spacing
    from mammokit.io.images import write_png8, write_png16
    from mammokit.utils.paths import check_file_stem

    source = _WORKER_SOURCE
    row, lesions = task["row"], task["lesions"]
    root, out, spec = Path(task["root"]), Path(task["out"]), task["spec"]
    image_id = str(row["image_id"])
    src_path = _source_path(row, root)
    stat = _source_stat(src_path)
    record_path = out / RECORDS_DIR / f"{image_id}.json"
    reused = _valid_record(record_path, task["image_hash"], out, stat)
    if reused is not None:
        return {"status": "reused", "record": reused}

    stage = "read"
    try:
        pixels, meta = source.read_image(
            pd.Series(row),
            root,
            voi=spec.voi,
            window_index=spec.window_index,
            allow_for_processing=spec.allow_for_processing,
            keep_integers=True,  # prepare_pixels reads 8/16-bit integers exactly: no float32 copy of the scan
        )
        stage = "spacing"
        try:
            spacing, spacing_source = resolve_spacing(
                meta.spacing_mm,
                dataset_default=getattr(source, "pixel_spacing_mm", None),
                assumed=task.get("assume_pixel_spacing"),
            )
        except SpacingError:
            if spec.pixel_spacing is not None:
                raise  # physical-scale mode cannot go on without it; the message says what to pass
            spacing, spacing_source = None, ""  # fixed-size mode: the spacing is only recorded when known
        stage = "preprocess"
        image, geometry = prepare_pixels(pixels, meta, spec, spacing=spacing)
        stage = "write"
        image_file = f"{IMAGES_DIR}/{image_id}.png"
        write_png16(out / image_file, image)
    except Exception as exc:  # any failure of this image is reported, never raised
        if is_disk_full(exc):
            raise  # not this image's fault: the pool hands it to the parent, which stops the run
        return {
            "status": "failed",
            "error": {"image_id": image_id, "lesion_id": "", "path": str(row["path"]), "stage": stage,
                      "reason": f"{type(exc).__name__}: {exc}"},
        }  # fmt: skip

    lesion_results, lesion_errors = [], []
    for lesion in lesions:
        lesion_id = str(lesion["lesion_id"])
        if str(lesion.get("roi_kind", "none")) == "none":
            lesion_results.append({"lesion_id": lesion_id, "mask_file": "", "mask_pixels": 0})
            continue
        try:
            check_file_stem(lesion_id, "lesion_id")  # names masks/<lesion_id>.png: must stay inside --out
            mask = source.lesion_mask(pd.Series(lesion), pixels.shape, root)
            prepared = geometry.to_prepared(mask)
            mask_file = f"{MASKS_DIR}/{lesion_id}.png"
            write_png8(out / mask_file, prepared.astype(np.uint8) * 255)
            lesion_results.append({"lesion_id": lesion_id, "mask_file": mask_file, "mask_pixels": int(prepared.sum())})
        except Exception as exc:
            if is_disk_full(exc):
                raise  # as above: the whole run stops, the lesion is not marked failed
            lesion_results.append({"lesion_id": lesion_id, "mask_file": "", "mask_pixels": 0})
            lesion_errors.append(
                {"image_id": image_id, "lesion_id": lesion_id, "path": str(lesion.get("roi_path", "") or ""),
                 "stage": "lesion", "reason": f"{type(exc).__name__}: {exc}"}
            )  # fmt: skip

    meta_fields = {name: getattr(meta, name) for name in _META_FIELDS}
    meta_fields["spacing_mm"] = list(meta.spacing_mm) if meta.spacing_mm else None
    for key in ("laterality_source", "view_source"):
        meta_fields[key] = meta.extra.get(key)
    meta_fields["spacing_source"] = spacing_source
    record = {
        "image_id": image_id,
        "image_config_hash": task["image_hash"],
        "source_stat": stat,
        "image_file": image_file,
        "geometry": geometry.to_dict(),
        "meta": meta_fields,
        "lesions": lesion_results,
        "lesion_errors": lesion_errors,
    }
    atomic_write_json(record_path, record)  # last: its presence means the PNGs above are complete
    return {"status": "written", "record": record}


# --- orchestration ---------------------------------------------------------------------------------------------


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files left by a killed run (atomic writes name them `.<stem>.*.tmp<suffix>`)."""
    for sub in (IMAGES_DIR, MASKS_DIR, RECORDS_DIR, "."):
        folder = out / sub
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp*"):
                tmp.unlink(missing_ok=True)


def _failed_result(task: dict[str, Any], reason: str) -> dict[str, Any]:
    row = task["row"]
    return {
        "status": "failed",
        "error": {"image_id": str(row["image_id"]), "lesion_id": "", "path": str(row["path"]), "stage": "read",
                  "reason": reason},
    }  # fmt: skip


def _run_tasks(tasks: list[dict[str, Any]], source: Any, workers: int, progress: bool) -> Iterator[dict[str, Any]]:
    """Results of `_prepare_one` for every task, computed in worker processes (`mammokit.utils.pool`).

    Always in child processes, even with one worker: decoding files we were handed can panic or abort the
    process, and that must cost one image, not the batch.
    """
    from tqdm import tqdm

    from mammokit.utils.pool import TaskFailed, run_isolated

    bar = tqdm(total=len(tasks), desc="prepare", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for index, result in run_isolated(
            _prepare_one, tasks, workers=workers, initializer=_init_worker, initargs=(source,)
        ):
            if isinstance(result, TaskFailed):
                result = _failed_result(tasks[index], result.reason)
            yield result
            bar.update()
    finally:
        bar.close()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() in ("", "nan", "None")


def _records_to_tables(
    images: pd.DataFrame, lesions: pd.DataFrame, records: dict[str, dict]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the prepared-geometry columns; keep only images that were prepared (in source order)."""
    kept = images[images["image_id"].isin(records)].copy()
    kept["image_file"] = [records[i]["image_file"] for i in kept["image_id"]]
    for col in GEOMETRY_COLUMNS:
        kept[col] = [records[i]["geometry"][col] for i in kept["image_id"]]
    kept["spacing_source"] = [records[i]["meta"].get("spacing_source", "") for i in kept["image_id"]]
    kept["orientation_disagrees"] = [
        bool(records[i]["geometry"].get("extra", {}).get("orientation_disagrees", False)) for i in kept["image_id"]
    ]
    # laterality / view the adapter could not give: take them from the file (DICOM tags / name pattern)
    for col in ("laterality", "view"):
        from_file = [records[i]["meta"].get(col) for i in kept["image_id"]]
        kept[col] = [f if _is_missing(v) and f else v for v, f in zip(kept[col], from_file, strict=True)]
    kept = kept.reset_index(drop=True)

    mask_of = {les["lesion_id"]: les["mask_file"] for rec in records.values() for les in rec["lesions"]}
    les = lesions[lesions["image_id"].isin(records)].copy()
    les["mask_file"] = [mask_of.get(str(i), "") for i in les["lesion_id"]]
    return kept, les.reset_index(drop=True)


def _refuse_unusable_ids(images: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Drop the rows whose image id cannot name a file safely or is not unique; returns (kept, refused rows).

    Image ids name files (images/<id>.png, records/<id>.json), so an id like `../../x` would write outside the
    output folder; a repeated id would make two images overwrite each other. Neither refuses the whole batch.
    """
    from mammokit.utils.paths import UnsafeNameError, check_file_stem

    if "image_id" not in images.columns:
        return images, []  # validate_images names the missing column
    ids = images["image_id"].astype(str)
    paths = images["path"].astype(str) if "path" in images.columns else pd.Series("", index=images.index)
    refused: list[dict[str, str]] = []
    bad = np.zeros(len(images), dtype=bool)
    counts = ids.value_counts()
    for i, (image_id, path) in enumerate(zip(ids, paths, strict=True)):
        try:
            check_file_stem(image_id, "image_id")
        except UnsafeNameError as exc:
            refused.append({"image_id": image_id[:200], "path": path, "reason": str(exc)})
            bad[i] = True
            continue
        if counts[image_id] > 1:
            reason = f"image_id {image_id!r} appears {counts[image_id]} times; ids must be unique (none is used)"
            refused.append({"image_id": image_id, "path": path, "reason": reason})
            bad[i] = True
    return images[~bad].reset_index(drop=True), refused


def _write_errors(path: Path, errors: Iterable[dict[str, str]]) -> None:
    table = pd.DataFrame(list(errors), columns=list(ERROR_COLUMNS))
    atomic_write_with(path, lambda tmp: table.to_csv(tmp, index=False))


def _source_tables(src: Any, source: str, root: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """The adapter's validated image and lesion tables, and an errors.csv row for every source item left out."""
    try:
        images, lesions = src.build_manifest(root)
        images, refused = _refuse_unusable_ids(images)
        images = validate_images(images)
        lesions = validate_lesions(lesions) if len(lesions) else empty_lesions()
    except (OSError, ValueError) as exc:  # adapter errors: missing files, bad tables (DatasetError, ManifestError)
        raise PrepareError(f"{source}: cannot build the manifest from {root}: {exc}") from exc
    # every source item that is not used is an errors.csv row (batch rule, docs/security.md)
    skipped = [
        {"image_id": e["image_id"], "lesion_id": "", "path": e["path"], "stage": "manifest", "reason": e["reason"]}
        for e in [*getattr(src, "skipped", []), *refused]
    ]
    if images.empty:
        if skipped:
            out.mkdir(parents=True, exist_ok=True)
            _write_errors(out / ERRORS_FILE, skipped)
            raise PrepareError(f"{source}: no usable image under {root}; the {len(skipped)} refused item(s) and the "
                               f"reasons are in {out / ERRORS_FILE}")  # fmt: skip
        raise PrepareError(f"{source}: no images found under {root}; check --root")
    return images, lesions, skipped


def _assign_split(images: pd.DataFrame, split: SplitConfig, source: str) -> pd.DataFrame:
    """`images` with its `split` column: a published split file applied exactly, or a seeded patient split."""
    from mammokit.data.splits import assign_splits, import_splits

    try:
        if split.split_file is not None:
            return import_splits(images, split.split_file)
        return assign_splits(
            images,
            seed=split.seed,
            val_fraction=split.val_fraction,
            test_fraction=split.test_fraction,
            keep_official=split.keep_official,
        )
    except ValueError as exc:  # SplitError: e.g. too few patients for the fractions, or a bad split file
        raise PrepareError(f"{source}: cannot split {len(images)} images into train/val/test: {exc}") from exc


def _split_options(split: SplitConfig) -> dict[str, Any]:
    """What decides the split, as recorded in dataset.json and hashed into the folder's config hash."""
    if split.split_file is not None:  # the file's content, not its path, decides the split
        return {"split_file_sha256": hashlib.sha256(Path(split.split_file).read_bytes()).hexdigest()}
    return {
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "test_fraction": split.test_fraction,
        "keep_official": split.keep_official,
    }


def _dataset_counts(
    n_source: int, manifest: pd.DataFrame, lesion_table: pd.DataFrame, n_failed: int, n_lesion_failed: int
) -> dict[str, Any]:
    """The `counts` block of dataset.json."""
    n_shrunk, max_fit, _ = shrink_stats(manifest.get("fit_scale", []))
    return {
        "images_in_source": n_source,
        "images": len(manifest),
        "images_failed": n_failed,
        "lesions": len(lesion_table),
        "lesion_masks": int((lesion_table["mask_file"] != "").sum()) if len(lesion_table) else 0,
        "lesions_failed": n_lesion_failed,
        "patients": int(manifest["patient_id"].nunique()),
        "malignant_images": int((manifest["label"] == 1).sum()),
        "orientation_disagrees": int(manifest["orientation_disagrees"].sum()),
        "images_shrunk_to_fit": n_shrunk,
        "max_fit_scale": max_fit,
        "by_split": {s: int(n) for s, n in manifest["split"].value_counts().sort_index().items()},
    }


_TABLE_BYTES_PER_IMAGE = 1024  # manifest + lesions + errors rows of one image, generously (bytes)


def _bytes_still_needed(out: Path, records: dict[str, dict], n_images: int, canvas_px: int) -> int:
    """About how many more bytes the run needs: the images not yet done at the mean size of those done (PNGs and
    record; an uncompressed 16-bit canvas each when none is done yet), plus the tables."""
    done = [r for r in records.values()]
    if done:
        files = [out / RECORDS_DIR / f"{r['image_id']}.json" for r in done]
        files += [out / r["image_file"] for r in done]
        files += [out / les["mask_file"] for r in done for les in r.get("lesions", []) if les.get("mask_file")]
        per_image = bytes_under(files) / len(done)
    else:
        per_image = 2.0 * canvas_px  # uint16, before PNG compression: an upper bound
    remaining = max(0, n_images - len(done))
    return int(remaining * per_image + n_images * _TABLE_BYTES_PER_IMAGE)


def prepare_dataset(
    source: str,
    root: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    *,
    progress: bool = True,
) -> PrepareReport:
    """Prepare the raw dataset at `root` (read by adapter `source`) into the folder `out`.

    Args:
        source: adapter name (`mammokit.data.sources.list_sources()`, or one registered with `register_source`).
        root: the raw dataset folder.
        out: the prepared folder (created; an existing one is resumed).
        cfg: the preprocessing (`cfg.preprocess`, written into dataset.json and, later, into each model's
            card), the patient-level split (`cfg.split`: `mammokit.data.splits.assign_splits`, or
            `split_file`, a published split applied exactly; either way the split used is written to
            `splits.csv` in the prepared folder, so it can be published too), the adapter's keyword options,
            the worker processes (`worker_count(cfg.workers)`) and `assume_pixel_spacing` (source mm per
            pixel for files without a spacing tag; overrides the adapter's documented value, never the file's
            own tag; see `mammokit.data.geometry.resolve_spacing`). Default: `PrepareConfig()`.
        progress: show a progress bar (stderr).

    Returns:
        A PrepareReport; per-image failures are in it and in errors.csv, not raised.

    Raises:
        PrepareError: the adapter cannot read `root` or finds no images there.
        KeyError: unknown adapter name.
    """
    from mammokit.data.sources import get_source
    from mammokit.data.splits import export_splits

    t0 = time.perf_counter()
    cfg = PrepareConfig() if cfg is None else cfg
    spec, split, assume_pixel_spacing = cfg.preprocess, cfg.split, cfg.assume_pixel_spacing
    root, out = Path(root), Path(out)
    spec.validate()
    options = dict(cfg.source_options)
    src = get_source(source, **options)
    images, lesions, skipped = _source_tables(src, source, root, out)
    images = _assign_split(images, split, source)
    out.mkdir(parents=True, exist_ok=True)
    export_splits(images, out / "splits.csv")

    image_hash = config_hash(
        {
            "format": PREPARE_FORMAT,
            "source": source,
            "source_options": options,
            "preprocess": spec,
            "assume_pixel_spacing": assume_pixel_spacing,
        }
    )
    split_options = _split_options(split)
    full_hash = config_hash({"image_config_hash": image_hash, "split": split_options})

    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    # The folder is complete only once this run has written the tables: until then it must not look complete
    # (a run stopped by a full disk or a kill, over an earlier finished one, would otherwise leave old tables
    # beside new images). Re-written below, dataset.json last.
    markers = [out / name for name in (DATASET_JSON, IMAGES_FILE, LESIONS_FILE, ERRORS_FILE)]
    for marker in markers:
        marker.unlink(missing_ok=True)
    lesions_of: dict[str, list[dict]] = {}
    for les in lesions.to_dict("records"):
        lesions_of.setdefault(str(les["image_id"]), []).append(les)
    tasks = [
        {
            "row": row,
            "lesions": lesions_of.get(str(row["image_id"]), []),
            "root": str(root),
            "out": str(out),
            "spec": spec,
            "image_hash": image_hash,
            "assume_pixel_spacing": assume_pixel_spacing,
        }
        for row in images.to_dict("records")
    ]

    records: dict[str, dict] = {}
    errors: list[dict[str, str]] = list(skipped)
    n_written = n_reused = 0

    def still_needed() -> int:
        return _bytes_still_needed(out, records, len(tasks), spec.height * spec.width)

    # A full disk anywhere below (a worker's PNG or record, a table) stops the run with one DiskFullError; the
    # tables written so far are removed again and dataset.json is not written. `closing` shuts the pool down
    # before the error leaves (no worker writes on behind it).
    with disk_full_guard(out, needed=still_needed, resumes=True, cleanup=markers):
        with contextlib.closing(_run_tasks(tasks, src, worker_count(cfg.workers), progress)) as results:
            for result in results:
                if result["status"] == "failed":
                    errors.append(result["error"])
                    log.debug("failed: %s (%s)", result["error"]["image_id"], result["error"]["stage"])
                    continue
                record = result["record"]
                records[record["image_id"]] = record
                fit_note = Geometry.from_dict(record["geometry"]).fit_message()
                if fit_note:  # one line per image: the id the user gave, sizes only
                    log.warning("%s: %s", record["image_id"], fit_note)
                errors.extend(record.get("lesion_errors", []))
                if result["status"] == "reused":
                    n_reused += 1
                else:
                    n_written += 1
        n_failed = sum(1 for e in errors if not e["lesion_id"])
        n_lesion_failed = len(errors) - n_failed

        manifest, lesion_table = _records_to_tables(images, lesions, records)
        write_table(manifest, out / IMAGES_FILE)
        write_table(lesion_table, out / LESIONS_FILE)
        errors.sort(key=lambda e: (e["image_id"], e["lesion_id"]))
        _write_errors(out / ERRORS_FILE, errors)
        counts = _dataset_counts(len(images), manifest, lesion_table, n_failed, n_lesion_failed)
        atomic_write_json(  # last: its presence means the folder is complete
            out / DATASET_JSON,
            {
                "format": PREPARE_FORMAT,
                "mammokit_version": __version__,
                "source": source,
                "source_options": options,
                "citation": getattr(src, "citation", ""),
                "licence": getattr(src, "licence", ""),
                "label_rule": getattr(src, "label_rule", "") or "",
                "counts": counts,
                "preprocess": to_dict(spec),
                "assume_pixel_spacing": assume_pixel_spacing,
                "dataset_pixel_spacing_mm": getattr(src, "pixel_spacing_mm", None),
                "split": split_options,
                "config_hash": full_hash,
                "image_config_hash": image_hash,
            },
        )
    report = PrepareReport(
        out=out,
        n_images=len(images),
        n_written=n_written,
        n_reused=n_reused,
        n_failed=n_failed,
        n_lesions=len(lesion_table),
        n_lesion_failed=n_lesion_failed,
        n_masks=counts["lesion_masks"],
        config_hash=full_hash,
        elapsed_s=time.perf_counter() - t0,
        errors=errors,
        n_shrunk=counts["images_shrunk_to_fit"],
        max_fit_scale=counts["max_fit_scale"],
    )
    (log.info if report.ok else log.warning)(report.summary())
    return report


def worker_count(requested: int | None) -> int:
    """`--workers` default: all CPUs this process may use, at least 1."""
    if requested and requested > 0:
        return int(requested)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
