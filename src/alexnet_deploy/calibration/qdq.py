"""fp32 ONNX + activation thresholds -> TensorRT-compatible Q/DQ ONNX, and the checker for it.

The Q/DQ graph is written by ONNX Runtime's ``quantize_static`` with the settings TensorRT's
explicit quantization accepts: int8 activations and weights, symmetric (zero point 0), per-channel
weights on axis 0, per-tensor activations, biases left in float. Weights use 7 bits by default so
that no CPU's int8 kernels saturate (docs/int8.md). The activation ranges are ours
(calibration/histogram.py); they are handed to ORT through its public calibration-cache file
(``calibration_cache_path``), so ORT's own calibrators never run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

from alexnet_deploy.deploy.onnx.lrn import PREFIX as LRN_REWRITE_PREFIX
from alexnet_deploy.errors import CalibrationError, MissingDependency

log = logging.getLogger(__name__)

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
# 7: weights on [-64, 64], safe on every CPU; 8: full range, for TensorRT or VNNI/AMX/ARM CPUs only.
WEIGHT_BITS = (7, 8)
DEFAULT_WEIGHT_BITS = 7
# Op types in ORT's optimized graph that prove int8 arithmetic is used (not just Q/DQ round trips).
INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm",
                "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearGlobalAveragePool")


def _import_quantization():
    try:
        import onnx
        import onnxruntime
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as exc:
        raise MissingDependency("INT8 calibration needs onnx and onnxruntime: "
                                "pip install 'alexnet-deploy[ort]'") from exc
    try:
        from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
    except ImportError as exc:
        # onnxruntime 1.23.2, the last release for Python 3.10, has no calibration-cache writer.
        raise MissingDependency(f"INT8 calibration hands its activation ranges to onnxruntime through "
                                f"quantization.calibrate.save_tensors_data, which onnxruntime "
                                f"{onnxruntime.__version__} lacks; use a newer onnxruntime (Python >= 3.11)") from exc
    return onnx, CalibrationMethod, QuantFormat, QuantType, quantize_static, TensorData, TensorsData, save_tensors_data


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _quiet_preprocess_advice():
    """ORT logs 'Please consider pre-processing' on the root logger on every call. Its
    pre-processing (shape inference + graph optimisation) renames nodes, which would break the
    layer names the budget keeps in float, so we skip it on purpose and drop the advice."""
    root, advice = logging.getLogger(), _DropPreprocessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def weighted_layers(model) -> list[str]:
    """Names of the nodes with weights (Conv/Gemm/MatMul), in graph order: the 'layers' that
    the accuracy budget can keep in float. Nodes without a name get none (ORT needs names)."""
    return [node.name for node in model.graph.node
            if node.op_type in WEIGHTED_OPS and node.name and not node.name.startswith(LRN_REWRITE_PREFIX)]


def lrn_rewrite_nodes(model) -> list[str]:
    """Nodes of the fast LRN formulation (export --lrn conv): always float. Its band conv sums
    squares beside a bias of 2 and its square roots need more than int8 resolution."""
    return [node.name for node in model.graph.node if node.name.startswith(LRN_REWRITE_PREFIX)]


def float_nodes(model, layers: Sequence[str]) -> list[str]:
    """Nodes to exclude from quantization so that each layer in ``layers`` really runs in float:
    the layer itself plus the weightless nodes feeding it (ReLU, pooling, LRN, Flatten) back to
    the previous weighted layer. Without them the layer's input would still pass through a
    Q/DQ round trip and keep its quantization error."""
    producers = {out: node for node in model.graph.node for out in node.output}
    by_name = {node.name: node for node in model.graph.node}
    excluded: list[str] = []
    for layer in layers:
        node = by_name.get(layer)
        if node is None:
            raise CalibrationError(f"layer {layer!r} is not a node of the model")
        excluded.append(layer)
        source = producers.get(node.input[0])
        while source is not None and source.op_type not in WEIGHTED_OPS and source.name:
            excluded.append(source.name)
            source = producers.get(source.input[0]) if source.input else None
    return list(dict.fromkeys(excluded))


def write_qdq(fp32_path: str | os.PathLike, out_path: str | os.PathLike, ranges: dict[str, float],
              keep_float: Sequence[str] = (), weight_bits: int = DEFAULT_WEIGHT_BITS) -> Path:
    """Write the symmetric int8 Q/DQ model; ``ranges`` maps activation name -> threshold T
    (quantized on [-T, T]); nodes named in ``keep_float`` stay fp32. ``weight_bits`` 7 stores the
    weights on [-64, 64] (int8 type, zero point 0): correct on every CPU's int8 kernels; 8 uses the
    full [-127, 127], which x86 CPUs without VNNI compute wrongly (see deploy/platform/cpu.py)."""
    if weight_bits not in WEIGHT_BITS:
        raise CalibrationError(f"--weight-bits {weight_bits!r}: expected one of {', '.join(map(str, WEIGHT_BITS))}")
    onnx, method, fmt, qtype, quantize_static, tensor_data, tensors_data, save = _import_quantization()
    import numpy as np

    out_path = Path(out_path)
    model = onnx.load(str(fp32_path), load_external_data=False)
    excluded = float_nodes(model, keep_float) if keep_float else []
    excluded += [name for name in lrn_rewrite_nodes(model) if name not in excluded]
    with tempfile.TemporaryDirectory(prefix="alexnet-deploy-qdq.") as tmp:
        cache = Path(tmp) / "ranges.json"
        # A zero threshold (all-zero tensor) would give scale 0, which ORT and TensorRT reject.
        data = {name: tensor_data(lowest=np.float32(-max(t, 1e-8)), highest=np.float32(max(t, 1e-8)))
                for name, t in ranges.items()}
        save(tensors_data(method.MinMax, data), cache)
        tmp_out = Path(tmp) / "model.int8.onnx"
        try:
            with _quiet_preprocess_advice():
                quantize_static(
                    str(fp32_path), str(tmp_out), calibration_data_reader=None, quant_format=fmt.QDQ,
                    per_channel=True, activation_type=qtype.QInt8, weight_type=qtype.QInt8,
                    reduce_range=weight_bits == 7,
                    nodes_to_exclude=excluded, calibrate_method=method.MinMax, calibration_cache_path=cache,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CalibrationError(f"ONNX Runtime could not quantize {fp32_path}: "
                                   f"{exc.__class__.__name__}: {exc}") from exc
        from alexnet_deploy.deploy.bundle.files import atomic_write_bytes

        model = onnx.load(str(tmp_out))
        float_outputs(model)
        atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def float_outputs(model) -> int:
    """Remove the Q->DQ round trip in front of graph outputs (the logits), in place.

    ORT quantizes a Gemm's output like any other activation; on the logits that rounds close
    scores to the same int8 level and flips top-1 for no speed gain (the int8 GEMM still runs,
    with a float result). Returns how many outputs were restored to float."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    restored = 0
    for output in graph.output:
        dq = producers.get(output.name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = producers.get(q.input[0])
        consumers = [n for n in graph.node if q.input[0] in n.input and n is not q]
        if source is None or consumers:
            continue
        source.output[list(source.output).index(q.input[0])] = output.name
        graph.node.remove(q)
        graph.node.remove(dq)
        restored += 1
    return restored


def _constants(graph) -> dict:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def check_qdq(model_or_path) -> list[str]:
    """Problems that would make TensorRT reject (or mis-build) this Q/DQ model; [] when fine.

    Checks: at least one Q/DQ pair; every zero point int8 and all zeros; positive constant
    scales; weights (DQ of an initializer feeding a Conv/Gemm weight input) per-channel on axis 0;
    activations per-tensor; no int32 (quantized) bias.
    """
    import onnx

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    graph = model.graph
    constants = _constants(graph)
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return ["no QuantizeLinear/DequantizeLinear nodes: this is not a Q/DQ model"]
    problems: list[str] = []
    for node in qdq:
        problems += _check_zero_point_and_scale(node, constants)
    problems += _check_placement(graph, constants)
    return problems


def _check_zero_point_and_scale(node, constants: dict) -> list[str]:
    import numpy as np

    where = f"{node.op_type} {node.name or node.output[0]!r}"
    problems = []
    scale = constants.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        problems.append(f"{where}: scale is not a constant")
    elif scale.size == 0 or not np.all(scale > 0):
        problems.append(f"{where}: scale must be positive")
    if len(node.input) < 3 or not node.input[2]:
        if node.op_type == "QuantizeLinear":
            problems.append(f"{where}: no zero point, so the output type defaults to uint8")
        return problems
    zero_point = constants.get(node.input[2])
    if zero_point is None:
        problems.append(f"{where}: zero point is not a constant")
    elif zero_point.dtype != np.int8:
        problems.append(f"{where}: zero point type {zero_point.dtype} (TensorRT needs int8)")
    elif np.any(zero_point != 0):
        problems.append(f"{where}: non-zero zero point (asymmetric); TensorRT needs symmetric quantization")
    return problems


def _check_placement(graph, constants: dict) -> list[str]:
    import numpy as np

    producers = {out: node for node in graph.node for out in node.output}
    problems = []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        for position, name in enumerate(node.input[1:], 1):
            source = producers.get(name)
            if source is None or source.op_type != "DequantizeLinear":
                continue
            scale = constants.get(source.input[1])
            if position == 2:
                problems.append(f"{node.op_type} {node.name!r}: bias is quantized (int32 DQ); "
                                "TensorRT needs a float bias")
            elif source.input[0] in constants and scale is not None:
                axis = next((a.i for a in source.attribute if a.name == "axis"), 1)
                if np.ndim(scale) == 0 or scale.size == 1:
                    problems.append(f"{node.op_type} {node.name!r}: weight is quantized per-tensor; "
                                    "expected per-channel")
                elif axis != 0 and node.op_type == "Conv":
                    problems.append(f"{node.op_type} {node.name!r}: weight quantized on axis {axis}; expected axis 0")
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            scale = constants.get(node.input[1])
            if scale is not None and np.ndim(scale) > 0 and scale.size > 1 and node.input[0] not in constants:
                problems.append(f"QuantizeLinear {node.name!r}: activation {node.input[0]!r} is quantized per-channel; "
                                "TensorRT only supports per-tensor activations")
    return problems


def require_valid(model_path: str | os.PathLike) -> None:
    """Raise CalibrationError listing the problems when ``check_qdq`` finds any."""
    problems = check_qdq(model_path)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CalibrationError(f"{Path(model_path).name} is not a TensorRT-compatible Q/DQ model: {shown}")


def optimized_op_types(model_path: str | os.PathLike) -> list[str]:
    """Op types in ONNX Runtime's CPU-optimized graph of the model (what actually runs)."""
    import onnx

    from alexnet_deploy.deploy.onnx.sessions import import_ort, session_options

    ort = import_ort()
    with tempfile.TemporaryDirectory(prefix="alexnet-deploy-opt.") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort.InferenceSession(str(model_path), sess_options=session_options(optimized_model_path=str(optimized)),
                             providers=["CPUExecutionProvider"])
        return [node.op_type for node in onnx.load(str(optimized)).graph.node]


def int8_kernels(op_types: Iterable[str]) -> dict[str, int]:
    """Count of int8 compute kernels among ``op_types``."""
    counts: dict[str, int] = {}
    for op in op_types:
        if op in INT8_KERNELS:
            counts[op] = counts.get(op, 0) + 1
    return counts
