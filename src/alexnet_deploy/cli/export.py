"""`alexnet-deploy export`: checkpoint -> verified bundle (ONNX, fp16 ONNX, reference, manifest)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from alexnet_deploy.cli import cli
from alexnet_deploy.cli.calibrate import weight_bits_option


def _summary(manifest, out: Path, seconds: float) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Piped output (CI logs, files) gets a wide console so the table is not folded.
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=escape(f"bundle {out} ({seconds:.1f} s)"))
    for column in ("file", "precision", "MB", "parity"):
        table.add_column(column)
    parity = manifest.parity
    checks = {"model.onnx": parity.get("fp32", {}).get("onnx_vs_torch"), "model.fp16.onnx": parity.get("fp16_vs_fp32")}
    for art in manifest.artifacts:
        check = checks.get(art.file)
        text = (f"max|Δ| {check['max_abs_diff']:.2e}, cos {check['min_cosine']:.6f}, "
                f"top-1 {check['top1_agreement']:.1%}"
                if check else "")
        table.add_row(escape(art.file), art.precision, f"{art.bytes / 1e6:.1f}", text)
    console.print(table)
    console.print(f"verified on {parity.get('n')} {escape(str(parity.get('source')))} inputs; opset {manifest.export.get('opset')}, "
                  f"LRN {_lrn_summary(manifest.export)}")
    for item in manifest.export.get("fp16", {}).get("kept_fp32", []):
        console.print(f"[yellow]fp16 overflow guard kept {escape(item['node'])} ({item['op_type']}) in fp32: "
                      f"{escape(item['reason'])}")
    calibration = manifest.calibration
    if manifest.artifact("int8") is not None and calibration:
        console.print(escape(f"int8: {calibration.get('method')} calibration on {calibration.get('num_images')} "
                             f"images (report: {calibration.get('report')})"))
    engines = manifest.export.get("engines", {})
    if engines.get("status") == "built":
        console.print(escape(f"TensorRT engines: {', '.join(engines['engines'])}"))
    else:
        console.print(f"[yellow]TensorRT engines {engines.get('status')} ({escape(str(engines.get('reason')))}).[/] "
                      "Build them on the target with:")
        # Plain and unwrapped, so the command can be copied as is.
        click.echo(f"  {engines.get('command')}")


def _lrn_summary(export: dict) -> str:
    """How the model's LRN layers are in the graph: "conv (2 layers rewritten)", "native (2 ONNX LRN nodes)"."""
    form, layers = export.get("lrn"), export.get("lrn_layers")
    if layers == 0:
        return "none (the model has no LRN layers)"
    if form == "native":
        return f"native ({export.get('lrn_nodes')} ONNX LRN nodes)"
    return f"{form} ({layers} layers rewritten)" if layers is not None else str(form)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx (fp16 compute, fp32 I/O, overflow guard).")
@click.option("--int8", is_flag=True, help="Also calibrate model.int8.onnx (needs --calib).")
@click.option("--calib", "calib", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Calibration image folder for --int8.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Largest batch for engines (the ONNX batch axis is dynamic).")
@click.option("--opset", default=None, type=int, help="ONNX opset (default 18; 17 for TensorRT 8.6 / JetPack 6.0).")
@click.option("--verify-data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Image folder to verify parity on.")
@click.option("--verify-count", default=32, show_default=True, type=click.IntRange(min=1),
              help="Number of verification images (also stored in reference.npz).")
@click.option("--no-engine", is_flag=True, help="Do not build TensorRT engines even if TensorRT and a GPU are here.")
@click.option("--image-size", type=click.IntRange(min=1), help="Export at this crop size instead of the checkpoint's.")
@click.option("--arch", type=click.Choice(["alexnet2012", "torchvision"]), help="Arch of a plain state_dict.")
@click.option("--num-classes", type=click.IntRange(min=1), help="Class count of a plain state_dict.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim simplification.")
@weight_bits_option
@click.option("--lrn", default="conv", show_default=True, help="LRN in the graph: conv (banded 1x1 conv + sqrt, fastest on CPU), native (one ONNX LRN node), or decomposed.")
def export(checkpoint: Path, out: Path, fp16: bool, int8: bool, calib: Path | None, max_batch: int,
           opset: int | None, verify_data: Path | None, verify_count: int, no_engine: bool, image_size: int | None,
           arch: str | None, num_classes: int | None, no_simplify: bool, weight_bits: str, lrn: str) -> None:
    """Export CHECKPOINT to a verified deployment bundle directory."""
    import time

    from alexnet_deploy.cli.progress import progress_renderer
    from alexnet_deploy.export.onnx import DEFAULT_OPSET
    from alexnet_deploy.export.pipeline import ExportConfig, export_bundle

    if int8 and calib is None:
        raise click.UsageError("--int8 needs --calib DIR")
    config = ExportConfig(fp16=fp16, int8=int8, calib_dir=calib, max_batch=max_batch, opset=opset or DEFAULT_OPSET,
                          verify_data=verify_data, image_size=image_size, arch=arch, num_classes=num_classes,
                          engines=not no_engine, simplify=not no_simplify, lrn=lrn, verify_count=verify_count,
                          weight_bits=int(weight_bits))
    started = time.perf_counter()
    with progress_renderer() as progress:
        manifest = export_bundle(checkpoint, out, config, progress=progress)
    _summary(manifest, out, time.perf_counter() - started)
