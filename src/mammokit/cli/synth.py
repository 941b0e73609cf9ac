"""`mammokit synth --layout LAYOUT --out DIR`: write a synthetic mammogram dataset in a real dataset's layout.

The phantom (see docs/synth.md) is deterministic from `--seed`: the same seed and options give
byte-identical files. Layouts: `cbis-ddsm` (TCIA DICOM tree + the four case-description CSVs; only views
with lesions, as in the real data), `inbreast` (AllDICOMs/, AllXML/, INbreast.csv; normal images included),
`mini-mias` (mdbNNN.pgm + Info.txt; MLO views only, squared). Besides the dataset files, the folder gets
`synth.json` (resolved settings and counts), written last, so its presence means the dataset is complete.
`--workers N` renders and writes the women in N processes; the files do not depend on it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from mammokit.cli.common import UserError, add_command, add_config_args, add_out, add_seed, add_workers, load_cli_config
from mammokit.synth.config import LAYOUTS, SynthConfig  # light: the renderer is imported by `run` only

SUMMARY_FILE = "synth.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    d = SynthConfig()
    p = add_command(
        subparsers,
        "synth",
        help="write a synthetic mammogram dataset in the CBIS-DDSM, INbreast or mini-MIAS file layout",
        description=__doc__,
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=None,
        help=f"file layout to write (default {d.layout})",
    )
    add_out(p, help="output folder; must be new or empty unless --overwrite")
    p.add_argument("--women", type=int, default=None, metavar="N", help=f"number of women (default {d.women})")
    add_seed(p)
    # the shared flag says only "random seed"; say what it means here (argparse has no public setter)
    p._option_string_actions["--seed"].help = f"cohort seed (default {d.seed}); the same seed gives identical files"
    p.add_argument(
        "--height", type=int, default=None, metavar="H", help=f"full-image rows (default {d.height}; paper: 1152)"
    )
    p.add_argument(
        "--width", type=int, default=None, metavar="W", help=f"full-image columns (default {d.width}; paper: 896)"
    )
    p.add_argument(
        "--malignant-fraction",
        type=float,
        default=None,
        metavar="P",
        help=f"probability that a breast with lesions has a malignant one (default {d.malignant_fraction})",
    )
    p.add_argument(
        "--normal-fraction",
        type=float,
        default=None,
        metavar="P",
        help=f"probability that a breast has no lesion (default {d.normal_fraction}; cbis-ddsm omits such views "
        "and gives every woman at least one breast with lesions)",
    )
    p.add_argument(
        "--mass-fraction",
        type=float,
        default=None,
        metavar="P",
        help=f"probability that a lesion is a mass rather than a calcification cluster (default {d.mass_fraction})",
    )
    p.add_argument(
        "--second-lesion-fraction",
        type=float,
        default=None,
        metavar="P",
        help=f"probability that a breast with lesions has a second, benign one (default {d.second_lesion_fraction})",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        metavar="P",
        help=f"cbis-ddsm only: share of women in the official Test split (default {d.test_fraction})",
    )
    p.add_argument(
        "--cross-fraction",
        type=float,
        default=None,
        metavar="P",
        help="cbis-ddsm only: share of women with both masses and calcifications whose calcification rows go to "
        f"the other official split, as for 31 real patients (default {d.cross_fraction})",
    )
    p.add_argument(
        "--mask-quirk-fraction",
        type=float,
        default=None,
        metavar="P",
        help="cbis-ddsm only: share of ROI rows whose mask (mass files) or crop (calc files) is 000000.dcm in a "
        f"series of its own, as in the real files (default {d.mask_quirk_fraction})",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty folder (files are replaced, others kept)"
    )
    # default 1 as for `patches` (also a deterministic writer of our own files); not a SynthConfig key because
    # it does not change the files, which are byte-identical for any value
    add_workers(p, default=1)
    add_config_args(p)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> SynthConfig:
    """Defaults < YAML files (-c) < --set overrides < explicit flags."""

    names = [f for f in asdict(SynthConfig())]
    flags = {name: getattr(args, name, None) for name in names}
    return load_cli_config(SynthConfig, args, flags)


def run(args: argparse.Namespace) -> int:
    from mammokit.synth import generate
    from mammokit.utils.atomic import atomic_write_json

    cfg = resolve_config(args)
    if cfg.layout not in LAYOUTS:
        raise UserError(f"layout {cfg.layout!r} is not one of {', '.join(LAYOUTS)}")
    out: Path = args.out
    try:
        summary = generate(out, cfg, overwrite=args.overwrite, workers=args.workers)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    atomic_write_json(out / SUMMARY_FILE, {"config": asdict(cfg), "summary": summary})
    counts = {k: summary[k] for k in ("women", "images", "lesions", "malignant_images", "normal_images")}
    print(f"wrote {cfg.layout} layout to {out}: {json.dumps(counts)} in {summary['seconds']} s")
    return 0
