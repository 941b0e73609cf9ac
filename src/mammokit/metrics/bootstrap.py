"""Percentile bootstrap confidence intervals, clustered by patient.

Images of one woman are not independent (two breasts x two views, often several exams), so the
bootstrap resamples *groups* (patients) with replacement and takes all images of each drawn patient.
Resampling images instead would pretend there is more information than there is and give intervals
that are too narrow. Replicates where the metric is undefined (e.g. a resample with no cancers) are
dropped and counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], "float | np.ndarray"]


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimate(s) on the full data and percentile interval(s) from the bootstrap.

    Scalars for a scalar metric; arrays of the same shape for a vector-valued one.
    """

    estimate: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray
    n_boot: int  # replicates drawn
    n_valid: int | np.ndarray  # replicates where the metric was defined (finite)
    n_groups: int  # clusters resampled (patients, or images when no groups were given)
    alpha: float

    def as_dict(self) -> dict:
        """JSON-able {"value", "ci_low", "ci_high", ...} for a scalar metric."""
        return {
            "value": float(self.estimate),
            "ci_low": float(self.low),
            "ci_high": float(self.high),
            "ci_level": 1.0 - self.alpha,
            "n_boot": self.n_boot,
            "n_boot_valid": int(self.n_valid),
        }


class ClusterSampler:
    """Draws bootstrap index arrays that resample whole groups with replacement.

    Built once per data set (a stable sort of the group ids), then each `draw()` is O(n).
    """

    def __init__(self, groups: np.ndarray | None, n: int) -> None:
        if groups is None:
            self.order = np.arange(n)
            self.starts = np.arange(n)
            self.sizes = np.ones(n, dtype=np.int64)
        else:
            groups = np.asarray(groups)
            if groups.shape != (n,):
                raise ValueError(f"groups must have one entry per image ({n}), got shape {groups.shape}")
            _, inverse = np.unique(groups, return_inverse=True)
            self.order = np.argsort(inverse, kind="stable")
            self.sizes = np.bincount(inverse).astype(np.int64)
            self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.n_groups = len(self.sizes)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Indices (into the original arrays) of one clustered resample."""
        chosen = rng.integers(0, self.n_groups, size=self.n_groups)
        sizes = self.sizes[chosen]
        # Position j of the output takes element (start of its group + rank within the group).
        offsets = np.repeat(self.starts[chosen] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        return self.order[offsets + np.arange(int(sizes.sum()))]


def bootstrap_ci(
    metric_fn: MetricFn,
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray | None = None,
    n: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Percentile bootstrap CI of `metric_fn(y, p)`, resampling whole `groups` (e.g. patient ids).

    Args:
        metric_fn: (y, p) -> float or 1-D array of floats (several metrics from one resample).
        y: (n,) labels.
        p: (n,) scores.
        groups: (n,) cluster ids (patients); None resamples single images.
        n: number of bootstrap replicates.
        seed: seed of the NumPy generator (same seed, same intervals).
        alpha: 1 - confidence level (0.05 gives a 95 % interval).

    Returns:
        BootstrapResult; `low`/`high` are NaN where fewer than 10 replicates were defined.
    """
    if n < 1:
        raise ValueError(f"the number of bootstrap replicates must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y = np.asarray(y)
    p = np.asarray(p)
    sampler = ClusterSampler(groups, len(y))
    estimate = np.asarray(metric_fn(y, p), dtype=np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty((n, *estimate.shape), dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class resamples are expected; they are counted below
        for b in range(n):
            idx = sampler.draw(rng)
            stats[b] = metric_fn(y[idx], p[idx])
    finite = np.isfinite(stats)
    n_valid = finite.sum(axis=0)
    low = np.full(estimate.shape, np.nan)
    high = np.full(estimate.shape, np.nan)
    flat_stats = stats.reshape(n, -1)
    flat_finite = finite.reshape(n, -1)
    flat_low, flat_high = low.reshape(-1), high.reshape(-1)
    for k in range(flat_stats.shape[1]):
        values = flat_stats[flat_finite[:, k], k]
        if values.size >= 10:
            flat_low[k], flat_high[k] = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    if estimate.ndim == 0:
        return BootstrapResult(float(estimate), float(low), float(high), n, int(n_valid), sampler.n_groups, alpha)
    return BootstrapResult(estimate, low, high, n, n_valid, sampler.n_groups, alpha)
