"""fp32 ONNX -> fp16 ONNX with fp32 inputs/outputs and an overflow guard (no torch).

fp16 holds values up to 65504. Before converting, the fp32 model runs on the verification images
with every intermediate tensor exposed; a node that reads or writes a tensor beyond ``margin *
65504`` stays in fp32 (a value that overflows in fp16 becomes inf, and inf turns into NaN a layer
later). LRN also squares its input inside the op, so an LRN whose ``size * max|x|^2`` exceeds the
limit is kept in fp32 too. The converted model is then checked against fp32 on ONNX Runtime's CPU
provider; a miss beyond the fp16 tolerance fails the export.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from alexnet_deploy.deploy.evaluate.compare import Parity, Tolerance, require_parity
from alexnet_deploy.deploy.bundle.files import atomic_path
from alexnet_deploy.deploy.onnx.sessions import cpu_logits, cpu_session
from alexnet_deploy.deploy.precision import PRECISIONS
from alexnet_deploy.errors import MissingDependency

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
DEFAULT_MARGIN = 0.5  # keep a 2x headroom: verification images are a sample, not every input
CONVERTER = "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"


@dataclass(frozen=True)
class Overflow:
    """A node kept in fp32 by the guard, and why."""

    node: str
    op_type: str
    max_abs: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Fp16Result:
    """The written fp16 model, the nodes the guard kept in fp32, and parity against fp32."""

    path: Path
    kept_fp32: tuple[Overflow, ...]
    parity: Parity
    margin: float


def activation_ranges(model, inputs: np.ndarray, batch: int = 8) -> dict[str, float]:
    """max |x| of every float tensor the graph computes (and of its input), over ``inputs``."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.output]}
    present = {o.name for o in graph.output}
    for node in graph.node:
        for name in node.output:
            if name and name not in present and types.get(name, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT:
                graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                present.add(name)
    session = cpu_session(inferred.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    ranges = {input_name: float(np.abs(inputs).max()) if inputs.size else 0.0}
    for i in range(0, len(inputs), batch):
        outputs = session.run(names, {input_name: np.ascontiguousarray(inputs[i:i + batch], np.float32)})
        for name, value in zip(names, outputs):
            peak = float(np.abs(value).max()) if value.size else 0.0
            ranges[name] = max(ranges.get(name, 0.0), peak if np.isfinite(peak) else np.inf)
    return ranges


def find_overflows(model, ranges: dict[str, float], limit: float) -> list[Overflow]:
    """Nodes whose inputs or outputs exceed ``limit`` (LRN: also its internal sum of squares)."""
    found = []
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        peaks = [ranges[t] for t in [*node.input, *node.output] if t in ranges]
        peak = max(peaks, default=0.0)
        if peak > limit:
            found.append(Overflow(name, node.op_type, peak, f"activation |x| up to {peak:.4g} > {limit:.4g}"))
        elif node.op_type == "LRN" and node.input[0] in ranges:
            size = next((a.i for a in node.attribute if a.name == "size"), 1)
            squares = size * ranges[node.input[0]] ** 2
            if squares > limit:
                found.append(Overflow(name, node.op_type, squares,
                                      f"sum of squares up to {squares:.4g} > {limit:.4g}"))
    return found


def _name_nodes(model) -> None:
    # The converter's block list matches node names, so every node needs one.
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def fold_cast_round_trips(model, blocked: set[str]) -> int:
    """Remove fp32 -> fp16 -> fp32 Cast pairs between fp32 (blocked) nodes; returns how many.

    The converter casts every blocked node's output to fp16 and back before the next blocked node,
    so a run of blocked nodes would still squeeze an overflowing tensor through fp16 (-> inf).
    """
    import onnx

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}
    dropped, folded = set(), 0
    for node in list(graph.node):
        first = producer.get(node.input[0]) if _cast_to(node) == onnx.TensorProto.FLOAT else None
        to_fp16 = first is not None and _cast_to(first) == onnx.TensorProto.FLOAT16
        origin = producer.get(first.input[0]) if to_fp16 else None
        if origin is None or origin.name not in blocked or node.output[0] in outputs:
            continue
        for user in users.get(node.output[0], []):
            user.input[:] = [first.input[0] if i == node.output[0] else i for i in user.input]
        dropped.add(id(node))
        folded += 1
        if all(id(u) in dropped for u in users.get(first.output[0], [])) and first.output[0] not in outputs:
            dropped.add(id(first))
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    live = {t for n in kept for t in [*n.input, *n.output]}
    stale = [v for v in graph.value_info if v.name not in live]
    for v in stale:
        graph.value_info.remove(v)
    return folded


def convert(fp32_path: str | os.PathLike, out_path: str | os.PathLike, inputs: np.ndarray,
            fp32_logits: np.ndarray, *, margin: float = DEFAULT_MARGIN,
            tol: Tolerance = PRECISIONS["fp16"].export) -> Fp16Result:
    """Write the fp16 model of ``fp32_path`` to ``out_path`` and check it against ``fp32_logits``."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise MissingDependency("fp16 export needs onnxruntime (with its transformers tools): "
                                "pip install 'alexnet-deploy[ort]'") from exc
    model = onnx.load(str(fp32_path))
    _name_nodes(model)
    limit = FP16_MAX * margin
    kept = find_overflows(model, activation_ranges(model, inputs), limit)
    for item in kept:
        log.warning("fp16: keeping node %s (%s) in fp32: %s", item.node, item.op_type, item.reason)
    fp16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=[k.node for k in kept])
    fold_cast_round_trips(fp16, {k.node for k in kept})
    with atomic_path(out_path) as tmp:
        onnx.save_model(fp16, str(tmp))
        result = require_parity(fp32_logits, cpu_logits(tmp, inputs), tol, f"fp16 ONNX vs fp32 ONNX ({fp32_path})")
    return Fp16Result(path=Path(out_path), kept_fp32=tuple(kept), parity=result, margin=margin)


__all__ = ["FP16_MAX", "DEFAULT_MARGIN", "CONVERTER", "Overflow", "Fp16Result", "activation_ranges",
           "find_overflows", "convert"]
