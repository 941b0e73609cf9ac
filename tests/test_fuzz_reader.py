"""Fuzzing `read_mammogram` (issue 17): every outcome on a mutated file is pixels or a MammogramReadError.

A seeded (derandomised) hypothesis run over the seed corpus of tests/fuzz_corpus.py - small MG DICOMs in every
supported transfer syntax plus PNG/PGM/JPEG - with 1-4 stacked mutations per input (bit flips, overwritten bytes,
truncation, chunk deletion/duplication, extreme integers, extreme values in Rows/Columns/BitsAllocated/
RescaleSlope/... tags, extreme sizes inside the JPEG/JPEG-LS/JPEG 2000/RLE codestreams, deflate bombs; the last
two are also swept exhaustively below, issue 25). Bounded: each input must finish within `MAX_SECONDS_PER_INPUT`
and the whole run may grow the process's peak RSS by at most `MAX_RSS_GROWTH_MB`. `benchmarks/fuzz_reader.py
--seconds N` runs the same mutator for as long as asked, in isolated worker processes, and reports the figures.
"""

from __future__ import annotations

import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_corpus import N_OPS, OP_CODESTREAM, OP_DEFLATE, OP_TAG, apply_mutation, build_seeds
from mammokit.io.dicom import MammogramReadError, read_mammogram

N_INPUTS = 2500
MAX_SECONDS_PER_INPUT = 5.0  # generous for a contended 2-core machine; a hang is minutes
MAX_RSS_GROWTH_MB = 400  # seeds are 40 x 32 pixels; the size limit keeps damaged headers from allocating GBs

_STATE: dict[str, object] = {}


def _corpus() -> tuple[list[bytes], list[str], Path]:
    if "seeds" not in _STATE:
        folder = Path(tempfile.mkdtemp(prefix="mammokit-fuzz-"))
        paths = build_seeds(folder / "seeds")
        _STATE["seeds"] = [p.read_bytes() for p in paths]
        _STATE["suffixes"] = [p.suffix for p in paths]
        _STATE["work"] = folder
    return _STATE["seeds"], _STATE["suffixes"], _STATE["work"]  # type: ignore[return-value]


def test_every_seed_reads_cleanly():
    seeds, suffixes, work = _corpus()
    assert len(seeds) >= 16
    for i, (data, suffix) in enumerate(zip(seeds, suffixes, strict=True)):
        path = work / f"seed{i}{suffix}"
        path.write_bytes(data)
        pixels, meta = read_mammogram(path)
        assert pixels.shape == (40, 32) and np.isfinite(pixels).all(), meta


_MUTATIONS = st.lists(
    st.tuples(st.integers(0, N_OPS - 1), st.integers(0, 1 << 20), st.integers(0, 1 << 20)), min_size=1, max_size=4
)
_OUTCOMES: dict[str, int] = {}


@settings(
    max_examples=N_INPUTS,
    derandomize=True,  # seeded: the same inputs on every run and machine
    database=None,
    deadline=None,  # timing is asserted below with a bound fit for a shared CPU
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed_index=st.integers(0, 63), mutations=_MUTATIONS)
def _fuzz_once(seed_index: int, mutations: list[tuple[int, int, int]]) -> None:
    seeds, suffixes, work = _corpus()
    index = seed_index % len(seeds)
    data = bytearray(seeds[index])
    for op, where, value in mutations:
        apply_mutation(data, op, where, value)
    path = work / f"input{suffixes[index]}"
    path.write_bytes(bytes(data))
    t0 = time.perf_counter()
    try:
        pixels, meta = read_mammogram(path)
    except MammogramReadError as exc:
        assert str(path) in str(exc)  # the message names the file
        outcome = "MammogramReadError"
    else:
        assert pixels.ndim == 2 and pixels.dtype == np.float32 and np.isfinite(pixels).all()
        assert (meta.height, meta.width) == pixels.shape
        outcome = "pixels"
    elapsed = time.perf_counter() - t0
    assert elapsed < MAX_SECONDS_PER_INPUT, f"{elapsed:.1f} s on one input"
    _OUTCOMES[outcome] = _OUTCOMES.get(outcome, 0) + 1


def test_mutated_files_give_pixels_or_a_read_error():
    _corpus()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    _OUTCOMES.clear()
    _fuzz_once()
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    assert growth < MAX_RSS_GROWTH_MB, f"peak RSS grew by {growth:.0f} MiB"
    # both outcomes occur: the mutator reaches the decoders instead of only breaking the header
    assert _OUTCOMES.get("pixels", 0) > 50 and _OUTCOMES.get("MammogramReadError", 0) > 500, _OUTCOMES


@pytest.mark.parametrize("name", ["Rows", "Columns", "BitsAllocated", "RescaleSlope", "PixelData"])
def test_header_aware_mutations_hit_their_tag(name):
    """The tag table of the mutator stays in sync with the seeds (a silent no-op would weaken the fuzzing)."""
    from fuzz_corpus import _TAGS

    seeds, _, _ = _corpus()
    index = list(_TAGS).index(name)
    changed = 0
    for seed in seeds[:3]:
        data = bytearray(seed)
        apply_mutation(data, OP_TAG, index, 3)
        changed += bytes(data) != seed
    assert changed >= 1


# --- codestream and deflate mutations (issue 25) -----------------------------------------------------------------

_COMPRESSED = ("rle", "jpeg-ls", "jpeg-ls-near", "j2k-lossless", "j2k", "jp2", "jpeg-lossless", "jpeg-baseline")


def _seed(name: str) -> bytes:
    _, _, work = _corpus()
    paths = sorted((work / "seeds").iterdir())
    return next(p.read_bytes() for p in paths if p.name == f"{name}.dcm")


def test_codestream_mutations_give_pixels_or_a_read_error_before_decoding():
    """Every codestream field of every compressed seed set to every extreme value: pixels or a read error, fast,
    with bounded memory; a size the header does not declare never reaches a decoder (it would take seconds and
    GBs: the time and RSS bounds are what would catch it)."""
    _, _, work = _corpus()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    outcomes: dict[str, int] = {}
    for name in _COMPRESSED:
        seed = _seed(name)
        hits = 0
        for where in range(16):
            for value in range(13):  # len(_EXTREME_SIZES)
                data = bytearray(seed)
                apply_mutation(data, OP_CODESTREAM, where, value)
                if bytes(data) == seed:
                    continue
                hits += 1
                path = work / "codestream.dcm"
                path.write_bytes(bytes(data))
                t0 = time.perf_counter()
                try:
                    read_mammogram(path)
                    outcome = "pixels"
                except MammogramReadError as exc:
                    assert str(path) in str(exc)
                    outcome = "codestream declares" if "codestream declares" in str(exc) else "other read error"
                assert time.perf_counter() - t0 < MAX_SECONDS_PER_INPUT
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert hits >= 100, f"the codestream mutator barely touches {name} ({hits} changed inputs)"
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    assert growth < MAX_RSS_GROWTH_MB, f"peak RSS grew by {growth:.0f} MiB"
    assert outcomes.get("codestream declares", 0) > 300, outcomes


@pytest.mark.parametrize("name", ["deflated", "native", "mono1"])
def test_deflate_mutation_makes_a_small_bomb_that_is_refused(name):
    """The deflate mutation turns a deflated (or Explicit VR Little Endian) seed into a file of at most ~400 KB
    declaring up to 4 GB of pixel data; every variant is refused with a traced peak far below what it inflates to."""
    _, _, work = _corpus()
    seed = _seed(name)
    for value in range(5):  # every size of fuzz_corpus._BOMB_PIXEL_BYTES
        data = bytearray(seed)
        apply_mutation(data, OP_DEFLATE, 0, value)
        assert bytes(data) != seed and len(data) < 500_000
        path = work / "bomb.dcm"
        path.write_bytes(bytes(data))
        tracemalloc.start()
        try:
            with pytest.raises(MammogramReadError, match=r"deflated dataset inflates|expected a 2-D image"):
                read_mammogram(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 40e6, f"{name} bomb {value}: peak {peak / 1e6:.0f} MB"
