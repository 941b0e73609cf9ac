"""Admission control of `POST /v1/predict`: uploads in progress (`UploadGate`) and prediction jobs (`WorkQueue`).

Two stages, so that a slow upload never holds a prediction slot (issue 25: `--queue` connections trickling a
body at 1 byte/s kept every other upload at 503):

1. `UploadGate`: an upload is admitted before its body is read, if its client address has fewer than
   `per_client` uploads in progress (else HTTP 429) and fewer than `max_uploads` are in progress in all (else
   503). Its body's bytes are reserved as they arrive against `max_bytes` (queue x the upload limit: the memory
   bound the service always had); a body that does not fit gets 503. A trickling connection reserves almost
   nothing, so it blocks nobody's bytes; it is cut off by the body deadline (`uploads.within_deadline`), and
   one address cannot hold more than `per_client` admissions.
2. `WorkQueue`: once the body is in, the request takes one of `capacity` job slots (running + waiting; else 503
   with Retry-After) and `workers` jobs run at once. A slot is given back when its job has finished - also when
   the client was already answered with a timeout, because a running thread cannot be stopped and its memory
   is still in use; the upload's admission and bytes are given back with it. A job still waiting in the
   executor when its request times out is cancelled outright.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """No free slot; the client should retry after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the server is busy; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ClientBusy(Exception):
    """This client address already has its share of uploads in progress; retry after `retry_after_s` seconds."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"this client already has {limit} request(s) in progress (the server's limit per client address, "
            f"--per-client); wait for an answer, then retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class JobTimeout(Exception):
    """The job did not finish within the per-request timeout."""


class WorkQueue:
    """Admission control + a thread pool for the blocking prediction work."""

    def __init__(self, *, capacity: int, workers: int, timeout_s: float) -> None:
        if capacity < 1 or workers < 1 or timeout_s <= 0:
            raise ValueError("the work queue needs capacity >= 1, workers >= 1 and a positive timeout")
        self.capacity = capacity
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self._in_use = 0
        self._lock = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mammokit-serve")
        self.recent_job_s = 1.0  # moving average of job durations, for Retry-After

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def retry_after_s(self) -> int:
        """A slot frees when one of the running jobs ends: about one job time / workers from now."""
        return max(1, round(self.recent_job_s / self.workers + 0.5))

    def acquire(self, on_release: Callable[[], None] | None = None) -> Slot:
        """Take a slot or raise QueueFull (never waits). `on_release` runs when the slot is given back."""
        with self._lock:
            if self._in_use >= self.capacity:
                raise QueueFull(self.retry_after_s)
            self._in_use += 1
        return Slot(self, on_release)

    def _release(self) -> None:
        with self._lock:
            self._in_use -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class Slot:
    """One admitted request. `run` executes its job; `release` is called exactly once, by whoever finishes last."""

    def __init__(self, queue: WorkQueue, on_release: Callable[[], None] | None = None) -> None:
        self._queue = queue
        self._on_release = on_release
        self._released = False
        self._started = False
        self._lock = threading.Lock()

    def release_if_unused(self) -> None:
        """Give the slot back when no job was started with it (e.g. the upload was refused)."""
        if not self._started:
            self.release()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._queue._release()
        if self._on_release is not None:
            self._on_release()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the pool; raise JobTimeout after the queue's timeout. Releases the slot."""
        import time

        queue = self._queue
        start = time.perf_counter()

        def job() -> T:
            try:
                return fn(*args)
            finally:
                took = time.perf_counter() - start
                queue.recent_job_s = 0.8 * queue.recent_job_s + 0.2 * took

        self._started = True
        try:
            future = queue._pool.submit(job)
        except RuntimeError:  # the pool is shutting down
            self.release()
            raise
        future.add_done_callback(lambda _f: self.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=queue.timeout_s)
        except TimeoutError:
            future.cancel()  # only succeeds while still queued; a running job frees its slot when it ends
            raise JobTimeout(f"the prediction took longer than the server's limit of {queue.timeout_s:g} s") from None


class UploadGate:
    """Uploads in progress (body being read, or its prediction pending): per client, in all, and their bytes."""

    def __init__(self, *, max_uploads: int, per_client: int, max_bytes: int) -> None:
        if max_uploads < 1 or per_client < 1 or max_bytes < 1:
            raise ValueError("the upload gate needs max_uploads, per_client and max_bytes >= 1")
        self.max_uploads = max_uploads
        self.per_client = per_client
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._by_client: dict[str, int] = {}
        self._uploads = 0
        self._bytes = 0

    @property
    def in_progress(self) -> int:
        return self._uploads

    @property
    def n_bytes(self) -> int:
        return self._bytes

    def held_by(self, client: str) -> int:
        return self._by_client.get(client, 0)

    def enter(self, client: str | None, retry_after_s: int = 1) -> Upload:
        """Admit one upload from `client` (its address) or raise ClientBusy (429) / QueueFull (503)."""
        key = client or "-"
        with self._lock:
            if self._by_client.get(key, 0) >= self.per_client:
                raise ClientBusy(self.per_client, retry_after_s)
            if self._uploads >= self.max_uploads:
                raise QueueFull(retry_after_s)
            self._uploads += 1
            self._by_client[key] = self._by_client.get(key, 0) + 1
        return Upload(self, key)

    def _reserve(self, n: int) -> bool:
        with self._lock:
            if self._bytes + n > self.max_bytes:
                return False
            self._bytes += n
            return True

    def _leave(self, key: str, n_bytes: int) -> None:
        with self._lock:
            self._uploads -= 1
            self._bytes -= n_bytes
            left = self._by_client.get(key, 0) - 1
            if left > 0:
                self._by_client[key] = left
            else:
                self._by_client.pop(key, None)


class Upload:
    """One admitted upload; `reserve` its body's bytes as they arrive, `release` exactly once (idempotent)."""

    def __init__(self, gate: UploadGate, key: str) -> None:
        self._gate = gate
        self._key = key
        self._bytes = 0
        self._released = False
        self._lock = threading.Lock()

    def reserve(self, n: int, retry_after_s: int = 1) -> None:
        """Count `n` more body bytes against the gate's memory budget, or raise QueueFull."""
        if not self._gate._reserve(n):
            raise QueueFull(retry_after_s)
        self._bytes += n

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._gate._leave(self._key, self._bytes)
