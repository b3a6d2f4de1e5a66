"""`alexnet-deploy train` and `alexnet-deploy predict`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from alexnet_deploy.cli import cli
from alexnet_deploy.errors import DataError

_CHOICE_ARCH = click.Choice(["alexnet2012", "torchvision"])


def _train_options(func):
    """The train flags; every default is None so a --config file can supply it."""
    options = [
        click.option("--data", type=click.Path(file_okay=False), help="Image folder: DIR/train + DIR/val, or one folder of class sub-folders (then --val or --val-split)."),
        click.option("--val", type=click.Path(file_okay=False), help="Separate validation folder with the same class sub-folders."),
        click.option("--val-split", type=float, help="Hold out this fraction of each class of --data (stratified, seeded)."),
        click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/train)."),
        click.option("--arch", type=_CHOICE_ARCH, help="alexnet2012 (paper, LRN) or torchvision (default alexnet2012)."),
        click.option("--epochs", type=int, help="Epochs (default 5)."),
        click.option("--batch-size", type=int, help="Batch size per process (default: the recipe's, 64 default / 128 paper)."),
        click.option("--lr", type=float, help="Peak learning rate (default: the recipe's)."),
        click.option("--image-size", type=int, help="Crop size, 63..512 (default 227 alexnet2012, 224 torchvision)."),
        click.option("--resize", type=int, help="Shorter side before cropping (default image-size*256/224)."),
        click.option("--workers", type=int, help="Decode threads (default 2)."),
        click.option("--seed", type=int, help="Seed for split, init, augmentation, dropout (default 0)."),
        click.option("--resume", type=click.Path(dir_okay=False), help="Continue from a last.pt (same flags as the original run)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Default auto (cuda when available)."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file keyed by these flag names; flags override it."),
        click.option("--max-per-class", type=int, help="Use at most N images per class (quick runs)."),
        click.option("--recipe", type=click.Choice(["default", "paper"]), help="default: AdamW+warm-up+cosine+label smoothing; paper: the 2012 SGD recipe."),
        click.option("--init", type=click.Choice(["default", "paper"]), help="Weight init (default: the recipe's)."),
        click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), help="Override the recipe's optimizer."),
        click.option("--momentum", type=float, help="SGD momentum (paper 0.9)."),
        click.option("--weight-decay", type=float, help="Override the recipe's weight decay."),
        click.option("--schedule", type=click.Choice(["cosine", "step", "constant"]), help="LR schedule (paper: step)."),
        click.option("--warmup-epochs", type=float, help="Linear warm-up length in epochs."),
        click.option("--label-smoothing", type=float, help="Cross-entropy label smoothing."),
        click.option("--clip-grad", type=float, help="Clip the gradient norm (0 = off; recipes use 1.0)."),
        click.option("--dropout", type=float, help="Dropout in the classifier (default 0.5)."),
        click.option("--width", type=float, help="channel/FC width multiplier; 1.0 is the paper's network; "
                                                 "smaller for tiny devices and fast experiments (default 1.0)."),
        click.option("--augment", type=click.Choice(["crop-flip", "random-resized-crop", "none"]), help="Training augmentation (default crop-flip)."),
        click.option("--cache", type=click.Choice(["auto", "ram", "stream", "gpu"]),
                     help="Decoded images: kept in RAM, on the GPU, or decoded per batch (default auto: on the "
                          "GPU when training on one and they fit, else RAM when they fit)."),
        click.option("--amp/--no-amp", default=None, help="Mixed precision: bf16 on CPU and on GPUs that have it, fp16 (with a loss scaler) otherwise."),
        click.option("--compile/--no-compile", "compile", default=None,
                     help="torch.compile the model for training: each batch shape compiles once (about a minute "
                          "on a 2-core CPU), then steps run faster; off by default."),
        click.option("--strict/--no-strict", default=None, help="Stop at the first unreadable image instead of skipping it."),
        click.option("--tensorboard/--no-tensorboard", default=None, help="Also log to OUT/tensorboard (needs tensorboard)."),
        click.option("--wandb", metavar="PROJECT", help="Also log to this Weights & Biases project (needs wandb)."),
        click.option("--overwrite", is_flag=True, default=None, help="Replace an earlier run in --out (else refused)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@_train_options
def train(config_file: str | None, **flags: Any) -> None:
    """Train AlexNet on an image folder; writes best.pt, last.pt, metrics and curves to --out.

    \b
    Example:
      alexnet-deploy train --data examples/data/cifar10-sample --image-size 64 --epochs 3 --out runs/demo
    """
    from alexnet_deploy.alexnet.train import TrainConfig, load_config_file
    from alexnet_deploy.alexnet.train import train as run_training
    from alexnet_deploy.cli.progress import progress_renderer

    values = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if not values.get("data"):
        raise click.UsageError("--data is required (on the command line or in --config)")
    config = TrainConfig(**values)
    rows: list[dict] = []
    started = time.time()
    try:
        with progress_renderer() as render:
            out = run_training(config, _keeping_metrics(render, rows))
    except KeyboardInterrupt:   # Ctrl-C, or SIGTERM from timeout/systemd/docker/Slurm
        _stopped_line(config, started)
        raise
    _summary(rows, out)


def _stopped_line(config, started: float) -> None:
    """The last thing an interrupted run says: what is saved and how to go on."""
    last = Path(config.out) / "last.pt"
    epoch = _checkpoint_epoch(last) if last.is_file() and last.stat().st_mtime >= started else None
    if epoch is not None:
        click.echo(f"stopped: {last} holds epoch {epoch}; continue with "
                   f"`alexnet-deploy train ... --resume {last}`", err=True)
    elif config.resume:
        click.echo(f"stopped before an epoch ended; {config.resume} is unchanged", err=True)
    else:
        click.echo("stopped before the first epoch ended; no checkpoint was written", err=True)


def _checkpoint_epoch(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 - only a hint in the last line; the checkpoint is checked on --resume
        return None


def _keeping_metrics(render, rows: list[dict]):
    """The progress callback: ``render`` every event, and keep each epoch's metrics row (carried by
    the note that closes the epoch) for the summary table."""
    def progress(event) -> None:
        render(event)
        if event.metrics:
            rows.append(dict(event.metrics))

    return progress


@cli.command()
@click.argument("source", type=click.Path(exists=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--arch", type=_CHOICE_ARCH,
              help="Checkpoint SOURCE: architecture of a plain state_dict (detected when omitted).")
@click.option("--num-classes", type=int, help="Checkpoint SOURCE: expected class count (checked against it).")
@click.option("--backend", help="auto (default), ort, ort-cuda, trt, ov, pt, pt-cuda or pt-cuda-graphs; "
                                "a checkpoint SOURCE runs on pt.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
def predict(source: str, images: tuple[str, ...], topk: int, as_json: bool, arch: str | None,
            num_classes: int | None, backend: str | None, strict: bool) -> None:
    """Classify images (files or folders) with a checkpoint or a bundle; prints classes and probabilities.

    \b
    Example:
      alexnet-deploy predict runs/demo/best.pt examples/data/cifar10-sample/val/cat --topk 3

    An unreadable image is reported by path and skipped (--strict stops instead).
    """
    skipped: list[tuple[str, str]] | None = None if strict else []
    results = _predict(source, images, topk, arch, num_classes, backend, skipped)
    _print_skipped(skipped or [])
    if not results:
        raise DataError(f"none of the {len(skipped or [])} images could be read; nothing to predict")
    _print_predictions(results, as_json)


def _predict(source, images, topk, arch, num_classes, backend, skipped):
    """One path for a bundle and a checkpoint: deploy.load picks the backend (a checkpoint runs on
    pt), so torch is imported only for a checkpoint or --backend pt."""
    from alexnet_deploy.deploy import load
    from alexnet_deploy.deploy.preprocess import image_files

    options = _load_options(source, backend, arch, num_classes)
    with load(source, backend=backend or "auto", **options) as model:
        if model.chosen:
            click.echo(model.chosen, err=True)
        return model.classify(image_files(images, strict=skipped is None), topk=topk, skipped=skipped)


def _load_options(source: str, backend: str | None, arch: str | None, num_classes: int | None) -> dict:
    """load()'s options for SOURCE; a flag that does not apply to its kind is a usage error, not ignored."""
    checkpoint_flags = {key: value for key, value in (("arch", arch), ("num_classes", num_classes))
                        if value is not None}
    if _is_bundle(source):
        if checkpoint_flags:
            raise click.UsageError("--arch and --num-classes describe a checkpoint SOURCE; a bundle's manifest "
                                   "records both")
        return {}
    if backend not in (None, "auto", "pt"):
        raise click.UsageError("--backend needs a bundle SOURCE (a directory or .tar.gz); a checkpoint "
                               "runs on PyTorch (--backend pt)")
    return checkpoint_flags


def _print_skipped(skipped: list[tuple[str, str]]) -> None:
    """Unreadable images, one line each on stderr (stdout stays the results, e.g. --json)."""
    for _, reason in skipped:
        click.echo(f"skipped: {reason}", err=True)
    if skipped:
        click.echo(f"skipped {len(skipped)} unreadable image(s) (--strict makes them fatal)", err=True)


def _is_bundle(source: str) -> bool:
    from alexnet_deploy.deploy.bundle.archive import ARCHIVE_SUFFIXES

    return os.path.isdir(source) or source.lower().endswith(ARCHIVE_SUFFIXES)


def _print_predictions(results, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("class", "probability")
    table.add_column("image", overflow="fold")
    table.columns.insert(0, table.columns.pop())
    for result in results:
        for rank, (name, prob) in enumerate(result.topk):
            # File and class names are data, not markup: "[red]x.jpg" must print as itself.
            table.add_row(escape(str(result.path)) if rank == 0 else "", escape(name), f"{prob:.4f}")
    Console().print(table)


def _summary(rows: list[dict], out) -> None:
    """The epochs of this run as a table on stdout, and where its files are."""
    from rich.console import Console
    from rich.table import Table

    table = Table("epoch", "train loss", "train top-1", "val loss", "val top-1", "val top-5", "time")
    for r in rows:
        table.add_row(str(r["epoch"]), f"{r['train_loss']:.3f}", f"{100 * r['train_top1']:.1f}%",
                      f"{r['val_loss']:.3f}", f"{100 * r['val_top1']:.1f}%", f"{100 * r['val_top5']:.1f}%",
                      f"{r['elapsed_seconds']:.0f} s")
    console = Console()
    console.print(table)
    console.print(f"run directory: {out} (best.pt, last.pt, metrics.csv, curves.png)")
