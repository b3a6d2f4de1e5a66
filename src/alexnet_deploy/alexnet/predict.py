"""Classify images with a checkpoint, using the checkpoint's own preprocessing (deploy.preprocess)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from alexnet_deploy.alexnet.checkpoint import LoadedCheckpoint, load_checkpoint
from alexnet_deploy.deploy.preprocess import is_image_file, preprocess_kept, softmax, top_k
from alexnet_deploy.errors import DataError


@dataclass(frozen=True)
class Prediction:
    """The ``k`` most probable classes of one image, best first."""

    path: str
    top: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict:
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top]}


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, directories searched recursively for image files (hidden ones skipped)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p)
                                and not any(part.startswith(".") for part in p.relative_to(item).parts)))
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item}: no such image file or directory")
    if not found:
        raise DataError(f"no image files found in {', '.join(map(str, inputs))}")
    return found


def predict_checkpoint(checkpoint: LoadedCheckpoint, images: Sequence[str | os.PathLike], topk: int = 5,
                       batch_size: int = 32, skipped: list[tuple[str, str]] | None = None) -> list[Prediction]:
    """Top-``topk`` predictions for each image path with an already loaded checkpoint.

    An unreadable image raises DataError naming it, unless a ``skipped`` list is given: then it is
    left out and appended there as (path, reason), as ``Backend.classify`` does."""
    if topk < 1:
        raise DataError(f"--topk must be >= 1, got {topk}")
    results: list[Prediction] = []
    model = checkpoint.model.eval()
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        array, kept, bad = preprocess_kept(chunk, checkpoint.preprocess, skip=skipped is not None)
        if skipped is not None:
            skipped.extend(bad)
        if not kept:
            continue
        with torch.no_grad():
            batch = torch.from_numpy(array).to(next(model.parameters()).device)
            logits = model(batch).float().cpu().numpy()
        for index, top in zip(kept, top_k(softmax(logits), checkpoint.classes, topk)):
            results.append(Prediction(str(chunk[index]), tuple(top)))
    return results


def predict(checkpoint: str | os.PathLike, inputs: Sequence[str | os.PathLike], topk: int = 5,
            arch: str | None = None, num_classes: int | None = None,
            skipped: list[tuple[str, str]] | None = None) -> list[Prediction]:
    """Load ``checkpoint`` and classify every image in ``inputs`` (files or directories); see
    ``predict_checkpoint`` for ``skipped``."""
    loaded = load_checkpoint(checkpoint, arch=arch, num_classes=num_classes)
    return predict_checkpoint(loaded, collect_images(inputs), topk=topk, skipped=skipped)


__all__ = ["Prediction", "collect_images", "predict", "predict_checkpoint"]
