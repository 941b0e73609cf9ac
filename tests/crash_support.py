"""Decoders that misbehave on purpose, for the decode-pool tests (importable by the pool's worker processes)."""

from __future__ import annotations

import os
from typing import Any

CRASH_MARKER = b"MAMMOKIT-TEST-CRASH-THE-DECODER"
ALLOCATE_MARKER = b"MAMMOKIT-TEST-ALLOCATE-8-GB"


def read_or_misbehave(data: bytes, name: str, options: dict[str, Any]) -> Any:
    """`serve.decode.read_upload`, except that a marked upload aborts the process (as a C++ decoder's
    `std::bad_alloc` -> `terminate` does) or asks for 8 GB at once (as a decoder trusting a forged size does)."""
    if CRASH_MARKER in data:
        os.abort()
    if ALLOCATE_MARKER in data:
        import numpy as np

        np.empty(8 * 2**30, dtype=np.uint8)  # address space only (overcommit) unless the worker is capped
    from mammokit.serve.decode import read_upload

    return read_upload(data, name, options)
