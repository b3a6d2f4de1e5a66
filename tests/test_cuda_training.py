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


def test_random_resized_crops_match_on_every_path(data):
    """The draws are the CPU generator's on every path: the GPU-resident and pinned-RAM batches are
    the same pixels, and equal the CPU's to the float rounding of the GPU's bilinear sampling."""
    from alexnet_deploy.alexnet.data import BatchStream, decode_eval, resolve_splits
    from alexnet_deploy.deploy.preprocess import PreprocessSpec

    splits = resolve_splits(data, val_split=0.25)
    spec = PreprocessSpec(resize=72, crop=63)
    cache = decode_eval(splits.train, spec)
    common = dict(augment="random-resized-crop", shuffle=True, seed=5)
    on_cpu = BatchStream(cache, 8, spec, **common)
    on_gpu = BatchStream(cache.to("cuda"), 8, spec, device="cuda", **common)
    pinned = BatchStream(cache, 8, spec, device="cuda", **common)
    for (a, _), (b, _), (c, _) in zip(on_cpu, on_gpu, pinned):
        assert torch.equal(b, c)
        assert torch.allclose(a, b.cpu(), atol=1e-3), (a - b.cpu()).abs().max()


@pytest.mark.parametrize("where,augment", [("gpu", "crop-flip"), ("ram", "random-resized-crop")])
def test_training_steps_never_make_the_host_wait_for_the_gpu(data, where, augment):
    """Between two reads of the statistics nothing waits for the GPU: the batch copy, the
    augmentation, the step and the statistics run with torch's sync debugging set to raise."""
    from alexnet_deploy.alexnet.data import BatchStream, decode_eval, resolve_splits, train_spec
    from alexnet_deploy.alexnet.distributed import DistContext
    from alexnet_deploy.alexnet.model import build_model
    from alexnet_deploy.alexnet.train import (TrainConfig, make_optimizer, make_scheduler, on_device,
                                              train_one_epoch)
    from alexnet_deploy.deploy.preprocess import PreprocessSpec

    config = TrainConfig(data=str(data), val_split=0.25, image_size=63, resize=72, batch_size=6, device="cuda",
                         amp=True, width=PIPELINE_WIDTH, augment=augment).resolved()
    cache = decode_eval(resolve_splits(data, val_split=0.25).train, train_spec(72))
    stream = BatchStream(cache.to("cuda") if where == "gpu" else cache, 6, PreprocessSpec(72, 63), augment=augment,
                         shuffle=True, device="cuda")
    model = on_device(build_model("alexnet2012", 3, width=PIPELINE_WIDTH), "cuda")
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, 2 * len(stream))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    dist = DistContext(device="cuda")
    train_one_epoch(config, dist, model, optimizer, scheduler, scaler, stream)   # warm-up: cuDNN autotuning

    def without_waits(batches):
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from batches
        finally:   # the one read after the last step may wait
            torch.cuda.set_sync_debug_mode("default")

    stream.epoch = 1
    try:
        sums = train_one_epoch(config, dist, model, optimizer, scheduler, scaler, without_waits(stream),
                               sync_every=10**6)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sums[2] == len(stream.indices())


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
