"""What machine a measurement ran on, for benchmark reports (CPUs differ between machines: name them)."""

from __future__ import annotations

import os
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


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them (`avx512f`, `avx512_bf16`, `amx_bf16`, ...); empty off Linux."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def physical_cores() -> int:
    """Physical cores this process may run on: distinct (package, core) pairs of /proc/cpuinfo, at most the CPUs
    in this process's affinity mask (a container or `taskset` may allow fewer). Hyper-threads share a core's
    vector units, so one compute thread per physical core is the fastest setting for convolutions."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores, package, core = set(), "0", None
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            package = value
        elif key == "core id":
            core = value
        elif not key and core is not None:  # blank line ends one logical CPU's block
            cores.add((package, core))
            core = None
    if core is not None:
        cores.add((package, core))
    return max(1, min(len(cores) or allowed, allowed))
