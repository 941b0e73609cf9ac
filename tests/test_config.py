"""Typed configuration: YAML + overrides + flags, unknown keys name the closest valid key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mammokit.config import ConfigError, dump_yaml, load_config, parse_overrides, to_dict
from mammokit.preprocess import PreprocessSpec


@dataclass
class Optim:
    lr: float = 1e-3
    epochs: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Cfg:
    name: str = "x"
    seed: int = 0
    optim: Optim = field(default_factory=Optim)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    flag: bool = False


def test_precedence_defaults_file_overrides_flags(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("seed: 3\noptim:\n  lr: 0.1\n  epochs: [5, 6, 7]\n")
    cfg = load_config(Cfg, [f], overrides=["optim.lr=0.5", "flag=true"], flags={"seed": 9, "name": None})
    assert cfg.seed == 9  # flag beats file
    assert cfg.optim.lr == 0.5  # override beats file
    assert cfg.optim.epochs == [5, 6, 7]
    assert cfg.flag is True
    assert cfg.name == "x"  # None flag leaves the default


def test_base_file_is_merged(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 1\noptim: {lr: 0.2}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim: {epochs: [1]}\n")
    cfg = load_config(Cfg, [tmp_path / "child.yaml"])
    assert (cfg.seed, cfg.optim.lr, cfg.optim.epochs) == (1, 0.2, [1])


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [("optim.lrr=1", "optim.lr"), ("sead=1", "seed"), ("preprocess.heigth=10", "preprocess.height")],
)
def test_unknown_key_names_closest(override, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        load_config(Cfg, overrides=[override])


def test_bad_types_and_literals_are_errors():
    with pytest.raises(ConfigError, match="seed"):
        load_config(Cfg, overrides=["seed=abc"])
    with pytest.raises(ConfigError, match="aspect"):
        load_config(Cfg, overrides=["preprocess.aspect=squash"])
    with pytest.raises(ConfigError, match="too small"):
        load_config(Cfg, overrides=["preprocess.height=8"])


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(Cfg, overrides=["optim.lr=0.25"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(Cfg, [path]) == cfg


def test_parse_overrides_nested():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


@pytest.mark.parametrize(
    ("cls_name", "yaml_path"),
    [("PatchTrainConfig", "configs/patch/default.yaml"), ("WholeTrainConfig", "configs/whole/default.yaml")],
)
def test_library_defaults_equal_the_shipped_default_yaml(cls_name, yaml_path):
    """`mammokit train` without -c and with -c configs/<stage>/default.yaml train the same way."""
    from pathlib import Path

    import mammokit.engine.config as engine_config

    cls = getattr(engine_config, cls_name)
    from_yaml = load_config(cls, [Path(__file__).resolve().parents[1] / yaml_path])
    assert to_dict(from_yaml) == to_dict(cls())


@pytest.mark.parametrize(
    ("cls_name", "demo_yaml"), [("PatchTrainConfig", "demo_patch.yaml"), ("WholeTrainConfig", "demo_whole.yaml")]
)
def test_demo_configs_use_the_default_learning_rates(cls_name, demo_yaml):
    """`mammokit demo` trains with the learning rate and stage multipliers of `mammokit train` without -c
    (it shortens the schedule, not the optimiser settings; docs/decisions.md, "Demo (CPU) settings")."""
    from pathlib import Path

    import mammokit.engine.config as engine_config

    cls = getattr(engine_config, cls_name)
    builtin = Path(engine_config.__file__).resolve().parents[1] / "configs_builtin" / demo_yaml
    demo, default = load_config(cls, [builtin]), cls()
    assert demo.optim.lr == default.optim.lr
    assert [s.lr_multiplier for s in demo.stages] == [s.lr_multiplier for s in default.stages]
