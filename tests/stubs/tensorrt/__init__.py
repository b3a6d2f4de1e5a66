"""STAND-IN for NVIDIA TensorRT's Python module — NOT TensorRT. For tests on machines without a GPU.

Written from TensorRT's documented Python API as summarized in docs/tensorrt.md (the version table,
the build sequence, config knobs, profiles, precision rules, the runtime API, DLA and the behaviour
without a GPU, each with its NVIDIA source). It
reproduces the *API surface* of three TensorRT generations, chosen by ``FAKE_TRT_VERSION``
(default ``10.3.0``) when the module is imported:

- 8.6: ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` required by the ONNX parser, no
  STRONGLY_TYPED, ``BuilderFlag.FP16/INT8``, ``platform_has_fast_fp16``, parser errors without
  ``node_name()`` (only a node index);
- 10.x: EXPLICIT_BATCH exists but is ignored, STRONGLY_TYPED is an opt-in, FP16/INT8 flags exist
  but are refused together with STRONGLY_TYPED, parser errors have ``node_name()/node_operator()``;
- 11.x: no EXPLICIT_BATCH, no FP16/INT8 flags, no ``platform_has_fast_fp16``, every network is
  strongly typed.

The ONNX parser really reads the model with ``onnx``: it reports an unsupported op naming the node,
and refuses non-zero Q/DQ zero points like onnx-tensorrt. ``build_serialized_network`` checks the
rules the reference documents (profile present and within bounds for dynamic inputs, no precision
flags on strongly typed networks, DLA: valid core, fp16/int8 and static shapes) and returns bytes
that encode what was asked (see _plan.py) plus the ONNX model, so the fake runtime
(runtime.py) can compute real logits with ONNX Runtime.

What it CANNOT prove: that real TensorRT accepts our ONNX (operator coverage, opset support,
shape handling), which kernels/tactics it picks, build time, memory use, engine speed, or the
numerics of fp16/int8 kernels on a GPU (the fake runtime runs the ONNX on the CPU in whatever
precision the ONNX has). Those need a real GPU: tests marked ``gpu``.

Other environment variables: ``FAKE_CUDA_DEVICES`` (0 = no GPU: Builder/Runtime raise TypeError
like real TensorRT without a driver), ``FAKE_TRT_DLA_CORES`` (default 0), plus the fake
cuda-python's ``FAKE_CUDA_GPU_NAME`` / ``FAKE_CUDA_CC``.
"""

from __future__ import annotations

import enum
import json
import math
import os
import sys

import numpy as np

from tensorrt import _plan

STAND_IN = True
__version__ = os.environ.get("FAKE_TRT_VERSION", "10.3.0")
_MAJOR, _MINOR = (int(p) for p in __version__.split(".")[:2])


def _enum(name: str, members: dict[str, int]) -> type[enum.IntEnum]:
    return enum.IntEnum(name, {k: v for k, v in members.items() if v is not None})


def _since(major: int, minor: int = 0, until: int | None = None):
    """True when this stand-in's version is in [major.minor, until)."""
    return (_MAJOR, _MINOR) >= (major, minor) and (until is None or _MAJOR < until)


NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", {
    "EXPLICIT_BATCH": 0 if _MAJOR < 11 else None,
    "EXPLICIT_PRECISION": 1 if _MAJOR < 10 else None,
    "STRONGLY_TYPED": 1 if _MAJOR >= 10 else None,
})
_PRECISION_FLAGS = ("FP16", "INT8", "BF16", "FP8", "INT4")
BuilderFlag = _enum("BuilderFlag", {
    "FP16": 0 if _MAJOR < 11 else None, "INT8": 1 if _MAJOR < 11 else None, "DEBUG": 2, "GPU_FALLBACK": 3,
    "REFIT": 5, "DISABLE_TIMING_CACHE": 6, "TF32": 7, "SPARSE_WEIGHTS": 8, "SAFETY_SCOPE": 9,
    "OBEY_PRECISION_CONSTRAINTS": 10 if _MAJOR < 11 else None,
    "PREFER_PRECISION_CONSTRAINTS": 11 if _MAJOR < 11 else None, "DIRECT_IO": 12,
    "REJECT_EMPTY_ALGORITHMS": 13, "VERSION_COMPATIBLE": 14, "EXCLUDE_LEAN_RUNTIME": 15,
    "FP8": 16 if _MAJOR < 11 else None, "BF16": 18 if _since(10, 0, 11) else None,
    "INT4": 22 if _since(10, 0, 11) else None, "EDITABLE_TIMING_CACHE": 24 if _since(10, 8) else None,
})
MemoryPoolType = _enum("MemoryPoolType", {
    "WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3, "TACTIC_DRAM": 4,
    "TACTIC_SHARED_MEMORY": 5 if _MAJOR >= 10 else None})
DeviceType = _enum("DeviceType", {"GPU": 0, "DLA": 1})
DataType = _enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6,
                              "BF16": 7 if _MAJOR >= 10 else None, "INT64": 8 if _MAJOR >= 10 else None})
TensorIOMode = _enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
ProfilingVerbosity = _enum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
HardwareCompatibilityLevel = _enum("HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1})
ErrorCode = _enum("ErrorCode", {"SUCCESS": 0, "INTERNAL_ERROR": 1, "MEM_ALLOC_FAILED": 2,
                                "MODEL_DESERIALIZE_FAILED": 3, "INVALID_VALUE": 4, "INVALID_GRAPH": 5,
                                "INVALID_NODE": 6, "UNSUPPORTED_GRAPH": 7, "UNSUPPORTED_NODE": 8})
OnnxParserFlag = _enum("OnnxParserFlag", {"NATIVE_INSTANCENORM": 0})

_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}
if _MAJOR >= 10:
    _NP[DataType.INT64] = np.int64
# ONNX TensorProto elem_type -> DataType
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
              2: DataType.UINT8, 7: getattr(DataType, "INT64", DataType.INT32)}


def nptype(dtype) -> type:
    """numpy type of a DataType."""
    return _NP[DataType(dtype)]


def volume(shape) -> int:
    """Number of elements of a shape."""
    return int(math.prod(shape))


def init_libnvinfer_plugins(logger, namespace: str) -> bool:
    return True


def _device_count() -> int:
    return int(os.environ.get("FAKE_CUDA_DEVICES", "1"))


def _cuda_or_fail(logger) -> None:
    # Real TensorRT without a usable driver: logs error 35 and pybind11 raises TypeError (docs/tensorrt.md).
    if _device_count() < 1:
        logger.log(Logger.WARNING, "CUDA initialization failure with error: 35. Please check your CUDA "
                                   "installation: http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html")
        raise TypeError("pybind11::init(): factory function returned nullptr")


def _device_key() -> str:
    return f"{os.environ.get('FAKE_CUDA_GPU_NAME', 'Stand-in GPU (fake)')}/sm{os.environ.get('FAKE_CUDA_CC', '8.7')}"


class HostMemory(bytes):
    """IHostMemory: a buffer (here simply bytes) with ``nbytes`` and ``dtype``."""

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self):
        return DataType.UINT8


class Logger:
    """trt.Logger; keeps every message in ``messages`` (stand-in only) and prints warnings and errors."""

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING,
                                                     Severity.INFO, Severity.VERBOSE)

    def __init__(self, min_severity=Severity.WARNING) -> None:
        self.min_severity = min_severity
        self.messages: list[tuple[int, str]] = []

    def log(self, severity, msg: str) -> None:
        self.messages.append((int(severity), msg))
        if int(severity) <= int(self.min_severity):
            print(f"[TRT-STAND-IN] [{Logger.Severity(int(severity)).name[0]}] {msg}", file=sys.stderr)


ILogger = Logger


float32, float16, int8, int32 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32


class ILayer:
    """A parsed layer (one per ONNX node here). ``precision`` / ``set_output_type`` exist below 11.0."""

    def __init__(self, name: str, op: str) -> None:
        self.name, self.type = name, op
        self._precision = None
        self._output_types: dict[int, object] = {}

    num_outputs = property(lambda self: 1)


if _MAJOR < 11:  # deprecated in 10.12 ("superseded by strong typing"), removed in 11.0
    def _set_precision(self, dtype) -> None:
        self._precision = DataType(dtype)

    ILayer.precision = property(lambda self: self._precision or DataType.FLOAT, _set_precision)
    ILayer.precision_is_set = property(lambda self: self._precision is not None)
    ILayer.set_output_type = lambda self, index, dtype: self._output_types.__setitem__(index, DataType(dtype))
    ILayer.get_output_type = lambda self, index: self._output_types.get(index, DataType.FLOAT)
    ILayer.reset_precision = lambda self: setattr(self, "_precision", None)


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype, is_input: bool) -> None:
        self.name, self.shape, self.dtype, self.is_network_input = name, tuple(shape), dtype, is_input


class INetworkDefinition:
    """What the parser filled in; keeps the ONNX model for the plan."""

    def __init__(self, flags: int) -> None:
        for bit in range(32):
            if flags & (1 << bit) and bit not in {int(m) for m in NetworkDefinitionCreationFlag}:
                raise ValueError(f"create_network: unknown NetworkDefinitionCreationFlag bit {bit}")
        self.flags = flags
        explicit = getattr(NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
        strong = getattr(NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        self.explicit_batch = _MAJOR >= 10 or (explicit is not None and bool(flags & (1 << int(explicit))))
        self.strongly_typed = _MAJOR >= 11 or (strong is not None and bool(flags & (1 << int(strong))))
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._onnx: bytes = b""
        self._ops: list[tuple[str, str]] = []
        self._layers: list[ILayer] = []
        self._has_qdq = False
        self._fp16_typed = False

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._ops))

    def get_layer(self, index: int) -> ILayer:
        return self._layers[index]

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    def get_flag(self, flag) -> bool:
        if int(flag) == int(getattr(NetworkDefinitionCreationFlag, "STRONGLY_TYPED", -1)):
            return self.strongly_typed
        return bool(self.flags & (1 << int(flag)))


class ParserError:
    """IParserError: code/desc/node/file/line/func; node_name/node_operator/local_function_stack from 10.0."""

    def __init__(self, code, desc: str, node: int = -1, name: str = "", op: str = "") -> None:
        self._code, self._desc, self._node, self._name, self._op = code, desc, node, name, op

    def code(self):
        return self._code

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def file(self) -> str:
        return "ModelImporter.cpp"

    def line(self) -> int:
        return 0

    def func(self) -> str:
        return "parseGraph"

    def __str__(self) -> str:
        return f"In node {self._node} with name: {self._name} and operator: {self._op} ({self.func()}): {self._desc}"


if _MAJOR >= 10:
    ParserError.node_name = lambda self: self._name
    ParserError.node_operator = lambda self: self._op
    ParserError.local_function_stack = lambda self: []

# onnx-tensorrt importers used by image classifiers (subset of docs/operators.md).
SUPPORTED_OPS = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Dropout",
    "Expand", "Flatten", "Gather", "GatherND", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Identity", "LRN",
    "MatMul", "MaxPool", "Mul", "Pad", "Pow", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Resize", "Shape",
    "Slice", "Softmax", "Sqrt", "Squeeze", "Sub", "Transpose", "Unsqueeze", "QuantizeLinear", "DequantizeLinear",
    "Reciprocal", "Sigmoid", "Tanh", "Max", "Min", "Neg", "Exp", "Log", "Abs", "Equal", "Where", "Range",
})


def _dims(value_info) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


class OnnxParser:
    """trt.OnnxParser(network, logger): parse / parse_from_file / num_errors / get_error / clear_errors."""

    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network, self.logger, self._errors = network, logger, []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []

    def parse_from_file(self, model: str) -> bool:
        import onnx

        try:
            proto = onnx.load(str(model))
        except Exception as exc:  # noqa: BLE001
            self._errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED, f"Failed to parse ONNX model: {exc}"))
            return False
        return self._parse(proto)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001
            self._errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED, f"Failed to parse ONNX model: {exc}"))
            return False
        return self._parse(proto)

    def _parse(self, proto) -> bool:
        if not self.network.explicit_batch:
            self._errors.append(ParserError(ErrorCode.INVALID_GRAPH, "This version of the ONNX parser only supports "
                                "TensorRT INetworkDefinitions with an explicit batch dimension. Please ensure the "
                                "network was created using the EXPLICIT_BATCH NetworkDefinitionCreationFlag."))
            return False
        consts = {init.name: init for init in proto.graph.initializer}
        for index, node in enumerate(proto.graph.node):
            error = self._check_node(index, node, consts)
            if error is not None:
                self._errors.append(error)
                return False
        self._fill(proto, consts)
        return True

    def _check_node(self, index: int, node, consts) -> ParserError | None:
        if node.op_type not in SUPPORTED_OPS or node.domain not in ("", "ai.onnx"):
            return ParserError(ErrorCode.UNSUPPORTED_NODE, f"No importer registered for op: {node.op_type}. "
                               "Attempting to import as plugin.", index, node.name, node.op_type)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            from onnx import numpy_helper

            zero = consts.get(node.input[2])
            if zero is not None and np.any(numpy_helper.to_array(zero) != 0):
                return ParserError(ErrorCode.INVALID_NODE, "Non-zero zero point is not supported.",
                                   index, node.name, node.op_type)
        return None

    def _fill(self, proto, consts) -> None:
        net = self.network
        net._inputs = [ITensor(i.name, _dims(i), _FROM_ONNX.get(i.type.tensor_type.elem_type, DataType.FLOAT), True)
                       for i in proto.graph.input if i.name not in consts]
        net._outputs = [ITensor(o.name, _dims(o), _FROM_ONNX.get(o.type.tensor_type.elem_type, DataType.FLOAT), False)
                        for o in proto.graph.output]
        net._ops = [(n.name, n.op_type) for n in proto.graph.node]
        net._layers = [ILayer(name, op) for name, op in net._ops]
        net._has_qdq = any(op in ("QuantizeLinear", "DequantizeLinear") for _, op in net._ops)
        net._fp16_typed = any(init.data_type == 10 for init in proto.graph.initializer)
        net._onnx = proto.SerializeToString()


class IOptimizationProfile:
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        self._valid = True

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's parameter names
        lo, mid, hi = (tuple(int(d) for d in s) for s in (min, opt, max))
        ok = len(lo) == len(mid) == len(hi) and all(1 <= a <= b <= c for a, b, c in zip(lo, mid, hi))
        if not ok:
            self._valid = False  # real TensorRT logs an error; add_optimization_profile then returns -1
        self._shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str):  # noqa: A002
        return [tuple(s) for s in self._shapes[input]]

    def __bool__(self) -> bool:
        return self._valid


class ITimingCache:
    MAGIC = b"FAKE-TRT-TIMING\x00"

    def __init__(self, entries: dict[str, str], key: str) -> None:
        self.entries, self.key = dict(entries), key

    def serialize(self) -> HostMemory:
        return HostMemory(self.MAGIC + json.dumps({"key": self.key, "entries": self.entries}).encode())

    def combine(self, other: "ITimingCache", ignore_mismatch: bool) -> bool:
        if other.key != self.key and not ignore_mismatch:
            return False
        self.entries.update(other.entries)
        return True

    def reset(self) -> bool:
        self.entries.clear()
        return True


def _cache_key() -> str:
    return f"trt{__version__}/{_device_key()}"


class IBuilderConfig:
    def __init__(self, builder: "Builder") -> None:
        self._builder = builder
        self._flags = {BuilderFlag.TF32}  # TF32 is on by default (NvInfer.h)
        self._pools: dict[int, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._timing_cache: ITimingCache | None = None
        self.builder_optimization_level = 3
        self.DLA_core = -1
        self.default_device_type = DeviceType.GPU
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.max_aux_streams = -1
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        if _MAJOR < 11:
            self.int8_calibrator = None

    def set_flag(self, flag) -> None:
        self._flags.add(BuilderFlag(flag))

    def clear_flag(self, flag) -> None:
        self._flags.discard(BuilderFlag(flag))

    def get_flag(self, flag) -> bool:
        return BuilderFlag(flag) in self._flags

    @property
    def flags(self) -> int:
        return sum(1 << int(f) for f in self._flags)

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        if int(pool_size) < 0:
            raise ValueError("pool_size must be >= 0")
        self._pools[int(MemoryPoolType(pool))] = int(pool_size)

    def get_memory_pool_limit(self, pool) -> int:
        total = int(os.environ.get("FAKE_CUDA_TOTAL_MB", "8192")) << 20
        return self._pools.get(int(MemoryPoolType(pool)), total if int(pool) == 0 else 0)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile:
            self._builder.logger.log(Logger.ERROR, "IOptimizationProfile is invalid (need 1 <= min <= opt <= max)")
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    num_optimization_profiles = property(lambda self: len(self._profiles))

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
        blob = bytes(serialized_timing_cache)
        if not blob:
            return ITimingCache({}, _cache_key())
        if not blob.startswith(ITimingCache.MAGIC):
            self._builder.logger.log(Logger.ERROR, "createTimingCache: the timing cache is corrupted")
            return None
        data = json.loads(blob[len(ITimingCache.MAGIC):])
        return ITimingCache(data["entries"], data["key"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, ITimingCache):
            raise TypeError("set_timing_cache(): incompatible function arguments")
        if cache.key != _cache_key() and not ignore_mismatch:
            self._builder.logger.log(Logger.ERROR, f"timing cache was built for {cache.key}, not {_cache_key()}")
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache


if _MAJOR < 10:
    IBuilderConfig.max_workspace_size = property(  # deprecated in 8.x, removed in 10.0
        lambda self: self._pools.get(0, 0), lambda self, v: self._pools.__setitem__(0, int(v)))


class Builder:
    """trt.Builder(logger). Raises TypeError without a CUDA device, like real TensorRT."""

    def __init__(self, logger: Logger) -> None:
        _cuda_or_fail(logger)
        self.logger = logger
        self.num_DLA_cores = int(os.environ.get("FAKE_TRT_DLA_CORES", "0"))
        self.max_DLA_batch_size = 4096
        self.platform_has_tf32 = True

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> HostMemory | None:
        from tensorrt.builder_checks import check_build, plan_header

        problem = check_build(self, network, config)
        if problem:
            self.logger.log(Logger.ERROR, problem)
            return None
        return HostMemory(_plan.encode(plan_header(self, network, config), network._onnx))


if _MAJOR < 11:  # deprecated 10.5, removed in 11.0
    Builder.platform_has_fast_fp16 = property(lambda self: True)
    Builder.platform_has_fast_int8 = property(lambda self: True)


from tensorrt.runtime import ICudaEngine, IExecutionContext, Runtime  # noqa: E402
