"""The shipped mini-MIAS recipe never aborts on one bad image.

`scripts/mini_mias_recipe.sh DEV OUT HOLDOUT` runs on synthetic women in the mini-MIAS layout (`mammokit synth
--layout mini-mias`) where one development film and one hold-out film are unreadable: the recipe trains on the
rest, evaluates the hold-out, and says how many images were left out and why. The real configs are replaced by
one-epoch ones (`CFG`, with the shipped model's `bilateral: concat`) and the canvas by a small one (`SPACING`,
`HEIGHT`, `WIDTH`): the steps are the recipe's. The unreadable hold-out film leaves its partner without one, which is
then scored alone (`context` single).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mammokit.cli import main
from mammokit.run import read_card

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "scripts" / "mini_mias_recipe.sh"

PATCH_YAML = """
model: {backbone: efficientnet_lite0, pretrained: imagenet, drop_rate: 0.3}
stages: [{epochs: 1, lr_multiplier: 1.0}]
optim: {name: adam, lr: 0.001, keep: last, early_stop_patience: 0, lr_plateau_patience: 0}
loader: {batch_size: 32}
trainer: {precision: 32-true, progress_bar: false, tensorboard: false}
"""
WHOLE_YAML = """
model: {top: {blocks: null}, bilateral: concat}
stages: [{epochs: 1, lr_multiplier: 1.0}]
optim: {name: adam, lr: 0.001, keep: last, early_stop_patience: 0, lr_plateau_patience: 0}
loader: {batch_size: 8}
trainer: {precision: 32-true, progress_bar: false, tensorboard: false}
"""


def _women_with_a_bad_film(out: Path, women: int, seed: int) -> Path:
    # 576 x 576 px at mini-MIAS' 0.2 mm: 115 mm films, on a 116 x 90 mm canvas at 1 mm (45-px patches of 44.8 mm)
    assert main(["synth", "--layout", "mini-mias", "--women", str(women), "--seed", str(seed),
                 "--malignant-fraction", "0.6", "--out", str(out)]) == 0  # fmt: skip
    films = sorted(out.glob("mdb*.pgm"))
    films[1].write_bytes(b"P5\n576 576\n255\n" + b"\x00" * 10)  # a truncated PGM: the header promises more pixels
    return films[1]


@pytest.mark.skipif(sys.platform != "linux", reason="the recipe is a bash script")
def test_the_recipe_goes_past_an_unreadable_film_and_evaluates_the_rest(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    bad_dev = _women_with_a_bad_film(dev, 10, seed=1)
    holdout = tmp_path / "holdout"
    bad_holdout = _women_with_a_bad_film(holdout, 4, seed=2)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "patch.yaml").write_text(PATCH_YAML)
    (cfg / "whole.yaml").write_text(WHOLE_YAML)
    out = tmp_path / "recipe"
    env = {**os.environ, "MAMMOKIT": str(Path(sys.executable).parent / "mammokit"), "PYTHON": sys.executable,
           "CFG": str(cfg), "SPACING": "1.0", "HEIGHT": "116", "WIDTH": "90", "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.run(
        ["bash", str(RECIPE), str(dev), str(out), str(holdout)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-4000:]
    # each prepare says how many images it left out and why, and the files are rows of its errors.csv
    assert "prepare: 1 image(s) left out (1 " in said, said[-4000:]
    assert "prepare (hold-out): 1 image(s) left out" in said
    for folder, bad in ((out / "prepared", bad_dev), (out / "holdout", bad_holdout)):
        errors = pd.read_csv(folder / "errors.csv", dtype=str)
        assert errors["image_id"].tolist() == [bad.stem]
    # trained on the rest, and the hold-out's readable films were all evaluated
    assert (out / "runs" / "whole" / "model.json").is_file()
    evaluated = pd.read_csv(out / "holdout-eval" / "predictions.csv", dtype={"image_id": str})
    assert len(evaluated) == len(list(holdout.glob("mdb*.pgm"))) - 1
    assert bad_holdout.stem not in set(evaluated["image_id"])
    # the shipped model sees both breasts: every film is paired with its woman's other film (the adapter's patient
    # id), except the one whose partner was unreadable
    card = read_card(out / "runs" / "whole")
    assert card.arch_kwargs["bilateral"] == "concat" and card.input.channels == 2
    single = evaluated.loc[evaluated["context"] == "single", "image_id"].tolist()
    assert len(single) == 1 and (evaluated["context"] == "contralateral").sum() == len(evaluated) - 1


def test_the_recipe_stops_when_nothing_usable_is_left(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    assert main(["synth", "--layout", "mini-mias", "--women", "2", "--height", "128", "--width", "96",
                 "--out", str(dev)]) == 0  # fmt: skip
    for film in dev.glob("mdb*.pgm"):
        film.write_bytes(b"not a picture")
    env = {**os.environ, "MAMMOKIT": str(Path(sys.executable).parent / "mammokit"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(RECIPE), str(dev), str(tmp_path / "recipe")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert "prepare" in proc.stderr + proc.stdout and not (tmp_path / "recipe" / "runs").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="the recipe is a bash script")
@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        ("0.6", ["--pixel-spacing", "0.6", "--height", "344", "--width", "299"]),
        ("0.2", ["--pixel-spacing", "0.2", "--height", "1032", "--width", "897"]),
    ],
)
def test_scale_picks_the_measured_canvas_and_a_bad_scale_is_refused(
    tmp_path: Path, scale: str, expected: list[str]
) -> None:
    """SCALE presets the canvas and configs; a stand-in `mammokit` records the prepare call and stops the recipe."""
    fake = tmp_path / "mammokit"
    fake.write_text(f'#!/usr/bin/env bash\necho "$@" > {tmp_path / "argv.txt"}\nexit 3\n')
    fake.chmod(0o755)
    env = {**os.environ, "MAMMOKIT": str(fake), "PYTHON": sys.executable, "SCALE": scale}
    run = ["bash", str(RECIPE), str(tmp_path / "dev"), str(tmp_path / "recipe")]
    proc = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "prepare failed (exit 3)" in proc.stderr
    argv = (tmp_path / "argv.txt").read_text().split()
    at = argv.index("--pixel-spacing")
    assert argv[at : at + 6] == expected
    config = REPO / ("configs/mini-mias" if scale == "0.6" else "configs/mini-mias/0.2mm")
    assert (config / "patch.yaml").is_file() and (config / "whole.yaml").is_file()

    bad = subprocess.run(run, cwd=REPO, env={**env, "SCALE": "0.4"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "SCALE must be 0.6" in bad.stderr and not (tmp_path / "recipe").exists()
