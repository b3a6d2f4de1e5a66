"""A labelled image folder: one sub-folder per class, named like the model's classes.

Export's verification images, INT8 calibration and validation sets, bench's ``--data`` and
training's data all start here: the folder is listed once (sorted, hidden entries skipped), its
class names are mapped onto the model's, and a capped subset is taken round-robin over classes so
that every class is represented. How each user then samples (seeded stratified picks for
calibration and training splits) stays with that user, since it fixes their exact images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from alexnet_deploy.deploy.preprocess import list_class_folder
from alexnet_deploy.errors import DataError

Sample = tuple[Path, int]


@dataclass(frozen=True)
class LabelledFolder:
    """The listing of ``root``: class names (sorted) and (path, class index) samples (sorted)."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]

    @classmethod
    def scan(cls, root: str | os.PathLike, strict: bool = False) -> "LabelledFolder":
        """List ``root``; DataError naming it when it has no class folders or an empty one
        (unreadable sub-folders: see ``list_class_folder``)."""
        classes, samples = list_class_folder(root, strict)
        return cls(Path(root), tuple(classes), tuple(samples))

    def unknown_classes(self, model_classes: Sequence[str]) -> list[str]:
        """The folder's class names that the model does not have."""
        known = set(model_classes)
        return [name for name in self.classes if name not in known]

    def model_index(self, model_classes: Sequence[str], hint: str) -> list[int]:
        """For each folder class, its index among ``model_classes`` (see ``class_index``)."""
        return class_index(self.root, self.classes, model_classes, hint)

    def relabelled(self, model_classes: Sequence[str], hint: str) -> list[Sample]:
        """The samples with the model's class indices as labels."""
        index = self.model_index(model_classes, hint)
        return [(path, index[label]) for path, label in self.samples]


def class_index(root: str | os.PathLike, folder_classes: Sequence[str], model_classes: Sequence[str],
                hint: str) -> list[int]:
    """For each of ``root``'s class folders, its index among ``model_classes``; a DataError (ending
    with ``hint``) naming the folders the model does not know."""
    position = {name: i for i, name in enumerate(model_classes)}
    unknown = [name for name in folder_classes if name not in position]
    if unknown:
        raise DataError(f"{root}: class folders {unknown[:5]} are not among the model's classes "
                        f"({len(model_classes)} classes, e.g. {list(model_classes)[:10]}); {hint}")
    return [position[name] for name in folder_classes]


def round_robin(samples: Sequence[Sample], count: int | None = None) -> list[Sample]:
    """Up to ``count`` samples (all without it) taken round-robin over labels in label order, so a
    cap keeps the classes balanced; deterministic."""
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample[1], []).append(sample)
    longest = max((len(v) for v in by_label.values()), default=0)
    picked = [group[i] for i in range(longest) for _, group in sorted(by_label.items()) if i < len(group)]
    return picked[:count] if count else picked
