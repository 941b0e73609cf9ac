"""Unit tests of the training engine's pieces: loss, sampler, seeded augmentation, optimizer/L2, metrics."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mammokit.config import ConfigError, load_config
from mammokit.data.datasets import EpochSampler, PatchDataset, seeded_rng
from mammokit.engine.config import OptimConfig, PatchTrainConfig, WholeTrainConfig
from mammokit.engine.losses import batch_balanced_cross_entropy, classification_loss
from mammokit.engine.metrics import classification_metrics
from mammokit.engine.schedule import build_optimizer, regularised_parameters


# ---------------------------------------------------------------------------------------------- loss
def test_balanced_loss_is_sum_of_class_means_and_matches_keras_weighting() -> None:
    torch.manual_seed(0)
    logits = torch.randn(7, 3)
    target = torch.tensor([0, 0, 0, 0, 2, 2, 0])  # class 1 absent
    per = F.cross_entropy(logits, target, reduction="none")
    expected = per[target == 0].mean() + per[target == 2].mean()
    got = batch_balanced_cross_entropy(logits, target)
    assert torch.allclose(got, expected)
    # Keras 2.0: sample weight 1 / (fraction of its class in the batch), then mean(loss * weight).
    frac = torch.bincount(target, minlength=3).float()[target] / len(target)
    assert torch.allclose(got, (per / frac).mean())
    # unbalanced loss is the plain mean
    assert torch.allclose(classification_loss(logits, target, balanced=False), per.mean())


def test_balanced_loss_gives_rare_class_the_weight_of_a_common_one() -> None:
    logits = torch.zeros(10, 2, requires_grad=True)
    target = torch.tensor([0] * 9 + [1])
    batch_balanced_cross_entropy(logits, target).backward()
    grad_rare = logits.grad[9].abs().sum()
    grad_common_total = logits.grad[:9].abs().sum()
    assert torch.allclose(grad_rare, grad_common_total)


# ------------------------------------------------------------------------------------------- sampler
def test_epoch_sampler_is_a_function_of_seed_and_epoch() -> None:
    labels = np.arange(20) % 4
    s1 = EpochSampler(labels, shuffle=True, seed=3)
    s2 = EpochSampler(labels, shuffle=True, seed=3)
    s1.set_epoch(2)
    s2.set_epoch(0)
    list(s2)  # iterating other epochs first must not change epoch 2's order
    s2.set_epoch(2)
    assert list(s1) == list(s2)
    s2.set_epoch(3)
    assert list(s1) != list(s2)
    assert sorted(i for i, _ in s1) == list(range(20))  # a permutation
    assert len({seed for _, seed in s1}) == 20  # one augmentation seed per draw


def test_epoch_sampler_shards_over_ranks_and_skips_for_resume() -> None:
    labels = np.zeros(11, dtype=int)
    shards = [list(EpochSampler(labels, shuffle=True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # 11 padded to 12
    assert {i for s in shards for i, _ in s} == set(range(11))
    s = EpochSampler(labels, shuffle=True, seed=1, rank=0, world_size=3)
    s.skip_next(3)
    assert list(s) == shards[0][3:]
    assert list(s) == shards[0]  # the skip applies to one iteration only


def test_balanced_sampler_draws_classes_about_equally() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    s = EpochSampler(labels, shuffle=True, balanced=True, seed=0)
    counts = np.zeros(2)
    for epoch in range(20):
        s.set_epoch(epoch)
        for i, _ in s:
            counts[labels[i]] += 1
    assert 0.4 < counts[1] / counts.sum() < 0.6


def test_epoch_sampler_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        EpochSampler([], shuffle=True)
    with pytest.raises(ValueError, match="rank"):
        EpochSampler([0, 1], shuffle=True, rank=2, world_size=2)


# ------------------------------------------------------------------------------ seeded augmentation
def test_seeded_transform_repeats_and_restores_global_rng(tmp_path) -> None:
    from mammokit.io.images import write_png16

    write_png16(tmp_path / "a.png", (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))
    table = pd.DataFrame({"patch_id": ["a"], "patch_file": ["a.png"], "class_index": [1]})

    def noisy(x: torch.Tensor) -> torch.Tensor:  # uses torch, numpy and python RNGs
        return x + torch.rand(1) + float(np.random.rand()) + random.random()

    ds = PatchDataset(tmp_path, table, mean=0.5, std=0.25, transform=noisy)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a, b, c = ds[(0, 7)], ds[(0, 7)], ds[(0, 8)]
    after = torch.rand(1)
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], c["image"])
    assert torch.equal(before, after)  # the caller's random stream is untouched
    assert a["label"] == 1 and a["index"] == 0


def test_seeded_rng_reseeds_transform_with_own_generator() -> None:
    class OwnRng:
        def __init__(self) -> None:
            self.rng = np.random.default_rng()

        def set_random_seed(self, seed: int) -> None:
            self.rng = np.random.default_rng(seed)

    t = OwnRng()
    with seeded_rng(5, t):
        first = t.rng.random()
    with seeded_rng(5, t):
        assert t.rng.random() == first


# ---------------------------------------------------------------------------------- optimizer / L2
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).mean((2, 3)))


def test_l2_only_on_new_layer_kernels() -> None:
    net = _Net()
    ids = regularised_parameters(net)
    assert ids == {id(net.head.weight)}


def test_keras_l2_equals_explicit_penalty() -> None:
    torch.manual_seed(0)
    lam, lr = 0.01, 0.1
    net_a, x, y = _Net(), torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 1])
    net_b = _Net()
    net_b.load_state_dict(net_a.state_dict())
    cfg = OptimConfig(name="sgd", momentum=0.0, weight_decay=lam, l2_style="keras")
    opt = build_optimizer(list(net_a.parameters()), regularised_parameters(net_a), cfg, lr)
    F.cross_entropy(net_a(x), y).backward()
    opt.step()
    # reference: Keras' l2(lambda) adds lambda * sum(W^2) of the head kernel to the loss
    loss = F.cross_entropy(net_b(x), y) + lam * net_b.head.weight.pow(2).sum()
    loss.backward()
    with torch.no_grad():
        for p in net_b.parameters():
            p -= lr * p.grad
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_optimizer_choice_follows_l2_style() -> None:
    net = _Net()
    params, reg = list(net.parameters()), regularised_parameters(net)
    assert type(build_optimizer(params, reg, OptimConfig(name="adam", l2_style="keras"), 1e-3)) is torch.optim.Adam
    opt = build_optimizer(params, reg, OptimConfig(name="adam", l2_style="decoupled", weight_decay=0.1), 1e-3)
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert len(opt.param_groups[0]["params"]) == 1


# ------------------------------------------------------------------------------------------ metrics
def test_classification_metrics_per_class_and_confusion() -> None:
    prob = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    label = np.array([0, 1, 2, 2])
    m = classification_metrics(prob, label, positive_indices=[2])
    assert m["acc"] == pytest.approx(0.75)
    assert m["per_class_acc"] == [1.0, 1.0, 0.5]
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    # malignant scores (0.7, 0.1) vs (0.1, 0.1): 2 wins + 2 ties of 4 pairs
    assert m["auc"] == pytest.approx(0.75)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.8, 0.7, 0.1])))


def test_training_threshold_is_youden_on_summed_malignant_probabilities() -> None:
    """The stored threshold: Youden (mammokit.metrics, the one definition) on p(malignant) summed over the
    malignant classes; a one-class validation set gives 0.5 (Youden is undefined there)."""
    from mammokit.engine.train import _threshold

    # three classes, classes 1 and 2 malignant: p(malignant) = 0.1, 0.2, 0.3 (benign) and 0.8, 0.9 (malignant)
    p_mal = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    prob = np.stack([1 - p_mal, p_mal / 2, p_mal / 2], axis=1)
    label = np.array([0, 0, 0, 1, 2])
    assert _threshold(prob, label, [1, 2]) == pytest.approx(0.8)  # the lowest score calling both cancers
    assert _threshold(prob, np.zeros(5, dtype=int), [1, 2]) == 0.5
    assert _threshold(None, None, [1]) == 0.5


# ------------------------------------------------------------------------------------------- config
def test_configs_load_from_the_shipped_yaml_files() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    patch = load_config(PatchTrainConfig, [root / "patch" / "default.yaml"], ["optim.lr=0.01"])
    assert patch.optim.lr == 0.01 and len(patch.stages) == 3
    whole = load_config(WholeTrainConfig, [root / "whole" / "default.yaml"])
    assert len(whole.stages) == 2
    with pytest.raises(ConfigError, match="stages"):
        load_config(PatchTrainConfig, overrides=["stages=[{epochs: 1}, {epochs: 1}, {epochs: 1}, {epochs: 1}]"])
    with pytest.raises(ConfigError, match="did you mean"):
        load_config(PatchTrainConfig, overrides=["optim.learning_rate=0.1"])


# --------------------------------------------------------------------------- stages and BN policy
def _tiny_whole():  # type: ignore[no-untyped-def]
    from engine_support import TINY_BACKBONE, TINY_TOP
    from mammokit.models import create_model

    torch.manual_seed(0)
    return create_model("whole_image", backbone=TINY_BACKBONE, top=TINY_TOP, pretrained=None, in_chans=1)


def _module(model, trainable, policy):  # type: ignore[no-untyped-def]
    from mammokit.engine.config import LoaderConfig
    from mammokit.engine.module import ClassifierModule

    return ClassifierModule(
        model,
        trainable=trainable,
        train_set=[],
        val_set=[],
        train_labels=np.zeros(1),
        num_classes=2,
        positive_indices=[1],
        optim=OptimConfig(bn_policy=policy),
        lr=1e-3,
        loader=LoaderConfig(),
        seed=0,
        stage=1,
    )


@pytest.mark.parametrize(("policy", "frozen_stats_move"), [("train", True), ("frozen", False)])
def test_bn_policy_for_frozen_layers(policy: str, frozen_stats_move: bool) -> None:
    from mammokit.engine.schedule import stage_trainable

    model = _tiny_whole()
    trainable = stage_trainable(model, 1)  # new top layers only; the trunk is frozen
    module = _module(model, trainable, policy)
    model.train()
    trunk_bn = next(m for m in model.trunk.modules() if isinstance(m, nn.BatchNorm2d))
    top_bn = next(m for m in model.top.modules() if isinstance(m, nn.BatchNorm2d))
    before_trunk, before_top = trunk_bn.running_mean.clone(), top_bn.running_mean.clone()
    module.on_train_batch_start({}, 0)
    model(torch.rand(2, 1, 64, 64) * 3)
    assert not torch.equal(top_bn.running_mean, before_top)  # trainable BN always learns its statistics
    assert (not torch.equal(trunk_bn.running_mean, before_trunk)) == frozen_stats_move


def test_stage_one_trains_only_the_new_layers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from engine_support import make_prepared, single_thread
    from mammokit.data.datasets import WholeImageDataset
    from mammokit.engine.config import LoaderConfig, StageConfig, TrainerConfig
    from mammokit.engine.runner import StagePlan, run_stages

    prepared = make_prepared(tmp_path / "prep", {"train": 4, "val": 2})
    images = pd.read_parquet(prepared / "manifest.parquet")
    train = WholeImageDataset(prepared, images[images["split"] == "train"], mean=0.5, std=0.25)
    val = WholeImageDataset(prepared, images[images["split"] == "val"], mean=0.5, std=0.25)
    model = _tiny_whole()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with single_thread():
        best, is_zero = run_stages(
            run_dir=tmp_path / "run",
            model=model,
            plans=[StagePlan(StageConfig(1, 1.0), 1, "stage1_top")],
            optim=OptimConfig(bn_policy="frozen"),
            loader=LoaderConfig(batch_size=2),
            trainer_cfg=TrainerConfig(accelerator="cpu", progress_bar=False, tensorboard=False),
            seed=0,
            resume=False,
            train_set=train,
            val_set=val,
            train_labels=train.labels,
            num_classes=2,
            positive_indices=[1],
            monitor="auc",
        )
    assert is_zero and best.best_stage == 1
    after = model.state_dict()
    trunk = [k for k in before if k.startswith("trunk.")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)  # weights and BN statistics kept
    assert not torch.equal(before["head.fc.weight"], after["head.fc.weight"])
    # trained in channels_last (the default), and left so for the evaluation that follows
    convs = [p for p in model.parameters() if p.dim() == 4 and min(p.shape[2:]) > 1 and p.shape[1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


# --------------------------------------------------------------------------- speed paths (issue 15)
def test_dataset_cache_gives_the_same_samples_and_respects_the_budget(tmp_path) -> None:
    from mammokit.io.images import write_png16

    rng = np.random.default_rng(0)
    for i in range(5):
        write_png16(tmp_path / f"p{i}.png", rng.integers(0, 65535, (16, 12), dtype=np.uint16))
    table = pd.DataFrame({"patch_id": [f"p{i}" for i in range(5)], "patch_file": [f"p{i}.png" for i in range(5)],
                          "class_index": [0, 1, 2, 1, 0]})  # fmt: skip

    def shift(x: torch.Tensor) -> torch.Tensor:  # random, so that the seeding is exercised too
        return x + torch.rand(1)

    cached = PatchDataset(tmp_path, table, mean=0.5, std=0.25, transform=shift)
    plain = PatchDataset(tmp_path, table, mean=0.5, std=0.25, transform=shift, cache_mb=0)
    assert cached.cached is not None and len(cached.cached) == 5 and plain.cached is None
    for i in range(5):
        assert torch.equal(cached[(i, 11)]["image"], plain[(i, 11)]["image"])
        assert cached.cached[i].dtype == np.uint16  # kept as decoded: 2 bytes a pixel
    (tmp_path / "p3.png").unlink()  # a cached set no longer reads the files
    assert torch.equal(cached[(3, 5)]["image"], cached[(3, 5)]["image"])
    with pytest.raises(FileNotFoundError):
        plain[3]
    tiny = PatchDataset(tmp_path, table.iloc[:3], mean=0.5, std=0.25, cache_mb=1e-4)  # 100 bytes < 3 x 384
    assert tiny.cached is None


def test_seeded_rng_does_not_touch_accelerator_seeding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the CPU generator is re-seeded per sample (torch.manual_seed would queue CUDA seeding each time)."""
    calls = []
    monkeypatch.setattr(torch, "manual_seed", lambda seed: calls.append(seed))
    with seeded_rng(5):
        a = torch.rand(3)
    with seeded_rng(5):
        b = torch.rand(3)
    assert torch.equal(a, b) and calls == []


def test_module_hands_channels_last_batches_to_the_model() -> None:
    module = _module(_tiny_whole(), [], "train")
    batch = {"image": torch.randn(2, 1, 16, 12), "label": torch.zeros(2, dtype=torch.long)}
    assert module.on_after_batch_transfer(dict(batch), 0)["image"].is_contiguous()  # off: unchanged
    module.channels_last = True
    x = module.on_after_batch_transfer(dict(batch), 0)["image"]
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, batch["image"])


def test_bf16_training_is_opt_in_and_the_threshold_uses_float32_probabilities(tmp_path) -> None:
    from engine_support import make_prepared, single_thread
    from mammokit.data.datasets import WholeImageDataset
    from mammokit.engine.config import LoaderConfig, StageConfig, TrainerConfig
    from mammokit.engine.runner import StagePlan, run_stages
    from mammokit.engine.train import _evaluate

    assert TrainerConfig().precision == "32-true" and TrainerConfig().channels_last
    prepared = make_prepared(tmp_path / "prep", {"train": 4, "val": 2})
    images = pd.read_parquet(prepared / "manifest.parquet")
    train = WholeImageDataset(prepared, images[images["split"] == "train"], mean=0.5, std=0.25)
    val = WholeImageDataset(prepared, images[images["split"] == "val"], mean=0.5, std=0.25)
    model = _tiny_whole()
    trainer_cfg = TrainerConfig(accelerator="cpu", precision="bf16-mixed", progress_bar=False, tensorboard=False)
    with single_thread():
        run_stages(
            run_dir=tmp_path / "run", model=model, plans=[StagePlan(StageConfig(1, 1.0), 2, "stage2_all")],
            optim=OptimConfig(), loader=LoaderConfig(batch_size=2), trainer_cfg=trainer_cfg, seed=0, resume=False,
            train_set=train, val_set=val, train_labels=train.labels, num_classes=2, positive_indices=[1],
            monitor="auc",
        )  # fmt: skip
        _, prob, label = _evaluate(model, val, [1], LoaderConfig(batch_size=2), trainer_cfg)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 autocast: fp32 master weights
    assert prob is not None and prob.dtype == np.float32 and np.allclose(prob.sum(1), 1.0, atol=1e-5)
    assert label is not None and len(label) == len(val)


def test_cosine_schedule_takes_the_stage_lr_to_zero_over_the_stage_steps() -> None:
    from types import SimpleNamespace

    from mammokit.engine.config import LoaderConfig
    from mammokit.engine.module import ClassifierModule

    with pytest.raises(ConfigError, match="lr_plateau_patience"):
        OptimConfig(schedule="cosine").validate()  # the plateau rule would fight the per-step schedule
    model = _tiny_whole()
    optim = OptimConfig(name="adamw", lr=3e-4, schedule="cosine", lr_plateau_patience=0)
    module = ClassifierModule(
        model, trainable=list(model.parameters()), train_set=[], val_set=[], train_labels=np.zeros(0),
        num_classes=2, positive_indices=[1], optim=optim, lr=3e-4, loader=LoaderConfig(), seed=0, stage=2,
    )  # fmt: skip
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)  # a stage of 10 optimizer steps
    conf = module.configure_optimizers()
    optimizer, sched = conf["optimizer"], conf["lr_scheduler"]
    assert sched["interval"] == "step"
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched["scheduler"].step()
    assert rates[0] == pytest.approx(3e-4) and all(a > b for a, b in itertools.pairwise(rates))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # zero at the end of the stage
    assert rates[5] == pytest.approx(1.5e-4, rel=1e-6)  # half-way: half the rate (cosine)
