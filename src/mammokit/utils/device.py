"""Device names: what every command's `--device` accepts, and their torch and Lightning spellings.

The one place that maps them: "auto", "cpu", "cuda", "cuda:N", "mps", and "gpu" (Lightning's name for CUDA,
accepted because a trainer config may say it). torch is imported only to resolve "auto" and check CUDA, so
mapping a name costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from mammokit.constants import AUTO


def torch_device_name(name: str) -> str:
    """A device name as torch spells it ("gpu" -> "cuda"; case and spaces ignored)."""
    name = str(name).strip().lower()
    return "cuda" if name == "gpu" else name


def lightning_accelerator(name: str) -> str:
    """A device name as Lightning's `accelerator` ("cuda", "cuda:1" -> "gpu"; auto, cpu and mps stay)."""
    name = str(name).strip().lower()
    return "gpu" if name.startswith("cuda") or name == "gpu" else name


def trainer_device(name: str) -> dict[str, str]:
    """`--device` as the trainer config's keys: {} for auto (the config's values stay); "cuda:1" also picks
    device 1 (Lightning's "1," is the index list, not a count)."""
    name = str(name).strip().lower()
    if name == AUTO:
        return {}
    if name.startswith("cuda:"):
        return {"accelerator": "gpu", "devices": f"{int(name.split(':', 1)[1])},"}
    return {"accelerator": name}


def resolve_device(name: Any = AUTO) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; otherwise the named device (checked); a torch.device
    passes through."""
    import torch

    if isinstance(name, torch.device):
        return name
    name = torch_device_name(name)
    if name == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return dev
