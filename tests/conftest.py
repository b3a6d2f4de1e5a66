"""Shared fixtures. Tests make their own small data; none needs ../shared."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-train"
# Width of the AlexNet the pipeline tests train and export: the paper's layers (LRN, pools, dropout,
# 6x6 pool, three FC) with 1/8 of the channels and FC units, ~0.9 M parameters and a ~4 MB ONNX
# instead of ~58 M and ~233 MB. Tests of the full-size network itself (parameter counts, the full
# exports in test_export_onnx.py and test_cli_export.py) build it at width 1.0.
PIPELINE_WIDTH = 0.125


def write_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 40, seed: int = 0) -> Path:
    """Write ``classes`` folders of ``per_class`` JPEGs each. Each class has its own colour and
    stripe pattern so that a tiny model can learn it; noise keeps images distinct."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros((size, size, 3), np.float32)
        base[..., c % 3] = 180.0
        base[:, (np.arange(size) // (2 + c)) % 2 == 0, :] += 60.0
        for i in range(per_class):
            noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"img_{i:03d}.jpg", quality=95)
    return root


def train_briefly(model, images: np.ndarray, labels: np.ndarray, steps: int = 6) -> None:
    """A few AdamW steps so the weights are no longer the random init (inline: no train module).
    A random-init AlexNet's logits are nearly the same for every input (the biases dominate); a few
    steps make them depend on the image ~10x more, so parity and int8 checks see real differences."""
    import torch

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()


@contextmanager
def scratch_dir(factory, name: str):
    """A module-lifetime temp dir, deleted when the module's tests are done: exports of the real model
    are ~230 MB each and pytest would otherwise keep every module's dir until the session ends."""
    path = factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A 3-class folder of 6 JPEGs each, 40x40 px."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The real CIFAR-10 training folder, or skip when ../shared is not beside the clone."""
    if not SHARED_CIFAR.is_dir():
        pytest.skip(f"real CIFAR-10 images not found at {SHARED_CIFAR} (only present on the build machines)")
    return SHARED_CIFAR


@pytest.fixture
def small_tmpfs(tmp_path: Path, request):
    """A real, small tmpfs mounted in tmp_path (its size: the test module's TMPFS_SIZE, default 4m),
    to fill a file system for real; skips with the reason where mounting needs root."""
    import subprocess

    mount = tmp_path / "tmpfs"
    mount.mkdir()
    size = getattr(request.module, "TMPFS_SIZE", "4m")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
