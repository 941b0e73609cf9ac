"""A full disk (issue 25, point 5): one clear line, exit status 2, no folder that looks complete, and a rerun after
freeing space gives what a run on a big disk gives.

Two ways to fill the disk: ENOSPC injected at the write layer (`utils.atomic.commit_file`, and pyarrow's parquet
writer), which runs everywhere; and a real tmpfs of a few hundred KB mounted for the test and enlarged with
`mount -o remount,size=...` afterwards (needs root and mount; skipped with a message elsewhere).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mammokit.cli import main
from mammokit.utils import atomic
from mammokit.utils.diskfull import DiskFullError, disk_full_guard, is_disk_full
from test_prepare import raw  # noqa: F401  (fixture: the tiny raw dataset, 7 good images and 2 bad ones)

PREPARE_FLAGS = ["--height", "64", "--width", "48", "--workers", "1", "--no-progress"]
COMPLETE_MARKERS = ("dataset.json", "manifest.parquet", "lesions.parquet", "errors.csv")


def _prepare(raw_root: Path, out: Path) -> int:
    return main(["prepare", "tiny-test", "--root", str(raw_root), "--out", str(out), *PREPARE_FLAGS])


def _tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every visible file under `folder` (the command's log, which has times, left out)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.suffix != ".log"
    }


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.fixture
def reference(raw: Path, tmp_path: Path) -> dict[str, str]:  # noqa: F811
    """What `prepare` writes on a big disk."""
    assert _prepare(raw, tmp_path / "big") == 1  # 1: the tiny set has two bad files by design (errors.csv)
    return _tree(tmp_path / "big")


def _error_lines(err: str) -> list[str]:
    """The lines of stderr about the failure (progress and log lines such as a split warning left out)."""
    words = (": error:", "errno", "no space", "traceback", "exception")
    return [line for line in err.splitlines() if any(w in line.lower() for w in words)]


def _assert_stopped_short(out: Path, err: str) -> None:
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("mammokit prepare: error: "), err  # one line, no traceback
    assert "no space left on device" in lines[0] and str(out) in lines[0] and "available" in lines[0]
    assert "run the same command again: it resumes" in lines[0]
    assert "Traceback" not in err
    for name in COMPLETE_MARKERS:  # nothing says the folder is complete (and no ENOSPC rows in an errors.csv)
        assert not (out / name).exists(), name


# --- injected at the write layer (always runs) -------------------------------------------------------------------


def test_prepare_stops_on_enospc_in_a_worker_and_a_rerun_resumes_to_the_big_disk_result(
    raw: Path,  # noqa: F811
    tmp_path: Path,
    reference: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    real_commit = atomic.commit_file

    def commit_until_full(tmp: object, path: object, *, durable: bool = True) -> None:
        # the disk fills after the first two prepared images (their PNG and record each); the workers are
        # forked from this process, so they inherit this patch
        if Path(str(path)).parent.name == "images" and len(list(Path(str(path)).parent.glob("img*.png"))) >= 2:
            raise _enospc(tmp)
        real_commit(tmp, path, durable=durable)

    monkeypatch.setattr(atomic, "commit_file", commit_until_full)
    out = tmp_path / "small"
    capsys.readouterr()
    assert _prepare(raw, out) == 2
    _assert_stopped_short(out, capsys.readouterr().err)
    assert len(list((out / "images").glob("*.png"))) == 2  # stopped at the third image: not 7 with 5 errors
    assert not list((out / "images").glob(".*"))  # the failed write left no temporary file

    monkeypatch.setattr(atomic, "commit_file", real_commit)  # space freed
    assert _prepare(raw, out) == 1
    assert _tree(out) == reference


def test_prepare_enospc_while_writing_the_tables_leaves_no_manifest_and_no_dataset_json(
    raw: Path,  # noqa: F811
    tmp_path: Path,
    reference: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """The pyarrow `OSError: [Errno 28]` traceback of the issue, and a manifest written before the disk filled."""
    real_commit = atomic.commit_file

    def full_at_errors_csv(tmp: object, path: object, *, durable: bool = True) -> None:
        if Path(str(path)).name == "errors.csv":  # after manifest.parquet and lesions.parquet were written
            raise _enospc(tmp)
        real_commit(tmp, path, durable=durable)

    monkeypatch.setattr(atomic, "commit_file", full_at_errors_csv)
    out = tmp_path / "small"
    capsys.readouterr()
    assert _prepare(raw, out) == 2
    _assert_stopped_short(out, capsys.readouterr().err)  # the manifest written before was removed again

    def pyarrow_full(self: pd.DataFrame, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(atomic, "commit_file", real_commit)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", pyarrow_full)  # pyarrow's error names no file
    capsys.readouterr()
    assert _prepare(raw, out) == 2
    _assert_stopped_short(out, capsys.readouterr().err)

    monkeypatch.undo()
    assert _prepare(raw, out) == 1
    assert _tree(out) == reference


def test_a_finished_folder_rerun_into_a_full_disk_does_not_keep_its_old_completion_marker(
    raw: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "prepared"
    assert _prepare(raw, out) == 1 and (out / "dataset.json").is_file()
    (out / "images" / "img4.png").unlink()  # one image to redo
    real_commit = atomic.commit_file

    def full(tmp: object, path: object, *, durable: bool = True) -> None:
        if Path(str(path)).parent.name == "images":
            raise _enospc(tmp)
        real_commit(tmp, path, durable=durable)

    monkeypatch.setattr(atomic, "commit_file", full)
    capsys.readouterr()
    assert _prepare(raw, out) == 2
    _assert_stopped_short(out, capsys.readouterr().err)


def test_patches_on_a_full_disk_leave_no_patch_set_and_say_so(
    raw: Path,  # noqa: F811
    tmp_path: Path,
    reference: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Before: ENOSPC on a patch PNG became that image's errors.csv row and the set 'finished' (exit 1)."""
    real_commit = atomic.commit_file

    def full_after_some_patches(tmp: object, path: object, *, durable: bool = True) -> None:
        if Path(str(path)).parent.name == "images" and len(list(Path(str(path)).parent.glob("*.png"))) >= 3:
            raise _enospc(tmp)
        real_commit(tmp, path, durable=durable)

    monkeypatch.setattr(atomic, "commit_file", full_after_some_patches)
    out = tmp_path / "patches"
    argv = ["patches", "--data", str(tmp_path / "big"), "--out", str(out), "--scheme", "s2", "--patch-size", "16"]
    capsys.readouterr()
    assert main([*argv, "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no space left on device" in err and "available" in err, err
    assert not out.exists() and not list(tmp_path.glob(".patches.tmp-*"))  # no set, complete or partial
    monkeypatch.setattr(atomic, "commit_file", real_commit)
    assert main([*argv, "--workers", "1"]) in (0, 1) and (out / "patches.json").is_file()


def test_edquot_is_a_full_disk_too_and_other_errors_are_not() -> None:
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(RuntimeError("write failed: [Errno 28] No space left on device"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    quota = r"disk quota exceeded while writing to /x/y \(.*; about 2\.0 KB more needed\)"
    with pytest.raises(DiskFullError, match=quota), disk_full_guard("/x/y", needed=2048):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(PermissionError), disk_full_guard("/x/y"):
        raise PermissionError(errno.EACCES, "Permission denied")


# --- a real small filesystem (tmpfs) -------------------------------------------------------------------------------


class SmallDisk:
    """A tmpfs mounted at `path`; `resize(kb)` enlarges it in place (files kept), as freeing space would."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, kb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kb}k", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8); the injected-ENOSPC tests above cover the logic")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); the injected-ENOSPC tests cover the logic")
    try:
        yield SmallDisk(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # busy: detach now, freed when idle


def _kb_on_tmpfs(tree: Path) -> int:
    """KB the files under `tree` take on a tmpfs (whole 4 KB pages per file)."""
    pages = sum(-(-p.stat().st_size // 4096) for p in tree.rglob("*") if p.is_file())
    return 4 * pages


def test_prepare_into_a_real_small_tmpfs_then_enlarged_resumes_to_the_big_disk_result(
    raw: Path,  # noqa: F811
    tmp_path: Path,
    reference: dict[str, str],
    small_disk: SmallDisk,
    capsys: pytest.CaptureFixture,
) -> None:
    need_kb = _kb_on_tmpfs(tmp_path / "big")
    small_disk.resize(max(16, need_kb // 2))  # room for about half of the images
    out = small_disk.path / "prepared"
    capsys.readouterr()
    assert _prepare(raw, out) == 2
    _assert_stopped_short(out, capsys.readouterr().err)
    n_done = len(list((out / "images").glob("*.png"))) if (out / "images").is_dir() else 0
    assert n_done < 7

    small_disk.resize(4 * need_kb + 256)  # space freed
    assert _prepare(raw, out) == 1
    assert _tree(out) == reference


# --- predict ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whole_run() -> Path:
    from predict_support import tiny_runs

    return tiny_runs()[0]


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    from predict_support import silhouette_pngs

    return silhouette_pngs(tmp_path / "inputs", n=3)


def _predict(run: Path, inputs: list[Path], out: Path) -> int:
    argv = ["predict", str(run), *map(str, inputs), "--out", str(out), "--device", "cpu", "--backend", "torch",
            "--heatmap", "gradcam", "--no-progress"]  # fmt: skip
    return main(argv)


def _predictions(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)


@pytest.fixture
def predicted(whole_run: Path, inputs: list[Path], tmp_path: Path) -> pd.DataFrame:
    """predictions.csv of a run on a big disk."""
    assert _predict(whole_run, inputs, tmp_path / "big-predict") == 0
    return _predictions(tmp_path / "big-predict")


def _assert_no_predictions(out: Path, err: str) -> None:
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("mammokit predict: error: no space left on device"), err
    assert "available" in lines[0] and str(out) in lines[0] and "Traceback" not in err
    for name in ("predictions.csv", "predictions.json", "errors.csv"):
        assert not (out / name).exists(), name


@pytest.mark.parametrize("full_at", ["heatmap", "predictions.json"])
def test_predict_on_a_full_disk_writes_no_predictions_and_a_rerun_completes(
    whole_run: Path,
    inputs: list[Path],
    predicted: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    full_at: str,
) -> None:
    """Before: with Grad-CAM an OSError traceback; without, predictions.csv complete and a traceback on .json."""
    real_commit = atomic.commit_file

    def full(tmp: object, path: object, *, durable: bool = True) -> None:
        target = Path(str(path))
        second_heatmap = target.parent.name == "heatmaps" and len(list(target.parent.glob("*.npy"))) >= 1
        if (full_at == "heatmap" and second_heatmap) or target.name == full_at:
            raise _enospc(tmp)
        real_commit(tmp, path, durable=durable)

    monkeypatch.setattr(atomic, "commit_file", full)
    out = tmp_path / "small"
    capsys.readouterr()
    assert _predict(whole_run, inputs, out) == 2
    _assert_no_predictions(out, capsys.readouterr().err)
    monkeypatch.setattr(atomic, "commit_file", real_commit)
    assert _predict(whole_run, inputs, out) == 0
    pd.testing.assert_frame_equal(_predictions(out), predicted)
    assert json.loads((out / "predictions.json").read_text())["n_predicted"] == len(inputs)


def test_predict_into_a_real_small_tmpfs_then_enlarged(
    whole_run: Path,
    inputs: list[Path],
    predicted: pd.DataFrame,
    tmp_path: Path,
    small_disk: SmallDisk,
    capsys: pytest.CaptureFixture,
) -> None:
    need_kb = _kb_on_tmpfs(tmp_path / "big-predict")
    small_disk.resize(max(16, need_kb // 2))
    out = small_disk.path / "predicted"
    capsys.readouterr()
    assert _predict(whole_run, inputs, out) == 2
    _assert_no_predictions(out, capsys.readouterr().err)
    small_disk.resize(4 * need_kb + 256)
    assert _predict(whole_run, inputs, out) == 0
    pd.testing.assert_frame_equal(_predictions(out), predicted)


# --- evaluate -----------------------------------------------------------------------------------------------------


def test_evaluate_on_a_full_disk_leaves_no_metrics_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mammokit.engine.evaluate import EvaluateConfig, evaluate, load_split
    from test_evaluate import N_BOOT, fake_predictions, make_manifest, make_run

    prepared, run = make_manifest(tmp_path / "prep"), make_run(tmp_path / "run")
    images, _ = load_split(prepared, "test")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier evaluation's
    real_commit = atomic.commit_file

    def full(tmp: object, path: object, *, durable: bool = True) -> None:
        if Path(str(path)).name == "report.html":
            raise _enospc(tmp)
        real_commit(tmp, path, durable=durable)

    monkeypatch.setattr(atomic, "commit_file", full)
    with pytest.raises(DiskFullError, match=f"no space left on device while writing to {out} "):
        evaluate([run], prepared, out, EvaluateConfig(n_boot=N_BOOT), predictions=[fake_predictions(images, 3)])
    assert not (out / "metrics.json").exists()
    monkeypatch.setattr(atomic, "commit_file", real_commit)
    evaluate([run], prepared, out, EvaluateConfig(n_boot=N_BOOT), predictions=[fake_predictions(images, 3)])
    assert json.loads((out / "metrics.json").read_text())["precision"] == "float32"
