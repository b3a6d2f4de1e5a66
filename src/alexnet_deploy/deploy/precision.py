"""The precisions a bundle carries, in one table that every module reads.

A row says, for one precision: which ONNX file of the bundle holds it, the TensorRT builder flags
that build it from an ONNX that is not strongly typed (TensorRT 8.6), the Triton data type of its
weights, and the thresholds it is judged by — at export (against PyTorch or the fp32 ONNX), on the
device (``verify``'s golden vectors) and in the backend conformance tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alexnet_deploy.errors import AlexNetDeployError


@dataclass(frozen=True)
class Threshold:
    """Minimum top-1 agreement and mean cosine similarity with a reference's logits (device checks)."""

    min_agreement: float
    min_cosine: float


@dataclass(frozen=True)
class Tolerance:
    """Thresholds: logits may differ by ``atol + rtol * max|reference|``; cosine per row at least
    ``min_cosine``; top-1 agreement on decisive rows at least ``min_top1``."""

    atol: float
    rtol: float
    min_cosine: float
    min_top1: float = 1.0

    def limit(self, reference: np.ndarray) -> float:
        scale = float(np.abs(reference).max()) if reference.size else 0.0
        return self.atol + self.rtol * scale


@dataclass(frozen=True)
class Precision:
    """One precision's files, build flags and thresholds."""

    name: str
    onnx_file: str
    #: TensorRT BuilderFlags when the network is not strongly typed (8.6, or 10.x without the opt-in).
    trt_builder_flags: tuple[str, ...]
    #: A backend's logits against the torch reference logits (``verify`` golden vectors). TensorRT's
    #: fp32 uses TF32 on Ampere/Orin, hence not 1e-6-tight; fp16 and int8 are judged on decisions
    #: first (agreement) and on the logits' direction second (cosine).
    golden: Threshold
    #: Export-time parity of this precision's ONNX (fp32 vs PyTorch, fp16 vs the fp32 ONNX); None
    #: where calibration judges it instead (int8: accuracy budget on held-out images).
    export: Tolerance | None
    #: Largest |logit difference| between backends, as a fraction of the logits' spread: the
    #: conformance bound of the backend tests (what bench reports is measured, not bounded).
    conformance: float


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "model.onnx", (), golden=Threshold(min_agreement=0.99, min_cosine=0.9999),
              export=Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999), conformance=1e-4),
    Precision("fp16", "model.fp16.onnx", ("FP16",), golden=Threshold(min_agreement=0.95, min_cosine=0.999),
              export=Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999, min_top1=0.98), conformance=2e-2),
    # 8.6 needs the INT8 flag even for explicit Q/DQ; FP16 lets the unquantized layers run in fp16.
    Precision("int8", "model.int8.onnx", ("INT8", "FP16"), golden=Threshold(min_agreement=0.85, min_cosine=0.98),
              export=None, conformance=0.05),
)}
#: Precision names, lowest compression first (the order tables and commands list them in).
NAMES: tuple[str, ...] = tuple(PRECISIONS)


def precision(name: str, flag: str = "--precision") -> Precision:
    """The row for ``name``; an unknown name is an error naming ``flag`` and the known names."""
    if name not in PRECISIONS:
        raise AlexNetDeployError(f"{flag} {name!r}: expected one of {', '.join(NAMES)}")
    return PRECISIONS[name]


def onnx_file(name: str) -> str:
    return precision(name).onnx_file
