"""`alexnet-deploy` commands for the runtime area: bench and bench-diff.

The library is imported inside each command so `alexnet-deploy bench --help` never imports torch
(or onnxruntime).
"""

from __future__ import annotations

import sys

import click

from alexnet_deploy.cli import cli
from alexnet_deploy.deploy.precision import NAMES



def _console():
    from rich.console import Console

    # Piped output (CI logs, files) gets a wide console so tables are not folded into stubs.
    return Console(width=None if sys.stdout.isatty() else 200)


def _fmt(value, spec: str = ".2f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def _short_provider(provider: str) -> str:
    return provider.replace("ExecutionProvider", "")


def _bench_table(report, reference_row):
    """Rows that ran, one line each; a backend x precision that could not run is one line whose
    status points at a numbered reason printed under the table."""
    from rich.table import Table

    mode = "model-only" if not report.rows or report.rows[0].mode == "model" else "end-to-end"
    table = Table(title=f"alexnet-deploy bench ({mode} latency per batch)")
    for name in ("backend", "precision", "provider", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "×pt",
                 "top-1 %", "top-5 %", "agree %", "r→w/w→r", "max|Δ|", "status"):
        table.add_column(name, justify="left" if name in ("backend", "precision", "provider", "status") else "right")
    reasons: list[str] = []
    shown: set[tuple[str, str]] = set()
    for row in report.rows:
        if row.status != "ok":
            if (row.backend, row.precision) in shown:
                continue
            shown.add((row.backend, row.precision))
            if row.reason not in reasons:
                reasons.append(row.reason)
            batches = ",".join(str(r.batch) for r in report.rows if (r.backend, r.precision) == (row.backend,
                                                                                                  row.precision))
            table.add_row(row.backend, row.precision, "", batches, *["-"] * 10,
                          f"[yellow]{row.status}[/] [{reasons.index(row.reason) + 1}]")
            continue
        table.add_row(*_ok_cells(row, reference_row(row)))
    return table, reasons


def _ok_cells(row, ref) -> list[str]:
    ratio = f"{ref.p50_ms / row.p50_ms:.2f}" if ref and row.p50_ms else "-"
    flips = "-" if row.flips_right_to_wrong is None else f"{row.flips_right_to_wrong}/{row.flips_wrong_to_right}"
    status = "[yellow]ok*[/]" if row.unstable or row.random_calibration else "ok"
    return [row.backend, row.precision, _short_provider(row.provider), str(row.batch), _fmt(row.p50_ms),
            _fmt(row.p90_ms), _fmt(row.p99_ms), _fmt(row.throughput_ips, ".1f"), ratio, _fmt(row.top1, ".2f", 100),
            _fmt(row.top5, ".2f", 100), _fmt(row.agreement, ".2f", 100), flips, _fmt(row.max_abs_diff, ".2g"), status]


def _reference_lookup(rows):
    """Speed-up column: ratio of pt fp32's p50 to the row's p50 at the same batch (>1 = faster than pt)."""
    by_batch = {r.batch: r for r in rows if r.backend == "pt" and r.precision == "fp32" and r.status == "ok"}
    return lambda row: by_batch.get(row.batch)


@cli.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--data", type=click.Path(exists=True, file_okay=False),
              help="Labelled image folder (class sub-folders named like the bundle's classes) for accuracy.")
@click.option("--backend", "backends", multiple=True,
              help="pt, pt-cuda, pt-cuda-graphs, ort (=ort-cpu), ov, ort-cuda, ort-tensorrt, trt; repeat for "
                   "several. Default: all but pt-cuda-graphs.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(NAMES),
              help="Repeat for several. Default: fp32, fp16, int8.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1),
              help="Batch size; repeat for several. Default: 1 and the bundle's max batch.")
@click.option("--warmup-s", default=0.2, show_default=True, type=click.FloatRange(min=0), help="Warm-up time per row.")
@click.option("--min-iters", default=10, show_default=True, type=click.IntRange(min=1),
              help="Minimum timed iterations.")
@click.option("--min-time-s", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Minimum timed seconds (both minimums must be reached).")
@click.option("--end-to-end", is_flag=True, help="Time decode + preprocessing + inference (needs --data).")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads (ORT, torch) and decode threads.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="Checkpoint for the pt reference (default: the manifest's provenance.checkpoint_path).")
@click.option("--max-images", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Cap on --data images (class-balanced).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the rows as CSV here.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write PNG plots into this folder.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable --data image instead of skipping it.")
def bench(bundle, data, backends, precisions, batches, warmup_s, min_iters, min_time_s, end_to_end, threads,
          checkpoint, max_images, json_path, csv_path, plot_dir, strict) -> None:
    """Latency (p50/p90/p99, throughput) and accuracy of every backend x precision x batch of BUNDLE
    (a directory, or a .tar.gz made by `alexnet-deploy pack`).

    Exit 1 when a row failed (e.g. a checksum, a wrong --checkpoint) or no backend could run; rows
    that are merely unavailable here (no GPU, no TensorRT) do not fail the run."""
    from alexnet_deploy.cli.progress import progress_renderer
    from alexnet_deploy.deploy.evaluate import bench as lib
    from alexnet_deploy.deploy.evaluate.report import write_csv, write_json, write_plots
    from alexnet_deploy.deploy.bundle.paths import refuse_inside
    from alexnet_deploy.deploy.bundle.files import check_writable

    # Checked before the run: a bench can take minutes, and its results must not be lost at the end.
    for path, flag in ((json_path, "--json"), (csv_path, "--csv"), (plot_dir, "--plot")):
        refuse_inside(path, bundle, flag)
    for path, flag in ((json_path, "--json"), (csv_path, "--csv")):
        if path:
            check_writable(path, flag)
    if plot_dir:
        check_writable(plot_dir, "--plot", directory=True)
    config = lib.BenchConfig(backends=tuple(backends) or lib.DEFAULT_BACKENDS,
                             precisions=tuple(precisions) or NAMES, batches=tuple(batches),
                             warmup_s=warmup_s, min_iters=min_iters, min_time_s=min_time_s, end_to_end=end_to_end,
                             threads=threads, checkpoint=checkpoint, data=data, max_images=max_images, strict=strict)
    with progress_renderer() as progress:
        report = lib.run_bench(bundle, config, progress=progress)
    console = _console()
    table, reasons = _bench_table(report, _reference_lookup(report.rows))
    console.print(table)
    for number, reason in enumerate(reasons, 1):
        console.print(f"[{number}] {reason}", markup=False, highlight=False)
    _print_notes(console, report)
    if json_path:
        console.print(f"wrote {write_json(report, json_path)}")
    if csv_path:
        console.print(f"wrote {write_csv(report.rows, csv_path)}")
    for path in write_plots(report, plot_dir) if plot_dir else []:
        console.print(f"wrote {path}")
    _exit_on_failure(report)


def _exit_on_failure(report) -> None:
    """Exit 1 (after the table and files are written, so CI keeps them) when a requested row failed
    or nothing could run at all."""
    failed = [r for r in report.rows if r.status == "failed"]
    if failed:
        first = failed[0]
        pairs = len({(r.backend, r.precision) for r in failed})
        click.echo(f"Error: {pairs} backend x precision pair(s) failed (first: {first.backend} {first.precision}: "
                   f"{first.reason}); fix it or leave it out with --backend/--precision", err=True)
        sys.exit(1)
    if not any(r.status == "ok" for r in report.rows):
        click.echo("Error: no backend could run this bundle here (see the reasons under the table); install "
                   "one, e.g. pip install 'alexnet-deploy[ort]'", err=True)
        sys.exit(1)

def _cv_warn(report) -> float:
    from alexnet_deploy.deploy.evaluate.timing import CV_WARN

    return float(report.config.get("cv_warn", CV_WARN))


def _print_notes(console, report) -> None:
    from rich.markup import escape

    ok = [r for r in report.rows if r.status == "ok"]
    reference = next((r.reference for r in report.rows if r.reference), None)
    images = next((r.n_images for r in ok if r.n_images), None)
    if reference:
        console.print(f"agreement, flips and max|Δ| are against {reference}" +
                      (f" on {images} images" if images else ""))
    if any(r.backend == "pt" and r.status == "ok" for r in report.rows):
        console.print("×pt = pt fp32 p50 / row p50 at the same batch (higher is faster)")
    if not ok:
        console.print("[red]no backend could run[/]: see the status column")
    unstable = [f"{r.backend} {r.precision} b{r.batch} {r.cv:.0%}" for r in ok if r.unstable]
    if unstable:
        console.print(f"[yellow]* unstable[/] (coefficient of variation > {_cv_warn(report):.0%}: busy machine "
                      f"or unlocked clocks; rerun with a longer --min-time-s): {', '.join(unstable)}")
    seen = set()
    for row in report.rows:
        for warning in row.warnings:
            if warning not in seen and not warning.startswith("unstable"):
                seen.add(warning)
                console.print(f"[yellow]* warning[/] {row.backend} {row.precision}: {escape(warning)}")
    skipped = report.config.get("skipped_images") or []
    if skipped:
        shown = ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else "")
        console.print(f"[yellow]skipped {len(skipped)} unreadable image(s)[/] (--strict makes them fatal): "
                      f"{escape(shown)}")
    system = report.system
    features = system.get("cpu_features") or {}
    console.print(escape(f"system: {system.get('cpu')} ({system.get('cpu_usable')} usable cores), "
                         f"GPU: {system.get('gpu') or system.get('gpu_reason')}"))
    console.print(f"CPU ISA: {' '.join(features.get('isa', [])) or 'unknown'}; int8 dot product (VNNI/AMX/ARM): "
                  f"{'yes' if features.get('int8_dot_product') else 'no'}")


@cli.command("bench-diff")
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--max-latency-regress", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="Fail when a row's p50 grows by more than this many percent.")
@click.option("--max-acc-drop", default=0.5, show_default=True, type=click.FloatRange(min=0),
              help="Fail when a row's top-1 drops by more than this many points.")
def bench_diff(old, new, max_latency_regress, max_acc_drop) -> None:
    """Compare two bench JSONs row by row (backend, precision, batch); exit 1 on a regression."""
    from rich.markup import escape
    from rich.table import Table

    from alexnet_deploy.deploy.evaluate.compare import diff_reports
    from alexnet_deploy.deploy.evaluate.report import read_report

    diffs = diff_reports(read_report(old)["rows"], read_report(new)["rows"],
                         max_latency_regress_pct=max_latency_regress, max_acc_drop_pts=max_acc_drop)
    table = Table(title=escape(f"bench-diff {old} → {new}"))
    for name in ("backend", "precision", "batch", "p50 old", "p50 new", "Δ %", "top-1 old", "top-1 new", "Δ pts",
                 "verdict"):
        table.add_column(name, justify="left" if name in ("backend", "precision", "verdict") else "right")
    for d in diffs:
        verdict = "[red]" + escape("; ".join(d.regressions)) + "[/]" if d.regressions else (d.note or "ok")
        table.add_row(escape(d.key[0]), escape(d.key[1]), str(d.key[2]), _fmt(d.old_p50_ms), _fmt(d.new_p50_ms),
                      _fmt(d.latency_change_pct, "+.1f"), _fmt(d.old_top1, ".2f", 100), _fmt(d.new_top1, ".2f", 100),
                      _fmt(d.top1_change_pts, "+.2f"), verdict)
    console = _console()
    console.print(table)
    failed = [d for d in diffs if d.regressions]
    for d in failed:
        console.print(f"regression {d.key[0]} {d.key[1]} batch {d.key[2]}: {'; '.join(d.regressions)}",
                      markup=False, highlight=False)
    if failed:
        console.print(f"[red]{len(failed)} regression(s)[/] (thresholds: p50 +{max_latency_regress:g}%, "
                      f"top-1 -{max_acc_drop:g} pts)")
        sys.exit(1)
    console.print("no regressions")
