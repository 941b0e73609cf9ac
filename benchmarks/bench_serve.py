"""Benchmark: `mammokit serve` under load, beside `mammokit predict` on the same files with the same model.

In one run, on this machine, loopback only:

1. writes a synthetic exam set (`mammokit synth` INbreast layout: four-view FFDM DICOMs) at a small size;
2. baseline: `mammokit predict RUN` (the CLI, in a subprocess, batch 4, 2 reader threads, no heatmaps) on
   all the files and on one exam, after one untimed call that lets `--backend auto` cache its choice; its
   throughput is the marginal rate (extra images / extra seconds), so start-up and model loading are not
   counted against it;
3. starts `mammokit serve RUN --host 127.0.0.1` in a subprocess and, once /readyz says ready and one warm-up
   exam has gone through, sends a bounded number of exams (4 views, no heatmaps: the same work as the
   baseline) at concurrency 1, 4 and 16 with an httpx async client. A 503 (queue full) is counted and the
   request retried after its Retry-After, as a well-behaved client would;
4. reports per level: throughput (images/s of successful requests), its ratio to `mammokit predict`, latency
   p50/p95/p99 of successful requests, errors (anything but 200 and the intended 503), the 503 count, and the
   server's peak RSS (VmHWM, reset per level through /proc/PID/clear_refs where allowed) against its idle RSS.

    nice -n 10 .venv/bin/python benchmarks/bench_serve.py --run demo-output/runs/whole [--women 4] [--size 512 384]

Targets (issue 14): at concurrency 16 no errors besides 503s, peak RSS <= 1.5 x idle RSS + one batch, and
throughput >= 80 % of `mammokit predict`. On a shared machine absolute numbers move with the load; the
ratios measured in one run are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mammokit.utils.machine import cpu_name

LEVELS = (1, 4, 16)


def rss_kib(pid: int, field: str) -> int:
    """VmRSS (current) or VmHWM (peak) of a process, in KiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5 = reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mammokit_cmd() -> list[str]:
    return [sys.executable, "-m", "mammokit"]


def predict_seconds(run: Path, files: list[Path], out: Path) -> float:
    listing = out.with_suffix(".csv")
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "image_id"])
        writer.writerows([str(p), f"img{i}"] for i, p in enumerate(files))
    cmd = [*mammokit_cmd(), "predict", str(run), str(listing), "--out", str(out), "--batch-size", "4"]
    cmd += ["--workers", "2", "--device", "cpu", "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def load_level(
    url: str, exams: list[list[tuple[str, bytes]]], concurrency: int, n_requests: int, max_s: float
) -> dict[str, float]:
    latencies: list[float] = []
    counts = {"ok": 0, "busy": 0, "errors": 0, "images": 0}
    next_index = 0
    deadline = time.monotonic() + max_s

    async def one(client: httpx.AsyncClient, exam: list[tuple[str, bytes]]) -> None:
        files = [("files", (name, data, "application/dicom")) for name, data in exam]
        for _attempt in range(20):
            t0 = time.perf_counter()
            response = await client.post(url + "/v1/predict", files=files, data={"heatmap": "none"})
            if response.status_code == 503:
                counts["busy"] += 1
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - t0)
                counts["ok"] += 1
                counts["images"] += len(exam)
            else:
                counts["errors"] += 1
            return
        counts["errors"] += 1

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < n_requests and time.monotonic() < deadline:
            exam = exams[next_index % len(exams)]
            next_index += 1
            await one(client, exam)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": counts["ok"],
        "images_per_s": counts["images"] / wall if wall > 0 else 0.0,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "p99_s": percentile(latencies, 99),
        "errors": counts["errors"],
        "busy_503": counts["busy"],
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("demo-output/runs/whole"), help="whole-image run folder")
    parser.add_argument("--women", type=int, default=4, help="synthetic women = exams of 4 views (default 4)")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 384), metavar=("H", "W"), help="image size")
    parser.add_argument("--requests", type=int, default=24, help="exams sent per concurrency level (default 24)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit per level (default 60)")
    parser.add_argument("--queue", type=int, default=8, help="server queue (default 8: 16 clients get 503s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not (args.run / "model.json").is_file():
        print(f"bench_serve skipped: {args.run} holds no model.json; pass --run RUN (or run `make demo` first)")
        return 0

    from mammokit.synth import SynthConfig, generate

    with tempfile.TemporaryDirectory(prefix="mammokit-bench-serve-") as tmp:
        root = Path(tmp)
        generate(
            root / "exams",
            SynthConfig(layout="inbreast", women=args.women, seed=11, height=args.size[0], width=args.size[1]),
        )
        files = sorted((root / "exams" / "AllDICOMs").glob("*.dcm"))
        exams = [[(p.name, p.read_bytes()) for p in files[i : i + 4]] for i in range(0, len(files), 4)]
        n_images = args.requests * 4
        # the baseline predicts as many images as one load level sends
        all_files = [files[i % len(files)] for i in range(n_images)]
        # untimed: `--backend auto` measures and caches its choice in RUN/cache on the first call (tens of
        # seconds); both timed calls, and the server, then reuse it
        predict_seconds(args.run, files[:4], root / "pred-warm-up")
        t_all = predict_seconds(args.run, all_files, root / "pred-all")
        t_one = predict_seconds(args.run, files[:4], root / "pred-one")
        predict_rate = (n_images - 4) / max(t_all - t_one, 1e-9)
        print(f"mammokit predict: {n_images} images in {t_all:.1f} s, 4 in {t_one:.1f} s -> {predict_rate:.2f} img/s")

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [*mammokit_cmd(), "serve", str(args.run), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--device", "cpu", "--queue", str(args.queue), "--workers", "2", "--timeout", "300"]
        log = open(root / "server.log", "w")  # noqa: SIM115 - closed in finally
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        rows: list[dict[str, float]] = []
        try:
            deadline = time.monotonic() + 600  # model loading on a starved shared CPU
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
            else:
                raise RuntimeError("the server did not become ready within 600 s")
            rss_loaded = rss_kib(server.pid, "VmRSS")
            asyncio.run(load_level(url, exams[:1], 1, 1, 60))  # warm-up (first-call allocations)
            idle = rss_kib(server.pid, "VmRSS")
            can_reset = reset_peak(server.pid)
            for level in LEVELS:
                reset_peak(server.pid)
                row = asyncio.run(load_level(url, exams, level, args.requests, args.max_seconds))
                row["peak_rss_mib"] = rss_kib(server.pid, "VmHWM") / 1024
                row["ratio_to_predict"] = row["images_per_s"] / predict_rate
                rows.append(row)
                print(f"concurrency {level}: {row['images_per_s']:.2f} img/s", flush=True)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()

    # one batch = what one request adds: 4 uploaded files + their float32 decoded pixels (+ a prepared copy)
    h, w = args.size
    batch_mib = 4 * (len(exams[0][0][1]) + 2 * h * w * 4) / 2**20
    idle_mib = idle / 1024
    print()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs, shared with other jobs during the run)")
    print(f"model: {args.run}; images {h}x{w} DICOM, exams of 4 views, no heatmaps; server queue {args.queue}")
    print(f"server RSS: {rss_loaded / 1024:.0f} MiB after loading, idle {idle_mib:.0f} MiB after one warm-up exam; ")
    print(f"one batch ~ {batch_mib:.1f} MiB; memory bound = 1.5 x idle + batch = {1.5 * idle_mib + batch_mib:.0f} MiB")
    if not can_reset:
        print("(peak RSS could not be reset per level: the peaks include the earlier levels)")
    print(f"`mammokit predict` (same files, same model, batch 4): {predict_rate:.2f} images/s")
    print()
    print("| concurrency | requests | images/s | vs predict | p50 s | p95 s | p99 s | errors | 503s | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['images_per_s']:.2f} | {r['ratio_to_predict']:.2f} | "
            f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p99_s']:.2f} | {r['errors']} | {r['busy_503']} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    top = rows[-1]
    checks = {
        "no errors besides 503 at concurrency 16": top["errors"] == 0,
        "peak RSS <= 1.5 x idle + one batch": top["peak_rss_mib"] <= 1.5 * idle_mib + batch_mib,
        "throughput >= 0.8 x predict": top["ratio_to_predict"] >= 0.8,
    }
    print()
    for name, ok in checks.items():
        print(f"target {'met' if ok else 'MISSED'}: {name}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cpu": cpu_name(), "predict_images_per_s": predict_rate, "idle_rss_mib": idle_mib, "levels": rows},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
