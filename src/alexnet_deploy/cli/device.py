"""`alexnet-deploy` commands for the device: build-engine, verify, pack, unpack, export-triton.

None of them imports torch: a Jetson runs them with numpy, Pillow, click, rich and TensorRT.
"""

from __future__ import annotations

from pathlib import Path

import click

from alexnet_deploy.cli import cli
from alexnet_deploy.deploy.precision import NAMES

_STATUS_STYLE = {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]", "skip": "[yellow]skip[/]",
                 "info": "[cyan]info[/]"}


def _console():
    from rich.console import Console

    return Console()


@cli.command("build-engine")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--fp32", "want_fp32", is_flag=True, help="Build from model.onnx (the default when no precision is given).")
@click.option("--fp16", "want_fp16", is_flag=True, help="Build from the fp16 ONNX (model.fp16.onnx).")
@click.option("--int8", "want_int8", is_flag=True, help="Build from the INT8 Q/DQ ONNX (model.int8.onnx).")
@click.option("--max-batch", type=click.IntRange(min=1), help="Largest batch of the optimization profile [manifest's].")
@click.option("--workspace-gib", type=click.FloatRange(min=0.0625), help="Builder workspace [half the free GPU memory, <= 4].")
@click.option("--dla-core", type=click.IntRange(min=0), help="Build for this DLA core (Jetson), GPU fallback on.")
@click.option("--version-compatible", is_flag=True, help="Version-compatible engine (TensorRT >= 8.6; runs on newer TRT).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="Builder optimization level of the first try; OOM retries lower it.")
@click.option("--force", is_flag=True, help="Rebuild even when a matching engine is cached.")
def build_engine_cmd(bundle: Path, want_fp32: bool, want_fp16: bool, want_int8: bool, max_batch: int | None,
                     workspace_gib: float | None, dla_core: int | None, version_compatible: bool, opt_level: int,
                     force: bool) -> None:
    """Build (or reuse cached) TensorRT engines for BUNDLE on this GPU, into BUNDLE/engines/.

    Each build runs in a child process; on out-of-memory it is retried with a smaller workspace and a
    lower optimization level. Engines are recorded in manifest.json (kind trt-plan).
    """
    from alexnet_deploy.cli.progress import progress_renderer
    from alexnet_deploy.deploy.trt.engines import BuildOptions, build_engines

    chosen = [p for p, on in zip(NAMES, (want_fp32, want_fp16, want_int8)) if on] or ["fp32"]
    opts = BuildOptions(max_batch=max_batch, workspace_gib=workspace_gib, dla_core=dla_core,
                        version_compatible=version_compatible, opt_level=opt_level, force=force)
    with progress_renderer() as progress:
        results = build_engines(bundle, chosen, opts, progress=progress)
    _print_engines(_console(), results)


def _print_engines(console, results) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="TensorRT engines")
    for column in ("precision", "engine", "status", "tries", "seconds", "cache key"):
        table.add_column(column)
    for r in results:
        table.add_row(r.precision, escape(str(r.path)), "cached" if r.cached else "built", str(len(r.attempts)),
                      f"{r.seconds:.1f}", r.key.digest())
    console.print(table)


@cli.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--backend", "backends", multiple=True, metavar="NAME",
              help="Backend to run the golden vectors on (repeatable): auto, ort, ort-cuda, trt, pt, ... [auto].")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(NAMES),
              help="Precision to check (repeatable) [every one the bundle has].")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the checks as JSON here.")
def verify_cmd(bundle: Path, backends: tuple[str, ...], precisions: tuple[str, ...], json_out: Path | None) -> None:
    """Check BUNDLE (directory or .tar.gz): schema, checksums, manifest vs model, golden vectors.

    Exit code 1 when any check fails or no backend could run the golden vectors.
    """
    import json

    from alexnet_deploy.cli.progress import progress_renderer
    from alexnet_deploy.deploy.bundle.paths import refuse_inside
    from alexnet_deploy.deploy.bundle.files import atomic_write_text, check_writable
    from alexnet_deploy.deploy.evaluate.verify import verify_bundle

    if json_out:
        refuse_inside(json_out, bundle, "--json")
        check_writable(json_out, "--json")
    with progress_renderer() as progress:
        report = verify_bundle(bundle, backends=backends or ("auto",), precisions=precisions or None,
                               progress=progress)
    console = _console()
    _print_report(console, report)
    if json_out:
        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2) + "\n")
    if not report.ok:
        console.print(f"[bold red]{report.bundle}: verification FAILED[/]")
        raise SystemExit(1)
    console.print(f"[green]{report.bundle}: verified[/]")


def _print_report(console, report) -> None:
    """The table; on a narrow terminal the details go below it, for the rows that did not pass."""
    from rich.markup import escape
    from rich.table import Table

    wide = console.width >= 150
    table = Table(title=f"verify {report.bundle}", caption=f"CPU: {report.cpu.describe()}", show_lines=False)
    for column in ("check", "target", "result", "agree", "cosine", "max|Δ|"):
        table.add_column(column, no_wrap=True)
    if wide:
        table.add_column("detail", overflow="fold", ratio=1, min_width=24)
    for c in report.checks:
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        row = [c.check, escape(c.target), _STATUS_STYLE[c.status], fmt(c.agreement, ".1%"), fmt(c.cosine, ".6f"),
               fmt(c.max_abs_diff, ".2e")]
        table.add_row(*row, *([escape(c.detail)] if wide else []))
    console.print(table)
    if not wide:
        for c in report.checks:
            if c.status not in ("pass", "info"):
                console.print(f"{_STATUS_STYLE[c.status]} {c.check} {escape(c.target)}: {escape(c.detail)}")


@cli.command("pack")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Archive to write (.tar.gz, .tgz, .tar).")
@click.option("--with-engines", is_flag=True, help="Also pack TensorRT engines (only useful for an identical device).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def pack_cmd(bundle: Path, out: Path, with_engines: bool, overwrite: bool) -> None:
    """Check BUNDLE and write it as one archive to copy to a device."""
    from alexnet_deploy.deploy.bundle.archive import pack_bundle
    from alexnet_deploy.deploy.bundle.paths import refuse_inside
    from alexnet_deploy.deploy.bundle.files import check_writable

    refuse_inside(out, bundle, "-o")
    check_writable(out, "-o")
    result = pack_bundle(bundle, out, include_engines=with_engines, overwrite=overwrite)
    click.echo(f"packed {len(result.files)} files into {result.path} ({result.bytes / 1e6:.1f} MB, "
               f"sha256 {result.sha256})")


@cli.command("unpack")
@click.argument("archive", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace DEST if it is an existing bundle.")
@click.option("--max-gib", type=click.FloatRange(min=0.001), default=8.0, show_default=True,
              help="Refuse archives whose contents add up to more than this.")
def unpack_cmd(archive: Path, dest: Path, overwrite: bool, max_gib: float) -> None:
    """Safely extract a packed bundle ARCHIVE into DEST and check every file's sha256."""
    from alexnet_deploy.deploy.bundle.archive import unpack_bundle

    import os

    cwd = Path(os.getcwd()).resolve()
    out = unpack_bundle(archive, dest, overwrite=overwrite, max_bytes=int(max_gib * (1 << 30)))
    click.echo(f"unpacked {archive} into {out}; next: alexnet-deploy verify {out}")
    if overwrite and (cwd == out or out in cwd.parents):
        # The old directory was replaced by the new one: a shell still inside it sees an empty folder.
        click.echo(f"note: your shell's working directory was the old {out}; run `cd {out}` to see the new files")


@cli.command("export-triton")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="Triton backend: the ONNX model, or a TensorRT plan from BUNDLE/engines/.")
@click.option("--precision", type=click.Choice(NAMES), default="fp32", show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), help="Triton max_batch_size [manifest's max batch].")
@click.option("--model-name", help="Model directory name in the repository [alexnet_<precision>].")
def export_triton_cmd(bundle: Path, out: Path, backend: str, precision: str, max_batch: int | None,
                      model_name: str | None) -> None:
    """Write a Triton Inference Server model repository entry for BUNDLE under OUT."""
    from alexnet_deploy.export.triton import export_triton

    from alexnet_deploy.deploy.bundle.paths import refuse_inside

    refuse_inside(out, bundle, "OUT")
    result = export_triton(bundle, out, backend=backend, precision=precision, max_batch=max_batch,
                           model_name=model_name)
    click.echo(f"wrote {result.model_dir} ({result.platform}, max_batch_size {result.max_batch_size}); serve with "
               f"tritonserver --model-repository {out}")
