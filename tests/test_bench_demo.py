"""`benchmarks/bench_demo.py`: parsing the demo's report, the references, and the summary it writes.

The demo itself is not run here (minutes; `test_readme` runs the small preset): `run_demo` is replaced by a
recorded output, so what is checked is the benchmark's own logic.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_demo.py"

RECORDED = """\
[1/7] synthesise a CBIS-DDSM-layout dataset ...
[1/7] synthesise a CBIS-DDSM-layout dataset: done in 5 s
[2/7] prepare: read DICOMs, crop, orient, resize ...
WARNING: 8 CBIS-DDSM patients have rows in both official splits; all their images are put in test
[4/7] train the patch classifier (3 stages) ...
[4/7] train the patch classifier (3 stages): done in 65 s
12:45:24 INFO mammokit.engine.train: whole-image run written (val AUC 0.96, test AUC 0.87)
[5/7] convert to a whole-image classifier and train end to end (2 stages): done in 62 s
[7/7] evaluate on the held-out test split with flip TTA; write the HTML report: done in 24 s

mammokit demo finished in 2.8 min
held-out per-image AUC (4-flip TTA): 0.882 (95% CI 0.790-0.964)
"""  # the console of today's demo (start lines, a warning) and an INFO line of `mammokit -v demo`


def _bench():
    spec = importlib.util.spec_from_file_location("bench_demo", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_demo"] = module
    spec.loader.exec_module(module)
    return module


def test_parse_demo_output_reads_steps_and_auc() -> None:
    parsed = _bench().parse_demo_output(RECORDED)
    assert parsed["steps_s"] == {
        "1. synthesise a CBIS-DDSM-layout dataset": 5,
        "4. train the patch classifier (3 stages)": 65,
        "5. convert to a whole-image classifier and train end to end (2 stages)": 62,
        "7. evaluate on the held-out test split with flip TTA; write the HTML report": 24,
    }
    assert parsed["heldout"] == {"auc": 0.882, "ci": [0.79, 0.964]}
    assert _bench().parse_demo_output("no report")["heldout"] is None


class _Clock:
    """A stand-in for the `time` module whose perf_counter returns the given instants, in order."""

    def __init__(self, instants: list[float]) -> None:
        self.instants = iter(instants)

    def perf_counter(self) -> float:
        return next(self.instants)


def test_matmul_rate_is_flops_over_the_timed_products(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench()
    # the 3 warm-up products are not timed; the 2 timed ones take 0.5 s together
    monkeypatch.setattr(bench, "time", _Clock([10.0, 10.5]))
    assert bench.matmul_gflops(n=64, repeat=2) == pytest.approx(2 * 64**3 * 2 / 0.5 / 1e9, rel=1e-12)


def test_probe_step_is_the_median_step_after_two_warm_up_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench()
    # the two warm-up steps (allocation, kernel choice) only read the clock at their start; the three timed steps
    # take 0.3, 0.1 and 0.2 s: the median is 0.2 (a mean, or a warm-up step counted, would give another number)
    instants = [0.0, 5.0]
    t = 10.0
    for duration in (0.3, 0.1, 0.2):
        instants += [t, t + duration]
        t += duration + 1.0  # time between steps is not counted
    monkeypatch.setattr(bench, "time", _Clock(instants))
    assert bench.probe_step_s(steps=3, batch=2, size=32) == pytest.approx(0.2)


def test_main_writes_targets_and_normalised_wall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench()
    refs = iter(
        [{"matmul_fp32_gflops": 280.0, "probe_step_s": 0.10}, {"matmul_fp32_gflops": 260.0, "probe_step_s": 0.14}]
    )
    monkeypatch.setattr(bench, "references", lambda: next(refs))
    calls = []

    def fake_demo(out: Path, preset: str, workers: int):
        calls.append((preset, workers))
        return 300.0, 500.0, RECORDED, 0

    monkeypatch.setattr(bench, "run_demo", fake_demo)
    assert bench.main(["--preset", "small", "--workers", "1", "--json", str(tmp_path / "r.json")]) == 0
    assert calls == [("small", 1)]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["wall_in_probe_steps"] == 2500  # 300 s / mean(0.10, 0.14) s
    assert r["target_wall_met"] is False and r["target_auc_met"] is True
    assert "| 5.0 min | 500 s | 0.882 (0.790-0.964) | 280 / 260 | 100 / 140 ms | 2500 |" in bench.markdown_row(r)

    monkeypatch.setattr(bench, "references", lambda: {"matmul_fp32_gflops": 1.0, "probe_step_s": 1.0})
    monkeypatch.setattr(bench, "run_demo", lambda out, preset, workers: (1.0, 1.0, "Traceback ...", 2))
    assert bench.main([]) == 1  # a failed demo is a failed benchmark, not a row
