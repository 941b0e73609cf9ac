"""Pairing the files of one prediction call for a bilateral model (`predict`, `serve`, the predictor API).

The rule is `data.pairs` (same woman, same view, other side), the one training and evaluation use. Here the
woman, side and view of a file come from, in order:

* woman: the `patient_id` column of a CSV input list, else the file's exam/woman digest (`pair_key`, a hash
  of the DICOM StudyInstanceUID and PatientID that is never written out), else `default_patient` (serve: one
  upload is one woman's exam);
* side and view: the CSV list's `laterality`/`view` columns, else the file's header (or serve's form fields
  and guess, already in `meta`).

A file without a partner is scored with itself as its partner and flagged `context = "single"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mammokit.data.pairs import contexts, partner_positions, with_self_fallback

if TYPE_CHECKING:
    from mammokit.infer.results import PreparedImage


def attach_partners(batch: Sequence[PreparedImage], default_patient: str | None = None) -> None:
    """Set `partner_u16` and `context` of every prepared image of one call, in place."""
    patients = [p.item.patient_id or p.meta.extra.get("pair_key") or default_patient for p in batch]
    sides = [p.item.laterality or p.meta.laterality for p in batch]
    views = [p.item.view or p.meta.view for p in batch]
    ids = [p.item.image_id for p in batch]
    partners = partner_positions(patients, views, sides, ids)
    for p, j, context in zip(batch, with_self_fallback(partners), contexts(partners), strict=True):
        p.partner_u16 = batch[int(j)].image_u16
        p.context = context


def pair_input(batch: Sequence[PreparedImage]) -> np.ndarray:
    """(B, 2, H, W) uint16: each prepared image with its partner (itself where none was attached)."""
    return np.stack([np.stack([p.image_u16, p.partner_u16 if p.partner_u16 is not None else p.image_u16])
                     for p in batch])  # fmt: skip
