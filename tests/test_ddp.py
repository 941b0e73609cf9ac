"""2-process CPU DDP (gloo) smoke test of the whole-image stage, through the real command line.

Lightning's DDP launcher re-runs the command for rank 1, exactly as `torchrun` users would run it. The
validation set (5 images) does not divide by 2: the ranks' shards are padded, gathered and de-duplicated, so
metrics.json must count every validation image exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine_support import make_prepared, tiny_whole_argv


def test_two_process_cpu_ddp_whole_image(tmp_path: Path) -> None:
    prepared = make_prepared(tmp_path / "prepared", {"train": 8, "val": 5})
    out = tmp_path / "run"
    ddp = ["--batch-size", "2", "--set", "trainer.strategy=ddp", "--set", "trainer.devices=2"]
    cmd = [sys.executable, "-m", "mammokit", *tiny_whole_argv(prepared, out, *ddp)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines() == [str(out)]  # only rank 0 reports
    logged = (out / "mammokit.log").read_text()  # Lightning's DDP banner: in the run's log, not on the console
    assert ("world_size: 2" in logged or "MEMBER: 2/2" in logged) and "MEMBER" not in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["n"] == 5
    assert sum(map(sum, metrics["val"]["confusion_matrix"]["counts"])) == 5
    for stage in ("stage1_top", "stage2_all"):
        assert (out / "checkpoints" / stage / "last.ckpt").is_file()
        assert (out / "logs" / stage / "metrics.csv").is_file()
    assert (out / "model.safetensors").is_file()
