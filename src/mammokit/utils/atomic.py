"""Atomic file writes: a reader never sees a half-written file, and a killed job leaves no partial output.

Every writer in mammokit that produces a file another step reads (prepared images, manifests, run
folders, reports) goes through these helpers: write to a temporary file in the same directory, flush
and fsync, then `os.replace`, which is atomic on POSIX filesystems.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it
_OWNER_PID: int | None = None  # in a pool worker: the process whose outputs this one writes (see `write_for`)


def write_for(parent_pid: int) -> None:
    """Make this process (a pool worker) write only while `parent_pid` is its parent.

    Once the parent is gone (killed with -9, say), a file this process writes would appear in an output
    folder nobody is finishing, after the user saw the job stop; `exit_if_orphaned` ends the process instead.
    This is the portable fallback of `utils.pool`'s parent-death signal (Linux only) and watchdog thread
    (which looks every 0.5 s): each atomic write checks first.
    """
    global _OWNER_PID
    _OWNER_PID = parent_pid


def exit_if_orphaned() -> None:
    """End this process at once (no cleanup, nothing written) when the parent set by `write_for` has died."""
    if _OWNER_PID is not None and os.getppid() != _OWNER_PID:  # re-parented: the parent is gone
        os._exit(1)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary name keeps the final suffix so that libraries choosing a format by extension
    (Pillow, pandas) still do the right thing. `durable=False` skips the fsync: the rename is still
    atomic for readers, but a power loss may leave an empty file. Use it only inside a folder that is
    itself renamed into place once complete (e.g. a patch set), where the fsync is ~1/3 of the cost.
    """
    path = Path(path)
    exit_if_orphaned()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        commit_file(tmp_path, path, durable=durable)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def commit_file(tmp: str | os.PathLike[str], path: str | os.PathLike[str], *, durable: bool = True) -> None:
    """Move a finished temporary file into place: fsync its contents (unless `durable=False`), then `os.replace`.

    For writers that must choose the temporary name themselves (e.g. a Lightning checkpoint, which every
    DDP rank saves to the same path); everything else uses `atomic_path`, which calls this.
    """
    if durable:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    exit_if_orphaned()  # the temporary stays hidden (removed by a resumed run); the real name never appears
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> None:
    """Write `obj` as JSON (NaN written as null, so that any JSON reader can load it)."""
    atomic_write_text(path, json.dumps(_nan_to_none(obj), indent=indent, sort_keys=False) + "\n")


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` and move the result into place atomically (e.g. `df.to_parquet`)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:  # NaN is the only float not equal to itself
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj
