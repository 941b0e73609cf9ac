"""`benchmarks/bench_train_gpu.py` runs end to end on the CPU at a tiny size (it awaits a GPU for real figures)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_gpu.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_train_gpu", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train_gpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_reports_throughput_mfu_and_loader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = bench.main([
            "--device", "cpu", "--size", "64x48", "--batch", "2", "--steps", "1", "--warmup", "1",
            "--models", "efficientnet_lite0+vgg_512x1", "--modes", "fp32", "bf16_cl",
            "--loader-workers", "0", "--loader-images", "4", "--json", str(out),
        ])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    text = capsys.readouterr().out
    assert "| model | mode | act. ckpt | img/s |" in text and "| loader workers | images/s |" in text
    figures = json.loads(out.read_text())
    rows = figures["training"]
    # 2 modes x activation checkpointing off/on, each measured (no failure note) with a positive MFU
    assert [(r["mode"], r["checkpointing"]) for r in rows] == [
        ("fp32", False), ("fp32", True), ("bf16_cl", False), ("bf16_cl", True),
    ]  # fmt: skip
    for r in rows:
        assert r["note"] == "" and r["images_per_s"] > 0 and 0 < r["mfu"] < 1, r
    # model FLOPs per step: forward + backward of the whole model, ~3x the forward (>0.5 GFLOP at 64x48 x 2)
    assert figures["train_flops_per_step"]["efficientnet_lite0+vgg_512x1"] > 1e8
    assert figures["loader"][0]["workers"] == 0 and figures["loader"][0]["images_per_s"] > 0


def test_peaks_table_and_override() -> None:
    bench = _bench()
    peaks, source = bench.device_peaks(torch.device("cpu"), 100.0)
    assert peaks == {"fp32": 1e14, "tf32": 1e14, "bf16": 1e14} and "--peak-tflops" in source
    assert bench.mode_dtype("bf16_cl_compile") == "bf16" and bench.mode_dtype("tf32") == "tf32"
    table = dict((keys, value) for keys, value in bench.PEAK_TFLOPS)
    assert table[("H200",)]["bf16"] == 989.0 and table[("A100",)]["fp32"] == 19.5
    with pytest.raises(Exception, match="1152x896"):
        bench.parse_size("1152*896")
