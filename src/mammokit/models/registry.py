"""Model registry: a name -> constructor table so that `model.json` can rebuild any model.

A run folder stores `arch` (a registered name) and `arch_kwargs`; `load_model` calls
`create_model(arch, **arch_kwargs, pretrained=None)` and then loads the saved weights. Every
registered constructor therefore takes a `pretrained` keyword (None = random init) and JSON-able
keyword arguments only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a model constructor under `name`."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _ensure_builtin_models() -> None:
    # Importing these modules runs their @register_model decorators.
    import mammokit.models.keras_net
    import mammokit.models.patch
    import mammokit.models.whole  # noqa: F401


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    _ensure_builtin_models()
    return sorted(_REGISTRY)


def registered_name(model: nn.Module) -> str:
    """The registry name that rebuilds `model` (its class's), e.g. "whole_image" or "keras_graph"."""
    _ensure_builtin_models()
    for name, fn in _REGISTRY.items():
        if fn is type(model):
            return name
    raise KeyError(f"{type(model).__name__} is not a registered model class")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name."""
    _ensure_builtin_models()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(_REGISTRY)}"
        raise KeyError(f"unknown model architecture {name!r}{hint}")
    return _REGISTRY[name](**kwargs)
