"""What machine a measurement ran on, for benchmark reports (CPUs differ between machines: name them)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model ("Intel(R) Xeon(R) Processor"), from /proc/cpuinfo on Linux, else `platform.processor()`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
