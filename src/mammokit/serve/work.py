"""A bounded work queue: at most `capacity` prediction requests admitted at once, `workers` of them running.

A request takes a slot *before* its upload is read (so memory is bounded by capacity x upload limit) and
gives it back when its job has finished - also when the client was already answered with a timeout,
because a running thread cannot be stopped and its memory is still in use. No free slot = HTTP 503 with
Retry-After. A job still waiting in the executor when its request times out is cancelled outright.

Fairness: one client address may hold at most `per_client` slots at once (upload + prediction); its next
request gets HTTP 429 at once, so a few slow or greedy connections from one address cannot fill the queue
(issue 25: `--queue` connections trickling a body at 1 byte/s kept every other upload at 503).
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
    """This client address already holds its share of slots; it should retry after `retry_after_s` seconds."""

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

    def __init__(self, *, capacity: int, workers: int, timeout_s: float, per_client: int | None = None) -> None:
        if capacity < 1 or workers < 1 or timeout_s <= 0 or (per_client is not None and per_client < 1):
            raise ValueError("the work queue needs capacity >= 1, workers >= 1, per_client >= 1 and a positive timeout")
        self.capacity = capacity
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.per_client = per_client  # None = no per-client limit
        self._in_use = 0
        self._by_client: dict[str, int] = {}  # client address -> slots it holds
        self._lock = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mammokit-serve")
        self.recent_job_s = 1.0  # moving average of job durations, for Retry-After

    @property
    def in_use(self) -> int:
        return self._in_use

    def held_by(self, client: str) -> int:
        return self._by_client.get(client, 0)

    def acquire(self, client: str | None = None) -> Slot:
        """Take a slot for `client` (its address) or raise ClientBusy / QueueFull (never waits)."""
        with self._lock:
            # a slot frees when one of the running jobs ends: about one job time / workers from now
            retry_after = max(1, round(self.recent_job_s / self.workers + 0.5))
            if client is not None and self.per_client is not None and self.held_by(client) >= self.per_client:
                raise ClientBusy(self.per_client, retry_after)
            if self._in_use >= self.capacity:
                raise QueueFull(retry_after)
            self._in_use += 1
            if client is not None:
                self._by_client[client] = self._by_client.get(client, 0) + 1
        return Slot(self, client)

    def _release(self, client: str | None) -> None:
        with self._lock:
            self._in_use -= 1
            if client is not None:
                left = self._by_client.get(client, 0) - 1
                if left > 0:
                    self._by_client[client] = left
                else:
                    self._by_client.pop(client, None)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class Slot:
    """One admitted request. `run` executes its job; `release` is called exactly once, by whoever finishes last."""

    def __init__(self, queue: WorkQueue, client: str | None = None) -> None:
        self._queue = queue
        self._client = client
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
        self._queue._release(self._client)

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
