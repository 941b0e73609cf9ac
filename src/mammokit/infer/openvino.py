"""An OpenVINO Runtime backend for the exported ONNX graph, used only where `openvino` is already installed.

OpenVINO is not a mammokit dependency: `infer.backend_select` offers it as a candidate when `import openvino`
works and keeps it only if it is measurably faster on this machine and within the accuracy bar. It reads the
same `model.onnx` ONNX Runtime runs (input: the prepared image's uint16 values as float32; output: p(malignant)).
The inference precision is pinned to float32: OpenVINO's CPU plugin would otherwise compute in bf16 on CPUs with
AMX / AVX512-BF16, silently, without the accuracy check the "torch-bf16" candidate gets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OpenVinoBackend:
    """p(malignant) from an exported ONNX file with OpenVINO Runtime on the CPU (no torch)."""

    name = "openvino"
    precision = "float32"  # pinned below (INFERENCE_PRECISION_HINT)

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import openvino as ov

        from mammokit.utils.machine import physical_cores

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: export the run first with `mammokit export`")
        config = {
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all cores on it (predict's batches are small)
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": int(threads or physical_cores()),
        }
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.device = "cpu"

    def prob_malignant(self, x: np.ndarray) -> np.ndarray:
        """float32 (B, 1, H, W) in uint16 units -> (B,) float32 p(malignant)."""
        result = self.compiled(np.ascontiguousarray(x, dtype=np.float32))
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32).reshape(-1)
