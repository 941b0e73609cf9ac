"""A command that needs an optional extra says which one before it starts (mammokit.extras).

`pip install "mammokit[serve]"` then `mammokit demo` used to run three steps and die with a ModuleNotFoundError
traceback. The missing module is simulated with `sys.modules[name] = None` (how Python marks a module that must
not be imported: `import` raises and `importlib.util.find_spec` returns None).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from mammokit.cli import COMMAND_MODULES, main
from mammokit.extras import COMMAND_EXTRA, EXTRA_MODULES, missing_extra_message

REPO = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_table_matches_pyprojects_extras() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRA_MODULES) == set(extras) - {"dev"}  # every extra a user installs, and no other
    distributions = packages_distributions()
    for extra, modules in EXTRA_MODULES.items():
        required = {_canonical(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in extras[extra]}
        for module in modules:  # each module checked is installed by a requirement of that extra
            provided_by = {_canonical(d) for d in distributions.get(module, [])}
            assert provided_by & required, f"{module} (from {provided_by}) is not in the {extra!r} extra {required}"
    commands = {name.replace("_", "-") for name in COMMAND_MODULES}
    assert set(COMMAND_EXTRA) <= commands and set(COMMAND_EXTRA.values()) <= set(EXTRA_MODULES)
    assert {COMMAND_EXTRA[c] for c in ("train", "finetune", "demo", "export", "serve", "import-keras")} == set(
        EXTRA_MODULES
    )


def _argv(command: str, tmp: Path) -> list[str]:
    out = str(tmp / "out")
    return {
        "demo": ["demo", "--out", out],
        "train": ["train", "whole", "--data", str(tmp), "--no-patch-init", "--out", out],
        "finetune": ["finetune", "--from", str(tmp), "--data", str(tmp), "--out", out],
        "export": ["export", str(tmp)],
        "serve": ["serve", str(tmp)],
        "import-keras": ["import-keras", str(tmp / "model.h5"), "--out", out],
    }[command]


@pytest.mark.parametrize("command", sorted(COMMAND_EXTRA))
def test_a_missing_extra_is_one_line_and_exit_2_before_any_work(command, tmp_path, monkeypatch, capsys) -> None:
    extra = COMMAND_EXTRA[command]
    module = EXTRA_MODULES[extra][0]
    assert missing_extra_message(command) is None  # the dev install has every extra
    monkeypatch.setitem(sys.modules, module, None)
    assert main(_argv(command, tmp_path)) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f'mammokit {command} needs the "{extra}" extra ({module} not installed): pip install "mammokit[{extra}]"'
    ]
    assert captured.out == "" and not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_core_commands_need_no_extra(monkeypatch) -> None:
    for modules in EXTRA_MODULES.values():
        for module in modules:
            monkeypatch.setitem(sys.modules, module, None)
    for command in ("synth", "prepare", "patches", "calibrate", "evaluate", "predict"):
        assert missing_extra_message(command) is None


def test_demo_without_lightning_says_so_in_a_fresh_process(tmp_path) -> None:
    """The issue's case end to end: a real interpreter where `import lightning` fails, no traceback."""
    code = (
        "import sys; sys.modules['lightning'] = None; from mammokit.cli import main; "
        f"sys.exit(main(['demo', '--preset', 'small', '--out', {str(tmp_path / 'demo')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        'mammokit demo needs the "train" extra (lightning not installed): pip install "mammokit[train]"\n'
    )
    assert proc.stdout == "" and not (tmp_path / "demo").exists()
