"""Training: ``TrainConfig`` (fields = CLI flag names), ``train()``, ``evaluate()``; DDP under torchrun.

Two recipes. ``paper`` is the 2012 recipe exactly (SGD momentum 0.9, weight decay 5e-4, lr 0.01,
step schedule dividing by 10, clipping 1.0, the paper's init). ``default`` converges much faster at
CPU scale (AdamW with warm-up, cosine decay, label smoothing; chosen by measurement, see README).
Any recipe value can be overridden by its flag; ``None`` in the config means "the recipe's value".

The run directory gets ``best.pt``, ``last.pt``, ``metrics.jsonl``, ``metrics.csv``,
``curves.png``, ``config.toml`` (resolved) and ``train.log``. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import tempfile
import time
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, MultiStepLR, SequentialLR

from alexnet_deploy.alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet_deploy.alexnet.data import (
    AUGMENTS, CACHE_MODES, BatchStream, DecodedSet, StreamedSet, cache_bytes, choose_cache, decode_eval,
    ram_budget, resolve_splits, train_spec)
from alexnet_deploy.alexnet.model import ARCHS, DEFAULT_INPUT, INITS, build_model
from alexnet_deploy.deploy.files import atomic_write_text
from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.deploy.preprocess import PreprocessSpec
from alexnet_deploy.deploy.progress import ProgressCallback, Tally, note
from alexnet_deploy.errors import AlexNetDeployError, CheckpointError

log = logging.getLogger(__name__)

RECIPES: dict[str, dict[str, Any]] = {
    # Krizhevsky et al. 2012, section 5.
    "paper": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
              "warmup_epochs": 0.0, "label_smoothing": 0.0, "clip_grad": 1.0, "init": "paper", "batch_size": 128},
    # Measured on CIFAR-10 at 64 px on 2 CPU cores (README "Results").
    # Batch 64 (twice the steps) matched 128 after 5 epochs, ran faster per epoch on 2 cores and led mid-run.
    "default": {"optimizer": "adamw", "lr": 5e-4, "momentum": 0.9, "weight_decay": 0.05, "schedule": "cosine",
                "warmup_epochs": 0.3, "label_smoothing": 0.1, "clip_grad": 1.0, "init": "default", "batch_size": 64},
}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
METRIC_FIELDS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "grad_norm",
                 "epoch_seconds", "train_images_per_s", "train_images", "val_images", "elapsed_seconds",
                 "best_val_top1")


@dataclass(frozen=True)
class TrainConfig:
    """Every training option. Field names are the CLI flag names (``batch_size`` = ``--batch-size``).
    ``None`` means: the recipe's value (optimizer settings) or the arch's default (image size)."""

    data: str
    val: str | None = None
    val_split: float | None = None
    out: str = "runs/train"
    arch: str = "alexnet2012"
    epochs: int = 5
    batch_size: int | None = None
    lr: float | None = None
    image_size: int | None = None
    resize: int | None = None
    workers: int = 2
    seed: int = 0
    resume: str | None = None
    device: str = "auto"
    max_per_class: int | None = None
    recipe: str = "default"
    init: str | None = None
    optimizer: str | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    clip_grad: float | None = None
    dropout: float = 0.5
    width: float = 1.0  # channel/FC width multiplier; 1.0 is the paper's network
    augment: str = "crop-flip"
    cache: str = "auto"  # decoded images in RAM, or decoded per batch when they do not fit
    amp: bool = False
    strict: bool = False
    tensorboard: bool = False
    wandb: str | None = None  # W&B project name; logging only when given
    overwrite: bool = False  # replace a previous run in --out (never written to config.toml)

    def resolved(self) -> "TrainConfig":
        """Fill recipe / arch defaults and validate; the result has no ``None`` recipe values."""
        self.validate()
        values = {k: v for k, v in RECIPES[self.recipe].items() if getattr(self, k) is None}
        image_size = self.image_size or DEFAULT_INPUT[self.arch][1]
        resize = self.resize or PreprocessSpec.for_image_size(image_size).resize
        return dataclasses.replace(self, image_size=image_size, resize=resize, **values)

    def validate(self) -> None:
        for f in fields(self):
            problem = field_type_problem(f.name, getattr(self, f.name))
            if problem:
                raise AlexNetDeployError(f"--{f.name.replace('_', '-')} {getattr(self, f.name)!r}: {problem}")
        self._validate_choices()
        self._validate_ranges()

    def _validate_choices(self) -> None:
        choices = {"arch": ARCHS, "recipe": tuple(RECIPES), "augment": AUGMENTS, "cache": CACHE_MODES,
                   "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "init": INITS, "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise AlexNetDeployError(f"--{name.replace('_', '-')} {value!r}: expected one of {', '.join(allowed)}")

    def _validate_ranges(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "image_size": self.image_size, "resize": self.resize, "workers": self.workers,
                    "max_per_class": self.max_per_class}
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise AlexNetDeployError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if value is not None and not (low <= value < high):
                bound = f"{low} <= x < {high}" if high != math.inf else f">= {low}"
                raise AlexNetDeployError(f"--{name.replace('_', '-')} {value}: expected {bound}")
        if not 0 < self.width <= 1:
            raise AlexNetDeployError(f"--width {self.width}: expected 0 < x <= 1 (1.0 is the paper's network)")
        if self.val_split is not None and not 0 < self.val_split < 1:
            raise AlexNetDeployError(f"--val-split {self.val_split}: expected a fraction between 0 and 1")
        if self.image_size is not None and not 63 <= self.image_size <= 512:
            raise AlexNetDeployError(f"--image-size must be between 63 and 512, got {self.image_size}")
        if self.image_size and self.resize and self.resize < self.image_size:
            raise AlexNetDeployError(f"--resize {self.resize} is smaller than --image-size {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Flags with a half-open valid range [low, high).
_RANGES = (("dropout", 0.0, 1.0), ("label_smoothing", 0.0, 1.0), ("momentum", 0.0, math.inf),
           ("weight_decay", 0.0, math.inf), ("warmup_epochs", 0.0, math.inf), ("clip_grad", 0.0, math.inf),
           ("seed", 0, math.inf))


def field_type_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be TrainConfig's ``name`` (e.g. epochs = "abc" in a TOML), or None."""
    hint = typing.get_type_hints(TrainConfig)[name]
    allowed = typing.get_args(hint) or (hint,)
    if value is None:
        return None if type(None) in allowed else "expected a value"
    if bool in allowed:
        ok, kind = isinstance(value, bool), "true or false"
    elif int in allowed:
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif float in allowed:
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, kind = isinstance(value, str), "a string"
    return None if ok else f"expected {kind}"


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML file keyed by flag names (``batch-size`` or ``batch_size``); unknown keys are errors."""
    tomllib = require("tomllib", "tomli", package="tomli", needed_for="--config on Python 3.10")
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AlexNetDeployError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AlexNetDeployError(f"{path}: not valid TOML ({exc})") from exc
    raw = raw.get("train", raw)  # accept a [train] table or top-level keys
    known = {f.name for f in fields(TrainConfig)}
    values = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AlexNetDeployError(f"{path}: unknown keys {unknown}; expected train flag names like batch-size")
    for key, value in values.items():
        problem = field_type_problem(key, value)
        if problem:
            raise AlexNetDeployError(f"{path}: {key.replace('_', '-')} = {value!r}: {problem}")
    return values


def config_to_toml(config: TrainConfig) -> str:
    """The resolved config as TOML (``None`` values are left out: TOML has no null)."""
    tomli_w = require("tomli_w", package="tomli-w", needed_for="writing config.toml")
    values = {key.replace("_", "-"): value for key, value in config.to_dict().items()
              if value is not None and key != "overwrite"}
    return "# resolved by alexnet-deploy train; usable as --config\n" + tomli_w.dumps({"train": values})


@dataclass(frozen=True)
class DistContext:
    """Where this process trains: its rank, the world size, its device (rank 0 of 1 on CPU by default)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> Path:
    """Train a model as configured; returns the run directory.

    ``progress`` gets counts for each stage (``decode train``, ``epoch 1/5``, ``validate``; in images,
    with the running loss as the message) and notes: the data summary, skipped files, and one per
    epoch whose metrics are that epoch's metrics.jsonl row. Raising from it stops training (tests
    use this to simulate an interrupted run)."""
    config = config.resolved()
    dist = _setup_distributed(config.device)
    out = Path(config.out)
    if dist.main:
        check_run_dir(out, config)
    run_log = _RunLog(out) if dist.main else None
    try:
        return _train(config, dist, out, progress if dist.main else None)
    finally:
        if run_log is not None:
            run_log.close()
        if dist.world > 1:
            torch.distributed.destroy_process_group()


def _train(config: TrainConfig, dist: DistContext, out: Path, progress: ProgressCallback | None) -> Path:
    if config.resume and not Path(config.resume).is_file():
        raise CheckpointError(f"--resume {config.resume}: no such file; pass the run's last.pt")
    torch.manual_seed(config.seed)
    loggers = _ExternalLoggers(config, out) if dist.main else None  # fail fast on a missing package
    spec = PreprocessSpec(resize=config.resize, crop=config.image_size)
    splits = resolve_splits(config.data, config.val, config.val_split, config.seed, config.max_per_class)
    train_set, val_set = _decode_splits(config, splits, spec, progress)
    model = build_model(config.arch, len(splits.classes), init=config.init, dropout=config.dropout,
                        width=config.width).to(dist.device)
    steps_per_epoch = len(BatchStream(train_set, config.batch_size, spec, rank=dist.rank, world=dist.world))
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and dist.device.startswith("cuda"))
    start, best, history, rng = _maybe_resume(config, model, optimizer, scheduler, scaler, out)
    torch.manual_seed(config.seed * 1_000 + dist.rank + start)  # dropout stream (resume restores it)
    _restore_rng(rng if dist.main else None)  # only rank 0's state is saved
    wrapped = _wrap_ddp(model, dist)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.toml", config_to_toml(config))
        note(progress, "train", f"{splits.source}: {len(train_set)} train / {len(val_set)} val images, "
                                f"{len(splits.classes)} classes; writing {out}")
    clock = time.perf_counter() - (history[-1]["elapsed_seconds"] if history else 0.0)
    streamed = [s for s in (train_set, val_set) if isinstance(s, StreamedSet)]   # find bad files as they go
    completed = False
    try:
        for epoch in range(start, config.epochs):
            row = _run_epoch(config, dist, wrapped, optimizer, scheduler, scaler, train_set, val_set, spec,
                             epoch, progress)
            _report_skipped([skip for s in streamed for skip in s.drain_skipped()], progress)
            best = max(best, row["val_top1"])
            row.update(elapsed_seconds=time.perf_counter() - clock, best_val_top1=best)
            history.append(row)
            if dist.main:
                _write_epoch(config, out, model, splits.classes, spec, row, history, optimizer, scheduler, scaler)
                if loggers:
                    loggers.log(row)
                note(progress, f"epoch {row['epoch']}/{config.epochs}", epoch_line(row), row)
        completed = True
    finally:  # an interrupted run still flushes what its loggers have, marked as failed
        if loggers:
            loggers.close(failed=not completed)
    return out


def check_run_dir(out: Path, config: TrainConfig) -> None:
    """Before any work: --out must be a directory this process can write, and must not hold an
    earlier run unless it is being resumed or --overwrite was given (its checkpoints would be
    silently replaced)."""
    if out.exists() and not out.is_dir():
        raise AlexNetDeployError(f"--out {out}: exists and is not a directory; choose a run directory")
    previous = [name for name in ("best.pt", "last.pt", "metrics.jsonl") if (out / name).exists()]
    if previous and not config.resume and not config.overwrite:
        raise AlexNetDeployError(f"--out {out}: holds an earlier run ({', '.join(previous)}); continue it with "
                                 f"--resume {out / 'last.pt'}, choose a new --out, or pass --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise AlexNetDeployError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a "
                                 "writable run directory") from exc


Dataset = DecodedSet | StreamedSet


def _decode_splits(config: TrainConfig, splits, spec: PreprocessSpec,
                   progress: ProgressCallback | None) -> tuple[Dataset, Dataset]:
    """Each split decoded into RAM or streamed (``--cache``; auto keeps in RAM what fits the budget,
    the training set first)."""
    budget = ram_budget()
    train_set = _load_split("train", splits.train, train_spec(config.resize), config, budget, progress)
    if budget is not None and isinstance(train_set, DecodedSet):
        budget -= cache_bytes(len(splits.train), config.resize)
    val_set = _load_split("val", splits.val, spec, config, budget, progress)
    decoded = [s for s in (train_set, val_set) if isinstance(s, DecodedSet)]
    _report_skipped([skip for s in decoded for skip in s.skipped], progress)
    if any(len(s) == 0 for s in decoded):
        raise AlexNetDeployError(f"{config.data}: no readable training or validation images left")
    return train_set, val_set


def _load_split(name: str, samples, spec: PreprocessSpec, config: TrainConfig, budget: int | None,
                progress: ProgressCallback | None) -> Dataset:
    need = cache_bytes(len(samples), spec.crop)
    if choose_cache(config.cache, need, budget) == "stream":
        if config.cache == "auto":
            note(progress, "train", f"{name}: decoded images would need {need / 2**30:.1f} GiB, over the RAM "
                 f"budget left ({max(0, budget or 0) / 2**30:.1f} GiB): decoding each batch as it is needed")
        return StreamedSet(samples, spec, strict=config.strict, workers=config.workers, fill=name == "train")
    return decode_eval(samples, spec, strict=config.strict, workers=config.workers, progress=progress,
                       stage=f"decode {name}")


def _report_skipped(skipped, progress: ProgressCallback | None) -> None:
    if skipped:
        shown = "; ".join(s.reason for s in skipped[:3])
        note(progress, "train", f"skipped {len(skipped)} unreadable file(s) (--strict makes this fatal): {shown}"
             + (" ..." if len(skipped) > 3 else ""))


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (paper) or AdamW. Weight decay is applied to weights only, not biases, for AdamW."""
    if config.optimizer == "sgd":
        # The paper decays every parameter, biases included.
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Stepped once per optimizer step: a linear warm-up over ``warmup_epochs`` (from 1/warmup of
    the peak lr to the peak), then cosine decay to 0, the step schedule or a constant lr.

    Its state_dict (plain numbers and a Counter, both weights_only-safe) is saved in last.pt, so
    --resume continues exactly where the run stopped."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    after = _after_warmup(config.schedule, optimizer, max(1, total - warmup))
    if not warmup:
        return after
    ramp = LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup - 1)
    return SequentialLR(optimizer, [ramp, after], milestones=[warmup])


def _after_warmup(schedule: str, optimizer: torch.optim.Optimizer, steps: int):
    """The schedule of the ``steps`` optimizer steps after the warm-up."""
    if schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=steps)
    if schedule == "step":
        # Divide by 10 at 50 % and 75 % of training (the paper divided on plateaus, 3 times in 90 epochs).
        return MultiStepLR(optimizer, milestones=[math.ceil(0.5 * steps), math.ceil(0.75 * steps)], gamma=0.1)
    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def _run_epoch(config, dist, model, optimizer, scheduler, scaler, train_set, val_set, spec, epoch, progress):
    stream = BatchStream(train_set, config.batch_size, spec, augment=config.augment, shuffle=True,
                         seed=config.seed, rank=dist.rank, world=dist.world)
    stream.epoch = epoch
    started = time.perf_counter()
    sums = train_one_epoch(config, dist, model, optimizer, scheduler, scaler, stream, progress,
                           stage=f"epoch {epoch + 1}/{config.epochs}", total=len(stream.indices()) * dist.world)
    lr = optimizer.param_groups[0]["lr"]  # at the end of the epoch (the start of warm-up is ~0)
    seconds = time.perf_counter() - started
    val = evaluate(model, BatchStream(val_set, max(config.batch_size, 128), spec, rank=dist.rank,
                                      world=dist.world, equal_steps=False), dist, config.amp, progress,
                   total=len(val_set))
    val_sums = _val_for_all_ranks(val, dist)
    return {"epoch": epoch + 1, "train_loss": sums[0] / sums[2], "train_top1": sums[1] / sums[2],
            "val_loss": val_sums[0] / val_sums[3], "val_top1": val_sums[1] / val_sums[3],
            "val_top5": val_sums[2] / val_sums[3], "lr": lr, "grad_norm": sums[3] / max(sums[4], 1.0),
            "epoch_seconds": seconds,
            "train_images_per_s": sums[2] / seconds, "train_images": int(sums[2]), "val_images": int(val_sums[3])}


def epoch_line(row: dict[str, Any]) -> str:
    """One epoch's metrics row as the line a person reads."""
    return (f"train loss {row['train_loss']:.3f} top-1 {100 * row['train_top1']:.1f}% | val loss {row['val_loss']:.3f} "
            f"top-1 {100 * row['val_top1']:.1f}% top-5 {100 * row['val_top5']:.1f}% | "
            f"{row['train_images_per_s']:.0f} img/s, {row['epoch_seconds']:.0f} s")


def _autocast(device: str, enabled: bool):
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.float16 if kind == "cuda" else torch.bfloat16, enabled=enabled)


def train_one_epoch(config, dist, model, optimizer, scheduler, scaler, stream: Iterable,
                    progress: ProgressCallback | None = None, *, stage: str = "train",
                    total: int | None = None) -> list[float]:
    """One pass; returns [loss sum, correct, count, gradient-norm sum, steps] summed over all ranks.

    The gradient norm is the global L2 norm before clipping (what a diverging run shows first).
    ``progress`` counts the images of ``stage`` (``total`` of them, all ranks), the loss as message."""
    tally = Tally(progress, stage, total, "images").update()
    model.train()
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    totals = torch.zeros(5, dtype=torch.float64)
    for images, labels in stream:
        images, labels = images.to(dist.device, non_blocking=True), labels.to(dist.device, non_blocking=True)
        with _autocast(dist.device, config.amp):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            raise AlexNetDeployError(f"training diverged (loss {loss.item()}); lower --lr or use --clip-grad")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # the norm of the true gradients; a no-op without a CUDA scaler
        # Without --clip-grad the max norm is infinite: the gradients are multiplied by exactly 1.0.
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad or math.inf).item()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = labels.shape[0]
        finite = math.isfinite(grad_norm)  # a CUDA fp16 step the scaler skips has an inf norm: not averaged
        totals += torch.tensor([loss.item() * n, (logits.argmax(1) == labels).sum().item(), n,
                                grad_norm if finite else 0.0, float(finite)], dtype=torch.float64)
        tally.advance(n * dist.world, f"loss {loss.item():.3f}")
    return _all_reduce(totals, dist).tolist()


@torch.no_grad()
def evaluate(model: nn.Module, stream: Iterable, dist: DistContext | None = None, amp: bool = False,
             progress: ProgressCallback | None = None, *, stage: str = "validate",
             total: int | None = None) -> list[float]:
    """[loss sum, top-1 correct, top-5 correct, count] over ``stream`` (this rank only); ``progress``
    counts the images of ``stage`` (``total`` of them, all ranks)."""
    tally = Tally(progress, stage, total, "images").update()
    device = dist.device if dist else "cpu"
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)
    for images, labels in stream:
        images, labels = images.to(device), labels.to(device)
        with _autocast(device, amp):
            logits = model(images).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        totals += torch.tensor([nn.functional.cross_entropy(logits, labels, reduction="sum").item(),
                                (top[:, 0] == labels).sum().item(), (top == labels[:, None]).any(1).sum().item(),
                                labels.shape[0]], dtype=torch.float64)
        tally.advance(labels.shape[0] * (dist.world if dist else 1))
    return totals.tolist()


def _val_for_all_ranks(val: list[float], dist: DistContext) -> list[float]:
    return _all_reduce(torch.tensor(val, dtype=torch.float64), dist).tolist()


def _all_reduce(values: torch.Tensor, dist: DistContext) -> torch.Tensor:
    if dist.world > 1:
        device_values = values.to(dist.device)
        torch.distributed.all_reduce(device_values)
        return device_values.cpu()
    return values


def _setup_distributed(device: str) -> DistContext:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise AlexNetDeployError("--device cuda: no CUDA device is visible to torch; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device="cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return DistContext(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(),
                 device=f"cuda:{local}" if cuda else "cpu")


def _wrap_ddp(model: nn.Module, dist: DistContext) -> nn.Module:
    if dist.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dist.device] if dist.device.startswith("cuda") else None)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _maybe_resume(config, model, optimizer, scheduler, scaler, out: Path):
    """Restore model/optimizer/scheduler/scaler from ``config.resume``;
    returns (start epoch, best val top-1, metrics history, saved RNG state)."""
    if not config.resume:
        return 0, float("-inf"), [], None
    ckpt = load_checkpoint(config.resume, arch=config.arch, num_classes=model.classifier[-1].out_features)
    if ckpt.width != config.width:
        raise CheckpointError(f"{config.resume}: was trained at --width {ckpt.width:g}, not {config.width:g}; "
                              "resume with the run's original flags")
    raw = ckpt.raw
    if "optimizer_state" not in raw or "scheduler_state" not in raw:
        raise CheckpointError(f"{config.resume}: has no optimizer state to resume from; resume from last.pt")
    model.load_state_dict(ckpt.model.state_dict())
    try:
        optimizer.load_state_dict(raw["optimizer_state"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{config.resume}: optimizer state does not fit --optimizer {config.optimizer} "
                              f"({exc}); resume with the run's original flags") from exc
    _load_schedule(config, scheduler, raw["scheduler_state"])
    if "scaler_state" in raw:
        scaler.load_state_dict(raw["scaler_state"])
    # Metrics of the earlier epochs: from --out, or from the resumed run's directory when --out is new.
    history = _read_history(out, ckpt.epoch) or _read_history(Path(config.resume).parent, ckpt.epoch)
    best = max((row["val_top1"] for row in history), default=float("-inf"))
    log.info("resumed %s at epoch %d", config.resume, ckpt.epoch)
    return ckpt.epoch, best, history, raw.get("rng_state")


def _load_schedule(config: TrainConfig, scheduler, state: dict) -> None:
    """Continue the saved schedule; refuse one of another kind (another --schedule, warm-up or
    none, or a checkpoint from before the schedule was made of torch's schedulers), which
    load_state_dict would take without complaint and then step wrongly."""
    if _schedule_signature(state) != _schedule_signature(scheduler.state_dict()):
        raise CheckpointError(f"{config.resume}: its learning-rate schedule state does not fit --schedule "
                              f"{config.schedule} with --warmup-epochs {config.warmup_epochs}; resume with the run's "
                              "original flags and alexnet-deploy version")
    scheduler.load_state_dict(state)


def _schedule_signature(state: dict) -> tuple:
    """The public keys of a scheduler's state (its constructor's arguments; the private ones vary
    between torch versions), and those of the schedulers a SequentialLR chains."""
    return (sorted(k for k in state if not k.startswith("_")),
            [_schedule_signature(inner) for inner in state.get("_schedulers", ())])


def _read_history(out: Path, upto: int) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["epoch"] <= upto]


def _write_epoch(config, out, model, classes, spec, row, history, optimizer, scheduler, scaler) -> None:
    common = dict(model=model, arch=config.arch, classes=classes, preprocess=spec, config=config.to_dict(),
                  epoch=row["epoch"], metrics=row)
    save_checkpoint(out / "last.pt", **common, optimizer_state=optimizer.state_dict(),
                    scheduler_state=scheduler.state_dict(), scaler_state=scaler.state_dict(),
                    rng_state=_rng_state())
    if row["val_top1"] >= row["best_val_top1"]:
        save_checkpoint(out / "best.pt", **common)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    atomic_write_text(out / "metrics.csv", _csv(history))
    _plot(out / "curves.png", history)
    log.info("epoch %d: %s", row["epoch"], json.dumps(row))


def _csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _plot(path: Path, history: list[dict]) -> None:
    """Loss and top-1 curves, train and val (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from alexnet_deploy.deploy.files import atomic_path

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    for ax, key, label in ((fig.add_subplot(1, 2, 1), "loss", "loss"), (fig.add_subplot(1, 2, 2), "top1", "top-1")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "o-", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


class _RunLog:
    """train.log in the run directory at INFO level, without making the console chattier:
    console handlers keep dropping records below the level they showed before."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger("alexnet_deploy")
        self.old_level = self.logger.level
        shown = self.logger.getEffectiveLevel()
        self.handler = logging.FileHandler(out / "train.log")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.console_filter = lambda record: not record.name.startswith("alexnet_deploy") or record.levelno >= shown
        self.consoles = list(logging.getLogger().handlers)
        for console in self.consoles:
            console.addFilter(self.console_filter)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(min(shown, logging.INFO))

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)
        for console in self.consoles:
            console.removeFilter(self.console_filter)
        self.handler.close()


class _ExternalLoggers:
    """Optional TensorBoard / Weights & Biases logging, imported only when asked for.

    Both get every numeric field of each metrics.jsonl row under the same name, with the epoch as
    the step (learning rate, losses, top-1/top-5, gradient norm, images/s, times), and the resolved
    run config, so what a dashboard shows can be checked against metrics.jsonl."""

    def __init__(self, config: TrainConfig, out: Path):
        self.tb = self.wandb_run = None
        if config.tensorboard:
            self.tb = _tensorboard_writer(out / "tensorboard")
            # Text, because TensorBoard's hparams plugin drops None values and lists.
            self.tb.add_text("config", "```\n" + json.dumps(config.to_dict(), indent=1) + "\n```", 0)
        if config.wandb:
            self.wandb_run = _wandb_run(config, out)

    def log(self, row: dict[str, Any]) -> None:
        scalars = {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        if self.tb:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, row["epoch"])
            self.tb.flush()
        if self.wandb_run:
            self.wandb_run.log({"epoch": row["epoch"], **scalars})

    def close(self, failed: bool = False) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb_run:
            self.wandb_run.finish(exit_code=1 if failed else 0)


def _tensorboard_writer(log_dir: Path):
    # torch's module imports the tensorboard package, so its ImportError means that one is missing.
    tensorboard = require("torch.utils.tensorboard", package="tensorboard", needed_for="--tensorboard")
    return tensorboard.SummaryWriter(log_dir=str(log_dir))


def _wandb_run(config: TrainConfig, out: Path):
    wandb = require("wandb", package="wandb", needed_for="--wandb")
    try:
        run = wandb.init(project=config.wandb, name=out.name, dir=str(out), config=config.to_dict(),
                         job_type="train")
    except Exception as exc:  # noqa: BLE001 - wandb raises its own types for login/network problems
        raise AlexNetDeployError(f"--wandb {config.wandb}: wandb.init failed ({exc.__class__.__name__}: {exc}); "
                                 "run `wandb login`, or set WANDB_MODE=offline to log to files only") from exc
    # Charts against the epoch instead of W&B's own call counter.
    run.define_metric("epoch")
    run.define_metric("*", step_metric="epoch")
    return run


__all__ = ["TrainConfig", "DistContext", "RECIPES", "train", "train_one_epoch", "evaluate", "load_config_file",
           "config_to_toml", "make_optimizer", "make_scheduler"]
