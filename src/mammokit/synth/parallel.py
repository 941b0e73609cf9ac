"""`map_women`: run a per-woman function over a cohort in worker processes, results in cohort order.

Rendering a woman and writing her files depends only on the cohort seed and her index (every random stream
is seeded from them), so women are independent tasks and the layout writers can hand them to processes and
still write byte-identical files: each worker writes the files of its own women, and the parent merges the
returned rows and counters in cohort order before it writes the index files (CSVs, Info.txt).

Unlike `mammokit.utils.pool.run_isolated` there is no crash isolation: the phantom is our own code on our
own data, so a failure is a bug and should stop the run (the exception propagates; `generate`'s partial
marker marks the folder as interrupted). The workers come from pool.py's `process_pool` (fork on Linux:
cheap start, inherited imports) and its worker initializer (they ignore Ctrl+C, which the parent handles by
cancelling the queued women, and exit on their own if the parent dies).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from itertools import islice
from typing import TypeVar

from mammokit.synth.model import Woman
from mammokit.utils.pool import process_pool

T = TypeVar("T")

# Women queued or running per worker: enough to keep every worker busy while the parent waits for the
# oldest one (results are yielded in order), few enough that at full size the in-flight images stay bounded.
IN_FLIGHT_PER_WORKER = 2


def map_women(fn: Callable[[Woman], T], cohort: Sequence[Woman], workers: int) -> Iterator[T]:
    """Yield `fn(woman)` for every woman of `cohort`, in cohort order.

    Args:
        fn: picklable by reference (a module-level function, or a `functools.partial` of one with picklable
            arguments); it runs in a worker process when `workers` > 1.
        cohort: the women, each passed to `fn` (a `Woman` is a small frozen dataclass, cheap to pickle).
        workers: worker processes; <= 1 runs `fn` in this process (no pool start-up, plain tracebacks).

    Raises:
        Whatever `fn` raises, for the first woman (in cohort order) whose call failed; the women still
        queued are cancelled and the running ones finish before it propagates.
    """
    workers = min(int(workers), len(cohort))
    if workers <= 1:
        for woman in cohort:
            yield fn(woman)
        return
    pool = process_pool(workers)
    try:
        women = iter(cohort)
        pending: deque[Future[T]] = deque(pool.submit(fn, w) for w in islice(women, IN_FLIGHT_PER_WORKER * workers))
        while pending:
            result = pending.popleft().result()
            woman = next(women, None)
            if woman is not None:  # refill the window by one before handing the result on
                pending.append(pool.submit(fn, woman))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
