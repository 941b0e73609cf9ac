"""The inference core: the one place where a prepared image becomes p(malignant).

Everything that scores images calls this module: `mammokit evaluate` (prepared PNGs), `Predictor` /
`mammokit predict` (raw files, torch or ONNX backend), `mammokit export` (the exported graph *is*
`ProbabilityGraph`) and training's end-of-training metrics and threshold (`class_probabilities`). So
"what evaluate scores is what predict says" holds by construction; tests/test_parity.py checks it.

The contract, in order:

1. Input: prepared uint16 images, a (B, H, W) batch, passed to the network as float32 (B, 1, H, W)
   *in uint16 units* (0..65535). `images_to_input` makes that array.
2. Flip test-time augmentation (`tta=True`): the four flips of the batch (none, horizontal, vertical,
   both; `flip_views`) go through the network as one batch of 4B and their p(malignant) are averaged
   (`mean_over_flips`). Flipping the uint16 image before normalising equals flipping after, because
   normalisation is per pixel.
3. Normalisation inside the graph: `preprocess.unit_scale` then `preprocess.normalise` with the run's
   stored mean/std, as the training dataset does (`data.datasets`), so nobody normalises by hand.
4. logits -> p(malignant) = sum over the card's positive output units of the softmax, always computed in
   float32 (`class_probabilities`, `malignant_probability`), on any device and under any training
   precision. The model runs in float32 by default (no autocast): the threshold stored at the end of
   training is chosen on the same float32 probabilities that evaluate and predict produce. Only
   prediction may opt into bfloat16 autocast (`TorchScorer(precision="bfloat16")`, the "torch-bf16" backend),
   and `infer.backend_select` accepts it only where its probabilities stay within 5e-3 of float32.

The NumPy pieces (flips, averaging, input array, scoring through any backend) import no torch, so the
ONNX prediction path stays torch-free; the torch pieces import it lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mammokit.constants import PRECISIONS
from mammokit.preprocess import U16_MAX

if TYPE_CHECKING:
    import torch
    from torch import nn

N_FLIPS = 4  # none, horizontal (columns), vertical (rows), both
FLIP_AXES: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))  # the same four, as axes of (..., H, W)

# A scoring backend: float32 (N, 1, H, W) in uint16 units -> (N,) p(malignant).
ScoreFn = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------- NumPy


def images_to_input(images_u16: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Prepared uint16 images (B, H, W) (or a list of (H, W)) -> float32 (B, 1, H, W) in uint16 units.

    A (B, 2, H, W) batch (or a list of (2, H, W)) is a bilateral model's input: each image with the same view
    of the other breast (`data.pairs`); it is kept as is. Flip TTA flips both channels alike.
    """
    batch = np.stack(list(images_u16)) if not isinstance(images_u16, np.ndarray) else images_u16
    if batch.ndim == 3:
        batch = batch[:, None]
    if batch.ndim != 4 or batch.shape[1] not in (1, 2):
        raise ValueError(
            f"expected prepared grayscale images (B, H, W), (B, 1, H, W) or image pairs (B, 2, H, W), got {batch.shape}"
        )
    return np.ascontiguousarray(batch, dtype=np.float32)


def flip_views(x: np.ndarray) -> np.ndarray:
    """(B, ..., H, W) -> (4B, ..., H, W): the batch as is, flipped left-right, up-down, and both."""
    return np.ascontiguousarray(np.concatenate([np.flip(x, axes) if axes else x for axes in FLIP_AXES]))


def flip_averaged_maps(map_fn: Callable[[Any], np.ndarray], x: Any) -> np.ndarray:
    """Flip TTA for per-pixel maps: `map_fn` on the four flip views of `x`, each map flipped back, averaged.

    Args:
        map_fn: (B, C, H, W) input (a torch tensor) -> (B, H, W) maps on the input grid.
        x: the input batch.

    Returns:
        (B, H, W) float32, the mean of the four maps in the geometry of `x`.
    """
    import torch

    total = np.zeros((x.shape[0], *x.shape[-2:]), dtype=np.float32)
    for axes in FLIP_AXES:
        m = map_fn(torch.flip(x, axes) if axes else x)
        total += np.flip(m, axes) if axes else m  # axes -1/-2 of the (B, H, W) map = those of the input
    return total / N_FLIPS


def mean_over_flips(p: np.ndarray, batch: int) -> np.ndarray:
    """(4B,) probabilities in `flip_views` order -> (B,) mean over the four views of each image."""
    return np.asarray(p, dtype=np.float64).reshape(N_FLIPS, batch).mean(axis=0)


def score(fn: ScoreFn, x: np.ndarray, tta: bool) -> np.ndarray:
    """p(malignant) (B,) float64 of a (B, 1, H, W) input through `fn`, with or without flip TTA."""
    if not tta:
        return np.asarray(fn(x), dtype=np.float64).reshape(-1)
    return mean_over_flips(np.asarray(fn(flip_views(x))).reshape(-1), len(x))


def malignant_from_class_probs(probs: np.ndarray, positive: Sequence[int]) -> np.ndarray:
    """(N, C) class probabilities -> (N,) p(malignant): the sum over the positive units."""
    return np.asarray(probs)[:, list(positive)].sum(axis=1)


# ---------------------------------------------------------------------------------------------- torch


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, C) logits -> (B, C) float32 softmax (the logits are upcast first, whatever the precision)."""
    import torch

    return torch.softmax(logits.float(), dim=-1)


def malignant_probability(logits: torch.Tensor, positive: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """(B, C) logits -> (B,) float32 p(malignant) = sum of the softmax over the positive units."""
    import torch

    index = positive if isinstance(positive, torch.Tensor) else torch.tensor(list(positive), dtype=torch.long)
    probs = class_probabilities(logits)
    return probs.index_select(-1, index.to(probs.device)).sum(dim=-1)


def probability_graph(net: nn.Module, positive: Sequence[int], mean: float, std: float) -> nn.Module:
    """The scoring graph (eval mode): float32 (B, 1, H, W) in uint16 units -> (B,) float32 p(malignant).

    Unit scaling and normalisation (the run's mean/std) are inside, so the same module is what the torch
    backend runs and what `mammokit export` writes to ONNX.
    """
    import torch

    from mammokit.preprocess import normalise

    class ProbabilityGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.mean, self.std = float(mean), float(std)
            self.register_buffer("positive", torch.tensor(list(positive), dtype=torch.long), persistent=False)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = normalise(image / np.float32(U16_MAX), self.mean, self.std)
            return malignant_probability(self.net(x), self.positive)

    return ProbabilityGraph().eval()


class TorchScorer:
    """A whole-image network on one device, in float32, scoring prepared uint16 batches.

    Args:
        net: the classifier (outputs (B, C) logits); moved to `device` and put in eval mode.
        positive: output units that mean malignant.
        mean, std: the run's normalisation (model.json).
        device: "auto", "cpu", "cuda", "cuda:1", "mps", "gpu" (Lightning's name), or a torch.device.
        channels_last: NHWC memory format (faster convolutions on CPU; same numbers up to float rounding).
        precision: "float32" (default), or "bfloat16" (`constants.PRECISIONS`): the convolutions and matrix
            multiplies run under bfloat16 autocast (oneDNN uses AMX / AVX512-BF16 on CPUs that have them); the
            weights stay float32, and the normalisation and the softmax stay float32 (autocast keeps them there;
            logits are upcast).
    """

    def __init__(
        self,
        net: nn.Module,
        positive: Sequence[int],
        mean: float,
        std: float,
        device: Any = "auto",
        *,
        channels_last: bool = False,
        precision: str = "float32",
    ) -> None:
        import torch

        from mammokit.utils.device import resolve_device

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.precision = precision
        graph = probability_graph(net.float(), positive, mean, std).to(self.device)
        self.graph = graph.to(memory_format=torch.channels_last) if channels_last else graph

    @classmethod
    def from_run(
        cls,
        run_dir: Any,
        device: Any = "auto",
        *,
        channels_last: bool = False,
        precision: str = "float32",
        card: Any = None,
    ) -> TorchScorer:
        """The scorer of a run folder (model.json + model.safetensors); `card`: its ModelCard if already read."""
        from mammokit.run import load_model

        net, card = load_model(run_dir, "cpu", card)
        return cls(net, card.positive_indices, card.input.pixel_mean, card.input.pixel_std, device,
                   channels_last=channels_last, precision=precision)  # fmt: skip

    @property
    def net(self) -> nn.Module:
        return self.graph.net

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        """A (B, C, H, W) NumPy array on this scorer's device (in its memory format)."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def prob_malignant(self, x: np.ndarray) -> np.ndarray:
        """float32 (N, 1, H, W) in uint16 units -> (N,) float32 p(malignant) (no TTA)."""
        import torch

        bf16 = self.precision == "bfloat16"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.graph(self.tensor(x)).float().cpu().numpy()

    def score(self, images_u16: Sequence[np.ndarray] | np.ndarray, tta: bool = False) -> np.ndarray:
        """Prepared uint16 images (B, H, W) -> (B,) float64 p(malignant), flip-averaged with `tta`."""
        return score(self.prob_malignant, images_to_input(images_u16), tta)


def predict_class_probs(net: nn.Module, batches: Any, device: Any = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float32 class probabilities and (N,) labels of an iterable of {"image", "label"} batches.

    The images are the training datasets' normalised tensors (B, 1, H, W); the network runs in float32
    without autocast, as in `TorchScorer`, so the probabilities (and the Youden threshold chosen on them at
    the end of training) are the ones evaluate and predict produce.
    """
    import torch

    from mammokit.utils.device import resolve_device

    dev = resolve_device(device)
    net = net.to(dev).float().eval()
    probs, labels = [], []
    with torch.inference_mode():
        for batch in batches:
            probs.append(class_probabilities(net(batch["image"].to(dev))).cpu())
            labels.append(batch["label"])
    net.to("cpu")
    if not probs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()
