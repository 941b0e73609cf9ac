"""`--backend auto`: the fastest float32 prediction backend that meets the accuracy bar, per run folder and machine.

Candidates (each only where its runtime is installed and it can run here), all float32, so that the same file
and model give the same numbers on every CPU (to float32 rounding), whichever of them wins:

    torch       the inference core's float32 graph, channels_last (`scoring.core.TorchScorer`): the reference
    onnx        the run exported once to ONNX (`infer.export_cache`), ONNX Runtime with tuned session options
                (`infer.onnx.session_options`: all graph optimisations, one thread per physical core)
    openvino    the same ONNX file with OpenVINO Runtime, float32 (only if `openvino` is already installed)

Reduced precision is never chosen by `auto` (issue 25: bf16 was chosen on a CPU with AVX512-BF16, and its
probabilities differed by 1-3e-3 from the same command on a CPU without it). It runs only when asked:
`--precision bfloat16` (or `--backend torch-bf16`) is the torch graph under bfloat16 autocast, and every output
records the precision used (`infer.config.resolve_precision`).

The rule (`choose`): every candidate scores the same calibration batch (`calibration_images`: synthetic
phantom mammograms prepared at the run's input size) one image at a time (batch 1), after one warm-up call.
A candidate is accepted when its probabilities stay within the bar of the float32 torch reference: 1e-4 for
float32 runtimes (the export's own tolerance). Of the accepted, the one with the lowest median
time per image wins, except that a candidate must be more than 10 % faster to displace one earlier in the
order above (torch, the reference, first), so timing noise between near-equal runtimes does not flip
the choice from run to run.

The selection is measured once per run folder and machine and stored in the run's cache with its timings
(`export_cache.BackendCache`); later calls reuse it. On a GPU (device "cuda"/"mps", or "auto" with one present)
the torch backend is used without measuring: the other candidates here are CPU runtimes.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mammokit.infer.backends import ScoringBackend, build_backend, runtime_available
from mammokit.infer.config import AUTO, BACKEND_PRECISION, BACKEND_RUNTIME
from mammokit.infer.export_cache import BackendCache
from mammokit.run import ModelCard, read_card

log = logging.getLogger(__name__)

ORDER = ("torch", "onnx", "openvino", "torch-bf16")  # exact first, reduced precision last (ties go left)
FP32_BAR = 1e-4  # max |p - p_torch_fp32| for a float32 runtime (= `mammokit export`'s parity tolerance)
BF16_BAR = 5e-3  # max |p - p_torch_fp32| for bfloat16 (issue 15's accuracy bar)
MIN_GAIN = 1.10  # a candidate later in ORDER must be this much faster to displace an earlier one
N_CALIBRATION = 2  # calibration images (each timed at batch 1, after one warm-up call)


@dataclass(frozen=True)
class CpuCaps:
    """What the CPU offers for inference (from /proc/cpuinfo flags)."""

    name: str
    physical_cores: int
    avx512: bool
    bf16: bool  # AVX512-BF16 or AMX-BF16: oneDNN runs bf16 convolutions natively
    amx: bool


def probe_cpu() -> CpuCaps:
    """This machine's CPU capabilities (tests monkeypatch this to play a CPU without bf16)."""
    from mammokit.utils.machine import cpu_flags, cpu_name, physical_cores

    flags = cpu_flags()
    amx = {"amx_bf16", "amx_tile"} <= flags
    return CpuCaps(cpu_name(), physical_cores(), "avx512f" in flags, amx or "avx512_bf16" in flags, amx)


def machine_key(caps: CpuCaps, device: str) -> str:
    """What a stored selection is valid for: the CPU model, its cores and bf16/AMX support, and the device."""
    return f"{caps.name} | {caps.physical_cores} cores | bf16={caps.bf16} amx={caps.amx} | device={device}"


@dataclass
class Trial:
    """One candidate measured on the calibration batch."""

    backend: str
    ms_per_image: float | None  # median over the calibration images, batch 1; None when it could not run
    max_abs_diff: float | None  # max |p - p_torch_fp32| on the calibration images
    bar: float
    accepted: bool
    note: str = ""


@dataclass
class Selection:
    """The chosen backend and the measurements behind the choice (stored in the run's cache)."""

    backend: str
    trials: list[Trial] = field(default_factory=list)
    machine: str = ""
    input_hw: tuple[int, int] = (0, 0)
    created: str = ""
    reason: str = ""
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("from_cache")
        out["input_hw"] = list(self.input_hw)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        trials = [Trial(**t) for t in data.get("trials", [])]
        return cls(data["backend"], trials, data.get("machine", ""), tuple(data.get("input_hw", (0, 0))),  # type: ignore[arg-type]
                   data.get("created", ""), data.get("reason", ""), from_cache=True)  # fmt: skip

    def summary(self) -> str:
        """One line for the log: the winner and every candidate's time and accuracy."""
        parts = []
        for t in self.trials:
            timing = f"{t.ms_per_image:.0f} ms" if t.ms_per_image is not None else "-"
            diff = f"|dp|<={t.max_abs_diff:.1e}" if t.max_abs_diff is not None else ""
            verdict = "ok" if t.accepted else f"rejected{': ' + t.note if t.note else ''}"
            parts.append(f"{t.backend} {timing} {diff} {verdict}".replace("  ", " "))
        return f"backend {self.backend} ({self.reason}); " + "; ".join(parts)


def choose(trials: list[Trial]) -> str:
    """The rule of the module docstring: fastest accepted, an earlier (more exact) one kept unless >10 % slower."""
    usable = (t for t in trials if t.accepted and t.ms_per_image is not None)
    accepted = sorted(usable, key=lambda t: ORDER.index(t.backend))
    if not accepted:
        raise RuntimeError("no prediction backend met the accuracy bar on the calibration images")
    best = accepted[0]
    for t in accepted[1:]:
        if t.ms_per_image * MIN_GAIN < best.ms_per_image:  # type: ignore[operator]
            best = t
    return best.backend


def available_candidates(caps: CpuCaps, on_gpu: bool) -> list[str]:
    """The float32 candidates whose runtime imports here, in ORDER.

    Never a reduced-precision one, whatever the CPU offers (`caps.bf16` only enters the machine key): `auto` must
    give the same probabilities on every machine; bfloat16 is for `--precision bfloat16` to ask for.
    """
    if on_gpu:
        return ["torch"] if runtime_available("torch") else []
    float32 = [name for name in ORDER if BACKEND_PRECISION[name] == "float32"]
    return [name for name in float32 if runtime_available(BACKEND_RUNTIME[name])]


def calibration_images(card: ModelCard, n: int = N_CALIBRATION) -> np.ndarray:
    """(n, C, H, W) float32 in uint16 units: phantom mammograms (`mammokit.synth`), prepared as the run prepares.

    C = the run's input channels: 2 for a bilateral model (each image with another as its partner).

    Realistic content matters: on uniform noise a network's output saturates, and a bf16 error that would
    move a real image's probability would not show.
    """
    from mammokit.data.geometry import prepare_pixels
    from mammokit.scoring.core import images_to_input
    from mammokit.synth import render_view, sample_woman

    spec = card.input.preprocess
    h0, w0 = int(spec.height * 1.25), int(spec.width * 1.25)  # render larger: prepare crops and resizes down
    spacing = 240.0 / h0  # the phantom is a 24 cm film (its own scale), for physical-scale runs
    images = []
    for i in range(n):
        woman = sample_woman(i, seed=15, at_least_one_lesion=True)
        view = render_view(woman, ("L", "R")[i % 2], ("CC", "MLO")[i % 2], height=h0, width=w0)
        u16, _ = prepare_pixels(view.image, None, spec, spacing=(spacing, spacing))
        images.append(u16)
    if card.input.channels == 2:  # a bilateral model: each phantom view beside the other (both breasts)
        return images_to_input([np.stack([u16, images[(i + 1) % n]]) for i, u16 in enumerate(images)])
    return images_to_input(images)


def measure(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> tuple[float, np.ndarray]:
    """(median ms per image at batch 1, (n,) probabilities) of `fn` on each image of `x`, after one warm-up."""
    fn(x[:1])  # warm-up: allocations, oneDNN primitive creation, ONNX Runtime's first-run planning
    times, probs = [], []
    for i in range(len(x)):
        t0 = time.perf_counter()
        probs.append(np.asarray(fn(x[i : i + 1]), dtype=np.float64).reshape(-1))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), np.concatenate(probs)


def ensure_export(cache: BackendCache, *, torch_available: bool) -> Path | None:
    """The run's cached ONNX export, made now if missing or stale (None when it cannot be made here)."""
    fresh = cache.fresh_onnx(torch_available=torch_available)
    if fresh is not None or not torch_available:
        return fresh
    from mammokit.infer.onnx import export_onnx

    log.info("exporting %s to ONNX once for the onnx backend candidates (cached in %s)", cache.run_dir, cache.folder)
    try:
        _, diff = export_onnx(cache.run_dir, cache.onnx_path)
    except Exception as exc:  # an op the exporter cannot handle, a missing onnx package: the torch path remains
        log.warning("ONNX export of %s failed (%s: %s); ONNX runtimes are not candidates", cache.run_dir,
                    type(exc).__name__, exc)  # fmt: skip
        return None
    cache.record_export(diff)
    return cache.onnx_path


def _on_gpu(device: str) -> bool:
    if device in ("cpu",):
        return False
    if device != AUTO:
        return True  # cuda, cuda:1, gpu, mps: the user named an accelerator
    if not runtime_available("torch"):
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available()))


def select_backend(
    run_dir: str | Path,
    device: str = AUTO,
    *,
    channels_last: bool = True,
    refresh: bool = False,
    card: ModelCard | None = None,
) -> tuple[Selection, ScoringBackend]:
    """Choose (or reuse the stored choice of) the fastest backend within the bar; return it built.

    Args:
        run_dir: a whole-image run folder.
        device: "auto", "cpu", or an accelerator ("cuda", "mps", ...: torch, no measurement).
        channels_last: memory format of the torch candidates.
        refresh: measure again even when a selection for this machine is stored.
        card: the run's model card when the caller has read it already (`Predictor.from_run`).

    Returns:
        (the selection with its measurements, the chosen backend built by `infer.backends.build_backend`).
    """
    run_dir = Path(run_dir)
    card = card or read_card(run_dir)
    hw = (card.input.height, card.input.width)
    on_gpu = _on_gpu(device)
    caps = probe_cpu()
    key = machine_key(caps, "gpu:" + device if on_gpu else "cpu")
    torch_ok = runtime_available("torch")
    candidates = available_candidates(caps, on_gpu)
    if not candidates:
        raise RuntimeError("no prediction runtime is installed: install torch, or onnxruntime ('mammokit[onnx]')")
    if on_gpu:
        return Selection("torch", [], key, hw, _now(), "accelerator: torch on the device"), build_backend(
            "torch", run_dir, device, channels_last=channels_last, onnx_path=None, card=card
        )

    cache = BackendCache.open(run_dir)
    stored = None if refresh else cache.selection(key)
    if stored is not None and stored.get("backend") in candidates:
        selection = Selection.from_dict(stored)
        needs_onnx = selection.backend in ("onnx", "openvino")
        onnx_path = ensure_export(cache, torch_available=torch_ok) if needs_onnx else None
        if not needs_onnx or onnx_path is not None:
            log.info("%s: %s (measured on this machine %s; stored in %s)", run_dir, selection.backend,
                     selection.created, cache.folder)  # fmt: skip
            return selection, build_backend(selection.backend, run_dir, "cpu", channels_last=channels_last,
                                            onnx_path=onnx_path, card=card)  # fmt: skip

    if not torch_ok:  # nothing to measure against: the ONNX export made where torch was, if there is one
        onnx_path = cache.fresh_onnx(torch_available=False)
        if onnx_path is None or "onnx" not in candidates:
            raise RuntimeError(
                f"torch is not installed and {run_dir} has no ONNX export for onnxruntime: run `mammokit export "
                f"{run_dir}` where torch is installed and predict with --backend onnx, or install torch"
            )
        selection = Selection("onnx", [], key, hw, _now(), "torch not installed: the cached export, unmeasured")
        return selection, build_backend(
            "onnx", run_dir, "cpu", channels_last=channels_last, onnx_path=onnx_path, card=card
        )

    onnx_path = ensure_export(cache, torch_available=True) if {"onnx", "openvino"} & set(candidates) else None
    x = calibration_images(card)
    built: dict[str, ScoringBackend] = {}
    trials: list[Trial] = []
    reference: np.ndarray | None = None
    for name in candidates:  # "torch" first: the reference
        bar = BF16_BAR if BACKEND_PRECISION[name] == "bfloat16" else FP32_BAR
        try:
            backend = build_backend(name, run_dir, "cpu", channels_last=channels_last, onnx_path=onnx_path, card=card)
            ms, probs = measure(backend.prob_malignant, x)
        except Exception as exc:  # a runtime that cannot load or run this graph is not a candidate
            log.warning("backend %s cannot run %s: %s: %s", name, run_dir, type(exc).__name__, exc)
            trials.append(Trial(name, None, None, bar, False, f"{type(exc).__name__}: {str(exc)[:200]}"))
            continue
        if reference is None:
            reference = probs
        diff = float(np.abs(probs - reference).max())
        ok = diff <= bar
        trials.append(Trial(name, round(ms, 2), diff, bar, ok, "" if ok else f"max |dp| {diff:.1e} > {bar:.0e}"))
        if ok:
            built[name] = backend
    chosen = choose(trials)
    fastest = min((t for t in trials if t.accepted), key=lambda t: t.ms_per_image or 0.0)
    reason = "fastest within the bar" if chosen == fastest.backend else f"within {MIN_GAIN - 1:.0%} of the fastest"
    selection = Selection(chosen, trials, key, hw, _now(), reason)
    cache.record_selection(key, selection.to_dict())
    log.info("%s: %s", run_dir, selection.summary())
    return selection, built[chosen]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
