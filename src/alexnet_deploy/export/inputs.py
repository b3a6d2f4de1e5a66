"""Verification inputs for export checks: real images when given, generated ones otherwise (numpy only)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from alexnet_deploy.deploy.dataset import LabelledFolder, round_robin
from alexnet_deploy.deploy.preprocess import PreprocessSpec, is_image_file, load_image, resize_and_crop, to_chw_float
from alexnet_deploy.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerificationSet:
    """Preprocessed float32 NCHW ``inputs``; ``labels`` (int64, indices into the model's classes)
    when the folder's class names match the model's, else None; ``source`` says where they came from."""

    inputs: np.ndarray
    labels: np.ndarray | None
    files: tuple[str, ...]
    source: str
    folder: str | None = None
    # uint8 N x crop x crop x 3 (resized and cropped, not normalized): kept in reference.npz so a
    # device can re-run the manifest's normalization and catch a wrong mean/std (`verify`).
    raw_crops: np.ndarray | None = None


def _raw_crops(images: Sequence[Image.Image | Path], spec: PreprocessSpec) -> np.ndarray:
    crops = [resize_and_crop(img if isinstance(img, Image.Image) else load_image(img), spec) for img in images]
    return np.stack([np.asarray(c, dtype=np.uint8) for c in crops])


def _normalized(crops: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The float32 NCHW inputs of already resized and cropped uint8 images (what preprocess() gives)."""
    return np.stack([to_chw_float(Image.fromarray(crop), spec) for crop in crops])


def from_folder(folder: str | os.PathLike, spec: PreprocessSpec, model_classes: Sequence[str],
                count: int, source: str) -> VerificationSet:
    """Up to ``count`` images from a class folder (``<class>/<images>``) or a flat folder of images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory; --verify-data expects an image folder")
    has_classes = any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    if has_classes:
        labelled = LabelledFolder.scan(folder)
        picked = round_robin(labelled.samples, count)
        labels = None
        if labelled.unknown_classes(model_classes):
            log.warning("%s: class folders %s do not match the model's classes; parity is checked "
                        "without labels", folder, list(labelled.classes[:5]))
        else:
            index = labelled.model_index(model_classes, "")
            labels = np.array([index[i] for _, i in picked], dtype=np.int64)
    else:
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
        if not files:
            raise DataError(f"{folder}: no images found (expected <class>/<image> folders or image files)")
        picked, labels = [(p, -1) for p in files[:count]], None
    crops = _raw_crops([p for p, _ in picked], spec)   # each image decoded once, for both arrays
    names = tuple(str(p.relative_to(folder)) for p, _ in picked)
    return VerificationSet(inputs=_normalized(crops, spec), labels=labels, files=names, source=source,
                           folder=str(folder.resolve()), raw_crops=crops)


def generated(spec: PreprocessSpec, count: int, seed: int = 0) -> VerificationSet:
    """Smooth random RGB images (not noise: blurred blobs look more like photos to a conv net)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        images.append(Image.fromarray(small).resize((spec.resize, spec.resize), Image.Resampling.BICUBIC))
    crops = _raw_crops(images, spec)
    return VerificationSet(inputs=_normalized(crops, spec), labels=None,
                           files=tuple(f"generated_{i:03d}" for i in range(count)), source="generated", raw_crops=crops)


__all__ = ["VerificationSet", "from_folder", "generated"]
