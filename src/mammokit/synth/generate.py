"""`generate`: the one entry point that renders a cohort and writes it in a real dataset's file layout."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mammokit.synth.config import LAYOUTS, SynthConfig
from mammokit.synth.sampling import sample_woman

log = logging.getLogger(__name__)

# Present while a run writes; a folder holding it may be written over without `overwrite` (an interrupted run).
PARTIAL_MARKER = ".mammokit-synth-partial"


def _writer(layout: str) -> Callable[..., dict[str, Any]]:
    if layout == "cbis-ddsm":
        from mammokit.synth.cbis import write_cbis_ddsm

        return write_cbis_ddsm
    if layout == "inbreast":
        from mammokit.synth.inbreast import write_inbreast

        return write_inbreast
    if layout == "mini-mias":
        from mammokit.synth.mias import write_mini_mias

        return write_mini_mias
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def generate(
    out: str | Path, cfg: SynthConfig | None = None, *, overwrite: bool = False, workers: int = 1
) -> dict[str, Any]:
    """Render `cfg.women` synthetic women and write them under `out` in the file layout of a public dataset.

    Args:
        out: output folder; must be empty or absent unless `overwrite` is set.
        cfg: the cohort and layout (`SynthConfig`; default `SynthConfig()`). `layout` is "cbis-ddsm" (DICOM
            tree + case-description CSVs), "inbreast" (DICOMs + XML ROIs + INbreast.csv) or "mini-mias" (PGM
            files + Info.txt); the same `seed` gives byte-identical pixel data (and files). The CBIS-DDSM
            options (`test_fraction`, `cross_fraction`, `mask_quirk_fraction`) are ignored by the other layouts.
        overwrite: allow writing into a non-empty folder (files are replaced one by one; stale files stay).
            A folder left by an interrupted run (it still holds `PARTIAL_MARKER`) is written over anyway.
        workers: processes that render and write women in parallel (<= 1: this process only). Not part of
            `cfg` because it does not change the output: every woman's random streams are seeded from
            (seed, her index), and the index files are written by this process in cohort order, so any
            value gives byte-identical files.

    Returns:
        Summary: layout, out, seed, size, counts (`women`, `images`, `lesions` = lesion annotations, one per
        lesion per image, `malignant_lesions`, `malignant_images`, `normal_images`) and the index file paths.

    Raises:
        ValueError: unknown layout, bad size, count or fraction, or a non-empty `out` without `overwrite`.
    """
    cfg = SynthConfig() if cfg is None else cfg
    layout, women, height, width = cfg.layout, cfg.women, cfg.height, cfg.width
    writer = _writer(layout)
    if women < 1:
        raise ValueError(f"--women must be at least 1, got {women}")
    if height < 64 or width < 64:
        raise ValueError(f"image size must be at least 64 x 64 pixels, got {height} x {width}")
    if layout == "mini-mias":
        from mammokit.synth.mias import MAX_WOMEN

        if women > MAX_WOMEN:
            raise ValueError(f"the mini-MIAS layout holds at most {MAX_WOMEN} women (mdb001..mdb998), got {women}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    marker = out / PARTIAL_MARKER
    if out.is_dir() and any(out.iterdir()) and not overwrite and not marker.exists():
        raise ValueError(f"output folder {out} is not empty; choose an empty or new folder, or pass overwrite")
    sampling = cfg.sampling_options()
    layout_options = _layout_options(layout, cfg.layout_options())
    sample_woman(0, cfg.seed, **sampling)  # validates the sampling options before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if marker.exists():
        log.info("%s holds an interrupted synth run; writing over it", out)
    marker.touch()
    start = time.perf_counter()
    summary = writer(
        out, women=women, seed=cfg.seed, height=height, width=width, options=layout_options, workers=workers, **sampling
    )
    summary["seconds"] = round(time.perf_counter() - start, 2)
    marker.unlink()
    return summary


def _layout_options(layout: str, options: dict[str, Any]) -> Any:
    """The layout writer's options object (CBIS-DDSM: `CbisOptions`; the other layouts take none)."""
    if layout != "cbis-ddsm":
        return None
    from mammokit.synth.cbis import CbisOptions

    for name, value in options.items():
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return CbisOptions(**options)
