"""What a batch step (`prepare`, `patches`) left out, in one line, and whether anything usable is left.

Scripts that chain the steps (`scripts/mini_mias_recipe.sh`, `benchmarks/bench_mias_cv.py`) go on past a step
that left some images out (exit 1: they are rows of its errors.csv) and stop only when nothing usable is left:

    python -m mammokit.data.left_out FOLDER WHAT    # prints the line; exit 1 when FOLDER holds no usable row
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from mammokit.data.manifest import ERRORS_FILE, IMAGES_FILE
from mammokit.data.patches import PATCHES_FILE


def left_out_line(folder: Path, what: str) -> str | None:
    """'WHAT: N image(s) left out (n1 Reason1, n2 Reason2); details in FOLDER/errors.csv', or None if none were."""
    errors_csv = folder / ERRORS_FILE
    if not errors_csv.is_file() or not errors_csv.stat().st_size:
        return None
    errors = pd.read_csv(errors_csv, dtype=str).fillna("")
    images = errors[errors["lesion_id"] == ""] if "lesion_id" in errors.columns else errors  # lesion rows aside
    if images.empty:
        return None
    reasons = images["reason"].str.split(":").str[0].value_counts()  # the exception type before the message
    listed = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
    return f"{what}: {len(images)} image(s) left out ({listed}); details in {errors_csv}"


def usable(folder: Path) -> bool:
    """True when FOLDER's table (a prepared manifest or a patch table) holds at least one row."""
    table = next((folder / name for name in (IMAGES_FILE, PATCHES_FILE) if (folder / name).is_file()), None)
    return table is not None and not pd.read_parquet(table).empty


def main(argv: list[str] | None = None) -> int:
    folder, what = (argv if argv is not None else sys.argv[1:])[:2]
    line = left_out_line(Path(folder), what)
    if line:
        print(line, flush=True)
    if not usable(Path(folder)):
        print(f"{what}: nothing usable is left in {folder}; see {Path(folder) / ERRORS_FILE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
