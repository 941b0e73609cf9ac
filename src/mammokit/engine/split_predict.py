"""Predictions of one run on a split of a prepared dataset, through the inference core (`scoring.core`).

Shared by `mammokit evaluate` (which scores them) and `mammokit calibrate` (which fits a calibration map on
them). The numbers are the ones `mammokit predict` gives on the same images' raw files (tests/test_parity.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mammokit.data.manifest import PreparedDataset
from mammokit.data.pairs import contexts, table_partners, with_self_fallback
from mammokit.metrics import apply_calibration
from mammokit.run import ModelCard, read_calibration, read_card

log = logging.getLogger(__name__)

ID_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "exam_id", "laterality", "view", "label", "dataset")
# fit_scale: > 1 when a breast larger than the canvas was shrunk to fit (prepare's manifest column)
OPTIONAL_COLUMNS: tuple[str, ...] = ("density", "birads", "vendor", "site", "fit_scale")


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as given; the message says what to change."""


def load_split(prepared: str | Path, split: str) -> tuple[pd.DataFrame, int]:
    """Labelled images of `split` and the number of images skipped for an unknown label (-1)."""
    images = PreparedDataset.open(prepared).images
    table = images[images["split"].astype(str) == split]
    if table.empty:
        found = sorted(images["split"].astype(str).unique().tolist())
        raise EvaluationError(f"{prepared}: no images in split {split!r}; splits present: {found}")
    known = table[table["label"].astype(int) >= 0].copy()
    if known.empty:
        raise EvaluationError(f"{prepared}: split {split!r} has no labelled images (all labels are -1)")
    for col in ("image_id", "patient_id", "exam_id", "laterality", "view", "dataset"):
        if col not in known.columns:  # a minimal manifest (written by hand, not by prepare): one exam per woman
            known[col] = known["patient_id"] if col == "exam_id" else ""
        known[col] = known[col].astype(str)
    known["label"] = known["label"].astype(int)
    return known.reset_index(drop=True), int(len(table) - len(known))


def check_whole_run(card: ModelCard, run_dir: Path) -> None:
    if card.task != "whole":
        raise EvaluationError(
            f"{run_dir} is a {card.task!r} run; `mammokit evaluate` scores whole images, so pass a whole-image run "
            "(`mammokit train whole`)"
        )


def predict_split(
    run_dir: str | Path,
    prepared: str | Path,
    split: str,
    *,
    tta: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 0,
    images: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """p(malignant) of one run for every labelled image of a prepared split, through the inference core.

    Args:
        run_dir: run folder (model.json + model.safetensors [+ calibration.json]).
        prepared: prepared dataset folder.
        split: "train", "val" or "test".
        tta: mean over the four flips instead of the image as is.
        batch_size, device, workers: inference settings (workers = DataLoader processes reading PNGs).
        images: the split's labelled rows (from `load_split`) to avoid re-reading the manifest.

    Returns:
        One row per image: the id columns, optional density/birads/vendor/site, `context` (bilateral models:
        "contralateral" or "single", `data.pairs`), `prob_uncalibrated`
        (`scoring.core`: float32 softmax summed over the card's positive labels) and `prob_malignant` (after
        calibration.json when the run has one, else equal to the raw probability).
    """
    from torch.utils.data import DataLoader

    from mammokit.data.datasets import PreparedImages, stack_images
    from mammokit.scoring.core import TorchScorer

    run_dir = Path(run_dir)
    card = read_card(run_dir)
    check_whole_run(card, run_dir)
    if images is None:
        images, _ = load_split(prepared, split)
    scorer = TorchScorer.from_run(run_dir, device)
    table = images[images["label"] >= 0].reset_index(drop=True)
    files = table["image_file"].astype(str).tolist()
    bilateral = card.input.channels == 2
    partners = table_partners(table) if bilateral else None
    # a bilateral model's input is each image with its partner (itself where it has none: `data.pairs`)
    partner_files = [files[j] for j in with_self_fallback(partners)] if partners is not None else None
    loader = DataLoader(PreparedImages(prepared, files, partner_files), batch_size=batch_size, num_workers=workers,
                        collate_fn=stack_images)  # fmt: skip
    expected = (card.input.height, card.input.width)
    probs: list[np.ndarray] = []
    for batch in loader:  # (B, H, W) uint16
        if tuple(batch.shape[-2:]) != expected:
            raise EvaluationError(
                f"{run_dir.name} expects {expected[0]}x{expected[1]} images but {prepared} holds "
                f"{batch.shape[-2]}x{batch.shape[-1]}; prepare the data with the run's size (see model.json input)"
            )
        probs.append(scorer.score(batch, tta))
    raw = np.concatenate(probs) if probs else np.zeros(0)
    out = table[[c for c in (*ID_COLUMNS, *OPTIONAL_COLUMNS) if c in table.columns]].copy()
    if partners is not None:
        out["context"] = contexts(partners)
    out["prob_uncalibrated"] = raw
    out["prob_malignant"] = apply_calibration(raw, read_calibration(run_dir))
    log.info("%s: predicted %d images of split %s (tta=%s)", run_dir.name, len(out), split, tta)
    return out.reset_index(drop=True)
