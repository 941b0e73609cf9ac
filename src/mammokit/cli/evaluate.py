"""`mammokit evaluate RUN [RUN ...] --data PREPARED --split test`: metrics with CIs, plots and an HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mammokit.cli.common import (
    UserError,
    add_command,
    add_compute_flags,
    add_config_args,
    add_data,
    add_heatmap_options,
    add_out,
    add_seed,
    device_flag,
    load_cli_config,
    require_data_and_runs,
)
from mammokit.infer.config import DEFAULT_CAM_METHOD, PATCH_MALIGNANT, REPORT_HEATMAP_KINDS

DESCRIPTION = """\
Score the images of one split of a prepared dataset with one or more trained whole-image runs and report
per-image ROC AUC with a 95 % confidence interval from a bootstrap over women (not images), AUPRC,
sensitivity/specificity at operating points (the model's stored threshold, Youden, fixed specificity
80/90 %, fixed sensitivity 80/90 %), breast- and exam-level results, subgroups (view, density, dataset,
site, vendor), calibration, and the DeLong test between runs. Several runs are also averaged into an
ensemble. Writes predictions.csv, metrics.json, roc.png, pr.png, reliability.png and a self-contained
report.html to --out (default for one run: eval/<run>-<dataset>-<split> in the working folder). Nothing is
written into the run folders; fit a calibration map beforehand with `mammokit calibrate`.
The report shows the heatmaps of the --heatmap-top highest-scoring malignant and non-malignant images
(Grad-CAM of the first run by default).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "evaluate",
        help="metrics with clustered-bootstrap CIs, DeLong, operating points, calibration and an HTML report",
        description=DESCRIPTION,
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folder(s) (model.json + model.safetensors)")
    add_data(p)
    p.add_argument("--split", default=None, help="split of the prepared manifest to evaluate (default test)")
    add_out(p, required=False, help="output folder (default for a single run: eval/<run>-<dataset>-<split>)")
    p.add_argument(
        "--tta",
        action="store_true",
        default=None,
        help="test-time augmentation: average p(malignant) over the four flips (the paper's augmented AUC)",
    )
    p.add_argument(
        "--aggregate",
        choices=("mean", "max"),
        default=None,
        help="how the views of one breast are combined for breast/exam-level results (default mean)",
    )
    p.add_argument("--fit-calibration", default=None, help=argparse.SUPPRESS)  # moved to `mammokit calibrate`
    p.add_argument(
        "--bootstrap", type=int, default=None, metavar="N", help="bootstrap resamples of women per CI (default 2000)"
    )
    p.add_argument(
        "--heatmaps",
        nargs="+",
        type=Path,
        default=[],
        metavar="PNG",
        help="extra overlay PNGs (e.g. from `mammokit predict --heatmap`) to show in the report",
    )
    p.add_argument(
        "--heatmap",
        choices=REPORT_HEATMAP_KINDS,
        default="gradcam",
        help="heatmap kind in the report's 'Where the model looks' section: Grad-CAM of the (first) run, the "
        "patch classifier's malignant map (needs the run's parent_run), or none (default gradcam)",
    )
    p.add_argument(
        "--heatmap-top",
        type=int,
        default=8,
        metavar="N",
        help="show the N highest-scoring malignant and N highest-scoring non-malignant images (default 8)",
    )
    add_heatmap_options(p)
    add_seed(p)
    add_compute_flags(p)
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mammokit.config import ConfigError
    from mammokit.data.manifest import ManifestError
    from mammokit.engine.evaluate import EvaluateConfig, EvaluationError, evaluate
    from mammokit.run import RunFolderError
    from mammokit.utils.console import log_to_folder
    from mammokit.utils.diskfull import disk_full_as

    if args.fit_calibration is not None:
        raise UserError(
            "--fit-calibration moved to its own command (evaluate never writes into a run folder): "
            f"mammokit calibrate RUN --data PREPARED --split val --method {args.fit_calibration}, then evaluate"
        )
    flags: dict[str, Any] = {
        "split": args.split,
        "tta": args.tta,
        "aggregate": args.aggregate,
        "n_boot": args.bootstrap,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": device_flag(args),
    }
    cfg = load_cli_config(EvaluateConfig, args, flags)
    require_data_and_runs(args.data, args.runs)
    missing = [str(path) for path in args.heatmaps if not path.is_file()]
    if missing:
        raise UserError(f"--heatmaps: file(s) not found: {', '.join(missing)}")
    heatmaps = [(path.stem, path) for path in args.heatmaps]
    if args.heatmap_top < 0:
        raise UserError(f"--heatmap-top must be >= 0, got {args.heatmap_top}")
    panels = _panel_maker(args, cfg.device, cfg.split)
    # a full disk: one line naming the folder and the space available, exit 2; metrics.json (written last) absent
    with disk_full_as(UserError, args.out or "eval"):
        try:
            result = evaluate(args.runs, args.data, args.out, cfg, heatmaps=heatmaps, heatmap_panels=panels)
        except (EvaluationError, RunFolderError, ManifestError, ConfigError) as exc:
            raise UserError(str(exc)) from None
    log_to_folder(Path(result["out"]))  # without --out: the default folder, known now, gets the log file too
    print(summary_text(result))
    return 0


def _panel_maker(args: argparse.Namespace, device: str, split: str) -> Any:
    """The report's heatmap hook (explain.report_panels.report_panels with the flags), or None when off."""
    if args.heatmap == "none" or args.heatmap_top == 0:
        return None
    from mammokit.explain.report_panels import FLIPS_SUFFIX, report_panels

    if args.heatmap == "gradcam":
        method = args.gradcam_method or DEFAULT_CAM_METHOD
        kind = method + (f"@{args.gradcam_layer}" if args.gradcam_layer else "") + (FLIPS_SUFFIX if args.tta else "")
    else:
        kind = PATCH_MALIGNANT + (f"@{args.patch_stride}" if args.patch_stride else "")

    def make(predictions: Any) -> Any:
        return report_panels(predictions, args.runs[0], args.data, n=args.heatmap_top, kind=kind, device=device)

    return make


def summary_text(result: dict[str, Any]) -> str:
    """A few lines for the terminal: AUC with CI per model and level, and where the report is."""
    level = result["settings"]["ci_level"] * 100
    lines = [f"{result['data']['n_images']} images of {result['data']['n_patients']} women, split {result['split']}"]
    for name, res in result["results"].items():
        parts = []
        for lvl in ("image", "breast", "exam"):
            if res.get(lvl):
                auc = res[lvl]["auc"]
                low, high = _fmt(auc["ci_low"]), _fmt(auc["ci_high"])
                ci = f"{level:.0f}% CI " + (f"{low}-{high}" if "n/a" not in (low, high) else "n/a")
                parts.append(f"{lvl} AUC {_fmt(auc['value'])} ({ci})")
        lines.append(f"{name}: " + "; ".join(parts))
    for note in result.get("warnings", []):
        lines.append(f"note: {note}")
    lines.append(f"report: {Path(result['out']) / 'report.html'}")
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) and x == x else "n/a"
