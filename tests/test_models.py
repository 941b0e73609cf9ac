"""Patch classifier, whole-image classifier, patch->whole conversion, stage parameters, BN policy, run folders."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

from mammokit.models import create_model, list_models
from mammokit.models.backbones import UnknownBackboneError, feature_shape
from mammokit.models.convert import whole_from_patch
from mammokit.models.patch import PatchClassifier
from mammokit.models.tops import TopSpecError, parse_top
from mammokit.models.utils import apply_bn_policy, freeze_batchnorm, set_trainable
from mammokit.models.whole import WholeImageClassifier

# Small top designs so that CPU tests stay fast; the paper's presets are checked at full size on meta tensors.
SMALL_RESNET_TOP = {"blocks": "resnet", "depths": [16, 16], "repetitions": [2, 2], "enlarge": 2}
SMALL_VGG_TOP = {"blocks": "vgg", "depths": [16], "repetitions": [2]}
SMALL_HEATMAP_BLOCKS = {"heatmap": {"pool_size": 2, "pool_stride": 1}, **SMALL_RESNET_TOP}
SMALL_HEATMAP_FC = {
    "heatmap": {"pool_size": 2, "pool_stride": 1, "max_pool": 1},
    "fc": {"units": [8, 4], "shortcut": True},
    "image_size": [128, 96],
}


@pytest.fixture(scope="module")
def patch_resnet18() -> PatchClassifier:
    torch.manual_seed(0)
    return create_model("patch_classifier", backbone="resnet18", num_classes=5).eval()


def _image(h: int, w: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, h, w, generator=torch.Generator().manual_seed(seed))


def _assert_trains(model: nn.Module, x: torch.Tensor, n_out: int) -> None:
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], n_out)
    out.logsumexp(1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def test_registry_lists_both_models() -> None:
    assert {"patch_classifier", "whole_image"} <= set(list_models())


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_patch_classifier_forward_backward_gray(backbone: str) -> None:
    torch.manual_seed(0)
    model = create_model("patch_classifier", backbone=backbone, num_classes=5)
    x = _image(64, 32, batch=2)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 2, 1)  # output stride 32
    _assert_trains(model, x, 5)


@pytest.mark.parametrize("top", [SMALL_RESNET_TOP, SMALL_VGG_TOP, SMALL_HEATMAP_BLOCKS, SMALL_HEATMAP_FC, "none"])
def test_whole_classifier_forward_backward_gray(top) -> None:
    torch.manual_seed(0)
    # timm's tiny test_resnet (0.4 M parameters, stride 32) keeps this fast; resnet18 is covered below
    model = create_model("whole_image", backbone="test_resnet", top=top, patch_num_classes=5, drop_rate=0.2)
    _assert_trains(model, _image(128, 96), 2)


def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(UnknownBackboneError, match="resnet50"):
        create_model("patch_classifier", backbone="resnet_50", num_classes=2)


def test_any_timm_model_unused_head_layers_are_dropped() -> None:
    # MobileNetV3 keeps a 1x1 conv after its global pool (not part of forward_features): it must not linger
    # as an untrained parameter in the trunk.
    torch.manual_seed(0)
    model = create_model("patch_classifier", backbone="mobilenetv3_small_050", num_classes=3)
    assert isinstance(model.trunk.body.conv_head, nn.Identity)
    _assert_trains(model, _image(64, 64), 3)
    # an ImageNet checkpoint of that model still loads: its conv_head tensors are ignored like a classifier
    from mammokit.models.pretrained import load_trunk_state

    full = timm.create_model("mobilenetv3_small_050")
    load_trunk_state(model.trunk.body, full.state_dict(), "test checkpoint")
    torch.testing.assert_close(model.trunk.body.blocks[0][0].conv_dw.weight, full.blocks[0][0].conv_dw.weight)


def test_token_backbone_is_refused_clearly() -> None:
    model = create_model("patch_classifier", backbone="test_vit", num_classes=2)
    with pytest.raises(ValueError, match="not usable as a trunk"):
        model(torch.zeros(1, 1, 32, 32))


def test_vgg_trunk_drops_fc_layers_and_keeps_pool5() -> None:
    model = create_model("patch_classifier", backbone="vgg11", num_classes=3)
    assert not any(name.startswith("trunk.body.pre_logits") for name, _ in model.named_parameters())
    assert isinstance(model.trunk.body.features[-1], nn.MaxPool2d)  # the kept layer is block5_pool
    assert model.forward_features(_image(32, 32)).shape == (2, 512, 1, 1)


def test_patch_stage_parameters_by_name(patch_resnet18: PatchClassifier) -> None:
    model = patch_resnet18
    s1, s2, s3 = (set(model.stage_parameter_names(s)) for s in (1, 2, 3))
    assert s1 == {"head.fc.weight", "head.fc.bias"}
    assert s1 < s2 < s3
    assert s3 == {n for n, _ in model.named_parameters()}
    trunk_s2 = {n for n in s2 - s1}
    # resnet18's last bottleneck... basic-block unit is layer4.1 (the paper's res5c for resnet50 = layer4.2)
    assert trunk_s2 and all(n.startswith("trunk.body.layer4.1.") for n in trunk_s2)
    assert {n for n, _ in model.trunk.body.layer4[1].named_parameters()} == {
        n.removeprefix("trunk.body.layer4.1.") for n in trunk_s2
    }
    assert len(model.stage_parameters(2)) == len(s2)
    with pytest.raises(ValueError, match="stages 1, 2 and 3"):
        model.stage_parameters(4)


@pytest.mark.parametrize(
    ("backbone", "expected_prefixes"),
    [
        ("vgg11", {"trunk.body.features.16.", "trunk.body.features.18."}),  # block5 convs of vgg11
        ("efficientnet_lite0", {"trunk.body.blocks.6.", "trunk.body.conv_head.", "trunk.body.bn2."}),
    ],
)
def test_patch_stage2_last_block_per_family(backbone: str, expected_prefixes: set[str]) -> None:
    model = create_model("patch_classifier", backbone=backbone, num_classes=2)
    trunk_names = set(model.stage_parameter_names(2)) - set(model.stage_parameter_names(1))
    seen = {p for p in expected_prefixes if any(n.startswith(p) for n in trunk_names)}
    assert seen == expected_prefixes
    assert all(any(n.startswith(p) for p in expected_prefixes) for n in trunk_names)


def test_patch_stage2_generic_family_uses_timm_groups() -> None:
    model = create_model("patch_classifier", backbone="test_convnext", num_classes=2)
    trunk_names = set(model.stage_parameter_names(2)) - set(model.stage_parameter_names(1))
    all_trunk = {n for n, _ in model.trunk.named_parameters()}
    assert trunk_names and len(trunk_names) < len(all_trunk) // 2
    assert not any(n.startswith("trunk.body.stem.") for n in trunk_names)


def test_whole_stage_parameters(patch_resnet18: PatchClassifier) -> None:
    whole = whole_from_patch(patch_resnet18, top=SMALL_HEATMAP_BLOCKS)
    s1, s2 = set(whole.stage_parameter_names(1)), set(whole.stage_parameter_names(2))
    assert s1 < s2 == {n for n, _ in whole.named_parameters()}
    assert not any(n.startswith("trunk.") for n in s1)
    assert not any(n.startswith("top.heatmap.") for n in s1)  # copied from the patch head: frozen in stage 1
    assert any(n.startswith("top.blocks.") for n in s1) and "head.fc.weight" in s1


def test_converted_trunk_gives_identical_feature_maps(patch_resnet18: PatchClassifier) -> None:
    whole = whole_from_patch(patch_resnet18, top=SMALL_RESNET_TOP).eval()
    x = _image(128, 96, batch=1)
    with torch.no_grad():
        ref = patch_resnet18.forward_features(x)
        got = whole.forward_features(x)
    assert got.shape == (1, 512, 4, 3)
    assert torch.equal(got, ref)
    # the copy is independent: training the whole model does not touch the patch model
    with torch.no_grad():
        whole.trunk.body.conv1.weight.add_(1.0)
    assert not torch.equal(whole.trunk.body.conv1.weight, patch_resnet18.trunk.body.conv1.weight)


def test_converted_efficientnet_trunk_identical() -> None:
    torch.manual_seed(0)
    patch = create_model("patch_classifier", backbone="efficientnet_lite0", num_classes=3).eval()
    whole = whole_from_patch(patch, top="none", grad_checkpointing=True).eval()
    x = _image(96, 64, batch=1)
    with torch.no_grad():
        assert torch.equal(whole.forward_features(x), patch.forward_features(x))
    assert whole.grad_checkpointing and whole.arch_kwargs["grad_checkpointing"] is True


def test_heatmap_conv_reproduces_patch_logits(patch_resnet18: PatchClassifier) -> None:
    whole = whole_from_patch(patch_resnet18, top=SMALL_HEATMAP_BLOCKS).eval()
    # 1) an image the size of a patch: the single heatmap cell is the patch classifier's logits
    patch = _image(64, 64, batch=2, seed=7)
    with torch.no_grad():
        heat = whole.forward_heatmap(patch)
        logits = patch_resnet18(patch)
    assert heat.shape == (2, 5, 1, 1)
    torch.testing.assert_close(heat[:, :, 0, 0], logits, rtol=1e-5, atol=1e-5)
    # 2) a larger image: each cell = the patch head applied to the 2x2 feature window it pools
    image = _image(160, 128, batch=1, seed=8)
    with torch.no_grad():
        feats = whole.forward_features(image)
        heat = whole.forward_heatmap(image)
    assert heat.shape == (1, 5, feats.shape[2] - 1, feats.shape[3] - 1)
    for i in range(heat.shape[2]):
        for j in range(heat.shape[3]):
            window = feats[:, :, i : i + 2, j : j + 2]
            torch.testing.assert_close(heat[:, :, i, j], patch_resnet18.forward_head(window), rtol=1e-5, atol=1e-5)
    # the activation of the heatmap in the forward pass is ReLU of these logits
    with torch.no_grad():
        assert torch.equal(whole.top.heatmap(feats), torch.relu(heat))


def test_heatmap_needs_matching_classes(patch_resnet18: PatchClassifier) -> None:
    with pytest.raises(ValueError, match="patch_num_classes=3"):
        whole_from_patch(patch_resnet18, top=SMALL_HEATMAP_BLOCKS, patch_num_classes=3)
    with pytest.raises(TopSpecError, match="patch_num_classes"):
        create_model("whole_image", backbone="resnet18", top=SMALL_HEATMAP_BLOCKS)
    with pytest.raises(ValueError, match="no heatmap layer"):
        whole_from_patch(patch_resnet18, top="none").forward_heatmap(_image(64, 64))


@pytest.mark.parametrize("top", ["none", SMALL_HEATMAP_FC])
def test_arch_kwargs_rebuild_identical_architecture(patch_resnet18: PatchClassifier, top) -> None:
    whole = whole_from_patch(patch_resnet18, top=top, drop_rate=0.3)
    kwargs = json.loads(json.dumps(whole.arch_kwargs))  # must be JSON-able (model.json)
    rebuilt = create_model("whole_image", **kwargs, pretrained=None)
    assert [(n, p.shape) for n, p in rebuilt.state_dict().items()] == [
        (n, p.shape) for n, p in whole.state_dict().items()
    ]
    assert "pretrained" not in patch_resnet18.arch_kwargs
    again = create_model("patch_classifier", **json.loads(json.dumps(patch_resnet18.arch_kwargs)))
    assert again.state_dict().keys() == patch_resnet18.state_dict().keys()


def test_save_and_load_run_gives_identical_outputs(tmp_path) -> None:
    from mammokit.run import InputSpec, ModelCard, load_model, save_run

    torch.manual_seed(0)
    patch = create_model("patch_classifier", backbone="test_resnet", num_classes=5)
    with torch.no_grad():  # move the BN running statistics off their defaults so that buffers are checked too
        patch.train()(_image(64, 64, batch=4))
    patch.eval()

    labels = ["background", "calc_benign", "calc_malignant", "mass_benign", "mass_malignant"]
    card = ModelCard(
        task="patch",
        arch="patch_classifier",
        arch_kwargs=patch.arch_kwargs,
        input=InputSpec(height=64, width=64),
        labels=labels,
        positive_labels=["calc_malignant", "mass_malignant"],
    )
    save_run(tmp_path / "patch", patch, card)
    loaded, _ = load_model(tmp_path / "patch")
    x = _image(64, 64, batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), patch(x))

    whole = whole_from_patch(patch, top=SMALL_HEATMAP_FC)
    with torch.no_grad():
        whole.train()(_image(128, 96, batch=4))
    whole.eval()
    wcard = ModelCard(
        task="whole",
        arch="whole_image",
        arch_kwargs=whole.arch_kwargs,
        input=InputSpec(height=128, width=96),
        labels=["negative", "positive"],
        positive_labels=["positive"],
    )
    save_run(tmp_path / "whole", whole, wcard)
    wloaded, wread = load_model(tmp_path / "whole")
    assert wread.arch_kwargs["top"] == SMALL_HEATMAP_FC
    x = _image(128, 96, batch=2)
    with torch.no_grad():
        assert torch.equal(wloaded(x), whole(x))


def test_paper_presets_feature_arithmetic_at_full_resolution() -> None:
    """The shape table of docs/models.md (1152x896 input) on meta tensors: no memory, no compute."""
    x = torch.empty(2, 1, 1152, 896, device="meta")
    with torch.device("meta"):
        r50 = create_model("whole_image", backbone="resnet50", top="resnet_2x").eval()
        vgg = create_model("whole_image", backbone="vgg16", top="vgg_512x1").eval()
        hm = create_model("whole_image", backbone="resnet50", top="heatmap_fc", patch_num_classes=5).eval()
    f = r50.forward_features(x)
    assert tuple(f.shape) == (2, 2048, 36, 28)
    b1 = r50.top.blocks[0](f)
    assert tuple(b1.shape) == (2, 1024, 18, 14)
    assert tuple(r50.top.blocks[1](b1).shape) == (2, 1024, 9, 7)
    assert [len(b) for b in r50.top.blocks] == [2, 2]  # "[512-512-1024]x2": two blocks of two units
    assert r50.top.blocks[0][0].conv1.stride == (2, 2) and r50.top.blocks[0][1].conv1.stride == (1, 1)
    assert tuple(r50(x).shape) == (2, 2)
    g = vgg.forward_features(x)
    assert tuple(g.shape) == (2, 512, 36, 28)
    assert tuple(vgg.top.blocks[0](g).shape) == (2, 512, 18, 14)
    assert tuple(vgg.top(g).shape) == (2, 512, 9, 7)
    heat = hm.top.heatmap(hm.forward_features(x))
    assert tuple(heat.shape) == (2, 5, 30, 22)  # AvgPool 7x7/1 over 36x28
    assert hm.top.flatten_features == 5 * 6 * 4  # MaxPool 5x5 -> 6x4x5 = 120
    assert hm.top.out_features == 32 + 120  # FC64 -> FC32, plus the heatmap shortcut
    assert tuple(hm(x).shape) == (2, 2)
    assert feature_shape(create_model("patch_classifier", backbone="resnet18", num_classes=2).trunk, 1152, 896) == (
        512,
        36,
        28,
    )


def test_paper_backbones_stage2_is_the_papers_last_block() -> None:
    """resnet50 stage 2 = res5c (layer4.2); vgg16 stage 2 = block5 convs (features.24/26/28); on meta tensors."""
    with torch.device("meta"):
        r50 = create_model("patch_classifier", backbone="resnet50", num_classes=5)
        vgg = create_model("patch_classifier", backbone="vgg16", num_classes=5)
    r50_trunk = set(r50.stage_parameter_names(2)) - set(r50.stage_parameter_names(1))
    assert r50_trunk == {f"trunk.body.{n}" for n, _ in r50.trunk.body.layer4[2].named_parameters(prefix="layer4.2")}
    vgg_trunk = set(vgg.stage_parameter_names(2)) - set(vgg.stage_parameter_names(1))
    assert vgg_trunk == {f"trunk.body.features.{i}.{t}" for i in (24, 26, 28) for t in ("weight", "bias")}


def test_top_spec_errors_are_clear() -> None:
    with pytest.raises(TopSpecError, match="did you mean 'repetitions'"):
        parse_top({"blocks": "resnet", "depths": [8], "repetition": [1]})
    with pytest.raises(TopSpecError, match="unknown top-layer preset 'resnet2x'"):
        parse_top("resnet2x")
    with pytest.raises(TopSpecError, match=r"needs a top\.heatmap"):
        parse_top({"fc": {"units": [8]}, "image_size": [64, 64]})
    with pytest.raises(TopSpecError, match="equal length"):
        parse_top({"blocks": "vgg", "depths": [8, 8], "repetitions": [1]})
    with pytest.raises(TopSpecError, match=r"top\.heatmap: unknown key 'size'"):
        parse_top({"heatmap": {"size": 7}})
    assert parse_top("resnet_2x").enlarge == 2


def test_grad_checkpointing_gives_same_gradients() -> None:
    for backbone, stem in (("test_resnet", "conv1.0.weight"), ("vgg11", "features.0.weight")):
        torch.manual_seed(0)
        model = create_model("whole_image", backbone=backbone, top="none").train()
        x = _image(32, 32)
        grads = []
        for enable in (False, True):
            model.set_grad_checkpointing(enable)
            model.zero_grad()
            model(x).sum().backward()
            grads.append(model.trunk.body.get_parameter(stem).grad.clone())
        assert model.grad_checkpointing and model.arch_kwargs["grad_checkpointing"] is True
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_bn_policy_frozen_vs_keras(patch_resnet18: PatchClassifier) -> None:
    import copy

    x = _image(64, 64, batch=4)
    for policy, expect_change in (("train", True), ("frozen", False)):
        model = copy.deepcopy(patch_resnet18)
        set_trainable(model, model.stage_parameters(1))
        model.train()
        n_eval = apply_bn_policy(model, policy)
        bn = model.trunk.body.bn1
        before = bn.running_mean.clone()
        model(x)
        changed = not torch.equal(before, bn.running_mean)
        assert changed is expect_change, policy
        assert (n_eval > 0) is (policy == "frozen")
        assert model.head.training  # the policy never touches the trainable layers
    model = copy.deepcopy(patch_resnet18)
    set_trainable(model, model.stage_parameters(2))
    model.train()
    apply_bn_policy(model, "frozen")
    assert model.trunk.body.layer4[1].bn1.training and not model.trunk.body.layer4[0].bn1.training
    assert freeze_batchnorm(model) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(ValueError, match="unknown BatchNorm policy"):
        apply_bn_policy(model, "keras")


def test_set_trainable_matches_stage(patch_resnet18: PatchClassifier) -> None:
    import copy

    model = copy.deepcopy(patch_resnet18)
    trainable = set_trainable(model, model.stage_parameters(2))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == set(model.stage_parameter_names(2))
    assert len(trainable) == len(names)


def test_whole_model_is_whole_image_classifier(patch_resnet18: PatchClassifier) -> None:
    whole = whole_from_patch(patch_resnet18, top="none")
    assert isinstance(whole, WholeImageClassifier)
    assert whole.arch_kwargs["backbone"] == "resnet18" and whole.arch_kwargs["top"] == "none"
    with pytest.raises(TypeError, match="comes from the patch model"):
        whole_from_patch(patch_resnet18, top="none", backbone="resnet50")


def test_vgg_top_accepts_small_inputs_whose_map_becomes_one_pixel() -> None:
    """128x96 input -> 4x3 trunk map -> 2x2 -> 1x1: pooling must not fail on the 1-pixel map."""
    import torch

    from mammokit.models import create_model

    model = create_model("whole_image", backbone="resnet18", top="vgg_512x1", pretrained=None).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 128, 96))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_top_bn_momentum_is_configurable_and_defaults_to_keras() -> None:
    from torch import nn

    from mammokit.models import create_model
    from mammokit.models.tops import TopSpecError, parse_top

    def momenta(model: nn.Module) -> set[float]:
        return {m.momentum for m in model.top.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    keras = create_model("whole_image", backbone="resnet18", top="vgg_512x1", pretrained=None)
    assert momenta(keras) == {0.01}
    spec = {"blocks": "vgg", "depths": [64, 64], "repetitions": [1, 1], "bn_momentum": 0.1}
    fast = create_model("whole_image", backbone="resnet18", top=spec, pretrained=None)
    assert momenta(fast) == {0.1}
    # the kwargs stored in model.json rebuild the same momentum
    rebuilt = create_model("whole_image", **{**fast.arch_kwargs, "pretrained": None})
    assert momenta(rebuilt) == {0.1}
    with pytest.raises(TopSpecError, match="bn_momentum"):
        parse_top({**spec, "bn_momentum": 0.0})
