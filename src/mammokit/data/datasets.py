"""PyTorch datasets over prepared folders: whole images (image-level labels) and patch sets.

Samples are dicts: {"image": float tensor (1, H, W), "label": int, "image_id": str}. Intensity
normalisation is `preprocess.to_model_input` with the mean/std the model will store, so training
and prediction normalise identically. `transform`, when given, acts on the (1, H, W) tensor before
normalisation (augmentation works on [0, 1] intensities).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mammokit.io.images import read_png16
from mammokit.preprocess import U16_MAX

Transform = Callable[[torch.Tensor], torch.Tensor]


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
    ) -> None:
        self.root = Path(root)
        self.table = table.reset_index(drop=True)
        self.files = self.table[file_column].astype(str).tolist()
        self.labels = self.table[label_column].astype(int).to_numpy()
        self.ids = self.table[id_column].astype(str).tolist()
        self.mean, self.std = float(mean), float(std)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        u16 = read_png16(self.root / self.files[i])
        x = torch.from_numpy(u16.astype(np.float32) / U16_MAX).unsqueeze(0)  # (1, H, W) in [0, 1]
        if self.transform is not None:
            x = self.transform(x)
        x = (x - self.mean) / self.std
        return {"image": x, "label": int(self.labels[i]), "image_id": self.ids[i]}


class WholeImageDataset(_PngDataset):
    """Prepared whole images of one split; `label` is the image-level malignancy (0/1)."""

    def __init__(
        self,
        prepared: str | Path,
        images: pd.DataFrame,
        *,
        mean: float,
        std: float,
        transform: Transform | None = None,
    ) -> None:
        known = images[images["label"] >= 0]
        super().__init__(prepared, known, "image_file", "label", "image_id", mean, std, transform)


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
    ) -> None:
        super().__init__(patch_root, patches, "patch_file", "class_index", "patch_id", mean, std, transform)
