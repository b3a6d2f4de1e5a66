"""The one preprocessing definition, in numpy and Pillow only.

Training's eval transform, export verification and the torch-free runtime all call this module,
so a model sees the same pixels everywhere. It reproduces torchvision's
``Resize(resize) -> CenterCrop(crop) -> ToTensor() -> Normalize(mean, std)`` on PIL images
exactly (Pillow does the resampling in both cases; the arithmetic is float32 in the same order).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps

from alexnet_deploy.errors import DataError

T = TypeVar("T")
R = TypeVar("R")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Extensions Pillow reads that we accept from image folders (lower case, with dot).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jfif"}
)

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """Eval preprocessing: shorter side to ``resize``, centre crop ``crop``, scale to [0, 1],
    normalize with ``mean``/``std``. Output is float32 NCHW."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.crop > self.resize:
            raise DataError(f"preprocess crop {self.crop} is larger than resize {self.resize}")
        if self.interpolation not in _RESAMPLE:
            raise DataError(f"unknown interpolation {self.interpolation!r}; expected one of {sorted(_RESAMPLE)}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise DataError(f"unknown preprocess fields {sorted(unknown)}; expected {sorted(known)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @classmethod
    def for_image_size(cls, image_size: int, resize: int | None = None) -> "PreprocessSpec":
        """Default spec for a crop size: resize by the ImageNet ratio 256/224 unless given."""
        return cls(resize=resize or round(image_size * 256 / 224), crop=image_size)


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension Pillow reads (hidden files are ignored)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open any Pillow-readable image as RGB, with EXIF orientation applied.

    Raises DataError naming the file when it is empty, truncated or not an image.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file")
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    # Palette images with transparency must go through RGBA, or Pillow warns and drops it badly.
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    img.load()
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """torchvision ``Resize(spec.resize)`` (shorter side) then ``CenterCrop(spec.crop)``."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), _RESAMPLE[spec.interpolation])
    top = int(round((new_h - spec.crop) / 2.0))
    left = int(round((new_w - spec.crop) / 2.0))
    return img.crop((left, top, left + spec.crop, top + spec.crop))


def to_chw_float(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """PIL RGB image (already cropped) -> normalized float32 CHW array."""
    arr = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(images: Iterable[Image.Image | str | os.PathLike], spec: PreprocessSpec) -> np.ndarray:
    """Images (PIL or paths) -> float32 NCHW batch ready for any backend."""
    arrays = []
    for item in images:
        img = item if isinstance(item, Image.Image) else load_image(item)
        if img.mode != "RGB":
            img = _to_rgb(img)
        arrays.append(to_chw_float(resize_and_crop(img, spec), spec))
    if not arrays:
        return np.zeros((0, 3, spec.crop, spec.crop), dtype=np.float32)
    return np.stack(arrays)


def list_class_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """Scan an image folder with one sub-folder per class.

    Returns (class names sorted, [(path, class index)] sorted). Hidden entries and non-image
    files are ignored; a class folder with no images is an error naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected an image folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; expected {root}/<class>/<image files>")
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and is_image_file(p)
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise DataError(f"{root / name}: class folder has no images")
        samples.extend((p, index) for p in files)
    return classes, samples


def top_k(probs: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` most probable (class name, probability) pairs, best first."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stable probabilities, returned as float32."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def preprocess_threaded(images: Sequence[Image.Image | str | os.PathLike], spec: PreprocessSpec,
                        workers: int | None = None) -> np.ndarray:
    """``preprocess`` with decode/resize spread over threads (Pillow releases the GIL while it
    decodes and resamples), so an end-to-end run is not bound by one core. Same output, same order."""
    images = list(images)
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(images) <= 1:
        return preprocess(images, spec)
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty((len(images), 3, spec.crop, spec.crop), dtype=np.float32)

    def one(index: int) -> None:
        out[index] = preprocess([images[index]], spec)[0]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(len(images))))  # list() re-raises the first DataError
    return out


def one_ahead(work: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``work(item)`` for each item, in order, with the next item's work running in a background
    thread while the caller uses the current result: decoding batch i + 1 overlaps inference (or
    training) on batch i. An exception in ``work`` is raised where its result is taken."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as ahead:
        pending = None
        for item in items:
            upcoming = ahead.submit(work, item)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()


def image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given plus, for each directory, its image files (recursive, sorted, hidden skipped).

    Raises DataError naming a path that does not exist, or when nothing was found.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_file():
            found.append(item)
        elif item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p)
                                and not any(part.startswith(".") for part in p.relative_to(item).parts)))
        else:
            raise DataError(f"{item}: no such image file or directory")
    if not found:
        raise DataError(f"no image files in {', '.join(map(str, inputs))}")
    return found


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "PreprocessSpec", "is_image_file",
    "load_image", "resize_and_crop", "to_chw_float", "preprocess", "preprocess_threaded", "one_ahead", "image_files",
    "list_class_folder",
    "top_k", "softmax",
]
