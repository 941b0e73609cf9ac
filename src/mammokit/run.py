"""The run folder is the model: save and load everything needed to use a trained network.

Layout of a run folder::

    RUN/
      model.json          ModelCard: architecture + kwargs, input size, preprocessing, normalisation,
                          label names, which labels mean "malignant", operating threshold, calibration
      model.safetensors   weights (safetensors: no pickle, so loading never executes code)
      config.yaml         the resolved training configuration
      metrics.json        validation/test metrics written by training or evaluation
      calibration.json    optional temperature/Platt scaling fitted on validation data (plain JSON)
      logs/               Lightning CSV / TensorBoard logs
      checkpoints/        Lightning checkpoints (for --resume only; never needed to load the model)

Loading needs nothing but this folder.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mammokit.config import dump_yaml, from_dict, to_dict
from mammokit.preprocess import PreprocessSpec
from mammokit.utils.atomic import atomic_path, atomic_write_json, atomic_write_text
from mammokit.version import __version__

if TYPE_CHECKING:  # torch is imported lazily so that reading a card (ONNX path) never needs it
    import torch
    from torch import nn

MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
CONFIG_YAML = "config.yaml"
METRICS_JSON = "metrics.json"
CALIBRATION_JSON = "calibration.json"
FORMAT_VERSION = 1


class RunFolderError(FileNotFoundError):
    """A run folder is missing a file or holds an inconsistent one."""


@dataclass
class InputSpec:
    """What the network expects: the prepared image geometry and the intensity normalisation."""

    height: int
    width: int
    channels: int = 1  # grayscale; the stem of ImageNet models is adapted (see models.backbones)
    pixel_mean: float = 0.449  # applied to uint16/65535; default = ImageNet RGB means averaged
    pixel_std: float = 0.226
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)


@dataclass
class ModelCard:
    """Contents of `model.json`."""

    task: Literal["patch", "whole"]
    arch: str  # name in mammokit.models.registry
    arch_kwargs: dict[str, Any]
    input: InputSpec
    labels: list[str]  # output unit i is labels[i]
    positive_labels: list[str]  # p(malignant) = sum of softmax over these labels
    threshold: float = 0.5  # operating threshold on p(malignant) for the yes/no call
    threshold_rule: str = "default 0.5"  # how the threshold was chosen (e.g. "youden on val")
    format_version: int = FORMAT_VERSION
    mammokit_version: str = __version__
    created: str = ""
    parent_run: str | None = None  # the patch run a whole-image model was initialised from
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def positive_indices(self) -> list[int]:
        return [self.labels.index(name) for name in self.positive_labels]


def _atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, de-aliased copy of the model's state dict (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        out[key] = tensor.detach().to("cpu").contiguous().clone()
    return out


def save_run(
    run_dir: str | Path,
    model: nn.Module,
    card: ModelCard,
    *,
    config: Any | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write weights, (optionally) the resolved config and metrics, and model.json into `run_dir`.

    model.json last: its presence means the run is complete (a full disk or a kill part-way leaves none).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not card.created:
        card = dataclasses.replace(card, created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    _atomic_save_safetensors(state_dict_for_saving(model), run_dir / WEIGHTS, {"format": "pt", "arch": card.arch})
    if config is not None:
        atomic_write_text(run_dir / CONFIG_YAML, dump_yaml(config))
    if metrics is not None:
        write_metrics(run_dir, metrics)
    atomic_write_json(run_dir / MODEL_JSON, to_dict(card))
    return run_dir


def write_metrics(run_dir: str | Path, metrics: dict[str, Any], *, merge: bool = True) -> None:
    """Write (or merge into) `metrics.json`."""
    path = Path(run_dir) / METRICS_JSON
    current: dict[str, Any] = {}
    if merge and path.is_file():
        current = json.loads(path.read_text())
    current.update(metrics)
    atomic_write_json(path, current)


def read_card(run_dir: str | Path) -> ModelCard:
    """Read and validate `model.json`."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL_JSON
    if not path.is_file():
        raise RunFolderError(
            f"{run_dir} is not a mammokit run folder: {MODEL_JSON} is missing "
            "(train one with `mammokit train patch|whole`, or pass the folder that holds model.json)"
        )
    data = _read_json(path)
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: malformed {MODEL_JSON} (the top level must be an object)")
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise RunFolderError(f"{path}: malformed {MODEL_JSON} (format_version {version!r} is not an integer)")
    if version > FORMAT_VERSION:
        raise RunFolderError(f"{path}: format_version {version} is newer than this mammokit supports; upgrade")
    try:
        return from_dict(ModelCard, data)
    except ValueError as exc:  # ConfigError: a missing, unknown or mistyped field
        raise RunFolderError(f"{path}: malformed {MODEL_JSON} ({exc})") from None


def _read_json(path: Path) -> Any:
    """A JSON file of a run folder; RunFolderError naming the file when it is unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunFolderError(f"{path}: unreadable or malformed JSON ({' '.join(str(exc).split())[:200]})") from None


def load_model(
    run_dir: str | Path, device: str | torch.device = "cpu", card: ModelCard | None = None
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the network from `model.json`, load `model.safetensors`, and return it in eval mode.

    `card`: the run's model card when the caller has read it already (so model.json is read once per load).
    """
    from safetensors.torch import load_file

    from mammokit.models.registry import create_model

    run_dir = Path(run_dir)
    card = card or read_card(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise RunFolderError(f"{run_dir}: {WEIGHTS} is missing; the run did not finish saving")
    kwargs = dict(card.arch_kwargs)
    kwargs["pretrained"] = None  # the saved weights replace any initialisation
    try:
        model = create_model(card.arch, **kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunFolderError(
            f"{run_dir / MODEL_JSON}: arch {card.arch!r} / arch_kwargs do not build a model ({exc})"
        ) from None
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # SafetensorError (truncated, bad header), OSError
        raise RunFolderError(
            f"{weights}: unreadable safetensors file, probably truncated or corrupt ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); copy the run folder again"
        ) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes differ from the architecture
        raise RunFolderError(
            f"{weights} does not match architecture {card.arch!r} ({str(exc).splitlines()[0]})"
        ) from None
    if missing or unexpected:
        raise RunFolderError(
            f"{weights} does not match architecture {card.arch!r}: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
    model.to(device).eval()
    return model, card


def read_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """The stored calibration map (plain JSON) or None."""
    path = Path(run_dir) / CALIBRATION_JSON
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: malformed {CALIBRATION_JSON} (the top level must be an object)")
    return data


def unique_run_names(names: Sequence[str], reserved: Collection[str] = ()) -> list[str]:
    """Run names made unique by suffixes (-2, -3, ...), so two runs both called `whole` stay apart in outputs.

    A name in `reserved` is suffixed too (evaluate's "ensemble" row must not be mistaken for a run of that name).
    """
    out: list[str] = []
    for name in names:
        candidate, k = name, 2
        while candidate in out or candidate in reserved:
            candidate, k = f"{name}-{k}", k + 1
        out.append(candidate)
    return out
