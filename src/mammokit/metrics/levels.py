"""Breast and exam scores from image scores: the one rule `mammokit evaluate` (`engine.aggregate`, over tables)
and `mammokit serve` (one upload, over arrays) apply.

A breast's score is the mean (or the max) of its views' scores; an exam's is the max over its breasts (an exam is
as suspicious as its most suspicious breast). Arrays only (no pandas, no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AGGREGATES: tuple[str, ...] = ("mean", "max")  # how a breast's views combine (`--aggregate`)
EXAM_AGGREGATE = "max"  # how an exam's breasts combine


def check_aggregate(how: str) -> None:
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be 'mean' or 'max', got {how!r}")


@dataclass(frozen=True)
class LevelScore:
    """One breast (`laterality` "L"/"R") or the exam (`laterality` None): its score and how many images made it."""

    laterality: str | None
    prob_malignant: float
    n_images: int


def _combine(values: np.ndarray, how: str) -> float:
    return float(np.max(values) if how == "max" else np.mean(values))


def breast_scores(lateralities: Sequence[str], probs: Sequence[float], how: str = "mean") -> list[LevelScore]:
    """Per breast of one exam, in laterality order: `how` over its images' probabilities."""
    check_aggregate(how)
    sides = np.asarray(lateralities, dtype=object)
    values = np.asarray(probs, dtype=np.float64)
    return [
        LevelScore(side, _combine(values[sides == side], how), int(np.sum(sides == side)))
        for side in sorted(set(sides))
    ]


def exam_score(breasts: Sequence[LevelScore]) -> LevelScore:
    """The exam: `EXAM_AGGREGATE` over its breasts' scores, counting every image."""
    values = np.asarray([b.prob_malignant for b in breasts], dtype=np.float64)
    return LevelScore(None, _combine(values, EXAM_AGGREGATE), sum(b.n_images for b in breasts))
