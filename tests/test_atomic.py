"""Atomic writes leave either the old file or the new one, never a partial file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mammokit.utils.atomic import atomic_path, atomic_write_json


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_nan_written_as_null(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"auc": float("nan"), "xs": [1.0, float("nan")]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"auc": None, "xs": [1.0, None]}


def test_written_file_has_umask_permissions_not_0600(tmp_path):
    import os
    import stat

    target = tmp_path / "report.html"
    atomic_write_json(target, {})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_resume_checkpoint_is_fsynced_before_it_replaces_the_last_one(tmp_path, monkeypatch):
    """engine.callbacks.ResumeCheckpoint goes through the same commit as every other writer: the new
    last.ckpt's contents are fsynced before the rename, so a power loss cannot leave an empty checkpoint."""
    import os
    from types import SimpleNamespace

    from mammokit.engine.callbacks import LAST_CKPT, ResumeCheckpoint

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    (tmp_path / LAST_CKPT).write_bytes(b"old")
    trainer = SimpleNamespace(
        save_checkpoint=lambda path: Path(path).write_bytes(b"new"),
        is_global_zero=True,
        strategy=SimpleNamespace(barrier=lambda name: None),
        global_step=7,
    )
    ResumeCheckpoint(tmp_path, every_n_steps=1)._write(trainer)
    assert (tmp_path / LAST_CKPT).read_bytes() == b"new"
    assert events == ["fsync", "replace"]
    assert [p.name for p in tmp_path.iterdir()] == [LAST_CKPT]
