"""Uploads are decoded in worker processes with a memory cap: a decoder crash or runaway allocation costs that one
request (HTTP 422), never the service (issue 25, item 1).

A codec is native code: a hostile file can make it abort (`std::bad_alloc` -> `terminate`), segfault, or allocate
gigabytes and keep them. In the service's own process any of those ends or cripples the service for everyone.
Here each decode runs in a process of a small pool whose address space is capped (`RLIMIT_AS`: its size at start
plus `memory_mb`), so an allocation past the cap fails inside the worker (a MemoryError, reported as an unreadable
file) and a crash kills only the worker: the pool is rebuilt, the upload is tried once more (an innocent upload
that shared the broken pool then succeeds) and an upload that kills its worker twice is refused with 422.

Workers start from a *forkserver* (a clean process started once, with the reader modules preloaded), not by
forking the service: the service holds model threads (OpenMP), whose locks a fork could copy in a locked state.
Logging is switched off in the workers: what goes wrong comes back as the exception, which names the file and
may quote a header value, and goes to the client only.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from mammokit.io.dicom import MammogramReadError
from mammokit.io.meta import MammoMeta

log = logging.getLogger(__name__)

ReadFn = Callable[..., tuple[np.ndarray, MammoMeta]]


def read_upload(data: bytes, name: str, options: dict[str, Any]) -> tuple[np.ndarray, MammoMeta]:
    """The decode a worker runs: `read_mammogram_bytes` with a run's reader options."""
    from mammokit.io.dicom import read_mammogram_bytes

    return read_mammogram_bytes(data, name=name, **options)


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _init_worker(memory_mb: float) -> None:
    import resource
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the service's to handle
    logging.disable(logging.CRITICAL)  # messages quote file names and header values: they travel as exceptions
    warnings.simplefilter("ignore")
    if memory_mb > 0:
        cap = _vm_size_bytes() + int(memory_mb * 2**20)  # what the worker already maps, plus the decode budget
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


class DecodePool:
    """`workers` decode processes, each capped at its start-up size + `memory_mb` MiB; thread-safe."""

    def __init__(self, workers: int, memory_mb: float, read_fn: ReadFn = read_upload) -> None:
        if workers < 1:
            raise ValueError("the decode pool needs at least one worker")
        self.workers = workers
        self.memory_mb = memory_mb
        self.read_fn = read_fn
        self.crashes = 0  # workers lost since start (for /v1/model and the log)
        self._lock = threading.Lock()
        self._pool: cf.ProcessPoolExecutor | None = None

    def _executor(self) -> cf.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(["mammokit.io.dicom", "mammokit.serve.decode"])
                self._pool = cf.ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=ctx, initializer=_init_worker, initargs=(self.memory_mb,)
                )
            return self._pool

    def _discard(self, pool: cf.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
                self.crashes += 1
        pool.shutdown(wait=False, cancel_futures=True)

    def read(self, data: bytes, name: str, options: dict[str, Any]) -> tuple[np.ndarray, MammoMeta]:
        """Decode one upload in a worker. Raises MammogramReadError when it cannot be read or kills its worker."""
        for attempt in (1, 2):
            pool = self._executor()
            try:
                return pool.submit(self.read_fn, data, name, options).result()
            except BrokenProcessPool:
                # a worker died: this upload, or another one decoded beside it; a second death is this one's
                self._discard(pool)
                log.warning("a decode worker died (attempt %d); the pool is restarted", attempt)
            except MemoryError:
                raise MammogramReadError(
                    f"{name}: decoding needs more memory than this server allows per image; the file is damaged "
                    "or larger than its header says"
                ) from None
        raise MammogramReadError(
            f"{name}: the decoder crashed on this file (its worker process died twice); the file is damaged or "
            "hostile; nothing else was affected"
        )

    def warm_up(self) -> None:
        """Start the workers now (the forkserver and its imports take a few seconds), not on the first upload."""
        pool = self._executor()
        list(pool.map(_noop, range(self.workers)))

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _noop(_: int) -> None:
    return None
