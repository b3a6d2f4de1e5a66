"""Agreement between two sets of logits, and between two bench reports.

Task-level numbers (top-1/top-5, top-1 agreement, right->wrong / wrong->right flips) say whether a
precision change matters; elementwise tolerances alone raise false alarms on every sane fp16
build (anchors pain point #11), so ``max_abs_diff`` is reported beside them, not instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from alexnet_deploy.errors import AlexNetDeployError


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
