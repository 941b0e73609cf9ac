"""The command line: one entry point, every pipeline step a subcommand, consistent shared flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mammokit.cli import COMMAND_MODULES, build_parser, main
from mammokit.version import __version__


def test_help_lists_every_subcommand():
    proc = subprocess.run([sys.executable, "-m", "mammokit", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for name in COMMAND_MODULES:
        assert name.replace("_", "-") in proc.stdout  # module import_keras = command import-keras


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def _options(command: list[str]) -> dict[str, str]:
    """option string -> help text of a (sub)subcommand's parser."""
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    sub = action.choices[command[0]]
    if len(command) > 1:
        sub = next(a for a in sub._actions if getattr(a, "choices", None) and command[1] in a.choices).choices[
            command[1]
        ]
    return {opt: (a.help or "") for a in sub._actions for opt in a.option_strings}


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (["prepare"], ["--out", "--seed", "--workers", "-c", "--set"]),
        (["patches"], ["--data", "--out", "--seed", "--workers", "-c", "--set"]),
        (["train", "patch"], ["--data", "--out", "--seed", "--device", "--batch-size", "--workers", "-c", "--set"]),
        (["train", "whole"], ["--data", "--out", "--seed", "--device", "--batch-size", "--workers", "-c", "--set"]),
        (["finetune"], ["--data", "--out", "--seed", "--device", "--batch-size", "--workers", "-c", "--set"]),
        (["evaluate"], ["--data", "--out", "--seed", "--device", "--batch-size", "--workers", "-c", "--set"]),
        (["predict"], ["--out", "--device", "--batch-size", "--workers", "-c", "--set"]),
        (["synth"], ["--out", "--seed", "--workers", "-c", "--set"]),
        (["demo"], ["--out", "--seed", "--workers", "--device"]),
    ],
)
def test_shared_flags_exist_and_are_documented(command, flags):
    options = _options(command)
    for flag in flags:
        assert flag in options, f"mammokit {' '.join(command)} lacks {flag}"
        assert options[flag].strip(), f"mammokit {' '.join(command)} {flag} has no help text"
