"""`--backend auto`: backend selection per run and machine, its cache in RUN/cache, and the bf16 accuracy bar.

The runs are the tiny resnet18 stand-ins of the predict tests (random weights) at 128x96, so an ONNX export and
a selection take seconds. Timings are measured by the code under test but never asserted on (no timed tests):
the assertions are about which candidates were tried, what was accepted and what was cached.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from mammokit.infer import backend_select, export_cache
from mammokit.infer.backend_select import BF16_BAR, FP32_BAR, CpuCaps, Selection, Trial, choose, select_backend
from mammokit.infer.backends import ScoringBackend
from predict_support import make_tiny_runs, silhouette_pngs

HW = (128, 96)
NO_BF16 = CpuCaps("AVX-512-only test CPU", 2, avx512=True, bf16=False, amx=False)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    whole, _ = make_tiny_runs(tmp_path_factory.mktemp("runs"), HW)
    return whole


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A fresh copy of the whole-image run, without any cache."""
    return Path(shutil.copytree(base_run, tmp_path / "whole", ignore=shutil.ignore_patterns("cache")))


@pytest.fixture(autouse=True)
def _own_cache_root(tmp_path, monkeypatch):
    """Each test its own cache root: runs copied from one base run share a cache entry (same weights and card)."""
    monkeypatch.setenv(export_cache.CACHE_ENV, str(tmp_path / "user-cache"))
    monkeypatch.setattr(export_cache, "_CACHE_ROOT", None)


def _cache(run: Path) -> Path:
    return export_cache.BackendCache.folder_for(run)


def _cache_json(run: Path) -> dict:
    return json.loads((_cache(run) / "backend.json").read_text())


def test_choose_takes_the_fastest_within_the_bar_and_keeps_an_exact_one_unless_clearly_slower():
    def trial(name: str, ms: float, ok: bool = True) -> Trial:
        return Trial(name, ms, 0.0 if ok else 1.0, FP32_BAR, ok)

    assert choose([trial("torch", 100.0), trial("onnx", 50.0), trial("torch-bf16", 40.0)]) == "torch-bf16"
    assert choose([trial("torch", 100.0), trial("onnx", 50.0), trial("torch-bf16", 10.0, ok=False)]) == "onnx"
    # within 10 %: the more exact candidate (earlier in ORDER) stays, whatever order the trials come in
    assert choose([trial("torch-bf16", 47.0), trial("onnx", 50.0), trial("torch", 100.0)]) == "onnx"
    assert choose([trial("torch", 52.0), trial("onnx", 50.0)]) == "torch"
    with pytest.raises(RuntimeError, match="accuracy bar"):
        choose([trial("torch-bf16", 10.0, ok=False)])


def test_selection_on_a_cpu_without_bf16_picks_a_valid_backend_and_caches_it(run, monkeypatch):
    monkeypatch.setattr(backend_select, "probe_cpu", lambda: NO_BF16)
    selection, backend = select_backend(run, "cpu")
    assert isinstance(backend, ScoringBackend) and (backend.name, backend.precision) == (selection.backend, "float32")
    names = [t.backend for t in selection.trials]
    assert names == ["torch", "onnx"]  # every installed fp32 runtime, and no bf16 on a CPU without it
    assert all(t.accepted and t.ms_per_image > 0 and t.max_abs_diff <= FP32_BAR for t in selection.trials)
    assert selection.backend == choose(selection.trials) in names and not selection.from_cache
    assert selection.input_hw == HW and "AVX-512-only test CPU" in selection.machine
    # the backend handed back is the chosen one, ready to score the run's input
    x = backend_select.calibration_images(backend_select.read_card(run), 1)
    assert x.shape == (1, 1, *HW) and 0.0 <= float(backend.prob_malignant(x)[0]) <= 1.0
    stored = _cache_json(run)
    assert stored["selections"][0]["backend"] == selection.backend
    assert stored["export"]["max_abs_diff_vs_torch"] <= 1e-4 and (_cache(run) / "model.onnx").is_file()
    # the same machine again: the stored choice, not a new measurement
    again, _ = select_backend(run, "cpu")
    assert again.from_cache and again.backend == selection.backend and again.trials == selection.trials


def test_a_missing_onnxruntime_falls_back_to_torch_and_an_explicit_onnx_says_what_to_do(run, monkeypatch):
    from mammokit.cli import main
    from mammokit.infer.predictor import Predictor

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    monkeypatch.setattr(backend_select, "probe_cpu", lambda: NO_BF16)
    predictor = Predictor.from_run(run, device="cpu")
    assert predictor.backend_name == "torch" and [t.backend for t in predictor.selection.trials] == ["torch"]
    assert not (_cache(run) / "model.onnx").exists()  # no export made for a runtime that is not there
    image = silhouette_pngs(run.parent / "images", 1)[0]
    assert 0.0 <= predictor.predict(image, heatmap="gradcam").prob_malignant <= 1.0
    with pytest.raises(RuntimeError, match=r"needs onnxruntime.*mammokit\[onnx\].*--backend auto"):
        Predictor.from_run(run, device="cpu", backend="onnx")
    assert main(["predict", str(run), str(image), "--out", str(run.parent / "o"), "--backend", "onnx"]) == 2


def test_the_cached_export_is_reused_while_unchanged_and_rebuilt_after_the_weights_change(run, monkeypatch):
    from safetensors.torch import load_file, save_file

    from mammokit.infer import onnx as onnx_module
    from mammokit.run import WEIGHTS

    monkeypatch.setattr(backend_select, "probe_cpu", lambda: NO_BF16)
    exports: list[Path] = []
    real_export = onnx_module.export_onnx

    def counting_export(run_dir, out=None, **kwargs):
        exports.append(Path(out))
        return real_export(run_dir, out, **kwargs)

    monkeypatch.setattr(onnx_module, "export_onnx", counting_export)
    first, _ = select_backend(run, "cpu")
    assert not first.from_cache
    onnx_sha = _cache_json(run)["export"]["onnx_sha256"]
    assert exports == [_cache(run) / "model.onnx"]

    again, _ = select_backend(run, "cpu", refresh=True)  # measured again, but the export is still fresh
    assert exports == [_cache(run) / "model.onnx"] and not again.from_cache

    # new weights (as a retrained run would have): the export and the stored selection are stale
    weights = load_file(run / WEIGHTS)
    name = next(k for k, v in weights.items() if v.dtype.is_floating_point and v.ndim == 4)
    weights[name] = weights[name] * 1.5
    save_file(weights, run / WEIGHTS)
    rebuilt, backend = select_backend(run, "cpu")
    assert len(exports) == 2 and not rebuilt.from_cache
    cache = _cache_json(run)
    assert cache["export"]["onnx_sha256"] != onnx_sha
    assert cache["weights_sha256"] == export_cache.file_sha256(run / WEIGHTS)
    # and what the rebuilt backend computes is the new model's probability (the torch reference of this run)
    from mammokit.scoring.core import TorchScorer

    x = backend_select.calibration_images(backend_select.read_card(run), 1)
    expected = TorchScorer.from_run(run, "cpu").prob_malignant(x)
    assert np.abs(backend.prob_malignant(x) - expected).max() <= FP32_BAR

    # a changed exporter version also makes the export stale
    real_versions = export_cache.package_versions
    monkeypatch.setattr(export_cache, "package_versions", lambda names: {**real_versions(names), "torch": "0.0-test"})
    select_backend(run, "cpu")
    assert len(exports) == 3


def test_the_cache_is_never_in_the_run_folder_and_is_keyed_by_the_model(run, monkeypatch, tmp_path):
    monkeypatch.setattr(backend_select, "probe_cpu", lambda: NO_BF16)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # torch only: this test is about where, not what
    before = sorted(p.name for p in run.iterdir())
    selection, _ = select_backend(run, "cpu")
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written into the run folder
    (folder,) = (tmp_path / "user-cache" / "runs").iterdir()
    assert json.loads((folder / "backend.json").read_text())["selections"][0]["backend"] == selection.backend
    # --cache-dir (set_cache_root) takes precedence over $MAMMOKIT_CACHE_DIR
    export_cache.set_cache_root(tmp_path / "flag-cache")
    try:
        assert _cache(run).parent == tmp_path / "flag-cache" / "runs"
        select_backend(run, "cpu")
        assert (_cache(run) / "backend.json").is_file()
        # another model (other weights) gets its own entry, never the first one's
        other = Path(shutil.copytree(run, tmp_path / "other"))
        card = json.loads((other / "model.json").read_text())
        card["created"] = "another model"
        (other / "model.json").write_text(json.dumps(card))
        assert _cache(other) != _cache(run)
    finally:
        export_cache.set_cache_root(None)
    # nowhere writable: a temporary folder for this process, and prediction still works
    monkeypatch.setattr(export_cache, "_writable_dir", lambda p: False)
    again, backend = select_backend(run, "cpu")
    assert not again.from_cache and backend is not None


def test_bf16_and_fp32_agree_within_the_bar_on_a_tiny_model(base_run):
    from mammokit.scoring.core import TorchScorer

    x = backend_select.calibration_images(backend_select.read_card(base_run))
    fp32 = TorchScorer.from_run(base_run, "cpu", channels_last=True).prob_malignant(x)
    bf16 = TorchScorer.from_run(base_run, "cpu", channels_last=True, precision="bfloat16").prob_malignant(x)
    diff = np.abs(bf16.astype(np.float64) - fp32).max()
    assert 0.0 < diff <= BF16_BAR  # bf16 really ran (the numbers moved), and stayed within the bar
    assert bf16.dtype == np.float32  # the probabilities themselves are float32 whatever the compute precision


AMX = CpuCaps("AMX test CPU", 2, avx512=True, bf16=True, amx=True)  # a CPU that offers bf16 (as this machine)


def test_auto_chooses_only_float32_backends_even_on_a_cpu_with_bf16(run, monkeypatch):
    """Issue 25 point 8: auto chose bf16 on a CPU with AVX512-BF16, and gave other numbers than on one without."""
    monkeypatch.setattr(backend_select, "probe_cpu", lambda: AMX)
    monkeypatch.setattr(backend_select, "BF16_BAR", 1.0)  # were bf16 a candidate, any accuracy would pass
    selection, _ = select_backend(run, "cpu")
    tried = [t.backend for t in selection.trials]
    assert "torch-bf16" not in tried and tried[0] == "torch"
    assert selection.backend in ("torch", "onnx", "openvino") and "bf16=True" in selection.machine
    assert Selection.from_dict(selection.to_dict()).trials == selection.trials  # the cache round trip


def test_a_stored_bf16_choice_from_an_older_version_is_measured_again(run, monkeypatch):
    monkeypatch.setattr(backend_select, "probe_cpu", lambda: AMX)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    first, _ = select_backend(run, "cpu")
    cache = export_cache.BackendCache.open(run)
    old = {**first.to_dict(), "backend": "torch-bf16"}  # what the cache held before auto was float32-only
    cache.record_selection(first.machine, old)
    again, _ = select_backend(run, "cpu")
    assert again.backend == "torch" and not again.from_cache


def _predict_cli(run: Path, inputs: list[Path], out: Path, *flags: str) -> int:
    from mammokit.cli import main

    return main(["predict", str(run), *map(str, inputs), "--out", str(out), "--device", "cpu", "--no-progress",
                 *flags])  # fmt: skip


def _probs(out: Path) -> tuple[np.ndarray, list[str], dict]:
    import csv

    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((out / "predictions.json").read_text())
    return np.array([float(r["prob_malignant"]) for r in rows]), [r["precision"] for r in rows], summary


def test_auto_on_a_bf16_cpu_gives_the_float32_torch_numbers_and_bf16_only_when_asked(run, monkeypatch, tmp_path):
    monkeypatch.setattr(backend_select, "probe_cpu", lambda: AMX)
    images = silhouette_pngs(tmp_path / "in", n=3)
    assert _predict_cli(run, images, tmp_path / "fp32", "--backend", "torch") == 0
    assert _predict_cli(run, images, tmp_path / "auto") == 0
    assert _predict_cli(run, images, tmp_path / "bf16", "--precision", "bfloat16") == 0
    fp32, fp32_prec, fp32_json = _probs(tmp_path / "fp32")
    auto, auto_prec, auto_json = _probs(tmp_path / "auto")
    bf16, bf16_prec, bf16_json = _probs(tmp_path / "bf16")
    # the same numbers as float32 torch, whichever float32 runtime auto picked (to float32 rounding)
    np.testing.assert_allclose(auto, fp32, rtol=0, atol=1e-6)
    assert auto_prec == fp32_prec == ["float32"] * 3 and auto_json["precision"] == fp32_json["precision"] == "float32"
    assert auto_json["backend"] != "torch-bf16"
    # bfloat16 only when asked, and then said so in both files
    assert bf16_prec == ["bfloat16"] * 3 and bf16_json["precision"] == "bfloat16"
    assert bf16_json["backend"] == "torch-bf16" and 0.0 < np.abs(bf16 - fp32).max() <= BF16_BAR
    assert "precision: bfloat16" in (tmp_path / "bf16" / "predict_config.yaml").read_text()
    assert "precision: float32" in (tmp_path / "auto" / "predict_config.yaml").read_text()


def test_precision_a_backend_cannot_run_is_a_usage_error(run, tmp_path, capsys):
    images = silhouette_pngs(tmp_path / "in", n=1)
    assert _predict_cli(run, images, tmp_path / "o", "--backend", "onnx", "--precision", "bfloat16") == 2
    assert "computes in float32, not bfloat16" in capsys.readouterr().err
    assert _predict_cli(run, images, tmp_path / "o", "--backend", "torch-bf16", "--precision", "float32") == 2
    assert not (tmp_path / "o" / "predictions.csv").exists()


def test_serve_precision_resolves_to_a_backend_and_the_summary_shows_it(run):
    from mammokit.cli import build_parser
    from mammokit.cli.serve import _config
    from mammokit.config import ConfigError
    from mammokit.serve.models import ServedModels
    from mammokit.serve.settings import ServeConfig

    cfg = _config(build_parser().parse_args(["serve", str(run), "--precision", "bfloat16"]))
    assert (cfg.backend, cfg.precision) == ("torch-bf16", "bfloat16")
    plain = _config(build_parser().parse_args(["serve", str(run)]))
    assert (plain.backend, plain.precision) == ("auto", "float32")
    with pytest.raises(ConfigError, match="computes in float32, not bfloat16"):
        ServeConfig(backend="onnx", precision="bfloat16").validate()
    served = ServedModels.load([run], device="cpu", backend=cfg.backend)
    assert served.model_summaries()[0]["backend"] == "torch-bf16"
    assert served.model_summaries()[0]["precision"] == served.cards()[0]["precision"] == "bfloat16"
