"""Training: ``train()``, ``train_one_epoch()``, ``evaluate()``; DDP under torchrun.

The configuration (``TrainConfig``, whose fields are the CLI flag names, and the two recipes) is in
train_config.py; what a run writes besides its checkpoints (metrics, curves, train.log,
TensorBoard, W&B) is in run_dir.py. Here: the data split, the model, optimizer and schedule,
the epoch loop, checkpoints (``best.pt``, ``last.pt``) and exact resume. Only rank 0 writes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, MultiStepLR, SequentialLR

from alexnet_deploy.alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet_deploy.alexnet.data import (
    GPU_FRACTION, BatchStream, DecodedSet, StreamedSet, cache_bytes, choose_cache, decode_eval,
    ram_budget, resolve_splits, train_spec)
from alexnet_deploy.alexnet.distributed import DistContext, all_reduce, setup_distributed, wrap_ddp
from alexnet_deploy.alexnet.model import build_model
from alexnet_deploy.alexnet.run_dir import ExternalLoggers, RunLog, read_history, write_metrics
from alexnet_deploy.alexnet.train_config import RECIPES, TrainConfig, config_to_toml, load_config_file
from alexnet_deploy.deploy.bundle.files import atomic_write_text, make_writable_dir
from alexnet_deploy.deploy.preprocess import PreprocessSpec
from alexnet_deploy.deploy.progress import ProgressCallback, Tally, note
from alexnet_deploy.errors import AlexNetDeployError, CheckpointError

log = logging.getLogger(__name__)


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> Path:
    """Train a model as configured; returns the run directory.

    ``progress`` gets counts for each stage (``decode train``, ``epoch 1/5``, ``validate``; in images,
    with the running loss as the message) and notes: the data summary, skipped files, and one per
    epoch whose metrics are that epoch's metrics.jsonl row. Raising from it stops training (tests
    use this to simulate an interrupted run)."""
    config = config.resolved()
    dist = setup_distributed(config.device)
    out = Path(config.out)
    if dist.main:
        check_run_dir(out, config)
    run_log = RunLog(out) if dist.main else None
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
    loggers = ExternalLoggers(config, out) if dist.main else None  # fail fast on a missing package
    spec = PreprocessSpec(resize=config.resize, crop=config.image_size)
    splits = resolve_splits(config.data, config.val, config.val_split, config.seed, config.max_per_class,
                            strict=config.strict)
    train_set, val_set = _decode_splits(config, splits, spec, progress, dist.device)
    model = on_device(build_model(config.arch, len(splits.classes), init=config.init, dropout=config.dropout,
                                  width=config.width), dist.device)
    steps_per_epoch = len(BatchStream(train_set, config.batch_size, spec, rank=dist.rank, world=dist.world))
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    # bf16 keeps fp32's range, so only fp16 autocast (GPUs without bf16) needs a loss scaler.
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and amp_dtype(dist.device) == torch.float16)
    start, best, history, rng = _maybe_resume(config, model, optimizer, scheduler, scaler, out, splits.classes)
    torch.manual_seed(config.seed * 1_000 + dist.rank + start)  # dropout stream (resume restores it)
    _restore_rng(rng if dist.main else None)  # only rank 0's state is saved
    wrapped = wrap_ddp(model, dist)
    stepper = compiled(wrapped, dist.device) if config.compile else wrapped
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        _remove_partial_writes(out)
        atomic_write_text(out / "config.toml", config_to_toml(config))
        if history:   # the views of a resumed run start as its checkpoint's history says
            write_metrics(out, history)
        note(progress, "train", f"{splits.source}: {len(train_set)} train / {len(val_set)} val images, "
                                f"{len(splits.classes)} classes; writing {out}")
    clock = time.perf_counter() - (history[-1]["elapsed_seconds"] if history else 0.0)
    streamed = [s for s in (train_set, val_set) if isinstance(s, StreamedSet)]   # find bad files as they go
    completed = False
    try:
        for epoch in range(start, config.epochs):
            row = _run_epoch(config, dist, (stepper, wrapped), optimizer, scheduler, scaler, train_set, val_set,
                             spec, epoch, progress)
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


RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "metrics.csv", "curves.png", "config.toml")


def _remove_partial_writes(out: Path) -> None:
    """Temporary files of the run's own atomic writes that a killed run left (``.last.pt.*.tmp``):
    never read, so removing them only tidies the folder."""
    for name in RUN_FILES:
        for partial in out.glob(f".{name}.*.tmp"):
            partial.unlink(missing_ok=True)


def check_run_dir(out: Path, config: TrainConfig) -> None:
    """Before any work: --out must be a directory this process can write, and must not hold an
    earlier run unless it is being resumed or --overwrite was given (its checkpoints would be
    silently replaced)."""
    if out.exists() and not out.is_dir():
        raise AlexNetDeployError(f"--out {out}: exists and is not a directory; choose a run directory")
    previous = [name for name in RUN_FILES[:3] if (out / name).exists()]
    if previous and not config.resume and not config.overwrite:
        raise AlexNetDeployError(f"--out {out}: holds an earlier run ({', '.join(previous)}); continue it with "
                                 f"--resume {out / 'last.pt'}, choose a new --out, or pass --overwrite")
    make_writable_dir(out, "--out")


Dataset = DecodedSet | StreamedSet


def _decode_splits(config: TrainConfig, splits, spec: PreprocessSpec, progress: ProgressCallback | None,
                   device: str = "cpu") -> tuple[Dataset, Dataset]:
    """Each split decoded into RAM, onto the GPU, or streamed (``--cache``; auto keeps on the GPU,
    else in RAM, what fits the budget, the training set first)."""
    budgets = [ram_budget(), gpu_budget(device)]
    train_set = _load_split("train", splits.train, train_spec(config.resize), config, budgets, progress, device)
    _spend(budgets, train_set, cache_bytes(len(splits.train), config.resize))
    val_set = _load_split("val", splits.val, spec, config, budgets, progress, device)
    decoded = [s for s in (train_set, val_set) if isinstance(s, DecodedSet)]
    _report_skipped([skip for s in decoded for skip in s.skipped], progress)
    if any(len(s) == 0 for s in decoded):
        raise AlexNetDeployError(f"{config.data}: no readable training or validation images left")
    return train_set, val_set


def gpu_budget(device: str) -> int | None:
    """Bytes of the GPU's free memory a decoded set may take (None when not training on a GPU)."""
    if not device.startswith("cuda"):
        return None
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(GPU_FRACTION * free)


def _spend(budgets: list[int | None], dataset: Dataset, need: int) -> None:
    """Take a decoded set's bytes off the budget (RAM, GPU) it occupies."""
    if isinstance(dataset, DecodedSet):
        where = 1 if dataset.images.device.type == "cuda" else 0
        if budgets[where] is not None:
            budgets[where] -= need


def _load_split(name: str, samples, spec: PreprocessSpec, config: TrainConfig, budgets: list[int | None],
                progress: ProgressCallback | None, device: str = "cpu") -> Dataset:
    need = cache_bytes(len(samples), spec.crop)
    budget, on_gpu = budgets
    mode = choose_cache(config.cache, need, budget, on_gpu)
    if mode == "gpu":
        decoded = decode_eval(samples, spec, strict=config.strict, workers=config.workers, progress=progress,
                              stage=f"decode {name}")
        note(progress, "train", f"{name}: {need / 2**30:.2f} GiB of decoded images kept on {device}")
        return decoded.to(device)
    if mode == "stream":
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


# Devices with torch's fused (one kernel per tensor) SGD and AdamW step.
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (paper) or AdamW. Weight decay is applied to weights only, not biases, for AdamW.

    The fused step is the same update in one pass over each tensor: AlexNet's 58 M FC weights make
    the per-element loop of the default step memory-bound (on 2 CPU cores, batch 32 at 64 px, the
    AdamW step took 413 ms of a 782 ms training step, fused 74 ms: benchmarks/train_step.py)."""
    fused = next(model.parameters()).device.type in FUSED_OPTIMIZER_DEVICES
    if config.optimizer == "sgd":
        # The paper decays every parameter, biases included.
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, fused=fused)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, fused=fused)


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


def _run_epoch(config, dist, models, optimizer, scheduler, scaler, train_set, val_set, spec, epoch, progress):
    """One epoch's training and validation; ``models`` is (the model that steps, the one that
    validates): they differ under --compile, where validation's eval mode and batch size would
    otherwise compile the model again."""
    stepper, model = models
    stream = BatchStream(train_set, config.batch_size, spec, augment=config.augment, shuffle=True,
                         seed=config.seed, rank=dist.rank, world=dist.world, device=dist.device)
    stream.epoch = epoch
    started = time.perf_counter()
    sums = train_one_epoch(config, dist, stepper, optimizer, scheduler, scaler, stream, progress,
                           stage=f"epoch {epoch + 1}/{config.epochs}", total=len(stream.indices()) * dist.world)
    lr = optimizer.param_groups[0]["lr"]  # at the end of the epoch (the start of warm-up is ~0)
    seconds = time.perf_counter() - started
    val = evaluate(model, BatchStream(val_set, max(config.batch_size, 128), spec, rank=dist.rank,
                                      world=dist.world, equal_steps=False, device=dist.device), dist, config.amp, progress,
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


def amp_dtype(device: str) -> torch.dtype:
    """bf16 where the device computes it (CPUs, Ampere and newer GPUs), else fp16."""
    if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _autocast(device: str, enabled: bool):
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=amp_dtype(device), enabled=enabled)


def on_device(model: nn.Module, device: str) -> nn.Module:
    """The model on the training device; on CUDA in channels_last, with cuDNN's autotuner on (the
    input shape is fixed for a run, so the search pays for itself after the first steps)."""
    if not device.startswith("cuda"):
        return model.to(device)
    torch.backends.cudnn.benchmark = True
    return model.to(device, memory_format=torch.channels_last)


def compiled(model: nn.Module, device: str) -> nn.Module:
    """``model`` under torch.compile, one static graph per batch shape (a run has two: full batches and
    the last, partial one). Measured on a 2-core CPU (AlexNet-2012, 64 px, batch 64, fused SGD):
    steps 12-16 % faster after ~50 s of compilation per shape, so it is opt-in; on a GPU
    ``benchmarks/gpu_train.py --compile`` measures it. Compiled dropout draws its masks from the
    compiler's generator (seeded from torch's, so a compiled run repeats itself, but its masks are
    not an eager run's)."""
    _check_compiler(device)
    return torch.compile(model, dynamic=False)


def _check_compiler(device: str) -> None:
    """torch.compile's code generator needs a C++ compiler for the CPU, and Triton plus a C compiler
    (Triton builds its kernel launcher with one) for a GPU; say so before training starts rather
    than in a stack trace at the first step."""
    on_gpu = device.startswith("cuda")
    if on_gpu and importlib.util.find_spec("triton") is None:
        raise AlexNetDeployError("--compile on a GPU needs Triton (pip install triton, or a torch build "
                                 "that ships it); train without --compile")
    where, kind, names = (("a GPU", "C", ("cc", "gcc", "clang")) if on_gpu
                          else ("the CPU", "C++", ("c++", "g++", "clang++")))
    if not any(shutil.which(name) for name in names):
        raise AlexNetDeployError(f"--compile on {where} needs a {kind} compiler ({', '.join(names[:-1])} or "
                                 f"{names[-1]} on PATH); install one or train without --compile")


def sync_interval(device: str) -> int:
    """Steps between reads of the step statistics on the host. Reading a CUDA tensor waits for the
    GPU, so on a GPU the loss, correct count, gradient norm and finite check stay on the device and
    are read every SYNC_STEPS steps (the CPU queues the next batches meanwhile); on the CPU a read
    costs nothing and every step is shown."""
    return SYNC_STEPS if device.startswith("cuda") else 1


SYNC_STEPS = 50


def train_one_epoch(config, dist, model, optimizer, scheduler, scaler, stream: Iterable,
                    progress: ProgressCallback | None = None, *, stage: str = "train",
                    total: int | None = None, sync_every: int | None = None) -> list[float]:
    """One pass; returns [loss sum, correct, count, gradient-norm sum, steps] summed over all ranks.

    The gradient norm is the global L2 norm before clipping (what a diverging run shows first).
    ``progress`` counts the images of ``stage`` (``total`` of them, all ranks), the loss as message.
    Statistics accumulate on the training device and reach the host every ``sync_every`` steps
    (default: ``sync_interval``); a non-finite loss stops the run at the next read."""
    tally = Tally(progress, stage, total, "images").update()
    model.train()
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    every = sync_every or sync_interval(dist.device)
    totals = torch.zeros(5, dtype=torch.float64, device=dist.device)
    bad_loss = torch.zeros((), dtype=torch.bool, device=dist.device)
    unread = 0
    for step, (images, labels) in enumerate(stream, start=1):
        images, labels = to_device(images, dist.device), labels.to(dist.device, non_blocking=True)
        with _autocast(dist.device, config.amp):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # the norm of the true gradients; a no-op without a CUDA scaler
        # Without --clip-grad the max norm is infinite: the gradients are multiplied by exactly 1.0.
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad or math.inf)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        unread += labels.shape[0]
        totals += _step_totals(loss, logits, labels, grad_norm)
        bad_loss |= ~torch.isfinite(loss.detach())
        if step % every == 0:
            _read_step(bad_loss, loss, tally, unread * dist.world)
            unread = 0
    if unread:
        _read_step(bad_loss, loss, tally, unread * dist.world)
    return all_reduce(totals.cpu(), dist).tolist()


def _step_totals(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                 grad_norm: torch.Tensor) -> torch.Tensor:
    """[loss x n, correct, n, gradient norm, 1] of one step as a float64 tensor on the device, with the
    norm and the 1 zeroed when the norm is not finite (a CUDA fp16 step the scaler skips)."""
    n = labels.shape[0]
    finite = torch.isfinite(grad_norm).double()
    norm = torch.nan_to_num(grad_norm.detach().double(), nan=0.0, posinf=0.0, neginf=0.0) * finite
    correct = (logits.detach().argmax(1) == labels).sum().double()
    # new_full fills on the device; new_tensor would copy from the host and wait for the GPU.
    return torch.stack([loss.detach().double() * n, correct, correct.new_full((), float(n)), norm, finite])


def _read_step(bad_loss: torch.Tensor, loss: torch.Tensor, tally: Tally, images: int) -> None:
    """The one host read of a sync interval: stop on a non-finite loss, else advance the progress."""
    if bool(bad_loss):
        raise AlexNetDeployError(f"training diverged (loss {loss.item()}); lower --lr or use --clip-grad")
    tally.advance(images, f"loss {loss.item():.3f}")


def to_device(images: torch.Tensor, device: str) -> torch.Tensor:
    """A batch on the training device (BatchStream already delivers it there); on CUDA in
    channels_last, the layout cuDNN's convolutions are fastest in."""
    if not device.startswith("cuda"):
        return images
    return images.to(device, non_blocking=True, memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model: nn.Module, stream: Iterable, dist: DistContext | None = None, amp: bool = False,
             progress: ProgressCallback | None = None, *, stage: str = "validate",
             total: int | None = None) -> list[float]:
    """[loss sum, top-1 correct, top-5 correct, count] over ``stream`` (this rank only); ``progress``
    counts the images of ``stage`` (``total`` of them, all ranks)."""
    tally = Tally(progress, stage, total, "images").update()
    device = dist.device if dist else "cpu"
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)   # read once, at the end
    for images, labels in stream:
        images, labels = to_device(images, device), labels.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(images).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        count = loss.new_full((), float(labels.shape[0]))   # filled on the device: no host wait
        totals += torch.stack([loss, (top[:, 0] == labels).sum().double(),
                               (top == labels[:, None]).any(1).sum().double(), count])
        tally.advance(labels.shape[0] * (dist.world if dist else 1))
    return totals.cpu().tolist()


def _val_for_all_ranks(val: list[float], dist: DistContext) -> list[float]:
    return all_reduce(torch.tensor(val, dtype=torch.float64), dist).tolist()


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


def _maybe_resume(config, model, optimizer, scheduler, scaler, out: Path, classes: Sequence[str]):
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
    _check_same_classes(config, ckpt.classes, classes)
    # Metrics of the earlier epochs: the checkpoint's own (one commit with its weights); for
    # checkpoints older than that, metrics.jsonl of --out or of the resumed run's directory.
    history = [dict(row) for row in raw["history"]] if raw.get("history") is not None else (
        read_history(out, ckpt.epoch) or read_history(Path(config.resume).parent, ckpt.epoch))
    best = max((row["val_top1"] for row in history), default=float("-inf"))
    log.info("resumed %s at epoch %d", config.resume, ckpt.epoch)
    return ckpt.epoch, best, history, raw.get("rng_state")


def _check_same_classes(config: TrainConfig, trained: Sequence[str], found: Sequence[str]) -> None:
    """A resumed run must see the classes it was trained on, in the same order: other folders with
    the same count would silently relabel every image and make the checkpoint's labels lie."""
    if list(trained) != list(found):
        differ = [f"{a!r}->{b!r}" for a, b in zip(trained, found) if a != b][:3]
        raise CheckpointError(f"--resume {config.resume}: was trained on classes {list(trained)[:6]}, but --data "
                              f"{config.data} has {list(found)[:6]} ({', '.join(differ) or 'another count'}); "
                              "resume with the run's original data")


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


def _write_epoch(config, out, model, classes, spec, row, history, optimizer, scheduler, scaler) -> None:
    """best.pt, then last.pt (the commit: it carries the whole history), then the views derived from
    the history (metrics.jsonl/csv, curves.png). A kill before last.pt is replaced resumes from the
    previous epoch and re-runs this one exactly, rewriting the same best.pt; a kill after it only
    loses views that resume rewrites from last.pt."""
    common = dict(model=model, arch=config.arch, classes=classes, preprocess=spec, config=config.to_dict(),
                  epoch=row["epoch"], metrics=row)
    if row["val_top1"] >= row["best_val_top1"]:
        save_checkpoint(out / "best.pt", **common)
    save_checkpoint(out / "last.pt", **common, optimizer_state=optimizer.state_dict(),
                    scheduler_state=scheduler.state_dict(), scaler_state=scaler.state_dict(),
                    rng_state=_rng_state(), history=history)
    write_metrics(out, history)
    log.info("epoch %d: %s", row["epoch"], json.dumps(row))


__all__ = ["TrainConfig", "DistContext", "RECIPES", "train", "train_one_epoch", "evaluate", "load_config_file",
           "config_to_toml", "make_optimizer", "make_scheduler"]
