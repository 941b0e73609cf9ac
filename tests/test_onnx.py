"""ONNX export: parity with torch (max |dp| <= 1e-4 on CPU), dynamic batch, torch-free `predict --backend onnx`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predict_support import TINY_HW, silhouette_pngs, tiny_runs

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'mammokit[onnx]')")


@pytest.fixture(scope="module")
def exported() -> Path:
    from mammokit.cli import main

    whole, _ = tiny_runs()
    if not (whole / "model.onnx").is_file():
        assert main(["export", str(whole)]) == 0
    assert (whole / "model.onnx").is_file()
    return whole


def test_onnx_takes_the_prepared_image_and_matches_torch_for_several_batch_sizes(exported):
    """The graph's input is the prepared uint16 image (as float32); mean/std are inside the graph."""
    import torch

    from mammokit.infer.onnx import OnnxBackend
    from mammokit.run import load_model

    model, card = load_model(exported, "cpu")
    backend = OnnxBackend(exported / "model.onnx", device="cpu")
    rng = np.random.default_rng(1)
    mean, std = card.input.pixel_mean, card.input.pixel_std
    for batch in (1, 3):  # the export used batch 2: 1 and 3 prove the batch axis is dynamic
        u16 = rng.integers(0, 65536, (batch, 1, *TINY_HW)).astype(np.uint16)
        normalised = (u16.astype(np.float64) / 65535.0 - mean) / std  # by hand, independently of mammokit
        with torch.inference_mode():
            logits = model(torch.from_numpy(normalised.astype(np.float32)))
            expected = torch.softmax(logits, -1)[:, card.positive_indices].sum(-1).numpy()
        got = backend.prob_malignant(u16.astype(np.float32))
        assert got.shape == (batch,)
        assert np.abs(got - expected).max() <= 1e-4
    assert backend.card_json()["arch"] == "whole_image"  # the model card travels inside the file


def test_predict_backend_onnx_never_imports_torch(exported, tmp_path):
    good = silhouette_pngs(tmp_path, 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from mammokit.cli import main\n"
        f"rc = main(['predict', {str(exported)!r}, {str(good[0])!r}, {str(bad)!r}, {str(good[1])!r},"
        f" '--out', {str(out)!r}, '--backend', 'onnx', '--no-progress'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported on the onnx path'\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # 1 = one bad input, the others predicted
    assert "torch was imported" not in proc.stderr
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image_id"] for r in rows] == ["img0", "img1"]
    assert all(r["backend"] == "onnx" and 0.0 <= float(r["prob_malignant"]) <= 1.0 for r in rows)
    with open(out / "errors.csv", newline="") as fh:
        assert [r["image_id"] for r in csv.DictReader(fh)] == ["bad"]

    # the same images through torch give the same probabilities
    from mammokit.infer.predictor import Predictor

    torch_probs = [Predictor.from_run(exported, device="cpu", backend="torch").predict(p).prob_malignant for p in good]
    np.testing.assert_allclose([float(r["prob_malignant"]) for r in rows], torch_probs, atol=1e-4)


def test_onnx_backend_without_export_says_what_to_do(exported, tmp_path):
    import shutil

    from mammokit.infer.predictor import Predictor

    whole = tmp_path / "not_exported"
    shutil.copytree(exported, whole)
    (whole / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="mammokit export"):
        Predictor.from_run(whole, backend="onnx")


def test_onnx_file_from_before_the_graph_normalised_is_refused(exported, tmp_path):
    """An older export (input = normalised image, no `mammokit_input` metadata) would give wrong
    probabilities with today's predictor, which feeds the prepared image: it is refused with what to do."""
    import onnx

    from mammokit.infer.onnx import INPUT_META_KEY, OnnxBackend

    proto = onnx.load(str(exported / "model.onnx"))
    kept = [(e.key, e.value) for e in proto.metadata_props if e.key != INPUT_META_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    old = tmp_path / "model.onnx"
    onnx.save(proto, str(old))
    with pytest.raises(ValueError, match="re-export it with `mammokit export"):
        OnnxBackend(old, device="cpu")
