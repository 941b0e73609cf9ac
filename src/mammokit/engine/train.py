"""Public training entry points: `train_patch`, `train_whole` and `finetune` (each returns the run folder).

* `train_patch(cfg)`: patch set (`mammokit patches`) -> patch run, the 3-stage schedule (docs/training.md).
* `train_whole(cfg)`: prepared dataset + patch run -> whole-image run, the 2-stage schedule (docs/training.md);
  `no_patch_init=True` trains the same network from ImageNet weights (the baseline that measures what the
  patch stage buys).
* `finetune(cfg)`: whole-image run + new prepared dataset -> new run, stage 2 only (the paper's INbreast transfer).

All three share `runner.run_stages` (Lightning Trainer per stage, exact resume) and end with
`run.save_run`: best weights, `model.json` (input size, normalisation, the source PreprocessSpec, labels,
threshold chosen on validation by Youden's rule), the resolved config and `metrics.json`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import Dataset

from mammokit.config import from_dict
from mammokit.constants import WHOLE_IMAGE_CLASSES
from mammokit.data.datasets import PatchDataset, WholeImageDataset
from mammokit.data.manifest import PreparedDataset
from mammokit.engine.config import (
    FinetuneConfig,
    LoaderConfig,
    PatchTrainConfig,
    TrainerConfig,
    WholeModelConfig,
    WholeTrainConfig,
)
from mammokit.engine.metrics import classification_metrics
from mammokit.engine.runner import (
    StagePlan,
    TrainingError,
    check_run_dir,
    finite_or_none,
    global_rank,
    run_stages,
)
from mammokit.io.images import read_png16
from mammokit.models.registry import registered_name
from mammokit.models.utils import input_channels
from mammokit.preprocess import PreprocessSpec
from mammokit.run import InputSpec, ModelCard, save_run

log = logging.getLogger(__name__)

__all__ = ["TrainingError", "finetune", "train_patch", "train_whole"]


# ------------------------------------------------------------------------------------------ helpers
def _require(value: Path | None, what: str) -> Path:
    if value is None:
        raise TrainingError(f"no {what} given")
    return Path(value)


def _recorded_spec(spec: PreprocessSpec | dict[str, Any] | None, where: str) -> PreprocessSpec:
    """The PreprocessSpec the data was prepared with, for model.json (the default, with a warning, if none)."""
    if isinstance(spec, dict):
        return from_dict(PreprocessSpec, spec)
    if isinstance(spec, PreprocessSpec):
        return spec
    log.warning("%s records no PreprocessSpec; model.json gets the default spec", where)
    return PreprocessSpec()


def _train_transform(loader: LoaderConfig) -> Any:
    if not loader.augment.enabled:
        return None
    from mammokit.data.transforms import build_train_transform

    return build_train_transform(loader.augment)


def _image_size(root: Path, relative: str) -> tuple[int, int]:
    h, w = read_png16(root / relative).shape
    return int(h), int(w)


def _split(table: pd.DataFrame, split: str, what: str, required: bool = True) -> pd.DataFrame:
    part = table[table["split"] == split]
    if required and part.empty:
        raise TrainingError(
            f"the {what} has no '{split}' rows; split the data (mammokit prepare assigns train/val/test)"
        )
    return part


def _evaluate(
    model: nn.Module, dataset: Dataset | None, positive: list[int], loader: LoaderConfig, trainer: TrainerConfig
) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """Metrics of `model` on `dataset` (no augmentation), plus the raw (prob, label).

    The probabilities come from the inference core in float32 whatever `trainer.precision` was, so the
    threshold chosen on them is on the scale evaluate and predict produce.
    """
    from torch.utils.data import DataLoader

    from mammokit.engine.module import collate_samples
    from mammokit.scoring.core import predict_class_probs

    if dataset is None or len(dataset) == 0:
        return {}, None, None
    batches = DataLoader(dataset, batch_size=loader.eval_batch_size or loader.batch_size,
                         num_workers=loader.workers, collate_fn=collate_samples, shuffle=False)  # fmt: skip
    prob, label = predict_class_probs(model, batches, device=trainer.accelerator)
    return classification_metrics(prob, label, positive), prob, label


def _named(metrics: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Per-class values keyed by class name; NaN-free."""
    out = {k: finite_or_none(v) for k, v in metrics.items() if k not in ("per_class_acc", "confusion")}
    if "per_class_acc" in metrics:
        out["per_class_acc"] = dict(zip(labels, metrics["per_class_acc"], strict=True))
        out["confusion_matrix"] = {"rows_true_cols_pred": labels, "counts": metrics["confusion"]}
    return out


def _threshold(prob: np.ndarray | None, label: np.ndarray | None, positive: list[int]) -> float:
    """Youden threshold on validation p(malignant) (`mammokit.metrics`); 0.5 when it is undefined."""
    from mammokit.metrics import youden_threshold
    from mammokit.scoring.core import malignant_from_class_probs

    if prob is None or label is None:
        return 0.5
    y = np.isin(label, positive).astype(int)
    if y.min() == y.max():
        log.warning("validation has one class only: the stored threshold is 0.5, not a Youden threshold")
        return 0.5
    return youden_threshold(y, malignant_from_class_probs(prob, positive))


# ---------------------------------------------------------------------------------------- patch stage
def _stage_settings(cfg: PatchTrainConfig | WholeTrainConfig | FinetuneConfig) -> dict[str, Any]:
    """What every training command passes to `run_stages` alike: optimiser, loader, trainer, seed, resume."""
    return {
        "optim": cfg.optim,
        "loader": cfg.loader,
        "trainer_cfg": cfg.trainer,
        "seed": cfg.seed,
        "resume": cfg.resume,
    }


def train_patch(cfg: PatchTrainConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Train a patch classifier on a patch set; returns the run folder.

    Args:
        cfg: resolved configuration (`cfg.data` = patch-set folder, `cfg.out` = run folder).
        callbacks: extra Lightning callbacks (e.g. for tests that interrupt a run).

    Returns:
        The run folder (written by global rank 0; other DDP ranks return it without writing).
    """
    import lightning as L

    from mammokit.data.patches import read_patch_set
    from mammokit.models import create_model
    from mammokit.models.pretrained import input_stats

    data, out = _require(cfg.data, "patch set (--data)"), _require(cfg.out, "run folder (--out)")
    check_run_dir(out, cfg.resume)
    table, meta = read_patch_set(data)
    source_spec = (meta.get("source") or {}).get("preprocess")  # the prepared images' spec, kept by `patches`
    classes = [str(c) for c in meta["classes"]]
    positive_labels = [c for c in classes if "malignant" in c]
    positive = [classes.index(c) for c in positive_labels]
    train_df, val_df = _split(table, "train", "patch set"), _split(table, "val", "patch set")
    test_df = _split(table, "test", "patch set", required=False)
    height, width = _image_size(data, str(train_df["patch_file"].iloc[0]))

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    m = cfg.model
    model = create_model(
        "patch_classifier",
        backbone=m.backbone,
        num_classes=len(classes),
        pretrained=m.pretrained,
        in_chans=1,
        drop_rate=m.drop_rate,
    )
    mean, std = input_stats(m.backbone, m.pretrained)
    cache = cfg.loader.cache_mb
    train_set = PatchDataset(data, train_df, mean=mean, std=std, transform=_train_transform(cfg.loader), cache_mb=cache)
    val_set = PatchDataset(data, val_df, mean=mean, std=std, cache_mb=cache)
    if m.pretrained is None:
        # Random init: nothing to protect, so one all-layers stage (as the original did).
        plans = [StagePlan(cfg.stages[0], 3, "stage1_all")]
    else:
        names = ["stage1_head", "stage2_last_block", "stage3_all"]
        plans = [StagePlan(s, i + 1, names[i]) for i, s in enumerate(cfg.stages)]
    best, is_zero = run_stages(
        run_dir=out,
        model=model,
        plans=plans,
        **_stage_settings(cfg),
        train_set=train_set,
        val_set=val_set,
        train_labels=train_set.labels,
        num_classes=len(classes),
        positive_indices=positive,
        monitor="acc",
        extra_callbacks=callbacks,
    )
    if not is_zero or global_rank() != 0:
        return out
    val_metrics, val_prob, val_label = _evaluate(model, val_set, positive, cfg.loader, cfg.trainer)
    test_set = PatchDataset(data, test_df, mean=mean, std=std, cache_mb=0) if len(test_df) else None  # read once
    test_metrics, _, _ = _evaluate(model, test_set, positive, cfg.loader, cfg.trainer)
    threshold = _threshold(val_prob, val_label, positive)
    card = ModelCard(
        task="patch",
        arch="patch_classifier",
        arch_kwargs=model.arch_kwargs,
        input=InputSpec(height, width, 1, mean, std, preprocess=_recorded_spec(source_spec, f"{data}/patches.json")),
        labels=classes,
        positive_labels=positive_labels,
        threshold=threshold,
        threshold_rule="youden on val (p(malignant) = sum of malignant classes)",
        notes={"pretrained": m.pretrained, "patch_set": str(data)},
    )
    metrics = {
        "monitor": "val_acc",
        "kept_weights": cfg.optim.keep,
        "best_stage": best.best_stage,
        "best_epoch": best.best_epoch,
        "val": _named(val_metrics, classes),
        "test": _named(test_metrics, classes),
    }
    save_run(out, model, card, config=cfg, metrics=metrics)
    log.info("patch run written to %s (val acc %s, test acc %s)", out, val_metrics.get("acc"), test_metrics.get("acc"))
    return out


# ---------------------------------------------------------------------------------------- whole image
def _open_prepared(data: Path) -> PreparedDataset:
    from mammokit.data.manifest import ManifestError

    try:
        return PreparedDataset.open(data)
    except ManifestError as exc:
        raise TrainingError(str(exc)) from None


def _whole_datasets(
    data: Path,
    images: pd.DataFrame,
    mean: float,
    std: float,
    loader: LoaderConfig,
    *,
    bilateral: bool = False,
    partner_dropout: float = 0.0,
) -> tuple[WholeImageDataset, WholeImageDataset, WholeImageDataset | None]:
    train_df, val_df = _split(images, "train", "prepared dataset"), _split(images, "val", "prepared dataset")
    test_df = _split(images, "test", "prepared dataset", required=False)
    cache = loader.cache_mb
    train_set = WholeImageDataset(
        data, train_df, mean=mean, std=std, transform=_train_transform(loader), cache_mb=cache,
        bilateral=bilateral, partner_dropout=partner_dropout,
    )  # fmt: skip
    val_set = WholeImageDataset(data, val_df, mean=mean, std=std, cache_mb=cache, bilateral=bilateral)
    # the test split is read once, after training: caching it would only add a pass
    test_set = (
        WholeImageDataset(data, test_df, mean=mean, std=std, cache_mb=0, bilateral=bilateral) if len(test_df) else None
    )
    if bilateral:
        for name, ds in (("train", train_set), ("val", val_set)):
            single = sum(c != "contralateral" for c in ds.contexts)
            if single:
                log.info("%s split: %d of %d image(s) have no same-view image of the other breast (scored "
                         "with themselves as partner)", name, single, len(ds))  # fmt: skip
    for name, ds in (("train", train_set), ("val", val_set)):
        if len(np.unique(ds.labels)) < 2:
            log.warning("the %s split has one class only: AUC is undefined there", name)
    return train_set, val_set, test_set


def _finish_whole(
    *,
    out: Path,
    model: nn.Module,
    cfg: Any,
    best: Any,
    prepared: PreparedDataset,
    images: pd.DataFrame,
    mean: float,
    std: float,
    val_set: Dataset,
    test_set: Dataset | None,
    parent_run: str | None,
    notes: dict[str, Any],
) -> Path:
    labels = list(WHOLE_IMAGE_CLASSES)
    positive = [labels.index("malignant")]
    val_metrics, val_prob, val_label = _evaluate(model, val_set, positive, cfg.loader, cfg.trainer)
    test_metrics, _, _ = _evaluate(model, test_set, positive, cfg.loader, cfg.trainer)
    height, width = _image_size(prepared.root, str(images["image_file"].iloc[0]))
    card = ModelCard(
        task="whole",
        arch=registered_name(model),  # "whole_image", or "keras_graph" for a fine-tuned imported Keras model
        arch_kwargs=model.arch_kwargs,
        input=InputSpec(
            height,
            width,
            input_channels(model),
            mean,
            std,
            preprocess=_recorded_spec(prepared.spec, f"{prepared.root}/dataset.json"),
        ),
        labels=labels,
        positive_labels=["malignant"],
        threshold=_threshold(val_prob, val_label, positive),
        threshold_rule="youden on val",
        parent_run=parent_run,
        notes=notes,
    )
    metrics = {
        "monitor": "val_auc",
        "kept_weights": cfg.optim.keep,
        "best_stage": best.best_stage,
        "best_epoch": best.best_epoch,
        "val": _named(val_metrics, labels),
        "test": _named(test_metrics, labels),
    }
    save_run(out, model, card, config=cfg, metrics=metrics)
    log.info(
        "whole-image run written to %s (val AUC %s, test AUC %s)", out, val_metrics.get("auc"), test_metrics.get("auc")
    )
    return out


def train_whole(cfg: WholeTrainConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Train a whole-image classifier from a patch run (or from ImageNet with `no_patch_init`).

    Args:
        cfg: resolved configuration (`data` = prepared dataset, `from_patch` = patch run, `out` = run folder).
        callbacks: extra Lightning callbacks.

    Returns:
        The run folder.
    """
    import lightning as L

    from mammokit.models import create_model
    from mammokit.models.convert import whole_from_patch
    from mammokit.models.pretrained import input_stats
    from mammokit.run import load_model

    data, out = _require(cfg.data, "prepared dataset (--data)"), _require(cfg.out, "run folder (--out)")
    check_run_dir(out, cfg.resume)
    prepared = _open_prepared(data)
    images = prepared.images
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    m = cfg.model
    common = {"top": m.top, "num_classes": len(WHOLE_IMAGE_CLASSES), "drop_rate": m.drop_rate,
              "grad_checkpointing": m.grad_checkpointing, "bilateral": m.bilateral}  # fmt: skip
    if cfg.no_patch_init:
        model = create_model("whole_image", backbone=m.backbone, pretrained=m.pretrained, in_chans=1, **common)
        mean, std = input_stats(m.backbone, m.pretrained)
        parent, notes = None, {"init": f"{m.pretrained or 'random'} (no patch stage)"}
    else:
        patch_run = _require(cfg.from_patch, "patch run (--from-patch, or --no-patch-init for the baseline)")
        patch_model, patch_card = load_model(patch_run)
        if patch_card.task != "patch":
            raise TrainingError(f"{patch_run} is a {patch_card.task!r} run; --from-patch needs a patch run")
        model = whole_from_patch(patch_model, **common)
        mean, std = patch_card.input.pixel_mean, patch_card.input.pixel_std
        parent, notes = str(patch_run), {"init": "patch run"}
    train_set, val_set, test_set = _whole_datasets(
        data, images, mean, std, cfg.loader, bilateral=m.bilateral is not None, partner_dropout=m.partner_dropout
    )
    names = ["stage1_top", "stage2_all"]
    plans = [StagePlan(s, i + 1, names[i]) for i, s in enumerate(cfg.stages)]
    best, is_zero = run_stages(
        run_dir=out,
        model=model,
        plans=plans,
        **_stage_settings(cfg),
        train_set=train_set,
        val_set=val_set,
        train_labels=train_set.labels,
        num_classes=len(WHOLE_IMAGE_CLASSES),
        positive_indices=[WHOLE_IMAGE_CLASSES.index("malignant")],
        monitor="auc",
        extra_callbacks=callbacks,
    )
    if not is_zero or global_rank() != 0:
        return out
    return _finish_whole(
        out=out, model=model, cfg=cfg, best=best, prepared=prepared, images=images, mean=mean, std=std,
        val_set=val_set, test_set=test_set, parent_run=parent, notes=notes,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- finetune
def select_patients(images: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Keep the training rows of `n` randomly chosen training patients (all other splits untouched).

    The choice depends only on (seed, the sorted patient ids), so it is reproducible.
    """
    if n <= 0:
        return images
    train = images["split"] == "train"
    patients = np.array(sorted(images.loc[train, "patient_id"].astype(str).unique()))
    if n > len(patients):
        raise TrainingError(f"--train-patients {n}: the training split has only {len(patients)} patients")
    chosen = set(np.random.default_rng(seed).permutation(patients)[:n].tolist())
    keep = ~train | images["patient_id"].astype(str).isin(chosen)
    return images[keep]


def finetune(cfg: FinetuneConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Stage-2-only training of a whole-image run on a new prepared dataset (the INbreast transfer).

    Args:
        cfg: resolved configuration (`from_run` = whole-image run, `data` = new prepared dataset).
        callbacks: extra Lightning callbacks.

    Returns:
        The new run folder.
    """
    import lightning as L

    from mammokit.run import load_model

    data, out = _require(cfg.data, "prepared dataset (--data)"), _require(cfg.out, "run folder (--out)")
    source = _require(cfg.from_run, "whole-image run (--from)")
    check_run_dir(out, cfg.resume)
    prepared = _open_prepared(data)
    images = prepared.images
    if cfg.train_patients:
        if "patient_id" not in images.columns:
            raise TrainingError("--train-patients needs a patient_id column in the manifest")
        images = select_patients(images, cfg.train_patients, cfg.seed)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, card = load_model(source)
    if card.task != "whole":
        raise TrainingError(f"{source} is a {card.task!r} run; finetune needs a whole-image run")
    model.train()
    mean, std = card.input.pixel_mean, card.input.pixel_std
    train_set, val_set, test_set = _whole_datasets(
        data, images, mean, std, cfg.loader, bilateral=card.input.channels == 2,
        partner_dropout=WholeModelConfig().partner_dropout,
    )  # fmt: skip
    best, is_zero = run_stages(
        run_dir=out,
        model=model,
        plans=[StagePlan(cfg.stage, 2, "stage2_all")],
        **_stage_settings(cfg),
        train_set=train_set,
        val_set=val_set,
        train_labels=train_set.labels,
        num_classes=len(card.labels),
        positive_indices=card.positive_indices,
        monitor="auc",
        extra_callbacks=callbacks,
    )
    if not is_zero or global_rank() != 0:
        return out
    notes = {"init": "finetune", "train_patients": cfg.train_patients or "all"}
    return _finish_whole(
        out=out, model=model, cfg=cfg, best=best, prepared=prepared, images=images, mean=mean, std=std,
        val_set=val_set, test_set=test_set, parent_run=str(source), notes=notes,
    )  # fmt: skip
