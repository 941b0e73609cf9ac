"""Raw mammogram file -> p(malignant), the call at the run's threshold, heatmaps in the original geometry.

    from mammokit.infer.predictor import Predictor
    pred = Predictor.from_run("runs/whole").predict("case/1-1.dcm", heatmap="gradcam")
    pred.prob_malignant, pred.call, pred.laterality, pred.view, pred.heatmap.shape  # == original (H, W)

Everything the preprocessing needs comes from the run folder (`model.json`: PreprocessSpec,
mean/std, labels, threshold; `calibration.json` when present): the user never re-types it, and the
code path is the one `mammokit prepare` uses (`data.geometry.prepare_pixels`), so train == predict.

Backends for the probabilities (`infer.backend_select`): "auto" (the default: the fastest backend within the
accuracy bar on this machine, measured once per run folder and cached), "torch" (float32, any device),
"torch-bf16" (bfloat16 autocast on CPUs with AVX512-BF16/AMX), "onnx" (ONNX Runtime + NumPy, `RUN/model.onnx`;
this module and everything it imports on that path stay torch-free, so a deployment can ship without torch)
and "openvino" (where installed). Heatmaps are always computed by the float32 torch model (Grad-CAM needs
gradients), whichever backend computed the probabilities; `Predictor.heatmap_backend_name` says so.

Threshold and calibration: `card.threshold` is the operating point on the model's raw p(malignant);
`prob_malignant` is the calibrated probability when the run has `calibration.json` (the raw one is
kept as `prob_uncalibrated`). Calibration maps are strictly increasing, so `call = prob_uncalibrated >= threshold`
is the same decision as comparing the calibrated probability with the calibrated threshold.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammokit.infer.config import (
    AUTO,
    BACKEND_RUNTIME,
    BACKENDS,
    CAM_METHODS,
    DEFAULT_CAM_METHOD,
    HEATMAP_KINDS,
    PATCH_MALIGNANT,
    RUNTIME_INSTALL,
    TORCH_PRECISION,
    Backend,
    HeatmapKind,
)
from mammokit.infer.inputs import InputItem, collect_inputs
from mammokit.io.meta import MammoMeta
from mammokit.preprocess import PreprocessSpec, to_model_input
from mammokit.run import ModelCard, read_calibration, read_card

log = logging.getLogger(__name__)

HEATMAP_BACKEND = "torch"  # Grad-CAM and the patch maps: the float32 torch model, whatever scored the image


@dataclass(frozen=True)
class HeatmapOptions:
    """How heatmaps are made (docs/prediction.md, "Heatmaps").

    gradcam_layer: "auto" (the deepest stride-16 trunk stage, `infer.heatmap.default_cam_layer`) or a
        module name of the whole-image model, e.g. "top", "trunk", "trunk.body.layer3".
    gradcam_method: "gradcam", "gradcam++" or "hirescam".
    patch_stride: patch-map stride in prepared pixels (divides the patch trunk's stride; None = that stride).
    """

    gradcam_layer: str = "auto"
    gradcam_method: str = "hirescam"
    patch_stride: int | None = 16


@dataclass
class Prediction:
    """The result for one image. Heatmaps are on the original file's pixel grid (H, W)."""

    image_id: str
    path: str
    prob_malignant: float  # calibrated when the run has calibration.json, else = prob_uncalibrated
    call: int | None  # 1 = malignant at the run's operating threshold; None for an ensemble (no stored threshold)
    threshold: float | None  # the run's operating threshold on prob_uncalibrated; None for an ensemble
    laterality: str | None
    view: str | None
    prob_uncalibrated: float
    heatmap: np.ndarray | None = None  # the primary map (Grad-CAM if computed, else "patch_malignant")
    # "gradcam", "patch_malignant" (sum of the malignant classes), "patch_<class>" -> (H, W)
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    meta: MammoMeta | None = None
    # an ensemble's prediction (`infer.ensemble`): each member run's prediction of this image, without heatmaps
    members: list[Prediction] = field(default_factory=list)
    # > 1: the breast was larger than the model's canvas and was shrunk by this factor to fit (Geometry.fit_scale)
    fit_scale: float = 1.0
    # bilateral models (`infer.pairing`): "contralateral" (scored beside the other breast's same view) or
    # "single" (no partner in the call: scored with itself); None for a one-image model
    context: str | None = None

    def to_record(self) -> dict[str, Any]:
        """Flat, JSON-able row (no arrays, no header fields beyond laterality/view); call/threshold None for an
        ensemble."""
        return {
            "image_id": self.image_id,
            "input": self.path,
            "laterality": self.laterality,
            "view": self.view,
            "prob_malignant": round(float(self.prob_malignant), 6),
            "prob_uncalibrated": round(float(self.prob_uncalibrated), 6),
            "call": None if self.call is None else int(self.call),
            "threshold": None if self.threshold is None else float(self.threshold),
            "fit_scale": round(float(self.fit_scale), 4),
            "context": self.context,
        }


@dataclass
class PredictionFailure:
    """An input that could not be predicted; the batch goes on without it."""

    image_id: str
    path: str
    stage: str  # "read" (reading / preprocessing) or "model"
    error: str

    def to_record(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "input": self.path, "stage": self.stage, "error": self.error}


@dataclass
class PreparedImage:
    """One file read and prepared: model input, geometry back to the original, and what overlays need."""

    item: InputItem
    x: np.ndarray  # (1, H, W) float32 normalised network input, for Grad-CAM (scoring uses image_u16)
    image_u16: np.ndarray  # (H, W) prepared image
    geometry: Any  # data.geometry.Geometry: prepared grid -> original grid
    meta: MammoMeta
    pixels: np.ndarray | None = None  # (H0, W0) original pixels, kept only when heatmaps are wanted
    # bilateral models: the partner's prepared image and the context (`infer.pairing.attach_partners`)
    partner_u16: np.ndarray | None = None
    context: str | None = None


def _needs(heatmap: str, kind: str) -> bool:
    return heatmap == kind or heatmap == "both"


def _resolve_run(path: str | Path | None, relative_to: Path) -> Path | None:
    """A run path as given, or relative to the run that names it (model.json's parent_run)."""
    if not path:
        return None
    p = Path(path).expanduser()
    for candidate in (p, relative_to / p, relative_to.parent / p):
        if (candidate / "model.json").is_file():
            return candidate
    return None


class _TorchBackend:
    """The run's network through the inference core (`TorchScorer`), plus Grad-CAM on the same network.

    Grad-CAM runs the network in float32 even when the scorer computes p(malignant) under bf16 autocast
    (the autocast is entered by `TorchScorer.prob_malignant` only).
    """

    def __init__(self, scorer: Any, positive: Sequence[int]) -> None:
        self.scorer = scorer
        self.device = self.scorer.device
        self.positive = list(positive)
        self._gradcam: dict[tuple[str, str], Any] = {}

    @classmethod
    def from_run(cls, run_dir: Path, device: str, channels_last: bool, precision: str = "fp32") -> _TorchBackend:
        from mammokit.scoring.core import TorchScorer

        scorer = TorchScorer.from_run(run_dir, device, channels_last=channels_last, precision=precision)
        return cls(scorer, read_card(run_dir).positive_indices)

    def prob_malignant(self, x: np.ndarray) -> np.ndarray:
        """float32 (N, 1, H, W) in uint16 units -> (N,) p(malignant)."""
        return self.scorer.prob_malignant(x)

    def gradcam(
        self, x: np.ndarray, layer: str = "auto", method: str = DEFAULT_CAM_METHOD, flips: bool = False
    ) -> np.ndarray:
        """(B, 1, H, W) normalised model input -> (B, H, W) class activation maps in [0, 1] (GradCamRunner).

        flips: average over the four flips of the input, as flip TTA averages p(malignant).
        """
        from mammokit.infer.heatmap import GradCamRunner

        t = self.scorer.tensor(x)
        if (layer, method) not in self._gradcam:
            self._gradcam[layer, method] = GradCamRunner(self.scorer.net, self.positive, t, layer=layer, method=method)
        return self._gradcam[layer, method](t, flips=flips)

    def gradcam_layer_name(self, layer: str = "auto") -> str:
        from mammokit.infer.heatmap import resolve_cam_layer

        return resolve_cam_layer(self.scorer.net, layer)[0]


class _PatchHeatmapper:
    """The patch run used for the paper's heatmaps, with its own preprocessing where it differs."""

    def __init__(self, run_dir: Path, device: Any, image_spec: PreprocessSpec) -> None:
        from mammokit.run import load_model

        self.run_dir = run_dir
        self.model, self.card = load_model(run_dir, device)
        self.device = device
        if self.card.task != "patch":
            raise ValueError(f"{run_dir} is a {self.card.task!r} run; patch heatmaps need a patch-classifier run")
        self.patch_hw = (self.card.input.height, self.card.input.width)
        spec = self.card.input.preprocess
        # A patch run's PreprocessSpec describes the prepared images its patches were cut from. When
        # it only records the patch size itself, the whole-image run's geometry is the one to use.
        self.spec = image_spec if (spec.height, spec.width) == self.patch_hw else spec
        self.same_geometry = self.spec == image_spec
        self.classes = list(self.card.labels)

    def maps(self, x: np.ndarray, stride: int | None = None) -> np.ndarray:
        """(B, 1, H, W) normalised with this run's mean/std -> (B, n_classes, H, W) probabilities."""
        import torch

        from mammokit.scoring.patch_maps import patch_probability_maps

        return patch_probability_maps(self.model, torch.from_numpy(x).to(self.device), self.patch_hw, stride)


class FilePredictions:
    """`predict` (one file) and `predict_many` (a stream that goes on past bad files) for a single run
    (`Predictor`) and an ensemble (`infer.ensemble.EnsemblePredictor`) alike.

    A subclass provides `reader` (the `Predictor` whose preprocessing reads and prepares every file),
    `check_heatmap` and `predict_prepared`.
    """

    reader: Predictor

    @property
    def pairs_views(self) -> bool:
        """Whether a model here is bilateral: each file is then scored beside its partner (`infer.pairing`)."""
        raise NotImplementedError

    def check_heatmap(self, heatmap: str) -> None:
        raise NotImplementedError

    def predict_prepared(self, batch: Sequence[PreparedImage], heatmap: HeatmapKind = "none") -> list[Prediction]:
        raise NotImplementedError

    def predict(
        self, image_path: str | Path, heatmap: HeatmapKind = "none", *, image_id: str | None = None
    ) -> Prediction:
        """Predict one file; errors propagate (use `predict_many` for batches that must go on)."""
        self.check_heatmap(heatmap)
        path = Path(image_path)
        item = InputItem(path=path, image_id=image_id or path.stem, source=str(path))
        prepared = self.reader.load_image(item, keep_pixels=heatmap != "none")
        return self.predict_prepared([prepared], heatmap)[0]

    def predict_many(
        self,
        inputs: Iterable[str | Path | InputItem],
        heatmap: HeatmapKind = "none",
        *,
        batch_size: int = 4,
        workers: int = 0,
        keep_pixels: bool | None = None,
        progress: bool = False,
    ) -> Iterator[tuple[Prediction | PredictionFailure, PreparedImage | None]]:
        """Predict a stream of files in batches; a bad file yields a `PredictionFailure` and the rest go on.

        Args:
            inputs: paths, folders/CSV lists (expanded by `collect_inputs`) or `InputItem`s.
            heatmap: "none", "gradcam", "patch" or "both".
            batch_size: images per forward pass.
            workers: reader processes (decoding runs isolated from this process; 0 = one).
            keep_pixels: keep the original pixels in the yielded `PreparedImage` (for overlays);
                default: when heatmaps are requested.
            progress: show a tqdm progress bar on stderr.

        Yields:
            `(result, prepared)`: first a failure for each input `collect_inputs` refused (stage "input"),
            then the others in input order; `prepared` is None for failures.
        """
        self.check_heatmap(heatmap)
        yield from predict_stream(
            self.reader, inputs, heatmap, self.predict_prepared,
            batch_size=batch_size, workers=workers, keep_pixels=keep_pixels, progress=progress,
            pair=self.pairs_views,
        )  # fmt: skip


class Predictor(FilePredictions):
    """Predict whole-image p(malignant) for mammogram files with a trained run folder.

    Build with `Predictor.from_run`; then `predict(path)` for one file or `predict_many(paths)` for a
    batch stream that reports bad files and goes on.
    """

    def __init__(
        self,
        run_dir: Path,
        card: ModelCard,
        backend: Any,
        backend_name: Backend,
        calibration: dict[str, Any] | None,
        patch_run: Path | None = None,
        tta: bool | None = None,
        assume_pixel_spacing: float | None = None,
        heatmap_options: HeatmapOptions | None = None,
        *,
        device: str = "auto",
        channels_last: bool = True,
        selection: Any = None,
        requested_backend: str | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.device = device
        self.channels_last = channels_last
        self.selection = selection  # backend_select.Selection when backend="auto" chose, else None
        self.requested_backend = requested_backend or backend_name
        self._heatmap_torch: _TorchBackend | None = backend if isinstance(backend, _TorchBackend) else None
        self.assume_pixel_spacing = assume_pixel_spacing
        self.heatmap_options = heatmap_options or HeatmapOptions()
        self.card = card
        self.backend = backend
        self.backend_name = backend_name
        self.calibration = calibration
        self.spec: PreprocessSpec = card.input.preprocess
        self.threshold = float(card.threshold)
        self.run_name = run_dir.resolve().name
        self._patch_run = patch_run
        self._patch: _PatchHeatmapper | None = None
        # Calibration maps were fitted on either plain or flip-averaged probabilities (`tta` in
        # calibration.json, written by `mammokit evaluate`); by default predict the same way.
        cal_tta = bool(calibration.get("tta", False)) if calibration else False
        self.tta = cal_tta if tta is None else bool(tta)
        if calibration and self.tta != cal_tta:
            log.warning("calibration.json was fitted with tta=%s but predicting with tta=%s", cal_tta, self.tta)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        device: str = "auto",
        backend: Backend = AUTO,
        *,
        patch_run: str | Path | None = None,
        channels_last: bool = True,
        tta: bool | None = None,
        assume_pixel_spacing: float | None = None,
        heatmap_options: HeatmapOptions | None = None,
    ) -> Predictor:
        """Load a whole-image run for prediction.

        Args:
            run_dir: the run folder (holds model.json + model.safetensors, and model.onnx for "onnx").
            device: "auto", "cpu", "cuda", "cuda:1", "mps".
            backend: "auto" (default: the fastest backend within the accuracy bar on this machine,
                `infer.backend_select`; measured once, cached in RUN/cache), "torch" (float32), "torch-bf16",
                "onnx" (ONNX Runtime, no torch import; no heatmaps) or "openvino" (where installed).
            patch_run: patch-classifier run for the paper's patch heatmaps; default: the run's
                `parent_run` from model.json.
            channels_last: torch backend only: NHWC memory format (1.5-1.9x faster than NCHW on CPU
                in benchmarks/bench_predict.py; the numbers are identical up to float rounding).
            tta: average p(malignant) over the four flips (the paper's test-time augmentation); None = as the run's
                calibration.json was fitted (plain when there is none).
            assume_pixel_spacing: source mm per pixel for files without a spacing tag; needed by a run
                prepared in physical-scale mode (`preprocess.pixel_spacing`) for PNG/PGM/tag-less DICOM input.
            heatmap_options: Grad-CAM layer and method, patch-map stride (`HeatmapOptions`).
        """
        run_dir = Path(run_dir)
        card = read_card(run_dir)
        if card.task != "whole":
            raise ValueError(
                f"{run_dir} is a {card.task!r} run; prediction needs a whole-image run "
                "(a patch run is used for heatmaps with --patch-run)"
            )
        if card.input.preprocess.height != card.input.height or card.input.preprocess.width != card.input.width:
            raise ValueError(
                f"{run_dir}/model.json: input size {card.input.height}x{card.input.width} differs from its "
                f"preprocess size {card.input.preprocess.height}x{card.input.preprocess.width}"
            )
        impl, name, selection = _load_backend(run_dir, card, device, backend, channels_last)
        patch = Path(patch_run) if patch_run else _resolve_run(card.parent_run, run_dir)
        if patch_run and not (patch / "model.json").is_file():
            raise FileNotFoundError(f"--patch-run {patch_run}: no model.json there; pass a patch-classifier run folder")
        return cls(
            run_dir, card, impl, name, read_calibration(run_dir), patch, tta, assume_pixel_spacing, heatmap_options,
            device=device, channels_last=channels_last, selection=selection, requested_backend=backend,
        )  # fmt: skip

    @property
    def pairs_views(self) -> bool:
        return self.card.input.channels == 2

    # ---- reading (NumPy only; safe to run in threads) ---------------------------------------

    @property
    def reader(self) -> Predictor:
        """A single run reads its own files."""
        return self

    def load_image(
        self, item: InputItem | str | Path, *, keep_pixels: bool = False, data: bytes | None = None
    ) -> PreparedImage:
        """Read a file (or `data`, the file's bytes held in memory) and prepare it as training did."""
        if not isinstance(item, InputItem):
            item = InputItem(path=Path(item), image_id=Path(item).stem, source=str(item))
        pixels, meta = self.read(item, data=data)
        return self.prepare(item, pixels, meta, keep_pixels=keep_pixels)

    @property
    def reader_options(self) -> dict[str, Any]:
        """The `read_mammogram` options this run was trained with (runs with equal options can share a read)."""
        return {
            "voi": self.spec.voi,
            "window_index": self.spec.window_index,
            "allow_for_processing": self.spec.allow_for_processing,
        }

    def prepares_like(self, other: Predictor) -> bool:
        """True when `other.prepare` gives the same `PreparedImage` as ours for any read (same reader options,
        `PreprocessSpec` apart from provenance, input normalisation and assumed spacing): one can serve both."""
        from mammokit.preprocess import spec_differences

        mine, theirs = self.card.input, other.card.input
        return (
            self.reader_options == other.reader_options
            and not spec_differences(self.spec, other.spec)
            and (mine.pixel_mean, mine.pixel_std) == (theirs.pixel_mean, theirs.pixel_std)
            and self.assume_pixel_spacing == other.assume_pixel_spacing
        )

    def read(self, item: InputItem, *, data: bytes | None = None) -> tuple[np.ndarray, MammoMeta]:
        """`read_mammogram` with this run's reader options; `data` = the file's bytes (nothing touches the disk)."""
        from mammokit.io.dicom import read_mammogram, read_mammogram_bytes

        if data is not None:
            return read_mammogram_bytes(data, name=str(item.path), **self.reader_options)
        return read_mammogram(item.path, **self.reader_options)

    def prepare(
        self, item: InputItem, pixels: np.ndarray, meta: MammoMeta, *, keep_pixels: bool = False
    ) -> PreparedImage:
        """Raw pixels + meta (from `read`) -> the model input, prepared exactly as the run's training images."""
        from mammokit.data.geometry import prepare_pixels, resolve_spacing

        if self.spec.pixel_spacing is not None:
            # the same rule as `mammokit prepare` (file tag, else the user's value); SpacingError otherwise
            spacing, _ = resolve_spacing(meta.spacing_mm, assumed=self.assume_pixel_spacing)
            meta = dataclasses.replace(meta, spacing_mm=spacing)
        image_u16, geometry = prepare_pixels(pixels, meta, self.spec)
        x = to_model_input(image_u16, self.card.input.pixel_mean, self.card.input.pixel_std)
        return PreparedImage(item, x, image_u16, geometry, meta, pixels if keep_pixels else None)

    # ---- model ----------------------------------------------------------------------------

    def _prob_uncalibrated(self, batch: Sequence[PreparedImage]) -> np.ndarray:
        """(B,) p(malignant) of prepared images through the inference core (flip-averaged with TTA)."""
        from mammokit.infer.pairing import pair_input
        from mammokit.scoring.core import images_to_input, score

        images = pair_input(batch) if self.pairs_views else [p.image_u16 for p in batch]
        return score(self.backend.prob_malignant, images_to_input(images), self.tta)

    def _calibrate(self, prob_uncalibrated: np.ndarray) -> np.ndarray:
        if self.calibration is None:
            return prob_uncalibrated
        from mammokit.metrics.calibration import apply_calibration

        return np.asarray(apply_calibration(prob_uncalibrated, self.calibration), dtype=np.float64)

    def _patch_heatmapper(self) -> _PatchHeatmapper:
        if self._patch is None:
            if self._patch_run is None:
                raise ValueError(
                    f"patch heatmaps need the patch-classifier run: {self.run_dir}/model.json names no "
                    "parent_run (or it is not found); pass --patch-run PATCH_RUN"
                )
            self._patch = _PatchHeatmapper(self._patch_run, self.heatmap_backend.device, self.spec)
        return self._patch

    @property
    def heatmap_backend_name(self) -> str:
        """The backend that computes heatmaps: always the float32 torch model (Grad-CAM needs gradients)."""
        return HEATMAP_BACKEND

    @property
    def heatmap_backend(self) -> _TorchBackend:
        """The float32 torch model for Grad-CAM (the scoring backend itself when it is torch; else loaded once)."""
        if self._heatmap_torch is None:
            self._heatmap_torch = _TorchBackend.from_run(self.run_dir, self.device, self.channels_last)
        return self._heatmap_torch

    def check_heatmap(self, heatmap: str) -> None:
        """Fail early (before reading any image) when a heatmap kind cannot be made."""
        if heatmap not in HEATMAP_KINDS:
            raise ValueError(f"heatmap must be one of {HEATMAP_KINDS}, got {heatmap!r}")
        if heatmap != "none" and self.requested_backend == "onnx":
            raise ValueError(
                "--backend onnx is the torch-free path and makes no heatmaps (Grad-CAM needs torch's gradients); "
                "use --backend auto or torch for heatmaps"
            )
        if heatmap != "none" and self._heatmap_torch is None:
            from mammokit.infer.backend_select import runtime_available

            if not runtime_available("torch"):
                raise ValueError("heatmaps need torch (Grad-CAM needs gradients); install torch or use --heatmap none")
        if _needs(heatmap, "patch"):
            self._patch_heatmapper()
        if _needs(heatmap, "gradcam"):
            if self.heatmap_options.gradcam_method not in CAM_METHODS:
                raise ValueError(
                    f"gradcam method must be one of {sorted(CAM_METHODS)}, got {self.heatmap_options.gradcam_method!r}"
                )
            self.heatmap_backend.gradcam_layer_name(self.heatmap_options.gradcam_layer)  # unknown layer: fail now

    def predict_prepared(self, batch: Sequence[PreparedImage], heatmap: HeatmapKind = "none") -> list[Prediction]:
        """Run the model (and heatmaps) on already prepared images of one batch."""
        self.check_heatmap(heatmap)
        prob_uncalibrated = self._prob_uncalibrated(batch)
        prob = self._calibrate(prob_uncalibrated)
        maps: list[dict[str, np.ndarray]] = [{} for _ in batch]
        if _needs(heatmap, "gradcam"):
            opts = self.heatmap_options
            x = np.stack([p.x for p in batch])  # normalised network input (B, 1, H, W)
            if self.pairs_views:  # (B, 2, H, W); the map is of channel 0, the image itself
                mean, std = self.card.input.pixel_mean, self.card.input.pixel_std
                partners = [to_model_input(p.partner_u16, mean, std) if p.partner_u16 is not None else p.x
                            for p in batch]  # fmt: skip
                x = np.concatenate([x, np.stack(partners)], axis=1)
            # with flip TTA the map is averaged over the same four flips as p(malignant)
            cams = self.heatmap_backend.gradcam(x, opts.gradcam_layer, opts.gradcam_method, flips=self.tta)  # (B, H, W)
            for m, p, cam in zip(maps, batch, cams, strict=True):
                m["gradcam"] = self._to_original(cam, p)
        if _needs(heatmap, "patch"):
            self._add_patch_maps(batch, maps)
        out = []
        for i, p in enumerate(batch):
            primary = maps[i].get("gradcam")
            if primary is None and maps[i]:
                primary = maps[i].get(self._primary_patch_key())
            out.append(
                Prediction(
                    image_id=p.item.image_id,
                    path=str(p.item.path),
                    prob_malignant=float(prob[i]),
                    call=int(prob_uncalibrated[i] >= self.threshold),
                    threshold=self.threshold,
                    laterality=p.meta.laterality,
                    view=p.meta.view,
                    prob_uncalibrated=float(prob_uncalibrated[i]),
                    heatmap=primary,
                    heatmaps=maps[i],
                    meta=p.meta,
                    fit_scale=float(getattr(p.geometry, "fit_scale", 1.0)),
                    context=(p.context or "single") if self.pairs_views else None,
                )
            )
        return out

    def _primary_patch_key(self) -> str:
        return PATCH_MALIGNANT

    def _add_patch_maps(self, batch: Sequence[PreparedImage], maps: list[dict[str, np.ndarray]]) -> None:
        ph = self._patch_heatmapper()
        if ph.same_geometry:
            prepared = [(p.image_u16, p.geometry) for p in batch]
        else:
            from mammokit.data.geometry import prepare_pixels

            if any(p.pixels is None for p in batch):
                raise ValueError("patch heatmaps in another geometry need the original pixels (keep_pixels=True)")
            prepared = [prepare_pixels(p.pixels, p.meta, ph.spec) for p in batch]
        mean, std = ph.card.input.pixel_mean, ph.card.input.pixel_std
        x = np.stack([to_model_input(u16, mean, std) for u16, _ in prepared])
        from mammokit.scoring.patch_maps import malignant_map

        probs = ph.maps(x, self.heatmap_options.patch_stride)  # (B, n_classes, H, W)
        for m, (_, geometry), p, per_class in zip(maps, prepared, batch, probs, strict=True):
            m[PATCH_MALIGNANT] = self._to_original(malignant_map(per_class, ph.classes), p, geometry)
            for name, pmap in zip(ph.classes, per_class, strict=True):
                m[f"patch_{name}"] = self._to_original(pmap, p, geometry)

    @staticmethod
    def _to_original(heat: np.ndarray, prepared: PreparedImage, geometry: Any = None) -> np.ndarray:
        geometry = geometry if geometry is not None else prepared.geometry
        return np.asarray(geometry.to_original(np.asarray(heat, dtype=np.float32)), dtype=np.float32)

    def _read_stream(
        self, items: Sequence[InputItem], keep: bool, workers: int, prefetch: int
    ) -> Iterator[tuple[InputItem, PreparedImage | PredictionFailure]]:
        """Read and prepare `items` in input order, in `workers` (at least 1) reader *processes*.

        Files we were handed are decoded in child processes (`mammokit.utils.pool`): a decoder that panics or
        aborts, or a file that exhausts memory, costs that one file (a "read" failure), never the batch or the
        model in this process. At most 2 files per reader are in flight, so memory stays at a few decoded
        mammograms (~50 MB each for a 4500x2800 scan when heatmaps keep the original pixels).
        """
        import copy

        from mammokit.utils.pool import TaskFailed, run_isolated

        reader = copy.copy(self)  # the workers need the preprocessing only, not the model
        reader.backend, reader._patch, reader._heatmap_torch = None, None, None
        usable = [item for item in items if item.error is None]
        tasks = [(item, keep) for item in usable]
        for item in items:  # inputs collect_inputs already refused: reported, never read
            if item.error is not None:
                yield item, PredictionFailure(item.image_id, str(item.path), "input", item.error)
        for index, result in run_isolated(
            _read_task, tasks, workers=max(1, workers), initializer=_init_reader, initargs=(reader,), ordered=True
        ):
            item = usable[index]
            if isinstance(result, TaskFailed):
                # the reason goes with the result (errors.csv); the log gets its type only: the message names the
                # file and may quote a header value (issue 25: neither belongs in a log)
                log.warning("cannot read input %d (%s)", index + 1, result.reason.split(":", 1)[0])
                result = PredictionFailure(item.image_id, str(item.path), "read", result.reason)
            yield item, result


PredictBatch = Callable[[Sequence[PreparedImage], HeatmapKind], Sequence[Prediction]]


def predict_stream(
    reader: Predictor,
    inputs: Iterable[str | Path | InputItem],
    heatmap: HeatmapKind,
    predict_batch: PredictBatch,
    *,
    batch_size: int = 4,
    workers: int = 0,
    keep_pixels: bool | None = None,
    progress: bool = False,
    pair: bool = False,
) -> Iterator[tuple[Prediction | PredictionFailure, PreparedImage | None]]:
    """Read and prepare `inputs` with `reader`'s preprocessing, and predict them in batches with `predict_batch`.

    pair: a bilateral model: every file is read first, each is paired with the same view of the other breast
    among all the call's files (`infer.pairing`), then they are scored. The prepared images of the whole call
    are then held in memory (2 bytes a pixel: 2 MB per 1152x896 image).

    The batch loop behind `Predictor.predict_many` and `EnsemblePredictor.predict_many` (`infer.ensemble`), kept
    in one place so that one run and an ensemble read each file once and treat bad files alike: a file that
    cannot be read yields a "read" failure, a batch the model fails on is retried one image at a time so only the
    culprit yields a "model" failure, and the rest go on. Arguments and yields as in `Predictor.predict_many`.
    """
    given = list(inputs)
    if all(isinstance(i, InputItem) for i in given):
        items: list[InputItem] = given  # type: ignore[assignment]
    elif any(isinstance(i, InputItem) for i in given):
        raise TypeError("predict_many takes either InputItems or paths, not a mix")
    else:
        items = collect_inputs(given)  # type: ignore[arg-type]
    keep = heatmap != "none" if keep_pixels is None else keep_pixels
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), unit="img", desc="predict", disable=not progress)
    try:
        batch: list[PreparedImage] = []
        held: list[PreparedImage] = []  # pair=True: every prepared image of the call, paired before scoring
        for _item, prepared in reader._read_stream(items, keep, workers, prefetch=batch_size + workers):
            if isinstance(prepared, PredictionFailure):
                bar.update(1)
                yield prepared, None
                continue
            (held if pair else batch).append(prepared)
            if len(batch) >= batch_size:
                yield from _run_batch(predict_batch, batch, heatmap, bar)
                batch = []
        if held:
            from mammokit.infer.pairing import attach_partners

            attach_partners(held)
            for start in range(0, len(held), batch_size):
                yield from _run_batch(predict_batch, held[start : start + batch_size], heatmap, bar)
        if batch:
            yield from _run_batch(predict_batch, batch, heatmap, bar)
    finally:
        bar.close()


def _run_batch(
    predict_batch: PredictBatch, batch: list[PreparedImage], heatmap: HeatmapKind, bar: Any
) -> Iterator[tuple[Prediction | PredictionFailure, PreparedImage | None]]:
    try:
        results: list[Prediction | PredictionFailure] = list(predict_batch(batch, heatmap))
    except Exception as exc:
        if len(batch) == 1:
            log.warning("the model failed on one image (%s); reported with its result", type(exc).__name__)
            p = batch[0]
            error = f"{type(exc).__name__}: {exc}"
            results = [PredictionFailure(p.item.image_id, str(p.item.path), "model", error)]
        else:  # find the culprit: one at a time, so the others still get predicted
            for p in batch:
                yield from _run_batch(predict_batch, [p], heatmap, bar)
            return
    for r, p in zip(results, batch, strict=True):
        bar.update(1)
        yield r, (p if isinstance(r, Prediction) else None)


def _load_backend(
    run_dir: Path, card: ModelCard, device: str, backend: str, channels_last: bool
) -> tuple[Any, str, Any]:
    """(backend object, its name, the auto selection or None) for `Predictor.from_run`."""
    if backend in BACKEND_RUNTIME:  # a runtime named explicitly must be there (auto falls back by itself)
        from mammokit.infer.backend_select import runtime_available

        runtime = BACKEND_RUNTIME[backend]
        if not runtime_available(runtime):
            raise RuntimeError(
                f"--backend {backend} needs {runtime}, which is not installed (or does not import): "
                f"{RUNTIME_INSTALL[runtime]}, or use --backend auto, which picks among the runtimes installed"
            )
    if backend == "onnx":  # torch-free: RUN/model.onnx from `mammokit export` (auto's cache is auto's)
        from mammokit.infer.onnx import OnnxBackend, onnx_path_for

        return OnnxBackend(onnx_path_for(run_dir), device), "onnx", None
    if backend in TORCH_PRECISION:
        return _TorchBackend.from_run(run_dir, device, channels_last, TORCH_PRECISION[backend]), backend, None
    from mammokit.infer.backend_select import build_backend, ensure_export, runtime_available, select_backend

    if backend == "openvino":
        from mammokit.infer.export_cache import BackendCache

        onnx_path = ensure_export(BackendCache.open(run_dir), torch_available=runtime_available("torch"))
        if onnx_path is None:
            raise FileNotFoundError(f"--backend openvino needs the run's ONNX export, which cannot be made here: "
                                    f"run `mammokit export {run_dir}` where torch is installed")  # fmt: skip
        impl = build_backend("openvino", run_dir, device, channels_last=channels_last, onnx_path=onnx_path)
        return impl, backend, None
    if backend != AUTO:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    selection, impl = select_backend(run_dir, device, channels_last=channels_last)
    if selection.backend in TORCH_PRECISION:
        impl = _TorchBackend(impl, card.positive_indices)
    return impl, selection.backend, selection


# --- reader processes (see Predictor._read_stream) ---------------------------------------------------------------

_READER: Predictor | None = None


def _init_reader(reader: Predictor) -> None:
    global _READER
    _READER = reader


def _read_task(task: tuple[InputItem, bool]) -> PreparedImage:
    item, keep = task
    assert _READER is not None, "_init_reader runs first in every reader process"
    return _READER.load_image(item, keep_pixels=keep)
