"""Rewrite ONNX ``LRN`` nodes into a form every runtime executes quickly, with the same numbers.

AlexNet-2012's local response normalisation is its CPU hot spot: ONNX Runtime's ``LRN`` kernel and
the exporter's Pad/AveragePool/Pow decomposition are both slow (measurements: docs/lrn.md). This
module replaces each ``LRN`` node of an exported graph by plain ops that every backend has fast
kernels for::

    s = x * sqrt(alpha/size)                                  (scale first: see below)
    d = bias + sum_{c' in window(c)} s[c']^2                  (s*s, then a fixed banded 1x1 Conv of ones)
    y = x * d^-beta                                           (beta = 0.75: sqrt chain, see below)

The cross-channel window follows the ONNX definition (``c - floor((size-1)/2) .. c +
ceil((size-1)/2)``, zero outside), which for odd sizes is PyTorch's ``nn.LocalResponseNorm``.
``d^-0.75`` is computed as ``x / (sqrt(d) * sqrt(sqrt(d)))``: two vectorised square roots instead of
``Pow``, which ONNX Runtime evaluates with scalar ``std::pow``. Scaling before squaring keeps every
intermediate tensor as small as ``x`` itself (``x*x`` would pass fp16's 65504 at |x| > 256, and an
fp16 overflow guard that keeps single nodes in fp32 would then split the LRN), and makes the band
weights exactly 1.0, which fp16 and int8 represent exactly (``alpha/size`` = 2e-5 is subnormal in
fp16).

It works on the graph, not on the torch module, so it needs no torch and runs on an fp32 export,
on the fp16 artifact and on a Q/DQ int8 model alike; export/onnx.py calls it after exporting native
``LRN`` nodes (export/torch_lrn.py) when the formulation is "conv". Every node and initializer it
adds is named ``lrn_conv/<n>/...`` (:data:`PREFIX`) so that the INT8 quantizer can keep them in
float: ``d`` is a small correction added to the bias (2 in AlexNet), which an int8 grid over d's
range would mostly round away. In an fp16 graph the new nodes compute in fp32 between two ``Cast``
nodes, so the fp16 artifact's LRN gives the fp32 model's numbers. :func:`restore_lrn` undoes the
rewrite for runtimes whose own LRN kernel is faster (OpenVINO; see deploy/backends/ov.py).
"""

from __future__ import annotations

import logging

import numpy as np

from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.errors import ExportError

log = logging.getLogger(__name__)

#: Prefix of every node, tensor and initializer the rewrite adds.
PREFIX = "lrn_conv/"

#: Graph-level LRN formulations: "native" keeps the ONNX LRN node; "conv" is the fast rewrite;
#: "conv-pow" is the same graph with one ``Pow`` for ``d^-beta`` (kept to measure against).
FORMULATIONS = ("native", "conv", "conv-pow")


def _import_onnx():
    return require("onnx", package="onnx")


def rewrite_lrn(model, formulation: str = "conv"):
    """Return a copy of ``model`` (an ``onnx.ModelProto``) whose ``LRN`` nodes use ``formulation``.

    "native" returns an unchanged copy. Raises ExportError when the formulation is unknown or the
    channel count of an LRN input cannot be inferred (the banded convolution needs it).
    """
    onnx = _import_onnx()
    if formulation not in FORMULATIONS:
        raise ExportError(f"unknown LRN formulation {formulation!r}; expected one of {list(FORMULATIONS)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if formulation == "native" or not any(_is_lrn(node) for node in model.graph.node):
        return out
    tensor_types = _tensor_types(onnx, model)
    nodes, count = [], 0
    for node in out.graph.node:
        if not _is_lrn(node):
            nodes.append(node)
            continue
        new_nodes, inits = _expand(onnx, node, tensor_types, f"{PREFIX}{count}/", formulation)
        nodes.extend(new_nodes)
        out.graph.initializer.extend(inits)
        count += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    log.info("rewrote %d LRN node(s) as %s", count, formulation)
    return out


def rewritten_node_names(model) -> list[str]:
    """Names of the nodes :func:`rewrite_lrn` added; pass them to the quantizer's ``nodes_to_exclude``."""
    return [node.name for node in model.graph.node if node.name.startswith(PREFIX)]


def band_weights(channels: int, size: int) -> np.ndarray:
    """The (C, C, 1, 1) float32 weight of the 1x1 conv that sums each channel's LRN window (ones on the band)."""
    below, above = (size - 1) // 2, size - 1 - (size - 1) // 2  # ONNX: floor before, ceil after
    index = np.arange(channels)
    offset = index[None, :] - index[:, None]  # [out, in] -> in - out
    band = ((offset >= -below) & (offset <= above)).astype(np.float32)
    return band.reshape(channels, channels, 1, 1)


def _is_lrn(node) -> bool:
    return node.op_type == "LRN" and node.domain in ("", "ai.onnx")


def _tensor_types(onnx, model) -> dict[str, tuple[int, list]]:
    """name -> (element type, dims) for every tensor shape inference can type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises several unrelated types here; all mean "cannot infer"
        raise ExportError(f"ONNX shape inference failed before the LRN rewrite: {exc}") from exc
    graph = inferred.graph
    types = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        types[info.name] = (tensor.elem_type, dims)
    return types


def _channels(node, tensor_types) -> tuple[int, int]:
    """(element type, channel count) of the LRN input, or ExportError naming the node."""
    elem, dims = tensor_types.get(node.input[0], (0, []))
    if len(dims) < 2 or not isinstance(dims[1], int) or dims[1] <= 0:
        raise ExportError(f"LRN node {node.name or node.output[0]!r}: cannot infer the channel count of its input "
                          f"{node.input[0]!r} (shape {dims}); export with a static channel dimension")
    return elem, dims[1]


def _attrs(onnx, node) -> tuple[int, float, float, float]:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if "size" not in values:
        raise ExportError(f"LRN node {node.name or node.output[0]!r} has no 'size' attribute")
    # Defaults are the ONNX spec's.
    return (int(values["size"]), float(values.get("alpha", 1e-4)), float(values.get("beta", 0.75)),
            float(values.get("bias", 1.0)))


def _expand(onnx, node, tensor_types, prefix: str, formulation: str):
    """The replacement nodes and initializers for one LRN node."""
    helper, TP = onnx.helper, onnx.TensorProto
    size, alpha, beta, bias = _attrs(onnx, node)
    elem, channels = _channels(node, tensor_types)
    if elem not in (TP.FLOAT, TP.FLOAT16):
        raise ExportError(f"LRN node {node.name or node.output[0]!r}: input type "
                          f"{TP.DataType.Name(elem)} is not float or float16")
    inits = [onnx.numpy_helper.from_array(np.array(np.sqrt(alpha / size), np.float32), prefix + "scale"),
             onnx.numpy_helper.from_array(band_weights(channels, size), prefix + "band_weight"),
             onnx.numpy_helper.from_array(np.full(channels, bias, np.float32), prefix + "band_bias")]
    x, nodes = node.input[0], []
    if elem == TP.FLOAT16:  # compute in fp32, exactly as the fp32 model does
        nodes.append(helper.make_node("Cast", [x], [prefix + "x32"], name=prefix + "cast_in", to=TP.FLOAT))
        x = prefix + "x32"
    nodes.append(helper.make_node("Mul", [x, prefix + "scale"], [prefix + "xs"], name=prefix + "prescale"))
    nodes.append(helper.make_node("Mul", [prefix + "xs", prefix + "xs"], [prefix + "sq"], name=prefix + "square"))
    nodes.append(helper.make_node("Conv", [prefix + "sq", prefix + "band_weight", prefix + "band_bias"],
                                  [prefix + "d"], name=prefix + "band_sum", kernel_shape=[1, 1]))
    result = node.output[0] if elem == TP.FLOAT else prefix + "y32"
    power_nodes, power_inits = _scale_by_power(onnx, x, prefix + "d", result, beta, prefix, formulation)
    nodes += power_nodes
    inits += power_inits
    if elem == TP.FLOAT16:
        nodes.append(helper.make_node("Cast", [result], [node.output[0]], name=prefix + "cast_out", to=TP.FLOAT16))
    return nodes, inits


def _scale_by_power(onnx, x: str, d: str, out: str, beta: float, prefix: str, formulation: str):
    """Nodes computing ``out = x * d^-beta`` with the cheapest exact ops for common betas."""
    make = onnx.helper.make_node
    if formulation == "conv-pow" or beta not in (0.5, 0.75, 1.0):
        exponent = onnx.numpy_helper.from_array(np.array(-beta, np.float32), prefix + "neg_beta")
        return [make("Pow", [d, prefix + "neg_beta"], [prefix + "factor"], name=prefix + "pow"),
                make("Mul", [x, prefix + "factor"], [out], name=prefix + "apply")], [exponent]
    if beta == 1.0:
        return [make("Div", [x, d], [out], name=prefix + "apply")], []
    nodes = [make("Sqrt", [d], [prefix + "sqrt"], name=prefix + "sqrt")]
    denominator = prefix + "sqrt"
    if beta == 0.75:  # d^0.75 = sqrt(d) * sqrt(sqrt(d))
        nodes += [make("Sqrt", [prefix + "sqrt"], [prefix + "qrt"], name=prefix + "sqrt2"),
                  make("Mul", [prefix + "sqrt", prefix + "qrt"], [prefix + "den"], name=prefix + "den")]
        denominator = prefix + "den"
    nodes.append(make("Div", [x, denominator], [out], name=prefix + "apply"))
    return nodes, []


def restore_lrn(model):
    """The inverse of :func:`rewrite_lrn`: a copy of ``model`` with each intact ``lrn_conv/<n>/`` group
    replaced by one native ``LRN`` node again (size, alpha, beta and bias recovered from the group's
    initializers). For runtimes whose own LRN kernel is faster than the conv form (OpenVINO).

    Groups that are not exactly what rewrite_lrn wrote (e.g. quantized by a tool that ignored the
    exclusion list) are left as they are.
    """
    onnx = _import_onnx()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    groups: dict[str, list] = {}
    for node in out.graph.node:
        if node.name.startswith(PREFIX):
            groups.setdefault(node.name[:node.name.index("/", len(PREFIX)) + 1], []).append(node)
    replaced: dict[int, object] = {}
    drop: set[int] = set()
    for prefix, nodes in groups.items():
        lrn = _restored_node(onnx, prefix, nodes, inits)
        if lrn is not None:
            replaced[id(nodes[0])] = lrn
            drop |= {id(n) for n in nodes[1:]}
    kept = [replaced.get(id(n), n) for n in out.graph.node if id(n) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    used = {name for n in kept for name in n.input}
    unused = [t for t in out.graph.initializer if t.name.startswith(PREFIX) and t.name not in used]
    for tensor in unused:
        out.graph.initializer.remove(tensor)
    return out


_GROUP_OPS = {"Cast", "Mul", "Conv", "Sqrt", "Div", "Pow"}


def _restored_node(onnx, prefix: str, nodes: list, inits: dict):
    """One LRN node equivalent to the rewrite group ``nodes``, or None if the group is not intact.

    Constants are found through the nodes' inputs, not by their names: a simplifier (onnxslim, at
    export) merges the identical scale and band tensors of two LRN layers into one initializer."""
    by_suffix = {n.name[len(prefix):]: n for n in nodes}
    needed = ("prescale", "band_sum", "apply")
    if any(n.op_type not in _GROUP_OPS for n in nodes) or any(s not in by_suffix for s in needed):
        return None
    band_sum, power = by_suffix["band_sum"], by_suffix.get("pow")
    names = {"scale": by_suffix["prescale"].input[1], "band_weight": band_sum.input[1],
             "band_bias": band_sum.input[2] if len(band_sum.input) > 2 else "",
             "neg_beta": power.input[1] if power is not None else None}
    if any(name is not None and name not in inits for name in names.values()):
        return None
    value = {key: onnx.numpy_helper.to_array(inits[name]) for key, name in names.items() if name is not None}
    band = value["band_weight"][:, :, 0, 0]
    size = int(np.count_nonzero(band[0]) + np.count_nonzero(band[-1]) - 1)
    scale = float(value["scale"])
    bias = float(value["band_bias"].reshape(-1)[0])
    if power is not None:
        beta = -float(value["neg_beta"])
    else:
        beta = 0.75 if "sqrt2" in by_suffix else 0.5 if "sqrt" in by_suffix else 1.0
    first = by_suffix.get("cast_in", by_suffix["prescale"])
    last = by_suffix.get("cast_out", by_suffix["apply"])
    return onnx.helper.make_node("LRN", [first.input[0]], [last.output[0]],
                                 name="lrn_native/" + prefix[len(PREFIX):], size=size,
                                 alpha=scale * scale * size, beta=beta, bias=bias)
