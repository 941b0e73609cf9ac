"""`mammokit demo`: the whole method on a synthetic CBIS-DDSM-layout dataset, start to finish.

synth -> prepare -> patches -> train patch -> train whole -> predict with heatmaps -> evaluate (TTA)
-> HTML report. Every step is an ordinary `mammokit` command run in this process, so the demo is
also the executable documentation of the pipeline. Each step is skipped when its output is already
complete, and an interrupted training step continues from its checkpoint (re-running reuses what is
done); `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mammokit.cli.common import UserError, add_command, add_device, add_out, add_seed, add_workers

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("demo-output")

# Sizes chosen so the whole demo fits in a few minutes on 2 CPU cores (docs/decisions.md, "Demo settings");
# the paper's settings (1152x896, 224-px patches, ResNet50) live in configs/paper/.
PRESETS: dict[str, dict[str, int]] = {
    # women: synthetic women; height/width: prepared whole-image size; synth_*: raw image size (2x, as real
    # mammograms are larger than the model input); epochs: stage-epoch cap (0 = the config's)
    "default": {"women": 100, "height": 256, "width": 192, "synth_height": 512, "synth_width": 384, "epochs": 0},
    "small": {"women": 16, "height": 128, "width": 96, "synth_height": 256, "synth_width": 192, "epochs": 1},
}


@dataclass
class Step:
    name: str
    done_marker: Path  # the step is complete when this file exists
    argv: list[str]


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "demo",
        help="run the whole pipeline on synthetic data (minutes on a laptop CPU)",
        description=__doc__,
    )
    add_out(
        p, required=False, help=f"output folder (default: {DEFAULT_OUT}); its mammokit.log has every step's messages"
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="data and image sizes")
    add_seed(p, default=1)
    add_workers(p, default=2)
    add_device(p)
    p.add_argument("--fresh", action="store_true", help="delete the output folder first instead of reusing it")
    p.set_defaults(func=run)


def _steps(out: Path, preset: str, seed: int, workers: int, device: str) -> list[Step]:
    size = PRESETS[preset]
    raw, prepared, patches = out / "raw", out / "prepared", out / "patches"
    patch_run, whole_run = out / "runs" / "patch", out / "runs" / "whole"
    evaluation, predictions = out / "eval", out / "predict"
    cfg = Path(__file__).resolve().parents[1] / "configs_builtin"
    common = ["--seed", str(seed)]
    patch_epochs: list[str] = []
    whole_epochs: list[str] = []
    if size["epochs"]:  # the small preset (README test): a fixed, short schedule
        n = size["epochs"]
        patch_epochs = ["--set", f"stages=[{{epochs: {n}}}, {{epochs: {n}}}, {{epochs: {n}}}]"]
        whole_epochs = ["--set", f"stages=[{{epochs: {n}}}, {{epochs: {n}}}]"]
    return [
        Step(
            "synthesise a CBIS-DDSM-layout dataset",
            raw / "synth.json",
            [
                "synth",
                "--layout",
                "cbis-ddsm",
                "--out",
                str(raw),
                "--women",
                str(size["women"]),
                "--height",
                str(size["synth_height"]),
                "--width",
                str(size["synth_width"]),
                "--workers",
                str(workers),
                *common,
            ],
        ),
        Step(
            "prepare: read DICOMs, crop, orient, resize",
            prepared / "dataset.json",
            [
                "prepare",
                "cbis-ddsm",
                "--root",
                str(raw),
                "--out",
                str(prepared),
                "--height",
                str(size["height"]),
                "--width",
                str(size["width"]),
                "--workers",
                str(workers),
                "--no-progress",
                # a larger validation share than the default 10 % (docs/decisions.md): checkpoints are chosen on it
                "--set",
                "split.val_fraction=0.25",
                *common,
            ],
        ),
        Step(
            "sample lesion and background patches (S10)",
            patches / "patches.json",
            [
                "patches",
                "--data",
                str(prepared),
                "--out",
                str(patches),
                "--scheme",
                "s10",
                "--classes",
                "5",
                "--workers",
                str(workers),
                *common,
            ],
        ),
        Step(
            "train the patch classifier (3 stages)",
            patch_run / "model.json",
            [
                "train",
                "patch",
                "--data",
                str(patches),
                "--out",
                str(patch_run),
                "-c",
                str(cfg / "demo_patch.yaml"),
                "--device",
                device,
                *patch_epochs,
                *common,
            ],
        ),
        Step(
            "convert to a whole-image classifier and train end to end (2 stages)",
            whole_run / "model.json",
            [
                "train",
                "whole",
                "--data",
                str(prepared),
                "--from-patch",
                str(patch_run),
                "--out",
                str(whole_run),
                "-c",
                str(cfg / "demo_whole.yaml"),
                "--device",
                device,
                *whole_epochs,
                *common,
            ],
        ),
        Step(
            "predict on raw test DICOMs with Grad-CAM and patch heatmaps",
            predictions / "predictions.csv",
            [
                "predict",
                str(whole_run),
                str(out / "predict-inputs.csv"),
                "--out",
                str(predictions),
                "--heatmap",
                "both",
                "--overlay-max-side",
                "768",
                "--device",
                device,
                # two images: auto's one-off ONNX export and measurement would cost more than it saves
                "--backend",
                "torch",
                "--no-progress",
            ],
        ),
        Step(
            "evaluate on the held-out test split with flip TTA; write the HTML report",
            evaluation / "metrics.json",
            [
                "evaluate",
                str(whole_run),
                "--data",
                str(prepared),
                "--split",
                "test",
                "--out",
                str(evaluation),
                "--tta",
                "--device",
                device,
                *common,
                "--heatmaps",
            ],  # overlay PNGs are appended when the step runs
        ),
    ]


def _write_predict_inputs(out: Path, n: int = 2) -> None:
    """A CSV of a few raw test-split DICOMs (malignant first) for the predict step."""
    import pandas as pd

    from mammokit.data.manifest import read_images

    images = read_images(out / "prepared")
    test = images[images["split"] == "test"].sort_values(["label", "image_id"], ascending=[False, True])
    rows = pd.concat([test[test["label"] == 1].head(n // 2), test[test["label"] == 0].head(n - n // 2)])
    raw = (out / "raw").resolve()  # absolute: predict resolves relative CSV paths against the CSV's folder
    paths = [str(p if Path(p).is_absolute() else raw / p) for p in rows["path"]]
    pd.DataFrame({"image_id": rows["image_id"], "path": paths}).to_csv(out / "predict-inputs.csv", index=False)


def _resume_flag(run_dir: Path) -> list[str]:
    """`--resume` when an interrupted run left checkpoints; an interrupted run without any is cleared."""
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        return ["--resume"]
    if run_dir.exists():
        shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to keep
    return []


def run(args: argparse.Namespace) -> int:
    from mammokit.cli import main as cli_main
    from mammokit.utils.console import results_to_log

    out: Path = args.out or DEFAULT_OUT
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = _steps(out, args.preset, args.seed, args.workers, args.device)
    t_start = time.perf_counter()
    for i, step in enumerate(steps, 1):
        prefix = f"[{i}/{len(steps)}] {step.name}"
        if step.done_marker.is_file():
            print(f"{prefix}: already done, reusing {step.done_marker.parent}", flush=True)
            continue
        if step.argv[0] == "predict":
            _write_predict_inputs(out)
        if step.argv[0] == "evaluate":
            overlays = sorted((out / "predict" / "heatmaps").glob("*.png"))
            step.argv = step.argv + [str(p) for p in overlays] if overlays else step.argv[:-1]
        if step.argv[0] == "train":
            step.argv = step.argv + _resume_flag(step.done_marker.parent)
        print(f"{prefix} ...", flush=True)
        t0 = time.perf_counter()
        with results_to_log(step.argv[0]):  # the step's own report goes to the log; its warnings still show
            status = cli_main(step.argv)
        check_step(i, step, status, out)
        print(f"{prefix}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    _report(out, steps, time.perf_counter() - t_start)
    return 0


PARTIAL = 1  # a batch step's status when it left some inputs out (rows of its errors.csv) and finished the rest


def check_step(i: int, step: Step, status: int, out: Path) -> None:
    """Go on after a step that finished (status 0), or that left some images out but kept usable ones (status 1:
    how many and why is printed, from its errors.csv); raise UserError otherwise."""
    import pandas as pd

    from mammokit.data.left_out import left_out_line, usable
    from mammokit.utils.console import LOG_FILE

    kind, folder = step.argv[0], step.done_marker.parent
    if status == 0 and step.done_marker.is_file():
        return
    batch_step = kind == "predict" or (kind in ("prepare", "patches") and usable(folder))
    if status == PARTIAL and step.done_marker.is_file() and batch_step:
        if kind == "predict":  # its errors.csv: image_id, input, stage, error
            errors = folder / "errors.csv"
            n = len(pd.read_csv(errors)) if errors.is_file() else 0  # rows, whatever a message holds (quoted)
            print(f"predict: {n} image(s) could not be predicted; details in {errors}", flush=True)
        else:
            print(left_out_line(folder, kind) or f"{kind}: some images were left out; see {folder}", flush=True)
        return
    raise UserError(f"step {i} ({step.name}) failed with status {status}; see the messages above and {out / LOG_FILE}")


def _report(out: Path, steps: list[Step], seconds: float) -> None:
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    auc = _find_auc(metrics)
    report = out / "eval" / "report.html"
    print()
    print(f"mammokit demo finished in {seconds / 60:.1f} min")
    if auc is not None:
        print(f"held-out per-image AUC (4-flip TTA): {auc[0]:.3f} (95% CI {auc[1]:.3f}-{auc[2]:.3f})")
    print(f"report: {report}")
    print(f"predictions and heatmaps: {out / 'predict'}")


def _find_auc(metrics: dict) -> tuple[float, float, float] | None:
    """Pull (auc, lo, hi) of the single model's per-image level out of metrics.json."""
    for result in metrics.get("results", {}).values():
        node = (result.get("image") or {}).get("auc")
        if isinstance(node, dict) and node.get("value") is not None:
            low, high = node.get("ci_low"), node.get("ci_high")  # 0.0 is a bound (not "missing")
            return float(node["value"]), _or_nan(low), _or_nan(high)
    return None


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)
