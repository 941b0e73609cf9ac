"""Roofline of the default whole-image model on this CPU: how much of the matmul rate *can* its layers reach?

`bench_predict.py` divides the achieved FLOP/s of prediction by the same run's fp32 matmul FLOP/s (issue 15's
target: >= 0.80). That reference assumes every layer could run at the matmul rate. A layer cannot when it does
little arithmetic per byte it moves: its time is at least max(FLOPs / peak, bytes / memory bandwidth) (the
roofline model). This script measures, in one process:

* peak = the best large fp32 `torch.mm` FLOP/s (as bench_predict), bandwidth = the best `Tensor.copy_` rate on
  a buffer the size of the model's larger activations (bytes read + written per second, every thread);
* for every convolution and linear layer of the model at `--size` (forward hooks): FLOPs (2 x multiply-adds),
  the fewest bytes it must move in fp32 (input + output activations + weights; batch norm and activations are
  counted as fused into the convolution, as ONNX Runtime and oneDNN fuse them, so the bound is optimistic),
  its arithmetic intensity and its roofline time;
* the **attainable ratio**: total FLOPs / sum of the roofline times, divided by peak: the best ratio any
  runtime could reach for this model on this machine, with perfect fusion and kernels;
* the measured ONNX Runtime ratio (the project's tuned session, batch 1 and 8) and its share of the roofline;
* with ONNX Runtime's profiler, its measured time per layer kind, the useful FLOP/s it reaches on each, and the
  FLOPs it executes over the model's (its NCHWc layout pads channels to the SIMD block, e.g. 24 -> 32).

    .venv/bin/python benchmarks/roofline_predict.py [--size 1152 896] [--batches 1 8] [--json out.json]

On a shared machine peak and bandwidth move with the load; run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import (
    BACKBONE,
    TOP,
    count_flops,
    default_model,
    matmul_flops,
    median_seconds,
    quiet_exporters,
)

from mammokit.infer import backend_select
from mammokit.utils.machine import cpu_name, physical_cores

FP32_BYTES = 4


@dataclass
class Layer:
    """One convolution or linear layer at batch 1: its work, its traffic and its roofline time."""

    name: str
    kind: str  # depthwise | pointwise | dense conv | linear
    flops: float  # 2 x multiply-adds
    bytes: float  # input + output activations + weights, fp32, each moved once
    intensity: float = 0.0  # FLOPs per byte
    roofline_s: float = 0.0  # max(flops / peak, bytes / bandwidth)
    memory_bound: bool = False


def _conv_kind(c_in: int, c_per_group: int, kernel: tuple[int, int]) -> str:
    """depthwise (one input channel per output, several inputs) | pointwise (1x1) | dense conv."""
    if c_per_group == 1 and c_in > 1:
        return "depthwise"
    return "pointwise" if tuple(kernel) == (1, 1) else "dense conv"


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    assert isinstance(module, nn.Conv2d)
    return _conv_kind(module.in_channels, module.in_channels // module.groups, module.kernel_size)


def layer_census(model: nn.Module, x: torch.Tensor) -> list[Layer]:
    """Every Conv2d/Linear that runs on `x` (batch 1), in execution order, with FLOPs and minimal fp32 bytes."""
    layers: list[Layer] = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            weight = module.weight
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = output.numel() * (module.in_channels // module.groups) * kh * kw
            else:
                macs = output.numel() * module.in_features
            moved = inputs[0].numel() + output.numel() + weight.numel()
            layers.append(Layer(name, _kind(module), 2.0 * macs, float(FP32_BYTES * moved)))

        return record

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.inference_mode():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return layers


def copy_bandwidth(n_bytes: int, repeat: int = 10) -> float:
    """Best bytes/s (read + write) of `Tensor.copy_` on an fp32 buffer of `n_bytes`, on torch's threads."""
    src = torch.randn(max(1, n_bytes // FP32_BYTES))
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page faults, thread pool
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = max(best, 2.0 * src.numel() * FP32_BYTES / (time.perf_counter() - t0))
    return best


def apply_roofline(layers: list[Layer], peak: float, bandwidth: float) -> None:
    for layer in layers:
        compute_s, memory_s = layer.flops / peak, layer.bytes / bandwidth
        layer.intensity = layer.flops / layer.bytes
        layer.roofline_s = max(compute_s, memory_s)
        layer.memory_bound = memory_s > compute_s


def by_kind(layers: list[Layer]) -> list[dict[str, Any]]:
    """Per layer kind: FLOPs share, roofline-time share and attainable FLOP/s (the rows of the table)."""
    total_flops = sum(layer.flops for layer in layers)
    total_s = sum(layer.roofline_s for layer in layers)
    groups: dict[str, list[Layer]] = defaultdict(list)
    for layer in layers:
        groups[layer.kind].append(layer)
    rows = []
    for kind, members in sorted(groups.items(), key=lambda kv: -sum(layer.roofline_s for layer in kv[1])):
        flops, seconds, moved = (sum(getattr(m, f) for m in members) for f in ("flops", "roofline_s", "bytes"))
        rows.append({
            "kind": kind, "layers": len(members), "flops_share": flops / total_flops,
            "roofline_time_share": seconds / total_s, "intensity": flops / moved,
            "memory_bound": sum(m.memory_bound for m in members), "attainable_gflops": flops / seconds / 1e9,
        })  # fmt: skip
    return rows


def _ort_node(event_args: dict[str, Any]) -> tuple[str, float]:
    """(layer kind as in `_kind`, FLOPs) of one profiled ONNX Runtime node, from its logical tensor shapes."""
    op = event_args.get("op_name", "?")
    shapes = [next(iter(d.values())) for d in event_args.get("input_type_shape", [])]
    outputs = [next(iter(d.values())) for d in event_args.get("output_type_shape", [])]
    out = float(np.prod(outputs[0])) if outputs else 0.0
    if op in ("Conv", "FusedConv") and len(shapes) >= 2 and len(shapes[1]) == 4:
        c_in, (_, c_per_group, kh, kw) = shapes[0][1], shapes[1]
        return _conv_kind(c_in, c_per_group, (kh, kw)), 2.0 * out * c_per_group * kh * kw
    if op in ("Gemm", "MatMul", "FusedMatMul", "FusedGemm") and shapes:
        return "linear", 2.0 * out * shapes[0][-1]
    return f"other: {op}", 0.0


def ort_profile(onnx_path: Path, x: np.ndarray, runs: int = 3) -> dict[str, dict[str, float]]:
    """Per layer kind, ONNX Runtime's measured node time (s per pass) and FLOPs per pass (the project's tuned
    session with its profiler on; convolutions classified by their logical weight shapes)."""
    import onnxruntime as ort

    from mammokit.infer.onnx import session_options

    options = session_options()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(runs + 1):  # the first pass is a warm-up, dropped below
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    passes: list[list[dict[str, Any]]] = [[]]  # a pass's node events come before its model_run event
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            passes[-1].append(event)
        elif event.get("cat") == "Session" and event.get("name") == "model_run":
            passes.append([])
    kept = [p for p in passes if p][-runs:]
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds": 0.0, "flops": 0.0})
    for nodes in kept:
        for event in nodes:
            kind, flops = _ort_node(event.get("args", {}))
            totals[kind]["seconds"] += float(event["dur"]) * 1e-6 / len(kept)
            totals[kind]["flops"] += flops / len(kept)
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(1152, 896), metavar=("H", "W"))
    parser.add_argument("--batches", type=int, nargs="+", default=(1, 8))
    parser.add_argument("--repeat", type=int, default=3, help="timed ONNX Runtime calls per batch (median)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    quiet_exporters()
    wall0 = time.perf_counter()
    h, w = args.size
    print(f"CPU: {cpu_name()}, {physical_cores()} physical cores; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.1f}")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        run, _, x1, graph = default_model(Path(tmp), h, w, 1)
        layers = layer_census(graph, torch.from_numpy(x1))
        total_flops = count_flops(graph, torch.from_numpy(x1))
        largest = max(layer.bytes for layer in layers)
        peak = matmul_flops(torch.float32)
        bandwidth = copy_bandwidth(int(largest))
        apply_roofline(layers, peak, bandwidth)
        attainable = sum(layer.flops for layer in layers) / sum(layer.roofline_s for layer in layers)

        cache = backend_select.BackendCache.open(run)
        onnx_path = backend_select.ensure_export(cache, torch_available=True)
        assert onnx_path is not None, "the ONNX export failed (see the log)"
        backend = backend_select.build_backend("onnx", run, "cpu", channels_last=True, onnx_path=onnx_path)
        measured = []
        for batch in args.batches:
            x = np.ascontiguousarray(np.resize(x1, (batch, *x1.shape[1:])))
            seconds = median_seconds(lambda x=x: backend.prob_malignant(x), args.repeat)
            gflops = batch / seconds * total_flops / 1e9
            measured.append({
                "batch": batch, "images_per_s": batch / seconds, "gflops": gflops,
                "ratio_to_matmul": gflops * 1e9 / peak, "share_of_roofline": gflops * 1e9 / attainable,
            })  # fmt: skip
        profile = ort_profile(onnx_path, x1)

    kinds = by_kind(layers)
    measured_s = sum(v["seconds"] for v in profile.values())
    for row in kinds:
        got = profile.get(row["kind"], {"seconds": 0.0, "flops": 0.0})
        model_flops = sum(layer.flops for layer in layers if layer.kind == row["kind"])
        row["ort_time_share"] = got["seconds"] / measured_s
        # useful work per second: the model's FLOPs of this kind, not the padded ones ONNX Runtime executes
        row["ort_gflops"] = model_flops / got["seconds"] / 1e9 if got["seconds"] else float("nan")
        row["ort_padding"] = got["flops"] / model_flops if model_flops else float("nan")
    others = {k: v["seconds"] / measured_s for k, v in profile.items() if k.startswith("other")}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall0
    hooked = sum(layer.flops for layer in layers)
    print(f"\nwhole_image {BACKBONE} + {TOP} at {h}x{w}: {total_flops / 1e9:.2f} GFLOP/image (FlopCounterMode), "
          f"{hooked / 1e9:.2f} GFLOP in its {len(layers)} conv/linear layers (hooks)")  # fmt: skip
    print(f"peak (fp32 matmul) {peak / 1e9:.1f} GFLOP/s; copy bandwidth ({largest / 2**20:.0f} MiB buffer) "
          f"{bandwidth / 1e9:.1f} GB/s; ridge point {peak / bandwidth:.1f} FLOP/byte")  # fmt: skip
    print("\n| layers | count | FLOPs share | FLOP/byte | memory-bound | roofline GFLOP/s | roofline time share "
          "| ONNX Runtime GFLOP/s | ONNX Runtime time share | ONNX Runtime FLOPs / model FLOPs |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in kinds:
        print(f"| {r['kind']} | {r['layers']} | {r['flops_share']:.2f} | {r['intensity']:.1f} | {r['memory_bound']} "
              f"| {r['attainable_gflops']:.0f} | {r['roofline_time_share']:.2f} | {r['ort_gflops']:.0f} "
              f"| {r['ort_time_share']:.2f} | {r['ort_padding']:.2f} |")  # fmt: skip
    print("ONNX Runtime's other nodes: " + (", ".join(f"{k[7:]} {v:.2f}" for k, v in others.items()) or "none"))
    print(f"\nroofline-attainable for the whole model: {attainable / 1e9:.1f} GFLOP/s = **{attainable / peak:.2f}** "
          "of matmul (the best any runtime could do here)")  # fmt: skip
    for m in measured:
        print(f"ONNX Runtime batch {m['batch']}: {m['images_per_s']:.2f} images/s, {m['gflops']:.1f} GFLOP/s = "
              f"{m['ratio_to_matmul']:.2f} of matmul, {m['share_of_roofline']:.2f} of the roofline")  # fmt: skip
    print(f"\nwhole script: {wall:.0f} s wall, {usage.ru_utime + usage.ru_stime:.0f} s CPU")
    if args.json:
        result = {
            "cpu": cpu_name(), "cores": physical_cores(), "size": [h, w], "gflop_per_image": total_flops / 1e9,
            "hooked_gflop_per_image": hooked / 1e9, "peak_gflops": peak / 1e9, "bandwidth_gbs": bandwidth / 1e9,
            "attainable_gflops": attainable / 1e9, "attainable_ratio": attainable / peak, "kinds": kinds,
            "measured": measured, "ort_profile": profile, "layers": [asdict(layer) for layer in layers],
            "wall_s": wall,
        }  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
