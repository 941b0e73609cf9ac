"""The per-run prediction cache: the ONNX export made once, and the backend chosen per machine.

    CACHE_ROOT/runs/<key>/model.onnx     the run's probability graph (`infer.onnx.export_onnx`), exported once
    CACHE_ROOT/runs/<key>/backend.json   what the cache was built from, the export's parity check, and one
                                         backend selection per machine (with the timings measured on its CPU)

Nothing is written into the run folder (issue 25: a read-only run folder is a normal way to deploy a model, and
`serve` must write nothing there). CACHE_ROOT is `--cache-dir` of `predict`/`serve` (`set_cache_root`), else
`$MAMMOKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/mammokit`, else `~/.cache/mammokit`. <key> is a digest of the
sha256 of the weights (`model.safetensors`) and of the model card (`model.json`), so two models never share an
entry and a copied or moved run folder finds its cache again. Where CACHE_ROOT cannot be written, a temporary
folder that lives as long as this process is used (nothing is kept; logged).

What makes it stale, and what then happens:

* the weights (`model.safetensors`) or the model card (`model.json`: normalisation, positive labels) changed
  (sha256 of each): they make a new key, so the run starts from an empty cache entry (the entry also records
  both hashes and is dropped if they ever disagree);
* the versions the export was made with (mammokit, torch, onnx) changed: the export is redone; where torch is
  not installed the export cannot be redone and is used as it is (its weights still match);
* a selection is reused only on the same machine (`machine_key`: CPU model, physical cores, bf16/AMX
  support, device) with the same runtime versions (mammokit, torch, onnxruntime, openvino).

Every write is atomic (`utils.atomic`), so a killed process or two processes selecting at once never leave a
half-written file.

This module imports neither torch nor onnxruntime (versions come from package metadata), so the
torch-free ONNX path can read the cache.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from mammokit.run import MODEL_JSON, WEIGHTS
from mammokit.utils.atomic import atomic_write_json
from mammokit.utils.hashing import file_sha256

log = logging.getLogger(__name__)

CACHE_JSON = "backend.json"
CACHE_ONNX = "model.onnx"
CACHE_FORMAT = 1
CACHE_ENV = "MAMMOKIT_CACHE_DIR"
EXPORT_PACKAGES = ("mammokit", "torch", "onnx")  # what the exported graph depends on
GRAPH_MODULES = ("mammokit.scoring.core", "mammokit.infer.onnx")  # the code of the exported graph
RUNTIME_PACKAGES = ("mammokit", "torch", "onnxruntime", "openvino")  # what a selection's timings depend on


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each distribution (None where absent), from metadata: nothing is imported."""
    from mammokit.version import __version__

    out: dict[str, str | None] = {}
    for name in names:
        if name == "mammokit":  # the running code's version (a source checkout may not be installed)
            out[name] = __version__
            continue
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def export_versions() -> dict[str, str | None]:
    """What an export depends on: the exporter's package versions and the code of the exported graph itself
    (`scoring.core`, `infer.onnx`; a development checkout changes them without changing the version number)."""
    # located, not imported: reading the files must not import torch or onnx
    files = [Path(str(importlib.util.find_spec(module).origin)) for module in GRAPH_MODULES]
    code = hashlib.sha256(b"".join(path.read_bytes() for path in files)).hexdigest()
    return {**package_versions(EXPORT_PACKAGES), "graph_code_sha256": code[:16]}


def _writable_dir(path: Path) -> bool:
    """True when `path` exists (or can be made) and a file can be created in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe."):
            pass
        return True
    except OSError:
        return False


_CACHE_ROOT: Path | None = None  # set by `--cache-dir` (set_cache_root); None = user_cache_root()


def set_cache_root(path: str | Path | None) -> None:
    """Cache in `path` from now on in this process (`--cache-dir` of predict/serve); None = the default."""
    global _CACHE_ROOT
    _CACHE_ROOT = Path(path).expanduser() if path else None


def cache_root() -> Path:
    """Where run caches go: `set_cache_root`'s folder, else `user_cache_root()`."""
    return _CACHE_ROOT if _CACHE_ROOT is not None else user_cache_root()


def cache_key(fingerprint: dict[str, str]) -> str:
    """The folder name of one model's cache: the weights and the model card, hashed together."""
    return hashlib.sha256((fingerprint["weights_sha256"] + fingerprint["card_sha256"]).encode()).hexdigest()[:24]


def user_cache_root() -> Path:
    """$MAMMOKIT_CACHE_DIR, else $XDG_CACHE_HOME/mammokit, else ~/.cache/mammokit."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mammokit"


def _fingerprint(run_dir: Path) -> dict[str, str]:
    return {"weights_sha256": file_sha256(run_dir / WEIGHTS), "card_sha256": file_sha256(run_dir / MODEL_JSON)}


class BackendCache:
    """The cache folder of one run (see the module docstring). Build with `BackendCache.open(run_dir)`."""

    def __init__(self, run_dir: Path, folder: Path, fingerprint: dict[str, str], data: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.folder = folder
        self.fingerprint = fingerprint
        self.data = data

    @classmethod
    def open(cls, run_dir: str | Path) -> BackendCache:
        """The run's cache, with stale parts already dropped (a changed run starts from an empty cache)."""
        run_dir = Path(run_dir)
        fingerprint = _fingerprint(run_dir)
        folder = cls._locate(run_dir, fingerprint)
        data = cls._read(folder / CACHE_JSON)
        if data.get("format") != CACHE_FORMAT or any(data.get(k) != v for k, v in fingerprint.items()):
            if data:
                log.info("%s: the run's weights or model card changed since it was cached; rebuilding", folder)
            (folder / CACHE_ONNX).unlink(missing_ok=True)
            data = {"format": CACHE_FORMAT, **fingerprint, "export": None, "selections": []}
        return cls(run_dir, folder, fingerprint, data)

    @staticmethod
    def folder_for(run_dir: str | Path) -> Path:
        """The cache folder of `run_dir` under the current cache root (whether or not it exists yet)."""
        return cache_root() / "runs" / cache_key(_fingerprint(Path(run_dir)))

    @staticmethod
    def _locate(run_dir: Path, fingerprint: dict[str, str]) -> Path:
        folder = cache_root() / "runs" / cache_key(fingerprint)
        if _writable_dir(folder):
            return folder
        tmp = Path(tempfile.mkdtemp(prefix="mammokit-cache-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        log.warning(
            "the cache folder %s cannot be written: the ONNX export and backend selection of %s are kept for this "
            "process only (give a writable folder with --cache-dir or $%s to keep them)",
            folder,
            run_dir.name,
            CACHE_ENV,
        )
        return tmp

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # a truncated or hand-edited file: start again rather than fail
            log.warning("%s unreadable (%s); rebuilding the cache", path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def save(self) -> None:
        atomic_write_json(self.folder / CACHE_JSON, self.data)

    # ---- the export ---------------------------------------------------------------------------

    @property
    def onnx_path(self) -> Path:
        return self.folder / CACHE_ONNX

    def fresh_onnx(self, *, torch_available: bool) -> Path | None:
        """The cached export if it matches the run and the installed exporter versions, else None.

        Without torch the export cannot be redone, so one that matches the weights is used whatever torch
        version made it.
        """
        export = self.data.get("export")
        if not export or not self.onnx_path.is_file():
            return None
        if export.get("onnx_sha256") != file_sha256(self.onnx_path):
            log.info("%s was modified after it was exported; exporting again", self.onnx_path)
            return None
        if torch_available and export.get("versions") != export_versions():
            log.info("%s was exported with %s; exporting again with the installed versions", self.onnx_path,
                     export.get("versions"))  # fmt: skip
            return None
        return self.onnx_path

    def record_export(self, max_abs_diff: float) -> None:
        """Note the export just written to `onnx_path` (its parity check against torch, versions, file hash)."""
        self.data["export"] = {
            "file": CACHE_ONNX,
            "onnx_sha256": file_sha256(self.onnx_path),
            "max_abs_diff_vs_torch": max_abs_diff,
            "versions": export_versions(),
        }
        self.data["selections"] = []  # their ONNX timings were measured on the previous export
        self.save()

    # ---- selections -----------------------------------------------------------------------------

    def selection(self, machine: str) -> dict[str, Any] | None:
        """The selection stored for this machine and the installed runtime versions, if any."""
        versions = package_versions(RUNTIME_PACKAGES)
        for entry in self.data.get("selections", []):
            if entry.get("machine") == machine and entry.get("versions") == versions:
                return entry
        return None

    def record_selection(self, machine: str, selection: dict[str, Any]) -> None:
        """Store `selection` (a `Selection.to_dict()`) for this machine, replacing an older one."""
        entry = {**selection, "machine": machine, "versions": package_versions(RUNTIME_PACKAGES)}
        others = [s for s in self.data.get("selections", []) if s.get("machine") != machine]
        self.data["selections"] = [*others, entry]
        self.save()
