"""Accuracy of a quantized model against fp32 on held-out images, per-layer sensitivity, and the
search that keeps the most sensitive layers in float until a top-1 budget is met."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from alexnet_deploy.calibration.qdq import DEFAULT_WEIGHT_BITS, require_valid, write_qdq
from alexnet_deploy.calibration.report import Accuracy, LayerSensitivity
from alexnet_deploy.deploy.progress import ProgressCallback, Tally

log = logging.getLogger(__name__)

@dataclass(frozen=True, eq=False)
class Evaluation:
    """Held-out images, their labels (-1 = unknown) and the fp32 model's logits on them."""

    images: np.ndarray
    labels: np.ndarray
    fp32_logits: np.ndarray
    batch_size: int = 32

    @property
    def fp32_accuracy(self) -> Accuracy:
        return accuracy(self.fp32_logits, self.fp32_logits, self.labels)


@dataclass(frozen=True)
class Budget:
    """What the int8 model must reach on the held-out images: at most ``max_drop`` top-1 points
    below fp32 and at least ``min_agreement`` % top-1 agreement with fp32 (None = no limit)."""

    max_drop: float | None = None
    min_agreement: float | None = None

    @property
    def active(self) -> bool:
        return self.max_drop is not None or self.min_agreement is not None

    def met(self, acc: Accuracy, fp32_top1: float | None) -> bool:
        drop_ok = self.max_drop is None or fp32_top1 is None or fp32_top1 - (acc.top1 or 0.0) <= self.max_drop
        agree_ok = self.min_agreement is None or (acc.agreement or 0.0) >= self.min_agreement
        return drop_ok and agree_ok

    def describe(self) -> str:
        parts = [f"--max-drop {self.max_drop}" if self.max_drop is not None else "",
                 f"--min-agreement {self.min_agreement}" if self.min_agreement is not None else ""]
        return " and ".join(p for p in parts if p)


def logits(model_path: str | os.PathLike, images: np.ndarray, batch_size: int = 32, *,
           semantic: bool = False) -> np.ndarray:
    """Run a model on ORT CPU over ``images``; ``semantic`` runs a Q/DQ model as the float ops it
    is made of (deploy.onnx.sessions.semantic_session), so the result does not depend on this CPU."""
    from alexnet_deploy.deploy.onnx.sessions import cpu_session, run_batches, semantic_session

    session = semantic_session(model_path) if semantic else cpu_session(model_path)
    return run_batches(session, images, batch_size)


def accuracy(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> Accuracy:
    """Top-1 (vs labels, when all are known) and top-1 agreement with ``reference`` logits, in %."""
    predicted, expected = candidate.argmax(1), reference.argmax(1)
    agree = predicted == expected
    top1 = float(np.mean(predicted == labels) * 100) if len(labels) and np.all(labels >= 0) else None
    return Accuracy(top1=None if top1 is None else round(top1, 4), agreement=round(float(agree.mean() * 100), 4),
                    flips=int((~agree).sum()), n_images=int(len(labels)))


def measure(model_path: str | os.PathLike, evaluation: Evaluation) -> Accuracy:
    """Accuracy of the Q/DQ model ``model_path`` on the held-out images, against the fp32 logits.

    Measured on the model's own semantics, not on this CPU's int8 kernels: what TensorRT and
    every correct CPU kernel compute, so the same calibration gives the same numbers and the same
    layer choices on any build machine (a CPU whose kernels deviate is caught by verify)."""
    return accuracy(logits(model_path, evaluation.images, evaluation.batch_size, semantic=True),
                    evaluation.fp32_logits, evaluation.labels)


def score(acc: Accuracy, fp32_top1: float | None = None) -> tuple[float, float]:
    """Sort key, higher is better: top-1 first, then agreement with fp32.

    Top-1 above fp32's counts as equal to fp32's: quantization noise that happens to fix a few
    held-out images is luck, and rewarding it would prefer the model that flips the most."""
    top1 = acc.top1 if acc.top1 is not None else 0.0
    if fp32_top1 is not None:
        top1 = min(top1, fp32_top1)
    return (top1, acc.agreement or 0.0)


def quantize_and_measure(fp32_path: Path, out_path: Path, ranges: dict[str, float], keep_float: Sequence[str],
                         evaluation: Evaluation | None, weight_bits: int = DEFAULT_WEIGHT_BITS) -> Accuracy | None:
    """Write a Q/DQ model, refuse it if TensorRT would, and measure it (None without held-out images)."""
    write_qdq(fp32_path, out_path, ranges, keep_float, weight_bits)
    require_valid(out_path)
    return measure(out_path, evaluation) if evaluation is not None else None


def sensitivity(fp32_path: Path, work: Path, ranges: dict[str, float], layers: Sequence[str],
                baseline: Accuracy, evaluation: Evaluation, progress: ProgressCallback | None = None,
                by_agreement: bool = False, weight_bits: int = DEFAULT_WEIGHT_BITS) -> list[LayerSensitivity]:
    """Leave-one-out: for each layer, quantize everything else and measure what is won back.

    Sorted most sensitive first: top-1 gain then agreement gain, or the other way round with
    ``by_agreement`` (when agreement is what misses the budget). AlexNet has 8 such layers
    (10 when adaptive pooling is exported as two MatMuls), so this is 8-10 quantize+evaluate rounds.
    ``progress`` counts the layers (stage ``sensitivity``).
    """
    results = []
    tally = Tally(progress, "sensitivity", len(layers), "layers").update()
    for layer in layers:
        acc = quantize_and_measure(fp32_path, work / "sensitivity.onnx", ranges, [layer], evaluation, weight_bits)
        gain = (acc.top1 or 0.0) - (baseline.top1 or 0.0)
        results.append(LayerSensitivity(layer=layer, accuracy=acc, gain=round(gain, 4),
                                        agreement_gain=round((acc.agreement or 0) - (baseline.agreement or 0), 4)))
        log.info("sensitivity %s: top-1 %+.2f, agreement %+.2f", layer, gain, results[-1].agreement_gain)
        tally.advance()
    if by_agreement:
        return sorted(results, key=lambda r: (-r.agreement_gain, -r.gain))
    return sorted(results, key=lambda r: (-r.gain, -r.agreement_gain))


def meet_budget(fp32_path: Path, work: Path, ranges: dict[str, float], ranked: Sequence[LayerSensitivity],
                evaluation: Evaluation, target: Budget, baseline: tuple[Path, Accuracy],
                progress: ProgressCallback | None = None,
                weight_bits: int = DEFAULT_WEIGHT_BITS) -> tuple[tuple[str, ...], Accuracy, bool]:
    """Keep layers in float, most sensitive first, until ``target`` is met.

    ``baseline`` is the all-int8 model and its accuracy. Returns (layers kept in float, accuracy
    reached, met); the best model reached is left at ``work / "budget.onnx"``. ``progress`` counts
    the layers tried (stage ``budget``).
    """
    fp32_top1 = evaluation.fp32_accuracy.top1
    shutil.copyfile(baseline[0], work / "budget.onnx")
    best: tuple[tuple[str, ...], Accuracy] = ((), baseline[1])
    kept: list[str] = []
    # Keeping every layer in float would leave no int8 model at all: stop one short of that.
    candidates = list(ranked)[:-1]
    tally = Tally(progress, "budget", len(candidates), "layers").update()
    for item in candidates:
        kept.append(item.layer)
        candidate = work / "candidate.onnx"
        acc = quantize_and_measure(fp32_path, candidate, ranges, kept, evaluation, weight_bits)
        met = target.met(acc, fp32_top1)
        if met or score(acc, fp32_top1) > score(best[1], fp32_top1):
            best = (tuple(kept), acc)
            candidate.replace(work / "budget.onnx")
        tally.advance()
        if met:
            return best[0], best[1], True
    return best[0], best[1], False
