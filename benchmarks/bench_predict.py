"""Benchmark: whole-image predict on CPU: the default `--backend auto` path and every candidate, against matmul.

The model is the default whole-image configuration (engine/config.py: `efficientnet_lite0` trunk + `vgg_512x1`
top, one grey channel, random weights: speed does not depend on the values), saved as a run folder at the
benchmark's size, so the backend selection runs exactly as `mammokit predict` runs it (`infer.backend_select`:
a short measurement at batch 1 on phantom images, the ONNX export cached in RUN/cache). In one process it then
measures, for the chosen backend ("auto") and for every candidate, images per second of the forward pass to
p(malignant) at batch 1 and batch 8 (the part of `mammokit predict` the backend changes; reading and preparing a
DICOM is `benchmarks/bench_prepare.py`), and reports:

* FLOPs per image, counted with `torch.utils.flop_counter.FlopCounterMode` (2 x multiply-adds of the
  convolutions and matrix multiplies),
* achieved FLOP/s = FLOPs per image x images/s,
* that as a fraction of the machine's matrix-multiply FLOP/s *in the dtype the backend computes in*, measured
  in the same run: the best large `torch.mm` in float32 for the float32 backends, in bfloat16 for torch-bf16
  (on a CPU with AMX, bf16 matmul is several times faster than float32, so its reference is much higher).

With `--auc-run RUN --auc-data PREPARED [--auc-split test]` it also scores that split with every candidate and
reports each one's AUC, |AUC - AUC(float32 torch)| and max |p - p(float32 torch)| (issue 15's bar: 5e-3 and 0.002).

    .venv/bin/python benchmarks/bench_predict.py [--size 1152 896] [--batches 1 8] [--repeat 3] [--compile]
        [--auc-run RUN --auc-data PREPARED] [--json results.json]

Timings are medians of `--repeat` timed calls after one warm-up call. On a shared machine the numbers move with
the load; the ratios measured in one run are the meaningful result. Wall and CPU time of the whole run are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammokit.infer import backend_select
from mammokit.scoring.core import images_to_input, probability_graph, score
from mammokit.utils.machine import cpu_flags, cpu_name, physical_cores

BACKBONE = "efficientnet_lite0"  # engine/config.py defaults for the whole-image model
TOP = "vgg_512x1"
MEAN, STD = 0.449, 0.226
DTYPE = {"torch": "fp32", "onnx": "fp32", "openvino": "fp32", "torch-bf16": "bf16", "torch eager NCHW": "fp32"}


def matmul_flops(dtype: torch.dtype, sizes: tuple[int, ...] = (2048, 4096), repeat: int = 5) -> float:
    """Best FLOP/s of n x n `torch.mm` (2 n^3 FLOPs) in `dtype` over `sizes` and `repeat` runs: the practical peak."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)  # warm-up (thread pool, caches, oneDNN/MKL kernel selection)
        for _ in range(repeat):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2.0 * n**3 / (time.perf_counter() - t0))
    return best


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x[:1])
    return float(counter.get_total_flops())


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (for compile, the compilation itself is excluded)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_run(root: Path, h: int, w: int) -> Path:
    """The default whole-image model (random weights) saved as a run folder prepared at h x w."""
    from mammokit.constants import WHOLE_IMAGE_CLASSES
    from mammokit.models.registry import create_model
    from mammokit.preprocess import PreprocessSpec
    from mammokit.run import InputSpec, ModelCard, save_run

    torch.manual_seed(0)
    model = create_model("whole_image", backbone=BACKBONE, top=TOP, pretrained=None).eval()
    card = ModelCard(
        task="whole",
        arch="whole_image",
        arch_kwargs=model.arch_kwargs,
        input=InputSpec(h, w, pixel_mean=MEAN, pixel_std=STD, preprocess=PreprocessSpec(height=h, width=w)),
        labels=list(WHOLE_IMAGE_CLASSES),
        positive_labels=["malignant"],
        threshold=0.5,
    )
    return save_run(root / "whole", model, card)


def quiet_exporters() -> None:
    """Silence the ONNX exporter's INFO chatter (torch.onnx, onnxscript, onnx_ir) in a benchmark's output."""
    for noisy in ("torch", "onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def default_model(root: Path, h: int, w: int, n_images: int) -> tuple[Path, Any, np.ndarray, torch.nn.Module]:
    """(run folder, its ModelCard, (n_images, 1, h, w) phantom inputs, the float32 probability graph) of the
    default whole-image model saved under `root` (`make_run`): the common set-up of the predict benchmarks."""
    run = make_run(root, h, w)
    card = backend_select.read_card(run)
    return run, card, backend_select.calibration_images(card, n_images), probability_graph(*_graph_parts(run))


def auc_check(run: Path, prepared: Path, split: str, names: list[str]) -> list[dict[str, Any]]:
    """Every candidate's AUC on a prepared split vs float32 torch's (the issue's AUC bar of 0.002)."""
    from mammokit.data.datasets import PreparedImages
    from mammokit.engine.split_predict import load_split
    from mammokit.metrics.curves import roc_auc

    table, _ = load_split(prepared, split)
    images = PreparedImages(prepared, table["image_file"].astype(str).tolist())
    x = images_to_input([images[i] for i in range(len(images))])
    labels = table["label"].to_numpy()
    onnx_path = backend_select.ensure_export(backend_select.BackendCache.open(run), torch_available=True)
    rows, reference = [], None
    for name in names:
        backend = backend_select.build_backend(name, run, "cpu", channels_last=True, onnx_path=onnx_path)
        p = np.concatenate([score(backend.prob_malignant, x[i : i + 8], tta=False) for i in range(0, len(x), 8)])
        reference = p if reference is None else reference
        auc = float(roc_auc(labels, p))
        rows.append({"backend": name, "auc": auc, "max_abs_dp": float(np.abs(p - reference).max())})
    for row in rows:
        row["abs_dauc"] = abs(row["auc"] - rows[0]["auc"])
    print(f"\nAUC on {prepared} split {split} ({len(x)} images, {int(labels.sum())} malignant), run {run}:")
    print("| backend | AUC | abs(AUC - AUC fp32 torch) | max abs(p - p fp32 torch) |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['backend']} | {row['auc']:.4f} | {row['abs_dauc']:.4f} | {row['max_abs_dp']:.1e} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(1152, 896), metavar=("H", "W"))
    parser.add_argument("--batches", type=int, nargs="+", default=(1, 8), help="batch sizes (default 1 8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per backend and batch (default 3)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes to compile on 2 cores)")
    parser.add_argument("--nchw", action="store_true", help="also torch eager NCHW (the old default; slow)")
    parser.add_argument("--auc-run", type=Path, default=None, help="a trained whole-image run for the AUC check")
    parser.add_argument("--auc-data", type=Path, default=None, help="its prepared dataset folder")
    parser.add_argument("--auc-split", default="test")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    quiet_exporters()
    wall0 = time.perf_counter()

    h, w = args.size
    flags = cpu_flags()
    print(
        f"CPU: {cpu_name()}, {physical_cores()} physical cores, avx512f={'avx512f' in flags} "
        f"avx512_bf16={'avx512_bf16' in flags} amx_bf16={'amx_bf16' in flags}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    peak = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    print(f"matmul reference (best 2048^2 / 4096^2 torch.mm): fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        run, _, x1, graph = default_model(Path(tmp), h, w, 2)
        flops = count_flops(graph, torch.from_numpy(x1[:1]))
        print(f"model: whole_image {BACKBONE} + {TOP} at {h}x{w}: {flops / 1e9:.2f} GFLOP/image (FlopCounterMode)")

        t0 = time.perf_counter()
        selection, _ = backend_select.select_backend(run, "cpu")
        select_s = time.perf_counter() - t0
        print(f"auto selection (ONNX export + calibration, once per run and machine): {select_s:.0f} s wall")
        print("  " + selection.summary())

        onnx_path = backend_select.BackendCache.open(run).fresh_onnx(torch_available=True)
        names = [t.backend for t in selection.trials if t.ms_per_image is not None]
        rows: list[dict[str, Any]] = []
        built = {n: backend_select.build_backend(n, run, "cpu", channels_last=True, onnx_path=onnx_path) for n in names}
        extra: dict[str, Callable[[np.ndarray], Any]] = {}
        if args.nchw:
            from mammokit.scoring.core import TorchScorer

            extra["torch eager NCHW"] = TorchScorer.from_run(run, "cpu").prob_malignant
        if args.compile:
            extra.update(_compiled(run))
        runners = {**{n: b.prob_malignant for n, b in built.items()}, **extra}
        for batch in args.batches:
            x = np.ascontiguousarray(np.resize(x1, (batch, *x1.shape[1:])))  # the phantoms repeated to the batch
            for name, fn in runners.items():
                seconds = median_seconds(lambda fn=fn, x=x: fn(x), args.repeat)
                dtype = DTYPE.get(name, "fp32")
                achieved = batch / seconds * flops
                rows.append({"backend": name, "auto": name == selection.backend, "batch": batch, "dtype": dtype,
                             "images_per_s": batch / seconds, "gflops": achieved / 1e9,
                             "matmul_gflops": peak[dtype] / 1e9, "ratio": achieved / peak[dtype]})  # fmt: skip
                print(f"  {name} batch {batch}: {batch / seconds:.2f} images/s", flush=True)
        auc_rows = auc_check(args.auc_run, args.auc_data, args.auc_split, names) if args.auc_run else []

    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall0
    print(f"\n{cpu_name()}, {physical_cores()} cores; {h}x{w}; default backend (auto) = {selection.backend}")
    print("| backend | dtype | batch | images/s | achieved GFLOP/s | matmul GFLOP/s (same dtype) | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (not r["auto"], r["backend"], r["batch"])):
        name = f"**auto = {r['backend']}**" if r["auto"] else r["backend"]
        print(f"| {name} | {r['dtype']} | {r['batch']} | {r['images_per_s']:.2f} | {r['gflops']:.1f} | "
              f"{r['matmul_gflops']:.1f} | {r['ratio']:.2f} |")  # fmt: skip
    print(f"\nwhole benchmark: {wall:.0f} s wall, {usage.ru_utime + usage.ru_stime:.0f} s CPU (user+sys)")
    if args.json:
        result = {"cpu": cpu_name(), "cores": physical_cores(), "size": [h, w], "gflop_per_image": flops / 1e9,
                  "matmul_gflops": {k: v / 1e9 for k, v in peak.items()}, "selection": selection.to_dict(),
                  "selection_s": select_s, "rows": rows, "auc": auc_rows, "wall_s": wall,
                  "cpu_s": usage.ru_utime + usage.ru_stime}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _graph_parts(run: Path) -> tuple[torch.nn.Module, list[int], float, float]:
    from mammokit.run import load_model

    net, card = load_model(run, "cpu")
    return net, card.positive_indices, card.input.pixel_mean, card.input.pixel_std


def _compiled(run: Path) -> dict[str, Callable[[np.ndarray], Any]]:
    """torch.compile of the channels_last float32 graph (not a predict candidate: minutes of compilation)."""
    graph = probability_graph(*_graph_parts(run)).to(memory_format=torch.channels_last)
    compiled = torch.compile(graph)

    def fn(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return compiled(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

    try:
        t0 = time.perf_counter()
        fn(np.zeros((1, 1, *_hw(run)), dtype=np.float32))
        print(f"torch.compile: {time.perf_counter() - t0:.0f} s to compile")
    except Exception as exc:  # no C++ toolchain, unsupported op, ...
        print(f"torch.compile failed, skipped: {type(exc).__name__}: {str(exc)[:200]}")
        return {}
    return {"torch.compile channels_last": fn}


def _hw(run: Path) -> tuple[int, int]:
    card = backend_select.read_card(run)
    return card.input.height, card.input.width


if __name__ == "__main__":
    sys.exit(main())
