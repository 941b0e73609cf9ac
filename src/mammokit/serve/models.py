"""The served models: an adapter over `infer.ensemble.EnsemblePredictor`, and one exam predicted with it.

One run or several, the service predicts with the object `mammokit predict --ensemble` uses, under its one
compatibility rule (`infer.ensemble.check_same_preprocessing`: members must prepare images alike, so each upload is
read and prepared once): the raw and the calibrated p(malignant) are each the mean over the runs
(`infer.ensemble.combine_predictions`), as in `mammokit evaluate` (`engine.evaluate.ensemble_predictions`). An
ensemble has no stored operating threshold, so, as in evaluate, it makes no call of its own; each member's call is
reported. Breast and exam aggregates follow evaluate's rule, `metrics.levels` (breast = mean or max over its views,
exam = max over its breasts), with a single run's threshold applied on the calibrated scale as evaluate does.

Heatmaps: each run's maps come back on the original pixel grid; for an ensemble the maps of one kind are
averaged over the runs (`infer.ensemble.mean_heatmaps`).
They are stored as display-sized PNGs (see `render_view_pngs`) in the `ResultStore`.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammokit.data.geometry import guess_laterality, is_shrunk
from mammokit.infer.config import HEATMAP_KINDS
from mammokit.infer.ensemble import NO_THRESHOLD_NOTE, EnsemblePredictor, model_summary
from mammokit.infer.inputs import InputItem
from mammokit.infer.pairing import attach_partners
from mammokit.infer.predictor import Predictor
from mammokit.infer.results import Prediction
from mammokit.io.dicom import KNOWN_VIEWS, MammogramReadError
from mammokit.io.meta import MammoMeta
from mammokit.metrics.levels import check_aggregate
from mammokit.serve.decode import DecodePool
from mammokit.serve.store import ResultStore
from mammokit.serve.uploads import UploadedFile, UploadError

log = logging.getLogger(__name__)


@dataclass
class ExamLimits:
    min_side: int = 128  # px; smaller is no mammogram (and leaves the model nothing to see)
    display_max_side: int = 1024  # px; longer side of the view/heatmap PNGs the viewer gets


@dataclass
class _ReadView:
    upload: UploadedFile
    item: InputItem
    pixels: np.ndarray  # as read, with the members' shared reader options
    meta: MammoMeta  # with laterality/view from the form (or a guess) where the file had none


class ServedModels:
    """The served runs as one `EnsemblePredictor`, and `predict_exam` for one upload. The model stage is serialised."""

    def __init__(self, models: EnsemblePredictor, *, aggregate: str = "mean") -> None:
        """`models`: the served runs as one ensemble (one run is an ensemble of one); `EnsemblePredictor` refuses
        runs that prepare images differently (the rule of `mammokit predict --ensemble`)."""
        check_aggregate(aggregate)
        self.models = models
        self.aggregate = aggregate
        # Grad-CAM keeps hook state on the model and a CPU forward pass already uses every core: one model
        # call at a time; reading and preparing the next request's images goes on in other threads meanwhile.
        self._model_lock = threading.Lock()
        # which heatmaps every run can make, found once here (it loads the float32 torch model and the patch
        # run when the scores come from ONNX): /v1/model is answered on the event loop and must not load models
        self._heatmap_kinds = self._find_heatmap_kinds()

    @classmethod
    def load(
        cls,
        runs: Sequence[str | Path],
        *,
        device: str = "auto",
        backend: str = "auto",
        tta: bool | None = None,
        aggregate: str = "mean",
        assume_pixel_spacing: float | None = None,
    ) -> ServedModels:
        if not runs:
            raise ValueError("serve needs at least one run")
        models = EnsemblePredictor.from_runs(
            runs,
            device,
            backend,
            tta=tta,
            assume_pixel_spacing=assume_pixel_spacing,  # type: ignore[arg-type]
        )
        return cls(models, aggregate=aggregate)

    # ---- what the service offers --------------------------------------------------------------

    @property
    def predictors(self) -> list[Predictor]:
        return self.models.predictors

    @property
    def names(self) -> list[str]:
        """The runs' names, unique (`run.unique_run_names`), in the order given."""
        return self.models.names

    @property
    def heatmap_kinds(self) -> list[str]:
        """The `heatmap` values every served run can make."""
        return list(self._heatmap_kinds)

    def _find_heatmap_kinds(self) -> list[str]:
        kinds = []
        for kind in HEATMAP_KINDS:
            try:
                self.models.check_heatmap(kind)
            except (ValueError, FileNotFoundError, OSError):
                continue
            kinds.append(kind)
        return kinds

    @property
    def threshold(self) -> float | None:
        """The operating threshold on the raw scale (a single run's); None for an ensemble."""
        return self.models.threshold

    def cards(self) -> list[dict[str, Any]]:
        """The model cards (model.json) with what the service adds: name, backend, calibration, TTA."""
        from mammokit.config import to_dict

        out = []
        for name, p in zip(self.names, self.predictors, strict=True):
            summary = model_summary(p)
            out.append(
                {
                    "name": name,
                    "backend": summary["backend"],
                    "precision": summary["precision"],  # what computed p(malignant)
                    "heatmap_backend": p.heatmap_backend_name,
                    "backend_selection": summary["backend_selection"],
                    "calibrated": summary["calibrated"],
                    "calibration_method": (p.calibration or {}).get("method"),
                    "tta": summary["tta"],
                    "card": to_dict(p.card),
                }
            )
        return out

    def model_summaries(self) -> list[dict[str, Any]]:
        """Each run as a prediction reports it (`infer.ensemble.model_summary`), under its served name."""
        return [
            {"name": name, **{k: v for k, v in model_summary(p).items() if k != "backend_selection"}}
            for name, p in zip(self.names, self.predictors, strict=True)
        ]

    # ---- one exam ----------------------------------------------------------------------------

    def predict_exam(
        self,
        uploads: Sequence[UploadedFile],
        *,
        lateralities: Sequence[str] = (),
        views: Sequence[str] = (),
        heatmap: str = "gradcam",
        limits: ExamLimits | None = None,
        store: ResultStore | None = None,
        inline: bool = False,
        decoder: DecodePool | None = None,
    ) -> dict[str, Any]:
        """Read, check, predict and (optionally) render one image or exam; returns the JSON-able result.

        `decoder`: decode the uploads in its memory-capped worker processes (the service always passes one);
        None = in this process.

        Raises:
            UploadError: 422 with one entry per rejected file when any file cannot be used.
        """
        limits = limits or ExamLimits()
        if heatmap not in self.heatmap_kinds:
            raise UploadError(422, f"heatmap {heatmap!r} is not available here; choose one of {self.heatmap_kinds}")
        t0 = time.perf_counter()
        read, read_notes = self._read_all(uploads, lateralities, views, limits, decoder)
        t_read = time.perf_counter()
        preds = self._predict(read, heatmap)
        t_model = time.perf_counter()
        result = self._assemble(read, preds)
        result["notes"].extend(read_notes)
        files = self._render(read, preds, limits) if store is not None or inline else {}
        t_render = time.perf_counter()
        if files:
            self._attach_images(result, files, store, inline)
        result["timings_ms"] = {
            "read": round((t_read - t0) * 1e3, 1),
            "model": round((t_model - t_read) * 1e3, 1),
            "render": round((t_render - t_model) * 1e3, 1),
        }
        return result

    def _read_all(
        self,
        uploads: Sequence[UploadedFile],
        lateralities: Sequence[str],
        views: Sequence[str],
        limits: ExamLimits,
        decoder: DecodePool | None = None,
    ) -> tuple[list[_ReadView], list[str]]:
        """The uploads read and checked, and notes on what reading decided (guessed sides undone)."""
        errors: list[dict[str, Any]] = []
        out: list[_ReadView] = []
        for i, up in enumerate(uploads):
            try:
                out.append(self._read_one(up, _at(lateralities, i), _at(views, i), limits, decoder))
            except (MammogramReadError, ValueError) as exc:
                errors.append({"file": up.index, "filename": up.filename, "error": str(exc)})
        seen: dict[tuple[str, str], str] = {}
        guessed_twice = _clear_clashing_guesses(out)
        for rv in out:
            lat, view = rv.meta.laterality, rv.meta.view
            if lat and view:
                if (lat, view) in seen:
                    errors.append(
                        {
                            "file": rv.upload.index,
                            "filename": rv.upload.filename,
                            "error": f"{rv.upload.filename}: a second {lat} {view} view (also {seen[(lat, view)]}); "
                            "an exam holds each view once - upload the exams separately",
                        }
                    )
                seen[(lat, view)] = rv.upload.filename
        if errors:
            first = errors[0]["error"]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise UploadError(422, f"rejected: {first}{more}", errors=errors)
        return out, guessed_twice

    def _read_one(
        self, up: UploadedFile, laterality: str, view: str, limits: ExamLimits, decoder: DecodePool | None = None
    ) -> _ReadView:
        item = InputItem(path=Path(up.filename), image_id=f"view{up.index + 1}", source="upload")
        reader = self.models.reader  # the members prepare alike (EnsemblePredictor's rule): one read for all
        if decoder is not None:  # in a capped worker process: a crash costs this upload only
            pixels, meta = decoder.read(up.data, str(item.path), reader.reader_options)
        else:
            pixels, meta = reader.read(item, data=up.data)
        if min(pixels.shape) < limits.min_side:
            raise ValueError(
                f"{up.filename}: image too small ({pixels.shape[0]} x {pixels.shape[1]} pixels); a mammogram needs "
                f"at least {limits.min_side} pixels on each side"
            )
        overrides = _form_overrides(up.filename, meta, laterality, view)
        if not (overrides.get("laterality") or meta.laterality):
            # neither the file nor the form says which breast: guess it from the image (the chest wall's side),
            # so the view counts in the breast/exam results; the response marks it (laterality_source "guess")
            # and the viewer lets the user correct it
            extra = dict(overrides.get("extra", meta.extra))
            extra["laterality_source"] = GUESSED
            overrides.update(laterality=guess_laterality(pixels), extra=extra)
        return _ReadView(up, item, pixels, dataclasses.replace(meta, **overrides))

    def _predict(self, read: list[_ReadView], heatmap: str) -> list[Prediction]:
        """The ensemble's prediction of each view (members' predictions under `members`, mean heatmaps)."""
        keep = heatmap in ("patch", "both")  # patch maps in another geometry re-prepare the original pixels
        try:
            batch = [self.models.reader.prepare(rv.item, rv.pixels, rv.meta, keep_pixels=keep) for rv in read]
        except ValueError as exc:  # PreprocessError: e.g. a blank image
            raise UploadError(422, f"rejected: {exc}") from None
        if self.models.pairs_views:
            # one upload = one woman's exam: a bilateral model sees each view beside the other breast's
            attach_partners(batch, default_patient="upload")
        with self._model_lock:
            return self.models.predict_prepared(batch, heatmap)  # type: ignore[arg-type]

    def _assemble(self, read: list[_ReadView], preds: list[Prediction]) -> dict[str, Any]:
        from mammokit.metrics.calibration import apply_calibration

        single = not self.models.is_ensemble
        views = []
        for rv, pred in zip(read, preds, strict=True):
            members = self.models.member_records(pred)
            meta = rv.meta
            views.append(
                {
                    "index": rv.upload.index,
                    "filename": rv.upload.filename,
                    "format": meta.source_format,
                    "laterality": meta.laterality,
                    "view": meta.view,
                    "laterality_source": meta.extra.get("laterality_source"),
                    "view_source": meta.extra.get("view_source"),
                    "photometric": meta.photometric,
                    "spacing_mm": list(meta.spacing_mm) if meta.spacing_mm else None,
                    "height": meta.height,
                    "width": meta.width,
                    # > 1: the breast was larger than the model's canvas and was shrunk by this factor to fit
                    "fit_scale": round(pred.fit_scale, 4),
                    # bilateral models: "contralateral" or "single" (no same-view film of the other breast)
                    "context": pred.context,
                    # ensemble = the mean over runs of each probability, as engine.evaluate.ensemble_predictions
                    "prob_malignant": round(pred.prob_malignant, 6),
                    "prob_uncalibrated": round(pred.prob_uncalibrated, 6),
                    "call": members[0]["call"] if single else None,
                    "threshold": members[0]["threshold"] if single else None,
                    "models": members,
                }
            )
        threshold_cal = None
        if single:
            p = self.models.first
            threshold_cal = float(apply_calibration(p.threshold, p.calibration)) if p.calibration else p.threshold
        breasts, exam, notes = _aggregates(views, self.aggregate, threshold_cal)
        if not single:
            notes.append(NO_THRESHOLD_NOTE)
        guessed = [v for v in views if v["laterality_source"] == GUESSED]
        if guessed:
            notes.append(
                f"the side (L/R) of {len(guessed)} view(s) was guessed from the image (the chest wall's side), as the "
                "file does not record it: check it, and correct it in the viewer or with the laterality form field"
            )
        alone = [v for v in views if v["context"] == "single"]
        if alone:
            notes.append(
                f"{len(alone)} view(s) have no same-view film of the other breast in this upload: the model saw them "
                "alone (context single); upload both breasts' views together for the comparison it was trained with"
            )
        shrunk = [v for v in views if is_shrunk(v["fit_scale"])]
        for v in shrunk:  # the upload's position only: file names are never logged by the service
            log.warning("upload view %d: breast larger than the canvas, shrunk %.2fx", v["index"], v["fit_scale"])
        if shrunk:
            notes.append(
                f"{len(shrunk)} view(s) show a breast larger than the model's canvas: shrunk to fit, by up to "
                f"{max(v['fit_scale'] for v in shrunk):.2f}x (fit_scale); small findings are then smaller to the model"
            )
        return {
            "models": self.model_summaries(),
            "ensemble": not single,
            "aggregate": self.aggregate,
            "threshold_calibrated": threshold_cal,
            "views": views,
            "breasts": breasts,
            "exam": exam,
            "notes": notes,
        }

    def _render(self, read: list[_ReadView], preds: list[Prediction], limits: ExamLimits) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        for i, (rv, pred) in enumerate(zip(read, preds, strict=True)):
            for name, png in render_view_pngs(rv.pixels, pred.heatmaps, limits.display_max_side).items():
                files[f"views/{i}/{name}"] = png
        return files

    @staticmethod
    def _attach_images(
        result: dict[str, Any], files: dict[str, bytes], store: ResultStore | None, inline: bool
    ) -> None:
        result_id = store.put(files) if store is not None and not inline else None
        result["result_id"] = result_id
        if result_id is not None:
            result["expires_in_s"] = store.ttl_s if store is not None else None

        def link(name: str) -> str:
            if inline:
                return "data:image/png;base64," + base64.b64encode(files[name]).decode("ascii")
            return f"/v1/results/{result_id}/{name}"

        for i, view in enumerate(result["views"]):
            prefix = f"views/{i}/"
            view["image_url"] = link(prefix + "image.png")
            view["heatmaps"] = {
                name[len(prefix) + len("heatmap_") : -len(".png")]: link(name)
                for name in sorted(files)
                if name.startswith(prefix + "heatmap_")
            }


def render_view_pngs(pixels: np.ndarray, heatmaps: dict[str, np.ndarray], max_side: int) -> dict[str, bytes]:
    """The view as a windowed grey PNG, and each heatmap as a grey+alpha PNG, both scaled to `max_side`.

    Heatmap PNG: luminance = round(255 * heat) for heat in [0, 1] (the viewer applies the colour map), alpha 0
    where the map has no value (NaN: outside what the model saw) and 255 elsewhere.
    """
    from PIL import Image

    from mammokit.explain.overlay import window_to_u8

    h, w = pixels.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = Image.fromarray(window_to_u8(pixels))
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.BOX)
    out = {"image.png": _png(grey)}
    for kind, heat in heatmaps.items():
        heat = np.asarray(heat, dtype=np.float32)
        valid = np.isfinite(heat)
        level = np.clip(np.nan_to_num(heat, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        la = Image.merge("LA", (Image.fromarray(level), Image.fromarray(valid.astype(np.uint8) * 255)))
        if la.size != size:
            la = la.resize(size, Image.Resampling.BOX)
        out[f"heatmap_{kind}.png"] = _png(la)
    return out


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # speed over size: these live in memory for minutes
    return buf.getvalue()


def _at(values: Sequence[str], i: int) -> str:
    return values[i].strip().upper() if i < len(values) and values[i] else ""


GUESSED = "guess"  # laterality_source of a laterality guessed from the image (geometry.guess_laterality)


def _clear_clashing_guesses(read: list[_ReadView]) -> list[str]:
    """Undo guessed lateralities that would put two views of one breast and view in the exam; notes saying so.

    A guess must never make an upload fail (two same-view films guessed to one side mean the guess, not the
    exam, is wrong): those views go back to "laterality unknown" and are left out of the breast/exam results.
    """
    notes = []
    by_key: dict[tuple[str, str | None], list[_ReadView]] = {}
    for rv in read:
        by_key.setdefault((str(rv.meta.laterality), rv.meta.view), []).append(rv)
    for (lat, view), group in by_key.items():
        guessed = [rv for rv in group if rv.meta.extra.get("laterality_source") == GUESSED]
        if len(group) > 1 and guessed:
            for rv in guessed:
                extra = {k: v for k, v in rv.meta.extra.items() if k != "laterality_source"}
                rv.meta = dataclasses.replace(rv.meta, laterality=None, extra=extra)
            notes.append(
                f"{len(guessed)} view(s) looked like the {lat} {view or 'same'} view of another file; their side is "
                "left unknown: set it in the viewer or as the laterality form field"
            )
    return notes


def _form_overrides(filename: str, meta: MammoMeta, laterality: str, view: str) -> dict[str, Any]:
    """Laterality/view from the form where the file has none; a form value that contradicts the file is an error."""
    out: dict[str, Any] = {}
    extra = dict(meta.extra)
    fields = (
        ("laterality", laterality, ("L", "R"), "laterality must be L or R, got {!r}"),
        ("view", view, KNOWN_VIEWS, "unknown view {!r}; use one of " + ", ".join(sorted(KNOWN_VIEWS))),
    )
    for field, given, allowed, bad in fields:
        if not given:
            continue
        if given not in allowed:
            raise ValueError(f"{filename}: " + bad.format(given))
        in_file = getattr(meta, field)
        if in_file and in_file != given:
            raise ValueError(
                f"{filename}: the form says {field} {given} but the file says {in_file} "
                f"({meta.extra.get(field + '_source')}); leave the form field empty to use the file's"
            )
        if not in_file:
            out[field] = given
            extra[field + "_source"] = "form"
    if out:
        out["extra"] = extra
    return out


def _aggregates(
    views: list[dict[str, Any]], how: str, threshold_cal: float | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[str]]:
    """Per-breast and per-exam p(malignant) by evaluate's rule (`metrics.levels`), over the views of known side."""
    from mammokit.metrics.levels import breast_scores, exam_score

    notes: list[str] = []
    known = [v for v in views if v["laterality"] in ("L", "R")]
    if len(known) < len(views):
        notes.append(
            f"{len(views) - len(known)} view(s) without laterality are left out of the breast/exam results; "
            "give the laterality as a form field"
        )
    if not known:
        return [], None, notes

    def call(prob: float) -> int | None:
        return None if threshold_cal is None else int(prob >= threshold_cal)

    per_breast = breast_scores([v["laterality"] for v in known], [v["prob_malignant"] for v in known], how)
    breasts = [
        {
            "laterality": b.laterality,
            "prob_malignant": round(b.prob_malignant, 6),
            "call": call(b.prob_malignant),
            "n_views": b.n_images,
        }
        for b in per_breast
    ]
    whole = exam_score(per_breast)
    exam = {
        "prob_malignant": round(whole.prob_malignant, 6),
        "call": call(whole.prob_malignant),
        "n_views": whole.n_images,
        "n_breasts": len(breasts),
    }
    return breasts, exam, notes
