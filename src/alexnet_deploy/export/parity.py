"""Agreement between two sets of logits (numpy only), with pass/fail thresholds.

Used by every export step: torch vs ONNX Runtime (fp32), fp32 vs fp16, before/after onnxslim.
Top-1 agreement alone is a poor test on an untrained or weak model, whose logits are nearly tied;
so a disagreement only counts against the threshold when the reference's top-1 margin is larger
than the tolerance allowed for the logits themselves ("decisive" disagreements).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from alexnet_deploy.errors import ExportError


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


FP32 = Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999)
FP16 = Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999, min_top1=0.98)


@dataclass(frozen=True)
class Parity:
    """How well ``candidate`` logits match ``reference`` logits on ``n`` inputs."""

    n: int
    max_abs_diff: float
    mean_abs_diff: float
    allowed_abs_diff: float
    min_cosine: float
    top1_agreement: float
    decisive_top1_agreement: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def failure(self, what: str, tol: Tolerance) -> str:
        """One line saying by how much each failing measure missed its threshold."""
        parts = []
        if self.max_abs_diff > self.allowed_abs_diff:
            parts.append(f"max abs diff {self.max_abs_diff:.3g} > allowed {self.allowed_abs_diff:.3g} "
                         f"({self.max_abs_diff / max(self.allowed_abs_diff, 1e-30):.1f}x)")
        if self.min_cosine < tol.min_cosine:
            parts.append(f"min cosine {self.min_cosine:.6f} < {tol.min_cosine}")
        if self.decisive_top1_agreement < tol.min_top1:
            parts.append(f"top-1 agreement {self.decisive_top1_agreement:.2%} < {tol.min_top1:.0%}")
        return f"{what}: parity check failed on {self.n} inputs: " + "; ".join(parts)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    # Two all-zero rows agree perfectly; one zero row against a non-zero one does not.
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num == 0, 1.0, 0.0))


def compare(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> Parity:
    """Compare two (N, classes) logit arrays under ``tol``."""
    if reference.shape != candidate.shape:
        raise ExportError(f"parity: shapes differ, reference {reference.shape} vs candidate {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    allowed = tol.limit(reference)
    ref_top, cand_top = reference.argmax(axis=1), candidate.argmax(axis=1)
    agree = ref_top == cand_top
    sorted_ref = np.sort(reference, axis=1)
    margin = sorted_ref[:, -1] - sorted_ref[:, -2] if reference.shape[1] > 1 else np.full(len(reference), np.inf)
    decisive = margin > 2 * allowed
    cos = _cosine(reference, candidate)
    n = len(reference)
    max_abs = float(diff.max()) if diff.size else 0.0
    top1 = float(agree.mean()) if n else 1.0
    decisive_top1 = float(agree[decisive].mean()) if decisive.any() else 1.0
    min_cos = float(cos.min()) if n else 1.0
    passed = bool(np.isfinite(candidate).all() and max_abs <= allowed and min_cos >= tol.min_cosine
                  and decisive_top1 >= tol.min_top1)
    return Parity(n=n, max_abs_diff=max_abs, mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
                  allowed_abs_diff=allowed, min_cosine=min_cos, top1_agreement=top1,
                  decisive_top1_agreement=decisive_top1, passed=passed)


def require(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance, what: str) -> Parity:
    """compare(), raising ExportError (saying by how much) when the candidate misses the thresholds."""
    result = compare(reference, candidate, tol)
    if not result.passed:
        if not np.isfinite(candidate).all():
            raise ExportError(f"{what}: produced NaN or Inf logits on {result.n} verification inputs")
        raise ExportError(result.failure(what, tol))
    return result


__all__ = ["Tolerance", "FP32", "FP16", "Parity", "compare", "require"]
