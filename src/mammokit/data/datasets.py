"""PyTorch datasets over prepared folders: whole images (image-level labels) and patch sets.

Samples are dicts: {"image": float tensor (1, H, W), "label": int, "image_id": str, "index": int (row)}. The
image goes through the two steps of `preprocess.to_model_input` with augmentation between them:
`preprocess.unit_scale` (uint16 -> [0, 1]) -> `transform` (augmentation works on [0, 1] intensities) ->
`preprocess.normalise` with the mean/std the model will store. Without a transform that is exactly
`to_model_input`, so training and prediction normalise identically (tests/test_parity.py).

In-memory cache: a dataset whose decoded images fit `cache_mb` (and half of the memory available) decodes
every PNG once, when it is built, and keeps the uint16 arrays (2 bytes a pixel, not the 4 of float32):
every later epoch skips the file reads and PNG decoding. DataLoader workers are forked after that, so they
share the arrays (copy-on-write) instead of holding copies. `cache_mb=0` reads from disk every time.

`PreparedImages` yields the prepared uint16 images themselves: the input of the inference core
(`scoring.core`), which evaluation scores.

Reproducible training order: `EpochSampler` yields `(index, sample_seed)` pairs whose order and seeds
are a pure function of (seed, epoch, position), sharded over DDP ranks; a dataset indexed with such a
pair draws its augmentation from `sample_seed`. A run resumed mid-epoch therefore sees exactly the
batches and augmentations an uninterrupted run would, whatever the number of loader workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from mammokit.io.images import read_png16
from mammokit.preprocess import normalise, unit_scale

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_CACHE_MB = 2048  # decoded-image cache per dataset (MiB); each set of the demo needs 5-25 MiB


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cache_budget_bytes(cache_mb: float) -> int:
    """Bytes a dataset may keep decoded: `cache_mb` MiB, at most half of the memory available now."""
    budget = int(max(0.0, float(cache_mb)) * 2**20)
    available = available_memory_bytes()
    return min(budget, available // 2) if available is not None else budget


class _PngDataset(Dataset):
    def __init__(
        self,
        root: str | Path,
        table: pd.DataFrame,
        file_column: str,
        label_column: str,
        id_column: str,
        mean: float,
        std: float,
        transform: Transform | None = None,
        cache_mb: float = DEFAULT_CACHE_MB,
    ) -> None:
        self.root = Path(root)
        self.table = table.reset_index(drop=True)
        self.files = self.table[file_column].astype(str).tolist()
        self.labels = self.table[label_column].astype(int).to_numpy()
        self.ids = self.table[id_column].astype(str).tolist()
        self.mean, self.std = float(mean), float(std)
        self.transform = transform
        self.cached: list[np.ndarray] | None = self._fill_cache(cache_mb)

    def _fill_cache(self, cache_mb: float) -> list[np.ndarray] | None:
        """Decode every image now when all of them fit the budget (estimated from the first); else None."""
        if not self.files or cache_mb <= 0:
            return None
        first = read_png16(self.root / self.files[0])
        need = first.nbytes * len(self.files)  # prepared images and patches of one set share one size
        budget = cache_budget_bytes(cache_mb)
        if need > budget:
            log.info("not caching %d images in memory (%.0f MiB > budget %.0f MiB): read from disk each epoch",
                     len(self.files), need / 2**20, budget / 2**20)  # fmt: skip
            return None
        return [first] + [read_png16(self.root / f) for f in self.files[1:]]

    def __len__(self) -> int:
        return len(self.files)

    def image_u16(self, i: int) -> np.ndarray:
        """The prepared uint16 (H, W) image of row `i` (from the cache when it is filled; do not modify it)."""
        if self.cached is not None:
            return self.cached[i]
        return read_png16(self.root / self.files[i])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        # `key` is an index, or (index, sample_seed) from EpochSampler (seeded augmentation).
        i, seed = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), None)
        u16 = self.image_u16(i)
        x = torch.from_numpy(unit_scale(u16)).unsqueeze(0)  # (1, H, W) in [0, 1]; unit_scale makes a new array
        if self.transform is not None:
            if seed is None:
                x = self.transform(x)
            else:
                with seeded_rng(seed, self.transform):
                    x = self.transform(x)
        x = normalise(x, self.mean, self.std)
        return {"image": x, "label": int(self.labels[i]), "image_id": self.ids[i], "index": i}


class WholeImageDataset(_PngDataset):
    """Prepared whole images of one split; `label` is the image-level malignancy (0/1).

    With `bilateral`, a sample's image is (2, H, W): the image, then the same view of the other breast
    (`data.pairs`; the image itself where there is none, `context` "single"). Each of the two is augmented
    on its own, from the sample's seed. `partner_dropout` (training only, with a seeded sampler) replaces the
    partner by the image itself for that share of samples, so the model learns the single-image fallback
    that evaluation and prediction use for a view without a partner.
    """

    def __init__(
        self,
        prepared: str | Path,
        images: pd.DataFrame,
        *,
        mean: float,
        std: float,
        transform: Transform | None = None,
        cache_mb: float = DEFAULT_CACHE_MB,
        bilateral: bool = False,
        partner_dropout: float = 0.0,
    ) -> None:
        from mammokit.data.pairs import contexts, table_partners

        images = images.reset_index(drop=True)
        known_mask = (images["label"] >= 0).to_numpy()
        known = images[known_mask]
        super().__init__(prepared, known, "image_file", "label", "image_id", mean, std, transform, cache_mb)
        self.bilateral = bool(bilateral)
        self.partner_dropout = float(partner_dropout)
        # partners are looked for among all images of the split (an unlabelled film is still context)
        partners = table_partners(images)[known_mask]
        files = images["image_file"].astype(str).tolist()
        self.partner_files: list[str] = [files[p] if p >= 0 else f for p, f in zip(partners, self.files, strict=True)]
        self.contexts = contexts(partners)
        self._row_of_file = {f: i for i, f in enumerate(self.files)}

    def partner_u16(self, i: int) -> np.ndarray:
        """The prepared uint16 image of row `i`'s partner (its own image where it has none)."""
        j = self._row_of_file.get(self.partner_files[i])
        return self.image_u16(j) if j is not None else read_png16(self.root / self.partner_files[i])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if not self.bilateral:
            return super().__getitem__(key)
        i, seed = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), None)
        own = torch.from_numpy(unit_scale(self.image_u16(i))).unsqueeze(0)  # (1, H, W) in [0, 1]
        other = torch.from_numpy(unit_scale(self.partner_u16(i))).unsqueeze(0)
        with seeded_rng(seed, self.transform) if seed is not None else contextlib.nullcontext():
            if self.transform is not None:
                own, other = self.transform(own), self.transform(other)
            if seed is not None and self.partner_dropout > 0 and random.random() < self.partner_dropout:
                other = own
        x = normalise(torch.cat([own, other], dim=0), self.mean, self.std)  # (2, H, W)
        return {"image": x, "label": int(self.labels[i]), "image_id": self.ids[i], "index": i}


class PatchDataset(_PngDataset):
    """Patches of a patch set (`mammokit patches`); `label` is the patch class index."""

    def __init__(
        self,
        patch_root: str | Path,
        patches: pd.DataFrame,
        *,
        mean: float,
        std: float,
        transform: Transform | None = None,
        cache_mb: float = DEFAULT_CACHE_MB,
    ) -> None:
        super().__init__(patch_root, patches, "patch_file", "class_index", "patch_id", mean, std, transform, cache_mb)


class PreparedImages(Dataset):
    """The prepared uint16 images (H, W) of a table's `image_file` column, in row order (no labels needed).

    With `partner_files` (a bilateral model's input, one per file), item i is (2, H, W): the image, then its
    partner.
    """

    def __init__(self, prepared: str | Path, files: list[str], partner_files: list[str] | None = None) -> None:
        self.root = Path(prepared)
        self.files = [str(f) for f in files]
        self.partner_files = [str(f) for f in partner_files] if partner_files is not None else None
        if self.partner_files is not None and len(self.partner_files) != len(self.files):
            raise ValueError(f"{len(self.files)} files but {len(self.partner_files)} partner files")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        image = read_png16(self.root / self.files[i])
        if self.partner_files is None:
            return image
        return np.stack([image, read_png16(self.root / self.partner_files[i])])


def stack_images(images: list[np.ndarray]) -> np.ndarray:
    """DataLoader collate for `PreparedImages`: a list of (H, W) [or (2, H, W)] uint16 -> (B, ...) (no torch copy)."""
    return np.stack(images)


@contextlib.contextmanager
def seeded_rng(seed: int, transform: object | None = None) -> Iterator[None]:
    """Run a block with Python/NumPy/torch global RNGs seeded from `seed`, restoring them afterwards.

    Transforms with their own generators (albumentations' `Compose`) are re-seeded through their
    `set_random_seed(seed)` method. Restoring the global state keeps the caller's random stream (e.g.
    dropout in the main process when `workers=0`) independent of how many samples were loaded.
    """
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # the CPU generator only (what get/set_rng_state save and restore): `torch.manual_seed` also queues a
    # seeding of every lazily initialised accelerator generator, with a formatted stack trace per call -
    # a third of a patch sample's loading time, for generators that augmentation never draws from
    torch.random.default_generator.manual_seed(seed)
    set_seed = getattr(transform, "set_random_seed", None)
    if callable(set_seed):
        set_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


class EpochSampler(Sampler[tuple[int, int]]):
    """Deterministic, DDP-aware sampler yielding `(dataset index, sample seed)` pairs.

    The order of epoch `e` depends only on (`seed`, `e`): shuffled, class-balanced (drawn with
    replacement with probability proportional to 1 / class frequency, as many draws as samples), or in
    order. The list is padded by wrapping to a multiple of `world_size` and rank `r` takes positions
    r, r + world_size, ... (the same contract as torch's DistributedSampler). `skip_next(n)` drops the first
    `n` samples of the next iteration only: this is how a run resumed mid-epoch continues where it stopped.

    Args:
        labels: (N,) class index of every sample (used by `balanced`).
        shuffle: random order each epoch.
        balanced: class-balanced draws (implies shuffling).
        seed: base seed.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(
        self,
        labels: np.ndarray | list[int],
        *,
        shuffle: bool,
        balanced: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) == 0:
            raise ValueError("EpochSampler: the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: rank {rank} is outside world size {world_size}")
        self.shuffle, self.balanced = shuffle, balanced
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (Lightning calls this every epoch)."""
        self.epoch = int(epoch)

    def skip_next(self, n: int) -> None:
        """Skip the first `n` samples of this rank in the next iteration (mid-epoch resume)."""
        self._skip = max(0, int(n))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.world_size)

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, seeds) of this rank for `epoch`, both (len(self),) int64."""
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.balanced:
            counts = np.bincount(self.labels)
            weights = torch.as_tensor(1.0 / counts[self.labels], dtype=torch.float64)
            order = torch.multinomial(weights, n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=g)
        total = len(self) * self.world_size
        if total > n:  # wrap so that every rank gets the same number of samples
            pad = torch.arange(total - n) % n
            order, seeds = torch.cat([order, order[pad]]), torch.cat([seeds, seeds[pad]])
        return order[self.rank :: self.world_size], seeds[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self.epoch_order(self.epoch)
        skip, self._skip = self._skip, 0
        yield from zip(order[skip:].tolist(), seeds[skip:].tolist(), strict=True)
