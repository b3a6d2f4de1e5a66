"""Image folders for training: splits, a decoded uint8 cache in RAM, batched augmentation.

Why a cache: on a 2-core machine, decoding and resizing JPEGs every epoch in worker processes
competes with the model for the same cores. Each file is decoded once (via the one preprocessing
definition's ``load_image``) into a uint8 tensor at the resize size; per batch, the random crop
and flip are one indexed gather on uint8 and normalisation is one float op, so no workers are
needed and the model is never starved (``benchmarks/train_throughput.py`` measures it).

A folder too large for the RAM budget is streamed instead (``StreamedSet``): each batch's files are
decoded by a thread pool while the model works on the previous batch, and under DDP every rank
decodes only its own shard. Both kinds of set give identical pixels, so a run does not depend on
which one was used.

The validation cache holds exactly ``deploy.preprocess``'s resized, centre-cropped pixels, so
validation sees the same input as export and the torch-free runtime.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from alexnet_deploy.deploy.preprocess import PreprocessSpec, list_class_folder, load_image, one_ahead, resize_and_crop
from alexnet_deploy.deploy.progress import ProgressCallback, Tally
from alexnet_deploy.deploy.platform.system import mem_available
from alexnet_deploy.errors import DataError

log = logging.getLogger(__name__)

Sample = tuple[Path, int]
AUGMENTS = ("crop-flip", "random-resized-crop", "none")
CACHE_MODES = ("auto", "ram", "stream", "gpu")
RAM_FRACTION = 0.6  # of MemAvailable, shared by the processes of one machine, for the decoded caches
GPU_FRACTION = 0.5  # of the GPU's free memory, for a decoded set kept on the GPU (the model needs the rest)


@dataclass(frozen=True)
class Splits:
    """Class names and the (path, class index) samples of the train and validation sets."""

    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    source: str  # how the split was made, for the log


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class DecodedSet:
    """Decoded uint8 images (N, 3, H, W) with labels; files that failed to decode are listed."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: tuple[SkippedFile, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, chunks: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 pixels and labels of each chunk of indices (gathered where the set lives)."""
        for chosen in chunks:
            chosen = to_device_nowait(chosen, self.images.device)
            yield self.images[chosen], self.labels[chosen]

    def to(self, device: str) -> "DecodedSet":
        """The same set on ``device`` (``--cache gpu``: an epoch then needs no host work but the
        index permutation)."""
        return DecodedSet(self.images.to(device), self.labels.to(device), self.skipped)


class StreamedSet:
    """Samples decoded per batch (for folders larger than the RAM budget), with the same pixels as
    ``DecodedSet``. An unreadable file is reported once by path and never read again; in training
    (``fill=True``) its slot takes the next readable image of the batch so every rank keeps the same
    batch shape, in evaluation (``fill=False``) it is dropped. ``strict`` makes it fatal."""

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, *, strict: bool = False, workers: int = 2,
                 fill: bool = True):
        self.samples = tuple(samples)
        self.spec, self.strict, self.fill = spec, strict, fill
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self.workers = max(1, workers)
        self._bad: dict[int, SkippedFile] = {}
        self._drained = 0   # how many of _bad drain_skipped has handed out
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def skipped(self) -> tuple[SkippedFile, ...]:
        with self._lock:
            return tuple(self._bad.values())

    def drain_skipped(self) -> tuple[SkippedFile, ...]:
        """Unreadable files found since the last call (training reports them once, per epoch)."""
        with self._lock:
            found = tuple(self._bad.values())[self._drained:]
            self._drained += len(found)
        return found

    def batches(self, chunks: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Like ``DecodedSet.batches``; the next chunk is decoded while the caller uses this one."""
        with ThreadPoolExecutor(max_workers=self.workers) as decoders:
            yield from one_ahead(lambda chosen: self._load(chosen, decoders), chunks)

    def _load(self, chosen: torch.Tensor, decoders: ThreadPoolExecutor) -> tuple[torch.Tensor, torch.Tensor]:
        indices = [int(i) for i in chosen]
        arrays = list(decoders.map(self._decode_index, indices))
        good = [k for k, array in enumerate(arrays) if array is not None]
        if not good:
            if self.fill:
                paths = ", ".join(str(self.samples[i][0]) for i in indices[:3])
                raise DataError(f"every image of a batch is unreadable ({paths} ...); check the data folder")
            size = self.spec.crop
            return torch.empty((0, 3, size, size), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        if self.fill:   # a bad slot takes the next readable image of the batch (deterministic: no RNG)
            slots = [k if arrays[k] is not None else next((g for g in good if g > k), good[0])
                     for k in range(len(arrays))]
        else:
            slots = good
        pixels = torch.from_numpy(np.stack([arrays[k] for k in slots]))
        return pixels, self.labels[[indices[k] for k in slots]]

    def _decode_index(self, index: int) -> np.ndarray | None:
        if index in self._bad:
            return None
        path = self.samples[index][0]
        try:
            return _decode_one(path, self.spec)
        except DataError as exc:
            if self.strict:
                raise DataError(f"{exc} (--strict stops at unreadable files)") from exc
            with self._lock:
                if index not in self._bad:
                    log.warning("skipping %s", exc)
                    self._bad[index] = SkippedFile(str(path), str(exc))
            return None


def resolve_splits(data: str | os.PathLike, val: str | os.PathLike | None = None,
                   val_split: float | None = None, seed: int = 0, max_per_class: int | None = None,
                   strict: bool = False) -> Splits:
    """Find train/val samples: ``data/train`` + ``data/val``, or ``data`` + ``val``, or a stratified
    seeded ``val_split`` of ``data``. ``max_per_class`` caps each class (seeded random subset) of
    every scanned folder before any split."""
    data = Path(data)
    if val is not None and val_split is not None:
        raise DataError("pass either --val DIR or --val-split F, not both")
    if val is None and val_split is None and (data / "train").is_dir() and (data / "val").is_dir():
        data, val = data / "train", data / "val"
    classes, train = list_class_folder(data, strict)
    train = _cap(train, max_per_class, seed)
    if val is not None:
        val_classes, val_samples = list_class_folder(val, strict)
        if val_classes != classes:
            raise DataError(f"{val}: class folders {val_classes} differ from {data}: {classes}")
        return Splits(tuple(classes), tuple(train), tuple(_cap(val_samples, max_per_class, seed)),
                      f"{data} + {val}")
    if val_split is None:
        raise DataError(f"{data}: no train/ and val/ inside; pass --val DIR or --val-split F (e.g. 0.1)")
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1 (exclusive), got {val_split}")
    train, held = stratified_split(train, val_split, seed)
    return Splits(tuple(classes), tuple(train), tuple(held), f"{data} split {1 - val_split:g}/{val_split:g}")


def _cap(samples: list[Sample], max_per_class: int | None, seed: int) -> list[Sample]:
    if max_per_class is None:
        return samples
    if max_per_class < 1:
        raise DataError(f"--max-per-class must be >= 1, got {max_per_class}")
    out: list[Sample] = []
    for label, items in sorted(_by_class(samples).items()):
        items = sorted(items)
        random.Random(f"{seed}-cap-{label}").shuffle(items)
        out.extend(sorted(items[:max_per_class]))
    return out


def _by_class(samples: Sequence[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample[1], []).append(sample)
    return groups


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of each class (at least one image when a class has two or more)."""
    train: list[Sample] = []
    held: list[Sample] = []
    for label, items in sorted(_by_class(samples).items()):
        items = sorted(items)
        random.Random(f"{seed}-split-{label}").shuffle(items)
        n_val = min(max(1, round(len(items) * fraction)), len(items) - 1) if len(items) > 1 else 0
        held.extend(items[:n_val])
        train.extend(items[n_val:])
    return sorted(train), sorted(held)


def train_spec(resize: int) -> PreprocessSpec:
    """Training pixels: shorter side to ``resize``, centre square ``resize`` x ``resize``
    (the random crop is taken from it per batch)."""
    return PreprocessSpec(resize=resize, crop=resize)


def decode_eval(samples: Sequence[Sample], spec: PreprocessSpec, *, strict: bool = False, workers: int = 2,
                progress: ProgressCallback | None = None, stage: str = "decode") -> DecodedSet:
    """Decode into RAM at exactly ``deploy.preprocess``'s resize + centre crop, as uint8 (evaluation
    data; training data uses ``train_spec(resize)``); ``progress`` counts the images."""
    tally = Tally(progress, stage, len(samples), "images")
    return _decode(samples, spec, strict=strict, workers=workers, tally=tally)


def cache_bytes(count: int, size: int) -> int:
    """RAM a decoded uint8 cache of ``count`` images at ``size`` x ``size`` takes."""
    return count * 3 * size * size


def ram_budget() -> int | None:
    """Bytes this process may use for decoded caches: a share of MemAvailable split between the
    processes torchrun starts on this machine (they decode at the same time). None if unknown."""
    avail = mem_available()
    if avail is None:
        return None
    return int(RAM_FRACTION * avail) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def choose_cache(mode: str, need: int, budget: int | None, gpu_budget: int | None = None) -> str:
    """'gpu', 'ram' or 'stream' for ``--cache mode`` given the bytes needed, the RAM budget and, when
    training on a GPU, the GPU budget (auto keeps the set on the GPU when it fits there)."""
    if mode not in CACHE_MODES:
        raise DataError(f"--cache {mode!r}: expected one of {', '.join(CACHE_MODES)}")
    if mode == "gpu" and gpu_budget is None:
        raise DataError("--cache gpu keeps the decoded images on the GPU: it needs --device cuda and a CUDA GPU")
    if mode != "auto":
        return mode
    if gpu_budget is not None and need <= gpu_budget and (budget is None or need <= budget):
        return "gpu"   # decoded in RAM first, then moved
    return "ram" if budget is None or need <= budget else "stream"


def _decode_one(path: Path, spec: PreprocessSpec) -> np.ndarray:
    img: Image.Image = resize_and_crop(load_image(path), spec)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def _decode(samples: Sequence[Sample], spec: PreprocessSpec, *, strict: bool, workers: int, tally: Tally) -> DecodedSet:
    _check_cache_size(len(samples), spec.crop)
    tally.update()
    images = torch.empty((len(samples), 3, spec.crop, spec.crop), dtype=torch.uint8)
    labels = torch.empty(len(samples), dtype=torch.int64)
    skipped: list[SkippedFile] = []
    kept = 0

    def work(sample: Sample):
        try:
            return _decode_one(sample[0], spec), None
        except DataError as exc:
            return None, SkippedFile(str(sample[0]), str(exc))

    # Pillow releases the GIL while decoding and resizing, so threads use several cores.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (path, label), (array, problem) in zip(samples, pool.map(work, samples, chunksize=64)):
            if problem is not None:
                if strict:
                    raise DataError(f"{problem.reason} (--strict stops at unreadable files)")
                log.warning("skipping %s", problem.reason)
                skipped.append(problem)
            else:
                images[kept] = torch.from_numpy(array)
                labels[kept] = label
                kept += 1
            tally.advance()
    return DecodedSet(images[:kept].clone() if kept < len(samples) else images, labels[:kept], tuple(skipped))


def _check_cache_size(count: int, size: int) -> None:
    need, budget = cache_bytes(count, size), ram_budget()
    if budget is not None and need > budget:
        raise DataError(f"decoding {count} images at {size} px needs {need / 2**30:.1f} GiB of RAM but the "
                        f"budget is {budget / 2**30:.1f} GiB; use --cache stream (decode per batch), "
                        "--max-per-class or a smaller --resize")


def normalize(batch: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 NCHW -> float32 NCHW, the same arithmetic as ``deploy.preprocess.to_chw_float``, on the
    batch's own device."""
    mean = to_device_nowait(torch.tensor(spec.mean, dtype=torch.float32), batch.device).view(1, 3, 1, 1)
    std = to_device_nowait(torch.tensor(spec.std, dtype=torch.float32), batch.device).view(1, 3, 1, 1)
    return (batch.to(torch.float32) / 255.0 - mean) / std


def crop_flip(batch: torch.Tensor, crop: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Per-sample random ``crop`` x ``crop`` window and horizontal flip, as one uint8 gather on the
    batch's device. The random draws come from the CPU ``generator`` whatever the device, so the
    same seed crops the same pixels on every path (RAM, streamed, GPU-resident)."""
    n, _, h, w = batch.shape
    top = torch.randint(0, h - crop + 1, (n,), generator=generator)
    left = torch.randint(0, w - crop + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    top, left, flips = to_device_nowait(torch.stack([top, left, flips.long()]), batch.device)   # one copy
    flips = flips.bool()
    steps = torch.arange(crop, device=batch.device)
    rows = top[:, None] + steps[None, :]
    cols = torch.where(flips[:, None], left[:, None] + crop - 1 - steps[None, :], left[:, None] + steps[None, :])
    picked = batch[torch.arange(n, device=batch.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).contiguous()   # (n, crop, crop, 3) -> NCHW


def random_resized_crop(batch: torch.Tensor, crop: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.35, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
                        ) -> torch.Tensor:
    """Inception-style random-resized-crop + flip for the whole batch with one ``grid_sample``.

    Returns float32 pixels in [0, 255] (bilinear sampling). The default minimum scale is 0.35 rather
    than torchvision's 0.08 because short CPU runs cannot afford such strong augmentation. The draws
    come from the CPU ``generator``; on a GPU the sampling arithmetic is the GPU's, so its pixels
    equal the CPU's to float rounding (identical between the GPU-resident and pinned-RAM paths).
    """
    n = batch.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])), generator=generator)
    aspect = torch.exp(log_ratio)
    sw = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the width
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sw)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sh)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sw * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    # The grid (n x crop x crop x 2 floats, 4x the batch's uint8 bytes) is computed where the batch is.
    theta = to_device_nowait(theta, batch.device)
    grid = torch.nn.functional.affine_grid(theta, [n, 3, crop, crop], align_corners=False)
    return torch.nn.functional.grid_sample(batch.to(torch.float32), grid, mode="bilinear",
                                           padding_mode="border", align_corners=False)


class BatchStream:
    """Seeded, shardable batches from a DecodedSet or StreamedSet.

    ``rank``/``world`` split the samples of each epoch's global permutation so that every process
    sees a different part and all processes make the same number of steps (what DDP needs).
    """

    def __init__(self, data: DecodedSet | StreamedSet, batch_size: int, spec: PreprocessSpec, *, augment: str = "none",
                 shuffle: bool = False, seed: int = 0, rank: int = 0, world: int = 1, equal_steps: bool = True,
                 device: str = "cpu"):
        if augment not in AUGMENTS:
            raise DataError(f"unknown augment {augment!r}; expected one of {', '.join(AUGMENTS)}")
        self.data, self.batch_size, self.spec, self.augment = data, batch_size, spec, augment
        self.device = device   # where the crop, flip and normalize run (the uint8 batch travels there)
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.equal_steps = equal_steps  # False for evaluation: every sample once, step counts may differ
        self.epoch = 0

    def indices(self) -> torch.Tensor:
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        mine = order[self.rank::self.world]
        # DDP needs the same number of steps on every rank: drop the (at most world-1) extra samples.
        return mine[:n // self.world] if self.equal_steps else mine

    def __len__(self) -> int:
        return (len(self.indices()) + self.batch_size - 1) // self.batch_size   # the last, partial batch included

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 64 + self.rank)
        idx = self.indices()
        chunks = (idx[start:start + self.batch_size] for start in range(0, len(self) * self.batch_size,
                                                                          self.batch_size))
        for pixels, labels in copied_ahead(self.data.batches(chunks), self.device):
            yield self._transform(pixels, generator), labels

    def _transform(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        crop = self.spec.crop
        if self.augment == "crop-flip":
            pixels = crop_flip(pixels, crop, generator)
        elif self.augment == "random-resized-crop":
            pixels = random_resized_crop(pixels, crop, generator)
        elif pixels.shape[-1] != crop:  # no augmentation: centre crop (eval data is already cropped)
            top, left = (pixels.shape[-2] - crop) // 2, (pixels.shape[-1] - crop) // 2
            pixels = pixels[..., top:top + crop, left:left + crop]
        return normalize(pixels, self.spec)


def to_device_nowait(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, without making the host wait: as it is when already there; to a GPU
    from pinned memory with a non-blocking copy (a plain copy from pageable memory waits for the
    whole queue of GPU work, one hidden host sync per call)."""
    target = torch.device(device)
    if tensor.device.type == target.type and target.index in (None, tensor.device.index):
        return tensor
    if target.type == "cuda":
        return tensor.pin_memory().to(target, non_blocking=True)
    return tensor.to(target)


def copied_ahead(batches: Iterable[tuple[torch.Tensor, ...]], device: str) -> Iterator[tuple[torch.Tensor, ...]]:
    """``batches`` on ``device``. To a GPU, host batches are copied from pinned memory on a side
    stream one batch ahead, so the copy of batch k+1 overlaps the computation on batch k; the
    consumer's stream waits for each batch's own copy only. Batches already there pass through."""
    target = torch.device(device)
    if target.type != "cuda":
        yield from (tuple(to_device_nowait(t, target) for t in batch) for batch in batches)
        return
    side = torch.cuda.Stream(target)

    def start(batch: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], torch.cuda.Event | None]:
        if all(t.device.type == "cuda" for t in batch):
            return batch, None   # the GPU-resident cache: nothing to copy
        with torch.cuda.stream(side):
            moved = tuple(to_device_nowait(t, target) for t in batch)
            done = torch.cuda.Event()
            done.record(side)
        return moved, done

    def ready(pending: tuple[tuple[torch.Tensor, ...], torch.cuda.Event | None]) -> tuple[torch.Tensor, ...]:
        moved, done = pending
        if done is not None:
            stream = torch.cuda.current_stream(target)
            stream.wait_event(done)
            for t in moved:   # memory allocated on the side stream, used on this one
                t.record_stream(stream)
        return moved

    pending = None
    for batch in batches:
        started = start(batch)
        if pending is not None:
            yield ready(pending)
        pending = started
    if pending is not None:
        yield ready(pending)


__all__ = ["Splits", "SkippedFile", "DecodedSet", "StreamedSet", "AUGMENTS", "CACHE_MODES", "resolve_splits",
           "stratified_split", "train_spec", "decode_eval", "cache_bytes", "ram_budget",
           "choose_cache", "normalize", "crop_flip", "random_resized_crop", "BatchStream", "to_device_nowait",
           "copied_ahead"]
