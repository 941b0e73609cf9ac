"""Flags shared by several subcommands, so the same thing has the same flag everywhere.

| flag | meaning |
|---|---|
| `-c/--config FILE` (repeatable) | YAML config files, later ones override earlier ones |
| `--set KEY=VALUE` (repeatable) | override one config key (dotted path) |
| `--out DIR` | where the command writes (run folder, prepared dataset, predictions) |
| `--data DIR` | a prepared dataset folder (output of `mammokit prepare`) |
| `--seed N` | random seed |
| `--workers N` | worker processes for data loading / preparation |
| `--device auto|cpu|cuda[:i]` | compute device |
| `--batch-size N` | images per step |
| `--gradcam-layer NAME`, `--gradcam-method M`, `--patch-stride PX` | how heatmaps are made (predict, evaluate) |
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mammokit.config import ConfigError
from mammokit.infer.config import CAM_METHODS

T = TypeVar("T")


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback, exit status 2."""


def add_command(subparsers: argparse._SubParsersAction, name: str, *, help: str, description: str) -> Any:
    """One subcommand's parser, made alike for every command.

    A description written with line breaks (a module docstring with a usage block) keeps them; a description
    given as one long sentence is wrapped to the terminal.
    """
    formatter = argparse.RawDescriptionHelpFormatter if "\n" in description else argparse.HelpFormatter
    return subparsers.add_parser(name, help=help, description=description, formatter_class=formatter)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", action="append", default=[], metavar="FILE", help="YAML config (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")


def add_out(p: argparse.ArgumentParser, *, required: bool = True, help: str = "output folder") -> None:
    p.add_argument("--out", type=Path, required=required, metavar="DIR", help=help)


def add_data(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument(
        "--data", type=Path, required=required, metavar="PREPARED", help="prepared dataset folder (mammokit prepare)"
    )


def add_seed(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument(
        "--seed",
        type=int,
        default=default,
        help="random seed" + (f" (default {default})" if default is not None else ""),
    )


def spacing_mm(text: str) -> float:
    """argparse type: a pixel spacing in mm, within the range plausible for a mammogram."""
    from mammokit.preprocess import SPACING_RANGE_MM

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of millimetres per pixel") from None
    lo, hi = SPACING_RANGE_MM
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{value:g} mm per pixel is implausible for a mammogram (expected {lo}-{hi})")
    return value


def add_assume_pixel_spacing(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--assume-pixel-spacing",
        type=spacing_mm,
        default=None,
        metavar="MM",
        help="source mm per pixel for files whose spacing is not in their tags (PNG, PGM, tag-less DICOM); "
        "takes precedence over a dataset's documented value, never over a file's own PixelSpacing",
    )


def add_workers(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=default,
        metavar="N",
        help="parallel workers (processes for prepare/patches/synth/data loading, reader threads for predict)",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, mps")


def device_flag(args: argparse.Namespace) -> str | None:
    """`--device` as a config value: "auto" is None (the config's own rule: cuda if available, else cpu)."""
    return None if args.device == "auto" else args.device


def add_compute_flags(p: argparse.ArgumentParser) -> None:
    """`--device`, `--batch-size`, `--workers`: how a command that runs the network computes."""
    add_device(p)
    add_batch_size(p)
    add_workers(p)


def add_cache_dir(p: argparse.ArgumentParser) -> None:
    """`--cache-dir` of predict and serve: where the ONNX export and backend choice of `--backend auto` go."""
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the ONNX export and backend choice are cached, one entry per model (hash of weights + "
        "model.json); nothing is written into the run folder (default: $MAMMOKIT_CACHE_DIR, else "
        "$XDG_CACHE_HOME/mammokit, else ~/.cache/mammokit)",
    )


def add_batch_size(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--batch-size", type=int, default=default, metavar="N", help="images per step")


def require_data_and_runs(data: Path, runs: Sequence[Path]) -> None:
    """--data must be a folder (a prepared dataset) and every RUN a folder; else a UserError saying what to give."""
    if not data.is_dir():
        raise UserError(f"--data {data}: not a folder (give a prepared dataset from `mammokit prepare`)")
    for run_dir in runs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: not a folder (give a run folder written by `mammokit train whole`)")


def add_heatmap_options(p: argparse.ArgumentParser) -> None:
    """The heatmap flags of `predict` and `evaluate` (docs/prediction.md, "Heatmaps")."""
    p.add_argument(
        "--gradcam-layer",
        default=None,
        metavar="NAME",
        help="module of the whole-image model that Grad-CAM explains: auto (default: the deepest stride-16 trunk "
        "stage, e.g. trunk.body.layer3 for ResNet), top, trunk, or any dotted module name",
    )
    p.add_argument(
        "--gradcam-method",
        choices=CAM_METHODS,
        default=None,
        help="class activation map method of pytorch-grad-cam (default hirescam, which localises best)",
    )
    p.add_argument(
        "--patch-stride",
        type=int,
        default=None,
        metavar="PX",
        help="stride of the patch-classifier heatmaps in prepared pixels; must divide the patch trunk's stride "
        "(default 16; 32 = one pass, 16 = four shifted passes)",
    )


def load_cli_config(cls: type[T], args: argparse.Namespace, flags: Mapping[str, Any]) -> T:
    """A command's config object: defaults < `-c` YAML files < `--set KEY=VALUE` < explicit flags.

    A bad file, key or value becomes a `UserError` that says so (exit 2, no traceback).
    """
    from mammokit.config import load_config

    try:
        return load_config(cls, args.config, args.set, flags)
    except ConfigError as exc:
        raise UserError(f"configuration: {exc}") from None
