"""Small on-disk fixtures for the training tests: a patch set, a prepared dataset and tiny trunk weights.

Images are drawn so that the classes are learnable by a tiny network in a few steps: a patch of class k
holds a bright disk whose radius grows with k; a malignant whole image holds a bright disk somewhere.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from mammokit.config import to_dict
from mammokit.io.images import write_png16
from mammokit.preprocess import PreprocessSpec

TINY_BACKBONE = "test_efficientnet"  # timm's ~0.1 M-parameter test model (stride 32)
TINY_TOP = {"blocks": "vgg", "depths": [16], "repetitions": [1]}


def _disk(size: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: size[0], : size[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)


def make_patch_set(
    root: Path, classes: tuple[str, ...], per_split: dict[str, int], size: int = 32, seed: int = 0
) -> Path:
    """A patch-set folder (patches.parquet, patches.json, images/) with `per_split[split]` patches per class."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in per_split.items():
        for k, name in enumerate(classes):
            for i in range(n):
                img = rng.normal(0.3, 0.05, (size, size)).astype(np.float32)
                if k > 0:
                    r = size * (0.08 + 0.08 * k)
                    c = size / 2 + rng.uniform(-2, 2, 2)
                    img += 0.6 * _disk((size, size), c[0], c[1], r)
                u16 = (np.clip(img, 0, 1) * 65535).astype(np.uint16)
                pid = f"{split}_{name}_{i}"
                write_png16(root / "images" / f"{pid}.png", u16)
                rows.append(
                    {
                        "patch_id": pid,
                        "image_id": f"img_{pid}",
                        "patient_id": f"p_{split}_{i}",
                        "split": split,
                        "class_name": name,
                        "class_index": k,
                        "patch_file": f"images/{pid}.png",
                    }
                )
    pd.DataFrame(rows).to_parquet(root / "patches.parquet", index=False)
    spec = to_dict(PreprocessSpec(height=4 * size, width=3 * size))
    meta = {"classes": list(classes), "patch_size": size, "source": {"preprocess": spec}}
    (root / "patches.json").write_text(json.dumps(meta))
    return root


def make_prepared(root: Path, per_split: dict[str, int], size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """A prepared-dataset folder (manifest.parquet, dataset.json, images/) with half the images malignant."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in per_split.items():
        for i in range(n):
            label = i % 2
            img = rng.normal(0.3, 0.05, size).astype(np.float32)
            if label:
                cy, cx = rng.uniform(0.25, 0.75) * size[0], rng.uniform(0.25, 0.75) * size[1]
                img += 0.6 * _disk(size, cy, cx, min(size) * 0.15)
            iid = f"{split}_{i}"
            write_png16(root / "images" / f"{iid}.png", (np.clip(img, 0, 1) * 65535).astype(np.uint16))
            rows.append(
                {
                    "image_id": iid,
                    "patient_id": f"pat_{split}_{i // 2}",
                    "split": split,
                    "label": label,
                    "image_file": f"images/{iid}.png",
                }
            )
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet", index=False)
    spec = to_dict(PreprocessSpec(height=size[0], width=size[1]))
    (root / "dataset.json").write_text(json.dumps({"source": "fixture", "preprocess": spec}))
    return root


def make_tiny_weights(path: Path, backbone: str = TINY_BACKBONE) -> Path:
    """A trunk state dict file usable as `pretrained=<path>` (random, but it makes the 3-stage schedule run)."""
    import torch
    from safetensors.torch import save_file

    from mammokit.models.backbones import Trunk

    torch.manual_seed(123)
    trunk = Trunk(backbone, in_chans=1)
    save_file({k: v.contiguous() for k, v in trunk.body.state_dict().items()}, str(path))
    return path


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: on a shared 2-core machine, thread oversubscription makes tiny
    models 10-30x slower than on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_whole_argv(data: Path, out: Path, *extra: str) -> list[str]:
    """`mammokit train whole --no-patch-init` on the tiny random trunk and top, one epoch per stage, on the CPU
    (the shared part of the training tests' command lines; `extra` adds flags such as --set model.bilateral=...)."""
    return [
        "train", "whole", "--data", str(data), "--no-patch-init", "--out", str(out), "--device", "cpu",
        "--set", f"model.backbone={TINY_BACKBONE}", "--set", "model.pretrained=null",
        "--set", f"model.top={json.dumps(TINY_TOP)}",
        "--set", "stages=[{epochs: 1}, {epochs: 1, lr_multiplier: 0.1}]",
        "--set", "trainer.progress_bar=false", "--set", "trainer.tensorboard=false",
        *extra,
    ]  # fmt: skip
