"""The HTML report: self-contained (no scripts, no external resources), readable content, renders in Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammokit.metrics import binary_curve, binary_report, pr_curve
from mammokit.report import pr_plot, reliability_plot, render_report, roc_plot

N_BOOT = 40


def _metrics() -> tuple[dict, dict]:
    """A metrics dict in the `mammokit evaluate` schema, built from the metric functions on arrays."""
    rng = np.random.default_rng(0)
    n = 160
    y = (rng.random(n) < 0.3).astype(int)
    patients = np.repeat(np.arange(n // 4), 4)
    p_a = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1, n))))
    p_b = 1 / (1 + np.exp(-(y - 0.5 + rng.normal(0, 1, n))))
    views = np.tile(["CC", "MLO"], n // 2)

    def report(yy, pp, gg, t):
        return binary_report(yy, pp, gg, model_threshold=t, n_boot=N_BOOT)

    def result(p, t):
        sub = {v: report(y[views == v], p[views == v], patients[views == v], t) for v in ("CC", "MLO")}
        return {
            "image": report(y, p, patients, t),
            "breast": report(y[::2], p[::2], patients[::2], t),
            "exam": report(y[::4], p[::4], patients[::4], t),
            "subgroups": {"view": sub},
            "calibration": {"method": "temperature", "ece_uncalibrated": 0.2, "fitted_on": "prep / val"},
        }

    models = [
        {"name": name, "arch": "whole_image", "task": "whole", "input_height": 1152, "input_width": 896,
         "pixel_mean": 0.449, "pixel_std": 0.226, "preprocess": {"crop_breast": True, "aspect": "stretch"},
         "threshold": 0.4, "threshold_rule": "youden on val", "calibration": {"method": "temperature"}}
        for name in ("resnet50-run", "<b>vgg16</b>")
    ]  # fmt: skip
    metrics = {
        "mammokit_version": "test",
        "created": "2026-01-01T00:00:00+00:00",
        "split": "test",
        "settings": {"tta": True, "aggregate": "mean", "n_boot": N_BOOT, "seed": 0, "ci_level": 0.95},
        "data": {"datasets": ["cbis-ddsm"], "n_images": n, "n_positive_images": int(y.sum()), "n_patients": n // 4,
                 "n_exams": n // 4, "n_breasts": n // 2, "n_excluded_unknown_label": 0, "prepared": "/data/prep",
                 "by_column": {"view": {"CC": n // 2, "MLO": n // 2}}},
        "models": models,
        "primary": "resnet50-run",
        "results": {"resnet50-run": result(p_a, 0.4), "<b>vgg16</b>": result(p_b, 0.4)},
        "delong": [{"a": "resnet50-run", "b": "<b>vgg16</b>", "auc_a": 0.8, "auc_b": 0.7, "z": 2.1, "p_value": 0.03}],
        "warnings": ["example note: calibration fitted in-sample"],
    }  # fmt: skip
    curve = binary_curve(y, p_a)
    image = metrics["results"]["resnet50-run"]["image"]
    recall, precision = pr_curve(y, p_a)
    plots = {
        "roc": roc_plot([{"name": "resnet50-run", "fpr": curve.fpr, "tpr": curve.tpr, "auc": image["auc"]["value"]}]),
        "pr": pr_plot([{"name": "resnet50-run", "recall": recall, "precision": precision, "ap": 0.6}], 0.3),
        "reliability": reliability_plot([{"name": "a", "ece": image["ece"], "reliability": image["reliability"]}]),
    }
    return metrics, plots


@pytest.fixture(scope="module")
def metrics_plots() -> tuple[dict, dict]:
    return _metrics()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory, metrics_plots) -> Path:
    metrics, plots = metrics_plots
    heatmap = io.BytesIO()
    Image.fromarray((np.indices((60, 40)).sum(0) * 2).astype(np.uint8)).save(heatmap, format="PNG")
    out = tmp_path_factory.mktemp("report") / "report.html"
    return render_report(metrics, plots, out, heatmaps=[("heatmap overlay of image 1", heatmap.getvalue())])


def test_report_is_self_contained(report_file):
    html = report_file.read_text()
    assert "<script" not in html.lower()  # nothing that could throw a JavaScript error
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html, re.I)  # no external resources
    assert "@import" not in html and "url(" not in html
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 4  # ROC, PR, reliability, one heatmap
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.width > 10 and im.height > 10


def test_report_content_for_a_clinical_reader(report_file, metrics_plots):
    metrics, _ = metrics_plots
    html = report_file.read_text()
    auc = metrics["results"]["resnet50-run"]["image"]["auc"]
    assert f"{auc['value']:.3f} ({auc['ci_low']:.3f}–{auc['ci_high']:.3f})" in html
    expected = [
        "How to read this report",
        "resamples <em>women</em>",
        "Threshold stored in the model",
        "Specificity fixed at 90 %",
        "Sensitivity fixed at 80 %",
        "missed cancers",
        "Per-breast ROC AUC",
        "ECE before calibration",
        "Subgroups (per image)",
        "DeLong test",
        "1152 x 896 px",
        "youden on val",
        "heatmap overlay of image 1",
        "example note",
    ]
    for text in expected:
        assert text in html, text
    assert "&lt;b&gt;vgg16&lt;/b&gt;" in html and "<b>vgg16</b>" not in html  # names are escaped


def test_report_rejects_non_png_images(tmp_path, metrics_plots):
    metrics, plots = metrics_plots
    with pytest.raises(ValueError, match="PNG"):
        render_report(metrics, {**plots, "roc": b"GIF89a..."}, tmp_path / "r.html")


# ------------------------------------------------------------------------------------------- headless Chromium


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (`make chromium` installs the Debian package `chromium`)")


def render_in_chromium(html_file: Path, png: Path, tmp_path: Path) -> list[str]:
    """Screenshot `html_file` into `png` with headless Chromium; returns the page's console messages."""
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={png}",
        "--window-size=1200,1600",
        html_file.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert png.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    # Console output of the page (console.* calls and uncaught exceptions) is logged as "...:CONSOLE:...".
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _not_blank(png: Path) -> tuple[float, float]:
    with Image.open(png) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    return float(grey.std()), float(np.mean(grey < 200))  # contrast, share of non-white pixels


def test_report_renders_in_headless_chromium_without_console_errors(report_file, tmp_path):
    png = tmp_path / "report.png"
    console = render_in_chromium(report_file, png, tmp_path)
    assert console == []
    std, ink = _not_blank(png)
    assert std > 20 and ink > 0.02, f"screenshot looks blank (std {std:.1f}, non-white share {ink:.3f})"


def test_console_error_detection_works_on_a_broken_page(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><h1>broken</h1><script>undefinedFunction();</script></body></html>")
    console = render_in_chromium(bad, tmp_path / "bad.png", tmp_path)
    assert any("undefinedFunction" in line for line in console)
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    render_in_chromium(blank, tmp_path / "blank.png", tmp_path)
    std, _ = _not_blank(tmp_path / "blank.png")
    assert std < 1.0  # the blankness check would catch an empty page


def test_number_formatting_for_readers():
    from mammokit.report.html import fmt_ci, fmt_p

    assert fmt_ci({"value": 0.81234, "ci_low": 0.7, "ci_high": 0.9}) == "0.812 (0.700–0.900)"
    assert fmt_ci({"value": 0.861, "ci_low": 0.8, "ci_high": float("nan")}, percent=True) == "86.1 %"
    assert fmt_ci({"value": float("nan")}) == "n/a" and fmt_ci({"value": None}) == "n/a"
    assert fmt_p(0.03) == "0.0300" and fmt_p(1e-9) == "< 0.0001" and fmt_p(None) == "n/a"
