"""Bench reports on disk: JSON (system facts, config, rows), CSV (rows) and plots.

The JSON is ``{"system": ..., "config": ..., "rows": [...]}``; ``bench-diff`` and other tools read
it back with :func:`read_report`. Plots need matplotlib, which the runtime does not install.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from alexnet_deploy.deploy.evaluate.bench import ROW_FIELDS, BenchReport, BenchRow
from alexnet_deploy.deploy.bundle.files import atomic_path, atomic_write_text, read_bounded, strict_json_loads
from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.errors import AlexNetDeployError


def write_json(report: BenchReport, path: str | os.PathLike) -> Path:
    """The bench JSON: {"system": ..., "config": ..., "rows": [...]} (atomic write)."""
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return Path(path)


def write_csv(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    """One line per row, columns ROW_FIELDS; warnings joined with '; ' (atomic write)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROW_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        data = row.to_dict()
        data["warnings"] = "; ".join(row.warnings)
        writer.writerow({k: "" if v is None else v for k, v in data.items()})
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


# A bench of every backend x precision x batch is a few hundred kB.
MAX_REPORT_BYTES = 64 << 20
ROW_STATUSES = ("ok", "unavailable", "failed")


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """A bench JSON written by write_json, its size bounded before reading and every field a diff
    reads checked; anything else is one error naming the file and the field."""
    path = Path(path)
    try:
        raw = read_bounded(path, MAX_REPORT_BYTES, "bench JSON")
    except FileNotFoundError as exc:
        raise AlexNetDeployError(f"{path}: not found; write one with "
                                 f"`alexnet-deploy bench BUNDLE --json {path}`") from exc
    try:
        data = strict_json_loads(raw)
    except (ValueError, RecursionError) as exc:
        raise AlexNetDeployError(f"{path}: not a bench JSON ({str(exc)[:200] or 'nested too deeply'})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise AlexNetDeployError(f"{path}: not a bench JSON (expected an object with a 'rows' list)")
    for index, row in enumerate(data["rows"]):
        problem = row_problem(row)
        if problem:
            raise AlexNetDeployError(f"{path}: rows[{index}]{problem}; not a well-formed bench report")
    return data


def row_problem(row: Any) -> str | None:
    """What makes ``row`` unusable for a comparison (as '.field: why'), or None."""
    if not isinstance(row, dict):
        return f": expected an object, got {type(row).__name__}"
    for name in ("backend", "precision"):
        if not isinstance(row.get(name), str) or not row[name] or len(row[name]) > 100:
            return f".{name} = {str(row.get(name))[:40]!r}: expected a name"
    batch = row.get("batch")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        return f".batch = {str(batch)[:40]!r}: expected a positive integer"
    if row.get("status") not in ROW_STATUSES:
        return f".status = {str(row.get('status'))[:40]!r}: expected one of {', '.join(ROW_STATUSES)}"
    if row["status"] == "ok":
        for name in ("p50_ms",):
            if not _positive(row.get(name)):
                return f".{name} = {str(row.get(name))[:40]!r}: expected a positive number of milliseconds"
    for name in ("top1", "top5", "agreement"):
        value = row.get(name)
        if value is not None and not (_number(value) and 0.0 <= value <= 1.0):
            return f".{name} = {str(value)[:40]!r}: expected a fraction in [0, 1] or null"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def write_plots(report: BenchReport, out_dir: str | os.PathLike) -> list[Path]:
    """latency_vs_batch.png and top1_vs_latency.png (matplotlib, imported only here)."""
    require("matplotlib", package="matplotlib", needed_for="--plot").use("Agg")  # no display on a device
    plt = require("matplotlib.pyplot", package="matplotlib", needed_for="--plot")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in report.rows if r.status == "ok"]
    written = [_plot_latency(plt, ok, out / "latency_vs_batch.png")]
    if any(r.top1 is not None or r.agreement is not None for r in ok):
        written.append(_plot_accuracy(plt, ok, out / "top1_vs_latency.png"))
    return written


def _save(plt, fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_latency(plt, rows: Sequence[BenchRow], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in dict.fromkeys((r.backend, r.precision) for r in rows):
        series = sorted((r.batch, r.p50_ms, r.p90_ms) for r in rows if (r.backend, r.precision) == key)
        xs, p50, p90 = zip(*series)
        line, = ax.plot(xs, p50, marker="o", label=f"{key[0]} {key[1]}")
        ax.fill_between(xs, p50, p90, color=line.get_color(), alpha=0.15)
    ax.set(xlabel="batch", ylabel="latency per batch, p50 (ms; band to p90)", title="Latency vs batch")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")  # backends differ by 10x and more; a linear axis flattens the fast ones
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _plot_accuracy(plt, rows: Sequence[BenchRow], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    use_top1 = any(r.top1 is not None for r in rows)
    smallest = min(r.batch for r in rows)
    markers = {"fp32": "o", "fp16": "s", "int8": "^"}
    for r in rows:
        value = r.top1 if use_top1 else r.agreement
        if r.batch == smallest and value is not None:
            ax.scatter(r.p50_ms, value * 100, s=50, marker=markers.get(r.precision, "o"),
                       label=f"{r.backend} {r.precision}")
    label = "top-1 (%)" if use_top1 else "top-1 agreement with reference (%)"
    ax.set(xlabel=f"p50 latency at batch {smallest} (ms, log)", ylabel=label, title=f"{label} vs latency")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
