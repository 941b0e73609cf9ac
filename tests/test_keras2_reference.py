"""`mammokit import-keras` against files written by **real Keras 2** (tf_keras 2.17 on TensorFlow 2.17, CPU).

Marker ``keras2ref``, left out of ``make test``; ``make test-keras2`` builds ``.venv-tf`` (tensorflow-cpu + tf_keras
only) and runs this module. ``tests/keras2_reference_writer.py`` runs in that Python as a subprocess: it writes the
authors' model families with seeded random weights as ``model.save(..., save_format="h5")`` files, each with Keras'
own probabilities and logits on a seeded input batch; here each file is imported with the ``mammokit import-keras``
CLI (h5py only) and mammokit's output is compared with Keras'. The other Keras tests (test_keras_import.py) use
Keras 3 and a hand-written Keras 2 layout; this group checks that layout against the real writer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("h5py", reason="h5py (mammokit[keras]) is not installed")

import h5py

import keras2_reference_writer as writer
from mammokit.cli import main
from mammokit.run import load_model

pytestmark = pytest.mark.keras2ref

REPO = Path(__file__).resolve().parents[1]
PROB_TOL = 1e-5  # max |p_mammokit - p_keras| (measured: <= 1e-6, docs/keras-import.md)
LOGIT_TOL = 1e-4  # max |logit difference|; the writer keeps the reference logits within +-2 of their row mean
HOW = "run `make test-keras2` (builds .venv-tf with tensorflow-cpu + tf_keras) or set MAMMOKIT_TF_PYTHON"


def _tf_python() -> str:
    """A Python with tf_keras: $MAMMOKIT_TF_PYTHON, else the repository's .venv-tf; skip the group without one."""
    candidate = os.environ.get("MAMMOKIT_TF_PYTHON") or str(REPO / ".venv-tf" / "bin" / "python")
    if not Path(candidate).exists():
        where = "MAMMOKIT_TF_PYTHON" if os.environ.get("MAMMOKIT_TF_PYTHON") else "MAMMOKIT_TF_PYTHON unset and"
        pytest.skip(f"no Python with tf_keras ({where} {candidate} missing): {HOW}")
    probe = subprocess.run(
        [candidate, "-c", "import tf_keras; print(tf_keras.__version__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if probe.returncode != 0:
        pytest.skip(f"{candidate} cannot import tf_keras ({probe.stderr.strip().splitlines()[-1:]}): {HOW}")
    return candidate


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict]:
    """(folder, manifest) of every reference file, written once by the tf_keras Python."""
    python = _tf_python()
    out = tmp_path_factory.mktemp("keras2ref")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [python, str(Path(writer.__file__)), str(out)], capture_output=True, text=True, env=env, timeout=1500
    )
    assert done.returncode == 0, f"the tf_keras writer failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    return out, json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def imported(written, tmp_path_factory):
    """name -> run folder of the file imported with the CLI (once per file; shared by the tests of a file)."""
    root, manifest = written
    runs = tmp_path_factory.mktemp("runs")
    entries = {e["name"]: e for e in manifest["models"]}
    cache: dict[str, Path] = {}

    def get(name: str) -> tuple[dict, Path]:
        entry = entries[name]
        if name not in cache:
            args = ["import-keras", str(root / entry["file"]), "--out", str(runs / name)]
            if "input_size" in entry["expected"]:  # the file stores none (the flat design)
                args += ["--input-size", "{}x{}".format(*entry["expected"]["input_size"])]
            assert main(args) == 0, f"import-keras failed on {name}"
            cache[name] = runs / name
        return entry, cache[name]

    return get


def test_the_writer_is_real_keras_2(written):
    _, manifest = written
    assert manifest["tf_keras"].startswith("2.") and manifest["tensorflow"].startswith("2.")
    assert [e["name"] for e in manifest["models"]] == writer.ALL


@pytest.mark.parametrize("name", writer.ALL)
def test_imported_file_equals_keras_2(imported, written, name):
    entry, run = imported(name)
    ref = np.load(written[0] / f"{name}.npz")
    net, card = load_model(run)
    expected = entry["expected"]
    assert card.task == expected["task"] and card.notes["trunk_output"] == expected["trunk_output"]
    if "trunk_rule" in expected:
        assert card.notes["trunk_rule"] == expected["trunk_rule"]
    assert [card.input.height, card.input.width] == entry["input_size"]
    assert len(card.labels) == entry["n_outputs"]
    with torch.no_grad():
        logits = net(torch.from_numpy(ref["x"])).double()
    probs = torch.softmax(logits, dim=1).numpy()
    dp = float(np.abs(probs - ref["probs"]).max())
    dl = float(np.abs(logits.numpy() - ref["logits"]).max())
    print(f"\nkeras2ref {name}: max |dp| {dp:.1e}, max |dlogit| {dl:.1e}, p in [{ref['probs'].min():.3f}, "
          f"{ref['probs'].max():.3f}]")  # fmt: skip
    assert dp <= PROB_TOL and dl <= LOGIT_TOL


# The real writer's quirks that the hand-written layout (tests/keras2_files.py) imitates, read back from its files
def _file(written, name: str) -> tuple[dict, dict[str, list[str]], h5py.File]:
    f = h5py.File(written[0] / f"{name}.h5", "r")
    g = f["model_weights"]
    names = {
        _s(layer): [_s(w) for w in g[_s(layer)].attrs["weight_names"]]
        for layer in g.attrs["layer_names"]
        if len(g[_s(layer)].attrs["weight_names"])
    }
    return json.loads(f.attrs["model_config"]), names, f


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_optimizer_state_is_stored_and_ignored(written):
    _, _, f = _file(written, "vgg16_hybrid_adam")
    with f:
        assert "optimizer_weights" in f and "training_config" in f.attrs


def test_frozen_inner_layers_follow_the_trainable_weights(written):
    config, names, f = _file(written, "resnet50_frozen_same_stem")
    f.close()
    inner = next(e for e in config["config"]["layers"] if e["class_name"] in ("Model", "Functional"))
    order = names[inner["name"]]
    assert order[0] == "res4a_branch2a/kernel:0"  # conv1 .. stage 3 frozen: their weights come last
    assert order.index("conv1/kernel:0") > order.index("res5c_branch2c/bias:0")
    conv1 = next(e for e in inner["config"]["layers"] if e["name"] == "conv1")
    assert conv1["config"]["padding"] == "same"  # the 2.0.7+ stem: no ZeroPadding2D
    assert not any(e["class_name"] == "ZeroPadding2D" for e in inner["config"]["layers"])
    outer = {e["name"] for e in config["config"]["layers"]}
    assert {"input_1", "activation", "activation_1", "add"} <= outer & {e["name"] for e in inner["config"]["layers"]}


def test_graph_mode_scopes_carry_tensorflow_suffixes(written):
    _, names, f = _file(written, "graph_scope_suffix")
    f.close()
    assert names["dense_1"] == ["dense_1_1/kernel:0", "dense_1_1/bias:0"]


def test_yaroslavnet_batch_norms_are_auto_named(written):
    config, _, f = _file(written, "yaroslavnet")
    f.close()
    inner = next(e for e in config["config"]["layers"] if e["class_name"] in ("Model", "Functional"))
    bns = [e["name"] for e in inner["config"]["layers"] if e["class_name"] == "BatchNormalization"]
    assert bns[:2] == ["batch_normalization", "batch_normalization_1"] and len(bns) == 12


def test_flat_design_stores_no_input_size(written):
    config, _, f = _file(written, "flat_prt_resnet50")
    f.close()
    assert config["config"]["layers"][0]["config"]["batch_input_shape"] == [None, None, None, 3]
    assert config["config"]["layers"][1]["name"] == "prt_zero_padding2d_1"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-m", "keras2ref", "-s"]))
