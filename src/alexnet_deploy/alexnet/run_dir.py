"""What a training run writes besides its checkpoints: metrics.jsonl, metrics.csv, curves.png,
train.log, and (when asked for) TensorBoard events and a Weights & Biases run.

Only rank 0 writes. TensorBoard and W&B get every numeric field of each metrics.jsonl row under
the same name, with the epoch as the step, so a dashboard can be checked against metrics.jsonl.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from alexnet_deploy.alexnet.train_config import TrainConfig
from alexnet_deploy.deploy.bundle.files import atomic_path, atomic_write_text
from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.errors import AlexNetDeployError

log = logging.getLogger(__name__)


METRIC_FIELDS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "grad_norm",
                 "epoch_seconds", "train_images_per_s", "train_images", "val_images", "elapsed_seconds",
                 "best_val_top1")


def read_history(out: Path, upto: int) -> list[dict]:
    """Epochs 1..``upto`` of ``out/metrics.jsonl``, for checkpoints written before they carried their
    own history. Lines a crash left unreadable (a truncated last line) are skipped with a warning;
    each epoch is kept once, the last row written for it winning."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows: dict[int, dict] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        try:
            row = json.loads(line)
            epoch = int(row["epoch"])
        except (ValueError, TypeError, KeyError):
            if line.strip():
                log.warning("%s line %d is not a metrics row (a crash can truncate the last line); skipped",
                            path, number)
            continue
        if 1 <= epoch <= upto:
            rows[epoch] = row
    return [rows[e] for e in sorted(rows)]


def metrics_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def plot_curves(path: Path, history: list[dict]) -> None:
    """Loss and top-1 curves, train and val (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

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


class RunLog:
    """train.log in the run directory at INFO level, without making the console chattier:
    console handlers keep dropping records below the level they showed before."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger("alexnet_deploy")
        self.old_level = self.logger.level
        shown = self.logger.getEffectiveLevel()
        self.handler = logging.StreamHandler(_open_log(out / "train.log"))
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
        self.handler.stream.close()   # a StreamHandler leaves its stream open


def _open_log(path: Path):
    """``path`` opened for appending, refusing a symbolic link: a link planted in --out would make
    the run append its log to a file outside it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AlexNetDeployError(f"{path}: is a symbolic link (to {os.readlink(path)}); a run's log is "
                                     "never written through a link: remove it or choose another --out") from None
        raise AlexNetDeployError(f"{path}: cannot write the run's log ({exc.strerror or exc})") from exc
    return os.fdopen(fd, "a", encoding="utf-8")


class ExternalLoggers:
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


def write_metrics(out: Path, history: list[dict]) -> None:
    """metrics.jsonl, metrics.csv and curves.png for the epochs so far (each written atomically)."""
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    atomic_write_text(out / "metrics.csv", metrics_csv(history))
    plot_curves(out / "curves.png", history)
