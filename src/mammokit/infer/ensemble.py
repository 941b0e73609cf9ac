"""Model averaging (the paper's ensembles): several whole-image runs' predictions of one image -> one prediction.

The one implementation used by `mammokit predict --ensemble` (`EnsemblePredictor`) and `mammokit serve RUN RUN...`
(`serve.models.ServedModels`), with the semantics of `mammokit evaluate` (`engine.aggregate.ensemble_predictions`):

* `prob_malignant` (calibrated where a member has calibration.json) and `prob_uncalibrated` are each the mean over
  members.
* An ensemble has no stored operating threshold, so it makes no call of its own: `call` and `threshold` are None
  (evaluate reports Youden first for an ensemble; serve and predict report each member's call instead).
* Heatmaps of each kind are the mean of the members' maps on the original pixel grid (a kind only some members
  made, e.g. the class maps of different patch runs, is the mean over those that made it).

`EnsemblePredictor` reads and prepares each file once, with the first member's preprocessing, and feeds the same
prepared image to every member; that is only right when all members prepare images identically, so it refuses
members whose `PreprocessSpec` (model.json) differ and names the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammokit.infer.backends import TorchBackend
from mammokit.infer.batch import FilePredictions
from mammokit.infer.config import BACKEND_PRECISION, PATCH_MALIGNANT, Backend, HeatmapKind
from mammokit.infer.predictor import HEATMAP_BACKEND, Predictor
from mammokit.infer.preprocessor import Preprocessor
from mammokit.infer.results import Prediction, PreparedImage
from mammokit.preprocess import spec_differences
from mammokit.run import unique_run_names

NO_THRESHOLD_NOTE = "an ensemble has no stored threshold (as in `mammokit evaluate`): see each model's call"


def model_summary(p: Predictor) -> dict[str, Any]:
    """What every prediction output says about one run's model: `predictions.json` (a single run's summary, or
    each ensemble member's) and serve's `models` (the service leaves out `backend_selection`, shown on /v1/model)."""
    return {
        "mammokit_version": p.card.mammokit_version,
        "created": p.card.created,
        "backend": p.backend_name,
        "precision": BACKEND_PRECISION.get(p.backend_name, "float32"),  # what computed p(malignant)
        "backend_selection": p.selection.to_dict() if p.selection is not None else None,
        "threshold": p.threshold,
        "threshold_rule": p.card.threshold_rule,
        "calibrated": p.calibration is not None,
        "tta": p.tta,
    }


class EnsembleError(ValueError):
    """The runs cannot form an ensemble (e.g. they prepare images differently)."""


def mean_heatmaps(members: Sequence[Prediction]) -> dict[str, np.ndarray]:
    """Each heatmap kind averaged over the members that made it (all on the same original pixel grid).

    A map that only one member made is returned as is (no copy), so a single run's maps are untouched.
    """
    maps: dict[str, list[np.ndarray]] = {}
    for pred in members:
        for kind, heat in pred.heatmaps.items():
            maps.setdefault(kind, []).append(heat)
    return {k: np.mean(v, axis=0) if len(v) > 1 else v[0] for k, v in maps.items()}


def combine_predictions(members: Sequence[Prediction], *, heatmaps: bool = True) -> Prediction:
    """The ensemble's prediction of one image from its members' predictions of it (in member order).

    Args:
        members: one `Prediction` per member run, all of the same image.
        heatmaps: average the members' heatmaps too (False skips the work when nobody will look at them).

    Returns:
        A `Prediction` with the mean probabilities, `call = threshold = None` for two or more members (no stored
        threshold), id, path, laterality, view and meta of the first member, and the members' predictions under
        `members` (without their heatmaps: the mean is what is kept). One member is returned as is.
    """
    if not members:
        raise EnsembleError("an ensemble needs at least one member's prediction")
    first = members[0]
    if len(members) == 1:
        return first
    if len({p.image_id for p in members}) != 1:
        raise EnsembleError(f"the members predicted different images: {sorted({p.image_id for p in members})}")
    maps = mean_heatmaps(members) if heatmaps else {}
    primary = maps.get("gradcam", maps.get(PATCH_MALIGNANT)) if maps else None
    return Prediction(
        image_id=first.image_id,
        path=first.path,
        prob_malignant=float(np.mean([p.prob_malignant for p in members])),
        call=None,
        threshold=None,
        laterality=first.laterality,
        view=first.view,
        prob_uncalibrated=float(np.mean([p.prob_uncalibrated for p in members])),
        heatmap=primary,
        heatmaps=maps,
        meta=first.meta,
        members=[dataclasses.replace(p, heatmap=None, heatmaps={}) for p in members],
        fit_scale=first.fit_scale,  # members prepare alike (check_same_preprocessing): one image, one factor
        # one partner per image for every bilateral member (paired once per call); None when no member pairs
        context=next((p.context for p in members if p.context is not None), None),
    )


def check_same_preprocessing(predictors: Sequence[Predictor]) -> None:
    """Raise `EnsembleError` naming both runs and the field when two members prepare images differently.

    Every member is fed the image prepared by the first one, so a member trained on another crop, size,
    orientation, intensity mapping or DICOM VOI handling would silently see an input unlike its training images.
    The normalisation (pixel mean/std) may differ: scoring normalises inside each member's graph, and Grad-CAM's
    input is re-normalised per member.
    """
    if not predictors:
        raise EnsembleError("an ensemble needs at least one run")
    ref = predictors[0]
    for other in predictors[1:]:
        differences = spec_differences(ref.spec, other.spec)
        if differences:
            name, a, b = differences[0]
            raise EnsembleError(
                f"runs {ref.run_dir} and {other.run_dir} prepare images differently (model.json "
                f"input.preprocess.{name}: {a!r} vs {b!r}); ensemble members must share the preprocessing, "
                "since each file is read and prepared once for all of them"
            )


class EnsemblePredictor(FilePredictions):
    """Several whole-image runs predicting as one model: the mean of their probabilities (and heatmaps).

    Offers what `mammokit predict` uses of `Predictor` (`predict_many`, `predict_prepared`, `check_heatmap`,
    names of runs and backends), so the CLI treats one run and an ensemble alike.
    """

    def __init__(self, predictors: Sequence[Predictor]) -> None:
        check_same_preprocessing(predictors)
        self.predictors = list(predictors)
        self.first = self.predictors[0]
        self.reader: Preprocessor = self.first.preprocessor  # reads and prepares every file once, for all members
        self.names = unique_run_names([p.run_name for p in self.predictors])

    @classmethod
    def from_runs(
        cls, runs: Sequence[str | Path], device: str = "auto", backend: Backend = "auto", **options: Any
    ) -> EnsemblePredictor:
        """Load each run with `Predictor.from_run(run, device, backend, **options)` (the same keyword options:
        patch_run, channels_last, tta, assume_pixel_spacing, heatmap_options); with "auto" each run picks its own
        backend, cached in its own folder."""
        return cls([Predictor.from_run(r, device, backend, **options) for r in runs])

    # ---- what the outputs say about the model ------------------------------------------------

    @property
    def is_ensemble(self) -> bool:
        return len(self.predictors) > 1

    @property
    def run_name(self) -> str:
        """The member runs' names joined by ';' (the `model_run` column)."""
        return ";".join(self.names)

    @property
    def backend_name(self) -> str:
        """Each member's scoring backend, in member order, joined by ';' (the `backend` column)."""
        return ";".join(p.backend_name for p in self.predictors)

    @property
    def heatmap_backend_name(self) -> str:
        return HEATMAP_BACKEND

    @property
    def heatmap_backend(self) -> TorchBackend:
        """The first member's float32 torch model (its Grad-CAM layer name goes into the overlay captions)."""
        return self.first.heatmap_backend

    @property
    def threshold(self) -> float | None:
        """A single run's threshold; None for an ensemble (no stored operating point)."""
        return None if self.is_ensemble else self.first.threshold

    @property
    def tta(self) -> bool:
        """True when every member averages over the four flips (each follows its own calibration.json)."""
        return all(p.tta for p in self.predictors)

    @property
    def pairs_views(self) -> bool:
        """One bilateral member is enough: files are paired once per call, one-image members ignore the partner."""
        return any(p.pairs_views for p in self.predictors)

    def check_heatmap(self, heatmap: str) -> None:
        """Fail before reading any file when a member cannot make the heatmap kind."""
        for p in self.predictors:
            p.check_heatmap(heatmap)

    def member_records(self, pred: Prediction) -> list[dict[str, Any]]:
        """Each member's probabilities and call for one image (as serve reports them under `models`)."""
        members = pred.members or [pred]
        return [
            {
                "name": name,
                "prob_malignant": round(float(m.prob_malignant), 6),
                "prob_uncalibrated": round(float(m.prob_uncalibrated), 6),
                "call": None if m.call is None else int(m.call),
                "threshold": m.threshold,
            }
            for name, m in zip(self.names, members, strict=True)
        ]

    # ---- prediction --------------------------------------------------------------------------

    def predict_members(self, batch: Sequence[PreparedImage], heatmap: HeatmapKind = "none") -> list[list[Prediction]]:
        """Every member's predictions of one prepared batch: `[image][member]`."""
        per_member = []
        for p in self.predictors:
            per_member.append(p.predict_prepared(self._for_member(p, batch), heatmap))
        return [list(preds) for preds in zip(*per_member, strict=True)]

    def predict_prepared(self, batch: Sequence[PreparedImage], heatmap: HeatmapKind = "none") -> list[Prediction]:
        """The ensemble's predictions of one prepared batch (`combine_predictions` of the members')."""
        return [combine_predictions(members) for members in self.predict_members(batch, heatmap)]

    def _for_member(self, member: Predictor, batch: Sequence[PreparedImage]) -> Sequence[PreparedImage]:
        """The shared prepared batch, with Grad-CAM's normalised input redone where the member's mean/std differ."""
        mine, ref = member.preprocessor, self.reader
        if (mine.pixel_mean, mine.pixel_std) == (ref.pixel_mean, ref.pixel_std):
            return batch
        return [dataclasses.replace(p, x=mine.normalise(p.image_u16)) for p in batch]
