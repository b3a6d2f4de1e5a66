"""The one preprocessing definition, in numpy and Pillow only.

Training's eval transform, export verification and the torch-free runtime all call this module,
so a model sees the same pixels everywhere. It reproduces torchvision's
``Resize(resize) -> CenterCrop(crop) -> ToTensor() -> Normalize(mean, std)`` on PIL images
exactly (Pillow does the resampling in both cases; the arithmetic is float32 in the same order).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps

from alexnet_deploy.errors import DataError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Extensions Pillow reads that we accept from image folders (lower case, with dot).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jfif"}
)

# Decoded pixels above this are refused before decoding (Pillow itself only warns up to twice it).
MAX_DECODED_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# A resized image above this is refused: resizing the shorter side of a 1 x 40000 strip to 256 px
# would allocate gigabytes for a picture nobody can classify.
MAX_RESIZED_PIXELS = 1 << 25

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
        if not (isinstance(self.crop, int) and isinstance(self.resize, int) and self.crop >= 1):
            raise DataError(f"preprocess resize {self.resize!r} and crop {self.crop!r} must be positive integers")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DataError(f"preprocess mean {list(self.mean)} / std {list(self.std)}: expected 3 values each, "
                            "std > 0")
        if self.crop > self.resize:
            raise DataError(f"preprocess crop {self.crop} is larger than resize {self.resize}")
        if self.interpolation not in _RESAMPLE:
            raise DataError(f"unknown interpolation {self.interpolation!r}; expected one of {sorted(_RESAMPLE)}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessSpec":
        known = {f for f in cls.__dataclass_fields__}
        if not isinstance(data, Mapping):
            raise DataError(f"preprocess must be a mapping of {sorted(known)}, got {type(data).__name__}")
        unknown = set(data) - known
        if unknown:
            raise DataError(f"unknown preprocess fields {sorted(unknown)}; expected {sorted(known)}")
        values = dict(data)
        try:
            for key in ("mean", "std"):
                if key in values:
                    values[key] = tuple(float(v) for v in values[key])
        except (TypeError, ValueError) as exc:
            raise DataError(f"preprocess mean/std must be lists of 3 numbers ({exc})") from exc
        return cls(**values)

    @classmethod
    def coerce(cls, spec: "PreprocessSpec | Mapping[str, Any]") -> "PreprocessSpec":
        """A PreprocessSpec as is, or one made from a mapping such as the manifest's ``preprocess``."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        raise DataError(f"expected a PreprocessSpec or the manifest's preprocess mapping, got {type(spec).__name__}")

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
        with warnings.catch_warnings():
            # Pillow only warns between its two limits; _check_size refuses those images itself.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            _check_size(img.size)   # from the header, before any pixel is decoded
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except DataError as exc:
        if str(path) in str(exc):
            raise
        raise DataError(f"{path}: {exc}") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from exc


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise DataError(f"image is {width}x{height}: it has no pixels")
    if width * height > MAX_DECODED_PIXELS:
        raise DataError(f"image is {width}x{height} ({width * height / 1e6:.0f} M pixels), over the "
                        f"{MAX_DECODED_PIXELS / 1e6:.0f} M pixel limit; downscale it first")


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
    _check_size(img.size)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise DataError(f"image is {width}x{height}: resizing its shorter side to {spec.resize} px would make "
                        f"it {new_w}x{new_h}, over the {MAX_RESIZED_PIXELS / 1e6:.0f} M pixel limit; crop it "
                        "to a less extreme aspect ratio first")
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


def preprocess(images: Iterable[Image.Image | np.ndarray | str | os.PathLike],
               spec: PreprocessSpec | Mapping[str, Any]) -> np.ndarray:
    """Images (paths, PIL images or HWC uint8 arrays) -> float32 NCHW batch ready for any backend.
    ``spec`` is a PreprocessSpec or the manifest's ``preprocess`` mapping."""
    spec = PreprocessSpec.coerce(spec)
    arrays = [_one(item, spec) for item in images]
    if not arrays:
        return np.zeros((0, 3, spec.crop, spec.crop), dtype=np.float32)
    return np.stack(arrays)


def _one(item: Any, spec: PreprocessSpec) -> np.ndarray:
    try:
        return to_chw_float(resize_and_crop(_as_image(item), spec), spec)
    except DataError as exc:
        name = _name(item)
        if isinstance(item, (str, os.PathLike)) and name not in str(exc):
            raise DataError(f"{name}: {exc}") from exc
        raise


def _as_image(item: Any) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an HWC uint8 array; DataError naming a path."""
    if isinstance(item, (str, os.PathLike)):
        img = load_image(item)
    elif isinstance(item, Image.Image):
        img = item
    elif isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[-1] in (3, 4))):
            raise DataError(f"a numpy image must be HWC uint8 RGB (H, W, 3), got shape {item.shape} {item.dtype}; "
                            "for a preprocessed float32 NCHW batch call infer() instead")
        img = Image.fromarray(item)
    else:
        raise DataError(f"cannot read an image from a {type(item).__name__}; expected a path, a PIL image or "
                        "an HWC uint8 numpy array")
    if img.width < 1 or img.height < 1:
        raise DataError(f"{_name(item)}: image is {img.width}x{img.height}: it has no pixels")
    return img if img.mode == "RGB" else _to_rgb(img)


def _name(item: Any) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__}>"


def list_class_folder(root: str | os.PathLike, strict: bool = False) -> tuple[list[str], list[tuple[Path, int]]]:
    """Scan an image folder with one sub-folder per class.

    Returns (class names sorted, [(path, class index)] sorted). Hidden entries and non-image
    files are ignored; a class folder with no images, or one that cannot be read, is an error naming
    it. A sub-folder inside a class that cannot be read is skipped with a warning naming it, like an
    unreadable image (``strict``: an error instead)."""
    root = Path(root)
    try:
        if not root.is_dir():
            raise DataError(f"{root}: not a directory; expected an image folder with one sub-folder per class")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:   # e.g. a folder above it that this user may not enter
        raise DataError(f"{root}: cannot read the folder ({exc.strerror or exc})") from exc
    if not classes:
        raise DataError(f"{root}: no class sub-folders; expected {root}/<class>/<image files>")
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        if not os.access(root / name, os.R_OK | os.X_OK):
            raise DataError(f"{root / name}: class folder cannot be read (permission denied)")
        files = _images_under(root / name, strict)
        if not files:
            raise DataError(f"{root / name}: class folder has no images")
        samples.extend((p, index) for p in files)
    return classes, samples


def _images_under(folder: Path, strict: bool) -> list[Path]:
    """Image files below ``folder``, sorted, hidden entries skipped; unreadable sub-folders are
    skipped with a warning naming them, or raise DataError when ``strict``."""
    def unreadable(exc: OSError) -> None:
        if strict:
            raise DataError(f"{exc.filename}: cannot read this folder ({exc.strerror}); --strict stops at "
                            "unreadable folders")
        log.warning("skipping unreadable folder %s (%s)", exc.filename, exc.strerror)

    found = []
    for parent, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(parent) / f for f in files
                     if not f.startswith(".") and is_image_file(Path(parent) / f) and (Path(parent) / f).is_file())
    return sorted(found)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stable probabilities, returned as float32."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def preprocess_threaded(images: Sequence[Image.Image | str | os.PathLike], spec: PreprocessSpec | Mapping[str, Any],
                        workers: int | None = None) -> np.ndarray:
    """``preprocess`` with decode/resize spread over threads (Pillow releases the GIL while it
    decodes and resamples), so an end-to-end run is not bound by one core. Same output, same order."""
    return preprocess_kept(images, spec, workers=workers)[0]


def preprocess_kept(images: Sequence[Any], spec: PreprocessSpec | Mapping[str, Any], workers: int | None = None,
                    skip: bool = False) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """``preprocess_threaded`` that, with ``skip``, leaves unreadable images out instead of raising.

    Returns (batch of the readable images, their indices in ``images``, [(path, reason)] of the
    unreadable ones). Without ``skip`` the first unreadable image raises DataError naming it."""
    images, spec = list(images), PreprocessSpec.coerce(spec)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise DataError(f"workers={workers!r}: expected a positive number of decode threads")
    workers = workers or min(8, os.cpu_count() or 1)
    out = np.empty((len(images), 3, spec.crop, spec.crop), dtype=np.float32)

    def one(index: int) -> str | None:
        try:
            out[index] = preprocess([images[index]], spec)[0]
        except DataError as exc:
            if not skip:
                raise
            return str(exc)
        return None

    if workers <= 1 or len(images) <= 1:
        problems = [one(i) for i in range(len(images))]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems = list(pool.map(one, range(len(images))))  # list() re-raises the first DataError
    kept = [i for i, problem in enumerate(problems) if problem is None]
    bad = [(_name(images[i]), problem) for i, problem in enumerate(problems) if problem is not None]
    return (out if len(kept) == len(images) else out[kept]), kept, bad


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


def image_files(inputs: Sequence[str | os.PathLike], strict: bool = False) -> list[Path]:
    """Files as given plus, for each directory, its image files (recursive, sorted, hidden skipped;
    an unreadable sub-folder is skipped with a warning naming it, or an error when ``strict``).

    Raises DataError naming a path that does not exist, or when nothing was found.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_file():
            found.append(item)
        elif item.is_dir():
            found.extend(_images_under(item, strict))
        else:
            raise DataError(f"{item}: no such image file or directory")
    if not found:
        raise DataError(f"no image files in {', '.join(map(str, inputs))}")
    return found


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "PreprocessSpec", "is_image_file",
    "load_image", "resize_and_crop", "to_chw_float", "preprocess", "preprocess_threaded", "preprocess_kept", "one_ahead", "image_files",
    "list_class_folder",
    "softmax",
]
