"""Calibration and held-out images: a seeded, class-stratified sample of an image folder,
preprocessed with the bundle's own PreprocessSpec and cached as ``.npz`` (no torch).

The cache key is the sha256 of everything the arrays depend on: the folder's file list, the
contents of the chosen files, the preprocessing, the count, the seed and the role (calibration
or validation). Change any of them and the set is rebuilt; otherwise the cached arrays are reused.
Caches hold the uint8 crops (4x smaller than float32, and normalizing them again is bit-exact)
in ``$ALEXNET_DEPLOY_CACHE`` or ``$XDG_CACHE_HOME/alexnet-deploy/calibration`` (default
``~/.cache/alexnet-deploy/calibration``), not in the bundle, which is copied to devices.
The folder is capped at ``$ALEXNET_DEPLOY_CACHE_MAX_GIB`` (default 2 GiB, about 25 sets of 512
images at 227 px): after each write the least recently used sets are deleted until it fits.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from alexnet_deploy.deploy.bundle.npz import load_npz
from alexnet_deploy.deploy.bundle.files import atomic_write_bytes
from alexnet_deploy.deploy.preprocess import PreprocessSpec, list_class_folder, load_image, resize_and_crop
from alexnet_deploy.deploy.progress import ProgressCallback, Tally
from alexnet_deploy.errors import BundleError, CalibrationError, DataError

log = logging.getLogger(__name__)
DEFAULT_CACHE_MAX_GIB = 2.0
ROLE_STAGES = {"calib": "calibration images", "val": "validation images"}   # progress stage of each role


def default_cache_dir() -> Path:
    """Where calibration sets are cached (see the module docstring)."""
    explicit = os.environ.get("ALEXNET_DEPLOY_CACHE")
    if explicit:
        return Path(explicit) / "calibration"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alexnet-deploy" / "calibration"


def cache_budget_bytes() -> int:
    """The cache folder's size cap, from ``$ALEXNET_DEPLOY_CACHE_MAX_GIB``."""
    raw = os.environ.get("ALEXNET_DEPLOY_CACHE_MAX_GIB", str(DEFAULT_CACHE_MAX_GIB))
    try:
        gib = float(raw)
    except ValueError:
        gib = float("nan")
    if not math.isfinite(gib) or gib < 0:
        raise CalibrationError(f"ALEXNET_DEPLOY_CACHE_MAX_GIB={raw!r}: expected a number of GiB, 0 or more")
    return int(gib * 1024**3)


def prune_cache(cache_dir: str | os.PathLike, keep: Path | None = None, budget: int | None = None) -> list[Path]:
    """Delete the least recently used ``*.npz`` sets (by mtime; hits touch theirs) until the
    folder holds at most ``budget`` bytes; ``keep`` (the set just written) is never deleted."""
    budget = cache_budget_bytes() if budget is None else budget
    entries = []
    for path in Path(cache_dir).glob("*.npz"):
        try:
            stat = path.stat()
        except FileNotFoundError:   # another process pruned it first
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total, removed = 0, []
    for _, size, path in sorted(entries, key=lambda e: e[0], reverse=True):
        if path != keep and total + size > budget:
            path.unlink(missing_ok=True)
            removed.append(path)
            continue
        total += size
    if removed:
        log.info("calibration cache over %.1f GiB: removed %d least recently used set(s)", budget / 1024**3,
                 len(removed))
    return removed


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Preprocessed images (float32 NCHW) with labels, the files they came from and provenance.

    ``labels`` index the folder's sorted class names (``classes``); ``files`` are relative to
    ``root``; ``skipped`` lists unreadable files (relative names) that were left out.
    """

    images: np.ndarray
    labels: np.ndarray
    files: tuple[str, ...]
    classes: tuple[str, ...]
    root: str
    cache_key: str
    cache_hit: bool = False
    cache_path: str | None = None
    skipped: tuple[str, ...] = ()
    random: bool = False
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def stratified_split(labels: Sequence[int], counts: Sequence[int], seed: int) -> list[list[int]]:
    """Split sample indices into disjoint groups of ``counts[i]`` indices, each balanced over
    classes (round-robin over per-class seeded permutations), deterministic for a seed.

    A group asks for more than the folder holds: it gets what is left.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    # Per class, a seeded order; interleaving the classes makes every prefix balanced.
    queues = [list(rng.permutation(by_class[c])) for c in sorted(by_class)]
    interleaved = [int(q[i]) for i in range(max((len(q) for q in queues), default=0)) for q in queues if i < len(q)]
    groups, start = [], 0
    for count in counts:
        groups.append(sorted(interleaved[start:start + count]))
        start += count
    return groups


def cache_key(root: Path, listing: Sequence[tuple[Path, int]], chosen: Sequence[int],
              spec: PreprocessSpec, count: int, seed: int, role: str) -> str:
    """sha256 over the file list, chosen files' bytes, preprocessing, count, seed and role."""
    digest = hashlib.sha256()
    meta = {"spec": spec.to_dict(), "count": count, "seed": seed, "role": role, "version": 1}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for path, label in listing:
        digest.update(f"{path.relative_to(root).as_posix()}\0{label}\n".encode())
    for index in chosen:
        digest.update(listing[index][0].read_bytes())
    return digest.hexdigest()


def load_set(root: str | os.PathLike, spec: PreprocessSpec, *, count: int, seed: int = 0, role: str = "calib",
             exclude: Sequence[str] = (), cache_dir: str | os.PathLike | None = None,
             progress: ProgressCallback | None = None) -> CalibrationSet:
    """A stratified sample of ``count`` images from ``root`` (one sub-folder per class).

    ``exclude`` are relative names that must not be chosen (e.g. the calibration sample when
    this is the held-out validation set). Cached in ``cache_dir`` when given. ``progress`` counts
    the images decoded (stage ``calibration images`` or ``validation images``; none on a cache hit).
    """
    root = Path(root)
    if count <= 0:
        raise CalibrationError(f"--num-images must be positive, got {count}")
    classes, listing = list_class_folder(root)
    excluded = set(exclude)
    allowed = [i for i, (p, _) in enumerate(listing) if p.relative_to(root).as_posix() not in excluded]
    chosen = [allowed[i] for i in stratified_split([listing[i][1] for i in allowed], [count], seed)[0]]
    if not chosen:
        raise DataError(f"{root}: no images left for the {role} set (all {len(listing)} are used elsewhere)")
    key = cache_key(root, listing, chosen, spec, count, seed, role)
    cache_path = Path(cache_dir) / f"{role}-{key[:32]}.npz" if cache_dir else None
    if cache_path is not None and cache_path.is_file():
        cached = _read_cache(cache_path, root, classes, key, spec)
        if cached is not None:
            log.info("%s set: reusing %d cached images from %s", role, len(cached), cache_path)
            with contextlib.suppress(OSError):   # a read-only shared cache still serves hits
                os.utime(cache_path)   # most recently used: the last to be pruned
            return cached
    # Read the cap before decoding, so a bad $ALEXNET_DEPLOY_CACHE_MAX_GIB fails before the slow part.
    budget = cache_budget_bytes() if cache_path is not None else None
    tally = Tally(progress, ROLE_STAGES.get(role, f"{role} images"), len(chosen), "images").update()
    crops, labels, files, skipped = _decode(root, [listing[i] for i in chosen], spec, tally)
    if cache_path is not None:
        _write_cache(cache_path, key, crops, labels, files, skipped)
        prune_cache(cache_path.parent, keep=cache_path, budget=budget)
    return CalibrationSet(images=normalize(crops, spec), labels=labels, files=files, classes=tuple(classes),
                          root=str(root), cache_key=key, cache_path=str(cache_path) if cache_path else None,
                          skipped=skipped)


def _decode(root: Path, chosen: Sequence[tuple[Path, int]], spec: PreprocessSpec, tally: Tally):
    """uint8 HWC crops, labels, relative names and skipped names of the chosen files."""
    crops, labels, files, skipped = [], [], [], []
    for path, label in chosen:
        relative = path.relative_to(root).as_posix()
        try:
            crops.append(np.asarray(resize_and_crop(load_image(path), spec), dtype=np.uint8))
        except DataError as exc:
            # Same policy as training: a bad file is reported and left out, never silently used.
            log.warning("skipping unreadable image %s", exc)
            skipped.append(relative)
        else:
            labels.append(label)
            files.append(relative)
        tally.advance()
    if not crops:
        raise DataError(f"{root}: none of the {len(chosen)} chosen images could be read (first: {skipped[0]})")
    return np.stack(crops), np.asarray(labels, np.int64), tuple(files), tuple(skipped)


def normalize(crops: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 NHWC crops -> float32 NCHW, the same float32 operations in the same order as
    deploy.preprocess.to_chw_float, so the result is bit-identical to ``preprocess``."""
    arr = crops.astype(np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def _write_cache(path: Path, key: str, crops: np.ndarray, labels: np.ndarray, files: tuple[str, ...],
                 skipped: tuple[str, ...]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, crops=crops, labels=labels, files=np.asarray(files, dtype=str),
             skipped=np.asarray(skipped, dtype=str), key=np.asarray(key))
    atomic_write_bytes(path, buffer.getvalue())


def _read_cache(path: Path, root: Path, classes: Sequence[str], key: str,
                spec: PreprocessSpec) -> CalibrationSet | None:
    try:
        npz = load_npz(path)
        if str(npz["key"]) != key:
            return None
        return CalibrationSet(images=normalize(npz["crops"], spec), labels=npz["labels"].astype(np.int64),
                              files=tuple(str(f) for f in npz["files"]), classes=tuple(classes), root=str(root),
                              cache_key=key, cache_hit=True, cache_path=str(path),
                              skipped=tuple(str(f) for f in npz["skipped"]))
    except (BundleError, KeyError, ValueError) as exc:
        # A truncated, corrupt or foreign cache is not an error: it is rebuilt.
        log.warning("ignoring unreadable calibration cache %s (%s)", path, exc)
        return None


def random_set(spec: PreprocessSpec, count: int, seed: int = 0) -> CalibrationSet:
    """Uniform random pixels, preprocessed like real images: for latency-only experiments.

    The result is stamped ``random=True``; callers must carry that into the manifest.
    """
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(count, spec.crop, spec.crop, 3), dtype=np.uint8).astype(np.float32) / 255.0
    images = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return CalibrationSet(images=np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32),
                          labels=np.full(count, -1, np.int64), files=(), classes=(), root="<random>",
                          cache_key=f"random-{count}-{seed}", random=True)
