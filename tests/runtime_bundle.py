"""A real bundle for the runtime tests (test_backends, test_bench, test_cli_bench, test_runtime_imports).

Made once per test session with the real pipeline: an AlexNet-2012 checkpoint at
conftest.PIPELINE_WIDTH for 3 classes at 64 px, briefly trained on the generated images (so its
logits depend on the input) -> ``alexnet-deploy export`` (fp32 + fp16 ONNX, reference.npz) and,
only for the tests that ask for it, INT8 calibration on the same generated image folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import PIPELINE_WIDTH, train_briefly, write_image_folder

CLASSES = ("class_0", "class_1", "class_2")
IMAGE_SIZE = 64
MAX_BATCH = 4
_CACHE: dict[str, Path] = {}


def _checkpoint(root: Path, factory) -> Path:
    import numpy as np
    import torch

    from alexnet_deploy.alexnet.checkpoint import save_checkpoint
    from alexnet_deploy.alexnet.model import build_model
    from alexnet_deploy.deploy.preprocess import PreprocessSpec, list_class_folder, preprocess

    spec = PreprocessSpec(resize=72, crop=IMAGE_SIZE)
    _, samples = list_class_folder(images(factory))
    torch.manual_seed(0)
    model = build_model("alexnet2012", num_classes=len(CLASSES), width=PIPELINE_WIDTH)
    train_briefly(model, preprocess([p for p, _ in samples], spec), np.array([i for _, i in samples], np.int64))
    return save_checkpoint(root / "model.pt", model=model, arch="alexnet2012", classes=CLASSES,
                           preprocess=spec, config={}, epoch=0, metrics={})


def images(factory) -> Path:
    """A 3-class folder (class_0..2, 6 JPEGs each, 48 px) whose names match the bundle's classes."""
    if "images" not in _CACHE:
        _CACHE["images"] = write_image_folder(factory.mktemp("runtime-images"), classes=3, per_class=6, size=48)
    return _CACHE["images"]


def bundle(factory) -> Path:
    """fp32 + fp16 bundle (no int8, no engines), exported from a checkpoint beside it."""
    if "bundle" not in _CACHE:
        from alexnet_deploy.export.pipeline import export_bundle

        root = factory.mktemp("runtime-bundle")
        checkpoint = _checkpoint(root, factory)
        export_bundle(checkpoint, root / "bundle", fp16=True, max_batch=MAX_BATCH, engines=False)
        _CACHE["bundle"] = root / "bundle"
    return _CACHE["bundle"]


def int8_bundle(factory) -> Path:
    """The same bundle plus model.int8.onnx calibrated on the generated images."""
    if "int8" not in _CACHE:
        from alexnet_deploy.calibration import calibrate_bundle

        target = linked_copy(bundle(factory), factory.mktemp("runtime-int8") / "bundle")
        calibrate_bundle(target, calib_dir=images(factory), num_images=12, method="minmax", batch_size=4)
        _CACHE["int8"] = target
    return _CACHE["int8"]


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of a bundle whose large files are hard links (cheap); manifest.json is a real copy
    so a test can edit it without touching the shared bundle."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name != "manifest.json":
            os.link(path, target / path.name)
    shutil.copy2(source / "manifest.json", target / "manifest.json")
    return target
