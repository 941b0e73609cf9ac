"""Issue 17: no input can crash a batch, write outside `--out` or run code; the reader's errors are honest.

Each test names the defect it covers (docs/security.md lists them). The fault-injection tests run the real batch
commands with a decoder that panics (a real pyo3 PanicException from pylibjpeg-rle, on a crafted RLE frame), one
that aborts the process and a worker killed mid-batch (injected by patching the reader before the workers fork).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dicom_factory import make_dataset, phantom, write_dicom, write_mammogram, write_panic_rle
from mammokit.cli import main
from mammokit.io.dicom import MammogramReadError, read_mammogram

# --- helpers -------------------------------------------------------------------------------------------------------


def _png(path: Path, seed: int = 0) -> Path:
    """A 16-bit 'mammogram': bright half-ellipse on the left edge, textured, on black."""
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:120, 0:90]
    inside = ((yy - 60) / 55.0) ** 2 + (xx / (70.0 + seed)) ** 2 < 1
    img = (inside * (20000 + 8000 * np.sin(yy / 7.0) * np.cos(xx / (5.0 + seed)))).astype(np.uint16)
    Image.fromarray(img).save(path)
    return path


def _faulty_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files named abort*.dcm make the decoder abort the process, killed*.dcm get the worker SIGKILLed.

    Patched in this process before the pool forks its workers, so the workers inherit it.
    """
    import mammokit.io.dicom as dicom

    original = dicom._decode

    def decode(ds, path):  # type: ignore[no-untyped-def]
        if path.name.startswith("abort"):
            os.abort()  # what a C decoder does on a failed 1.4 GB allocation
        if path.name.startswith("killed"):
            os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, or a user killing one worker
        return original(ds, path)

    monkeypatch.setattr(dicom, "_decode", decode)


def _errors(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        return {row["image_id"]: row.get("reason") or row.get("error") or "" for row in csv.DictReader(fh)}


def _batch_inputs(folder: Path) -> dict[str, Path]:
    """Two good images, a real panicking RLE DICOM, and two DICOMs for the injected abort / kill."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "good0": _png(folder / "good0.png", 0),
        "panic": write_panic_rle(folder / "panic.dcm"),
        "abort": write_mammogram(folder / "abort.dcm"),
        "good1": _png(folder / "good1.png", 5),
        "killed": write_mammogram(folder / "killed.dcm"),
    }


# --- reader ------------------------------------------------------------------------------------------------------


def test_decoder_panic_is_a_read_error(tmp_path):
    """Serious 1: pylibjpeg-rle's PanicException (a BaseException) becomes a MammogramReadError."""
    path = write_panic_rle(tmp_path / "panic.dcm")
    with pytest.raises(MammogramReadError, match=r"could not be decoded.*PanicException"):
        read_mammogram(path)


def test_declared_size_is_checked_before_decoding(tmp_path, monkeypatch):
    """Resource bombs: a small RLE DICOM declaring 65535 x 65535, and a PNG header declaring the same."""
    ds = make_dataset(phantom((40, 32)), bits_stored=12)
    path = write_dicom(tmp_path / "bomb.dcm", ds, "rle")
    import pydicom

    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 65535
    ds.save_as(path, enforce_file_format=True)
    t0 = time.perf_counter()
    with pytest.raises(MammogramReadError, match=r"65535 x 65535 .* 4294\.8 Mpixels, over the limit of 100\.0"):
        read_mammogram(path)
    assert time.perf_counter() - t0 < 2.0  # refused from the header, nothing decoded

    # PNG: IHDR says 65535 x 65535 (Pillow's own DecompressionBombError must not escape)
    ihdr = struct.pack(">IIBBBBB", 65535, 65535, 16, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    png = tmp_path / "bomb.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)))
    with pytest.raises(MammogramReadError, match="over the limit"):
        read_mammogram(png)

    # the limit is configurable
    small = write_mammogram(tmp_path / "small.dcm")
    monkeypatch.setenv("MAMMOKIT_MAX_PIXELS", "1000")
    with pytest.raises(MammogramReadError, match="MAMMOKIT_MAX_PIXELS"):
        read_mammogram(small)
    assert read_mammogram(small, max_pixels=10_000)[0].shape == (64, 48)


@pytest.mark.parametrize("slope", ["NaN", "1e308"])
def test_non_finite_pixels_after_the_luts_are_an_error(tmp_path, slope):
    """Silent nonsense: a NaN or 1e308 RescaleSlope used to return all-NaN/inf pixels."""
    ds = make_dataset(phantom(), bits_stored=12, rescale=(1.0, 0.0))
    ds.RescaleSlope = slope
    path = write_dicom(tmp_path / "slope.dcm", ds)
    with pytest.raises(MammogramReadError, match=r"NaN or infinite|non-finite"):
        read_mammogram(path)


def test_float_pixel_data_is_named_as_such(tmp_path):
    ds = make_dataset(phantom(), bits_stored=12)
    del ds.PixelData
    ds.FloatPixelData = np.full(64 * 48, np.nan, np.float32).tobytes()
    ds.BitsAllocated = 32
    path = write_dicom(tmp_path / "float.dcm", ds)
    with pytest.raises(MammogramReadError, match="float pixel data"):
        read_mammogram(path)


def test_decoder_failure_is_told_apart_from_a_missing_decoder(tmp_path, monkeypatch):
    """Misleading messages: corrupt RLE was reported as 'no decoder ... install the codec plugins'."""
    good = write_mammogram(tmp_path / "rle.dcm", syntax="rle")
    data = bytearray(good.read_bytes())
    data[-40:] = b"\x7f" * 40  # damage the end of the last RLE segment
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(bytes(data[:-10]))  # and truncate it
    with pytest.raises(MammogramReadError) as info:
        read_mammogram(corrupt)
    assert "install" not in str(info.value) and str(corrupt) in str(info.value)

    from pydicom.pixels import get_decoder
    from pydicom.uid import RLELossless

    monkeypatch.setattr(get_decoder(RLELossless), "_available", {})  # as if no RLE plugin were installed
    with pytest.raises(MammogramReadError, match="no decoder installed for transfer syntax 'RLE Lossless'"):
        read_mammogram(good)


def test_folder_and_unreadable_paths_are_read_errors(tmp_path):
    (tmp_path / "x.dcm").mkdir()
    with pytest.raises(MammogramReadError, match="is a folder"):
        read_mammogram(tmp_path / "x.dcm")


# --- batch commands: fault injection --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_survives_panic_abort_and_killed_worker(tmp_path, monkeypatch, workers):
    """Serious 1 (prepare): the good files are prepared, each bad one is an errors.csv row, exit status 1."""
    _faulty_decoder(monkeypatch)
    inputs = _batch_inputs(tmp_path / "raw")
    listing = tmp_path / "raw" / "list.csv"
    listing.write_text("path,image_id,label,patient_id\n" + "".join(f"{p.name},{k},0,{k}\n" for k, p in inputs.items()))
    out = tmp_path / "prepared"
    argv = ["prepare", "csv", "--root", str(tmp_path / "raw"), "--out", str(out), "--workers", str(workers)]
    status = main([*argv, "--height", "64", "--width", "48", "--no-progress"])
    assert status == 1
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert sorted(manifest["image_id"]) == ["good0", "good1"]
    assert all((out / "images" / f"{i}.png").is_file() for i in ("good0", "good1"))
    errors = _errors(out / "errors.csv")
    assert set(errors) == {"panic", "abort", "killed"}
    assert "PanicException" in errors["panic"] and "could not be decoded" in errors["panic"]
    assert "SIGABRT" in errors["abort"]
    assert "SIGKILL" in errors["killed"]


def test_patches_survive_panic_abort_and_killed_worker(tmp_path, monkeypatch):
    """The patch sampler uses the same crash-tolerant pool (it used plain pool.map and aborted)."""
    raw = tmp_path / "raw"
    ids = ["a", "panic", "abort", "b", "killed"]
    for i, image_id in enumerate(ids):
        _png(raw / f"{image_id}.png", i)
    (raw / "list.csv").write_text("path,image_id,label,patient_id\n" + "".join(f"{i}.png,{i},0,{i}\n" for i in ids))
    prepared = tmp_path / "prepared"
    assert main(["prepare", "csv", "--root", str(raw), "--out", str(prepared), "--height", "128", "--width", "96",
                 "--workers", "1", "--no-progress"]) == 0  # fmt: skip

    import mammokit.data.patches as patches

    original = patches.read_png16
    panic_type = _panic_exception_type()

    def read(path):  # type: ignore[no-untyped-def]
        name = Path(path).stem
        if name == "panic":
            raise panic_type("index out of bounds: the len is 12 but the index is 12")
        if name == "abort":
            os.abort()
        if name == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        return original(path)

    monkeypatch.setattr(patches, "read_png16", read)
    out = tmp_path / "patches"
    status = main(["patches", "--data", str(prepared), "--out", str(out), "--scheme", "s2", "--patch-size", "32",
                   "--workers", "2", "--set", "background_breast_fraction=0.3"])  # fmt: skip
    assert status == 1
    table = pd.read_parquet(out / "patches.parquet")
    assert sorted(table["image_id"].unique()) == ["a", "b"]
    assert all((out / f).is_file() for f in table["patch_file"])
    errors = _errors(out / "errors.csv")
    assert set(errors) == {"panic", "abort", "killed"}
    assert (
        errors["panic"].startswith("PanicException") and "SIGABRT" in errors["abort"] and "SIGKILL" in errors["killed"]
    )


def _panic_exception_type() -> type[BaseException]:
    """pyo3's PanicException class, taken from a real panic of the Rust RLE decoder."""
    from rle.rle import decode_frame

    from dicom_factory import PANIC_RLE_FRAME

    try:
        decode_frame(PANIC_RLE_FRAME, 6, 16, "<")
    except BaseException as exc:
        assert not isinstance(exc, Exception)
        return type(exc)
    pytest.fail("the crafted RLE frame no longer panics pylibjpeg-rle")


def test_predict_survives_panic_abort_and_killed_reader(tmp_path, monkeypatch):
    """Serious 1 (predict): predictions for the good files are written, bad ones are errors.csv rows, exit 1."""
    from predict_support import tiny_runs

    whole, _ = tiny_runs()
    _faulty_decoder(monkeypatch)
    inputs = _batch_inputs(tmp_path / "in")
    out = tmp_path / "out"
    status = main(["predict", str(whole), str(tmp_path / "in"), "--out", str(out), "--device", "cpu", "--backend",
                   "torch", "--workers", "2", "--batch-size", "2", "--no-progress"])  # fmt: skip
    assert status == 1
    with open(out / "predictions.csv", newline="") as fh:
        predicted = {row["image_id"]: float(row["prob_malignant"]) for row in csv.DictReader(fh)}
    assert set(predicted) == {"good0", "good1"} and all(0.0 <= p <= 1.0 for p in predicted.values())
    errors = _errors(out / "errors.csv")
    assert set(errors) == {"panic", "abort", "killed"}
    assert "PanicException" in errors["panic"] and "SIGABRT" in errors["abort"] and "SIGKILL" in errors["killed"]
    assert len(inputs) == 5


@pytest.mark.timeout(120)  # reading the pids blocks: a child that never prints them must fail the test, not hang it
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """Orphans: killing the main process (SIGKILL) used to leave pool workers running for 20+ minutes."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            r"""
            import os, sys, time
            from mammokit.utils.pool import run_isolated

            def work(task):
                # one write(2) per line: print() writes the text and the newline separately when stdout is
                # unbuffered (PYTHONUNBUFFERED=1), and two workers' pids then interleave ("2862328622\n\n")
                os.write(1, f"{os.getpid()}\n".encode())
                time.sleep(600)

            for _ in run_isolated(work, range(2), workers=2):
                pass
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    assert parent.stdout is not None
    workers: list[int] = []  # the pids the workers print, one line each
    while len(workers) < 2:
        line = parent.stdout.readline()
        assert line, f"the parent exited before printing 2 worker pids (got {workers})"  # EOF: never loop forever
        workers.append(int(line))
    parent.kill()
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers)


# --- writing outside --out ------------------------------------------------------------------------------------------


def test_prepare_csv_refuses_ids_that_escape_and_reports_every_unused_row(tmp_path):
    """Serious 2 + batch semantics: `../../x` and absolute ids, duplicates, a missing file, a bad label."""
    raw = tmp_path / "deep" / "raw"
    goods = [f"good{i}" for i in range(6)]  # enough patients for a train/val/test split
    for name in (*goods, "esc", "abs", "dup1", "dup2", "bad"):
        _png(raw / f"{name}.png")
    escape_target = tmp_path / "deep" / "escaped"
    rows = [
        *[(f"{g}.png", g, "0") for g in goods],
        ("esc.png", "../../escaped", "0"),
        ("abs.png", str(tmp_path / "absolute"), "1"),
        ("dup1.png", "twin", "0"),
        ("dup2.png", "twin", "1"),
        ("missing.png", "gone", "0"),
        ("bad.png", "badlabel", "maybe"),
    ]
    (raw / "list.csv").write_text("path,image_id,label\n" + "".join(",".join(r) + "\n" for r in rows))
    out = tmp_path / "deep" / "out" / "prepared"
    before = {p for p in tmp_path.rglob("*")}
    status = main(["prepare", "csv", "--root", str(raw), "--out", str(out), "--height", "64", "--width", "48",
                   "--workers", "1", "--no-progress"])  # fmt: skip
    assert status == 1
    written = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or out in p.parents or p == out.parent for p in written), sorted(written)
    assert not escape_target.with_suffix(".png").exists() and not (tmp_path / "absolute.png").exists()
    assert sorted(pd.read_parquet(out / "manifest.parquet")["image_id"]) == goods
    with open(out / "errors.csv", newline="") as fh:
        reasons = [row["reason"] for row in csv.DictReader(fh)]
    assert len(reasons) == 6
    assert sum("cannot be used as a file name" in r for r in reasons) == 2
    assert sum("'twin' appears 2 times" in r for r in reasons) == 2
    assert any("file not found" in r for r in reasons) and any("unreadable label 'maybe'" in r for r in reasons)


def test_prepare_with_only_missing_files_exits_1(tmp_path):
    """README promise: any failed item -> exit 1 (a CSV whose only failures were missing files exited 0)."""
    raw = tmp_path / "raw"
    for i in range(6):
        _png(raw / f"a{i}.png", i)
    rows = "".join(f"a{i}.png,0\n" for i in range(6))
    (raw / "list.csv").write_text("path,label\n" + rows + "not-there.png,1\n")
    out = tmp_path / "out"
    assert main(["prepare", "csv", "--root", str(raw), "--out", str(out), "--height", "64", "--width", "48",
                 "--workers", "1", "--no-progress"]) == 1  # fmt: skip
    with open(out / "errors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["stage"] == "manifest" and "file not found" in rows[0]["reason"]


# --- no unpickling of user-supplied files ------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "code ran"))


def test_crafted_checkpoint_is_refused_not_executed(tmp_path):
    """Serious 3: `train --resume` unpickled last.ckpt with weights_only=False."""
    from mammokit.engine.runner import TrainingError, load_checkpoint

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "last.ckpt"
    with open(ckpt, "wb") as fh:
        pickle.dump({"state_dict": {}, "hook": _Payload(marker)}, fh)
    with pytest.raises(TrainingError, match="weights_only=True"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    import torch

    torch.save({"state_dict": {"model.w": torch.ones(2)}, "epoch": 1, "loops": {"x": [1, 2.5]}}, ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 1  # our own format still loads


def test_no_code_path_unpickles_with_weights_only_false():
    src = Path(__file__).parents[1] / "src"
    offenders = [str(p) for p in src.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


# --- run folders and configs ------------------------------------------------------------------------------------


def test_truncated_weights_and_malformed_model_json_name_the_file(tmp_path):
    import shutil

    from mammokit.run import RunFolderError, load_model, read_card
    from predict_support import tiny_runs

    whole, _ = tiny_runs()
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(RunFolderError, match=r"model\.safetensors: unreadable safetensors file"):
        load_model(run)
    card = run / "model.json"
    card.write_text(card.read_text()[:-20])
    with pytest.raises(RunFolderError, match=r"model\.json: unreadable or malformed JSON"):
        read_card(run)
    card.write_text(json.dumps({"format_version": 1, "task": "whole"}))
    with pytest.raises(RunFolderError, match=r"model\.json: malformed"):
        read_card(run)


@pytest.mark.parametrize(
    ("content", "override", "expected"),
    [
        (None, "preprocess.height=1e400", "preprocess.height: expected an integer"),
        (None, "preprocess.height=.inf", "preprocess.height: expected an integer"),
        (None, "split.val_fraction=.nan", "split.val_fraction: expected a finite number"),
        (None, "split.val_fraction=1e400", "split.val_fraction: expected a finite number"),
        (None, "split=[", "override split: cannot parse"),
        (b"preprocess:\n  height: [1152\n", None, "YAML syntax error at line"),
        (b"preprocess:\n  height: 1152 \xff\xfe\n", None, "not UTF-8"),
        (b"_base_: cfg.yaml\n", None, "_base_ cycle"),
    ],
)
def test_bad_configs_are_one_line_errors_exit_2(tmp_path, capsys, content, override, expected):
    raw = tmp_path / "raw"
    _png(raw / "a.png")
    (raw / "list.csv").write_text("path,label\na.png,0\n")
    argv = ["prepare", "csv", "--root", str(raw), "--out", str(tmp_path / "out"), "--no-progress"]
    if content is not None:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_bytes(content)
        argv += ["-c", str(cfg)]
    if override is not None:
        argv += ["--set", override]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    if content is not None:
        assert "cfg.yaml" in err
