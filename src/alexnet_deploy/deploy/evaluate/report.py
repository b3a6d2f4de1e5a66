"""Bench reports on disk: JSON (system facts, config, rows), CSV (rows) and plots.

The JSON is ``{"system": ..., "config": ..., "rows": [...]}``; ``bench-diff`` and other tools read
it back with :func:`read_report`. Plots need matplotlib, which the runtime does not install.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from alexnet_deploy.deploy.evaluate.bench import ROW_FIELDS, BenchReport, BenchRow
from alexnet_deploy.deploy.bundle.files import atomic_path, atomic_write_text
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


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """A bench JSON written by write_json; a clear error naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AlexNetDeployError(f"{path}: not found; write one with "
                                 f"`alexnet-deploy bench BUNDLE --json {path}`") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AlexNetDeployError(f"{path}: not a bench JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise AlexNetDeployError(f"{path}: not a bench JSON (expected an object with a 'rows' list)")
    return data


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
