"""Our own activation calibrator: one pass for |x| maxima, one pass for |x| histograms, then
minmax / entropy (KL, TensorRT style) / percentile thresholds from the same histograms.

Why not ONNX Runtime's calibrators (onnxruntime/quantization/calibrate.py, 1.31):
- EntropyCalibrater defaults to ``num_bins=128`` and ``num_quantized_bins=128``. Its search loop
  ``for i in range(num_quantized_bins // 2, num_bins // 2 + 1)`` then has exactly one candidate,
  the full range, so "entropy" *is* minmax (both gave identical accuracy when measured on AlexNet).
  Its histogram also spans [-amax, amax], wasting half the bins on post-ReLU tensors.
- PercentileCalibrater in symmetric mode histograms |x| with ``np.histogram(bins=2048)`` over
  [min|x|, max|x|] in float32. A tensor whose |x| range is narrow relative to its magnitude (e.g.
  AlexNet's LRN denominator, ~k..k+eps) cannot hold 2048 distinct float32 edges and numpy raises
  "Too many bins for data range". We histogram over [0, amax] in float64 instead.
All three methods here share one histogram per tensor, so they are fast and comparable; only the
threshold rule differs. Thresholds are symmetric (TensorRT needs zero point 0).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from alexnet_deploy.deploy.progress import ProgressCallback, Tally
from alexnet_deploy.errors import CalibrationError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
NUM_BINS = 2048
QUANT_BINS = 128          # int8 symmetric: 127 positive levels + zero, as TensorRT's entropy calibrator
PERCENTILE = 99.99


@dataclass(frozen=True, eq=False)
class Histogram:
    """Histogram of |x| for one tensor: ``counts`` over equal bins on [0, ``top``] (``top`` 0
    means ``amax``); ``amax`` is the exact largest |x| seen, ``top`` >= ``amax``."""

    amax: float
    counts: np.ndarray
    top: float = 0.0

    @property
    def upper(self) -> float:
        return self.top or self.amax

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.upper, len(self.counts) + 1)


class _Accumulator:
    """Single-pass |x| histogram with a fixed bin width set by the first non-zero batch.

    When a later batch exceeds the covered range, bins of the same width are appended, so no
    count is ever re-binned approximately; past MAX_BINS, pairs of bins merge (exact, width
    doubles). ``result()`` folds the bins into NUM_BINS groups (again exact sums)."""

    MAX_BINS = NUM_BINS * 32

    def __init__(self) -> None:
        self.width = 0.0
        self.amax = 0.0
        self.counts = np.zeros(0, np.int64)

    def add(self, value: np.ndarray) -> None:
        magnitude = np.abs(value, dtype=np.float32).ravel()
        peak = float(magnitude.max()) if magnitude.size else 0.0
        if not np.isfinite(peak):
            raise CalibrationError("the fp32 model produced inf/nan on calibration images; "
                                   "check the model and the preprocessing")
        if peak <= 0.0:
            self.counts = np.pad(self.counts, (0, max(0, 1 - len(self.counts))))
            self.counts[0] += magnitude.size
            return
        if self.width == 0.0:
            self.width = peak / NUM_BINS
        self.amax = max(self.amax, peak)
        needed = int(np.floor(peak / self.width)) + 1
        while needed > self.MAX_BINS:
            self._merge_pairs()
            needed = int(np.floor(peak / self.width)) + 1
        if needed > len(self.counts):
            self.counts = np.pad(self.counts, (0, needed - len(self.counts)))
        # Indices in float64: exact enough even for tensors that live in a sliver of float32.
        index = (magnitude.astype(np.float64) / self.width).astype(np.int64)
        self.counts += np.bincount(np.minimum(index, len(self.counts) - 1), minlength=len(self.counts))

    def _merge_pairs(self) -> None:
        padded = np.pad(self.counts, (0, len(self.counts) % 2))
        self.counts = padded.reshape(-1, 2).sum(axis=1)
        self.width *= 2

    def result(self) -> Histogram:
        if self.width == 0.0:
            counts = np.zeros(NUM_BINS, np.int64)
            counts[0] = int(self.counts.sum())
            return Histogram(amax=0.0, counts=counts)
        group = int(np.ceil(len(self.counts) / NUM_BINS))
        padded = np.pad(self.counts, (0, NUM_BINS * group - len(self.counts)))
        return Histogram(amax=self.amax, counts=padded.reshape(NUM_BINS, group).sum(axis=1),
                         top=NUM_BINS * group * self.width)


def activation_tensors(model, *, inferred: bool = False) -> list[str]:
    """Names of float activations that the Q/DQ quantizer may need ranges for: every float
    tensor read or written by a node that is not an initializer (same rule as ORT's calibrator).
    Pass ``inferred=True`` when shape inference already ran on ``model``."""
    import onnx

    graph = (model if inferred else onnx.shape_inference.infer_shapes(model)).graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.input, *graph.output]}
    constants = {init.name for init in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    names: list[str] = []
    for node in graph.node:
        for name in [*node.input, *node.output]:
            if name and name not in constants and name not in names and types.get(name) == onnx.TensorProto.FLOAT:
                names.append(name)
    return names


def augmented_model(model, tensors: Iterable[str]) -> bytes:
    """``model`` (modified in place) with every tensor in ``tensors`` added as a graph output,
    serialized for an ORT session."""
    import onnx

    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString()


def collect(model_path: str | os.PathLike, images: np.ndarray, batch_size: int = 32,
            progress: ProgressCallback | None = None) -> dict[str, Histogram]:
    """Run ORT once over ``images`` and return an |x| histogram for every activation tensor;
    ``progress`` counts the batches (stage ``activations``)."""
    import onnx

    from alexnet_deploy.deploy.onnx.sessions import cpu_session

    # One shape inference (seconds on AlexNet's 240 MB) serves both the tensor list and the outputs.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    tensors = activation_tensors(model, inferred=True)
    session = cpu_session(augmented_model(model, tensors))
    input_name = session.get_inputs()[0].name
    accumulators = {name: _Accumulator() for name in tensors}
    starts = range(0, len(images), batch_size)
    tally = Tally(progress, "activations", len(starts), "batches").update()
    for start in starts:
        batch = np.ascontiguousarray(images[start:start + batch_size], np.float32)
        for name, value in zip(tensors, session.run(tensors, {input_name: batch})):
            accumulators[name].add(value)
        tally.advance()
    return {name: acc.result() for name, acc in accumulators.items()}


def threshold(hist: Histogram, method: str, percentile: float = PERCENTILE) -> float:
    """Symmetric clipping threshold T (the tensor is quantized on [-T, T]) for one method."""
    if hist.amax <= 0 or hist.counts.sum() == 0:
        return 0.0
    if method == "minmax":
        return hist.amax
    if method == "percentile":
        return percentile_threshold(hist, percentile)
    if method == "entropy":
        return entropy_threshold(hist)
    raise CalibrationError(f"unknown calibration method {method!r}; expected one of {METHODS}")


def percentile_threshold(hist: Histogram, percentile: float = PERCENTILE) -> float:
    """Upper edge of the bin where the |x| CDF reaches ``percentile`` %."""
    cdf = np.cumsum(hist.counts) / hist.counts.sum()
    index = int(np.searchsorted(cdf, percentile / 100.0))
    return min(float(hist.edges[min(index + 1, len(hist.counts))]), hist.amax)


def entropy_threshold(hist: Histogram, quant_bins: int = QUANT_BINS, stride: int = 8) -> float:
    """TensorRT-style KL calibration: the threshold whose ``quant_bins``-level quantization of the
    clipped |x| distribution is closest (KL divergence) to the distribution itself."""
    counts = hist.counts.astype(np.float64)
    # Bin 0 holds the exact zeros of ReLU outputs; it carries no information about the range.
    counts[0] = 0
    nonzero_last = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    if nonzero_last <= quant_bins:
        return min(float(hist.edges[max(nonzero_last, 1)]), hist.amax)
    candidates = list(range(quant_bins, nonzero_last + 1, stride))
    if candidates[-1] != nonzero_last:
        candidates.append(nonzero_last)
    divergences = [_kl_for(counts, i, quant_bins) for i in candidates]
    best = candidates[int(np.argmin(divergences))]
    return min(float(hist.edges[best]), hist.amax)


def _kl_for(counts: np.ndarray, i: int, quant_bins: int) -> float:
    reference = counts[:i].copy()
    reference[-1] += counts[i:].sum()          # clipped outliers land in the last bin
    # Merge the i bins into quant_bins groups, then spread each group's mass back evenly over
    # its non-empty bins (the quantized distribution expanded to i bins).
    groups = np.minimum((np.arange(i) * quant_bins) // i, quant_bins - 1)
    occupied = counts[:i] > 0
    mass = np.bincount(groups, weights=counts[:i], minlength=quant_bins)
    occupancy = np.bincount(groups, weights=occupied.astype(np.float64), minlength=quant_bins)
    expanded = np.where(occupied, mass[groups] / np.maximum(occupancy[groups], 1), 0.0)
    p = reference / reference.sum()
    q_total = expanded.sum()
    if q_total == 0:
        return float("inf")
    q = expanded / q_total
    support = p > 0
    # Where p > 0 but q == 0 the divergence is infinite; smooth q slightly as TensorRT does.
    q = np.where(support & (q == 0), 1e-12, q)
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def thresholds(histograms: dict[str, Histogram], method: str, percentile: float = PERCENTILE) -> dict[str, float]:
    """Per-tensor symmetric thresholds for ``method``."""
    return {name: threshold(hist, method, percentile) for name, hist in histograms.items()}
