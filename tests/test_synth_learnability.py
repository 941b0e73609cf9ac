"""The phantom's lesion classes are learnable from local appearance at the reduced sizes the project trains at.

A tiny CNN (3 conv blocks, trained from scratch on CPU) classifies 40-px patches cut from whole images of
256 x 192 (rendered at 512 x 384 and downsized 2x by area averaging) into the five patch classes. The project
needs patch accuracy >= 0.85 from its real patch classifier; this probe, much weaker, must reach a balanced
(per-class mean) accuracy of 0.85 on held-out women. Minutes on CPU: marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest

from mammokit.constants import PATCH_CLASSES_5
from mammokit.synth import render_woman, sample_women

RENDER = (512, 384)
FACTOR = 2
PATCH = 40


def _patches(n_women: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    xs, ys, groups = [], [], []
    h, w = RENDER[0] // FACTOR, RENDER[1] // FACTOR
    half = PATCH // 2
    for woman in sample_women(n_women, seed=seed, normal_fraction=0.2):
        for view in render_woman(woman, height=RENDER[0], width=RENDER[1]):
            image = np.asarray(Image.fromarray(view.image).resize((w, h), Image.BOX))
            breast = np.asarray(Image.fromarray(view.breast_mask.astype(np.uint8)).resize((w, h), Image.NEAREST)) > 0
            padded = np.pad(image, half)
            near_lesion = np.zeros_like(breast)
            for lesion in view.lesions:
                jitter = rng.integers(-PATCH // 6, PATCH // 6 + 1, size=2)
                r = int(lesion.center[0] / FACTOR) + int(jitter[0])
                c = int(lesion.center[1] / FACTOR) + int(jitter[1])
                xs.append(padded[r : r + PATCH, c : c + PATCH])
                ys.append(PATCH_CLASSES_5.index(lesion.spec.patch_class))
                groups.append(woman.index)
                near_lesion[max(r - PATCH, 0) : r + PATCH, max(c - PATCH, 0) : c + PATCH] = True
            candidates = np.argwhere(breast & ~near_lesion)
            if len(candidates):
                r, c = candidates[rng.integers(0, len(candidates))]
                xs.append(padded[r : r + PATCH, c : c + PATCH])
                ys.append(0)
                groups.append(woman.index)
    return np.stack(xs).astype(np.float32), np.array(ys), np.array(groups)


@pytest.mark.slow
def test_tiny_cnn_learns_the_five_patch_classes():
    import torch
    from torch import nn

    torch.manual_seed(0)
    x, y, groups = _patches(200, seed=77)
    val = groups % 5 == 0  # held-out women
    x = torch.from_numpy(x)[:, None]
    y = torch.from_numpy(y)
    mean, std = x[~val].mean(), x[~val].std()
    x = (x - mean) / std
    xt, yt, xv, yv = x[~val], y[~val], x[val], y[val]
    assert set(yv.tolist()) == set(range(5))

    def block(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip

    net = nn.Sequential(
        block(1, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5)
    )
    epochs, batch = 12, 64
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * ((len(xt) + batch - 1) // batch))
    weight = len(yt) / (5 * torch.bincount(yt, minlength=5).float())  # balance the background majority
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            xb = xt[idx]
            xb = torch.where(torch.rand(len(xb), 1, 1, 1) < 0.5, xb.flip(3), xb)
            xb = torch.where(torch.rand(len(xb), 1, 1, 1) < 0.5, xb.flip(2), xb)
            loss = nn.functional.cross_entropy(net(xb), yt[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        pred = net(xv).argmax(1)
    per_class = [float((pred[yv == k] == k).float().mean()) for k in range(5)]
    balanced = float(np.mean(per_class))
    print(f"balanced accuracy {balanced:.3f}; per class {dict(zip(PATCH_CLASSES_5, per_class, strict=True))}")
    assert balanced >= 0.85, dict(zip(PATCH_CLASSES_5, per_class, strict=True))
