"""`mammokit` command line: one entry point, one subcommand per pipeline step.

Each subcommand lives in its own module `mammokit.cli.<name>` exposing
`register(subparsers) -> None`, which adds its parser and sets `func=run`. Modules import heavy
libraries (torch, Lightning) inside `run`, so `mammokit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from mammokit.utils.quiet_logs import quiet_pydicom
from mammokit.version import __version__

# Order = pipeline order, as shown by `mammokit --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "synth",
    "prepare",
    "patches",
    "train",
    "finetune",
    "calibrate",
    "evaluate",
    "predict",
    "export",
    "import_keras",
    "serve",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammokit",
        description="Breast-cancer detection on screening mammograms (Shen et al. 2019, rebuilt and extended).",
    )
    parser.add_argument("--version", action="version", version=f"mammokit {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every log line on the console (module INFO/DEBUG lines, library messages and warnings); "
        "without it they go to OUT/mammokit.log",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mammokit.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mammokit.cli.{name}":
                continue  # command not installed in this build
            raise
        module.register(sub)
    return parser


def log_folder(args: argparse.Namespace) -> Path | None:
    """Where the command's log file goes: its --out folder (export's --out is the .onnx file: none)."""
    out = getattr(args, "out", None)
    if args.command == "demo":
        from mammokit.cli.demo import DEFAULT_OUT

        return out or DEFAULT_OUT
    return out if isinstance(out, Path) and args.command != "export" else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from mammokit.extras import missing_extra_message

    missing = missing_extra_message(args.command)
    if missing:  # before any work: one line, exit 2 (not a ModuleNotFoundError three steps in)
        print(missing, file=sys.stderr)
        return 2
    from mammokit.utils.console import command_logging

    # the console shows step lines, progress and results; module INFO lines and library chatter go to
    # FOLDER/mammokit.log (-v: everything on the console too); see mammokit.utils.console
    folder = log_folder(args)
    # evaluate without --out decides its folder (eval/<run>-<dataset>-<split>) once its settings are read
    later = folder is None and args.command == "evaluate"
    with command_logging(verbose=args.verbose, folder=folder, folder_later=later):
        # pydicom logs (and warns) about every damaged header it meets, with tracebacks; the reader turns each
        # failure into one clear error row, so pydicom's own output is only shown with -v.
        # A filter, not a level: importing pydicom later resets its level to WARNING (issue 25, header values in logs).
        quiet_pydicom(verbose=args.verbose)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from mammokit.cli.common import UserError
    from mammokit.config import ConfigError

    try:
        result = args.func(args)
    except UserError as exc:
        print(f"mammokit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:  # any command: a bad config file or --set value is a one-line usage error
        print(f"mammokit {args.command}: error: configuration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
