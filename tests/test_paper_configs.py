"""Every shipped YAML config loads into its command's typed config (a misspelt key would fail here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mammokit.config import load_config, read_yaml, to_dict
from mammokit.data.patches import PatchConfig
from mammokit.data.prepare_config import PrepareConfig
from mammokit.engine.config import FinetuneConfig, PatchTrainConfig, WholeTrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

KIND = {
    "prepare": PrepareConfig,
    "patches": PatchConfig,
    "patch": PatchTrainConfig,
    "whole": WholeTrainConfig,
    "finetune": FinetuneConfig,
}


def _config_class(path: Path) -> type:
    if path.parent.name in ("patch", "whole"):
        return KIND[path.parent.name]
    return KIND[path.stem.split("_")[0]]


def _assert_applied(given: Any, resolved: Any, where: str) -> None:
    """Every value the YAML file gives is the value of the resolved config (none dropped or coerced away)."""
    if isinstance(given, dict) and isinstance(resolved, dict):
        for key, value in given.items():
            assert key in resolved, f"{where}.{key} is not in the resolved config"
            _assert_applied(value, resolved[key], f"{where}.{key}")
    elif isinstance(given, list | tuple):
        assert isinstance(resolved, list | tuple) and len(given) == len(resolved), where
        for i, (a, b) in enumerate(zip(given, resolved, strict=True)):
            _assert_applied(a, b, f"{where}[{i}]")
    else:
        assert given == resolved, f"{where}: file says {given!r}, resolved config has {resolved!r}"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_file_loads_and_every_value_is_applied(path: Path) -> None:
    cfg = load_config(_config_class(path), [path])
    _assert_applied(read_yaml(path), to_dict(cfg), path.name)


def test_paper_recipes_match_the_paper() -> None:
    whole = load_config(WholeTrainConfig, [CONFIGS / "paper" / "whole_resnet50_2x.yaml"])
    assert whole.model.top == "resnet_2x" and whole.loader.batch_size == 2 and len(whole.stages) == 2
    patch = load_config(PatchTrainConfig, [CONFIGS / "paper" / "patch_resnet50.yaml"])
    assert patch.model.backbone == "resnet50" and [s.epochs for s in patch.stages] == [3, 10, 37]
    patches = load_config(PatchConfig, [CONFIGS / "paper" / "patches_s10.yaml"])
    assert (patches.scheme, patches.patch_size, patches.min_overlap) == ("s10", 224, 0.9)
    prep = load_config(PrepareConfig, [CONFIGS / "paper" / "prepare_1152x896.yaml"])
    assert (prep.preprocess.height, prep.preprocess.width) == (1152, 896)
