"""Patch sampling for the patch classifier (Shen et al. 2019, sets S1 / S10 / Sn): lesion and background patches.

A prepared dataset folder (`mammokit prepare`) is turned into a patch-set folder::

    PATCHES/
      patches.parquet   one row per patch (columns: `PATCH_COLUMNS`)
      patches.json      scheme, patch size, class list in index order, seed, counts per split x class,
                        source folder and the source PreprocessSpec copied verbatim
      config.yaml       the resolved `PatchConfig`
      errors.csv        images skipped (unreadable image or mask, wrong geometry), with the reason
      images/<patch_id>.png   uint16 crops of the prepared image (values unchanged)

Patches are written to disk once instead of being cut on the fly: a patch set is then inspectable, identical
byte for byte for a given seed, and training reads a 224x224 PNG instead of a whole 1152x896 image plus its
masks per sample (the CPU cost that dominated the original's patch training). The whole folder is built
beside `PATCHES` and renamed into place at the end, so a killed run leaves no half-written patch set.

The per-image sampling rules live in `mammokit.data.patch_sampling`; this module is the folder-level driver
(config, tasks, worker processes, the staged patch-set folder).

Hard negatives (`hard_negative_run`, `mammokit patches --hard-negatives RUN`): a patch classifier trained on
an earlier patch set of the same prepared images scores every window of an image in one all-convolutional pass
(`scoring.patch_maps.patch_probability_maps`, stride 16; the score of a window is 1 - p(background) at its centre),
and `hard_negative_fraction` of each image's background patches are the top-scoring lesion-free windows. The
run is recorded in patches.json (folder and SHA-256 of its weights) and each such patch in `hard_negative`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammokit.config import ConfigError, dump_yaml, to_dict
from mammokit.data.manifest import ERRORS_FILE, PreparedDataset
from mammokit.data.patch_sampling import (  # PatchSamplingError is part of this module's API too
    LesionInfo,
    PatchSamplingError,
    class_names,
    image_rng,
    sample_image_patches,
)
from mammokit.io.images import read_png8, read_png16, write_png16
from mammokit.preprocess import PreprocessSpec, spec_differences
from mammokit.utils.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from mammokit.utils.paths import check_file_stem, inside
from mammokit.version import __version__

log = logging.getLogger(__name__)

PATCHES_FILE = "patches.parquet"
PATCHES_JSON = "patches.json"
CONFIG_FILE = "config.yaml"
PATCH_IMAGES_DIR = "images"

# The paper's patch side (pixels) at its whole-image height; other prepared heights scale it proportionally.
PAPER_PATCH_SIZE = 224
PAPER_IMAGE_HEIGHT = 1152
PAPER_PATCH_MM = 44.8  # 224 px at the paper's effective 0.2 mm per pixel (CBIS-DDSM films resized to 1152 rows)

PATCH_COLUMNS: dict[str, str] = {
    "patch_id": "unique id; the PNG is images/<patch_id>.png (str)",
    "image_id": "prepared image the patch was cut from (str)",
    "patient_id": "woman id, copied from the image (str)",
    "split": "split of the image: patches inherit it (str)",
    "lesion_id": "lesion the patch was sampled for; '' for background (str)",
    "lesion_type": "'mass', 'calcification', 'other'; '' for background (str)",
    "kind": "'lesion' or 'background' (str)",
    "class_name": "patch class, one of patches.json 'classes' (str)",
    "class_index": "index of class_name in patches.json 'classes' (int)",
    "y0": "top row of the window in the prepared image (int)",
    "x0": "left column of the window in the prepared image (int)",
    "size": "window side in pixels (int)",
    "overlap": "max(I/A_roi, I/A_patch) with the patch's lesion; for background the max over all lesions (= 0)",
    "overlap_cutoff": "cutoff the window had to reach (min_overlap, or lower for a fallback); NaN for "
    "centred (S1) lesion patches and background",
    "fallback": "True if min_overlap was impossible for this lesion and a lower cutoff was used (bool)",
    "breast_fraction": "fraction of the window's pixels on breast tissue (float)",
    "hard_negative": "True for a background window chosen for its high score under hard_negative_run (bool)",
    "patch_file": "uint16 PNG relative to the patch-set folder (str)",
}


@dataclass
class PatchConfig:
    """Settings of `mammokit patches` (also the keyword arguments of `sample_patches`)."""

    scheme: str = "s10"  # "s1", "s10", ... "sN": N patches per lesion and N background patches per image
    n_per_lesion: int | None = None  # overrides N of the scheme for lesion patches
    n_background: int | None = None  # overrides N of the scheme for background patches per image
    patch_size: int | None = None  # pixels; wins over patch_mm. None: from patch_mm, else the height rule below
    # Patch side in mm, so S1/S10/Sn cut the same tissue at any resolution. None: the paper's 44.8 mm (224 px at
    # 0.2 mm) when the prepared set is in physical-scale mode; in fixed-size mode round(224 * height / 1152) px.
    patch_mm: float | None = None
    classes: int = 5  # 5: background + (calc, mass) x (benign, malignant); 3: background, benign, malignant
    min_overlap: float = 0.9  # lesion patches: max(I/A_roi, I/A_patch) >= this (paper: 0.9)
    background_breast_fraction: float = 0.5  # background windows need at least this fraction of breast pixels
    breast_threshold: float = 0.05  # breast mask = data.geometry.segment_breast at this fraction of the intensity range
    include_normal_images: bool = True  # take background patches from lesion-free images labelled negative
    # A patch-classifier run folder whose highest-scoring lesion-free windows become background (hard negatives;
    # module docstring), and the share of each image's background patches chosen that way. None: uniform only.
    hard_negative_run: str | None = None
    hard_negative_fraction: float = 0.5
    seed: int = 0
    workers: int = 1  # processes; results do not depend on it

    def validate(self) -> None:
        scheme_n(self.scheme)
        for name in ("n_per_lesion", "n_background"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.patch_size is not None and self.patch_size < 8:
            raise ConfigError(f"patch_size must be at least 8 pixels, got {self.patch_size}")
        if self.patch_mm is not None and not 2.0 <= self.patch_mm <= 200.0:
            raise ConfigError(f"patch_mm must be between 2 and 200 mm, got {self.patch_mm}")
        if self.classes not in (3, 5):
            raise ConfigError(f"classes must be 5 or 3, got {self.classes}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ConfigError(f"min_overlap must be in (0, 1], got {self.min_overlap}")
        if not 0.0 <= self.background_breast_fraction <= 1.0:
            raise ConfigError(f"background_breast_fraction must be in [0, 1], got {self.background_breast_fraction}")
        if not 0.0 <= self.breast_threshold < 1.0:
            raise ConfigError(f"breast_threshold must be in [0, 1), got {self.breast_threshold}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if not 0.0 <= self.hard_negative_fraction <= 1.0:
            raise ConfigError(f"hard_negative_fraction must be in [0, 1], got {self.hard_negative_fraction}")

    def counts(self) -> tuple[int, int]:
        """(patches per lesion, background patches per image) after applying the overrides."""
        n = scheme_n(self.scheme)
        per_lesion = n if self.n_per_lesion is None else self.n_per_lesion
        background = n if self.n_background is None else self.n_background
        return per_lesion, background


def scheme_n(scheme: str) -> int:
    """'s10' -> 10. Raises ConfigError for anything that is not 's' followed by a positive integer."""
    match = re.fullmatch(r"[sS](\d+)", str(scheme).strip())
    if not match or int(match.group(1)) < 1:
        raise ConfigError(f"scheme must look like s1, s10 or sN (N >= 1 patches per lesion), got {scheme!r}")
    return int(match.group(1))


def default_patch_size(image_height: int) -> int:
    """The paper's 224-pixel patch at 1152 rows, scaled to another prepared height (same field of view)."""
    return max(8, round(PAPER_PATCH_SIZE * image_height / PAPER_IMAGE_HEIGHT))


def resolve_patch_size(
    cfg: PatchConfig, spec: dict[str, Any] | None, images: pd.DataFrame, height: int
) -> tuple[int, str]:
    """(patch side in pixels, the rule that gave it, for patches.json); see `PatchConfig.patch_mm`.

    In physical-scale mode every prepared pixel is `spec["pixel_spacing"]` mm, so a side in mm is one pixel
    count for all images. In fixed-size mode the per-image spacing differs; an explicit `patch_mm` then uses the
    median prepared spacing of the manifest (`out_spacing_mm`), which needs every image's spacing to be known.
    """
    if cfg.patch_size is not None:
        return int(cfg.patch_size), "given"
    target = (spec or {}).get("pixel_spacing")
    if target:
        mm = cfg.patch_mm if cfg.patch_mm is not None else PAPER_PATCH_MM
        return max(8, round(mm / float(target))), f"round({mm:g} mm / {float(target):g} mm per pixel)"
    if cfg.patch_mm is None:
        return default_patch_size(height), f"round(224 * {height} / 1152)"
    spacing = pd.to_numeric(images.get("out_spacing_mm", pd.Series(dtype=float)), errors="coerce")
    if len(spacing) == 0 or spacing.isna().any():
        raise PatchSamplingError(
            "patch_mm needs every image's pixel spacing, and the prepared manifest lacks some (out_spacing_mm); "
            "prepare in physical-scale mode (--pixel-spacing) or with --assume-pixel-spacing, or give --patch-size"
        )
    median = float(spacing.median())
    return max(8, round(cfg.patch_mm / median)), f"round({cfg.patch_mm:g} mm / median {median:.4g} mm per pixel)"


@dataclass
class _ImageTask:
    """Everything one worker needs for one image (plain values, cheap to pickle)."""

    prepared: str
    out: str
    image: dict[str, Any]
    lesions: list[dict[str, Any]]
    n_per_lesion: int
    n_background: int
    patch_size: int
    classes: int
    min_overlap: float
    background_breast_fraction: float
    breast_threshold: float
    include_normal_images: bool
    seed: int
    hard_negative_run: str | None = None
    hard_negative_fraction: float = 0.0


def _text(value: Any) -> str:
    """Table cell -> str, with NA/None as ''."""
    return "" if value is None or pd.isna(value) else str(value)


def _int(value: Any, default: int = -1) -> int:
    """Table cell -> int, with NA/None as `default` (e.g. unknown malignancy)."""
    return default if value is None or pd.isna(value) else int(value)


def _process_image(task: _ImageTask) -> tuple[list[dict[str, Any]], list[dict[str, str]], int]:
    """Sample and write the patches of one image. Returns (patch rows, error rows, background shortfall)."""
    row = task.image
    image_id = _text(row["image_id"])
    try:
        # the prepared folder may come from someone else: its ids name our files, its paths must stay inside it
        check_file_stem(image_id, "image_id")
        image_file = _text(row.get("image_file")) or f"images/{image_id}.png"
        image = read_png16(inside(Path(task.prepared), image_file, "image_file"))
        if image.max() == 0:
            raise PatchSamplingError("the image is blank (all pixels 0)")
        infos, masks = [], []
        all_masked = True
        for lesion in task.lesions:
            mask_file = _text(lesion.get("mask_file"))
            if not mask_file:
                all_masked = False  # no ROI: its pixels are unknown, so no background can be trusted
                continue
            masks.append(read_png8(inside(Path(task.prepared), mask_file, "mask_file")))
            infos.append(
                LesionInfo(
                    lesion_id=_text(lesion["lesion_id"]),
                    lesion_type=_text(lesion.get("lesion_type")),
                    malignant=_int(lesion.get("malignant")),
                )
            )
        label = _int(row.get("label"))
        # Background needs every lesion's pixels known; a lesion-free image must be a known negative.
        take_background = all_masked if task.lesions else (task.include_normal_images and label == 0)
        scores = None
        if task.hard_negative_run and take_background and task.hard_negative_fraction > 0:
            lesion_map = _lesion_score_map(task.hard_negative_run, image)
            half = task.patch_size // 2

            def scores(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
                return lesion_map[ys + half, xs + half]

        boxes = sample_image_patches(
            image,
            masks,
            infos,
            image_rng(task.seed, image_id),
            n_per_lesion=task.n_per_lesion,
            n_background=task.n_background,
            patch_size=task.patch_size,
            classes=task.classes,
            min_overlap=task.min_overlap,
            background_breast_fraction=task.background_breast_fraction,
            breast_threshold=task.breast_threshold,
            take_background=take_background,
            window_scores=scores,
            hard_fraction=task.hard_negative_fraction,
        )
    except (OSError, ValueError) as exc:  # unreadable/missing file, wrong geometry, empty mask
        return [], [{"image_id": image_id, "reason": f"{type(exc).__name__}: {exc}"}], 0

    rows: list[dict[str, Any]] = []
    counters: dict[str, int] = {}
    for box in boxes:
        # Ids built from the image id (unique, file-name safe: prepare already uses it as a file name).
        lesion_index = next((i for i, info in enumerate(infos) if info.lesion_id == box.lesion_id), -1)
        key = f"l{lesion_index:02d}" if box.kind == "lesion" else "bg"
        counters[key] = counters.get(key, 0) + 1
        patch_id = f"{image_id}_{key}_{counters[key] - 1:03d}"
        patch_file = f"{PATCH_IMAGES_DIR}/{patch_id}.png"
        crop = np.ascontiguousarray(image[box.y0 : box.y0 + box.size, box.x0 : box.x0 + box.size])
        write_png16(Path(task.out) / patch_file, crop, durable=False)  # the folder is renamed into place at the end
        rows.append(
            {
                "patch_id": patch_id,
                "image_id": image_id,
                "patient_id": _text(row.get("patient_id")),
                "split": _text(row.get("split")),
                "lesion_id": box.lesion_id,
                "lesion_type": box.lesion_type,
                "kind": box.kind,
                "class_name": box.class_name,
                "class_index": box.class_index,
                "y0": box.y0,
                "x0": box.x0,
                "size": box.size,
                "overlap": box.overlap,
                "overlap_cutoff": box.overlap_cutoff,
                "fallback": box.fallback,
                "breast_fraction": box.breast_fraction,
                "hard_negative": box.hard_negative,
                "patch_file": patch_file,
            }
        )
    n_bg = sum(1 for b in boxes if b.kind == "background")
    shortfall = task.n_background - n_bg if take_background else 0
    return rows, [], shortfall


_SCORERS: dict[str, Any] = {}  # per process: run folder -> (patch classifier, its ModelCard)


def _lesion_score_map(run: str, image: np.ndarray) -> np.ndarray:
    """(H, W) float32: 1 - p(background) of `run`'s patch classifier for the window centred at each pixel."""
    import torch

    from mammokit.preprocess import to_model_input
    from mammokit.run import load_model
    from mammokit.scoring.patch_maps import patch_probability_maps

    if run not in _SCORERS:
        # One thread per worker: the pool's processes are the parallelism, and more OpenMP threads per process
        # would oversubscribe the cores and spin-wait beside each other. (The workers are spawned, not forked:
        # see `_run_tasks`.)
        torch.set_num_threads(1)
        _SCORERS[run] = load_model(run, "cpu")
    model, card = _SCORERS[run]
    x = torch.from_numpy(to_model_input(image, card.input.pixel_mean, card.input.pixel_std))[None]
    probs = patch_probability_maps(model, x, (card.input.height, card.input.width), stride=16)[0]
    return (1.0 - probs[0]).astype(np.float32)  # unit 0 is background (checked by hard_negative_source)


def hard_negative_source(run: str | Path, patch_size: int, spec: PreprocessSpec | None) -> dict[str, Any]:
    """Check that `run` is a patch classifier for patches of `patch_size` px of images prepared by `spec` (the
    prepared folder's; None = unknown, not checked); its record for patches.json."""
    from mammokit.run import WEIGHTS, RunFolderError, read_card
    from mammokit.utils.hashing import file_sha256

    run = Path(run)
    try:
        card = read_card(run)
    except (RunFolderError, OSError, ValueError) as exc:
        raise PatchSamplingError(f"hard_negative_run: {exc}") from None
    if card.task != "patch":
        raise PatchSamplingError(f"hard_negative_run {run} is a {card.task!r} run; give a `train patch` run folder")
    if (card.input.height, card.input.width) != (patch_size, patch_size):
        raise PatchSamplingError(
            f"hard_negative_run {run} was trained on {card.input.height}x{card.input.width} patches but this set "
            f"cuts {patch_size}x{patch_size}; use a run trained on this prepared folder's patch size"
        )
    differences = spec_differences(card.input.preprocess, spec) if spec is not None else []
    if differences:
        name, theirs, ours = differences[0]
        raise PatchSamplingError(
            f"hard_negative_run {run} was trained on images prepared differently (preprocess.{name}: {theirs!r}, "
            f"this folder: {ours!r}); mine with a patch classifier trained on this prepared folder"
        )
    if not card.labels or card.labels[0] != "background":
        raise PatchSamplingError(f"hard_negative_run {run}: its first output is {card.labels[:1]}, not background")
    if not (run / WEIGHTS).is_file():
        raise PatchSamplingError(f"hard_negative_run {run}: {WEIGHTS} is missing")
    return {"run": str(run.resolve()), "weights_sha256": file_sha256(run / WEIGHTS)}


def _prepared_height(prepared: Path, spec: dict[str, Any] | None, images: pd.DataFrame) -> int:
    """Prepared image height: from the PreprocessSpec, else from the first image that can be read."""
    if spec and isinstance(spec.get("height"), int | float) and spec["height"] > 0:
        return int(spec["height"])
    for _, row in images.iterrows():
        path = prepared / (_text(row.get("image_file")) or f"images/{row['image_id']}.png")
        try:
            return int(read_png16(path).shape[0])
        except (OSError, ValueError):
            continue
    raise PatchSamplingError(f"{prepared}: no readable image to take the patch size from; give --patch-size")


def _tasks(
    prepared: Path, out: Path, images: pd.DataFrame, lesions: pd.DataFrame, cfg: PatchConfig, patch_size: int
) -> Iterator[_ImageTask]:
    n_per_lesion, n_background = cfg.counts()
    by_image: dict[str, list[dict[str, Any]]] = {}
    for record in lesions.to_dict("records"):
        by_image.setdefault(str(record["image_id"]), []).append(record)
    for record in images.to_dict("records"):
        yield _ImageTask(
            prepared=str(prepared),
            out=str(out),
            image=record,
            lesions=by_image.get(str(record["image_id"]), []),
            n_per_lesion=n_per_lesion,
            n_background=n_background,
            patch_size=patch_size,
            classes=cfg.classes,
            min_overlap=cfg.min_overlap,
            background_breast_fraction=cfg.background_breast_fraction,
            breast_threshold=cfg.breast_threshold,
            include_normal_images=cfg.include_normal_images,
            seed=cfg.seed,
            hard_negative_run=str(Path(cfg.hard_negative_run).resolve()) if cfg.hard_negative_run else None,
            hard_negative_fraction=cfg.hard_negative_fraction if cfg.hard_negative_run else 0.0,
        )


def _run_tasks(tasks: list[_ImageTask], workers: int) -> list[tuple[list[dict[str, Any]], list[dict[str, str]], int]]:
    """`_process_image` of every task in task order, in worker processes (`mammokit.utils.pool`): a prepared
    folder may come from someone else, and a decoder that panics or aborts must cost one image, not the set."""
    from mammokit.utils.pool import TaskFailed, run_isolated

    # Hard-negative mining runs a torch model in the workers: spawn them (see `process_pool`); plain sampling is
    # numpy + PNG only and keeps the cheap fork.
    start_method = "spawn" if any(task.hard_negative_run for task in tasks) else None
    results = []
    for index, result in run_isolated(_process_image, tasks, workers=workers, ordered=True, start_method=start_method):
        if isinstance(result, TaskFailed):
            result = ([], [{"image_id": _text(tasks[index].image["image_id"]), "reason": result.reason}], 0)
        results.append(result)
    return results


def _empty_patch_table() -> pd.DataFrame:
    dtypes = {"class_index": "int64", "y0": "int64", "x0": "int64", "size": "int64", "fallback": "bool"}
    dtypes |= {"hard_negative": "bool"}
    dtypes |= {"overlap": "float64", "overlap_cutoff": "float64", "breast_fraction": "float64"}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "object")) for c in PATCH_COLUMNS})


def _staging_dir(out: Path) -> Path:
    """An empty folder beside `out` (same filesystem, so the final rename is atomic)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PatchSamplingError(
            f"{out} already exists and is not empty; choose another --out or delete it (patch sets are never merged)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def sample_patches(prepared: str | Path, out: str | Path, cfg: PatchConfig | None = None) -> dict[str, Any]:
    """Sample a patch set from a prepared dataset folder and write it to `out` (see the module docstring).

    Args:
        prepared: prepared dataset folder (`mammokit prepare`).
        out: patch-set folder to create (must not exist or be empty).
        cfg: the settings (`PatchConfig`: scheme, counts, patch size, classes, overlap, breast rules, seed,
            workers); default PatchConfig() (S10, 5 classes).

    Returns:
        The summary written to patches.json.

    Raises:
        PatchSamplingError: bad settings, missing manifest, or `out` not empty. A bad image or mask is not an
            error: it is listed in errors.csv and skipped.
    """
    cfg = cfg if cfg is not None else PatchConfig()
    try:
        cfg.validate()
    except ConfigError as exc:
        raise PatchSamplingError(str(exc)) from None
    prepared, out = Path(prepared), Path(out)
    try:
        source = PreparedDataset.open(prepared, require=("image_id", "patient_id", "split"))
    except ValueError as exc:
        raise PatchSamplingError(str(exc)) from None
    images, lesions = source.images, source.lesions()
    if len(lesions) and "mask_file" not in lesions.columns:
        raise PatchSamplingError(
            f"{prepared}/lesions.parquet has no mask_file column: lesion patches need rasterised ROI masks "
            "(re-run `mammokit prepare`)"
        )
    dataset = source.info
    spec = to_dict(source.spec) if source.spec is not None else None
    if spec is None:
        log.warning("%s/dataset.json records no PreprocessSpec: the patch set will not record it", prepared)
    height = _prepared_height(prepared, spec, images)
    size, size_rule = resolve_patch_size(cfg, spec, images, height)
    n_per_lesion_, n_background_ = cfg.counts()
    hard = hard_negative_source(cfg.hard_negative_run, size, source.spec) if cfg.hard_negative_run else None

    staging = _staging_dir(out)
    try:
        (staging / PATCH_IMAGES_DIR).mkdir()
        tasks = list(_tasks(prepared, staging, images, lesions, cfg, size))
        log.info(
            "sampling %s patches (size %d) from %d images, %d worker(s)", cfg.scheme, size, len(tasks), cfg.workers
        )
        results = _run_tasks(tasks, cfg.workers)

        rows = [r for result in results for r in result[0]]
        errors = [e for result in results for e in result[1]]
        shortfall_images = sum(1 for result in results if result[2] > 0)
        table = pd.DataFrame(rows, columns=list(PATCH_COLUMNS)) if rows else _empty_patch_table()
        if table["patch_id"].duplicated().any():  # cannot happen with unique image ids; guard the contract
            raise PatchSamplingError("duplicate patch ids: image_id must be unique in manifest.parquet")
        names = class_names(cfg.classes)
        counts = {
            split: {name: int(((table["split"] == split) & (table["class_name"] == name)).sum()) for name in names}
            for split in sorted(table["split"].unique())
        }
        summary: dict[str, Any] = {
            "format_version": 1,
            "mammokit_version": __version__,
            "scheme": cfg.scheme.lower(),
            "n_per_lesion": n_per_lesion_,
            "n_background": n_background_,
            "patch_size": size,
            "patch_size_rule": size_rule,
            "patch_mm": size * float(spec["pixel_spacing"]) if spec and spec.get("pixel_spacing") else cfg.patch_mm,
            "classes": list(names),
            "seed": cfg.seed,
            "min_overlap": cfg.min_overlap,
            "background_breast_fraction": cfg.background_breast_fraction,
            "breast_threshold": cfg.breast_threshold,
            "n_patches": len(table),
            "counts": counts,
            "n_images": len(tasks),
            "n_images_failed": len(errors),
            "n_images_short_of_background": shortfall_images,
            "n_fallback_lesions": int(table.loc[table["fallback"].astype(bool), "lesion_id"].nunique()),
            "hard_negatives": None
            if hard is None
            else {**hard, "fraction": cfg.hard_negative_fraction, "n_patches": int(table["hard_negative"].sum())},
            "source": {
                "prepared": str(prepared.resolve()),
                "dataset": dataset.get("source", dataset.get("dataset", "")),
                "image_height": height,
                "preprocess": spec,
            },
        }
        atomic_write_with(staging / PATCHES_FILE, lambda tmp: table.to_parquet(tmp, index=False))
        pd.DataFrame(errors, columns=["image_id", "reason"]).to_csv(staging / ERRORS_FILE, index=False)
        atomic_write_text(staging / CONFIG_FILE, dump_yaml(cfg))
        atomic_write_json(staging / PATCHES_JSON, summary)
        if out.exists():
            out.rmdir()  # checked empty in _staging_dir
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if errors:
        log.warning("%d image(s) skipped; reasons in %s", len(errors), out / ERRORS_FILE)
    if shortfall_images:
        log.warning("%d image(s) had too little lesion-free breast tissue for all background patches", shortfall_images)
    log.info("wrote %d patches to %s", len(table), out)
    return summary


def read_patch_set(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a patch-set folder: (patches table, patches.json summary)."""
    folder = Path(folder)
    table_path, json_path = folder / PATCHES_FILE, folder / PATCHES_JSON
    if not table_path.is_file() or not json_path.is_file():
        raise PatchSamplingError(
            f"{folder} is not a patch set (no {PATCHES_FILE}/{PATCHES_JSON}); run `mammokit patches`"
        )
    return pd.read_parquet(table_path), json.loads(json_path.read_text())
