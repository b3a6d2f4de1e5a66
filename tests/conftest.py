"""Shared fixtures. Tests make their own small data; none needs ../shared."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-train"


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
