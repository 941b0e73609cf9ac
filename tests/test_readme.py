"""The README's quick-start lines run as written (small demo variant), so the README cannot rot."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[list[str]]:
    """The lines of the README's fenced block that runs the small demo."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    block = next(b for b in blocks if "--preset small" in b)
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def _readme_demo_output() -> list[str]:
    """The README's "expected output" block of `make demo` (the fenced block that ends with the report line)."""
    blocks: list[list[str]] = []
    inside = False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append([])
        elif inside:
            blocks[-1].append(line)
    return next(b for b in blocks if any(line.startswith("mammokit demo finished in") for line in b))


def _shape(lines: list[str], out: str) -> list[str]:
    """Lines with numbers aside: every run of digits is one '0', and the demo's folder is `demo-output`."""
    return [re.sub(r"\d+", "0", line.replace(out, "demo-output")).rstrip() for line in lines]


def test_readme_small_demo_runs_end_to_end(tmp_path):
    commands = _readme_commands()
    assert commands[0][:3] == [".venv/bin/mammokit", "demo", "--preset"]
    for argv in commands:
        # `.venv/bin/mammokit` is this interpreter's mammokit; run from tmp_path so outputs land there
        cmd = [sys.executable, "-m", "mammokit", *argv[1:]]
        # one stream, as a terminal shows it (step lines on stdout, warnings on stderr, in the order written)
        proc = subprocess.run(
            cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
        )
        assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout[-6000:]}"
        if argv[1] == "demo":
            # what a newcomer sees is what the README shows, line by line (numbers aside); the rest is in the log
            assert _shape(proc.stdout.splitlines(), argv[argv.index("--out") + 1]) == _shape(
                _readme_demo_output(), "demo-output"
            ), proc.stdout
            assert "GPU available" in (tmp_path / "demo-small" / "mammokit.log").read_text()
    out = tmp_path / "demo-small"
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    auc = next(iter(metrics["results"].values()))["image"]["auc"]
    # the reported AUC is the one an independent implementation gives on the predictions evaluate wrote;
    # the CSV keeps 6 significant digits, and rounding (monotone) can only tie a positive with a negative,
    # which moves the AUC by half a pair each: that is the whole tolerance
    scored = pd.read_csv(out / "eval" / "predictions.csv")
    assert len(scored) == metrics["data"]["n_images"] and scored["label"].nunique() == 2
    pos = scored.loc[scored["label"] == 1, "prob_malignant"].to_numpy()
    neg = scored.loc[scored["label"] == 0, "prob_malignant"].to_numpy()
    tied_pairs = int((pos[:, None] == neg[None, :]).sum())
    oracle = roc_auc_score(scored["label"], scored["prob_malignant"])
    assert abs(auc["value"] - oracle) <= 0.5 * tied_pairs / (len(pos) * len(neg)) + 1e-12
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    html = (out / "eval" / "report.html").read_text()
    assert "AUC" in html and html.count("data:image/png;base64,") >= 4  # ROC, PR, reliability + overlays
    # every predicted image has a Grad-CAM panel, one patch-classifier panel per patch class and the summed
    # malignant map, each as a readable PNG panel and as the raw .npy map in the original geometry
    patch_classes = json.loads((out / "runs" / "patch" / "model.json").read_text())["labels"]
    kinds = {"gradcam", "patch_malignant", *(f"patch_{c}" for c in patch_classes)}
    expected_kinds = kinds | {f"{k}.npy" for k in kinds}
    predicted = pd.read_csv(out / "predict" / "predictions.csv", dtype={"image_id": str})
    assert len(predicted) >= 2
    for image_id, listed in zip(predicted["image_id"], predicted["heatmaps"], strict=True):
        names = listed.split(";")
        assert {n.removeprefix(f"heatmaps/{image_id}_").removesuffix(".png") for n in names} == expected_kinds
        assert all((out / "predict" / n).is_file() for n in names)
    # the ONNX export predicts what torch predicted for the same raw DICOMs
    torch_pred = pd.read_csv(out / "predict" / "predictions.csv").set_index("image_id")["prob_malignant"]
    onnx_pred = pd.read_csv(out / "predict-onnx" / "predictions.csv").set_index("image_id")["prob_malignant"]
    assert len(onnx_pred) == len(torch_pred) >= 2
    assert (onnx_pred.sort_index() - torch_pred.sort_index()).abs().max() <= 1e-4
