"""Pairing each view with the same view of the woman's other breast (the bilateral model's context).

A radiologist reads a mammogram beside the other breast: a mass is often an asymmetry. The bilateral
whole-image model (`WholeImageClassifier(bilateral=...)`) takes that second image as input channel 1. This
module is the one rule that picks it, used by training (`data.datasets`), evaluation
(`engine.split_predict`), `mammokit predict` and `mammokit serve`:

* the partner of an image is an image of the same woman (`patient_id`), the same view (`view`, case and
  spaces ignored) and the other side (`laterality` L <-> R);
* among several candidates, one of the same exam (`exam_id`) first, then the smallest `image_id`, so the
  choice never depends on row order;
* an image without one (unknown laterality, a single breast, a missing film) is scored with itself as its
  partner (`CONTEXT_SINGLE`): the model then sees no asymmetry. Training shows the model that case too
  (`partner_dropout` of `WholeModelConfig`), and every output flags it in its `context` column.

Prepared images are already oriented alike (every breast's chest wall on the same side, `data.geometry`),
so the partner needs no mirroring here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from mammokit.data.sources._common import norm_laterality, norm_view

Context = Literal["contralateral", "single"]
CONTEXT_CONTRALATERAL: Context = "contralateral"
CONTEXT_SINGLE: Context = "single"
CONTEXTS: tuple[Context, ...] = (CONTEXT_CONTRALATERAL, CONTEXT_SINGLE)

_OTHER_SIDE = {"L": "R", "R": "L"}


# the adapters' normalisation: L/R from L, R, LEFT, RIGHT (any case); other text (view codes, and here the
# woman and exam ids too) stripped and upper-cased; '' for a missing value
_side, _key = norm_laterality, norm_view


def partner_positions(
    patient_ids: Sequence[object],
    views: Sequence[object],
    lateralities: Sequence[object],
    image_ids: Sequence[object],
    exam_ids: Sequence[object] | None = None,
) -> np.ndarray:
    """Row position of each image's contralateral partner, or -1 where it has none.

    Args:
        patient_ids, views, lateralities, image_ids: one value per image (row order kept); an empty
            patient id or a laterality other than L/R never pairs.
        exam_ids: optional; a partner from the same exam is preferred.

    Returns:
        (N,) int64 positions into the given rows.
    """
    n = len(image_ids)
    exams = exam_ids if exam_ids is not None else [""] * n
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i in range(n):
        side, patient = _side(lateralities[i]), _key(patient_ids[i])
        if side and patient:
            groups.setdefault((patient, _key(views[i]), side), []).append(i)
    out = np.full(n, -1, dtype=np.int64)
    for (patient, view, side), rows in groups.items():
        candidates = groups.get((patient, view, _OTHER_SIDE[side]), [])
        for i in rows:
            if candidates:
                exam = _key(exams[i])
                out[i] = min(candidates, key=lambda j: (_key(exams[j]) != exam, str(image_ids[j]), j))
    return out


def table_partners(table: pd.DataFrame) -> np.ndarray:
    """`partner_positions` of a manifest-like table (columns patient_id, view, laterality, image_id[, exam_id])."""
    missing = [c for c in ("patient_id", "view", "laterality", "image_id") if c not in table.columns]
    if missing:
        return np.full(len(table), -1, dtype=np.int64)  # a minimal table cannot pair: every image is single
    exams = table["exam_id"].tolist() if "exam_id" in table.columns else None
    return partner_positions(
        table["patient_id"].tolist(), table["view"].tolist(), table["laterality"].tolist(),
        table["image_id"].tolist(), exams,
    )  # fmt: skip


def contexts(partners: np.ndarray) -> list[Context]:
    """The `context` column: "contralateral" where a partner was found, "single" where the image is its own."""
    return [CONTEXT_CONTRALATERAL if p >= 0 else CONTEXT_SINGLE for p in np.asarray(partners).tolist()]


def with_self_fallback(partners: np.ndarray) -> np.ndarray:
    """Partner positions with -1 replaced by the image's own position (the documented single-image fallback)."""
    partners = np.asarray(partners, dtype=np.int64)
    return np.where(partners >= 0, partners, np.arange(len(partners)))
