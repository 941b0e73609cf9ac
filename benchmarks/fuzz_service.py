"""Service-in-the-loop fuzzing (issue 25, item 8): mutants uploaded to the real `mammokit serve`, a good file after
every K of them, which must still be predicted.

    python benchmarks/fuzz_service.py [--seconds 600 | --inputs N] [--every 10] [--seed 0] [--json FILE]

The mutants are those of the reader fuzzer (tests/fuzz_corpus.py `mutant`: input number N is a mutant of seed
N mod the number of seeds, with 1-4 stacked mutations including extreme sizes inside JPEG/JPEG-LS/JPEG 2000/RLE
codestreams and deflate bombs; `benchmarks/fuzz_reader.py --replay SEED:N` reads the same bytes from disk).
The service runs as a user starts it (`mammokit serve`, uvicorn, its own process) on a tiny random-weight run
(tests/serve_support.py) with `--set min_side=16`, so the 40 x 32-pixel seeds that still decode go on through
the model as well.

Reported: inputs uploaded, outcomes (HTTP status; for 4xx the kind of refusal from the message, for 5xx the
error type), the good-file checks (every one must be 200), service deaths (the process gone or a connection
dropped; the service is restarted and the count goes on - it must stay 0), decode workers lost (a decoder
crash costs that upload only, serve.decode), the service's peak RSS (VmHWM) and that of its decode workers
(sampled every 5th upload), the slowest upload, the service's CPU seconds beside the wall seconds.
Exit status 1 on a death, a 5xx or a failed good-file check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_corpus import TRACKED, build_seeds, mutant
from mammokit.utils.machine import cpu_name
from serve_support import make_exam, make_runs, serve_process

# what a 4xx said, in a few words (the message names the file and the value; the class is what is counted)
_KINDS = (  # in order: the first that matches (pre-check = before any decoding; reader = MammogramReadError)
    ("not a DICOM, PNG, PGM or JPEG", "pre-check: not an image"),
    ("no end marker", "pre-check: truncated"),
    ("but the file holds only", "pre-check: truncated"),
    ("more than this server's limit", "pre-check: over the pixel limit"),
    ("too large to decode safely", "pre-check: over the pixel limit"),
    ("larger than this server accepts", "upload too large"),
    ("codestream declares", "reader: codestream size != header"),
    ("cannot be checked before decoding", "reader: codestream size unreadable"),
    ("checking the compressed pixel data failed", "reader: codestream size unreadable"),
    ("deflate", "reader: deflate"),
    ("inflate", "reader: deflate"),
    ("has no pixel data", "reader: no pixel data"),
    ("could not be decoded", "reader: decoder refused the data"),
    ("not a readable PNG/PGM/JPEG", "reader: damaged raster"),
    ("image too small", "too small"),
    ("rejected:", "reader: other header error"),
)


def classify(status: int, detail: str) -> str:
    if status == 200:
        return "200 predicted"
    if status >= 500:
        match = re.search(r"internal error \((\w+)\)", detail)
        return f"{status} {match.group(1) if match else 'server error'}"
    for needle, kind in _KINDS:
        if needle in detail:
            return f"{status} {kind}"
    return f"{status} other"


def _proc_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the decode workers are children of the service's forkserver)."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent_of[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier}
        out.extend(frontier)
    return out


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def fuzz(*, seconds: float | None, inputs: int | None, every: int, seed: int, work: Path, log: Path) -> dict:
    """Run the service fuzz; returns the report (see the module docstring)."""
    run = make_runs(work / "runs")
    good_path = make_exam(work / "exam")[0]
    good = [("files", (good_path.name, good_path.read_bytes(), "application/dicom"))]
    seeds = build_seeds(work / "seeds")
    args = [str(run), "--backend", "torch", "--device", "cpu", "--heatmap", "none", "--queue", "4", "--workers", "2",
            "--set", "min_side=16", "--cache-dir", str(work / "cache")]  # fmt: skip
    outcomes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {name: Counter() for name in TRACKED.values()}
    examples: dict[str, str] = {}
    good_checks: Counter[str] = Counter()
    deaths: list[str] = []
    peak_service = peak_child = 0
    cpu_service = 0.0
    slowest = (0.0, "")
    n = 0
    t0 = time.perf_counter()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)

    def done() -> bool:
        if inputs is not None:
            return n >= inputs
        return time.perf_counter() - t0 >= (seconds or 0)

    while not done():
        with serve_process(args, log) as (proc, url), httpx.Client(base_url=url, timeout=300) as client:
            cpu_start = _cpu_s(proc.pid)
            try:
                while not done():
                    rng_seed = seed + n
                    seed_path, data, ops = mutant(seeds, rng_seed)
                    name = f"{seed_path.name}:{rng_seed}"
                    t = time.perf_counter()
                    try:
                        r = client.post(
                            "/v1/predict", files=[("files", (seed_path.name, data, "application/octet-stream"))]
                        )
                        outcome = classify(r.status_code, r.json().get("detail", "") if r.content else "")
                    except (httpx.TransportError, ValueError) as exc:
                        outcome = f"no answer ({type(exc).__name__})"
                    elapsed = time.perf_counter() - t
                    n += 1
                    outcomes[outcome] += 1
                    for op in set(ops) & set(TRACKED):
                        by_kind[TRACKED[op]][outcome] += 1
                    examples.setdefault(outcome, name)
                    if elapsed > slowest[0]:
                        slowest = (elapsed, name)
                    for child in _descendants(proc.pid) if n % 5 == 0 else ():  # /proc scan: every 5th
                        peak_child = max(peak_child, _proc_kib(child, "VmHWM"))
                    if proc.poll() is not None or outcome.startswith("no answer"):
                        deaths.append(f"after {name}: {outcome}, exit status {proc.poll()}")
                        break
                    if n % every == 0:  # the service must still predict a good file
                        try:
                            status = client.post("/v1/predict", files=good).status_code
                        except httpx.TransportError as exc:
                            status = type(exc).__name__
                        good_checks[str(status)] += 1
                        if status != 200:
                            examples.setdefault(f"good file -> {status}", f"after {name}")
            finally:
                peak_service = max(peak_service, _proc_kib(proc.pid, "VmHWM"))
                cpu_service += _cpu_s(proc.pid) - cpu_start
    elapsed = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    worker_deaths = log.read_text(errors="replace").count("a decode worker died") if log.exists() else 0
    return {
        "inputs": n,
        "wall_s": round(elapsed, 1),
        "service_cpu_s": round(cpu_service, 1),
        "fuzzer_cpu_s": round(usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime, 1),
        "inputs_per_second": round(n / elapsed, 2),
        "outcomes": dict(outcomes.most_common()),
        "outcomes_with_mutation": {k: dict(v.most_common()) for k, v in by_kind.items()},
        "good_file_checks": dict(good_checks),
        "every": every,
        "service_deaths": len(deaths),
        "deaths": deaths[:10],
        "service_peak_rss_mib": round(peak_service / 1024, 1),
        "decode_worker_peak_rss_mib": round(peak_child / 1024, 1) if peak_child else None,
        "decode_worker_deaths": worker_deaths,  # each costs its upload only (a 422); the service goes on
        "slowest_upload": {"seconds": round(slowest[0], 3), "input": slowest[1]},
        "examples": examples,
        "cpu": cpu_name(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    parser.add_argument("--inputs", type=int, default=None, help="a fixed number of mutants instead of --seconds")
    parser.add_argument("--every", type=int, default=10, help="a good file after every K mutants (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="first input number (runs are reproducible)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mammokit-fuzz-service-"))
    report = fuzz(
        seconds=args.seconds, inputs=args.inputs, every=args.every, seed=args.seed, work=work, log=work / "serve.log"
    )
    report["service_log"] = str(work / "serve.log")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    failed = report["service_deaths"] or any(k.startswith("5") for k in report["outcomes"])
    return 1 if failed or set(report["good_file_checks"]) - {"200"} else 0


if __name__ == "__main__":
    sys.exit(main())
