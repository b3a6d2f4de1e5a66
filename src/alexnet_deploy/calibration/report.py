"""What a calibration run measured: typed values, written as JSON beside the model."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from alexnet_deploy.deploy.bundle.files import atomic_write_text
from alexnet_deploy.errors import CalibrationError

REPORT_NAME = "calibration_report.json"


@dataclass(frozen=True)
class Accuracy:
    """Accuracy of one model on the held-out images; percentages; ``top1`` is None without labels."""

    top1: float | None
    agreement: float | None
    flips: int
    n_images: int


@dataclass(frozen=True)
class MethodResult:
    """One calibration method, quantized with every layer in int8."""

    method: str
    accuracy: Accuracy
    seconds: float
    thresholds: dict[str, float] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerSensitivity:
    """Leave-one-out: accuracy with only ``layer`` kept in float; ``gain`` = top-1 points won back."""

    layer: str
    accuracy: Accuracy
    gain: float
    agreement_gain: float


@dataclass(frozen=True)
class CalibrationReport:
    """Everything ``calibrate_bundle`` decided and measured (also ``calibration_report.json``)."""

    bundle: str
    model_file: str | None
    method_requested: str
    method: str
    num_images: int
    seed: int
    random: bool
    cache_key: str
    cache_hit: bool
    fp32: Accuracy | None
    int8: Accuracy | None
    max_drop: float | None
    min_agreement: float | None
    budget_met: bool | None
    methods: tuple[MethodResult, ...]
    sensitivity: tuple[LayerSensitivity, ...] = ()
    kept_float: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    int8_kernels: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def drop(self) -> float | None:
        """fp32 top-1 minus int8 top-1, in points (None without labelled held-out images)."""
        if self.fp32 is None or self.int8 is None or self.fp32.top1 is None or self.int8.top1 is None:
            return None
        return round(self.fp32.top1 - self.int8.top1, 4)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["drop"] = self.drop
        return data


def write_report(path: str | os.PathLike, report: CalibrationReport) -> None:
    """Write the report as JSON, atomically."""
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")


class BudgetNotMet(CalibrationError):
    """The accuracy budget could not be met; ``report`` holds the best that was reached."""

    def __init__(self, message: str, report: CalibrationReport) -> None:
        super().__init__(message)
        self.report = report
