"""Agreement between sets of logits, and between two bench reports: the one place these are computed.

Task-level numbers (top-1/top-5, top-1 agreement, right->wrong / wrong->right flips) say whether a
precision change matters; elementwise tolerances alone raise false alarms on every sane fp16 build,
so ``max_abs_diff`` is reported beside them, not instead. Export-time parity (:func:`check_parity`)
adds elementwise and cosine bounds, but counts a top-1 disagreement only where the reference's
top-1 margin is larger than the logits' own tolerance: an untrained or weak model's logits are
nearly tied, and a tie flipping is no error ("decisive" disagreements).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from alexnet_deploy.deploy.precision import Threshold, Tolerance
from alexnet_deploy.errors import AlexNetDeployError, ExportError


@dataclass(frozen=True)
class Accuracy:
    """Accuracy of ``logits`` on ``labels`` and agreement with a reference's logits."""

    n_images: int
    top1: float | None
    top5: float | None
    agreement: float | None
    max_abs_diff: float | None
    flips_right_to_wrong: int | None
    flips_wrong_to_right: int | None


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits (k capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def compare_logits(logits: np.ndarray, labels: np.ndarray | None = None,
                   reference: np.ndarray | None = None) -> Accuracy:
    """Top-1/top-5 against ``labels`` (if given) and agreement/flips against ``reference`` (if given)."""
    if reference is not None and reference.shape != logits.shape:
        raise AlexNetDeployError(f"logits shape {logits.shape} does not match the reference's {reference.shape}")
    pred = logits.argmax(axis=1)
    top1 = topk_accuracy(logits, labels, 1) if labels is not None else None
    top5 = topk_accuracy(logits, labels, 5) if labels is not None else None
    agreement = max_diff = r2w = w2r = None
    if reference is not None and len(logits):
        ref_pred = reference.argmax(axis=1)
        agreement = float(np.mean(pred == ref_pred))
        max_diff = float(np.max(np.abs(logits.astype(np.float64) - reference.astype(np.float64))))
        if labels is not None:
            ref_right, right = ref_pred == labels, pred == labels
            r2w, w2r = int(np.sum(ref_right & ~right)), int(np.sum(~ref_right & right))
    return Accuracy(len(logits), top1, top5, agreement, max_diff, r2w, w2r)


# ---- thresholds and export parity -------------------------------------------------------------

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


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    # Two all-zero rows agree perfectly; one zero row against a non-zero one does not.
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num == 0, 1.0, 0.0))


def check_parity(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> Parity:
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
    cos = cosine_rows(reference, candidate)
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


def require_parity(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance, what: str) -> Parity:
    """check_parity(), raising ExportError (saying by how much) when the candidate misses the thresholds."""
    result = check_parity(reference, candidate, tol)
    if not result.passed:
        if not np.isfinite(candidate).all():
            raise ExportError(f"{what}: produced NaN or Inf logits on {result.n} verification inputs")
        raise ExportError(result.failure(what, tol))
    return result


# ---- bench-diff ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowDiff:
    """One (backend, precision, batch) present in both reports, or in only one of them."""

    key: tuple[str, str, int]
    old_p50_ms: float | None
    new_p50_ms: float | None
    latency_change_pct: float | None
    old_top1: float | None
    new_top1: float | None
    top1_change_pts: float | None
    regressions: tuple[str, ...]
    note: str = ""


def _key(row: Mapping[str, Any]) -> tuple[str, str, int]:
    try:
        return str(row["backend"]), str(row["precision"]), int(row["batch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AlexNetDeployError(f"bench row without backend/precision/batch: {dict(row)}") from exc


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def diff_row(key, old: Mapping | None, new: Mapping | None, max_latency_regress_pct: float,
             max_acc_drop_pts: float) -> RowDiff:
    """Compare two rows for one key; regressions name what got worse beyond the thresholds."""
    if old is None or new is None:
        note = "only in NEW" if old is None else "only in OLD"
        return RowDiff(key, None, None, None, None, None, None, (), note)
    regressions = []
    if old.get("status") == "ok" and new.get("status") != "ok":
        regressions.append(f"status {new.get('status')}: {new.get('reason') or ''}".strip())
    o_lat, n_lat = _num(old.get("p50_ms")), _num(new.get("p50_ms"))
    lat_pct = (n_lat / o_lat - 1.0) * 100.0 if o_lat and n_lat is not None else None
    if lat_pct is not None and lat_pct > max_latency_regress_pct:
        regressions.append(f"p50 +{lat_pct:.1f}% > {max_latency_regress_pct:g}%")
    o_acc, n_acc = _num(old.get("top1")), _num(new.get("top1"))
    acc_pts = (n_acc - o_acc) * 100.0 if o_acc is not None and n_acc is not None else None
    if acc_pts is not None and -acc_pts > max_acc_drop_pts:
        regressions.append(f"top-1 {acc_pts:+.2f} pts < -{max_acc_drop_pts:g}")
    return RowDiff(key, o_lat, n_lat, lat_pct, o_acc, n_acc, acc_pts, tuple(regressions))


def diff_reports(old_rows: Iterable[Mapping], new_rows: Iterable[Mapping], *, max_latency_regress_pct: float = 10.0,
                 max_acc_drop_pts: float = 0.5) -> list[RowDiff]:
    """Match rows by (backend, precision, batch) and flag latency/accuracy regressions."""
    old = {_key(r): r for r in old_rows}
    new = {_key(r): r for r in new_rows}
    keys = list(old) + [k for k in new if k not in old]
    return [diff_row(k, old.get(k), new.get(k), max_latency_regress_pct, max_acc_drop_pts) for k in keys]
