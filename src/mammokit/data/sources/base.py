"""The adapter interface and registry.

An adapter knows one dataset's raw layout. `build_manifest(root)` returns `(images, lesions)` in
source-pixel coordinates following `mammokit.data.manifest`; `lesion_mask(lesion, shape)` rasterises
one lesion's ROI (mask file, polygon, circle or box) onto the source pixel grid. `mammokit prepare`
does the rest (reading pixels, cropping, orienting, resizing) the same way for every dataset.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

_SOURCES: dict[str, type[DatasetSource]] = {}

# module name per registered dataset name; imported lazily by get_source
_BUILTIN_MODULES: dict[str, str] = {
    "cbis-ddsm": "cbis_ddsm",
    "inbreast": "inbreast",
    "mini-mias": "mini_mias",
    "vindr-mammo": "vindr_mammo",
    "cmmd": "cmmd",
    "rsna": "rsna",
    "csv": "generic_csv",
}


class DatasetSource:
    """Base class of dataset adapters."""

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    licence: ClassVar[str] = ""
    # documented source pixel spacing (mm) for datasets whose files carry none (mini-MIAS PGMs, CBIS-DDSM DICOMs);
    # used by physical-scale preprocessing after the file's own tags and the user's --assume-pixel-spacing
    pixel_spacing_mm: ClassVar[float | None] = None
    # keyword options the adapter understands; None = accept any (e.g. small adapters written in tests)
    options_allowed: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, **options: Any) -> None:
        if self.options_allowed is not None:
            check_options(self.name, options, self.options_allowed)
        self.options = options
        self.skipped: list[dict[str, str]] = []  # items build_manifest left out, with the reason (-> errors.csv)

    def skip(self, reason: str, *, path: str = "", image_id: str = "") -> None:
        """Record one item of the raw dataset that `build_manifest` leaves out; `prepare` lists it in errors.csv.

        Batch rule: every input item that is not used appears in errors.csv with a reason.
        """
        if not hasattr(self, "skipped"):  # adapters that do not call DatasetSource.__init__
            self.skipped = []
        self.skipped.append({"image_id": str(image_id), "path": str(path), "reason": reason})

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Scan `root` and return (image table, lesion table) in source coordinates."""
        raise NotImplementedError

    def read_image(self, row: pd.Series, root: Path, **reader_options: Any) -> tuple[np.ndarray, Any]:
        """Read one image's pixels and MammoMeta; adapters override to fill laterality/view fallbacks."""
        from mammokit.io.dicom import read_mammogram

        path = Path(row["path"])
        if not path.is_absolute():
            path = root / path
        return read_mammogram(path, **reader_options)

    def lesion_mask(self, lesion: pd.Series, shape: tuple[int, int], root: Path) -> np.ndarray:
        """Boolean mask (rows, cols) of one lesion on the source pixel grid."""
        from mammokit.data.rois import rasterize_roi

        return rasterize_roi(lesion, shape, root)


def check_options(dataset: str, options: dict[str, Any], allowed: Iterable[str]) -> None:
    """TypeError naming the closest valid option if `options` has a key the adapter does not know.

    TypeError (not ValueError) because it is a wrong keyword, like calling a function with one; `mammokit prepare`
    turns it into a usage error.
    """
    import difflib

    allowed = list(allowed)
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{dataset} adapter has no option {key!r}{hint} (options: {allowed or 'none'})")


def register_source(cls: type[DatasetSource]) -> type[DatasetSource]:
    """Class decorator: register an adapter under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a `name`")
    _SOURCES[cls.name] = cls
    return cls


def list_sources() -> list[str]:
    return sorted(_BUILTIN_MODULES)


def get_source(name: str, **options: Any) -> DatasetSource:
    """Instantiate the adapter registered as `name`."""
    if name not in _SOURCES:
        module = _BUILTIN_MODULES.get(name)
        if module is None:
            raise KeyError(f"unknown dataset {name!r}; known: {list_sources()}")
        importlib.import_module(f"mammokit.data.sources.{module}")
    return _SOURCES[name](**options)
