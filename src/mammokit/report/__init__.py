"""Evaluation report: matplotlib plots (PNG) and one self-contained HTML page with everything inlined."""

from mammokit.report.html import render_report
from mammokit.report.plots import evaluation_plots, pr_plot, reliability_plot, roc_plot

__all__ = ["evaluation_plots", "pr_plot", "reliability_plot", "render_report", "roc_plot"]
