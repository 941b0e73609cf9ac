"""The paper's augmentation (docs/decisions.md) on albumentations: contract, determinism, each step's effect."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from mammokit.config import ConfigError, load_config
from mammokit.data.transforms import AugmentConfig, PaperAugment, augment_preset, build_train_transform


def _image(h: int = 40, w: int = 32) -> torch.Tensor:
    """An asymmetric (1, H, W) test image in [0, 1]: a gradient plus an off-centre bright block."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    x = 0.2 + 0.5 * (yy / h) * (xx / w)
    x[5:14, 3:10] = 0.9
    return x.unsqueeze(0)


def test_shape_dtype_and_range_are_preserved():
    t = build_train_transform(AugmentConfig())
    x = _image()
    before = x.clone()
    for seed in range(20):
        torch.manual_seed(seed)
        y = t(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.equal(x, before)  # the input is not modified in place
    y64 = t(x.double())
    assert y64.dtype == torch.float64 and y64.shape == x.shape


def test_deterministic_under_torch_seed_and_varies_between_draws():
    t = build_train_transform()
    x = _image()
    torch.manual_seed(5)
    a = [t(x) for _ in range(3)]
    torch.manual_seed(5)
    b = [t(x) for _ in range(3)]
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], a[1])


def test_none_preset_is_identity():
    x = _image()
    assert torch.equal(build_train_transform(AugmentConfig.none())(x), x)
    assert augment_preset("none").enabled is False
    assert augment_preset("paper") == AugmentConfig()
    with pytest.raises(ConfigError, match="unknown augmentation preset"):
        augment_preset("heavy")


def test_flips_are_exact():
    x = _image()
    for _ in range(3):
        assert torch.equal(PaperAugment(AugmentConfig(hflip_p=1.0).only("hflip"))(x), x.flip(-1))
        assert torch.equal(PaperAugment(AugmentConfig(vflip_p=1.0).only("vflip"))(x), x.flip(-2))
    both = PaperAugment(AugmentConfig(hflip_p=1.0, vflip_p=1.0).only("hflip", "vflip"))
    assert torch.equal(both(x), x.flip(-1).flip(-2))


def test_flip_decisions_are_independent():
    """albumentations' Compose(seed=...) makes both flips fire together; ours must draw them independently."""
    x = _image()
    t = PaperAugment(AugmentConfig().only("hflip", "vflip"))
    torch.manual_seed(0)
    outcomes = []
    for _ in range(200):
        y = t(x)
        h = torch.equal(y, x.flip(-1)) or torch.equal(y, x.flip(-1).flip(-2))
        v = torch.equal(y, x.flip(-2)) or torch.equal(y, x.flip(-1).flip(-2))
        outcomes.append((h, v))
    counts = {k: outcomes.count(k) for k in [(False, False), (True, False), (False, True), (True, True)]}
    assert all(25 <= n <= 75 for n in counts.values()), counts  # each about 50 of 200


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(rotate_deg=25.0, shear_deg=0.0, zoom=(1.0, 1.0)),
        AugmentConfig(rotate_deg=0.0, shear_deg=11.46, zoom=(1.0, 1.0)),
        AugmentConfig(rotate_deg=0.0, shear_deg=0.0, zoom=(0.8, 1.2)),
    ],
    ids=["rotation", "shear", "zoom"],
)
def test_each_affine_step_changes_the_image(cfg):
    t = PaperAugment(cfg.only("affine"))
    x = _image()
    torch.manual_seed(1)
    changed = [float((t(x) - x).abs().max()) for _ in range(5)]
    assert max(changed) > 0.05


def _extent_ratios(cfg: AugmentConfig, draws: int = 20) -> list[float]:
    """Zoom a centred 20x20 square (black fill) and return width/height of the result, per draw."""
    x = torch.zeros(1, 64, 64)
    x[0, 22:42, 22:42] = 1.0
    t = PaperAugment(cfg.only("affine"))
    torch.manual_seed(4)
    ratios = []
    for _ in range(draws):
        y = t(x)[0] > 0.5
        width, height = int(y.any(0).sum()), int(y.any(1).sum())
        ratios.append(width / height)
    return ratios


def test_zoom_is_independent_in_x_and_y():
    base = AugmentConfig(rotate_deg=0, shear_deg=0, zoom=(0.8, 1.2), fill="constant")
    independent = _extent_ratios(base)
    assert max(abs(r - 1.0) for r in independent) > 0.1  # the aspect ratio changes (paper)
    tied = _extent_ratios(AugmentConfig(rotate_deg=0, shear_deg=0, zoom=(0.8, 1.2), fill="constant",
                                        zoom_independent=False))  # fmt: skip
    assert max(abs(r - 1.0) for r in tied) <= 0.1  # only pixel rounding


def test_intensity_shift_is_uniform_offset_within_range():
    t = PaperAugment(AugmentConfig().only("intensity"))
    x = _image()
    torch.manual_seed(3)
    shifts = []
    for _ in range(30):
        d = t(x) - x
        assert float(d.max() - d.min()) < 1e-6  # one shift for every pixel (no clipping at these values)
        shifts.append(float(d.mean()))
    assert max(abs(s) for s in shifts) <= 20 / 255 + 1e-6
    assert max(shifts) > 0.03 and min(shifts) < -0.03  # both directions, near the +/-0.078 bounds


def test_shifted_values_are_clipped_to_unit_range():
    t = PaperAugment(AugmentConfig(intensity_shift=0.5).only("intensity"))
    x = torch.tensor([[[0.0, 0.99], [0.5, 1.0]]])
    torch.manual_seed(0)
    for _ in range(10):
        y = t(x)
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_constant_fill_and_nearest_interpolation():
    x = torch.full((1, 30, 30), 0.6)
    cfg = AugmentConfig(rotate_deg=0, shear_deg=0, zoom=(0.8, 0.8), fill="constant", fill_value=0.0)
    y = PaperAugment(cfg.only("affine"))(x)
    assert float(y[0, 0, 0]) == 0.0 and float(y[0, 15, 15]) == pytest.approx(0.6)  # shrunk: border filled
    edge = PaperAugment(AugmentConfig(rotate_deg=0, shear_deg=0, zoom=(0.8, 0.8)).only("affine"))(x)
    assert torch.allclose(edge, x)  # edge replication of a flat image is flat
    nearest = PaperAugment(AugmentConfig(interpolation="nearest").only("affine"))
    torch.manual_seed(0)
    values = set(np.unique(nearest(_image()).numpy()).tolist())
    assert values <= set(np.unique(_image().numpy()).tolist())  # nearest neighbour creates no new values


def test_shear_default_is_paper_radians():
    assert AugmentConfig().shear_deg == pytest.approx(math.degrees(0.2))
    assert AugmentConfig().intensity_shift == pytest.approx(20 / 255)


def test_picklable_for_dataloader_workers():
    t = build_train_transform()
    clone = pickle.loads(pickle.dumps(t))
    x = _image()
    torch.manual_seed(2)
    a = t(x)
    torch.manual_seed(2)
    assert torch.equal(clone(x), a)


def test_bad_input_and_bad_config():
    t = build_train_transform()
    with pytest.raises(ValueError, match=r"shape \(1, H, W\)"):
        t(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(1, H, W\)"):
        t(torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="zoom"):
        AugmentConfig(zoom=(1.2, 0.8)).validate()
    with pytest.raises(ConfigError, match="hflip_p"):
        PaperAugment(AugmentConfig(hflip_p=2.0))


def test_loads_from_yaml_config(tmp_path):
    f = tmp_path / "aug.yaml"
    f.write_text("rotate_deg: 10\nzoom: [0.9, 1.1]\ninterpolation: nearest\n")
    cfg = load_config(AugmentConfig, [f], ["enabled=false"])
    assert cfg.rotate_deg == 10 and cfg.zoom == (0.9, 1.1) and cfg.interpolation == "nearest"
    assert cfg.enabled is False
    with pytest.raises(ConfigError, match="did you mean 'rotate_deg'"):
        load_config(AugmentConfig, overrides=["rotate_degs=3"])
