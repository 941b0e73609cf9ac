"""A crash-tolerant process pool for batch jobs over untrusted files (`prepare`, `patches`, `predict`'s readers).

Decoding a file someone handed us can do worse than raise: a Rust codec can raise a `pyo3` `PanicException`
(a `BaseException`, missed by `except Exception`), a C codec can `abort()` the process on a failed allocation,
and the kernel can kill a worker that runs out of memory. `run_isolated` runs each task in a worker process
so none of that can take the batch down:

* an exception of any kind inside a task (`BaseException` included, bar KeyboardInterrupt/SystemExit) comes
  back as a `TaskFailed` result for that task;
* a worker that dies (signal, abort, OOM kill) breaks the pool; the tasks it may have held are re-run one at a
  time, each in a fresh one-process pool, so the task that kills its process again is the culprit and comes
  back as `TaskFailed` (with the signal), while the innocent ones complete normally; the queue then continues
  in a new pool;
* workers end when the parent process dies, so killing the main process never leaves orphans holding CPU and
  memory, nor writing into an output folder nobody is finishing: on Linux the kernel kills them at once
  (`prctl(PR_SET_PDEATHSIG, SIGKILL)`); everywhere a watchdog thread looks every 0.5 s, and every atomic write
  (`utils.atomic`) checks the parent first;
* a full disk (ENOSPC, EDQUOT) is not an item failure, since every later write fails too: it is raised in the
  parent as an `OSError` and stops the batch (`utils.diskfull`).

On Linux the workers are forked, so they inherit the parent's imports (cheap start) and the task function's
module state (test fault injection relies on it); elsewhere they are spawned.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from mammokit.utils.diskfull import disk_full_errno

log = logging.getLogger(__name__)

_WATCHDOG_PERIOD_S = 0.5  # how often a worker checks that its parent is still alive
_IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: enough to keep it busy, little to redo after a crash


@dataclass(frozen=True)
class TaskFailed:
    """A task that did not return: it raised (`reason` = exception type and message) or killed its worker."""

    reason: str
    crashed: bool = False  # True when the worker process died (signal, abort, out of memory)


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(_WATCHDOG_PERIOD_S)
        if os.getppid() != parent_pid:  # re-parented: the process that started us is gone
            os._exit(1)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """Linux: ask the kernel to SIGKILL this process when its parent dies (no-op where prctl is missing).

    The signal follows the parent *thread* that forked us, so `process_pool` asks for it only when the pool
    is made on the main thread (a worker started by a short-lived thread would otherwise die with that thread).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol (e.g. musl without prctl): the watchdog remains
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect: nobody would send the signal
        os._exit(1)


def _worker_init(
    parent_pid: int,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
    pdeathsig: bool = False,
) -> None:
    import faulthandler

    from mammokit.utils.atomic import write_for

    faulthandler.disable()  # a worker's crash is reported by the parent (errors.csv), not as a stack dump
    if pdeathsig:
        _die_with_parent(parent_pid)
    write_for(parent_pid)  # every atomic write checks that the parent is still there
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()
    # Ctrl+C reaches the whole process group; the parent decides what to do, workers just keep going until
    # the parent shuts the pool down (or dies, and the watchdog ends them).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def _guarded(fn: Callable[[Any], Any], task: Any) -> Any:
    """Run one task in the worker; any failure becomes a `TaskFailed` (a panic is a BaseException)."""
    try:
        return fn(task)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        code = disk_full_errno(exc)
        if code is not None:  # not this item's fault: re-raised in the parent, which stops the batch
            raise OSError(code, os.strerror(code), getattr(exc, "filename", None)) from None
        log.debug("task failed in worker %d", os.getpid(), exc_info=True)
        return TaskFailed(f"{type(exc).__name__}: {exc}")


def _context(start_method: str | None = None) -> Any:
    if start_method is None:
        start_method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(start_method)


def process_pool(
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    start_method: str | None = None,
) -> ProcessPoolExecutor:
    """A process pool whose workers ignore Ctrl+C (the parent handles it) and exit when the parent dies (fork
    on Linux for a cheap start with inherited imports, spawn elsewhere); `initializer(*initargs)` runs in each.

    `start_method="spawn"` for tasks that run torch: a forked child that enters an OpenMP/oneDNN parallel region
    its parent already used can hang or fail (libgomp's thread pool does not survive fork), so such workers must
    start from a fresh interpreter (a few seconds of imports each)."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_context(start_method),
        initializer=_worker_init,
        # processes start in the thread that submits; run_isolated makes and feeds its pool in one thread
        initargs=(os.getpid(), initializer, initargs, threading.current_thread() is threading.main_thread()),
    )


def _death_reason(pool: ProcessPoolExecutor) -> str:
    """What killed the worker of a one-process pool, from its exit code (best effort)."""
    codes = [p.exitcode for p in (getattr(pool, "_processes", None) or {}).values() if p.exitcode is not None]
    for code in codes:
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = {"SIGKILL": "probably killed for using too much memory", "SIGABRT": "a decoder aborted"}
            return f"killed by {name}" + (f" ({hint[name]})" if name in hint else "")
        if code:
            return f"exited with status {code}"
    return "terminated abruptly"


def _run_alone(
    fn: Callable[[Any], Any],
    task: Any,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
    start_method: str | None,
) -> Any:
    solo = process_pool(1, initializer, initargs, start_method)
    try:
        return solo.submit(_guarded, fn, task).result()
    except BrokenProcessPool:
        time.sleep(0.05)  # let the executor reap the dead process so its exit code is known
        return TaskFailed(f"the worker process died on this item: {_death_reason(solo)}", crashed=True)
    finally:
        solo.shutdown(wait=True, cancel_futures=True)


def run_isolated(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    *,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    ordered: bool = False,
    start_method: str | None = None,
) -> Iterator[tuple[int, Any]]:
    """Run `fn(task)` for every task in worker processes; yields `(task index, result or TaskFailed)`.

    Args:
        fn: a module-level function (picklable by reference) taking one task.
        tasks: the tasks (picklable).
        workers: worker processes (at least 1; the tasks never run in this process).
        initializer, initargs: run once in each worker before its first task.
        ordered: yield in task order (buffers finished results) instead of as they finish.
        start_method: "fork"/"spawn"; None = `process_pool`'s default (fork on Linux). "spawn" for torch tasks.

    Every task yields exactly once, whatever it or its worker does, except that a full disk (ENOSPC/EDQUOT
    in any task) raises `OSError` here and stops the batch: the pool is shut down, the rest is not run.
    """
    indexed = list(enumerate(tasks))
    stream = _run_unordered(fn, indexed, max(1, int(workers)), initializer, initargs, start_method)
    if not ordered:
        yield from stream
        return
    waiting: dict[int, Any] = {}
    next_index = 0
    for index, result in stream:
        waiting[index] = result
        while next_index in waiting:
            yield next_index, waiting.pop(next_index)
            next_index += 1


def _run_unordered(
    fn: Callable[[Any], Any],
    indexed: list[tuple[int, Any]],
    workers: int,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
    start_method: str | None,
) -> Iterator[tuple[int, Any]]:
    queue = list(reversed(indexed))  # pop() from the end = task order
    while queue:
        suspects: list[tuple[int, Any]] = []
        pool = process_pool(workers, initializer, initargs, start_method)
        try:
            in_flight: dict[Any, tuple[int, Any]] = {}
            broken = False
            while (queue or in_flight) and not broken:
                while queue and len(in_flight) < _IN_FLIGHT_PER_WORKER * workers:
                    index, task = queue.pop()
                    in_flight[pool.submit(_guarded, fn, task)] = (index, task)
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        result = fut.result()
                    except BrokenProcessPool:  # a worker died: this task stays a suspect
                        broken = True
                        continue
                    yield in_flight.pop(fut)[0], result
            if broken:
                suspects = sorted(in_flight.values(), key=lambda pair: pair[0])
                log.warning("a worker process died; re-running the %d item(s) it may have held, one at a time",
                            len(suspects))  # fmt: skip
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for index, task in suspects:
            yield index, _run_alone(fn, task, initializer, initargs, start_method)
