"""PyTorch model -> verified fp32 ONNX graph (the torch side of export; the bundle is export/pipeline.py).

The graph comes from ``torch.onnx.export(dynamo=True)`` at a pinned opset (torch 2.9 changed the
default exporter; the legacy TorchScript one fails on AdaptiveAvgPool2d when the feature map is
not 6x6). Input ``input`` (N,3,S,S) with a dynamic batch axis, output ``logits``; each LRN is
exported as one ONNX ``LRN`` node (export/torch_lrn.py) and then, by default, rewritten into the
banded 1x1-conv form that runs fast on every CPU runtime (deploy/onnx/lrn.py; ``lrn="native"``
keeps the node). The graph is checked (opset, names, dynamic batch, LRN count, onnx.checker) and
its logits compared with PyTorch's on ONNX Runtime before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alexnet_deploy.deploy.evaluate.compare import check_parity, require_parity
from alexnet_deploy.deploy.onnx.lrn import FORMULATIONS as GRAPH_FORMULATIONS
from alexnet_deploy.deploy.onnx.lrn import rewrite_lrn
from alexnet_deploy.deploy.lazy import optional
from alexnet_deploy.deploy.onnx.sessions import cpu_logits
from alexnet_deploy.deploy.preprocess import PreprocessSpec
from alexnet_deploy.deploy.precision import PRECISIONS
from alexnet_deploy.errors import AlexNetDeployError, ExportError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # what torch 2.14's dynamo exporter emits natively; 17 (TensorRT 8.6) is converted down
MIN_OPSET = 13  # LRN-13, dynamic Reshape/Gemm; older opsets are not worth supporting
EXPORTER = "torch.onnx.export(dynamo=True)"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_FP32 = PRECISIONS["fp32"].export  # the exported graph against PyTorch


@dataclass(frozen=True)
class OnnxOptions:
    """How the graph is exported: opset, LRN formulation, the batch axis' upper bound, onnxslim or not."""

    opset: int = DEFAULT_OPSET
    lrn: str = "conv"
    max_batch: int = 32
    simplify: bool = True


def lrn_formulations() -> tuple[str, ...]:
    """LRN formulations this install can export: torch-side ones, plus graph rewrites (deploy/onnx/lrn.py)."""
    from alexnet_deploy.export.torch_lrn import FORMULATIONS

    return tuple(dict.fromkeys([*FORMULATIONS, *GRAPH_FORMULATIONS]))


@dataclass(frozen=True)
class OnnxExport:
    """What export_onnx produced: the verified model and how it was made."""

    model: Any  # onnx.ModelProto
    lrn_nodes: int  # ONNX LRN nodes left in the graph (0 once rewritten)
    lrn_layers: int  # the model's LocalResponseNorm layers
    simplified: bool
    pools: tuple[str, ...] = ()
    parity: dict[str, Any] = field(default_factory=dict)
    logits: Any = None  # ONNX Runtime's logits of ``model`` on the verification inputs (np.ndarray)


def torch_forward(model, inputs: np.ndarray, image_size: int | None, batch: int = 16) -> np.ndarray:
    """Reference logits from the PyTorch model (eval mode, fp32, CPU)."""
    import torch

    outputs = []
    try:
        with torch.no_grad():
            for i in range(0, len(inputs), batch):
                outputs.append(model(torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch]))).float().numpy())
    except RuntimeError as exc:
        size = inputs.shape[-1]
        flag = f"--image-size {image_size}" if image_size else f"the checkpoint's crop {size}"
        raise ExportError(f"{flag}: the model cannot run at {size} px "
                          f"({str(exc).splitlines()[0]}); AlexNet needs at least 63 px") from exc
    return np.concatenate(outputs).astype(np.float32)


def export_onnx(model, crop: int, opts: OnnxOptions, inputs: np.ndarray, torch_logits: np.ndarray,
                metadata: dict[str, str]) -> OnnxExport:
    """Export ``model`` at ``crop`` px, check it and verify it against ``torch_logits``; optionally simplify
    (re-verified)."""
    proto, lrn_count, pools = _torch_export(model, crop, opts)
    _check_graph(proto, opts, lrn_count)
    proto = _rewrite_lrn(proto, opts.lrn)
    lrn_nodes = sum(1 for n in proto.graph.node if n.op_type == "LRN")  # after any graph rewrite
    _set_metadata(proto, metadata)
    _full_check(proto, "exported model")
    logits = cpu_logits(proto, inputs)
    result = require_parity(torch_logits, logits, _FP32, f"fp32 ONNX vs PyTorch ({EXPORTER}, opset {opts.opset})")
    report = {"onnx_vs_torch": result.to_dict()}
    simplified = False
    if opts.simplify:
        slim = _simplify(proto)
        if slim is not None:
            _set_metadata(slim, metadata)
            _full_check(slim, "simplified model")
            slim_logits = cpu_logits(slim, inputs)
            check = check_parity(torch_logits, slim_logits, _FP32)
            report["simplified_vs_torch"] = check.to_dict()
            if check.passed:
                proto, simplified, logits = slim, True, slim_logits
            else:
                log.warning("onnxslim changed the model's outputs (%s); keeping the unsimplified export",
                            check.failure("simplified ONNX", _FP32))
    return OnnxExport(model=proto, lrn_nodes=lrn_nodes, lrn_layers=lrn_count, simplified=simplified, parity=report,
                      pools=tuple(pools), logits=logits)


def _torch_export(model, crop: int, opts: OnnxOptions):
    import torch

    from alexnet_deploy.export.torch_lrn import swap_lrn
    from alexnet_deploy.export.torch_pool import fix_adaptive_pools

    export_model, lrn_count = swap_lrn(model, opts.lrn, opts.opset)
    export_model, pools = fix_adaptive_pools(export_model, crop)
    # Batch 2 in the example: torch.export specializes dimensions traced at size 0 or 1.
    example = torch.zeros(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=max(4096, opts.max_batch))
    try:
        program = torch.onnx.export(export_model, (example,), None, dynamo=True, opset_version=opts.opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    except AlexNetDeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ExportError(f"{EXPORTER} failed at {crop} px, opset {opts.opset}: {first}") from exc
    return program.model_proto, lrn_count, pools


def _check_graph(proto, opts: OnnxOptions, lrn_modules: int) -> None:
    """The exporter's output must be what we asked for: opset, I/O names, dynamic batch, LRN nodes."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != opts.opset:
        raise ExportError(f"--opset {opts.opset}: the exporter produced opset {opset} instead (it could not "
                          f"convert this graph down); pass --opset {opset}")
    names = ([i.name for i in proto.graph.input], [o.name for o in proto.graph.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(f"exported graph has inputs/outputs {names}; expected {INPUT_NAME!r} -> {OUTPUT_NAME!r}")
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if batch_dim.HasField("dim_value"):
        raise ExportError(f"exported graph has a fixed batch of {batch_dim.dim_value}; expected a dynamic axis")
    lrn_nodes = sum(1 for n in proto.graph.node if n.op_type == "LRN")
    expected = 0 if opts.lrn == "decomposed" else lrn_modules
    if lrn_nodes != expected:
        raise ExportError(f"LRN formulation {opts.lrn!r}: expected {expected} ONNX LRN nodes for {lrn_modules} "
                          f"LocalResponseNorm layers, the exporter wrote {lrn_nodes}")


def _rewrite_lrn(proto, formulation: str):
    from alexnet_deploy.export.torch_lrn import FORMULATIONS

    if formulation in FORMULATIONS:
        return proto
    # Graph-level formulations (e.g. "conv") rewrite the native LRN nodes the exporter wrote.
    return rewrite_lrn(proto, formulation=formulation)


def onnx_metadata(classes, spec: PreprocessSpec, arch: str, lrn: str) -> dict[str, str]:
    """metadata_props stored in every ONNX file, so a lone .onnx still says what it expects."""
    import json

    from alexnet_deploy import __version__

    return {"classes": json.dumps(list(classes)), "preprocess": json.dumps(spec.to_dict()), "arch": arch,
            "lrn": lrn, "producer": f"alexnet-deploy {__version__}", "exporter": EXPORTER}


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    import onnx

    onnx.helper.set_model_props(proto, metadata)


def _full_check(proto, what: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{what}: onnx.checker rejected it: {str(exc).splitlines()[0]}") from exc


def _simplify(proto):
    """onnxslim's output, or None (with a warning) when it is not installed or fails."""
    onnxslim = optional("onnxslim")
    if onnxslim is None:
        log.warning("onnxslim is not installed: skipping simplification (pip install onnxslim)")
        return None
    try:
        return onnxslim.slim(proto)
    except Exception as exc:  # noqa: BLE001 - optional step; the unsimplified model is verified
        log.warning("onnxslim failed (%s: %s); keeping the unsimplified model", exc.__class__.__name__, exc)
        return None


__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "EXPORTER", "INPUT_NAME", "OUTPUT_NAME", "OnnxOptions", "OnnxExport",
           "lrn_formulations", "torch_forward", "export_onnx", "onnx_metadata"]
