"""Long fuzzing run of `read_mammogram`: `python benchmarks/fuzz_reader.py --seconds 600 [--workers 2] [--seed 0]`.

The mutator and seed corpus are those of the test suite (tests/fuzz_corpus.py: small MG DICOMs in every supported
transfer syntax plus PNG/PGM/JPEG; bit flips, truncation, chunk edits, extreme values in Rows/Columns/
BitsAllocated/RescaleSlope/... tags, extreme sizes inside the JPEG/JPEG-LS/JPEG 2000/RLE codestreams, deflate
bombs of up to 400 MB). Inputs run in chunks in crash-tolerant worker processes (`mammokit.utils.pool`), so a
decoder that aborts or hangs is counted instead of ending the run:

* a hang: every input runs under an alarm (`--timeout`, default 10 s) whose default action kills the worker;
* an abort/segfault/OOM kill: the pool reports the signal;
* anything raised that is not a `MammogramReadError`: counted by exception type, with an example.

Prints (and with `--json FILE` writes) inputs run, outcomes by type (also for the inputs that had a codestream or
a deflate mutation), peak RSS of the workers, the slowest input (seed file + mutation seed, reproducible with
`--replay SEED_NAME:RNG_SEED`). Exit status 1 when any outcome is neither pixels nor a MammogramReadError.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_corpus import TRACKED, build_seeds, mutant
from mammokit.io.dicom import MammogramReadError, read_mammogram
from mammokit.utils.machine import cpu_name
from mammokit.utils.pool import TaskFailed, run_isolated

CHUNK = 40  # inputs per task: small, so a crash loses little accounting

_SEEDS: list[Path] = []
_WORK: Path | None = None
_TIMEOUT = 10


def _init(seeds: list[Path], work: Path, timeout: int) -> None:
    global _SEEDS, _WORK, _TIMEOUT
    _SEEDS, _WORK, _TIMEOUT = seeds, work, timeout


_TRACKED = TRACKED  # mutation kinds also counted on their own (codestream, deflate)


def _run_one(rng_seed: int, work: Path, ops: list[int] | None = None) -> tuple[str, float, str]:
    seed_path, data, applied = mutant(_SEEDS, rng_seed)
    if ops is not None:
        ops.extend(applied)
    path = work / f"input-{os.getpid()}{seed_path.suffix}"
    path.write_bytes(data)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a hang in native code is killed by the alarm itself
    signal.alarm(_TIMEOUT)
    t0 = time.perf_counter()
    try:
        read_mammogram(path)
        outcome, detail = "pixels", ""
    except MammogramReadError:
        outcome, detail = "MammogramReadError", ""
    except BaseException as exc:
        outcome, detail = type(exc).__name__, str(exc)[:200]
    finally:
        signal.alarm(0)
    return outcome, time.perf_counter() - t0, detail


def _chunk(task: tuple[int, int]) -> dict:
    """`CHUNK` inputs from (first rng seed, chunk index); returns counts, slowest input, worker peak RSS."""
    first, _ = task
    assert _WORK is not None
    counts: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {name: Counter() for name in _TRACKED.values()}
    slowest = (0.0, "", 0)
    examples: dict[str, str] = {}
    for rng_seed in range(first, first + CHUNK):
        seed_path = _SEEDS[rng_seed % len(_SEEDS)]
        ops: list[int] = []
        outcome, elapsed, detail = _run_one(rng_seed, _WORK, ops)
        counts[outcome] += 1
        for op in set(ops) & set(_TRACKED):
            by_kind[_TRACKED[op]][outcome] += 1
        if detail:
            examples.setdefault(outcome, f"{seed_path.name}:{rng_seed}: {detail}")
        if elapsed > slowest[0]:
            slowest = (elapsed, seed_path.name, rng_seed)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "counts": dict(counts),
        "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "slowest": slowest,
        "rss_mib": rss_mib,
        "examples": examples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="first mutation seed (runs are reproducible)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--replay", default=None, metavar="SEED_NAME:RNG_SEED", help="re-run one input, in-process")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mammokit-fuzz-"))
    seeds = build_seeds(work / "seeds")
    if args.replay:
        name, rng_seed = args.replay.rsplit(":", 1)
        _init(seeds, work, args.timeout)
        assert seeds[int(rng_seed) % len(seeds)].name == name, f"input {rng_seed} is a mutant of another seed"
        print(_run_one(int(rng_seed), work))
        return 0

    counts: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {name: Counter() for name in _TRACKED.values()}
    slowest = (0.0, "", 0)
    peak_rss = 0.0
    examples: dict[str, str] = {}
    t0 = time.perf_counter()
    next_seed = args.seed

    # rounds of 4 chunks per worker until the time is up (each chunk: CHUNK consecutive mutation seeds)
    while time.perf_counter() - t0 < args.seconds:
        batch = [(next_seed + k * CHUNK, 0) for k in range(4 * max(1, args.workers))]
        next_seed += len(batch) * CHUNK
        for index, result in run_isolated(
            _chunk, batch, workers=args.workers, initializer=_init, initargs=(seeds, work, args.timeout)
        ):
            if isinstance(result, TaskFailed):  # a worker died inside this chunk: hang (SIGALRM) or crash
                kind = "hang (SIGALRM)" if "SIGALRM" in result.reason else f"crash ({result.reason})"
                counts[kind] += 1
                examples.setdefault(kind, f"chunk of seeds {batch[index][0]}..{batch[index][0] + CHUNK - 1}")
                continue
            counts.update(result["counts"])
            for kind_name, kind_counts in result["by_kind"].items():
                by_kind[kind_name].update(kind_counts)
            peak_rss = max(peak_rss, result["rss_mib"])
            if result["slowest"][0] > slowest[0]:
                slowest = tuple(result["slowest"])
            for key, value in result["examples"].items():
                examples.setdefault(key, value)
    elapsed = time.perf_counter() - t0
    n = sum(v for k, v in counts.items() if not k.startswith(("hang", "crash")))
    report = {
        "inputs": n,
        "seconds": round(elapsed, 1),
        "inputs_per_second": round(n / elapsed, 1),
        "outcomes": dict(counts.most_common()),
        "outcomes_with_mutation": {k: dict(v.most_common()) for k, v in by_kind.items()},
        "peak_worker_rss_mib": round(peak_rss, 1),
        "slowest_input": {"seconds": round(slowest[0], 3), "replay": f"{slowest[1]}:{slowest[2]}"},
        "examples": examples,
        "seed_files": [p.name for p in seeds],
        "cpu": cpu_name(),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if set(counts) <= {"pixels", "MammogramReadError"} else 1


if __name__ == "__main__":
    sys.exit(main())
