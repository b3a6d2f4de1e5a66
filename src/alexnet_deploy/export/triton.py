"""Triton Inference Server model repository from a bundle, for users who outgrow one device.

Writes ``OUT/<name>/1/model.onnx`` (or ``model.plan``), ``OUT/<name>/config.pbtxt`` and
``OUT/<name>/labels.txt``. The config is built with Triton's own protobuf schema
(``tritonclient.grpc.model_config_pb2.ModelConfig``) and printed with ``google.protobuf.text_format``,
so a field name Triton does not know cannot slip in. No torch.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from alexnet_deploy.deploy.bundle import Artifact, Manifest, read_manifest, verify_artifact
from alexnet_deploy.deploy.bundle.files import atomic_path, atomic_write_text
from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.errors import BundleError, ExportError

log = logging.getLogger(__name__)

TRITON_BACKENDS = {"onnxruntime": ("onnxruntime_onnx", "onnx", "model.onnx"),
                   "tensorrt": ("tensorrt_plan", "trt-plan", "model.plan")}
# numpy dtype names in the manifest -> Triton DataType enum names.
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8",
                  "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class TritonExport:
    """What ``export_triton`` wrote."""

    model_dir: Path
    model_file: Path
    config_file: Path
    labels_file: Path
    platform: str
    max_batch_size: int
    source_artifact: str


def _import_model_config():
    schema = require("tritonclient.grpc.model_config_pb2", package="tritonclient", needed_for="export-triton")
    return schema, require("google.protobuf.text_format", package="tritonclient", needed_for="export-triton")


def _pick_artifact(bundle: Path, manifest: Manifest, backend: str, precision: str) -> Artifact:
    kind = TRITON_BACKENDS[backend][1]
    candidates = [a for a in manifest.artifacts if a.kind == kind and a.precision == precision]
    if not candidates:
        hint = (f"build one first: alexnet-deploy build-engine {bundle} --{precision} (on the serving GPU, with the "
                "TensorRT version of your Triton image)" if kind == "trt-plan" else "re-export with that precision")
        raise BundleError(f"{bundle}: no {kind} artifact with precision {precision}; {hint}")
    if len(candidates) > 1:
        log.warning("%d %s %s artifacts; using the newest entry %s", len(candidates), precision, kind,
                    candidates[-1].file)
    return candidates[-1]


def _triton_dtype(dtype: str, which: str) -> str:
    if dtype not in _TRITON_DTYPES:
        raise BundleError(f"manifest {which} dtype {dtype!r} has no Triton equivalent; expected one of {sorted(_TRITON_DTYPES)}")
    return _TRITON_DTYPES[dtype]


def build_config(manifest: Manifest, *, name: str, backend: str, max_batch: int,
                 queue_delay_us: int = 100):
    """The ``ModelConfig`` protobuf for this bundle: batched I/O with dims minus the batch dimension."""
    model_config_pb2, _ = _import_model_config()
    config = model_config_pb2.ModelConfig(name=name, platform=TRITON_BACKENDS[backend][0], max_batch_size=max_batch)
    dtypes = model_config_pb2.DataType
    tensor_in = config.input.add(name=manifest.input.name,
                                 data_type=dtypes.Value(_triton_dtype(manifest.input.dtype, "input")),
                                 dims=list(manifest.input.shape[1:]))
    # The image layout is NCHW; saying so lets Triton clients that resize images do it right.
    tensor_in.format = model_config_pb2.ModelInput.Format.FORMAT_NCHW
    config.output.add(name=manifest.output.name, data_type=dtypes.Value(_triton_dtype(manifest.output.dtype, "output")),
                      dims=list(manifest.output.shape[1:]), label_filename=LABELS_FILE)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(sorted({b for b in (1, 8, max_batch) if b <= max_batch}))
    return config


def _check_shapes(manifest: Manifest) -> None:
    for which, spec in (("input", manifest.input), ("output", manifest.output)):
        if not spec.shape or spec.shape[0] != -1 or any(d <= 0 for d in spec.shape[1:]):
            raise BundleError(f"manifest {which} {spec.name!r} has shape {list(spec.shape)}; Triton batching needs a "
                              "dynamic first dimension (-1) and fixed positive others")


def _check_labels(classes) -> None:
    """labels.txt has one label per line and no escaping: a class name holding a line break (or
    empty) would shift every later label in Triton's answers, so it is refused, shown as repr."""
    for index, name in enumerate(classes):
        if not name or len(name.splitlines()) != 1 or name != name.splitlines()[0]:
            raise ExportError(f"class {index} {name!r}: Triton's labels.txt holds one label per line and cannot "
                              "represent a name with a line break (or an empty one); rename the class folder "
                              "and re-train, or serve without labels")


def export_triton(bundle: str | os.PathLike, out: str | os.PathLike, *, backend: str = "onnxruntime",
                  precision: str = "fp32", max_batch: int | None = None, model_name: str | None = None,
                  queue_delay_us: int = 100) -> TritonExport:
    """Write a Triton model repository entry for ``bundle`` under ``out``; return what was written."""
    if backend not in TRITON_BACKENDS:
        raise ExportError(f"--backend {backend!r}: expected one of {sorted(TRITON_BACKENDS)}")
    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle)
    _check_shapes(manifest)
    _check_labels(manifest.classes)
    name = model_name or f"alexnet_{precision}"
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"--model-name {name!r}: must be a plain directory name")
    batch = max_batch or manifest.max_batch
    if batch < 1:
        raise ExportError(f"--max-batch {batch}: must be >= 1")
    if batch > manifest.max_batch and backend == "tensorrt":
        raise ExportError(f"--max-batch {batch} exceeds the engine profile's max batch {manifest.max_batch}")
    artifact = _pick_artifact(bundle, manifest, backend, precision)
    source = verify_artifact(bundle, artifact)   # never serve a tampered model
    config = build_config(manifest, name=name, backend=backend, max_batch=batch, queue_delay_us=queue_delay_us)
    _, text_format = _import_model_config()
    model_dir = out / name
    model_file = model_dir / "1" / TRITON_BACKENDS[backend][2]
    with atomic_path(model_file) as tmp:
        shutil.copyfile(source, tmp)
    atomic_write_text(model_dir / LABELS_FILE, "".join(f"{c}\n" for c in manifest.classes))
    atomic_write_text(model_dir / "config.pbtxt", text_format.MessageToString(config))
    log.info("wrote Triton model %s (%s, %s, max batch %d) to %s", name, backend, precision, batch, model_dir)
    return TritonExport(model_dir=model_dir, model_file=model_file, config_file=model_dir / "config.pbtxt",
                        labels_file=model_dir / LABELS_FILE, platform=config.platform, max_batch_size=batch,
                        source_artifact=artifact.file)

