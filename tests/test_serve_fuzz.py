"""The service in the fuzz loop (issue 25): mutants of the reader fuzzer uploaded to a real `mammokit serve`
process, a good file after every few, which must still be predicted. A short run of benchmarks/fuzz_service.py
(the long run and its figures: docs/security.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_service.py"


def _fuzz_service():
    spec = importlib.util.spec_from_file_location("fuzz_service", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_service"] = module
    spec.loader.exec_module(module)
    return module


def test_mutants_through_the_service_never_kill_it_and_a_good_file_is_predicted_after_each_batch(tmp_path):
    fuzz = _fuzz_service()
    # inputs 0..29: every seed file twice, codestream and deflate mutations among them (~20 s on 2 idle cores)
    report = fuzz.fuzz(seconds=None, inputs=30, every=6, seed=0, work=tmp_path, log=tmp_path / "serve.log")
    assert report["inputs"] == 30
    assert report["service_deaths"] == 0, report["deaths"]
    assert report["good_file_checks"] == {"200": 5}, report["examples"]
    assert not [k for k in report["outcomes"] if not k.startswith(("200", "4"))], report["outcomes"]
    assert any(k.startswith("422") for k in report["outcomes"]) and "200 predicted" in report["outcomes"]
    assert sum(report["outcomes_with_mutation"]["codestream"].values()) > 0


def test_classify_names_the_refusal_without_the_file_or_value():
    fuzz = _fuzz_service()
    detail = "rejected: a.dcm: the header declares 15 x 32 pixels (Rows x Columns) but its JPEG codestream declares 40"
    assert fuzz.classify(422, detail) == "422 reader: codestream size != header"
    assert fuzz.classify(500, "internal error (MemoryError); quote request id x") == "500 MemoryError"
    assert fuzz.classify(200, "") == "200 predicted"
