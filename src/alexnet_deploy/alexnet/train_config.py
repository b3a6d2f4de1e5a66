"""The training configuration: one typed dataclass whose fields are the `train` flag names.

Two recipes. ``paper`` is the 2012 recipe exactly (SGD momentum 0.9, weight decay 5e-4, lr 0.01,
step schedule dividing by 10, clipping 1.0, the paper's init). ``default`` converges much faster at
CPU scale (AdamW with warm-up, cosine decay, label smoothing; chosen by measurement, see README).
Any recipe value can be overridden by its flag; ``None`` in the config means "the recipe's value".

``TrainConfig`` is what the CLI, a TOML ``--config`` file and Python callers all build; every value
is checked with a one-line error naming its flag. ``config_to_toml`` writes the resolved config
into the run directory, and ``load_config_file`` reads it (or a hand-written one) back.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from alexnet_deploy.alexnet.data import AUGMENTS, CACHE_MODES
from alexnet_deploy.alexnet.model import ARCHS, DEFAULT_INPUT, INITS
from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.deploy.preprocess import PreprocessSpec
from alexnet_deploy.errors import AlexNetDeployError


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
    compile: bool = False  # torch.compile the training step's model (slow to start, faster per step)
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
