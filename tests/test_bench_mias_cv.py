"""`benchmarks/bench_mias_cv.py`: folds of women, the steps each fold runs, pooling and the summary.

Training is replaced by a recording runner (the real commands are covered by their own tests and take
minutes here): it writes what each `mammokit` step would write (a run's `model.json`, an evaluation's
`predictions.csv`), so what is checked is the benchmark's own logic: no woman in two folds, inner
validation women outside the fold's test women, every image predicted exactly once out of fold, the seeds
of `--whole-seeds` members, the ensemble evaluated on all of them, and resuming without re-running a step.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _bench() -> ModuleType:
    return _load("bench_mias_cv")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `prepare mini-mias` (physical scale) of a small synthetic mini-MIAS cohort."""
    from mammokit.data.prepare import prepare_dataset
    from mammokit.data.prepare_config import PrepareConfig
    from test_source_cbis_ddsm import synth_or_skip

    root = tmp_path_factory.mktemp("cv")
    synth_or_skip("mini-mias", root / "raw", women=20, seed=3, height=160, width=128)
    from mammokit.preprocess import PreprocessSpec

    cfg = PrepareConfig(preprocess=PreprocessSpec(height=96, width=64, pixel_spacing=0.4), workers=1)
    prepare_dataset("mini-mias", root / "raw", root / "prepared", cfg, progress=False)
    return root / "prepared"


class RecordingRunner:
    """Stands in for `StepTimer`: records each step's argv and writes the files the step would write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: dict[str, dict[str, float]] = {}
        self.steps: list[tuple[str, list[str]]] = []

    def run(self, name: str, argv: list[str], log_file: Path, ok_codes: tuple[int, ...] = (0,)) -> int:
        self.steps.append((name, argv))
        self.times[name] = {"wall_s": 1.0, "cpu_s": 1.0}
        out = Path(argv[argv.index("--out") + 1])
        command = argv[argv.index("-m") + 2]  # python -m mammokit COMMAND ...
        if command == "patches":
            out.mkdir(parents=True)
            (out / "patches.json").write_text("{}")
        elif command == "train":
            out.mkdir(parents=True)
            (out / "model.json").write_text(json.dumps({"threshold": 0.5}))
        elif command == "evaluate":
            view = Path(argv[argv.index("--data") + 1])
            images = pd.read_parquet(view / "manifest.parquet")
            test = images[images["split"] == "test"]
            rng = np.random.default_rng(len(self.steps))
            label = test["label"].clip(lower=0).to_numpy()
            out.mkdir(parents=True)
            pd.DataFrame(
                {
                    "image_id": test["image_id"],
                    "patient_id": test["patient_id"],
                    "exam_id": test["exam_id"],
                    "laterality": test["laterality"],
                    "view": test["view"],
                    "label": label,
                    "prob_uncalibrated": np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2, len(test)), 0, 1),
                }
            ).to_csv(out / "predictions.csv", index=False)
        else:
            raise AssertionError(f"unexpected step {name}: {argv}")
        return 0


def _run(bench: ModuleType, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> RecordingRunner:
    runners: list[RecordingRunner] = []

    def make(path: Path) -> RecordingRunner:
        runners.append(RecordingRunner(path))
        return runners[-1]

    monkeypatch.setattr(bench, "StepTimer", make)
    assert bench.main(argv) == 0
    return runners[0]


def test_folds_of_women_are_disjoint_and_stratified(prepared: Path) -> None:
    bench = _bench()
    manifest = pd.read_parquet(prepared / "manifest.parquet")
    fold_of = bench.woman_folds(manifest, 4, seed=0)
    women = manifest.groupby("patient_id")["label"].max().clip(lower=0)
    assert set(fold_of) == {str(w) for w in women.index}  # every woman in exactly one fold
    positives = [sum(int(women[w]) for w in women.index if fold_of[str(w)] == k) for k in range(4)]
    assert max(positives) - min(positives) <= 1  # stratified by "has a malignant image"
    rest = women[[fold_of[str(w)] != 0 for w in women.index]]
    val = bench.inner_val(rest, seed=0)
    assert val and val <= {str(w) for w in rest.index}  # inner validation women never include test women


def test_fold_view_is_a_prepared_folder_that_patches_reads(prepared: Path, tmp_path: Path) -> None:
    """The fold view must pass `patches`' path checks (a symlinked images/ resolves outside it and was refused)."""
    from mammokit.data.patches import PatchConfig, sample_patches

    bench = _bench()
    manifest = pd.read_parquet(prepared / "manifest.parquet")
    split_of = {
        str(w): ("test" if i % 4 == 0 else "train") for i, w in enumerate(sorted(manifest["patient_id"].unique()))
    }
    view = bench.write_fold_view(prepared, tmp_path / "fold0", split_of)
    assert bench.write_fold_view(prepared, tmp_path / "fold0", split_of) == view  # resumable: kept as written
    assert not any(p.is_symlink() for p in view.rglob("*"))
    fold = pd.read_parquet(view / "manifest.parquet")
    assert [split_of[str(w)] for w in fold["patient_id"]] == fold["split"].tolist()
    summary = sample_patches(view, tmp_path / "patches", PatchConfig(scheme="s1", patch_size=32, workers=1))
    assert (
        not (tmp_path / "patches" / "errors.csv").is_file()
        or len(pd.read_csv(tmp_path / "patches" / "errors.csv")) == 0
    ), (tmp_path / "patches" / "errors.csv").read_text()
    # every image of the view was read (none refused by a path check), and what was sampled came from them
    table = pd.read_parquet(tmp_path / "patches" / "patches.parquet")
    assert summary["n_images"] == len(fold) and summary["n_images_failed"] == 0
    assert summary["n_patches"] == len(table) > 0 and set(table["image_id"]) <= set(fold["image_id"].astype(str))
    assert (table["kind"] == "lesion").any() and (table["kind"] == "background").any()


def test_whole_seeds_ensemble_pooled_out_of_fold_and_resumable(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _bench()
    out = tmp_path / "cv"
    argv = ["--out", str(out), "--prepared", str(prepared), "--folds", "3", "--whole-seeds", "3", "--seed", "7"]
    argv += ["--bootstrap", "100", "--patches-set", "hard_negative_run=/runs/{fold}/patch"]
    argv += ["--whole-set", "stages=[{epochs: 1}, {epochs: 1}]"]
    runner = _run(bench, monkeypatch, argv)
    for k in range(3):  # {fold} becomes each fold's name; other braces (YAML) are passed unchanged
        patches = dict(runner.steps)[f"fold{k}/patches"]
        assert patches[patches.index("--set") + 1] == f"hard_negative_run=/runs/fold{k}/patch"
        whole = dict(runner.steps)[f"fold{k}/train_whole"]
        assert "stages=[{epochs: 1}, {epochs: 1}]" in whole

    names = [name for name, _ in runner.steps]
    for k in range(3):
        assert f"fold{k}/train_whole_seed1" in names and f"fold{k}/train_whole_seed2" in names
        assert f"fold{k}/train_whole_baseline" in names
    seeds = {name: argv_[argv_.index("--seed") + 1] for name, argv_ in runner.steps if "train_whole" in name}
    assert seeds["fold0/train_whole"] == "7" and seeds["fold0/train_whole_seed1"] == "8"
    assert seeds["fold0/train_whole_seed2"] == "9" and seeds["fold0/train_whole_baseline"] == "7"
    ens = dict(runner.steps)["fold1/evaluate_ensemble_tta"]
    runs = ens[ens.index("evaluate") + 1 : ens.index("--data")]
    assert [Path(r).name for r in runs] == ["whole", "whole-seed1", "whole-seed2"] and "--tta" in ens
    assert ens[ens.index("--heatmap") + 1] == "none"  # predictions only: no report heatmaps to compute

    for k in range(3):  # the fold's test women are neither train nor val women of that fold
        view = pd.read_parquet(out / f"fold{k}" / "prepared" / "manifest.parquet")
        by_woman = view.groupby("patient_id")["split"].nunique()
        assert (by_woman == 1).all() and (view["split"] == "test").any()

    results = json.loads((out / "cv_results.json").read_text())
    n_images = len(pd.read_parquet(prepared / "manifest.parquet"))
    ensemble = results["models"]["patch->whole, average of 3 seeds, flip TTA"]
    assert ensemble["n_images"] == n_images  # every image predicted once, by the fold that held its woman out
    assert sorted(int(k) for k in ensemble["per_fold_auc"]) == [0, 1, 2]
    assert 0.5 < ensemble["pooled_auc"]["value"] <= 1.0  # the recorded scores separate the classes
    assert results["settings"]["whole_seeds"] == 3
    markdown = (out / "cv_results.md").read_text()
    assert "average of 3 seeds" in markdown
    # per-abnormality sensitivity of every model side by side, and each fold's cost
    header = next(line for line in markdown.splitlines() if line.startswith("| abnormality |"))
    assert "patch->whole, flip TTA" in header and "patch->whole, no TTA" in header and "average of 3 seeds" in header
    steps_of = {f"fold{k}": sum(name.startswith(f"fold{k}/") for name in runner.times) for k in range(3)}
    assert bench.fold_costs(runner.times) == {f: {"wall_s": n * 1.0, "cpu_s": n * 1.0} for f, n in steps_of.items()}
    assert all(f"| fold{k} |" in markdown for k in range(3))

    again = _run(bench, monkeypatch, argv)  # resumed: every step's output exists, nothing runs again
    assert again.steps == []


def test_oof_analysis_pairs_each_image_with_the_other_breast(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench, analyse = _bench(), _load("analyse_mias_oof")
    out = tmp_path / "cv"
    _run(bench, monkeypatch, ["--out", str(out), "--prepared", str(prepared), "--folds", "2", "--bootstrap", "50"])
    pred = analyse.pooled(out, "eval-tta")
    assert len(pred) == len(pd.read_parquet(prepared / "manifest.parquet"))
    other = analyse.contralateral(pred)
    by_side = pred.set_index(["exam_id", "laterality"])["prob_uncalibrated"]
    for i in pred.index[:6]:  # mini-MIAS: one MLO per breast, the other breast is the other laterality
        flip = {"L": "R", "R": "L"}[pred.at[i, "laterality"]]
        assert other[i] == by_side[(pred.at[i, "exam_id"], flip)]
    capsys.readouterr()
    assert analyse.main([str(out), "--bootstrap", "50"]) == 0
    table = capsys.readouterr().out
    assert "| whole image |" in table and "| minus contralateral |" in table
    # another arm on the same folds (here: the same run again) is paired image by image: a difference of 0
    assert analyse.main([str(out), "--bootstrap", "50", "--compare", str(out), "--only-folds", "0"]) == 0
    table = capsys.readouterr().out
    assert f"| {out.name} (whole image) | +0.000 (+0.000 to +0.000) |" in table
    assert f"{len(analyse.pooled(out, 'eval-tta', [0]))} images" in table
    assert len(analyse.pooled(out, "eval-tta", [0])) < len(pred)
    with pytest.raises(SystemExit, match="has not been evaluated"):
        analyse.pooled(out, "eval-tta", [5])

    # subgroups: facts come from the fold manifests; each comparison keeps every malignant image it should
    assert analyse.main([str(out), "--bootstrap", "50", "--subgroups"]) == 0
    assert "| malignant vs benign-lesion images |" in capsys.readouterr().out
    facts = analyse.with_image_facts(out, pred)
    assert len(facts) == len(pred) and facts["abnormality_classes"].notna().all()
    groups = analyse.subgroups(facts)
    malignant = facts["label"].to_numpy() == 1
    normal = (facts["abnormality_classes"] == "NORM").to_numpy() & ~malignant
    assert (groups["malignant vs normal images"] == (malignant | normal)).all()
    assert (groups["malignant vs benign-lesion images"] == (malignant | (~normal & ~malignant))).all()
    dens = [groups[f"{name} breasts (density {code})"] for code, name in analyse.DENSITY.items()]
    assert (np.sum(dens, axis=0) == facts["density"].isin(list(analyse.DENSITY)).to_numpy()).all()
    for name, keep in groups.items():
        if name.startswith("malignant ") and " vs every " in name:
            assert (keep | malignant).all() and keep[malignant].any()  # all negatives, some malignant of its class
