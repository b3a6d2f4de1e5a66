"""Training on a CUDA GPU, for real: these tests are marked ``cuda`` and skip where torch sees no
GPU (``make gpu-check`` runs them on one). Their CPU counterparts (the same functions on the CPU,
the sync-free step against the every-step one) live in test_data.py and test_train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import PIPELINE_WIDTH, write_image_folder

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to torch")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("cuda") / "data", classes=3, per_class=12, size=72)


def test_gpu_resident_batches_have_the_same_pixels_as_ram_batches(data):
    from alexnet_deploy.alexnet.data import BatchStream, decode_eval, resolve_splits
    from alexnet_deploy.deploy.preprocess import PreprocessSpec

    splits = resolve_splits(data, val_split=0.25)
    spec = PreprocessSpec(resize=72, crop=63)
    cache = decode_eval(splits.train, spec)
    on_cpu = BatchStream(cache, 8, spec, augment="crop-flip", shuffle=True, seed=3)
    on_gpu = BatchStream(cache.to("cuda"), 8, spec, augment="crop-flip", shuffle=True, seed=3, device="cuda")
    pinned = BatchStream(cache, 8, spec, augment="crop-flip", shuffle=True, seed=3, device="cuda")
    for (a, la), (b, lb), (c, lc) in zip(on_cpu, on_gpu, pinned):
        assert b.device.type == c.device.type == "cuda"
        assert torch.equal(a, b.cpu()) and torch.equal(a, c.cpu()) and torch.equal(la, lb.cpu())


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_a_short_cuda_run_with_the_fused_optimizer(data, tmp_path, amp):
    from alexnet_deploy.alexnet.checkpoint import load_checkpoint
    from alexnet_deploy.alexnet.train import TrainConfig, train

    config = TrainConfig(data=str(data), val_split=0.25, out=str(tmp_path / "run"), image_size=63, resize=66,
                         batch_size=6, epochs=2, workers=1, lr=2e-4, width=PIPELINE_WIDTH, device="cuda", amp=amp,
                         cache="gpu")
    out = train(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r["train_loss"], r["val_loss"], r["grad_norm"]])).all() for r in rows)
    assert load_checkpoint(out / "last.pt").epoch == 2


def test_one_process_nccl_ddp_run(data, tmp_path):
    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "alexnet_deploy", "train", "--data", str(data), "--val-split", "0.25", "--image-size", "63",
           "--epochs", "1", "--batch-size", "6", "--workers", "1", "--device", "cuda", "--width", str(PIPELINE_WIDTH),
           "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
