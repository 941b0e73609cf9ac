"""ROC, precision-recall and reliability plots as PNG bytes (matplotlib, Agg canvas, no global backend change).

Each function takes plain arrays/dicts (one entry per model or level) and returns PNG bytes, which
the caller writes to a file and/or inlines into the HTML report.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mammokit.metrics.curves import binary_curve, pr_curve

_SIZE = (5.2, 4.6)  # inches; 100 dpi -> 520 x 460 px, readable when two sit side by side
_DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # Fixed margins instead of bbox_inches="tight", which draws the figure twice (the slow part on CPU).
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _figure(height: float = _SIZE[1]) -> Figure:
    fig = Figure(figsize=(_SIZE[0], height))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.1 * _SIZE[1] / height, top=1 - 0.07 * _SIZE[1] / height)
    return fig


def _fmt_ci(value: float, low: float | None, high: float | None) -> str:
    if low is None or high is None or not np.isfinite(low) or not np.isfinite(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def roc_plot(series: Sequence[dict[str, Any]], points: Sequence[dict[str, Any]] = ()) -> bytes:
    """ROC curves.

    Args:
        series: dicts with "name", "fpr", "tpr" (arrays), "auc" and optional "ci" (low, high).
        points: operating points to mark: dicts with "label", "sensitivity", "specificity".
    """
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="chance (AUC 0.5)")
    for s in series:
        low, high = s.get("ci") or (None, None)
        # Straight segments between distinct thresholds: tied scores give the diagonal the AUC counts as 1/2.
        ax.plot(s["fpr"], s["tpr"], lw=2, label=f"{s['name']}: AUC {_fmt_ci(s['auc'], low, high)}")
    markers = "os^vDP*X"
    for i, pt in enumerate(points):
        if np.isfinite(pt["sensitivity"]) and np.isfinite(pt["specificity"]):
            ax.plot(1 - pt["specificity"], pt["sensitivity"], markers[i % len(markers)], ms=7, label=pt["label"])
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title("ROC curve")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def pr_plot(series: Sequence[dict[str, Any]], prevalence: float) -> bytes:
    """Precision-recall curves; `series` dicts hold "name", "recall", "precision", "ap" and optional "ci"."""
    fig = _figure()
    ax = fig.add_subplot()
    if np.isfinite(prevalence):
        ax.axhline(prevalence, color="0.7", lw=1, ls="--", label=f"chance (prevalence {prevalence:.2f})")
    for s in series:
        low, high = s.get("ci") or (None, None)
        # where="pre": each precision holds on the recall interval ending at its point (average precision's sum).
        ax.step(s["recall"], s["precision"], where="pre", lw=2, label=f"{s['name']}: AP {_fmt_ci(s['ap'], low, high)}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    ax.set_title("Precision-recall curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    return _png(fig)


def reliability_plot(series: Sequence[dict[str, Any]]) -> bytes:
    """Reliability diagram with a histogram of predictions below it.

    Args:
        series: dicts with "name", "ece" and "reliability" (the dict of `metrics.calibration.reliability_curve`,
            arrays or lists: "lower", "upper", "count", "mean_predicted", "fraction_positive").
    """
    fig = _figure(_SIZE[1] + 1.2)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    hist = fig.add_subplot(grid[1], sharex=ax)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="perfect calibration")
    n_series = max(len(series), 1)
    for i, s in enumerate(series):
        rel = {k: np.asarray(v, dtype=float) for k, v in s["reliability"].items()}
        used = rel["count"] > 0
        ax.plot(rel["mean_predicted"][used], rel["fraction_positive"][used], "o-", lw=2, ms=5,
                label=f"{s['name']}: ECE {s['ece']:.3f}")  # fmt: skip
        width = (rel["upper"] - rel["lower"]) / n_series
        hist.bar(rel["lower"] + i * width, rel["count"], width=width, align="edge", alpha=0.7)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), ylabel="observed fraction with cancer")
    ax.set_title("Reliability diagram")
    ax.tick_params(labelbottom=False)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    hist.set(xlabel="predicted probability of malignancy", ylabel="images")
    hist.grid(alpha=0.3)
    return _png(fig)


def evaluation_plots(
    curves: Sequence[dict[str, Any]],
    main_report: dict[str, Any],
    reliability: Sequence[tuple[str, dict[str, Any]]],
) -> dict[str, bytes]:
    """The three plots of an evaluation: {"roc", "pr", "reliability"} -> PNG bytes.

    Args:
        curves: dicts with "name", "y" (labels), "p" (probabilities) and "report" (its `binary_report`);
            curves with a single class are skipped.
        main_report: the headline `binary_report`; its operating points are marked on the ROC plot.
        reliability: (name, `binary_report`) pairs for the reliability diagram.
    """
    roc_series, pr_series = [], []
    for c in curves:
        rep = c["report"]
        if rep["n_positive"] == 0 or rep["n_negative"] == 0:
            continue
        curve = binary_curve(c["y"], c["p"])
        auc, ap = rep["auc"], rep["auprc"]
        roc_series.append(
            {
                "name": c["name"],
                "fpr": curve.fpr,
                "tpr": curve.tpr,
                "auc": auc["value"],
                "ci": (auc["ci_low"], auc["ci_high"]),
            }
        )
        recall, precision = pr_curve(c["y"], c["p"])
        pr_series.append(
            {
                "name": c["name"],
                "recall": recall,
                "precision": precision,
                "ap": ap["value"],
                "ci": (ap["ci_low"], ap["ci_high"]),
            }
        )
    points = [
        {"label": pt["label"], "sensitivity": pt["sensitivity"]["value"], "specificity": pt["specificity"]["value"]}
        for pt in main_report["operating_points"]
    ]
    rel_series = [{"name": name, "ece": rep["ece"], "reliability": rep["reliability"]} for name, rep in reliability]
    return {
        "roc": roc_plot(roc_series, points),
        "pr": pr_plot(pr_series, main_report["prevalence"]),
        "reliability": reliability_plot(rel_series),
    }
