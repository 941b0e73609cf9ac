"""`benchmarks/roofline_predict.py`: the layer census, the roofline bound and ONNX Runtime's profile agree.

A tiny size keeps it to seconds; the assertions are on accounting (FLOPs counted three ways must agree, no
layer may beat its own roofline), not on speed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "roofline_predict.py"


def _module():
    spec = importlib.util.spec_from_file_location("roofline_predict", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["roofline_predict"] = module
    spec.loader.exec_module(module)
    return module


def test_ort_nodes_are_classified_by_their_logical_weight_shapes() -> None:
    node = _module()._ort_node

    def args(op: str, x: list[int], w: list[int], y: list[int]) -> dict:
        return {"op_name": op, "input_type_shape": [{"float": x}, {"float": w}], "output_type_shape": [{"float": y}]}

    assert node(args("Conv", [1, 32, 8, 8], [32, 1, 3, 3], [1, 32, 8, 8])) == ("depthwise", 2.0 * 32 * 64 * 9)
    assert node(args("Conv", [1, 1, 8, 8], [32, 1, 3, 3], [1, 32, 4, 4])) == ("dense conv", 2.0 * 32 * 16 * 9)
    assert node(args("FusedConv", [1, 16, 8, 8], [96, 16, 1, 1], [1, 96, 8, 8])) == ("pointwise", 2.0 * 96 * 64 * 16)
    assert node(args("Gemm", [1, 512], [2, 512], [1, 2])) == ("linear", 2.0 * 2 * 512)
    assert node({"op_name": "MaxPool"}) == ("other: MaxPool", 0.0)


def test_tiny_run_accounts_for_every_flop_and_no_layer_beats_its_roofline(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "roofline.json"
    assert _module().main(["--size", "128", "96", "--batches", "1", "--repeat", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    # the forward hooks see every multiply-add FlopCounterMode counts
    assert r["hooked_gflop_per_image"] == pytest.approx(r["gflop_per_image"], rel=1e-3)
    kinds = {k["kind"]: k for k in r["kinds"]}
    assert {"depthwise", "pointwise", "dense conv"} <= set(kinds)
    assert sum(k["flops_share"] for k in kinds.values()) == pytest.approx(1.0)
    assert sum(k["roofline_time_share"] for k in kinds.values()) == pytest.approx(1.0)
    for layer in r["layers"]:  # roofline time is the larger of the compute and the memory time
        assert layer["roofline_s"] * r["peak_gflops"] * 1e9 >= layer["flops"] * (1 - 1e-9)
        assert layer["roofline_s"] * r["bandwidth_gbs"] * 1e9 >= layer["bytes"] * (1 - 1e-9)
    assert kinds["depthwise"]["intensity"] < kinds["pointwise"]["intensity"]  # 9 MACs per output vs C_in
    assert 0.0 < r["attainable_ratio"] <= 1.0
    # ONNX Runtime's nodes, classified from the profile's shapes, hold the model's FLOPs per kind, plus the
    # channel padding of its NCHWc layout (Lite0's 24- and 40-channel layers run as 32 and 48): never less
    layer_flops = {kind: sum(x["flops"] for x in r["layers"] if x["kind"] == kind) for kind in kinds}
    for kind in ("depthwise", "pointwise", "dense conv"):
        assert layer_flops[kind] * (1 - 1e-9) <= r["ort_profile"][kind]["flops"] <= 1.5 * layer_flops[kind], kind
        assert kinds[kind]["ort_padding"] == pytest.approx(r["ort_profile"][kind]["flops"] / layer_flops[kind])
    shares = [k["ort_time_share"] for k in kinds.values()]
    assert all(0.0 <= s <= 1.0 for s in shares) and sum(shares) <= 1.0 + 1e-9
    (m,) = r["measured"]
    assert (
        m["batch"] == 1
        and m["images_per_s"] > 0
        and math.isclose(m["share_of_roofline"], m["gflops"] / r["attainable_gflops"], rel_tol=1e-9)
    )
