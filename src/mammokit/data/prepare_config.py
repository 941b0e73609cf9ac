"""`PrepareConfig`: everything `prepare_dataset` needs besides the dataset name and folders.

Kept apart from `mammokit.data.prepare` (which imports pandas and the adapters) so that reading or
writing a prepare config stays light. YAML keys = these field names (`mammokit prepare -c FILE`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mammokit.preprocess import PreprocessSpec


@dataclass
class SplitConfig:
    """Patient-level split of the prepared dataset (`mammokit.data.splits.assign_splits`)."""

    seed: int = 0  # same seed + same source table = same split on any machine
    val_fraction: float = 0.1  # fraction of training patients held out for validation
    test_fraction: float = 0.15  # fraction of patients put in test when the dataset has no official test split
    keep_official: bool = True  # keep a dataset's official test split (CBIS-DDSM); False = re-split all patients
    split_file: str | None = None  # CSV patient_id,split to apply exactly (reproduce a published split)


@dataclass
class PrepareConfig:
    """Everything `mammokit prepare` / `prepare_dataset` needs besides the dataset name and folders."""

    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    split: SplitConfig = field(default_factory=SplitConfig)
    source_options: dict[str, Any] = field(default_factory=dict)  # keyword options of the dataset adapter
    workers: int = 0  # worker processes (always child processes, see `_run_tasks`); 0 = all CPUs this process may use
    assume_pixel_spacing: float | None = None  # source mm per pixel for files without a spacing tag
