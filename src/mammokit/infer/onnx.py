"""ONNX export of a whole-image run and a torch-free ONNX Runtime backend.

The exported graph is the inference core's `probability_graph`: unit scaling and the run's mean/std
normalisation -> model -> float32 softmax -> sum over the positive units. So its single output is
p(malignant) per image (uncalibrated; calibration.json, when present, is applied by the predictor in
NumPy), its input is the prepared image itself, and nobody normalises by hand:

    input  "image"           float32 (batch, 1, H, W): the prepared uint16 image's values (0..65535)
    input  "contralateral"   bilateral models only: the same view of the other breast, float32 (batch, 1, H, W),
                             prepared alike (`data.pairs`; the image itself where it has no partner)
    output "prob_malignant"  float32 (batch,)

Flip test-time augmentation is not in the graph: the predictor feeds the four flips as one batch and
averages them (`scoring.core.score`), exactly as with the torch backend.

The batch axis is dynamic; H and W are fixed to the run's prepared size (the model was trained at
that size and the predictor always prepares images to it). The run's `model.json` is embedded in the
ONNX metadata (`mammokit_model_card`), so the file is self-describing.

`export_onnx` needs torch (and onnx/onnxscript); `OnnxBackend` needs only onnxruntime and NumPy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammokit.config import to_dict
from mammokit.run import read_card
from mammokit.utils.atomic import atomic_path

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUT_NAME = "image"
PARTNER_INPUT_NAME = "contralateral"  # the second input of a bilateral model's graph
OUTPUT_NAME = "prob_malignant"
DEFAULT_OPSET = 18
# Metadata key/value naming what the graph's input is. Files exported before the graph held the
# normalisation (input = normalised image) lack it and would give wrong probabilities: they are refused.
INPUT_META_KEY = "mammokit_input"
INPUT_META_VALUE = "prepared_uint16_values"


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    check_batch: int = 3,
    tolerance: float = 1e-4,
) -> tuple[Path, float]:
    """Export a run's model to ONNX and check it against torch on random inputs.

    Args:
        run_dir: a whole-image (or patch) run folder.
        out: the .onnx file to write; default `RUN/model.onnx`.
        opset: ONNX opset version.
        check_batch: batch size of the parity check (3, unlike the export's example batch of 2,
            proves the batch axis is dynamic).
        tolerance: largest allowed |p_onnx - p_torch|; a larger difference raises.

    Returns:
        (path written, max absolute probability difference of the parity check).
    """
    import torch

    from mammokit.run import load_model
    from mammokit.scoring.core import probability_graph

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / ONNX_FILE
    model, card = load_model(run_dir, "cpu")
    wrapper = probability_graph(model, card.positive_indices, card.input.pixel_mean, card.input.pixel_std)
    h, w = card.input.height, card.input.width
    # batch 2, not 1: torch.export specialises a dimension whose example size is 1, so a batch-1
    # example cannot be declared dynamic ("Invalid ranges") on some torch versions
    example = torch.zeros(2, card.input.channels, h, w)
    with atomic_path(out) as tmp:
        if card.input.channels == 2:  # bilateral: the pair as two named inputs, each (B, 1, H, W)
            _torch_export(_two_inputs(wrapper), (example[:, :1], example[:, 1:]), tmp, opset)
        else:
            _torch_export(wrapper, (example,), tmp, opset)
        _embed_card(tmp, json.dumps(to_dict(card)))
    diff = check_parity(wrapper, out, batch=check_batch, shape=(card.input.channels, h, w))
    if diff > tolerance:
        out.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export of {run_dir} differs from torch by {diff:.2e} > {tolerance:.0e}; not written")
    log.info("wrote %s (opset %d); parity vs torch on a batch of %d: max |dp| = %.2e", out, opset, check_batch, diff)
    return out, diff


def _two_inputs(graph: nn.Module) -> nn.Module:
    """A bilateral probability graph with the pair as two inputs: (image, contralateral) -> p(malignant)."""
    import torch

    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.graph = graph

        def forward(self, image: torch.Tensor, contralateral: torch.Tensor) -> torch.Tensor:
            return self.graph(torch.cat([image, contralateral], dim=1))

    return TwoInputs().eval()


def _torch_export(wrapper: nn.Module, example: tuple[Any, ...], path: Path, opset: int) -> None:
    """torch.export-based exporter first; the TorchScript exporter if the graph does not export.

    `example` holds one (B, 1, H, W) tensor per graph input: the image, and for a bilateral model its partner.
    """
    import torch

    names = [INPUT_NAME, PARTNER_INPUT_NAME][: len(example)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    io_names = {"input_names": names, "output_names": [OUTPUT_NAME]}  # both exporters name the graph alike
    try:
        torch.onnx.export(
            wrapper,
            example,
            str(path),
            **io_names,
            dynamic_shapes={name: {0: batch} for name in names},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    except Exception as exc:  # the dynamo exporter rejects some graphs that TorchScript handles
        log.warning("torch.export-based ONNX export failed (%s); falling back to the TorchScript exporter", exc)
        torch.onnx.export(
            wrapper,
            example,
            str(path),
            **io_names,
            dynamic_axes={**{name: {0: "batch"} for name in names}, OUTPUT_NAME: {0: "batch"}},
            opset_version=min(opset, 17),
            dynamo=False,
        )


def _embed_card(path: Path, card_json: str) -> None:
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    for key, value in (("mammokit_model_card", card_json), (INPUT_META_KEY, INPUT_META_VALUE)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def check_parity(wrapper: nn.Module, onnx_path: Path, *, batch: int, shape: tuple[int, int, int]) -> float:
    """Max |p_onnx - p_torch| on a seeded random batch of uint16-range images (the graph's input)."""
    import torch

    x = np.random.default_rng(0).integers(0, 65536, (batch, *shape)).astype(np.float32)
    with torch.inference_mode():
        expected = wrapper(torch.from_numpy(x)).numpy()  # the one-input graph, (B, 2, H, W) for a pair
    got = OnnxBackend(onnx_path).prob_malignant(x)
    return float(np.abs(got - expected).max())


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime session options tuned for convolutional inference on a CPU.

    * all graph optimisations (`ORT_ENABLE_ALL`): constant folding, Conv+BatchNorm+activation fusion and the
      NCHWc layout transform, which runs the convolutions in MLAS's blocked (channels-in-vector) layout;
    * intra-op threads = physical cores (`threads`, default `utils.machine.physical_cores`): a second thread
      on a hyper-threaded core shares its vector units and only adds contention; one inter-op thread
      (the graph is a chain, there is nothing to run side by side);
    * the CPU memory arena and the memory-pattern planner on (activations reuse the same buffers from one
      call to the next, which matters at 1152x896 where one feature map is tens of MB).
    """
    import onnxruntime as ort

    from mammokit.utils.machine import physical_cores

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads or physical_cores())
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    return options


class OnnxBackend:
    """p(malignant) from an exported `model.onnx` with ONNX Runtime (no torch), with `session_options`."""

    name = "onnx"
    precision = "float32"

    def __init__(self, path: str | Path, device: str = "auto", *, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: export the run first with `mammokit export {path.parent}` "
                "or predict with --backend torch"
            )
        available = ort.get_available_providers()
        want_cuda = device == "auto" or device.startswith("cuda")
        providers = ["CUDAExecutionProvider"] if want_cuda and "CUDAExecutionProvider" in available else []
        if device.startswith("cuda") and not providers:
            raise RuntimeError(f"--device {device}: onnxruntime has no CUDA provider here; use --device cpu or auto")
        providers.append("CPUExecutionProvider")
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]  # ["image"] or ["image", "contralateral"]
        self.input_name = self.input_names[0]
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        if self.session.get_modelmeta().custom_metadata_map.get(INPUT_META_KEY) != INPUT_META_VALUE:
            raise ValueError(
                f"{path} was exported by an older mammokit whose graph expects a normalised image; "
                f"re-export it with `mammokit export {path.parent}` (the graph now normalises itself)"
            )

    def prob_malignant(self, x: np.ndarray) -> np.ndarray:
        """float32 (B, 1, H, W) in uint16 units (the prepared image's values) -> (B,) float32 p(malignant).

        A bilateral model's graph takes (B, 2, H, W) here: channel 0 feeds "image", channel 1 "contralateral".
        """
        x = np.asarray(x, dtype=np.float32)
        if len(self.input_names) != x.shape[1]:
            raise ValueError(f"the ONNX graph takes {len(self.input_names)} image(s) per sample, got {x.shape[1]}")
        feeds = {name: np.ascontiguousarray(x[:, i : i + 1]) for i, name in enumerate(self.input_names)}
        return self.session.run(None, feeds)[0].reshape(-1)

    def card_json(self) -> dict[str, Any] | None:
        """The model card embedded at export, if any."""
        meta = self.session.get_modelmeta().custom_metadata_map
        return json.loads(meta["mammokit_model_card"]) if "mammokit_model_card" in meta else None


def onnx_path_for(run_dir: str | Path) -> Path:
    """Where `mammokit export` puts a run's ONNX file (checks the run folder is one)."""
    read_card(run_dir)
    return Path(run_dir) / ONNX_FILE
