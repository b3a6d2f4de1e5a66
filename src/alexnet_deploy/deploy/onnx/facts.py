"""What an ONNX file says about itself, and whether a manifest agrees with it.

The exporter stores the class list and preprocessing in every ONNX file's metadata_props, and the
fp32 model's sha256 is in the manifest. So before anything runs, ``load()`` and ``verify`` compare
a manifest's classes, preprocessing and I/O with the model's own: an edited manifest (reordered
class names, changed mean/std) cannot silently change results.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from alexnet_deploy.deploy.bundle import Manifest
from alexnet_deploy.deploy.lazy import optional
from alexnet_deploy.deploy.onnx.sessions import import_ort
from alexnet_deploy.deploy.preprocess import PreprocessSpec
from alexnet_deploy.errors import BackendUnavailable, BundleError


@dataclass(frozen=True)
class ModelFacts:
    """What an ONNX file says about itself: I/O names and shapes (batch dim dropped; None when
    neither onnxruntime nor onnx is installed to read them) and its metadata_props."""

    input_name: str | None
    input_shape: tuple
    output_name: str | None
    output_shape: tuple
    metadata: dict[str, str]


def _varint(fh) -> int:
    value = shift = 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7


def onnx_metadata_props(path: Path) -> dict[str, str]:
    """``ModelProto.metadata_props`` (field 14) read straight from the protobuf wire format.

    Only the top level is walked and every other field is skipped by its length, so this reads a
    few bytes of a 250 MB model and needs neither onnx nor onnxruntime (a TensorRT-only Jetson)."""
    props: dict[str, str] = {}
    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size
        while fh.tell() < end:
            key = _varint(fh)
            field_no, wire = key >> 3, key & 7
            if wire == 0:
                _varint(fh)
            elif wire in (1, 5):
                fh.seek(8 if wire == 1 else 4, 1)
            elif wire == 2:
                size = _varint(fh)
                if field_no == 14:   # StringStringEntryProto {1: key, 2: value}
                    entry = _entry(fh.read(size))
                    props[entry.get(1, "")] = entry.get(2, "")
                else:
                    fh.seek(size, 1)
            else:
                raise ValueError(f"unexpected protobuf wire type {wire}; not an ONNX model")
    return props


def _entry(data: bytes) -> dict[int, str]:
    fields, buf = {}, io.BytesIO(data)
    while buf.tell() < len(data):
        key = _varint(buf)
        if key & 7 != 2:
            raise ValueError("malformed metadata entry")
        fields[key >> 3] = buf.read(_varint(buf)).decode("utf-8", errors="replace")
    return fields


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]


def _model_io(path: Path) -> tuple:
    """(input name, input dims, output name, output dims) via onnxruntime or onnx, else Nones."""
    try:
        ort = import_ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        i, o = session.get_inputs()[0], session.get_outputs()[0]
        return i.name, tuple(i.shape[1:]), o.name, tuple(o.shape[1:])
    except BackendUnavailable:
        pass
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types are not importable by a stable name
        raise BundleError(f"{path.name}: not a loadable ONNX model ({_first_line(exc)})") from exc
    onnx = optional("onnx")
    if onnx is None:
        return None, (), None, ()
    graph = onnx.load(str(path)).graph

    def dims(value) -> tuple:
        return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim)

    inits = {t.name for t in graph.initializer}
    inp = next(v for v in graph.input if v.name not in inits)
    return inp.name, dims(inp)[1:], graph.output[0].name, dims(graph.output[0])[1:]


def read_model_facts(path: Path) -> ModelFacts:
    """I/O and metadata of an ONNX file (see ModelFacts)."""
    return ModelFacts(*_model_io(path), metadata=onnx_metadata_props(path))


def manifest_mismatches(manifest: Manifest, facts: ModelFacts) -> list[str]:
    """Where the manifest disagrees with the model it lists (empty = consistent)."""
    problems = []
    for which, spec, name, shape in (("input", manifest.input, facts.input_name, facts.input_shape),
                                     ("output", manifest.output, facts.output_name, facts.output_shape)):
        if name is None:
            continue
        if spec.name != name:
            problems.append(f"{which} name {spec.name!r} but the model's is {name!r}")
        if tuple(spec.shape[1:]) != tuple(shape):
            problems.append(f"{which} shape {list(spec.shape[1:])} but the model's is {list(shape)}")
    if "classes" in facts.metadata and json.loads(facts.metadata["classes"]) != list(manifest.classes):
        problems.append("classes differ from the ones stored in the model (renamed or reordered labels)")
    if "preprocess" in facts.metadata:
        stored = PreprocessSpec.from_dict(json.loads(facts.metadata["preprocess"]))
        if stored != manifest.preprocess:
            changed = [k for k, v in stored.to_dict().items() if manifest.preprocess.to_dict()[k] != v]
            problems.append(f"preprocess {', '.join(changed)} differ from the model's "
                            f"({', '.join(f'{k}={stored.to_dict()[k]}' for k in changed)})")
    return problems
