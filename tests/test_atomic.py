"""Atomic writes leave either the old file or the new one, never a partial file."""

from __future__ import annotations

import json

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
