"""What does the patch stage buy? (a) patch classifier -> whole-image model vs (b) the same whole-image
network from ImageNet weights (`--no-patch-init`), on the same synthetic data and the same CPU budget.

Pipeline: `mammokit synth` (CBIS-DDSM layout) -> `prepare` -> `patches` (S10, 5 classes) ->
(a) `train patch` + `train whole --from-patch`; (b) `train whole --no-patch-init`.

Same CPU budget: (a) is run first and its CPU time (patch + whole stages, this process only: loaders use
no worker processes) is measured, with the cost of one epoch of each whole-image stage (`StageTimer`). (b)
then gets the most whole-image epochs, split over its two stages in the same proportion as (a)'s, whose
estimated cost (same network, same images, so the same per-epoch costs) fits in that time. Both held-out
(test split) AUCs are printed, with times and epochs.

    .venv/bin/python benchmarks/bench_patch_init.py                # ~15-30 min on 2 busy cores
    .venv/bin/python benchmarks/bench_patch_init.py --women 30 --height 192 --width 144   # quicker, noisier
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from mammokit.config import load_config
from mammokit.engine.config import PatchTrainConfig, StageConfig, WholeTrainConfig
from mammokit.engine.train import train_patch, train_whole

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_patch_init")


def make_data(
    root: Path, women: int, height: int, width: int, seed: int, per_lesion: int, background: int
) -> tuple[Path, Path]:
    """Synthetic CBIS-DDSM -> prepared (height x width) -> S10-style patch set; returns (prepared, patches).

    Each step is skipped when its output exists, so a work folder can be reused.
    """
    from mammokit.data.patches import PatchConfig, sample_patches
    from mammokit.data.prepare import prepare_dataset
    from mammokit.data.prepare_config import PrepareConfig, SplitConfig
    from mammokit.preprocess import PreprocessSpec
    from mammokit.synth import SynthConfig, generate

    raw, prepared = root / "raw", root / "prepared"
    patches = root / f"patches-{per_lesion}-{background}"
    if not (prepared / "manifest.parquet").is_file():
        # raw images at twice the prepared size, as real mammograms are larger than the model input
        generate(
            raw,
            SynthConfig(layout="cbis-ddsm", women=women, seed=seed, height=2 * height, width=2 * width),
            overwrite=True,
        )
        # 25 % of training women for validation: checkpoints are chosen on it (10 % of 60 women is a few images)
        cfg = PrepareConfig(PreprocessSpec(height=height, width=width), SplitConfig(val_fraction=0.25), workers=1)
        prepare_dataset("cbis-ddsm", raw, prepared, cfg, progress=False)
    if not (patches / "patches.json").is_file():
        sample_patches(
            prepared,
            patches,
            PatchConfig(scheme="s10", n_per_lesion=per_lesion, n_background=background, classes=5, seed=seed),
        )
    return prepared, patches


def patch_config(patches: Path, out: Path, seed: int, epochs: tuple[int, int, int]) -> PatchTrainConfig:
    cfg = load_config(
        PatchTrainConfig,
        [REPO / "configs" / "patch" / "default.yaml"],
        ["trainer.progress_bar=false", "trainer.tensorboard=false", "trainer.accelerator=cpu", "loader.workers=0"],
        {"data": patches, "out": out, "seed": seed},
    )
    for stage, n in zip(cfg.stages, epochs, strict=True):
        stage.epochs = n
    return cfg


def whole_config(
    prepared: Path, out: Path, seed: int, epochs: tuple[int, int], patch_run: Path | None
) -> WholeTrainConfig:
    cfg = load_config(
        WholeTrainConfig,
        [REPO / "configs" / "whole" / "default.yaml"],
        ["trainer.progress_bar=false", "trainer.tensorboard=false", "trainer.accelerator=cpu", "loader.workers=0"],
        {"data": prepared, "out": out, "seed": seed, "from_patch": patch_run, "no_patch_init": patch_run is None},
    )
    cfg.stages = [
        StageConfig(epochs[0], cfg.stages[0].lr_multiplier),
        StageConfig(epochs[1], cfg.stages[1].lr_multiplier),
    ]
    return cfg


class StageTimer(Callback):
    """CPU seconds of each `Trainer.fit` (one per training stage), in order."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self._start = time.process_time()

    def on_fit_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.seconds.append(time.process_time() - self._start)


def epochs_within(budget: float, epochs: tuple[int, ...], stage_seconds: list[float], overhead: float) -> tuple:
    """The largest (e1, e2), in the proportion of `epochs`, whose estimated CPU cost fits in `budget`."""
    per_epoch = [t / e for t, e in zip(stage_seconds, epochs, strict=True)]
    best = (1, 1)
    for total in range(2, 1000):
        first = max(1, round(total * epochs[0] / sum(epochs)))
        candidate = (first, max(1, total - first))
        if overhead + sum(n * c for n, c in zip(candidate, per_epoch, strict=True)) > budget:
            break
        best = candidate
    return best


def timed(fn, *args):  # type: ignore[no-untyped-def]
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def run_benchmark(
    work: Path,
    *,
    women: int = 60,
    height: int = 256,
    width: int = 192,
    patch_epochs: tuple[int, ...] = (1, 2, 0),
    whole_epochs: tuple[int, ...] = (2, 1),
    per_lesion: int = 4,
    background: int = 4,
    seed: int = 0,
) -> dict:
    """Run (a) and (b) on the same data and CPU budget; returns the figures (see the module docstring)."""
    if len(whole_epochs) != 2 or min(whole_epochs) < 1:
        raise ValueError(f"whole_epochs needs two stages of >= 1 epoch each (the budget is per stage): {whole_epochs}")
    (prepared, patches), _, data_wall = timed(
        make_data, work / "data", women, height, width, seed, per_lesion, background
    )
    log.info("data ready in %.0f s wall", data_wall)

    patch_run, patch_cpu, patch_wall = timed(train_patch, patch_config(patches, work / "a_patch", seed, patch_epochs))
    timer = StageTimer()
    whole_a, whole_a_cpu, whole_a_wall = timed(
        train_whole, whole_config(prepared, work / "a_whole", seed, whole_epochs, patch_run), [timer]
    )
    budget = patch_cpu + whole_a_cpu
    # data set-up, final evaluation and saving: paid by (b) as well
    overhead = whole_a_cpu - sum(timer.seconds)
    epochs_b = epochs_within(budget, whole_epochs, timer.seconds, overhead)
    whole_b, whole_b_cpu, whole_b_wall = timed(
        train_whole, whole_config(prepared, work / "b_whole", seed, epochs_b, None)
    )

    def metrics(run: Path) -> dict:
        return json.loads((run / "metrics.json").read_text())

    patch_metrics = metrics(patch_run)
    return {
        "machine": f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs",
        "data": {
            "women": women,
            "size": [height, width],
            "patches_per_lesion": per_lesion,
            "background_per_image": background,
            "folder": str(work / "data"),
        },
        "patch": {
            "epochs": list(patch_epochs),
            "test_acc": patch_metrics["test"]["acc"],
            "test_per_class_acc": patch_metrics["test"]["per_class_acc"],
            "val_acc": patch_metrics["val"]["acc"],
            "cpu_s": round(patch_cpu, 1),
        },
        "a_patch_then_whole": {
            "whole_epochs": list(whole_epochs),
            "cpu_s": round(budget, 1),
            "wall_s": round(patch_wall + whole_a_wall, 1),
            "val_auc": metrics(whole_a)["val"]["auc"],
            "test_auc": metrics(whole_a)["test"]["auc"],
        },
        "b_no_patch_init": {
            "whole_epochs": list(epochs_b),
            "cpu_s": round(whole_b_cpu, 1),
            "wall_s": round(whole_b_wall, 1),
            "val_auc": metrics(whole_b)["val"]["auc"],
            "test_auc": metrics(whole_b)["test"]["auc"],
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary folder)")
    p.add_argument("--women", type=int, default=60, help="synthetic women (4 views each)")
    p.add_argument("--height", type=int, default=256, help="prepared image height (>= 256 for the default top)")
    p.add_argument("--width", type=int, default=192, help="prepared image width")
    p.add_argument("--per-lesion", type=int, default=4, help="patches per lesion (paper S10: 10)")
    p.add_argument("--background", type=int, default=4, help="background patches per image (paper S10: 10)")
    p.add_argument("--patch-epochs", default="1,2,0", help="patch stage epochs (head, last block, all)")
    p.add_argument("--whole-epochs", default="2,1", help="whole-image stage epochs for (a) (top, all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("mammokit.engine").setLevel(logging.INFO)  # stage starts, best values, run summaries
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_benchmark(
        args.work or Path(tempfile.mkdtemp(prefix="bench_patch_init-")),
        women=args.women,
        height=args.height,
        width=args.width,
        patch_epochs=tuple(int(v) for v in args.patch_epochs.split(",")),
        whole_epochs=tuple(int(v) for v in args.whole_epochs.split(",")),
        per_lesion=args.per_lesion,
        background=args.background,
        seed=args.seed,
    )
    print(json.dumps(result, indent=2))
    a, b = result["a_patch_then_whole"], result["b_no_patch_init"]
    print(
        f"patch test accuracy {result['patch']['test_acc']:.3f}; held-out AUC: (a) patch stage -> whole image "
        f"{a['test_auc']}, (b) no patch init {b['test_auc']} (CPU s: {a['cpu_s']} vs {b['cpu_s']})"
    )


if __name__ == "__main__":
    main()
