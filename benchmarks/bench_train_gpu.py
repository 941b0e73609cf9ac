"""Benchmark: whole-image *training* throughput and MFU on a GPU, and whether the data loader keeps it fed.

For each model - ResNet50 trunk + `resnet_2x` top, EfficientNet-Lite0 trunk + `vgg_512x1` top (the paper's
two whole-image designs; one grey channel, random weights: speed does not depend on the values) - at the
paper's 1152 x 896, it times full training steps (forward, loss, backward, Adam step) in each mode:

* `fp32`: float32 with TF32 *off* (convolutions and matmuls in true FP32),
* `tf32`: float32 tensors, TF32 tensor cores allowed (PyTorch's default for cuDNN convolutions),
* `bf16`: `torch.autocast(dtype=torch.bfloat16)` (weights and optimizer stay float32),
* `bf16_cl`: bf16 autocast + channels_last model and input,
* `bf16_cl_compile`: the same through `torch.compile` (compilation excluded from the timing),

each with and without activation checkpointing of the trunk (`grad_checkpointing`, the model option that
trades a second forward pass for memory). It reports images/s, peak memory, and the **MFU**: model FLOPs
per step / step time / the device's peak FLOP/s in the dtype the mode computes in. Model FLOPs come from
`torch.utils.flop_counter.FlopCounterMode` over one forward + backward *without* checkpointing (the
recomputation is overhead, not model work, as in the usual MFU definition).

Peak FLOP/s (dense, no sparsity) by GPU, from the vendors' data sheets, TFLOP/s:

| GPU | bf16 | tf32 | fp32 |
|---|---:|---:|---:|
| H100 / H200 SXM | 989 | 494.7 | 66.9 |
| H100 PCIe | 756 | 378 | 51.2 |
| A100 (SXM, PCIe) | 312 | 156 | 19.5 |

Another GPU needs `--peak-tflops` (its peak in the mode's dtype; it is then used for every mode). On a CPU
(`--device cpu`, for testing the script) the "peak" is the same run's large `torch.mm` in the dtype: a
practical ceiling, not a data-sheet figure.

Then the data loader: `WholeImageDataset` over prepared 16-bit PNGs (written here at `--size`, or an
existing prepared folder with `--data`) with the training augmentation, through a DataLoader with each
of `--loader-workers`; images/s per worker count against the fastest training mode says whether the GPU
is fed.

    .venv/bin/python benchmarks/bench_train_gpu.py --device cuda            # the full table (~5 min on an H100)
    .venv/bin/python benchmarks/bench_train_gpu.py --device cpu --size 128x96 --steps 2 --modes fp32 bf16_cl

Writes the tables (Markdown) to stdout and, with `--json`, every figure to a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammokit.utils.machine import cpu_name

MODELS: dict[str, tuple[str, str]] = {
    "resnet50+resnet_2x": ("resnet50", "resnet_2x"),
    "efficientnet_lite0+vgg_512x1": ("efficientnet_lite0", "vgg_512x1"),
}
MODES = ("fp32", "tf32", "bf16", "bf16_cl", "bf16_cl_compile")
# dense TFLOP/s by dtype; matched against torch.cuda.get_device_name() in this order (first match wins)
PEAK_TFLOPS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("H100", "PCIE"), {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    (("H200",), {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}),
    (("H100",), {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}),
    (("A100",), {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
]


@dataclass
class Row:
    """One measured configuration."""

    model: str
    mode: str
    checkpointing: bool
    batch: int
    images_per_s: float | None = None
    step_ms: float | None = None
    peak_mem_gib: float | None = None
    mfu: float | None = None
    note: str = ""


def parse_size(text: str) -> tuple[int, int]:
    """'1152x896' -> (1152, 896)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1152x896, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text!r}")
    return h, w


def mode_dtype(mode: str) -> str:
    """The dtype whose peak a mode is measured against: 'fp32', 'tf32' or 'bf16'."""
    return "bf16" if mode.startswith("bf16") else mode


def device_peaks(device: torch.device, override: float | None) -> tuple[dict[str, float | None], str]:
    """Peak FLOP/s per dtype ('fp32', 'tf32', 'bf16') for `device`, and where they come from."""
    if override is not None:
        peak = override * 1e12
        return {"fp32": peak, "tf32": peak, "bf16": peak}, f"--peak-tflops {override}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        upper = name.upper()
        for keys, table in PEAK_TFLOPS:
            if all(k in upper for k in keys):
                return {k: v * 1e12 for k, v in table.items()}, f"data sheet of {name} (dense)"
        return {"fp32": None, "tf32": None, "bf16": None}, f"{name}: not in the table, give --peak-tflops"
    fp32, bf16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16)
    return {"fp32": fp32, "tf32": fp32, "bf16": bf16}, "same-run torch.mm 2048^2 (CPU: a practical ceiling)"


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeat: int = 3) -> float:
    """Best FLOP/s of an n x n `torch.mm` in `dtype` on the CPU (2 n^3 FLOPs per product)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2.0 * n**3 / (time.perf_counter() - t0))
    return best


def build_model(backbone: str, top: str, checkpointing: bool) -> torch.nn.Module:
    from mammokit.models.registry import create_model

    return create_model(
        "whole_image", backbone=backbone, top=top, num_classes=2, pretrained=None, in_chans=1,
        grad_checkpointing=checkpointing,
    ).train()  # fmt: skip


def training_step_flops(backbone: str, top: str, batch: int, size: tuple[int, int], device: torch.device) -> float:
    """FLOPs of one forward + backward at `batch` (FlopCounterMode; no checkpointing: model FLOPs only)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(backbone, top, checkpointing=False).to(device)
    x = torch.randn(batch, 1, *size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    del model
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, mode: str) -> AbstractContextManager[Any]:
    if mode.startswith("bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _set_tf32(mode: str) -> None:
    allow = mode != "fp32"  # "fp32" = true FP32; every other mode allows TF32 for what stays float32
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


def time_training(
    backbone: str,
    top: str,
    mode: str,
    checkpointing: bool,
    batch: int,
    size: tuple[int, int],
    device: torch.device,
    steps: int,
    warmup: int,
) -> tuple[float, float | None]:
    """(median seconds per training step, peak memory in GiB or None on CPU) of one configuration."""
    _set_tf32(mode)
    torch.manual_seed(0)
    model = build_model(backbone, top, checkpointing).to(device)
    channels_last = "_cl" in mode
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, *size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, mode):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()

    if mode.endswith("_compile"):
        model.forward = torch.compile(model.forward)  # type: ignore[method-assign]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(max(1, warmup)):  # the first one compiles (compile mode) and autotunes cuDNN
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), mem


def write_prepared_pngs(folder: Path, n: int, size: tuple[int, int]) -> list[str]:
    """`n` prepared-like 16-bit PNGs (a bright ellipse with texture on black) under folder/images/."""
    from mammokit.io.images import write_png16

    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inside = ((yy - h / 2) / (0.45 * h)) ** 2 + (xx / (0.8 * w)) ** 2 <= 1
    files = []
    for i in range(n):
        img = np.where(inside, 20000 + rng.normal(0, 3000, (h, w)), 0).clip(0, 65535).astype(np.uint16)
        rel = f"images/img{i}.png"
        write_png16(folder / rel, img, durable=False)
        files.append(rel)
    return files


def loader_throughput(root: Path, files: list[str], batch: int, workers: int, epochs: int = 2) -> float:
    """Images/s of the training DataLoader (PNG read + decode + augmentation + normalise + collate), `workers`."""
    import pandas as pd
    from torch.utils.data import DataLoader

    from mammokit.data.datasets import WholeImageDataset
    from mammokit.data.transforms import build_train_transform
    from mammokit.engine.module import collate_samples

    table = pd.DataFrame({"image_file": files, "label": [i % 2 for i in range(len(files))],
                          "image_id": [f"i{i}" for i in range(len(files))]})  # fmt: skip
    # no in-memory cache: a full-resolution training set (~5 GB for CBIS-DDSM) does not fit the default budget,
    # so every epoch reads and decodes the PNGs, which is what this measures
    dataset = WholeImageDataset(root, table, mean=0.5, std=0.25, transform=build_train_transform(), cache_mb=0)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate_samples,
                        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())  # fmt: skip
    for _ in loader:  # warm-up epoch: worker start-up, page cache
        pass
    t0 = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for b in loader:
            n += int(b["label"].shape[0])
    return n / (time.perf_counter() - t0)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu (to test the script)")
    parser.add_argument("--size", type=parse_size, default=(1152, 896), help="input HxW (default 1152x896)")
    parser.add_argument("--batch", type=int, default=8, help="images per training step (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--checkpointing", choices=("both", "on", "off"), default="both",
                        help="activation checkpointing of the trunk: both (default), on, off")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s (overrides the table, for every mode)")  # fmt: skip
    parser.add_argument("--loader-workers", type=int, nargs="*", default=None,
                        help="DataLoader worker counts (default 0 2 4 8 .. up to the CPUs; empty: skip)")  # fmt: skip
    parser.add_argument("--loader-images", type=int, default=32, help="PNGs the loader test reads per epoch")
    parser.add_argument("--data", type=Path, default=None, help="a prepared folder to read instead of synthetic PNGs")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run on a GPU machine, or pass --device cpu --size 128x96 --steps 2 to test")
        return 2
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be >= 1")
    size = args.size
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    peaks, peak_source = device_peaks(device, args.peak_tflops)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"device: {device} ({gpu}); host CPU: {cpu_name()}, {cpus} CPUs; torch {torch.__version__}")
    print(f"input {args.batch} x 1 x {size[0]} x {size[1]}; {args.steps} timed steps after {args.warmup} warm-up")
    print("peak FLOP/s (" + peak_source + "): "
          + ", ".join(f"{k} {_fmt(v and v / 1e12, '.1f')} T" for k, v in peaks.items()))  # fmt: skip

    ckpt = {"both": [False, True], "on": [True], "off": [False]}[args.checkpointing]
    rows: list[Row] = []
    flops: dict[str, float] = {}
    for name in args.models:
        backbone, top = MODELS[name]
        flops[name] = training_step_flops(backbone, top, args.batch, size, device)
        print(f"{name}: {flops[name] / args.batch / 1e9:.1f} GFLOP per image per training step (fwd + bwd)")
        for mode in args.modes:
            for cp in ckpt:
                row = Row(name, mode, cp, args.batch)
                try:
                    step_s, mem = time_training(
                        backbone, top, mode, cp, args.batch, size, device, args.steps, args.warmup
                    )
                except torch.OutOfMemoryError:
                    row.note = "out of memory"
                except Exception as exc:  # e.g. torch.compile without a working compiler toolchain
                    row.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                else:
                    row.step_ms, row.peak_mem_gib = step_s * 1e3, mem
                    row.images_per_s = args.batch / step_s
                    peak = peaks[mode_dtype(mode)]
                    row.mfu = flops[name] / step_s / peak if peak else None
                rows.append(row)
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the next configuration starts from an empty cache
                ips, mfu = _fmt(row.images_per_s, ".2f"), _fmt(row.mfu, ".3f")
                print(
                    f"  {mode:16s} checkpointing={'on ' if cp else 'off'}: {ips} img/s, MFU {mfu} {row.note}",
                    flush=True,
                )

    print()
    print("| model | mode | act. ckpt | img/s | step ms | peak GiB | MFU | note |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        cells = [r.model, r.mode, "on" if r.checkpointing else "off", _fmt(r.images_per_s, ".2f"),
                 _fmt(r.step_ms, ".0f"), _fmt(r.peak_mem_gib, ".1f"), _fmt(r.mfu, ".3f"), r.note]  # fmt: skip
        print("| " + " | ".join(cells) + " |")

    loader_rows: list[dict[str, Any]] = []
    workers = args.loader_workers
    if workers is None:
        workers = [w for w in (0, 2, 4, 8, 16, 32) if w <= cpus]
    if workers:
        best_train = max((r.images_per_s or 0.0) for r in rows) if rows else 0.0
        with tempfile.TemporaryDirectory() as tmp:
            if args.data is not None:
                from mammokit.data.manifest import read_images

                root = args.data
                files = read_images(root)["image_file"].astype(str).tolist()[: args.loader_images]
            else:
                root = Path(tmp)
                files = write_prepared_pngs(root, args.loader_images, size)
            print()
            source = f"from {root}" if args.data else "synthetic"
            print(f"data loader: {len(files)} prepared PNGs ({source}), training augmentation, batch {args.batch}; "
                  f"fastest training mode above: {best_train:.1f} img/s")  # fmt: skip
            print("| loader workers | images/s | fed? (loader >= fastest training) |")
            print("|---:|---:|---|")
            for w in workers:
                ips = loader_throughput(root, files, args.batch, w)
                fed = "yes" if ips >= best_train else f"no ({ips / best_train:.2f} of it)"
                loader_rows.append({"workers": w, "images_per_s": ips, "fed": ips >= best_train})
                print(f"| {w} | {ips:.1f} | {fed} |", flush=True)

    if args.json:
        args.json.write_text(json.dumps({
            "device": str(device), "gpu": gpu, "cpu": cpu_name(), "cpus": cpus, "torch": torch.__version__,
            "size": list(size), "batch": args.batch, "steps": args.steps, "peaks_flops": peaks,
            "peak_source": peak_source, "train_flops_per_step": flops, "training": [asdict(r) for r in rows],
            "loader": loader_rows,
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
