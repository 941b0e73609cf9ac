"""Out of disk space: one clear error instead of a traceback, and never a folder that looks complete.

A full disk (ENOSPC) or an exhausted quota (EDQUOT) is not a property of one input file: every later write
fails the same way. So batch commands must not record it as an item error and "finish" (issue 25: `prepare`
once reported "prepared 14/264" with 250 ENOSPC rows beside a manifest and dataset.json). The rules:

* `is_disk_full(exc)` recognises the condition, whatever library raised it (pyarrow, Pillow and numpy all
  raise `OSError` with `errno` set; the chain of causes is searched too);
* the process pool (`utils.pool`) re-raises it in the parent instead of turning it into a `TaskFailed`;
* each command turns it into a `DiskFullError` naming the folder it was writing, the space available there
  and, where it can be estimated, the space still needed; the CLI prints that one line and exits with 2;
* the file that marks a folder complete (prepare's manifest.parquet and dataset.json, predict's
  predictions.csv/json, evaluate's metrics.json) is written last, and removed when the run stops short.

The message names a folder, not the file, on purpose: per-item file names come from image ids and input file
names, which may identify a patient and must not reach a log.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# what the C library says for them, for libraries that keep the text but lose the errno
_DISK_FULL_TEXT = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "[Errno 28]", "[Errno 122]")


class DiskFullError(OSError):
    """No space left (or quota exceeded) while writing under `folder`; `str()` is the one line for the user."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        needed_bytes: int | None = None,
        available_bytes: int | None = None,
        resumes: bool = False,
        code: int = errno.ENOSPC,
    ) -> None:
        self.folder = Path(folder)
        self.needed_bytes = needed_bytes
        self.available_bytes = free_bytes(self.folder) if available_bytes is None else available_bytes
        self.resumes = resumes
        super().__init__(code, self._message(code))

    def _message(self, code: int) -> str:
        what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
        avail = "unknown" if self.available_bytes is None else format_bytes(self.available_bytes)
        text = f"{what} while writing to {self.folder} ({avail} available there"
        if self.needed_bytes is not None:
            text += f"; about {format_bytes(self.needed_bytes)} more needed"
        text += "); free some space or choose another output folder, then run the same command again"
        return text + (": it resumes where it stopped" if self.resumes else "")

    def __str__(self) -> str:  # OSError's str() would prefix "[Errno 28] "
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()

    def __reduce__(self) -> tuple:  # picklable (raised in pool workers): rebuild from the same fields
        return (_rebuild, (str(self.folder), self.needed_bytes, self.available_bytes, self.resumes, self.errno))


def _rebuild(folder: str, needed: int | None, available: int | None, resumes: bool, code: int) -> DiskFullError:
    return DiskFullError(folder, needed_bytes=needed, available_bytes=available, resumes=resumes, code=code)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def disk_full_errno(exc: BaseException) -> int | None:
    """ENOSPC or EDQUOT when `exc` (or an exception it came from) means the disk is full, else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return int(e.errno)
        if isinstance(e, OSError | RuntimeError) and any(t in str(e) for t in _DISK_FULL_TEXT):
            return errno.EDQUOT if os.strerror(errno.EDQUOT) in str(e) or "[Errno 122]" in str(e) else errno.ENOSPC
    return None


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` means no space is left (ENOSPC) or the quota is exhausted (EDQUOT)."""
    return disk_full_errno(exc) is not None


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes available to this user on the filesystem holding `path` (its nearest existing folder); None if unknown."""
    p = Path(path)
    for candidate in (p, *p.parents):
        if candidate.exists():
            try:
                return int(shutil.disk_usage(candidate).free)  # f_bavail: what an unprivileged writer may use
            except OSError:
                return None
    return None


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KB' (powers of 1024, one decimal)."""
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at GB


def folder_of(exc: BaseException, default: str | os.PathLike[str]) -> Path:
    """The folder a failed write was going to: the parent of the file the error names, else `default`."""
    for e in _chain(exc):
        if isinstance(e, DiskFullError):
            return e.folder
        filename = getattr(e, "filename", None)
        if isinstance(filename, str | os.PathLike) and str(filename):
            return Path(filename).parent
    return Path(default)


def bytes_under(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Total size of the files among `paths` that exist (missing ones count 0)."""
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += os.stat(p).st_size
    return total


@contextlib.contextmanager
def disk_full_guard(
    folder: str | os.PathLike[str],
    *,
    needed: Callable[[], int | None] | int | None = None,
    resumes: bool = False,
    cleanup: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[None]:
    """Turn a disk-full error raised inside the block into a `DiskFullError` for `folder`.

    Args:
        folder: what the message names (the output folder, or the sub-folder being filled).
        needed: bytes still to write, or a function estimating them (called only on failure).
        resumes: the command resumes when run again (said in the message).
        cleanup: files to remove when the disk fills (e.g. a completion marker written earlier in the block,
            which must not survive beside missing outputs); removing them also frees some space.
    """
    try:
        yield
    except BaseException as exc:
        code = disk_full_errno(exc)
        if code is None:
            raise
        for path in cleanup:
            with contextlib.suppress(OSError):
                Path(path).unlink(missing_ok=True)
        if isinstance(exc, DiskFullError):
            raise
        estimate = needed() if callable(needed) else needed
        raise DiskFullError(folder_of(exc, folder), needed_bytes=estimate, resumes=resumes, code=code) from None


@contextlib.contextmanager
def disk_full_as(error: Callable[[str], BaseException], folder: str | os.PathLike[str]) -> Iterator[None]:
    """For a CLI command: a disk-full error anywhere in the block becomes `error(one line)` (the CLI's UserError,
    which prints the line and exits with status 2), without a traceback."""
    try:
        with disk_full_guard(folder):
            yield
    except DiskFullError as exc:
        raise error(str(exc)) from None
