"""`alexnet-deploy` commands for the calibrate area."""

from __future__ import annotations

from pathlib import Path

import click

from alexnet_deploy.cli import cli

METHOD_CHOICES = ["auto", "entropy", "minmax", "percentile"]

# Shared by `calibrate` and `export --int8`, which both write model.int8.onnx.
weight_bits_option = click.option(
    "--weight-bits", default="7", show_default=True, type=click.Choice(["7", "8"]),
    help="int8 weight bits: 7 runs correctly on every CPU; 8 only on TensorRT and CPUs with VNNI/AMX/ARM.")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--calib", "calib_dir", type=click.Path(path_type=Path),
              help="Image folder (one sub-folder per class) to calibrate on.")
@click.option("--num-images", default=512, show_default=True, type=int, help="Calibration images (class-stratified).")
@click.option("--method", default="auto", show_default=True, type=click.Choice(METHOD_CHOICES),
              help="Activation range rule; auto tries all and keeps the best on held-out images.")
@click.option("--batch-size", default=32, show_default=True, type=int, help="Batch size for ONNX Runtime runs.")
@click.option("--max-drop", type=float, default=None,
              help="Top-1 points int8 may lose against fp32; sensitive layers stay float until met, else exit 1.")
@click.option("--min-agreement", type=float, default=None,
              help="Minimum percent of held-out images whose int8 top-1 matches fp32; handled like --max-drop.")
@click.option("--val", "val_dir", type=click.Path(path_type=Path),
              help="Held-out image folder for accuracy (default: images of --calib not used for calibration).")
@click.option("--num-val", default=1000, show_default=True, type=int, help="Held-out images to measure on.")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed.")
@click.option("--allow-random-calibration", is_flag=True,
              help="Calibrate on random pixels when no --calib is given: LATENCY EXPERIMENTS ONLY.")
@weight_bits_option
@click.option("--report", "report_file", type=click.Path(path_type=Path),
              help="Also write the JSON report here (default: BUNDLE/calibration_report.json).")
def calibrate(bundle: Path, calib_dir: Path | None, num_images: int, method: str, batch_size: int,
              max_drop: float | None, min_agreement: float | None, val_dir: Path | None, num_val: int, seed: int,
              allow_random_calibration: bool, weight_bits: str, report_file: Path | None) -> None:
    """Calibrate BUNDLE's fp32 ONNX into a TensorRT-compatible int8 Q/DQ model.

    Writes BUNDLE/model.int8.onnx, BUNDLE/calibration_report.json and the manifest entry.
    Exit 1 when --max-drop / --min-agreement cannot be met (the report shows the best reached).
    """
    from rich.console import Console

    from alexnet_deploy.calibration import BudgetNotMet, calibrate_bundle
    from alexnet_deploy.cli.progress import progress_renderer

    _check_outputs(bundle, report_file)
    console = Console(stderr=True)
    if calib_dir is None and allow_random_calibration:
        console.print("[bold red]WARNING: random calibration. The int8 model's accuracy is meaningless; it is "
                      "stamped random in the manifest and in bench output. Use it for latency only.[/]")
    try:
        with progress_renderer() as progress:
            report = calibrate_bundle(bundle, calib_dir=calib_dir, num_images=num_images, method=method,
                                      batch_size=batch_size, max_drop=max_drop, val_dir=val_dir, seed=seed,
                                      allow_random=allow_random_calibration, progress=progress, num_val=num_val,
                                      report_path=report_file, min_agreement=min_agreement,
                                      weight_bits=int(weight_bits))
    except BudgetNotMet as exc:
        print_report(Console(), exc.report)
        raise
    print_report(Console(), report)


def _check_outputs(bundle: Path, report_file: Path | None) -> None:
    """Before any work: the bundle must be a bundle in a writable directory (model.int8.onnx and
    manifest.json go there) and --report writable and outside the bundle, so that a failure comes
    before the slow part."""
    from alexnet_deploy.deploy.bundle import read_manifest
    from alexnet_deploy.deploy.bundle.paths import refuse_inside
    from alexnet_deploy.deploy.bundle.files import check_writable

    read_manifest(bundle)
    check_writable(bundle, "BUNDLE", directory=True)
    if report_file is not None:
        refuse_inside(report_file, bundle, "--report")
        check_writable(report_file, "--report")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(console, report) -> None:
    """Per-method accuracy, per-layer sensitivity and the outcome, as rich tables."""
    from rich.table import Table

    methods = Table(title=f"INT8 calibration of {report.bundle} ({report.num_images} images, seed {report.seed})")
    for column in ("method", "top-1 %", "agreement %", "flips", "seconds", ""):
        methods.add_column(column, justify="left" if column in ("method", "") else "right")
    if report.fp32 is not None:
        methods.add_row("fp32", _pct(report.fp32.top1), "100.00", "0", "-", "reference")
    for result in report.methods:
        acc = result.accuracy
        methods.add_row(result.method, _pct(acc.top1 if acc else None), _pct(acc.agreement if acc else None),
                        str(acc.flips) if acc else "-", f"{result.seconds:.2f}",
                        "chosen" if result.method == report.method else "")
    console.print(methods)
    if report.sensitivity:
        layers = Table(title="Per-layer sensitivity (leave-one-out: only this layer in float)")
        for column in ("layer", "top-1 %", "gain pts", "agreement gain", "kept float"):
            layers.add_column(column, justify="left" if column == "layer" else "right")
        for item in report.sensitivity:
            layers.add_row(item.layer, _pct(item.accuracy.top1), f"{item.gain:+.2f}", f"{item.agreement_gain:+.2f}",
                           "yes" if item.layer in report.kept_float else "")
        console.print(layers)
    _print_outcome(console, report)


def _print_outcome(console, report) -> None:
    from rich.markup import escape

    from alexnet_deploy.calibration import dataset

    if report.random:
        console.print("[bold red]RANDOM CALIBRATION: accuracy of this int8 model is meaningless.[/]")
    int8 = report.int8
    summary = (f"method {report.method}; int8 top-1 {_pct(int8.top1 if int8 else None)} % "
               f"(drop {_pct(report.drop)} pts), agreement {_pct(int8.agreement if int8 else None)} %")
    if report.kept_float:
        summary += f"; kept in float: {', '.join(report.kept_float)}"
    console.print(summary)
    if report.cache_hit:   # the same folder, count, seed and preprocessing as an earlier run
        console.print(f"calibration images: {report.num_images} from cache (key {report.cache_key[:12]}, "
                      f"{dataset.default_cache_dir()}); change a file, --num-images or --seed to re-sample")
    kernels = ", ".join(f"{k}×{v}" for k, v in report.int8_kernels.items()) or "none"
    seconds = report.timings.get("calibration_seconds", 0)
    console.print(f"ORT CPU int8 kernels: {kernels}; calibration took {seconds:.1f} s"
                  f" (total {report.timings.get('total', 0):.1f} s)")
    if report.skipped:
        names = escape(", ".join(report.skipped[:5]) + (" …" if len(report.skipped) > 5 else ""))
        console.print(f"[yellow]skipped {len(report.skipped)} unreadable image(s): {names}[/]")
    for note in report.notes:
        console.print(f"note: {note}")
    if report.model_file:
        console.print(f"wrote {Path(report.bundle) / report.model_file}")
