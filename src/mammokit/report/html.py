"""One self-contained HTML evaluation report (plots inlined as base64 PNG, no scripts, no external resources).

The page is written for a clinical researcher: the headline AUC with its confidence interval first, then
"how to read this report", operating points, breast/exam level, comparisons, calibration, subgroups, the
model card and the data. Its input is the `metrics.json` dict written by `mammokit.engine.evaluate`
(schema documented in docs/evaluation.md) plus PNG plots, so a report can be re-rendered from a stored
metrics file without re-running any model.
"""

from __future__ import annotations

import base64
import html
import math
import string
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mammokit.utils.atomic import atomic_write_text
from mammokit.version import __version__

PlotSource = bytes | str | Path


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def fmt_num(x: Any, digits: int = 3) -> str:
    """Number with `digits` decimals, or "n/a" for missing/NaN."""
    return f"{x:.{digits}f}" if _finite(x) else "n/a"


def fmt_p(p: Any) -> str:
    """p-value with 4 decimals, or "< 0.0001"."""
    if not _finite(p):
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_ci(d: Mapping[str, Any] | None, *, percent: bool = False) -> str:
    """{"value", "ci_low", "ci_high"} -> "0.812 (95 % CI 0.771–0.853)" or "81.2 % (74.0–88.1)"."""
    if not d or not _finite(d.get("value")):
        return "n/a"
    scale, digits, unit = (100.0, 1, " %") if percent else (1.0, 3, "")
    text = f"{d['value'] * scale:.{digits}f}{unit}"
    if _finite(d.get("ci_low")) and _finite(d.get("ci_high")):
        text += f" ({d['ci_low'] * scale:.{digits}f}–{d['ci_high'] * scale:.{digits}f})"
    return text


def _img_tag(src: PlotSource, alt: str) -> str:
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    if not data.startswith(b"\x89PNG"):
        raise ValueError(f"report images must be PNG ({alt!r} is not)")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            cells.append(f"<td{cls}>{_esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _headline(metrics: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    image = result["image"]
    level = metrics.get("settings", {}).get("ci_level", 0.95)
    cards = [
        f'<div class="card"><div class="label">Per-image ROC AUC ({level * 100:.0f} % CI)</div>'
        f'<div class="big">{fmt_num(image["auc"]["value"])}</div>'
        f"<div>{_esc(fmt_ci(image['auc']))}</div></div>"
    ]
    for lvl, name in (("breast", "Per-breast"), ("exam", "Per-exam")):
        if result.get(lvl):
            cards.append(
                f'<div class="card"><div class="label">{name} ROC AUC</div>'
                f'<div class="big">{fmt_num(result[lvl]["auc"]["value"])}</div>'
                f"<div>{_esc(fmt_ci(result[lvl]['auc']))}</div></div>"
            )
    cards.append(
        f'<div class="card"><div class="label">{_esc(str(metrics.get("split", "")).capitalize())} images</div>'
        f'<div class="big">{image["n"]}</div>'
        f"<div>{image['n_groups']} women, {image['n_positive']} malignant images</div></div>"
    )
    return '<div class="headline">' + "".join(cards) + "</div>"


HOW_TO_READ = """
<dl class="howto">
<dt>ROC AUC</dt><dd>The probability that the model gives a randomly chosen image with cancer a higher score than a
randomly chosen image without. 0.5 is chance, 1.0 is perfect separation. It does not depend on any threshold.</dd>
<dt>Confidence intervals (CI)</dt><dd>Ranges in brackets are $level % percentile bootstrap intervals. The bootstrap
resamples <em>women</em>, not images ($n_boot resamples), because the images of one woman are correlated;
resampling images would give intervals that are too narrow.</dd>
<dt>Sensitivity / specificity</dt><dd>Sensitivity: the share of malignant images the model calls positive.
Specificity: the share of non-malignant images it calls negative. Both depend on the threshold applied to the
predicted probability.</dd>
<dt>Operating points</dt><dd>Thresholds chosen by a rule. <em>Threshold stored in the model</em> was fixed before
this evaluation (normally on validation data) and is the fairest estimate of performance in use. <em>Youden</em>
and the fixed-specificity/sensitivity rows choose the threshold on these same images, so they describe what
the ROC curve allows rather than what a fixed threshold will achieve; their intervals include the uncertainty of
choosing the threshold.</dd>
<dt>Breast and exam level</dt><dd>Image scores are combined over the views of one breast ($aggregate), and an
exam takes the highest of its breasts. A breast (exam) counts as malignant when any of its images is.</dd>
<dt>Calibration</dt><dd>Whether a predicted probability of, say, 0.3 means cancer in about 30 % of such images.
ECE (expected calibration error) is the average gap between predicted and observed rates; 0 is perfect. Calibration
does not change AUC.</dd>
<dt>Subgroups</dt><dd>The same metrics within views, breast densities, datasets/sites and vendors. Small groups give
wide intervals; an AUC of n/a means the group has no cancers or no non-cancers.</dd>
</dl>
"""


def _level_table(result: Mapping[str, Any]) -> str:
    rows = []
    for lvl, name in (("image", "Image"), ("breast", "Breast"), ("exam", "Exam")):
        r = result.get(lvl)
        if not r:
            continue
        rows.append([name, r["n"], r["n_positive"], r["n_groups"], fmt_ci(r["auc"]), fmt_ci(r["auprc"])])
    return _table(["Level", "N", "Malignant", "Women", "ROC AUC (CI)", "AUPRC (CI)"], rows, numeric=(1, 2, 3))


def _operating_table(report: Mapping[str, Any]) -> str:
    rows = []
    for pt in report["operating_points"]:
        c = pt.get("confusion") or {}
        rows.append(
            [
                pt["label"],
                fmt_num(pt["threshold"], 4),
                fmt_ci(pt["sensitivity"], percent=True),
                fmt_ci(pt["specificity"], percent=True),
                c.get("tp", "n/a"),
                c.get("fp", "n/a"),
                c.get("tn", "n/a"),
                c.get("fn", "n/a"),
            ]
        )
    header = ["Rule", "Threshold", "Sensitivity (CI)", "Specificity (CI)", "TP", "FP", "TN", "FN"]
    return _table(header, rows, numeric=(1, 4, 5, 6, 7))


def _confusion(report: Mapping[str, Any]) -> str:
    cm = report["confusion_matrix"]
    if "tp" not in cm:
        return "<p>n/a (only one class present)</p>"
    label = next((p["label"] for p in report["operating_points"] if p["key"] == cm["rule"]), cm["rule"])
    return (
        f"<p>At threshold {fmt_num(cm['threshold'], 4)} ({_esc(label)}):</p>"
        "<table><thead><tr><th></th><th>Called malignant</th><th>Called not malignant</th></tr></thead><tbody>"
        f'<tr><th>Malignant</th><td class="num">{cm["tp"]} (true positives)</td>'
        f'<td class="num">{cm["fn"]} (missed cancers)</td></tr>'
        f'<tr><th>Not malignant</th><td class="num">{cm["fp"]} (false alarms)</td>'
        f'<td class="num">{cm["tn"]} (true negatives)</td></tr></tbody></table>'
    )


def _models_table(metrics: Mapping[str, Any]) -> str:
    rows = []
    for name, result in metrics["results"].items():
        rows.append(
            [name, fmt_ci(result["image"]["auc"]), fmt_ci(result["image"]["auprc"]), fmt_num(result["image"]["ece"])]
        )
    html_out = _table(["Model", "Per-image AUC (CI)", "AUPRC (CI)", "ECE"], rows)
    tests = metrics.get("delong") or []
    if tests:
        drows = [
            [t["a"], t["b"], fmt_num(t["auc_a"]), fmt_num(t["auc_b"]), fmt_num(t["z"], 2), fmt_p(t["p_value"])]
            for t in tests
        ]
        html_out += "<h3>DeLong test (same images, two-sided)</h3>"
        html_out += _table(["Model A", "Model B", "AUC A", "AUC B", "z", "p-value"], drows, numeric=(2, 3, 4, 5))
        html_out += (
            '<p class="muted">DeLong assumes independent images; with several images per woman the p-value is '
            "somewhat optimistic. The bootstrap intervals above do not make that assumption.</p>"
        )
    return html_out


def _calibration_section(result: Mapping[str, Any]) -> str:
    cal = result.get("calibration") or {}
    rows = [["ECE of the reported probabilities", fmt_num(result["image"]["ece"])]]
    if cal.get("method"):
        rows.append(["Calibration map applied", cal["method"]])
        if _finite(cal.get("ece_uncalibrated")):
            rows.append(["ECE before calibration", fmt_num(cal["ece_uncalibrated"])])
        if cal.get("fitted_on"):
            rows.append(["Fitted on", cal["fitted_on"]])
    else:
        rows.append(["Calibration map applied", "none (raw model probabilities)"])
    out = _table(["", ""], rows)
    if cal.get("in_sample"):
        out += (
            '<p class="note">The calibration map was fitted on these same images, so the calibrated ECE is '
            "optimistic. Fit on the validation split and evaluate on the test split.</p>"
        )
    return out


def _subgroup_table(subgroups: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    rule = ""
    for column, values in subgroups.items():
        for value, r in values.items():
            pt = r["operating_points"][0] if r.get("operating_points") else None
            rule = rule or (pt["label"] if pt else "")
            sens = fmt_ci(pt["sensitivity"], percent=True) if pt else "n/a"
            spec = fmt_ci(pt["specificity"], percent=True) if pt else "n/a"
            rows.append([column, value, r["n"], r["n_positive"], fmt_ci(r["auc"]), sens, spec])
    header = ["Variable", "Group", "Images", "Malignant", "AUC (CI)", "Sensitivity (CI)", "Specificity (CI)"]
    intro = f"<p>Sensitivity and specificity at: {_esc(rule)}.</p>" if rule else ""
    return intro + _table(header, rows, numeric=(2, 3))


_PREPROCESS_KEYS = ("crop_breast", "canonical_side", "aspect", "interpolation", "voi", "intensity")


def _model_card_table(models: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for m in models:
        pre = m.get("preprocess") or {}
        pre_text = ", ".join(
            f"{k}={pre[k]}"
            for k in ("crop_breast", "canonical_side", "aspect", "interpolation", "voi", "intensity")
            if k in pre
        )
        rows.append(
            [
                m["name"],
                f"{m.get('arch', '?')} ({m.get('task', '?')})",
                f"{m.get('input_height', '?')} x {m.get('input_width', '?')} px, {m.get('channels', 1)} channel(s)",
                f"mean {fmt_num(m.get('pixel_mean'), 3)}, std {fmt_num(m.get('pixel_std'), 3)}",
                pre_text or "n/a",
                f"{fmt_num(m.get('threshold'), 4)} ({m.get('threshold_rule', '')})",
                (m.get("calibration") or {}).get("method", "none"),
            ]
        )
    header = ["Run", "Architecture", "Input", "Normalisation", "Preprocessing", "Threshold", "Calibration"]
    return _table(header, rows)


def _data_table(data: Mapping[str, Any]) -> str:
    labels = [
        ("datasets", "Datasets"),
        ("split", "Split"),
        ("n_images", "Images"),
        ("n_positive_images", "Malignant images"),
        ("n_patients", "Women"),
        ("n_exams", "Exams"),
        ("n_breasts", "Breasts"),
        ("n_positive_breasts", "Malignant breasts"),
        ("n_excluded_unknown_label", "Images excluded (unknown label)"),
    ]
    rows = [
        [name, ", ".join(map(str, data[key])) if isinstance(data[key], list) else data[key]]
        for key, name in labels
        if key in data
    ]
    if "n_shrunk_to_fit" in data:  # physical-scale mode: breasts larger than the canvas, fitted, never refused
        n = data["n_shrunk_to_fit"]
        detail = ""
        if n:
            detail = f" (by up to {data['max_fit_scale']:.2f}x, median {data['median_fit_scale_of_shrunk']:.2f}x)"
        rows.append(["Images shrunk to fit the canvas", f"{n}{detail}"])
    for column, counts in (data.get("by_column") or {}).items():
        rows.append([f"Images by {column}", ", ".join(f"{k}: {v}" for k, v in counts.items())])
    return _table(["", ""], rows)


def _heatmap_section(panels: Sequence[Mapping[str, Any]]) -> str:
    """Highest-scoring malignant and non-malignant images with their heatmap, probability and label."""
    kind = panels[0].get("kind", "gradcam")
    out = [
        '<h2 id="heatmaps">Where the model looks</h2>',
        f"<p>Heatmap ({_esc(kind)}) of the highest-scoring images of each class: on the malignant ones the "
        "heat should sit on the lesion (outlined in cyan where the dataset has an outline); on the "
        "non-malignant ones it shows what drives a false alarm. Each panel shows the prepared image and "
        "the overlay side by side, with the colour scale on the right.</p>",
    ]
    for group in ("malignant", "not malignant"):
        chosen = [p for p in panels if p.get("group") == group]
        if not chosen:
            continue
        out.append(f"<h3>Highest-scoring {_esc(group)} images ({len(chosen)})</h3><div class='plots heatmaps'>")
        for p in chosen:
            label = "malignant" if int(p["label"]) == 1 else "not malignant"
            caption = f"{p['image_id']}: p(malignant) {float(p['prob_malignant']):.3f}, label {label}"
            out.append(f"<figure>{_img_tag(p['png'], caption)}<figcaption>{_esc(caption)}</figcaption></figure>")
        out.append("</div>")
    return "".join(out)


def render_report(
    metrics: Mapping[str, Any],
    plots: Mapping[str, PlotSource],
    out_path: str | Path,
    *,
    title: str | None = None,
    heatmaps: Sequence[tuple[str, PlotSource]] = (),
    heatmap_panels: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write one self-contained HTML report and return its path.

    Args:
        metrics: the evaluation dict (`metrics.json` of `mammokit evaluate`).
        plots: PNG bytes or files keyed "roc", "pr", "reliability" (missing keys are skipped; other keys
            are shown after them with the key as caption).
        out_path: where to write the .html file (atomically).
        title: page title; default names the dataset and split.
        heatmaps: (caption, PNG) pairs, e.g. heatmap overlays, shown in their own section.
        heatmap_panels: the "Where the model looks" section: dicts with image_id, label, group,
            prob_malignant, kind and png (`explain.report_panels.report_panels`).
    """
    primary = metrics["primary"]
    result = metrics["results"][primary]
    data = metrics.get("data", {})
    settings = metrics.get("settings", {})
    datasets = ", ".join(data.get("datasets", [])) or "dataset"
    title = title or f"Evaluation of {primary} on {datasets} ({metrics.get('split', '?')} split)"
    parts: list[str] = [f"<h1>{_esc(title)}</h1>"]
    parts.append(
        f'<div class="subtitle">mammokit {_esc(metrics.get("mammokit_version", __version__))} · '
        f"{_esc(metrics.get('created', ''))} · test-time augmentation: "
        f"{'on (4 flips averaged)' if settings.get('tta') else 'off'}"
        + (f" · ensemble of {len(metrics.get('models', []))} runs" if len(metrics.get("models", [])) > 1 else "")
        + "</div>"
    )
    parts.append(_headline(metrics, result))
    for warning in metrics.get("warnings", []):
        parts.append(f'<p class="note">{_esc(warning)}</p>')

    how = string.Template(HOW_TO_READ).safe_substitute(
        level=f"{settings.get('ci_level', 0.95) * 100:.0f}",
        n_boot=settings.get("n_boot", "?"),
        aggregate=f"{settings.get('aggregate', 'mean')} over views",
    )
    parts.append("<h2>How to read this report</h2>" + how)

    parts.append("<h2>Discrimination</h2>")
    figures = []
    captions = {
        "roc": "ROC curve of the per-image scores; markers show the operating points in the table below.",
        "pr": "Precision-recall curve: precision is the share of positive calls that are cancers.",
    }
    for key in ("roc", "pr"):
        if key in plots:
            figures.append(
                f"<figure>{_img_tag(plots[key], key)}<figcaption>{_esc(captions[key])}</figcaption></figure>"
            )
    parts.append('<div class="plots">' + "".join(figures) + "</div>")
    parts.append("<h3>Image, breast and exam level</h3>" + _level_table(result))
    parts.append("<h3>Operating points (per image)</h3>" + _operating_table(result["image"]))
    parts.append("<h3>Confusion matrix (per image)</h3>" + _confusion(result["image"]))
    if result.get("breast"):
        parts.append("<h3>Operating points (per breast)</h3>" + _operating_table(result["breast"]))

    if len(metrics["results"]) > 1:
        parts.append("<h2>Models compared</h2>" + _models_table(metrics))

    parts.append("<h2>Calibration</h2>")
    if "reliability" in plots:
        parts.append(
            f'<div class="plots"><figure>{_img_tag(plots["reliability"], "reliability")}<figcaption>Points on the '
            "diagonal are well calibrated; below it the model over-estimates the risk, above it under-estimates."
            "</figcaption></figure></div>"
        )
    parts.append(_calibration_section(result))

    if result.get("subgroups"):
        parts.append("<h2>Subgroups (per image)</h2>" + _subgroup_table(result["subgroups"]))

    if heatmap_panels:
        parts.append(_heatmap_section(heatmap_panels))

    extra = [k for k in plots if k not in ("roc", "pr", "reliability")]
    if extra or heatmaps:
        parts.append("<h2>Images</h2><div class='plots'>")
        for key in extra:
            parts.append(f"<figure>{_img_tag(plots[key], key)}<figcaption>{_esc(key)}</figcaption></figure>")
        for caption, src in heatmaps:
            parts.append(f"<figure>{_img_tag(src, caption)}<figcaption>{_esc(caption)}</figcaption></figure>")
        parts.append("</div>")

    parts.append("<h2>Model</h2>" + _model_card_table(metrics.get("models", [])))
    parts.append("<h2>Data</h2>" + _data_table({**data, "split": metrics.get("split", "?")}))
    method_bits = [
        f"bootstrap resamples: {settings.get('n_boot', '?')} (clustered by woman, percentile intervals)",
        f"seed: {settings.get('seed', '?')}",
        f"aggregation over views: {settings.get('aggregate', '?')}",
        f"prepared data: {data.get('prepared', '?')}",
    ]
    parts.append("<h2>Methods</h2><p class='muted'>" + "; ".join(_esc(b) for b in method_bits) + ".</p>")

    template = string.Template(resources.files("mammokit.report").joinpath("template.html").read_text("utf-8"))
    page = template.substitute(title=_esc(title), version=_esc(__version__), body="\n".join(parts))
    out_path = Path(out_path)
    atomic_write_text(out_path, page)
    return out_path
