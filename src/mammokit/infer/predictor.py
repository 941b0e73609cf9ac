"""Raw mammogram file -> p(malignant), the call at the run's threshold, heatmaps in the original geometry.

    from mammokit.infer.predictor import Predictor
    pred = Predictor.from_run("runs/whole").predict("case/1-1.dcm", heatmap="gradcam")
    pred.prob_malignant, pred.call, pred.laterality, pred.view, pred.heatmap.shape  # == original (H, W)

Everything the preprocessing needs comes from the run folder (`model.json`: PreprocessSpec,
mean/std, labels, threshold; `calibration.json` when present): the user never re-types it. The parts:
`infer.preprocessor.Preprocessor` reads and prepares files (the code path of `mammokit prepare`, so train ==
predict), `infer.backends` builds the `ScoringBackend`, `infer.batch` runs the batch loop and its reader
processes, `explain` makes the heatmaps and `infer.results` holds what comes back.

Backends for the probabilities (`infer.backends`, `infer.backend_select`): "auto" (the default: the fastest backend
within the accuracy bar on this machine, measured once per run folder and cached), "torch" (float32, any device),
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

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammokit.explain.patch import PatchHeatmapper, resolve_parent_run, to_original
from mammokit.infer.backends import ScoringBackend, TorchBackend, load_backend, runtime_available
from mammokit.infer.batch import FilePredictions, predict_stream
from mammokit.infer.config import AUTO, CAM_METHODS, HEATMAP_KINDS, PATCH_MALIGNANT, Backend, HeatmapKind
from mammokit.infer.inputs import InputItem
from mammokit.infer.preprocessor import Preprocessor
from mammokit.infer.results import HeatmapOptions, Prediction, PredictionFailure, PreparedImage
from mammokit.preprocess import PreprocessSpec
from mammokit.run import ModelCard, read_calibration, read_card

if TYPE_CHECKING:
    from mammokit.infer.backend_select import Selection

# the names this module has always offered (tests, docs, the CLI): the types live in infer.results / infer.batch
__all__ = [
    "HEATMAP_BACKEND", "FilePredictions", "HeatmapOptions", "InputItem", "Prediction", "PredictionFailure",
    "Predictor", "PreparedImage", "predict_stream",
]  # fmt: skip

log = logging.getLogger(__name__)

HEATMAP_BACKEND = "torch"  # Grad-CAM and the patch maps: the float32 torch model, whatever scored the image


def _needs(heatmap: str, kind: str) -> bool:
    return heatmap == kind or heatmap == "both"


class Predictor(FilePredictions):
    """Predict whole-image p(malignant) for mammogram files with a trained run folder.

    Build with `Predictor.from_run`; then `predict(path)` for one file or `predict_many(paths)` for a
    batch stream that reports bad files and goes on.
    """

    def __init__(
        self,
        run_dir: Path,
        card: ModelCard,
        backend: ScoringBackend,
        calibration: dict[str, Any] | None,
        patch_run: Path | None = None,
        tta: bool | None = None,
        assume_pixel_spacing: float | None = None,
        heatmap_options: HeatmapOptions | None = None,
        *,
        device: str = "auto",
        channels_last: bool = True,
        selection: Selection | None = None,
        requested_backend: str | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.device = device
        self.channels_last = channels_last
        self.selection = selection  # backend_select.Selection when backend="auto" chose, else None
        self.requested_backend = requested_backend or backend.name
        self._heatmap_torch: TorchBackend | None = backend if isinstance(backend, TorchBackend) else None
        self.heatmap_options = heatmap_options or HeatmapOptions()
        self.card = card
        self.backend = backend
        self.calibration = calibration
        self.preprocessor = Preprocessor.from_card(card, assume_pixel_spacing)  # what the reader processes get
        self.threshold = float(card.threshold)
        self.run_name = run_dir.resolve().name
        self._patch_run = patch_run
        self._patch: PatchHeatmapper | None = None
        # Calibration maps were fitted on either plain or flip-averaged probabilities (`tta` in
        # calibration.json, written by `mammokit evaluate`); by default predict the same way.
        cal_tta = bool(calibration.get("tta", False)) if calibration else False
        self.tta = cal_tta if tta is None else bool(tta)
        if calibration and self.tta != cal_tta:
            log.warning("calibration.json was fitted with tta=%s but predicting with tta=%s", cal_tta, self.tta)

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
        """Load a whole-image run for prediction (model.json is read once, here, and handed down).

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
        impl, selection = load_backend(run_dir, card, device, backend, channels_last)
        patch = Path(patch_run) if patch_run else resolve_parent_run(card.parent_run, run_dir)
        if patch_run and not (patch / "model.json").is_file():
            raise FileNotFoundError(f"--patch-run {patch_run}: no model.json there; pass a patch-classifier run folder")
        return cls(
            run_dir, card, impl, read_calibration(run_dir), patch, tta, assume_pixel_spacing, heatmap_options,
            device=device, channels_last=channels_last, selection=selection, requested_backend=backend,
        )  # fmt: skip

    @property
    def backend_name(self) -> str:
        """The backend that computes p(malignant) ("torch", "torch-bf16", "onnx", "openvino")."""
        return self.backend.name

    @property
    def spec(self) -> PreprocessSpec:
        return self.preprocessor.spec

    @property
    def assume_pixel_spacing(self) -> float | None:
        return self.preprocessor.assume_pixel_spacing

    @property
    def pairs_views(self) -> bool:
        return self.card.input.channels == 2

    @property
    def reader(self) -> Preprocessor:
        """A single run reads its own files."""
        return self.preprocessor

    def load_image(
        self, item: InputItem | str | Path, *, keep_pixels: bool = False, data: bytes | None = None
    ) -> PreparedImage:
        """Read a file (or its bytes) and prepare it as training did (`Preprocessor.load_image`)."""
        return self.preprocessor.load_image(item, keep_pixels=keep_pixels, data=data)

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

    def _patch_heatmapper(self) -> PatchHeatmapper:
        if self._patch is None:
            if self._patch_run is None:
                raise ValueError(
                    f"patch heatmaps need the patch-classifier run: {self.run_dir}/model.json names no "
                    "parent_run (or it is not found); pass --patch-run PATCH_RUN"
                )
            self._patch = PatchHeatmapper(self._patch_run, self.heatmap_backend.device, self.spec)
        return self._patch

    @property
    def heatmap_backend_name(self) -> str:
        """The backend that computes heatmaps: always the float32 torch model (Grad-CAM needs gradients)."""
        return HEATMAP_BACKEND

    @property
    def heatmap_backend(self) -> TorchBackend:
        """The float32 torch model for Grad-CAM (the scoring backend itself when it is torch; else loaded once)."""
        if self._heatmap_torch is None:
            self._heatmap_torch = TorchBackend.from_run(self.run_dir, self.device, self.channels_last, card=self.card)
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
        if heatmap != "none" and self._heatmap_torch is None and not runtime_available("torch"):
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
                normalise = self.preprocessor.normalise
                partners = [normalise(p.partner_u16) if p.partner_u16 is not None else p.x for p in batch]
                x = np.concatenate([x, np.stack(partners)], axis=1)
            # with flip TTA the map is averaged over the same four flips as p(malignant)
            cams = self.heatmap_backend.gradcam(x, opts.gradcam_layer, opts.gradcam_method, flips=self.tta)  # (B, H, W)
            for m, p, cam in zip(maps, batch, cams, strict=True):
                m["gradcam"] = to_original(cam, p.geometry)
        if _needs(heatmap, "patch"):
            images = [(p.image_u16, p.geometry, p.pixels, p.meta) for p in batch]
            patch_maps = self._patch_heatmapper().original_maps(images, self.heatmap_options.patch_stride)
            for m, more in zip(maps, patch_maps, strict=True):
                m.update(more)
        out = []
        for i, p in enumerate(batch):
            primary = maps[i].get("gradcam")
            if primary is None and maps[i]:
                primary = maps[i].get(PATCH_MALIGNANT)
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
                    fit_scale=float(p.geometry.fit_scale),
                    context=(p.context or "single") if self.pairs_views else None,
                )
            )
        return out
