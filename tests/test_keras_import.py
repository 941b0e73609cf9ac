"""`mammokit import-keras`: the original Keras 2.0.8 architectures, written in the released files' HDF5 layout with
random weights (tests/keras2_files.py, Keras 3 on the torch backend as the reference), imported with h5py only,
and compared with Keras' own output; malformed files give errors that name the layer."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("h5py", reason="h5py (mammokit[keras]) is not installed")
os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported: no TensorFlow here
pytest.importorskip("keras", reason="keras 3 (dev extra) is not installed: the reference implementation is missing")

import keras2_files as kf
from mammokit.cli import main
from mammokit.engine.keras_import import KerasImportOptions, import_keras
from mammokit.io.keras_h5 import KerasImportError
from mammokit.models.keras_layers import tf_same_pads
from mammokit.models.keras_net import KerasGraphNet
from mammokit.run import load_model

# name -> (builder, input size (H, W), channels, expected task, expected trunk output)
ARCHS = {
    "resnet50_512-512-1024x2": (
        lambda s: kf.whole_model("resnet50", "resnet", s),
        (96, 64),
        3,
        "whole",
        "activation_49",
    ),
    "vgg16_512x1": (lambda s: kf.whole_model("vgg16", "vgg", s), (160, 128), 3, "whole", "block5_pool"),
    "vgg16_hybrid": (lambda s: kf.whole_model("vgg16", "resnet", s), (64, 64), 3, "whole", "block5_pool"),
    "yaroslavnet": (lambda s: kf.whole_model("yaroslav", "heatmap_fc", s), (512, 448), 1, "whole", "block6_pool"),
    "vgg16_patch": (lambda s: kf.patch_model("vgg16", s), (64, 64), 3, "patch", "block5_pool"),
    "resnet50_patch_224": (lambda s: kf.patch_model("resnet50", s), (224, 224), 3, "patch", "avg_pool"),
}
SLOW = {"resnet50_patch_224"}  # the released patch size; ResNet50 at 224x224 twice (Keras + torch) on CPU


def _close(keras_logits: np.ndarray, keras_probs: np.ndarray, logits: np.ndarray) -> None:
    """Logits within 1e-4 of Keras (relative to their scale when it exceeds 1), probabilities within 1e-4."""
    scale = max(1.0, float(np.abs(keras_logits).max()))
    assert np.abs(logits - keras_logits).max() <= 1e-4 * scale
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    assert np.abs(probs - keras_probs).max() <= 1e-4


def _keras_input(x: np.ndarray, channels: int) -> np.ndarray:
    """mammokit's (B, 1, H, W) input -> the Keras model's (B, H, W, C) input (grayscale replicated)."""
    return np.repeat(x.transpose(0, 2, 3, 1), channels, axis=-1)


@pytest.fixture(scope="module")
def small_whole(tmp_path_factory):
    """(keras model, .h5 path, run folder) of `kf.small_whole_model` at 64x64 (CLI and malformed-file tests)."""
    root = tmp_path_factory.mktemp("small")
    model = kf.small_whole_model((64, 64))
    kf.randomise(model, seed=7)
    path = kf.save_keras2_h5(model, root / "ddsm_small.h5")
    import_keras(path, root / "run")
    return model, path, root / "run"


def test_small_whole_model_equals_keras(small_whole):
    model, _, run = small_whole
    net, card = load_model(run)
    assert card.task == "whole" and card.notes["trunk_output"] == "res2a_branch2b"
    x = np.random.default_rng(4).uniform(-60.0, 200.0, (3, 1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    _close(*kf.keras_logits(model, _keras_input(x, 3)), logits)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Lazily built (keras model, .h5 path, run folder) per architecture, shared by the tests of this module."""
    cache: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("keras")

    def get(name: str):
        if name not in cache:
            builder, size, _, _, _ = ARCHS[name]
            model = builder(size)
            kf.randomise(model, seed=len(cache))
            path = kf.save_keras2_h5(model, root / f"ddsm_{name}.h5")
            import_keras(path, root / f"run_{name}")
            cache[name] = (model, path, root / f"run_{name}")
        return cache[name]

    return get


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ARCHS])
def test_imported_network_equals_keras(built, name):
    model, _, run = built(name)
    _, (h, w), channels, task, trunk_output = ARCHS[name]
    net, card = load_model(run)
    assert isinstance(net, KerasGraphNet) and card.task == task
    assert card.notes["trunk_output"] == trunk_output
    assert (card.input.height, card.input.width) == (h, w)
    x = np.random.default_rng(1).uniform(-60.0, 200.0, (2, 1, h, w)).astype(np.float32)  # the original 0..255 - mean
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    _close(*kf.keras_logits(model, _keras_input(x, channels)), logits)


def test_whole_image_card_reproduces_the_original_input_pipeline(built):
    _, _, run = built("resnet50_512-512-1024x2")
    card = json.loads((run / "model.json").read_text())
    pre = card["input"]["preprocess"]
    assert (pre["crop_breast"], pre["canonical_side"], pre["aspect"], pre["intensity"]) == (
        False,
        "none",
        "stretch",
        "none",
    )
    assert card["labels"] == ["negative", "malignant"] and card["positive_labels"] == ["malignant"]
    # (u16/65535 - mean) / std == u16 * 0.003891 - 52.18 (the original's rescale and featurewise centring)
    u16 = np.array([0.0, 1000.0, 65535.0])
    mean, std = card["input"]["pixel_mean"], card["input"]["pixel_std"]
    np.testing.assert_allclose((u16 / 65535 - mean) / std, u16 * 0.003891 - 52.18, rtol=1e-9, atol=1e-9)
    assert card["notes"]["keras_version"] == "2.0.8" and len(card["notes"]["keras_file_sha256"]) == 64


def test_featurewise_mean_follows_the_file_name(small_whole, tmp_path):
    _, path, run = small_whole
    assert load_model(run)[1].input.pixel_mean == pytest.approx(52.18 / (65535 * 0.003891))  # "ddsm_..."
    renamed = tmp_path / "inbreast_vgg16_512x1.h5"
    renamed.write_bytes(path.read_bytes())
    assert import_keras(renamed, tmp_path / "inbreast").card.input.pixel_mean == pytest.approx(
        44.33 / (65535 * 0.003891)
    )
    explicit = import_keras(renamed, tmp_path / "explicit", KerasImportOptions(mean=40.0, rescale=1 / 257))
    assert explicit.card.input.pixel_mean == pytest.approx(40.0 / 255) and explicit.card.input.pixel_std == 1 / 255


def test_real_mammogram_through_mammokit_preprocessing_equals_keras(built):
    from mammokit.infer.predictor import Predictor
    from predict_support import real_dicoms

    model, _, run = built("resnet50_512-512-1024x2")
    dicoms = real_dicoms()
    predictor = Predictor.from_run(run, device="cpu", backend="torch", channels_last=False)
    x = np.stack([predictor.load_image(path).x for _, path in dicoms[:2]])  # (2, 1, 96, 64), u16*0.003891 - 52.18
    assert -52.2 <= x.min() < x.max() <= 255.0 - 52.18 + 1e-3
    net, _ = load_model(run)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    _close(*kf.keras_logits(model, _keras_input(x, 3)), logits)


@pytest.mark.parametrize("size", [(45, 38), (48, 48), (37, 33)])
def test_tensorflow_same_padding_is_reproduced(tmp_path, size):
    """Stride-2 "same" conv/max/avg pooling (asymmetric), even-kernel "same", asymmetric zero padding."""
    model = kf.padding_model()
    kf.randomise(model)
    path = kf.save_keras2_h5(model, tmp_path / "pad.h5")
    result = import_keras(path, tmp_path / "run", KerasImportOptions(input_size=size, labels=["a", "b", "c"],
                                                                     positive_labels=["c"]))  # fmt: skip
    net, _ = load_model(result.run_dir)
    x = np.random.default_rng(2).normal(0, 50, (3, 1, *size)).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    _close(*kf.keras_logits(model, _keras_input(x, 3)), logits)


def test_average_pooling_same_divides_by_the_real_cells():
    """TensorFlow's AvgPool with SAME padding averages each window over the cells inside the image only.

    Checked against a direct NumPy loop (Keras 3's torch backend replicates edges instead, so it is no reference
    here); 6x7 with a 3x3/2 window pads 0 rows before and 1 after, 1 column before and 1 after.
    """
    from mammokit.models.keras_layers import KerasPool2d

    x = np.random.default_rng(3).normal(0, 1, (2, 3, 6, 7)).astype(np.float32)
    got = KerasPool2d("avg", [3, 3], [2, 2], "same")(torch.from_numpy(x)).numpy()
    (top, _), (left, _) = tf_same_pads(6, 3, 2), tf_same_pads(7, 3, 2)
    want = np.zeros((2, 3, 3, 4), dtype=np.float32)
    for i in range(3):
        for j in range(4):
            r0, c0 = i * 2 - top, j * 2 - left
            window = x[:, :, max(r0, 0) : r0 + 3, max(c0, 0) : c0 + 3]
            want[:, :, i, j] = window.mean(axis=(2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_tf_same_pads():
    assert tf_same_pads(6, 3, 2) == (0, 1)  # the extra pixel goes after (bottom/right)
    assert tf_same_pads(7, 3, 2) == (1, 1)
    assert tf_same_pads(5, 1, 2) == (0, 0)
    assert tf_same_pads(4, 4, 1) == (1, 2)


# ----------------------------------------------------------------------------------------------- the CLI
def test_cli_import_predict_export_evaluate(small_whole, tmp_path, capsys):
    from mammokit.data.manifest import write_table
    from mammokit.io.images import write_png16
    from predict_support import real_dicoms

    _, path, _ = small_whole
    run = tmp_path / "run"
    assert main(["import-keras", str(path), "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "stored tensors used exactly once" in printed and "64x64" in printed
    assert main(["import-keras", str(path), "--out", str(run)]) == 2  # refuses to overwrite
    assert "already holds a model" in capsys.readouterr().err

    listing = tmp_path / "list.csv"
    dicoms = real_dicoms()
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "image_id"])
        for key, dcm in dicoms:
            writer.writerow([dcm, f"{dcm.parent.name}_{key}"])
    out = tmp_path / "pred"
    argv = ["predict", str(run), str(listing), "--out", str(out), "--no-progress", "--device", "cpu"]
    argv += ["--backend", "torch"]
    assert main(argv) == 0  # torch: the ONNX predictions below are compared with torch's
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 8 and preds["prob_malignant"].between(0, 1).all()

    assert main(["export", str(run)]) == 0  # checked against torch within 1e-4 before it is kept
    assert (run / "model.onnx").is_file()
    out_onnx = tmp_path / "pred_onnx"
    few = tmp_path / "few.csv"  # three of the eight files: enough for the ONNX parity, cheaper to read
    few.write_text("".join(listing.read_text().splitlines(keepends=True)[:4]))
    assert main(["predict", str(run), str(few), "--out", str(out_onnx), "--no-progress", "--backend", "onnx"]) == 0
    onnx_preds = pd.read_csv(out_onnx / "predictions.csv").set_index("image_id")["prob_malignant"]
    torch_preds = preds.set_index("image_id")["prob_malignant"].loc[onnx_preds.index]
    assert len(onnx_preds) == 3
    np.testing.assert_allclose(onnx_preds.to_numpy(), torch_preds.to_numpy(), atol=1e-4)

    prepared = tmp_path / "prep"  # a prepared folder at the model's 64x64 input size
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        image_id = f"w{i}"
        write_png16(prepared / "images" / f"{image_id}.png", rng.integers(0, 40000, (64, 64)).astype(np.uint16))
        rows.append({"image_id": image_id, "patient_id": f"p{i}", "exam_id": f"e{i}", "laterality": "L",
                     "view": "CC", "path": f"{image_id}.dcm", "label": i % 2, "split": "test",
                     "dataset": "tiny", "image_file": f"images/{image_id}.png"})  # fmt: skip
    write_table(pd.DataFrame(rows), prepared / "manifest.parquet")
    out = tmp_path / "eval"
    argv = ["evaluate", str(run), "--data", str(prepared), "--bootstrap", "5", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0 and (out / "predictions.csv").is_file()
    assert "image AUC" in capsys.readouterr().out


@pytest.mark.slow  # a Lightning fit on CPU; keeps `make test` within its budget
def test_finetune_trains_an_imported_run(small_whole, tmp_path):
    """Stage 2 (all layers) of `mammokit finetune` runs on an imported model and writes a loadable run."""
    from mammokit.data.manifest import write_table
    from mammokit.io.images import write_png16

    _, _, run = small_whole
    prepared = tmp_path / "prep"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        image_id = f"w{i}"
        img = rng.integers(0, 30000, (64, 64)).astype(np.uint16)
        if i % 2:
            img[16:40, 16:40] = 60000
        write_png16(prepared / "images" / f"{image_id}.png", img)
        split = "train" if i < 6 else ("val" if i < 9 else "test")
        rows.append({"image_id": image_id, "patient_id": f"p{i}", "exam_id": f"e{i}", "laterality": "L",
                     "view": "CC", "path": f"{image_id}.dcm", "label": i % 2, "split": split,
                     "dataset": "tiny", "image_file": f"images/{image_id}.png"})  # fmt: skip
    write_table(pd.DataFrame(rows), prepared / "manifest.parquet")
    out = tmp_path / "ft"
    status = main(["finetune", "--from", str(run), "--data", str(prepared), "--out", str(out), "--device", "cpu",
                   "--batch-size", "2", "--workers", "0", "--set", "stage.epochs=1",
                   "--set", "loader.augment.enabled=false"])  # fmt: skip
    assert status == 0
    tuned, card = load_model(out)
    assert isinstance(tuned, KerasGraphNet) and card.parent_run == str(run)
    before, _ = load_model(run)
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, before.state_dict()[n])]
    assert any(n.startswith("trunk.") for n in changed) and any(n.startswith("top.") for n in changed)


# ----------------------------------------------------------------------------------------------- malformed files
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = kf.padding_model()
    kf.randomise(model)
    return model, tmp_path_factory.mktemp("bad")


def _import_error(path: Path, tmp: Path) -> str:
    with pytest.raises(KerasImportError) as exc:
        import_keras(
            path,
            tmp / f"run_{path.stem}",
            KerasImportOptions(input_size=(48, 48), labels=["a", "b", "c"], positive_labels=["c"]),
        )
    return str(exc.value)


def test_missing_weights_name_the_layer(small):
    model, tmp = small
    path = kf.save_keras2_h5(model, tmp / "missing.h5", drop={"conv_even/bias:0"})
    message = _import_error(path, tmp)
    assert "'conv_even'" in message and "bias" in message


def test_missing_tensors_in_a_nested_trunk_and_in_the_top_name_the_layer(small_whole, tmp_path):
    model, _, _ = small_whole
    top_bn = next(lay for lay in model.layers if lay.__class__.__name__ == "BatchNormalization")
    path = kf.save_keras2_h5(model, tmp_path / "nobn.h5", drop={f"{top_bn.name}/moving_variance:0"})
    with pytest.raises(KerasImportError, match=rf"'{top_bn.name}'.*moving_variance"):  # a top layer
        import_keras(path, tmp_path / "run")
    path = kf.save_keras2_h5(
        model, tmp_path / "noconv.h5", drop={"bn_conv1/moving_variance:0"}
    )  # inside the nested trunk
    with pytest.raises(KerasImportError, match=r"'bn_conv1'.*moving_variance"):
        import_keras(path, tmp_path / "run2")


def test_shape_mismatch_names_the_layer(small):
    model, tmp = small
    path = kf.save_keras2_h5(model, tmp / "shape.h5", reshape={"conv_s2/kernel:0": (3, 3, 3, 9)})
    message = _import_error(path, tmp)
    assert "'conv_s2'" in message and "(3, 3, 3, 9)" in message and "(3, 3, 3, 8)" in message


def test_unknown_layer_type_names_the_layer(small):
    model, tmp = small
    config = kf.keras2_config(model)
    entry = next(e for e in config["config"]["layers"] if e["name"] == "add_1")
    entry["class_name"] = "Lambda"
    path = kf.save_keras2_h5(model, tmp / "lambda.h5", config=config)
    message = _import_error(path, tmp)
    assert "'add_1'" in message and "'Lambda'" in message


def test_not_hdf5_and_weights_only_files_are_refused(small, capsys):
    _, tmp = small
    text = tmp / "model.h5"
    text.write_text("this is not a Keras file")
    assert "not an HDF5 file" in _import_error(text, tmp)
    import h5py

    weights_only = tmp / "weights.h5"
    with h5py.File(weights_only, "w") as f:
        f.attrs["layer_names"] = [b"dense_1"]
    assert "model_config" in _import_error(weights_only, tmp)
    assert main(["import-keras", str(text), "--out", str(tmp / "cli")]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- other writers' files
def _parity(model, run: Path, size: tuple[int, int], channels: int = 3, n: int = 2, seed: int = 5) -> None:
    """The imported run's logits equal the Keras reference model's on random inputs of `size`."""
    net, _ = load_model(run)
    x = np.random.default_rng(seed).uniform(-60.0, 200.0, (n, 1, *size)).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    _close(*kf.keras_logits(model, _keras_input(x, channels)), logits)


def _stored(path: Path) -> tuple[dict, dict[str, list[str]]]:
    """(model config, weight_names per layer group) of a written file."""
    import h5py

    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        g = f["model_weights"]
        names = {k: [n.decode() if isinstance(n, bytes) else str(n) for n in g[k].attrs["weight_names"]] for k in g}
    return config, names


def _layer_names(config: dict) -> list[str]:
    return [entry["name"] for entry in config["config"]["layers"]]


def test_flat_prt_design_splits_trunk_and_top_at_the_patch_layers(tmp_path):
    """The older flat whole-image design: patch layers renamed prt_*, no nested model, no stored input size."""
    model = kf.flat_whole_model("resnet50", "resnet")
    kf.randomise(model, seed=11)
    path = kf.save_keras2_h5(model, tmp_path / "ddsm_flat.h5")
    config, _ = _stored(path)
    assert config["config"]["layers"][0]["config"]["batch_input_shape"] == [None, None, None, 3]
    assert "Model" not in {e["class_name"] for e in config["config"]["layers"]}
    result = import_keras(path, tmp_path / "run", KerasImportOptions(input_size=(96, 64)))
    card = result.card
    assert card.task == "whole" and card.notes["trunk_output"] == "prt_activation_49"
    assert card.notes["trunk_rule"] == "prt_" and card.notes["input_size_source"] == "--input-size"
    assert (card.input.height, card.input.width) == (96, 64)
    net, _ = load_model(result.run_dir)
    top = net.stage_parameter_names(1)  # stage 1 trains the top only: every top layer, no patch layer
    assert top and not any(".prt_" in n for n in top)
    assert {n.split(".")[2] for n in top} == {
        s["name"] for s in net.top.specs if s["op"] in ("conv2d", "dense", "batch_norm")
    }
    _parity(model, result.run_dir, (96, 64))


@pytest.mark.parametrize(
    ("prefix", "cut", "rule"), [("prt_", "prt_activation_2", "prt_"), ("", "activation_2", "body")]
)
def test_flat_design_trunk_ends_after_the_last_residual_unit(tmp_path, prefix, cut, rule):
    """prt_ names or keras.applications names: the trunk takes the last unit's Add and ReLU, the top the rest."""
    model = kf.flat_small_model(prefix=prefix)
    kf.randomise(model, seed=3)
    path = kf.save_keras2_h5(model, tmp_path / "flat.h5")
    card = import_keras(path, tmp_path / "run", KerasImportOptions(input_size=(40, 36))).card
    assert (card.notes["trunk_output"], card.notes["trunk_rule"]) == (cut, rule)
    _parity(model, tmp_path / "run", (40, 36))


def test_flat_vgg16_keeps_its_body_names_as_the_trunk(tmp_path):
    model = kf.flat_whole_model("vgg16", "vgg", (64, 64), prefix="")
    kf.randomise(model, seed=4)
    path = kf.save_keras2_h5(model, tmp_path / "flat_vgg.h5")
    card = import_keras(path, tmp_path / "run").card
    assert (card.notes["trunk_output"], card.notes["trunk_rule"]) == ("block5_pool", "body")
    assert card.notes["input_size_source"] == "stored in the file"
    _parity(model, tmp_path / "run", (64, 64))


def test_fully_convolutional_file_without_input_size_takes_the_documented_default(tmp_path, caplog):
    model = kf.flat_small_model()
    kf.randomise(model, seed=5)
    path = kf.save_keras2_h5(model, tmp_path / "flat.h5")
    with caplog.at_level("WARNING", logger="mammokit.engine.keras_import"):
        card = import_keras(path, tmp_path / "whole").card
    assert (card.input.height, card.input.width) == (1152, 896) and card.task == "whole"
    assert card.notes["input_size_source"] == "default for a whole model (the file stores none)"
    assert "using the default 1152x896 of a whole model" in caplog.text and "--input-size" in caplog.text
    _parity(model, tmp_path / "whole", (1152, 896), n=1)
    patch = import_keras(path, tmp_path / "patch", KerasImportOptions(task="patch", labels=["a", "malignant"])).card
    assert (patch.input.height, patch.input.width) == (224, 224)
    assert patch.notes["input_size_source"] == "default for a patch model (the file stores none)"


def test_file_without_input_size_and_a_flatten_needs_input_size(tmp_path):
    model = kf.flat_small_model(top="flatten", size=(64, 48))
    kf.randomise(model, seed=6)
    config = kf.keras2_config(model)
    config["config"]["layers"][0]["config"]["batch_input_shape"] = [None, None, None, 3]
    path = kf.save_keras2_h5(model, tmp_path / "flat.h5", config=config)
    with pytest.raises(KerasImportError) as exc:
        import_keras(path, tmp_path / "run")
    message = str(exc.value)
    assert "no fixed input size" in message and "'flatten_1' (Flatten)" in message
    assert "--input-size HxW" in message and "1152x896" in message and "224x224" in message
    card = import_keras(path, tmp_path / "run", KerasImportOptions(input_size=(64, 48))).card
    assert card.notes["input_size_source"] == "--input-size"
    _parity(model, tmp_path / "run", (64, 48))


# Keras 2.0.x files differ from the default test layout in ways each pinned here
def test_per_model_name_counters(tmp_path):
    """Inner and outer model both have input_1, activation_1, ...: each model counted its own names."""
    model = kf.whole_model("resnet50", "resnet", (64, 64), per_model_names=True)
    kf.randomise(model, seed=21)
    path = kf.save_keras2_h5(model, tmp_path / "ddsm_names.h5")
    config, _ = _stored(path)
    outer = set(_layer_names(config))
    inner = set(_layer_names(next(e for e in config["config"]["layers"] if e["class_name"] == "Model")))
    assert {"input_1", "activation_1", "activation_2", "add_1"} <= outer & inner
    card = import_keras(path, tmp_path / "run").card
    assert card.notes["trunk_output"] == "activation_49"
    _parity(model, tmp_path / "run", (64, 64))


def test_weight_scopes_with_suffixes(small_whole, tmp_path):
    """TensorFlow's unique variable scopes: dense_1_1/kernel:0 in group dense_1, conv1_1/kernel:0 in the trunk."""
    model, _, _ = small_whole
    path = kf.save_keras2_h5(model, tmp_path / "suffix.h5", scope_suffix="_1")
    _, names = _stored(path)
    assert names["dense_1"] == ["dense_1_1/kernel:0", "dense_1_1/bias:0"]
    assert "conv1_1/kernel:0" in names["model_1"]
    import_keras(path, tmp_path / "run")
    _parity(model, tmp_path / "run", (64, 64))


def test_resnet50_2_0_7_stem_same_padded_conv1(tmp_path):
    """keras.applications 2.0.7+: conv1 is a "same" 7x7/2 conv (TensorFlow pads 2 before, 3 after), no padding."""
    model = kf.whole_model("resnet50", "resnet", (96, 64), stem="same")
    kf.randomise(model, seed=22)
    path = kf.save_keras2_h5(model, tmp_path / "ddsm_stem.h5")
    config, _ = _stored(path)
    trunk = next(e for e in config["config"]["layers"] if e["class_name"] == "Model")
    conv1 = next(e for e in trunk["config"]["layers"] if e["name"] == "conv1")
    assert conv1["config"]["padding"] == "same"
    assert not any(e["class_name"] == "ZeroPadding2D" for e in trunk["config"]["layers"])
    card = import_keras(path, tmp_path / "run").card
    assert card.notes["trunk_output"] == "activation_49"
    _parity(model, tmp_path / "run", (96, 64))


def test_frozen_inner_layers_weight_order(small_whole, tmp_path):
    """Frozen inner layers' weights come after every trainable weight of the nested model's group."""
    model, _, _ = small_whole
    path = kf.save_keras2_h5(model, tmp_path / "frozen.h5", frozen={"conv1", "bn_conv1"})
    _, names = _stored(path)
    order = names["model_1"]
    assert order.index("conv1/kernel:0") > order.index("res2a_branch2b/bias:0")  # moved after the trainable ones
    assert order.index("bn_conv1/gamma:0") > order.index("conv1/bias:0")
    _, default = _stored(kf.save_keras2_h5(model, tmp_path / "default.h5"))
    assert default["model_1"].index("conv1/kernel:0") == 0 and sorted(default["model_1"]) == sorted(order)
    import_keras(path, tmp_path / "run")
    _parity(model, tmp_path / "run", (64, 64))


def test_auto_named_yaroslavnet_batch_norms(tmp_path):
    """YaroslavNet's unnamed BatchNormalization layers (batch_normalization_N) in the trunk and in the top, which
    counted its names separately: batch_normalization_1 is in both, in different weight groups."""
    model = kf.whole_model("yaroslav", "heatmap_fc", (512, 448), per_model_names=True, bn_names="auto")
    kf.randomise(model, seed=23)
    path = kf.save_keras2_h5(model, tmp_path / "ddsm_yaroslav_auto.h5")
    _, names = _stored(path)
    assert "batch_normalization_1/moving_variance:0" in names["batch_normalization_1"]
    assert "batch_normalization_1/moving_variance:0" in names["model_1"]
    card = import_keras(path, tmp_path / "run").card
    assert card.notes["trunk_output"] == "block6_pool"
    _parity(model, tmp_path / "run", (512, 448), channels=1)


def test_keras1_file(small_whole, tmp_path):
    """A Keras 1.2 file: Convolution2D(nb_filter, nb_row, nb_col, border_mode, subsample), Merge(mode="sum"),
    Dense(output_dim), Dropout(p), weights conv1_W:0 / bn_conv1_running_std:0, mapped to their Keras 2 meaning."""
    model, _, _ = small_whole
    path = kf.save_keras2_h5(model, tmp_path / "ddsm_keras1.h5", keras1=True)
    config, names = _stored(path)
    trunk = next(e for e in config["config"]["layers"] if e["class_name"] == "Model")
    conv1 = next(e for e in trunk["config"]["layers"] if e["name"] == "conv1")
    assert conv1["class_name"] == "Convolution2D" and conv1["config"]["nb_filter"] == 8
    assert "filters" not in conv1["config"] and conv1["config"]["subsample"] == [2, 2]
    assert "Merge" in {e["class_name"] for e in config["config"]["layers"]}
    assert "bn_conv1_running_std:0" in names["model_1"] and names["dense_1"] == ["dense_1_W:0", "dense_1_b:0"]
    result = import_keras(path, tmp_path / "run")
    assert result.card.notes["keras_version"] == "1.2.2" and result.card.notes["trunk_output"] == "res2a_branch2b"
    _parity(model, tmp_path / "run", (64, 64))


def test_keras1_merge_modes_other_than_sum_are_refused(small_whole, tmp_path):
    model, _, _ = small_whole
    config = kf.keras1_config(kf.keras2_config(model))
    merge = next(e for e in config["config"]["layers"] if e["class_name"] == "Merge")
    merge["config"]["mode"] = "concat"
    path = kf.save_keras2_h5(model, tmp_path / "concat.h5", config=config)
    with pytest.raises(KerasImportError, match=rf"'{merge['name']}'.*Merge with mode 'concat'"):
        import_keras(path, tmp_path / "run")


@pytest.fixture(scope="module")
def channels_first(tmp_path_factory):
    model = kf.channels_first_model()
    kf.randomise(model, seed=31)
    return model, tmp_path_factory.mktemp("theano")


@pytest.mark.parametrize("keras1", [False, True], ids=["keras2", "keras1"])
def test_theano_channels_first_file(channels_first, keras1):
    """backend "theano": channels_first config, kernels rotated 180 degrees (true convolution), BatchNormalization
    axis 1, Flatten -> Dense rows in (C, H, W) order; Keras 1 'th' kernels stored (out, in, rows, cols)."""
    model, tmp = channels_first
    path = kf.save_keras2_h5(model, tmp / f"theano_{keras1}.h5", theano=True, keras1=keras1)
    config, _ = _stored(path)
    assert config["config"]["layers"][0]["config"]["batch_input_shape"] == [None, 3, 35, 33]
    result = import_keras(path, tmp / f"run_{keras1}")
    card = result.card
    assert card.notes["keras_backend"] == "theano" and (card.input.height, card.input.width) == (35, 33)
    _parity(model, result.run_dir, (35, 33), n=3)


def test_theano_kernels_are_flipped(channels_first):
    """The same file read as if TensorFlow had written it computes something else: the flip is what makes it right."""
    import h5py

    model, tmp = channels_first
    path = kf.save_keras2_h5(model, tmp / "as_tf.h5", theano=True)
    with h5py.File(path, "a") as f:
        f.attrs["backend"] = "tensorflow"
    net, _ = load_model(import_keras(path, tmp / "run_as_tf").run_dir)
    x = np.random.default_rng(5).uniform(-60.0, 200.0, (3, 1, 35, 33)).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    want, _ = kf.keras_logits(model, _keras_input(x, 3))
    assert np.abs(logits - want).max() > 1e-2 * max(1.0, float(np.abs(want).max()))


def test_theano_same_padding_is_symmetric():
    """Theano's border_mode='half' pads k//2 on both sides even with stride 2 on an even size (TensorFlow: 0 and 1)."""
    from mammokit.models.keras_layers import KerasConv2d

    conv = KerasConv2d(2, 3, [3, 3], [2, 2], [1, 1], "same", True, same_mode="symmetric")
    x = torch.randn(1, 2, 6, 8)
    want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(conv(x), want)
    tf = KerasConv2d(2, 3, [3, 3], [2, 2], [1, 1], "same", True)
    tf.load_state_dict(conv.state_dict())
    assert not torch.allclose(tf(x), want)


def test_theano_layers_with_other_semantics_are_refused(small, tmp_path):
    model, _ = small  # padding_model: a "same" 3x3/2 max pooling, which Theano pads and crops its own way
    path = kf.save_keras2_h5(model, tmp_path / "theano_pool.h5", theano=True)
    with pytest.raises(KerasImportError, match=r"'max_s2'.*'same' pooling in a Theano file"):
        import_keras(path, tmp_path / "run", KerasImportOptions(input_size=(48, 48), labels=["a", "b", "c"],
                                                                positive_labels=["c"]))  # fmt: skip


def test_unknown_backend_is_refused(small_whole, tmp_path):
    import h5py

    _, path, _ = small_whole
    copy = tmp_path / "cntk.h5"
    copy.write_bytes(path.read_bytes())
    with h5py.File(copy, "a") as f:
        f.attrs["backend"] = "cntk"
    with pytest.raises(KerasImportError, match=r"'cntk' backend.*re-save it with the TensorFlow backend"):
        import_keras(copy, tmp_path / "run")


def test_keras3_h5_file_written_by_keras3(small_whole, tmp_path):
    """A .h5 written by Keras 3 itself (model.save): "Functional", dict-style nodes, batch_shape, one output triple."""
    model, _, _ = small_whole
    path = tmp_path / "ddsm_keras3.h5"
    model.save(path)
    config, _ = _stored(path)
    assert config["class_name"] == "Functional" and len(config["config"]["output_layers"]) == 3
    card = import_keras(path, tmp_path / "run").card
    assert card.notes["keras_version"].startswith("3.") and card.notes["trunk_output"] == "res2a_branch2b"
    _parity(model, tmp_path / "run", (64, 64))


def test_keras3_archive_is_refused_with_what_to_do(small_whole, tmp_path):
    model, _, _ = small_whole
    path = tmp_path / "model.keras"
    model.save(path)
    with pytest.raises(KerasImportError, match=r"Keras 3 \.keras archive.*model\.save\('model\.h5'\)"):
        import_keras(path, tmp_path / "run")
