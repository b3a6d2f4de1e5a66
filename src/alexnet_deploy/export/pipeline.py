"""Checkpoint -> verified bundle: fp32 ONNX (+ fp16 ONNX, INT8, reference.npz, manifest.json, engines).

The steps, in order, in one bundle transaction (deploy/bundle/transaction.py): load the checkpoint;
pick verification images (--verify-data, else --calib, else generated); run PyTorch on them; export
and verify the fp32 ONNX (export/onnx.py); convert and verify fp16 (export/fp16.py); write
reference.npz and the manifest; calibrate INT8 (the calibration package); build TensorRT engines
where TensorRT and a GPU are present, else record why not and the command that builds them on the
device. Everything is written beside the old bundle, which is replaced only when all of it passed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_deploy.calibration import calibrate_staged
from alexnet_deploy.calibration.qdq import DEFAULT_WEIGHT_BITS
from alexnet_deploy.deploy.bundle import (Manifest, Staging, TensorSpec, make_artifact, read_manifest, transaction,
                                          write_manifest)
from alexnet_deploy.deploy.bundle.files import atomic_path
from alexnet_deploy.deploy.precision import NAMES, PRECISIONS
from alexnet_deploy.deploy.preprocess import PreprocessSpec
from alexnet_deploy.deploy.progress import ProgressCallback, note
from alexnet_deploy.deploy.platform.system import package_versions
from alexnet_deploy.deploy.trt.builder import tensorrt_available
from alexnet_deploy.deploy.trt.engines import BuildOptions, build_engines_staged
from alexnet_deploy.deploy.evaluate.verify import REFERENCE_FILE
from alexnet_deploy.errors import AlexNetDeployError, ExportError
from alexnet_deploy.export import fp16
from alexnet_deploy.export import inputs as vinputs
from alexnet_deploy.export.onnx import (DEFAULT_OPSET, EXPORTER, INPUT_NAME, MIN_OPSET, OUTPUT_NAME, OnnxExport,
                                        OnnxOptions, export_onnx, lrn_formulations, onnx_metadata, torch_forward)

log = logging.getLogger(__name__)

MODEL_FILE, FP16_FILE = PRECISIONS["fp32"].onnx_file, PRECISIONS["fp16"].onnx_file
# The packages whose versions change an export's numbers, recorded in the manifest.
_EXPORT_PACKAGES = ("torch", "onnx", "onnxscript", "onnxslim", "onnxruntime", "onnxruntime-gpu", "numpy")


@dataclass(frozen=True)
class ExportConfig:
    """Export settings; field names follow the `alexnet-deploy export` flags."""

    fp16: bool = False
    int8: bool = False
    calib_dir: Path | None = None
    max_batch: int = 32
    opset: int = DEFAULT_OPSET
    verify_data: Path | None = None
    image_size: int | None = None
    arch: str | None = None
    num_classes: int | None = None
    engines: bool = True
    simplify: bool = True
    # "conv": the banded 1x1-conv rewrite (deploy/onnx/lrn.py), faster on every CPU runtime than the
    # native node with identical outputs (docs/lrn.md); "native" keeps one ONNX LRN node per layer.
    lrn: str = "conv"
    verify_count: int = 32
    # int8 weights: 7 bits are computed exactly by every CPU's int8 kernels; 8 only by TensorRT and
    # CPUs with VNNI/AMX/ARM dot products (docs/int8.md).
    weight_bits: int = DEFAULT_WEIGHT_BITS

    def __post_init__(self) -> None:
        # Python callers may pass folders as str; the CLI passes Paths.
        for name in ("calib_dir", "verify_data"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @property
    def onnx(self) -> OnnxOptions:
        return OnnxOptions(opset=self.opset, lrn=self.lrn, max_batch=self.max_batch, simplify=self.simplify)

    def validate(self) -> None:
        if self.max_batch < 1:
            raise ExportError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.opset < MIN_OPSET:
            raise ExportError(f"--opset {self.opset}: alexnet-deploy exports opset {MIN_OPSET} or newer "
                              f"(default {DEFAULT_OPSET}; 17 for TensorRT 8.6)")
        if self.int8 and self.calib_dir is None:
            raise ExportError("--int8 needs --calib DIR (a folder of representative images)")
        for flag, folder in (("--calib", self.calib_dir), ("--verify-data", self.verify_data)):
            if folder is not None and not Path(folder).is_dir():
                raise ExportError(f"{flag} {folder}: not a directory; expected an image folder")
        if self.verify_count < 1:
            raise ExportError(f"verify_count must be >= 1, got {self.verify_count}")
        if self.image_size is not None and self.image_size < 1:
            raise ExportError(f"--image-size must be positive, got {self.image_size}")
        known = lrn_formulations()
        if self.lrn not in known:
            raise ExportError(f"--lrn {self.lrn}: unknown LRN formulation; expected one of {', '.join(known)}")


def export_bundle(checkpoint: str | os.PathLike, out: str | os.PathLike, config: ExportConfig | None = None, *,
                  progress: ProgressCallback | None = None, **settings: Any) -> Manifest:
    """Export ``checkpoint`` to the bundle directory ``out`` and return its manifest.

    ``config`` holds the settings (the `alexnet-deploy export` flags); keyword ``settings`` override
    its fields by name (``export_bundle(ckpt, out, fp16=True, engines=False)``). Writes model.onnx
    (+ model.fp16.onnx with ``fp16``), reference.npz and manifest.json; runs INT8 calibration with
    ``int8``; builds TensorRT engines when ``engines`` and TensorRT + a GPU are here (else records
    why they were skipped and the command that builds them on the target). Raises ExportError (or
    CheckpointError / DataError) with one line naming what failed. ``progress`` gets a note per step
    (stage ``export``) and what calibration and the engine builds send.
    """
    try:
        cfg = dataclasses.replace(config or ExportConfig(), **settings)
    except TypeError as exc:
        raise ExportError(f"export_bundle: {exc}") from exc
    return run_export(Path(checkpoint), Path(out), cfg, progress)


def run_export(checkpoint: Path, out: Path, cfg: ExportConfig, progress: ProgressCallback | None = None) -> Manifest:
    """export_bundle with an ExportConfig, as one transaction: the new bundle is written beside
    ``out`` and swapped in only when complete and verified, so an earlier bundle stays usable until
    then and an interrupted export leaves it (or nothing) behind. Files the old manifest did not list
    (a user's own) are kept; the old model's artifacts are not. A folder that is not a bundle is
    refused, and so is a second export or calibrate into the same bundle while this one runs."""
    cfg.validate()
    with transaction(out, "--out", keep="unlisted", create=True) as staging:
        manifest, engines_failed = _export_into(checkpoint, staging, cfg, progress)
    if engines_failed is not None:   # raised after the commit: the ONNX bundle itself is complete
        raise engines_failed
    return manifest


def _export_into(checkpoint: Path, staging: Staging, cfg: ExportConfig,
                 progress: ProgressCallback | None) -> tuple[Manifest, ExportError | None]:
    from alexnet_deploy.alexnet.checkpoint import load_checkpoint

    out = staging.path
    note(progress, "export", "loading checkpoint")
    ckpt = load_checkpoint(checkpoint, arch=cfg.arch, num_classes=cfg.num_classes)
    spec = input_spec(ckpt.preprocess, cfg.image_size)
    vset = verification_set(cfg, spec, ckpt.classes)
    note(progress, "export", f"running PyTorch on {len(vset.inputs)} {vset.source} inputs at {spec.crop} px")
    torch_logits = torch_forward(ckpt.model, vset.inputs, cfg.image_size)
    note(progress, "export", f"exporting fp32 ONNX (opset {cfg.opset}, LRN {cfg.lrn})")
    fp32 = export_onnx(ckpt.model, spec.crop, cfg.onnx, vset.inputs, torch_logits,
                       metadata=onnx_metadata(ckpt.classes, spec, ckpt.arch, cfg.lrn))
    _save_onnx(fp32.model, out / MODEL_FILE)
    results = {"fp32": fp32}
    if cfg.fp16:
        note(progress, "export", "converting to fp16 (overflow guard, parity vs fp32)")
        results["fp16"] = fp16.convert(out / MODEL_FILE, out / FP16_FILE, vset.inputs, fp32.logits)
    _write_reference(out / REFERENCE_FILE, vset, torch_logits)
    manifest = build_manifest(out, ckpt, spec, cfg, vset, results)
    write_manifest(out, manifest)
    if cfg.int8:
        manifest = _run_int8(staging, cfg, progress)
    return _engines(staging, manifest, cfg, progress)


def input_spec(spec: PreprocessSpec, image_size: int | None) -> PreprocessSpec:
    """The checkpoint's preprocessing, or a crop of ``image_size`` with the same resize/crop ratio."""
    if image_size is None or image_size == spec.crop:
        return spec
    resize = max(image_size, round(image_size * spec.resize / spec.crop))
    return PreprocessSpec(resize=resize, crop=image_size, mean=spec.mean, std=spec.std,
                          interpolation=spec.interpolation)


def verification_set(cfg: ExportConfig, spec: PreprocessSpec, classes) -> vinputs.VerificationSet:
    """--verify-data, else the --calib folder, else generated images (with a warning)."""
    if cfg.verify_data is not None:
        return vinputs.from_folder(cfg.verify_data, spec, classes, cfg.verify_count, "verify-data")
    if cfg.calib_dir is not None:
        return vinputs.from_folder(cfg.calib_dir, spec, classes, cfg.verify_count, "calib")
    log.warning("no --verify-data or --calib folder: checking the export on %d generated images only; "
                "pass --verify-data DIR to check it on real images", cfg.verify_count)
    return vinputs.generated(spec, cfg.verify_count)


def _save_onnx(proto, path: Path) -> None:
    import onnx

    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))


def _write_reference(path: Path, vset: vinputs.VerificationSet, logits: np.ndarray) -> None:
    # np.savez (no object arrays) so a device loads it with allow_pickle=False.
    arrays = {"inputs": vset.inputs.astype(np.float32), "logits": logits.astype(np.float32),
              "files": np.array(vset.files, dtype=str)}
    if vset.labels is not None:
        arrays["labels"] = vset.labels.astype(np.int64)
    if vset.raw_crops is not None:
        arrays["raw_crops"] = vset.raw_crops
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _versions() -> dict[str, str]:
    from alexnet_deploy import __version__

    return {"alexnet_deploy": __version__, **package_versions(_EXPORT_PACKAGES)}


def build_manifest(out: Path, ckpt, spec: PreprocessSpec, cfg: ExportConfig, vset: vinputs.VerificationSet,
                   results: dict[str, Any]) -> Manifest:
    """The manifest for what run_export wrote (fp32 [+ fp16] ONNX and reference.npz)."""
    fp32: OnnxExport = results["fp32"]
    versions = _versions()
    artifacts = [make_artifact(out, MODEL_FILE, "onnx", "fp32", {
        "exporter": EXPORTER, "torch": versions.get("torch"), "opset": cfg.opset, "lrn": cfg.lrn,
        "lrn_nodes": fp32.lrn_nodes, "simplified": fp32.simplified})]
    parity_report: dict[str, Any] = {"source": vset.source, "n": len(vset.inputs), "folder": vset.folder,
                                     "fp32": fp32.parity}
    export_info: dict[str, Any] = {
        "exporter": EXPORTER, "opset": cfg.opset, "lrn": cfg.lrn, "lrn_layers": fp32.lrn_layers, "lrn_nodes": fp32.lrn_nodes,
        "simplified": fp32.simplified, "adaptive_pool": list(fp32.pools), "image_size": spec.crop,
        "max_batch": cfg.max_batch,
        "dynamic_batch": True, "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if "fp16" in results:
        res = results["fp16"]
        kept = [k.to_dict() for k in res.kept_fp32]
        artifacts.append(make_artifact(out, FP16_FILE, "onnx", "fp16", {
            "converter": fp16.CONVERTER, "io": "float32", "kept_fp32": [k["node"] for k in kept]}))
        parity_report["fp16_vs_fp32"] = res.parity.to_dict()
        export_info["fp16"] = {"converter": fp16.CONVERTER, "overflow_margin": res.margin, "kept_fp32": kept}
    artifacts.append(make_artifact(out, REFERENCE_FILE, "npz", "fp32", {"n": len(vset.inputs),
                                                                       "labels": vset.labels is not None}))
    provenance = {"checkpoint_sha256": ckpt.sha256, "checkpoint_path": str(Path(ckpt.path).resolve()),
                  "epoch": ckpt.epoch, "metrics": ckpt.metrics, "train_config": ckpt.config,
                  "checkpoint_versions": ckpt.raw.get("versions", {}), "export_versions": versions}
    return Manifest(classes=tuple(ckpt.classes), input=TensorSpec(INPUT_NAME, (-1, 3, spec.crop, spec.crop)),
                    output=TensorSpec(OUTPUT_NAME, (-1, len(ckpt.classes))), preprocess=spec, arch=ckpt.arch,
                    max_batch=cfg.max_batch, artifacts=tuple(artifacts), provenance=provenance,
                    parity=parity_report, export=export_info)


def _run_int8(staging: Staging, cfg: ExportConfig, progress: ProgressCallback | None) -> Manifest:
    """INT8 is the calibration package's job; export only hands it the bundle it is writing."""
    note(progress, "export", f"calibrating INT8 on {cfg.calib_dir}")
    # Held-out images for the int8 accuracy: --verify-data when given, else the part of --calib
    # not used for calibration.
    calibrate_staged(staging, calib_dir=cfg.calib_dir, val_dir=cfg.verify_data, weight_bits=cfg.weight_bits,
                     progress=progress)
    return read_manifest(staging.path)


def build_engine_command(out: Path, manifest: Manifest) -> str:
    """The command that builds this bundle's engines on the target."""
    flags = "".join(f" --{p}" for p in NAMES[1:] if manifest.artifact(p) is not None)  # fp32 is the default
    return f"alexnet-deploy build-engine {out}{flags}"


def _engines(staging: Staging, manifest: Manifest, cfg: ExportConfig,
             progress: ProgressCallback | None) -> tuple[Manifest, ExportError | None]:
    """Build TensorRT engines here when possible; otherwise record why not and what to run. A failed
    build is returned, not raised, so the complete ONNX bundle is still committed."""
    out = staging.path
    command = build_engine_command(staging.dest, manifest)
    failure = None
    if not cfg.engines:
        status = {"status": "disabled", "reason": "--no-engine", "command": command}
    else:
        available, reason = tensorrt_available()
        status = {"status": "skipped", "reason": reason, "command": command}
        if available:
            manifest, status, failure = _build_engines(staging, manifest, cfg, progress, command)
    manifest = manifest.replace(export={**manifest.export, "engines": status})
    write_manifest(out, manifest)
    if failure is None:
        return manifest, None
    error = ExportError(f"the ONNX bundle {staging.dest} is complete and verified, but building its TensorRT "
                        f"engines failed: {failure}; fix that and run `{command}`")
    error.__cause__ = failure
    return manifest, error


def _build_engines(staging: Staging, manifest: Manifest, cfg: ExportConfig, progress: ProgressCallback | None,
                   command: str):
    """Build through build-engine's own path (deploy/trt/engines.py): one cache record format, a child
    process per build and the out-of-memory retry, so a later `build-engine` on this GPU reuses these."""
    out = staging.path
    precisions = [p for p in NAMES if manifest.artifact(p) is not None]
    try:
        results = build_engines_staged(staging, precisions, BuildOptions(max_batch=cfg.max_batch), progress=progress)
    except AlexNetDeployError as exc:
        return read_manifest(out), {"status": "failed", "reason": str(exc), "command": command}, exc
    built = [result.path.relative_to(staging.dest).as_posix() for result in results]
    return read_manifest(out), {"status": "built", "engines": built}, None


__all__ = ["ExportConfig", "export_bundle", "run_export", "input_spec", "verification_set", "build_manifest",
           "build_engine_command"]
