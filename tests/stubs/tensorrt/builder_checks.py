"""Stand-in build rules (profiles, precision flags, DLA; docs/tensorrt.md) and the plan header they produce."""

from __future__ import annotations

import hashlib

import tensorrt as trt


def _precision_flags(config) -> list[str]:
    return sorted(f.name for f in config._flags if f.name in trt._PRECISION_FLAGS)


def _profile_problem(network, config) -> str:
    dynamic = [t for t in network._inputs if -1 in t.shape]
    if dynamic and not config._profiles:
        return "Network has dynamic or shape inputs, but no optimization profile has been defined."
    for profile in config._profiles:
        for tensor in dynamic:
            if tensor.name not in profile._shapes:
                return f"Optimization profile is missing values for input tensor {tensor.name}."
            for shape in profile._shapes[tensor.name]:
                if len(shape) != len(tensor.shape) or any(
                        fixed != -1 and fixed != got for fixed, got in zip(tensor.shape, shape)):
                    return (f"Profile shape {shape} for {tensor.name} does not match the network input "
                            f"shape {tensor.shape}.")
    return ""


def _dla_problem(builder, network, config) -> str:
    if config.default_device_type != trt.DeviceType.DLA:
        return ""
    if not 0 <= config.DLA_core < builder.num_DLA_cores:
        return f"DLA core {config.DLA_core} requested but the device has {builder.num_DLA_cores} DLA core(s)."
    low_precision = bool(_precision_flags(config)) or network._fp16_typed or network._has_qdq
    if not low_precision:
        return "DLA supports only FP16 and INT8 networks; enable FP16/INT8 or use a typed network."
    for profile in config._profiles:
        if any(lo != hi for lo, _, hi in profile._shapes.values()):
            return "DLA does not support dynamic shapes: the optimization profile needs min == opt == max."
    return ""


def _pinned_layers(network) -> list[str]:
    return [layer.name for layer in network._layers if getattr(layer, "precision_is_set", False)]


def check_build(builder, network, config) -> str:
    """The error real TensorRT would log for this build, or '' when it would build."""
    if not network._inputs:
        return "Network must have at least one input (was the ONNX parsed successfully?)."
    if not network.explicit_batch:
        return "Implicit-batch networks are not supported by this stand-in (create_network needs EXPLICIT_BATCH)."
    flags = _precision_flags(config)
    if network.strongly_typed and flags:
        return (f"Builder flags {flags} are not allowed on a strongly typed network: its precision comes from "
                "the tensor types (TensorRT 10.12+ and 11 reject the combination).")
    pinned = _pinned_layers(network)
    if pinned and network.strongly_typed:
        return f"Layer precision set on {pinned[:3]}: not allowed on a strongly typed network."
    if pinned and not ({"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
                       & {f.name for f in config._flags}):
        return f"Layer precision set on {pinned[:3]} without OBEY/PREFER_PRECISION_CONSTRAINTS: it would be ignored."
    if network._has_qdq and not network.strongly_typed and "INT8" not in flags:
        return "Network has Q/DQ layers but BuilderFlag.INT8 is not set (required for weakly typed networks)."
    return _profile_problem(network, config) or _dla_problem(builder, network, config)


def _timing(network, config) -> tuple[int, int]:
    """Per-layer 'tactic' lookups in the attached timing cache: (hits, misses); misses are added."""
    cache = config.get_timing_cache()
    if cache is None or config.get_flag(trt.BuilderFlag.DISABLE_TIMING_CACHE):
        return 0, len(network._ops)
    precision = ",".join(_precision_flags(config)) or ("typed" if network.strongly_typed else "fp32")
    hits = 0
    for name, op in network._ops:
        key = f"{op}:{name}:{precision}"
        if key in cache.entries:
            hits += 1
        else:
            cache.entries[key] = "tactic-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return hits, len(network._ops) - hits


def plan_header(builder, network, config) -> dict:
    hits, misses = _timing(network, config)
    return {
        "stand_in": True, "trt_version": trt.__version__, "device": trt._device_key(),
        "explicit_batch": network.explicit_batch, "strongly_typed": network.strongly_typed,
        "network_flags": sorted(m.name for m in trt.NetworkDefinitionCreationFlag if network.flags & (1 << int(m))),
        "builder_flags": sorted(f.name for f in config._flags),
        "memory_pools": {trt.MemoryPoolType(k).name: v for k, v in config._pools.items()},
        "opt_level": config.builder_optimization_level,
        "profiles": [{name: [list(s) for s in shapes] for name, shapes in p._shapes.items()} for p in config._profiles],
        "device_type": trt.DeviceType(config.default_device_type).name, "dla_core": config.DLA_core,
        "version_compatible": config.get_flag(trt.BuilderFlag.VERSION_COMPATIBLE),
        "timing_cache_hits": hits, "timing_cache_misses": misses,
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": trt.DataType(t.dtype).name}
                   for t in network._inputs],
        "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": trt.DataType(t.dtype).name}
                    for t in network._outputs],
        "onnx_sha256": hashlib.sha256(network._onnx).hexdigest(), "has_qdq": network._has_qdq,
        "fp16_typed": network._fp16_typed,
        "layer_precisions": {layer.name: trt.DataType(layer.precision).name for layer in network._layers
                             if getattr(layer, "precision_is_set", False)},
    }
