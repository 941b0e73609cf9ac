"""Benchmark: whole-image predict throughput on CPU at 1152x896: torch eager, channels_last, compile, ONNX Runtime.

The model is the default whole-image configuration (engine/config.py: `efficientnet_lite0` trunk +
`vgg_512x1` top, one grey channel, random weights: speed does not depend on the values). In one
process and on the same batch it measures, for each backend, images per second of the model's
forward pass to p(malignant) (the part of `mammokit predict` that the backend changes; reading and
preparing a DICOM is `benchmarks/bench_prepare.py`), and reports:

* FLOPs per image, counted with `torch.utils.flop_counter.FlopCounterMode` (2 x multiply-adds of the
  convolutions and matrix multiplies),
* achieved FLOP/s = FLOPs per image x images/s,
* that as a fraction of the machine's matrix-multiply FLOP/s, measured in the same run with a large
  float32 `torch.mm` (the practical peak of this CPU with this torch build).

    .venv/bin/python benchmarks/bench_predict.py [--batch 2] [--repeat 3] [--no-compile] [--size 1152 896]

Timings are medians of `--repeat` timed batches after one warm-up batch. On a shared machine the
numbers move with the load; the ratios between backends in one run are the meaningful result.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mammokit.infer.core import probability_graph
from mammokit.infer.onnx import OnnxBackend, _torch_export

BACKBONE = "efficientnet_lite0"  # engine/config.py defaults for the whole-image model
TOP = "vgg_512x1"


def matmul_flops(sizes: tuple[int, ...] = (2048, 4096), repeat: int = 5) -> float:
    """Best FLOP/s of n x n float32 torch.mm (2 n^3 FLOPs) over `sizes` and `repeat` runs: the practical peak."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up (thread pool, caches)
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


def time_images_per_s(fn: Callable[[], object], batch: int, repeat: int) -> float:
    fn()  # warm-up (and, for compile, the compilation itself is excluded)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="images per forward pass (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed batches per backend (default 3)")
    parser.add_argument("--size", type=int, nargs=2, default=(1152, 896), metavar=("H", "W"))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on 2 cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from mammokit.models.registry import create_model

    torch.manual_seed(0)
    h, w = args.size
    model = create_model("whole_image", backbone=BACKBONE, top=TOP, pretrained=None).eval()
    wrapper = probability_graph(model, [1], 0.449, 0.226)  # what predict runs and export writes
    x = torch.randint(0, 65536, (args.batch, 1, h, w)).float()  # prepared uint16 values
    print(
        f"model: whole_image {BACKBONE} + {TOP}, input {args.batch}x1x{h}x{w}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )

    peak = matmul_flops()
    flops = count_flops(wrapper, x)
    print(f"matmul peak (best 2048^2 / 4096^2 float32 torch.mm): {peak / 1e9:.1f} GFLOP/s")
    print(f"model: {flops / 1e9:.2f} GFLOP/image (FlopCounterMode)")

    results: list[tuple[str, float]] = []

    def eager() -> None:
        with torch.inference_mode():
            wrapper(x)

    results.append(("torch eager (NCHW)", time_images_per_s(eager, args.batch, args.repeat)))

    wrapper_cl = probability_graph(model, [1], 0.449, 0.226).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def channels_last() -> None:
        with torch.inference_mode():
            wrapper_cl(x_cl)

    results.append(("torch channels_last", time_images_per_s(channels_last, args.batch, args.repeat)))

    if not args.no_compile:
        t0 = time.perf_counter()
        compiled = torch.compile(wrapper_cl)

        def compiled_fn() -> None:
            with torch.inference_mode():
                compiled(x_cl)

        try:
            compiled_fn()
            compile_s = time.perf_counter() - t0
            results.append(
                (
                    f"torch.compile + channels_last (compile {compile_s:.0f} s)",
                    time_images_per_s(compiled_fn, args.batch, args.repeat),
                )
            )
        except Exception as exc:  # no C++ toolchain, unsupported op, ...
            print(f"torch.compile failed, skipped: {type(exc).__name__}: {str(exc)[:200]}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        _torch_export(wrapper, x[:2], path, 18)  # batch 2: see export_onnx
        backend = OnnxBackend(path, device="cpu")
        x_np = x.numpy()
        results.append(
            ("onnxruntime (CPU EP)", time_images_per_s(lambda: backend.prob_malignant(x_np), args.batch, args.repeat))
        )

    base = results[0][1]
    print()
    print("| backend | images/s | vs eager | achieved GFLOP/s | fraction of matmul FLOP/s |")
    print("|---|---:|---:|---:|---:|")
    for name, ips in results:
        achieved = ips * flops
        print(f"| {name} | {ips:.2f} | {ips / base:.2f}x | {achieved / 1e9:.1f} | {achieved / peak:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
