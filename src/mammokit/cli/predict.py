"""`mammokit predict RUN INPUTS... --out DIR`: p(malignant), the call and heatmap overlays for new files.

Writes into DIR:
    predictions.csv / predictions.json   one row per image that was predicted
    errors.csv                           one row per input that failed (exit status 1 when any did)
    heatmaps/<image_id>_<kind>.png       image | overlay | colour bar, with the prediction (with --heatmap)
    heatmaps/<image_id>_<kind>.npy       the raw float32 map on the original image's pixel grid
    predict_config.yaml                  the resolved options

predictions.json is written last, and only when every input is done: a run stopped by a full disk (one line
naming the folder and the space available and needed, exit status 2) leaves neither predictions file, and a
rerun with more space writes them. `--backend auto` chooses among float32 backends only; `--precision bfloat16`
asks for bfloat16, and the precision used is in both predictions files (column / field `precision`).

The preprocessing (crop, flip, resize, normalisation) comes from the run folder; there is no flag
for it on purpose. Nothing from the DICOM header beyond laterality and view is written.

`--ensemble RUN2 [--ensemble RUN3 ...]` averages RUN and the further runs as `mammokit evaluate` and `serve` do
(`infer.ensemble`): p(malignant) and prob_uncalibrated are each the mean over the runs, heatmaps of each kind the mean
of the runs' maps; an ensemble has no stored threshold, so `call` and `threshold` are empty and each run's call
is in predictions.json. `model_run` and `backend` list the runs (and the backend each used), ';'-separated.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from mammokit.cli.common import (
    UserError,
    add_assume_pixel_spacing,
    add_batch_size,
    add_cache_dir,
    add_command,
    add_config_args,
    add_device,
    add_heatmap_options,
    add_out,
    add_workers,
    device_flag,
    load_cli_config,
)
from mammokit.infer.config import BACKENDS, HEATMAP_KINDS, PRECISIONS, PredictConfig

CSV_COLUMNS = (
    "image_id",
    "input",
    "laterality",
    "view",
    "prob_malignant",
    "prob_uncalibrated",
    "call",
    "threshold",
    "fit_scale",
    "context",  # bilateral models: contralateral | single (infer.pairing); empty for a one-image model
    "model_run",
    "backend",
    "precision",  # float32, or bfloat16 when asked (--precision): the compute precision of p(malignant)
    "heatmap_backend",
    "heatmaps",
)
ERROR_COLUMNS = ("image_id", "input", "stage", "error")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "predict",
        help="predict p(malignant) for new mammograms (DICOM/PNG/PGM/JPEG) with a trained run",
        description=(
            "Predict p(malignant) for each input image with a trained whole-image run. INPUTS are files, "
            "folders (searched recursively) or CSV lists with a 'path' column (and optional 'image_id'). "
            "The preprocessing comes from the run folder. Writes predictions.csv/json, errors.csv for "
            "inputs that failed (exit status 1 if any), and heatmap overlays in the original image geometry. "
            "With --ensemble, several runs are averaged into one prediction (the paper's model averaging)."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder of a whole-image model (holds model.json)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or CSV lists")
    p.add_argument(
        "--ensemble",
        action="append",
        type=Path,
        default=[],
        metavar="RUN",
        help="also average this run's predictions; repeat for more members. As in `mammokit evaluate` and `serve`: "
        "p(malignant) and the uncalibrated probability are each the mean over the runs and heatmaps the mean of "
        "their maps; an ensemble has no stored threshold, so the call column is empty (each run's call is in "
        "predictions.json). The runs must share the preprocessing (model.json input.preprocess); each file is "
        "read once for all of them",
    )
    add_out(p, help="output folder for predictions.csv/json, errors.csv and heatmaps/")
    add_config_args(p)
    add_device(p)
    add_cache_dir(p)
    add_batch_size(p)
    add_workers(p)
    p.add_argument(
        "--heatmap",
        choices=HEATMAP_KINDS,
        default=None,
        help="overlays to write: Grad-CAM of the whole-image model, the patch classifier's per-class maps, "
        "both, or none (default none)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="what computes p(malignant): auto (default: the fastest backend whose probabilities stay within the "
        "accuracy bar of float32 torch on this machine, measured once per model and "
        "machine and cached under --cache-dir; "
        "docs/prediction.md), torch (float32), torch-bf16 (bfloat16 autocast, CPUs with AVX512-BF16/AMX), "
        "onnx (needs RUN/model.onnx from `mammokit export`; torch is not imported; no heatmaps) or openvino "
        "(if installed). Heatmaps are always computed by the float32 torch model",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="compute precision of p(malignant) (default float32: the same numbers on every CPU, to float32 "
        "rounding; auto chooses among float32 backends only). bfloat16 = torch under bfloat16 autocast, faster on "
        "CPUs with AVX512-BF16/AMX, probabilities ~1e-3 away; recorded in predictions.csv/json",
    )
    p.add_argument(
        "--patch-run",
        default=None,
        metavar="RUN",
        help="patch-classifier run for --heatmap patch (default: the parent_run recorded in RUN/model.json)",
    )
    add_heatmap_options(p)
    p.add_argument(
        "--overlay-max-side",
        type=int,
        default=None,
        metavar="PX",
        help="downscale each half of the overlay PNGs so its longer side is at most PX (default 1536; 0 = original "
        "resolution); the .npy maps are always at the original resolution",
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average p(malignant) over the four flips (paper test-time augmentation); default: as the run's "
        "calibration.json was fitted, plain without one",
    )
    add_assume_pixel_spacing(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> PredictConfig:

    flags: dict[str, Any] = {
        "assume_pixel_spacing": args.assume_pixel_spacing,
        "heatmap": args.heatmap,
        "backend": args.backend,
        "precision": args.precision,
        "device": device_flag(args),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "patch_run": args.patch_run,
        "overlay_max_side": args.overlay_max_side,
        "gradcam_layer": args.gradcam_layer,
        "gradcam_method": args.gradcam_method,
        "patch_stride": args.patch_stride,
        "tta": args.tta,
    }
    return load_cli_config(PredictConfig, args, flags)


def run(args: argparse.Namespace) -> int:
    from mammokit.config import dump_yaml
    from mammokit.infer.config import resolve_precision
    from mammokit.infer.ensemble import EnsemblePredictor
    from mammokit.infer.export_cache import set_cache_root
    from mammokit.infer.inputs import InputError, collect_inputs
    from mammokit.infer.results import HeatmapOptions
    from mammokit.run import RunFolderError
    from mammokit.utils.atomic import atomic_write_text
    from mammokit.utils.diskfull import disk_full_as

    cfg = _config(args)
    backend, precision = resolve_precision(cfg.backend, cfg.precision)  # checked by cfg.validate() already
    cfg = dataclasses.replace(cfg, precision=precision)  # predict_config.yaml records the precision used
    out: Path = args.out
    try:
        items = collect_inputs(args.inputs, exclude=out)
    except InputError as exc:
        raise UserError(str(exc)) from None
    if not items:
        raise UserError("no inputs to predict")
    set_cache_root(args.cache_dir)  # --backend auto's cache: never written into a run folder
    try:
        options = HeatmapOptions(cfg.gradcam_layer, cfg.gradcam_method, cfg.patch_stride)
        ensemble = EnsemblePredictor.from_runs(
            [args.run, *args.ensemble],
            cfg.device,
            backend,  # each member picks (auto: float32 only) or checks its own backend, cached in its own folder
            patch_run=cfg.patch_run,
            channels_last=cfg.channels_last,
            tta=cfg.tta,
            assume_pixel_spacing=cfg.assume_pixel_spacing,
            heatmap_options=options,
        )
        # one run stays a plain Predictor (its outputs are exactly as before); several are averaged
        predictor: Any = ensemble if ensemble.is_ensemble else ensemble.first
        predictor.check_heatmap(cfg.heatmap)
    except (RunFolderError, FileNotFoundError, ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from None
    runs: dict[str, Any] = {"run": str(args.run)}
    if args.ensemble:
        runs["ensemble"] = [str(r) for r in args.ensemble]
    with disk_full_as(UserError, out):  # ENOSPC/EDQUOT anywhere: one line, exit 2, never a traceback
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "predict_config.yaml", dump_yaml({**runs, **dataclasses.asdict(cfg)}))
        progress = not args.no_progress and sys.stderr.isatty()  # a pipe or CI log gets no bar, as in prepare
        rows, errors = _predict_and_write(predictor, items, cfg, out, precision, progress=progress)
    logger = logging.getLogger(__name__)
    if ensemble.is_ensemble:
        logger.info("ensemble of %d runs (%s): %s", len(ensemble.predictors), predictor.run_name, _no_call_note())
    logger.info("%d image(s) predicted, %d failed; wrote %s", len(rows), len(errors), out / "predictions.csv")
    return 1 if errors else 0


OUTPUT_FILES = ("predictions.csv", "predictions.json", "errors.csv")  # the tables; predictions.json last
_TABLE_BYTES_PER_INPUT = 1024  # predictions.csv + .json + errors.csv per input, generously (bytes)


def _predict_and_write(
    predictor: Any, items: list, cfg: PredictConfig, out: Path, precision: str, *, progress: bool
) -> tuple[list, list]:
    """Predict every input, write heatmaps as they come and the tables at the end; a full disk stops it all.

    The tables of an earlier run in `out` are removed first and the new ones written only when every input is
    done, so a folder with predictions.json is complete; on a full disk the tables already written go again.
    """
    from mammokit.utils.diskfull import disk_full_guard

    tables = [out / name for name in OUTPUT_FILES]
    for path in tables:
        path.unlink(missing_ok=True)
    done = {"inputs": 0, "heatmap_bytes": 0}

    def still_needed() -> int:  # heatmaps at the mean size so far for the inputs left, plus the tables
        per_input = done["heatmap_bytes"] / done["inputs"] if done["inputs"] else 0.0
        return int((len(items) - done["inputs"]) * per_input + len(items) * _TABLE_BYTES_PER_INPUT)

    with disk_full_guard(out, needed=still_needed, cleanup=tables):
        rows, errors = _predict_all(predictor, items, cfg, out, progress=progress, done=done, precision=precision)
        _write_outputs(out, predictor, rows, errors, precision)
    return rows, errors


def _predict_all(
    predictor: Any,
    items: list,
    cfg: PredictConfig,
    out: Path,
    *,
    progress: bool,
    done: dict[str, int] | None = None,
    precision: str = "float32",
) -> tuple[list, list]:
    from mammokit.data.geometry import is_shrunk
    from mammokit.infer.results import Prediction
    from mammokit.utils.diskfull import bytes_under

    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    stream = predictor.predict_many(
        items, cfg.heatmap, batch_size=cfg.batch_size, workers=cfg.workers, progress=progress
    )
    for result, prepared in stream:
        if not isinstance(result, Prediction):
            errors.append(result.to_record())
            continue
        row = result.to_record()
        row.update(model_run=predictor.run_name, backend=predictor.backend_name, precision=precision)
        if is_shrunk(result.fit_scale):  # one line per image: its position (ids are often file names: not logged)
            logging.getLogger(__name__).warning(
                "input %d: the breast is larger than the model's canvas; shrunk by %.2fx to fit (column fit_scale)",
                len(rows) + len(errors) + 1,
                result.fit_scale,
            )
        if result.members:  # an ensemble: each run's probabilities and call (predictions.json only)
            row["models"] = predictor.member_records(result)
        row["heatmap_backend"] = predictor.heatmap_backend_name if result.heatmaps else ""
        written = []
        if result.heatmaps and prepared is not None and prepared.pixels is not None:
            written = _write_overlays(out / "heatmaps", result, prepared.pixels, cfg, predictor)
        row["heatmaps"] = ";".join(written)
        rows.append(row)
        if done is not None:  # for the estimate of the space still needed, should the disk fill
            done["inputs"] = len(rows) + len(errors)
            done["heatmap_bytes"] += bytes_under(out / name for name in written)
    return rows, errors


def _write_overlays(folder: Path, result: Any, pixels: Any, cfg: PredictConfig, predictor: Any) -> list[str]:
    """Per heatmap kind: the readable panel (PNG) and the raw map on the original grid (.npy)."""
    from mammokit.explain.overlay import describe_map, prediction_line, scale_label, write_panel, write_raw_map

    layer = predictor.heatmap_backend.gradcam_layer_name(cfg.gradcam_layer) if "gradcam" in result.heatmaps else None
    if result.call is None:  # an ensemble: no stored threshold, no call
        n = len(result.members)
        verdict = f"ensemble of {n} runs: mean p(malignant) {result.prob_uncalibrated:.3f}; no call ({_no_call_note()})"
    else:
        verdict = prediction_line(result.prob_uncalibrated, result.threshold, result.call)
    names = []
    for kind, heat in result.heatmaps.items():
        what = describe_map(kind, layer=layer, method=cfg.gradcam_method, stride=cfg.patch_stride, flips=predictor.tta)
        write_panel(
            folder / f"{result.image_id}_{kind}.png",
            pixels,
            heat,
            caption=[f"{result.image_id}: {what}", verdict],
            scale_label=scale_label(kind),
            alpha=cfg.overlay_alpha,
            max_side=cfg.overlay_max_side or None,
        )
        write_raw_map(folder / f"{result.image_id}_{kind}.npy", heat)
        names += [f"heatmaps/{result.image_id}_{kind}.png", f"heatmaps/{result.image_id}_{kind}.npy"]
    return names


def _write_outputs(
    out: Path, predictor: Any, rows: list[dict[str, Any]], errors: list[dict[str, Any]], precision: str = "float32"
) -> None:
    """errors.csv, predictions.csv, then predictions.json: last, so that its presence means the folder is complete."""
    import csv
    import io

    from mammokit.infer.ensemble import EnsemblePredictor
    from mammokit.utils.atomic import atomic_write_json, atomic_write_text

    def to_csv(records: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)
        return buf.getvalue()

    if errors:
        atomic_write_text(out / "errors.csv", to_csv(errors, ERROR_COLUMNS))
    else:
        (out / "errors.csv").unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    atomic_write_text(out / "predictions.csv", to_csv(rows, CSV_COLUMNS))
    heatmap_backend = predictor.heatmap_backend_name if any(r.get("heatmaps") for r in rows) else None
    if isinstance(predictor, EnsemblePredictor):
        summary: dict[str, Any] = {
            "model_run": predictor.run_name,
            "backend": predictor.backend_name,
            "precision": precision,
            "ensemble": True,
            "models": [_member_summary(name, p) for name, p in zip(predictor.names, predictor.predictors, strict=True)],
            "heatmap_backend": heatmap_backend,
            "threshold": None,
            "threshold_rule": None,
            "notes": [_no_call_note()],
        }
    else:
        summary = {
            "model_run": predictor.run_name,
            "backend": predictor.backend_name,
            "precision": precision,
            "heatmap_backend": heatmap_backend,
        }
        summary.update(_model_summary(predictor))
    summary.update(n_predicted=len(rows), n_failed=len(errors), predictions=rows, errors=errors)
    atomic_write_json(out / "predictions.json", summary)  # last: its presence means the folder is complete


def _no_call_note() -> str:
    from mammokit.infer.ensemble import NO_THRESHOLD_NOTE

    return NO_THRESHOLD_NOTE + " in predictions.json"


def _model_summary(p: Any) -> dict[str, Any]:
    """What predictions.json says about one run's model: `infer.ensemble.model_summary` (serve's too), less the
    backend and precision a single run's summary gives once at its top."""
    from mammokit.infer.ensemble import model_summary

    return {k: v for k, v in model_summary(p).items() if k not in ("backend", "precision")}


def _member_summary(name: str, p: Any) -> dict[str, Any]:
    """One ensemble member in predictions.json: its name and folder, then `infer.ensemble.model_summary`."""
    from mammokit.infer.ensemble import model_summary

    return {"name": name, "run": str(p.run_dir), **model_summary(p)}
