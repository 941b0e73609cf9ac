"""`mammokit demo` step logic that the README test does not reach: resuming an interrupted training step."""

from __future__ import annotations

from mammokit.cli.demo import PRESETS, _resume_flag, _steps


def test_interrupted_training_step_resumes_from_its_checkpoint(tmp_path):
    run_dir = tmp_path / "runs" / "patch"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert _resume_flag(run_dir) == ["--resume"]
    assert run_dir.is_dir()


def test_interrupted_training_step_without_checkpoint_starts_over(tmp_path):
    run_dir = tmp_path / "runs" / "whole"
    (run_dir / "logs").mkdir(parents=True)
    assert _resume_flag(run_dir) == []
    assert not run_dir.exists()
    assert _resume_flag(tmp_path / "never-started") == []


def test_steps_chain_outputs_to_inputs(tmp_path):
    steps = _steps(tmp_path, "default", seed=1, workers=2, device="cpu")
    assert [s.argv[0] for s in steps] == ["synth", "prepare", "patches", "train", "train", "predict", "evaluate"]
    by_name = {s.argv[0] + (s.argv[1] if s.argv[0] == "train" else ""): s for s in steps}
    # each step reads the folder the previous one marks as done
    assert str(by_name["synth"].done_marker.parent) in by_name["prepare"].argv
    assert str(by_name["prepare"].done_marker.parent) in by_name["patches"].argv
    assert str(by_name["patches"].done_marker.parent) in by_name["trainpatch"].argv
    assert str(by_name["trainpatch"].done_marker.parent) in by_name["trainwhole"].argv
    assert str(by_name["trainwhole"].done_marker.parent) in by_name["evaluate"].argv
    assert str(PRESETS["default"]["height"]) in by_name["prepare"].argv
    for name in ("synth", "prepare", "patches"):  # the demo's --workers reaches every data step
        argv = by_name[name].argv
        assert argv[argv.index("--workers") + 1] == "2"


def test_a_ci_bound_of_zero_is_reported_as_zero_not_nan() -> None:
    from mammokit.cli.demo import _find_auc

    metrics = {"results": {"whole": {"image": {"auc": {"value": 0.275, "ci_low": 0.0, "ci_high": 0.375}}}}}
    assert _find_auc(metrics) == (0.275, 0.0, 0.375)  # was (0.275, nan, 0.375): 0.0 read as "missing"
    low = _find_auc({"results": {"w": {"image": {"auc": {"value": 0.5, "ci_low": None, "ci_high": 0.9}}}}})
    assert low is not None and low[1] != low[1] and low[2] == 0.9  # None: no bound (NaN)


def test_demo_goes_on_past_a_step_that_left_one_image_out_and_stops_when_nothing_is_left(tmp_path, capsys):
    """The demo's own synth and prepare steps, with one raw DICOM damaged: prepare exits 1 (one row of errors.csv),
    the demo prints how many images were left out and why and goes on; with every DICOM damaged it stops."""
    import pytest

    from mammokit.cli import main
    from mammokit.cli.common import UserError
    from mammokit.cli.demo import check_step

    steps = _steps(tmp_path, "small", seed=1, workers=1, device="cpu")
    synth, prepare = steps[0], steps[1]
    assert main(synth.argv) == 0
    raw = tmp_path / "raw"
    # full mammograms sit under <type>_P_<id>_<SIDE>_<VIEW>/ (4 underscores); ROI files under ..._<n>/
    full = sorted(d for d in raw.rglob("*.dcm") if d.relative_to(raw).parts[0].count("_") == 4)
    full[0].write_bytes(full[0].read_bytes()[:2000])  # truncated: an unreadable film
    status = main(prepare.argv)
    assert status == 1 and prepare.done_marker.is_file()
    capsys.readouterr()
    check_step(2, prepare, status, tmp_path)
    line = capsys.readouterr().out
    assert "prepare: 1 image(s) left out (1 " in line and "errors.csv" in line

    for d in full:
        d.write_bytes(d.read_bytes()[:2000])
    status = main(prepare.argv)
    with pytest.raises(UserError, match=r"step 2 \(prepare"):
        check_step(2, prepare, status, tmp_path)
