"""Cross-validated real-data benchmark: the whole method on the mini-MIAS development set, k folds of women.

    python benchmarks/bench_mias_cv.py --out cv/mias-06 [--folds 5] [--pixel-spacing 0.6 --height 344 --width 256]
        [--patch-config configs/mini-mias/patch.yaml] [--whole-config configs/mini-mias/whole.yaml]
        [--scheme s10] [--patch-set KEY=VALUE ...] [--whole-set KEY=VALUE ...] [--no-baseline]

What one run does (every step is a `mammokit` command in a subprocess, so it is exactly what a user runs):

1. `prepare mini-mias` once, in physical-scale mode (`--pixel-spacing`), into OUT/prepared.
2. Women-level stratified k-fold (a woman is positive when any of her images is malignant; seeded): for fold
   k the fold's women are `test`, a stratified 20 % of the other women are the inner `val` split (early
   stopping, best-epoch choice and the stored threshold use it, never the fold's test women), the rest
   `train`. A fold is a folder of symlinks to the prepared images with its own manifest (no re-preparing).
3. Per fold: `patches` -> `train patch` -> `train whole --from-patch` -> `evaluate --split test` (with and
   without flip TTA), and in the same run, with the same folds and budget, the `--no-patch-init` baseline.
4. Pooled out-of-fold predictions (every development image is predicted once, by the model that did not
   see its woman): per-fold AUC, pooled AUC with a women-clustered bootstrap 95 % CI, per-abnormality
   sensitivity at each fold model's stored threshold, and wall/CPU time per step.

Resumable: a finished step (its output file exists) is skipped; an interrupted training resumes from its
checkpoint. Writes OUT/cv_results.json and OUT/cv_results.md. Takes ~10-15 min per fold on 2 CPU cores at
0.6 mm per pixel with the shipped configs (see docs/real-data.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammokit.utils.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mini-mias-dev"
# mini-MIAS abnormality codes (Info.txt) -> the reported groups
ABNORMALITY = {
    "CALC": "calcification",
    "CIRC": "mass",
    "SPIC": "mass",
    "MISC": "mass",
    "ARCH": "architectural distortion",
    "ASYM": "asymmetry",
}


def mammokit_cmd() -> list[str]:
    return [sys.executable, "-m", "mammokit"]


class StepTimer:
    """Wall and CPU seconds (children included: every step is a subprocess) per named step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, name: str, argv: list[str], log_file: Path, ok_codes: tuple[int, ...] = (0,)) -> int:
        """Run one step; a return code outside `ok_codes` stops the benchmark. Returns the code."""
        t0 = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
        if proc.returncode not in ok_codes:
            raise SystemExit(f"step {name} failed (exit {proc.returncode}); see {log_file}")
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        # a resumed step adds to the time already spent on it
        prev = self.times.get(name, {"wall_s": 0.0, "cpu_s": 0.0})
        self.times[name] = {"wall_s": prev["wall_s"] + time.perf_counter() - t0, "cpu_s": prev["cpu_s"] + cpu}
        # merged with the file, not overwritten: `--only-folds` runs of other folds may share this folder
        on_disk = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.times = {**on_disk, name: self.times[name]}
        atomic_write_text(self.path, json.dumps(self.times, indent=1))
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        return proc.returncode


# exit 1 of prepare/patches: some images failed (listed in errors.csv), the rest is done; the benchmark goes on
PARTIAL = (0, 1)


def report_left_out(folder: Path, what: str, *, require_usable: bool = True) -> None:
    """Print how many images the step `what` left out and why (its errors.csv); with `require_usable`, stop when
    nothing usable is left (a patch set with no patch stops at `train patch`, which says so itself)."""
    from mammokit.data.left_out import left_out_line, usable

    line = left_out_line(folder, what)
    if line:
        print(f"  {line}", flush=True)
    if require_usable and not usable(folder):
        raise SystemExit(f"{what}: nothing usable is left in {folder}; see {folder / 'errors.csv'}")


def woman_folds(manifest: pd.DataFrame, k: int, seed: int) -> dict[str, int]:
    """patient_id -> fold index, stratified by whether the woman has a malignant image."""
    from sklearn.model_selection import StratifiedKFold

    women = manifest.groupby("patient_id")["label"].max().clip(lower=0).sort_index()
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_of: dict[str, int] = {}
    for i, (_, test_idx) in enumerate(skf.split(np.zeros(len(women)), women.to_numpy())):
        for w in women.index[test_idx]:
            fold_of[str(w)] = i
    return fold_of


def inner_val(women: pd.Series, seed: int, fraction: float = 0.2) -> set[str]:
    """A stratified `fraction` of `women` (patient_id -> 0/1) for validation."""
    from sklearn.model_selection import train_test_split

    _, val = train_test_split(women.index.to_numpy(), test_size=fraction, stratify=women.to_numpy(), random_state=seed)
    return {str(w) for w in val}


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (no extra disk), or a copy where `src` is on another file system."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fold_setting(setting: str, fold: int) -> str:
    """A KEY=VALUE setting with `{fold}` replaced by "fold<k>" (a plain replace: YAML braces stay as they are)."""
    return setting.replace("{fold}", f"fold{fold}")


def write_fold_view(prepared: Path, fold_dir: Path, split_of: dict[str, str], name: str = "prepared") -> Path:
    """A prepared folder for one fold: hard links to the images/masks/records, a manifest with the fold's splits.

    Hard links, not symlinks: `patches` refuses an image path that resolves outside its prepared folder
    (utils/paths.inside), which a symlinked `images/` does.
    """
    view = fold_dir / name
    if (view / "manifest.parquet").is_file():
        return view
    tmp = fold_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for sub in ("images", "masks", "records"):
        if (prepared / sub).is_dir():
            shutil.copytree(prepared / sub, tmp / sub, copy_function=_link_or_copy)
    images = pd.read_parquet(prepared / "manifest.parquet")
    images = images[images["patient_id"].astype(str).isin(split_of)]  # a woman with no image left is in no fold
    images["split"] = [split_of[str(p)] for p in images["patient_id"]]
    images.to_parquet(tmp / "manifest.parquet", index=False)
    lesions = pd.read_parquet(prepared / "lesions.parquet")
    if "split" in lesions.columns:
        split_by_image = dict(zip(images["image_id"], images["split"], strict=True))
        lesions["split"] = [split_by_image.get(i, "train") for i in lesions["image_id"]]
    lesions.to_parquet(tmp / "lesions.parquet", index=False)
    dataset = json.loads((prepared / "dataset.json").read_text())
    dataset["split"] = {"cv_fold_view": str(fold_dir.name)}
    dataset["counts"]["by_split"] = {s: int(n) for s, n in images["split"].value_counts().sort_index().items()}
    (tmp / "dataset.json").write_text(json.dumps(dataset, indent=1))
    images[["patient_id", "split"]].drop_duplicates().to_csv(tmp / "splits.csv", index=False)
    if (prepared / "errors.csv").is_file():
        shutil.copy(prepared / "errors.csv", tmp / "errors.csv")
    tmp.rename(view)
    return view


def train_step(timer: StepTimer, name: str, run_dir: Path, argv: list[str], log_file: Path) -> None:
    if (run_dir / "model.json").is_file():
        return
    resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
    timer.run(name, argv + resume, log_file)


def evaluate_step(
    timer: StepTimer, name: str, run_dir: Path | list[Path], view: Path, out: Path, tta: bool, log: Path
) -> None:
    """`mammokit evaluate` of one run, or of the average of several (`evaluate RUN RUN ...`)."""
    if (out / "predictions.csv").is_file():
        return
    shutil.rmtree(out, ignore_errors=True)
    runs = [str(r) for r in (run_dir if isinstance(run_dir, list) else [run_dir])]
    argv = [*mammokit_cmd(), "evaluate", *runs, "--data", str(view), "--split", "test", "--out", str(out)]
    # no heatmap panels in the report: the benchmark needs the predictions, and at 0.4 mm the report's Grad-CAM
    # and patch maps took 90 % of an evaluation's CPU (3.9 of 4.3 min)
    argv += ["--heatmap", "none"]
    timer.run(name, argv + (["--tta"] if tta else []), log)


def link_patch_stage(source: Path, fold_dir: Path) -> None:
    """Reuse another run's patch set and patch classifier for this fold (whole-image ablations, same folds)."""
    for rel in ("patches", "runs/patch"):
        target = fold_dir / rel
        if not target.exists():
            if not (source / rel).exists():
                raise SystemExit(f"--reuse-patch-stage: {source / rel} does not exist")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to((source / rel).resolve())


def run_fold(args: argparse.Namespace, fold: int, view: Path, fold_dir: Path, timer: StepTimer) -> None:
    mk = mammokit_cmd()
    log = fold_dir / "log.txt"
    if args.reuse_patch_stage is not None:
        link_patch_stage(args.reuse_patch_stage / f"fold{fold}", fold_dir)
    patches = fold_dir / "patches"
    if not (patches / "patches.json").is_file():
        shutil.rmtree(patches, ignore_errors=True)
        argv = [*mk, "patches", "--data", str(view), "--out", str(patches), "--scheme", args.scheme]
        argv += ["--seed", str(args.seed), "--workers", str(args.workers)]
        for kv in args.patches_set:
            argv += ["--set", fold_setting(kv, fold)]
        timer.run(f"fold{fold}/patches", argv, log, ok_codes=PARTIAL)
        report_left_out(patches, f"fold{fold}/patches", require_usable=False)

    def training_flags(seed: int) -> list[str]:
        return [
            "--device",
            "cpu",
            "--seed",
            str(seed),
            "--set",
            "trainer.progress_bar=false",
            "--set",
            "trainer.tensorboard=false",
        ]

    common = training_flags(args.seed)
    patch_run = fold_dir / "runs" / "patch"
    argv = [*mk, "train", "patch", "--data", str(patches), "--out", str(patch_run), "-c", str(args.patch_config)]
    argv += common + [a for kv in args.patch_set for a in ("--set", fold_setting(kv, fold))]
    train_step(timer, f"fold{fold}/train_patch", patch_run, argv, log)

    whole_sets = [a for kv in args.whole_set for a in ("--set", fold_setting(kv, fold))]
    whole_cfg = ["-c", str(args.whole_config), *common, *whole_sets]
    whole = fold_dir / "runs" / "whole"
    argv = [*mk, "train", "whole", "--data", str(view), "--from-patch", str(patch_run), "--out", str(whole)]
    train_step(timer, f"fold{fold}/train_whole", whole, argv + whole_cfg, log)
    evaluate_step(timer, f"fold{fold}/evaluate_tta", whole, view, fold_dir / "eval-tta", True, log)
    evaluate_step(timer, f"fold{fold}/evaluate", whole, view, fold_dir / "eval", False, log)
    if args.whole_seeds > 1:  # more whole-image models from the same patch stage, other training seeds, averaged
        members = [whole]
        for s in range(1, args.whole_seeds):
            member = fold_dir / "runs" / f"whole-seed{s}"
            seeded = ["-c", str(args.whole_config), *training_flags(args.seed + s), *whole_sets]
            argv = [*mk, "train", "whole", "--data", str(view), "--from-patch", str(patch_run), "--out", str(member)]
            train_step(timer, f"fold{fold}/train_whole_seed{s}", member, argv + seeded, log)
            members.append(member)
        evaluate_step(
            timer, f"fold{fold}/evaluate_ensemble_tta", members, view, fold_dir / "eval-ensemble-tta", True, log
        )
    if args.strong_baseline:  # a plain fine-tune of the ImageNet network, on its own spacing's fold view
        strong = fold_dir / "runs" / "whole-plain-finetune"
        strong_view = fold_dir / "prepared-strong"
        argv = [*mk, "train", "whole", "--data", str(strong_view), "--no-patch-init", "--out", str(strong)]
        argv += ["-c", str(args.strong_config), *common]
        train_step(timer, f"fold{fold}/train_plain_finetune", strong, argv, log)
        evaluate_step(timer, f"fold{fold}/evaluate_plain_finetune_tta", strong, strong_view,
                      fold_dir / "eval-strong-tta", True, log)  # fmt: skip
    if args.baseline:
        base = fold_dir / "runs" / "whole-no-patch-init"
        argv = [*mk, "train", "whole", "--data", str(view), "--no-patch-init", "--out", str(base)]
        train_step(timer, f"fold{fold}/train_whole_baseline", base, argv + whole_cfg, log)
        evaluate_step(timer, f"fold{fold}/evaluate_baseline_tta", base, view, fold_dir / "eval-baseline-tta", True, log)


# --------------------------------------------------------------------------------------------- summary


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (NaN with one class): mammokit's, scikit-learn's definition without its per-call validation (the
    bootstrap calls it thousands of times)."""
    from mammokit.metrics.curves import auc_from_curve, binary_curve

    return auc_from_curve(binary_curve(np.asarray(y).astype(int), np.asarray(p)))


def pooled_predictions(out: Path, folds: int, eval_name: str, run_name: str) -> pd.DataFrame | None:
    frames = []
    for k in range(folds):
        path = out / f"fold{k}" / eval_name / "predictions.csv"
        if not path.is_file():
            return None
        df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
        card = json.loads((out / f"fold{k}" / "runs" / run_name / "model.json").read_text())
        df["fold"] = k
        df["threshold"] = float(card["threshold"])
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def summarise(pred: pd.DataFrame, lesions: pd.DataFrame, seed: int, n_boot: int = 2000) -> dict[str, Any]:
    """Per-fold and pooled AUC (women-clustered bootstrap CI) and per-abnormality sensitivity."""
    from mammokit.metrics.bootstrap import bootstrap_ci

    y = pred["label"].to_numpy().astype(int)
    p = pred["prob_uncalibrated"].to_numpy().astype(float)
    ci = bootstrap_ci(_auc, y, p, groups=pred["patient_id"].to_numpy(), n=n_boot, seed=seed)
    per_fold = {
        int(k): _auc(g["label"].to_numpy().astype(int), g["prob_uncalibrated"].to_numpy())
        for k, g in pred.groupby("fold")
    }
    called = pred["prob_uncalibrated"] >= pred["threshold"]
    kinds = lesions.assign(group=lesions["mias_class"].map(ABNORMALITY)).groupby("image_id")["group"].agg(set)
    sens: dict[str, Any] = {}
    malignant = pred["label"] == 1
    for group in ("mass", "calcification", "architectural distortion", "asymmetry"):
        has = pred["image_id"].map(lambda i, g=group: g in kinds.get(i, set()))
        rows = malignant & has
        sens[group] = {"n": int(rows.sum()), "sensitivity": float(called[rows].mean()) if rows.any() else None}
    spec_rows = ~malignant
    return {
        "n_images": len(pred),
        "n_malignant": int(malignant.sum()),
        "n_women": int(pred["patient_id"].nunique()),
        "pooled_auc": ci.as_dict(),
        "mean_fold_auc": float(np.nanmean(list(per_fold.values()))),
        "per_fold_auc": per_fold,
        "sensitivity_at_threshold": float(called[malignant].mean()),
        "specificity_at_threshold": float((~called[spec_rows]).mean()),
        "sensitivity_by_abnormality": sens,
        "prob_quantiles": {
            "malignant": [float(v) for v in np.quantile(p[y == 1], [0.1, 0.5, 0.9])],
            "non_malignant": [float(v) for v in np.quantile(p[y == 0], [0.1, 0.5, 0.9])],
        },
    }


def _fmt_auc(d: dict[str, Any]) -> str:
    a = d["pooled_auc"]
    return f"{a['value']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = [f"# mini-MIAS {results['folds']}-fold cross-validation: `{results['tag']}`", ""]
    lines += [f"Settings: `{json.dumps(results['settings'])}`", ""]
    lines += [
        "| model | pooled OOF AUC (95% CI, women bootstrap) | "
        + " | ".join(f"fold {k}" for k in range(results["folds"]))
        + " | sens / spec at stored threshold |"
    ]
    lines += ["|---|---|" + "---|" * results["folds"] + "---|"]
    for name, res in results["models"].items():
        if res is None:
            continue
        folds = " | ".join(f"{res['per_fold_auc'][k]:.3f}" for k in sorted(res["per_fold_auc"]))
        lines.append(
            f"| {name} | {_fmt_auc(res)} | {folds} | "
            f"{res['sensitivity_at_threshold']:.2f} / {res['specificity_at_threshold']:.2f} |"
        )
    shown = {name: res for name, res in results["models"].items() if res is not None}
    if shown:  # every model side by side: a TTA and a no-TTA score can call different lesions
        lines += ["", "Sensitivity at the stored threshold by abnormality (malignant images):", ""]
        lines += ["| abnormality | malignant images | " + " | ".join(shown) + " |"]
        lines += ["|---|---|" + "---|" * len(shown)]
        first = next(iter(shown.values()))
        for group, s in first["sensitivity_by_abnormality"].items():
            cells = []
            for res in shown.values():
                value = res["sensitivity_by_abnormality"][group]["sensitivity"]
                cells.append("-" if value is None else f"{value:.2f}")
            lines.append(f"| {group} | {s['n']} | " + " | ".join(cells) + " |")
    per_fold = fold_costs(results["times"])
    if per_fold:
        lines += ["", f"Cost per fold ({results['cpu']}; every step of the fold, evaluations included):", ""]
        lines += ["| fold | wall min | CPU hours |", "|---|---|---|"]
        for fold, t in per_fold.items():
            lines.append(f"| {fold} | {t['wall_s'] / 60:.1f} | {t['cpu_s'] / 3600:.2f} |")
    lines += ["", f"Time: {results['wall_min']:.1f} min wall, {results['cpu_min']:.1f} min CPU ({results['cpu']})."]
    path.write_text("\n".join(lines) + "\n")


def fold_costs(times: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Wall and CPU seconds summed over each fold's steps (`times.json` keys are `foldK/step`)."""
    costs: dict[str, dict[str, float]] = {}
    for step, t in times.items():
        fold, sep, _ = step.partition("/")
        if not sep:
            continue  # `prepare` (the whole set) is shared by every fold
        acc = costs.setdefault(fold, {"wall_s": 0.0, "cpu_s": 0.0})
        acc["wall_s"] += t["wall_s"]
        acc["cpu_s"] += t["cpu_s"]
    return dict(sorted(costs.items(), key=lambda kv: int(kv[0].removeprefix("fold"))))  # resumed runs add folds late


def cpu_name() -> str:
    """The CPU model and the cores this process may use (every figure in the results names it)."""
    from mammokit.utils.machine import cpu_name as model

    return f"{model()}, {len(os.sched_getaffinity(0))} cores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="mini-MIAS folder (mdbNNN.pgm + Info.txt)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tag", default=None, help="name of this configuration in the results (default: OUT's name)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only-folds", type=int, nargs="*", default=None, help="run just these folds (no summary)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pixel-spacing", type=float, default=0.6)
    # mini-MIAS films are 204.8 mm tall; 179.4 mm holds 212 of the 214 development breasts unshrunk
    # (benchmarks/breast_sizes.py); v1-v12 used 344 x 256, which shrank 11 of them
    ap.add_argument("--height", type=int, default=344, help="canvas rows (344 x 0.6 mm = 206 mm)")
    ap.add_argument("--width", type=int, default=299, help="canvas columns (299 x 0.6 mm = 179 mm)")
    ap.add_argument("--scheme", default="s10")
    ap.add_argument("--patches-set", action="append", default=[], metavar="KEY=VALUE",
                    help="`patches --set`; {fold} in VALUE becomes the fold's folder name (e.g. "
                    "hard_negative_run=cv/v2/{fold}/runs/patch), in --patch-set/--whole-set too")  # fmt: skip
    ap.add_argument("--patch-config", type=Path, default=REPO / "configs" / "mini-mias" / "patch.yaml")
    ap.add_argument("--whole-config", type=Path, default=REPO / "configs" / "mini-mias" / "whole.yaml")
    ap.add_argument("--patch-set", action="append", default=[], metavar="KEY=VALUE", help="`train patch --set`")
    ap.add_argument("--whole-set", action="append", default=[], metavar="KEY=VALUE", help="`train whole --set`")
    ap.add_argument(
        "--whole-seeds",
        type=int,
        default=1,
        help="train N whole-image models per fold from the same patch stage (training seeds SEED .. SEED+N-1) "
        "and also evaluate their average",
    )
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the --no-patch-init runs")
    ap.add_argument(
        "--strong-baseline",
        action="store_true",
        help="also run a plain whole-image fine-tune of the ImageNet network (--strong-config) on the same folds, "
        "prepared at --strong-spacing on a canvas of the same size in mm",
    )
    ap.add_argument(
        "--strong-config", type=Path, default=REPO / "configs" / "mini-mias" / "ablations" / "whole_plain_finetune.yaml"
    )
    ap.add_argument("--strong-spacing", type=float, default=0.4, help="mm per pixel of the strong baseline arm")
    ap.add_argument("--prepared", type=Path, default=None, help="reuse a prepared mini-MIAS folder")
    ap.add_argument(
        "--reuse-patch-stage",
        type=Path,
        default=None,
        metavar="CV_OUT",
        help="take each fold's patch set and patch classifier from another run of this benchmark (same data, "
        "spacing, folds and seed): whole-image ablations without re-training the patch stage",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="women-bootstrap resamples for the CIs")
    args = ap.parse_args(argv)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timer = StepTimer(out / "times.json")
    t_start = time.perf_counter()
    prepared = args.prepared or out / "prepared"
    if not (prepared / "dataset.json").is_file():
        argv_ = [*mammokit_cmd(), "prepare", "mini-mias", "--root", str(args.data), "--out", str(prepared)]
        argv_ += ["--pixel-spacing", str(args.pixel_spacing), "--height", str(args.height), "--width", str(args.width)]
        argv_ += ["--workers", str(args.workers), "--no-progress", "--set", "split.val_fraction=0.2"]
        timer.run("prepare", argv_, out / "log.txt", ok_codes=PARTIAL)
    report_left_out(prepared, "prepare")
    manifest = pd.read_parquet(prepared / "manifest.parquet")
    strong_prepared = out / "prepared-strong"
    if args.strong_baseline and not (strong_prepared / "dataset.json").is_file():
        # the same canvas in mm at the arm's own spacing
        height = math.ceil(args.height * args.pixel_spacing / args.strong_spacing)
        width = math.ceil(args.width * args.pixel_spacing / args.strong_spacing)
        argv_ = [*mammokit_cmd(), "prepare", "mini-mias", "--root", str(args.data), "--out", str(strong_prepared)]
        argv_ += ["--pixel-spacing", str(args.strong_spacing), "--height", str(height), "--width", str(width)]
        argv_ += ["--workers", str(args.workers), "--no-progress", "--set", "split.val_fraction=0.2"]
        timer.run("prepare_strong", argv_, out / "log.txt", ok_codes=PARTIAL)
    if args.strong_baseline:
        report_left_out(strong_prepared, "prepare (strong baseline arm)")
    lesions = pd.read_parquet(prepared / "lesions.parquet")
    fold_of = woman_folds(manifest, args.folds, args.seed)
    women = manifest.groupby("patient_id")["label"].max().clip(lower=0)
    for k in range(args.folds):
        if args.only_folds is not None and k not in args.only_folds:
            continue
        fold_dir = out / f"fold{k}"
        rest = women[[fold_of[str(w)] != k for w in women.index]]
        val = inner_val(rest, args.seed + k)
        split_of = {
            str(w): "test" if fold_of[str(w)] == k else ("val" if str(w) in val else "train") for w in women.index
        }
        view = write_fold_view(prepared, fold_dir, split_of)
        if args.strong_baseline:
            write_fold_view(strong_prepared, fold_dir, split_of, "prepared-strong")
        print(f"fold {k}: {sum(v == 'test' for v in split_of.values())} test women", flush=True)
        run_fold(args, k, view, fold_dir, timer)
    if args.only_folds is not None:
        return 0

    models = {
        "patch->whole, flip TTA": ("eval-tta", "whole"),
        "patch->whole, no TTA": ("eval", "whole"),
        "no patch init (baseline), flip TTA": ("eval-baseline-tta", "whole-no-patch-init"),
        "plain fine-tune (strong baseline), flip TTA": ("eval-strong-tta", "whole-plain-finetune"),
    }
    if args.whole_seeds > 1:
        models[f"patch->whole, average of {args.whole_seeds} seeds, flip TTA"] = ("eval-ensemble-tta", "whole")
    summary: dict[str, Any] = {}
    for name, (eval_name, run_name) in models.items():
        pred = pooled_predictions(out, args.folds, eval_name, run_name)
        summary[name] = summarise(pred, lesions, args.seed, args.bootstrap) if pred is not None else None
    times = timer.times
    settings = {
        "pixel_spacing": args.pixel_spacing,
        "canvas": [args.height, args.width],
        "scheme": args.scheme,
        "patch_config": args.patch_config.name,
        "whole_config": args.whole_config.name,
        "patch_set": args.patch_set,
        "whole_set": args.whole_set,
        "patches_set": args.patches_set,
        "seed": args.seed,
        "whole_seeds": args.whole_seeds,
        "strong_baseline": {"config": args.strong_config.name, "pixel_spacing": args.strong_spacing}
        if args.strong_baseline
        else None,
        "reuse_patch_stage": str(args.reuse_patch_stage) if args.reuse_patch_stage else None,
    }
    results = {
        "tag": args.tag or out.name,
        "folds": args.folds,
        "settings": settings,
        "models": summary,
        "times": times,
        "wall_min": sum(t["wall_s"] for t in times.values()) / 60,
        "cpu_min": sum(t["cpu_s"] for t in times.values()) / 60,
        "cpu": cpu_name(),
        "this_invocation_wall_min": (time.perf_counter() - t_start) / 60,
    }
    (out / "cv_results.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out / "cv_results.md")
    print((out / "cv_results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
