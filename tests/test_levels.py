"""Breast/exam scores: `metrics.levels` (serve, one upload) gives what `engine.aggregate` (evaluate, tables) gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammokit.engine.aggregate import aggregate_predictions
from mammokit.metrics.levels import breast_scores, exam_score


@pytest.mark.parametrize("how", ["mean", "max"])
def test_one_exam_scores_as_evaluate_scores_it(how):
    rng = np.random.default_rng(0)
    sides = ["R", "L", "R", "L", "R"]
    probs = rng.random(len(sides)).round(6)
    df = pd.DataFrame({"image_id": [f"v{i}" for i in range(len(sides))], "patient_id": "p", "exam_id": "e",
                       "laterality": sides, "label": 0, "prob_malignant": probs})  # fmt: skip
    breasts = breast_scores(sides, probs, how)
    table = aggregate_predictions(df, "breast", how)  # type: ignore[arg-type]
    assert [b.laterality for b in breasts] == table["laterality"].tolist() == ["L", "R"]
    assert [b.prob_malignant for b in breasts] == pytest.approx(table["prob_malignant"].tolist(), abs=1e-12)
    assert [b.n_images for b in breasts] == table["n_images"].tolist()
    exam, row = exam_score(breasts), aggregate_predictions(df, "exam", how).iloc[0]  # type: ignore[arg-type]
    assert exam.prob_malignant == pytest.approx(row["prob_malignant"], abs=1e-12) and exam.n_images == row["n_images"]
    with pytest.raises(ValueError, match="aggregate"):
        breast_scores(sides, probs, "median")
