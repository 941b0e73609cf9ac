"""In-memory store of the PNGs a prediction links to (view images, heatmaps), bounded in time and bytes.

Nothing is written to disk: a result's PNGs live here for `ttl_s` seconds after they were made, and the
oldest results are dropped first when the total would pass `max_bytes` (an LRU over whole results, so a
viewer never gets half of an exam). Keys are unguessable random ids (`secrets.token_urlsafe`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Entry:
    expires: float  # time.monotonic() deadline
    files: dict[str, bytes]  # relative name -> PNG bytes
    n_bytes: int


class ResultStore:
    """Thread-safe TTL + byte-bounded LRU of `{result_id: {name: png}}`."""

    def __init__(self, *, ttl_s: float = 600.0, max_bytes: int = 256 * 2**20) -> None:
        if ttl_s <= 0 or max_bytes <= 0:
            raise ValueError("the result store needs a positive TTL and byte limit")
        self.ttl_s = float(ttl_s)
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def n_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, files: dict[str, bytes]) -> str:
        """Store one result's files; returns its new id. A result larger than the whole store is refused."""
        size = sum(len(b) for b in files.values())
        if size > self.max_bytes:
            raise ValueError(f"result of {size} bytes exceeds the store limit of {self.max_bytes} bytes")
        result_id = secrets.token_urlsafe(16)
        with self._lock:
            self._expire(time.monotonic())
            while self._entries and self._bytes + size > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.n_bytes
            self._entries[result_id] = _Entry(time.monotonic() + self.ttl_s, dict(files), size)
            self._bytes += size
        return result_id

    def get(self, result_id: str, name: str) -> bytes | None:
        """The file's bytes, or None when unknown or expired; a hit makes the result most recently used."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            entry = self._entries.get(result_id)
            if entry is None:
                return None
            self._entries.move_to_end(result_id)
            return entry.files.get(name)

    def _expire(self, now: float) -> None:
        # entries are in insertion/use order, not expiry order: scan all (a few hundred at most)
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            self._bytes -= self._entries.pop(key).n_bytes
