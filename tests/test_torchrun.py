"""A real 2-process `torchrun` training run on CPU (gloo): sharded data, reduced metrics, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import PIPELINE_WIDTH, write_image_folder

torch = pytest.importorskip("torch")


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["ram", "stream"])
def test_torchrun_two_processes(tmp_path, cache):
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    data = write_image_folder(tmp_path / "data", classes=2, per_class=9, size=40)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "alexnet_deploy", "train", "--data", str(data), "--val-split", "0.34", "--image-size", "63",
           "--epochs", "2", "--batch-size", "4", "--workers", "1", "--lr", "0.0002", "--device", "cpu",
           "--cache", cache, "--width", str(PIPELINE_WIDTH), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # one writer: no duplicated rows
    for row in rows:
        # Counts summed over both ranks: 12 train images (6 per rank), 6 val images (3 per rank).
        assert (row["train_images"], row["val_images"]) == (12, 6)
        assert abs(row["val_top1"] * 6 - round(row["val_top1"] * 6)) < 1e-9
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "best.pt", "config.toml", "curves.png", "last.pt", "metrics.csv", "metrics.jsonl", "train.log"]
    assert "epoch 2" in (out / "train.log").read_text()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # saved unwrapped
