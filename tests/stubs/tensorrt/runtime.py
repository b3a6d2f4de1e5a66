"""STAND-IN runtime half of TensorRT (NOT TensorRT): Runtime, ICudaEngine, IExecutionContext.

Name-based I/O API of 8.5+/10.x/11.x (docs/tensorrt.md, "Runtime"): ``num_io_tensors``,
``get_tensor_name/mode/shape/dtype``, ``get_tensor_profile_shape``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``. "Device" addresses come from the fake cuda-python
(ordinary host memory), so ``execute_async_v3`` reads the input at its address, runs the plan's
embedded ONNX model with ONNX Runtime on the CPU and writes the real logits at the output address.
That lets runtime tests check numbers and buffer handling end to end; it cannot prove anything
about GPU kernels, precision on a GPU, asynchrony or speed.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

import tensorrt as trt
from tensorrt import _plan


class Runtime:
    """trt.Runtime(logger). ``engine_host_code_allowed`` must be True for version-compatible plans."""

    def __init__(self, logger) -> None:
        trt._cuda_or_fail(logger)
        self.logger = logger
        self.engine_host_code_allowed = False
        self.DLA_core = -1

    def deserialize_cuda_engine(self, serialized_engine) -> "ICudaEngine | None":
        decoded = _plan.decode(bytes(serialized_engine))
        if decoded is None:
            self.logger.log(trt.Logger.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                              "(magic tag does not match)")
            return None
        header, onnx_bytes = decoded
        problem = self._compatibility(header)
        if problem:
            self.logger.log(trt.Logger.ERROR, problem)
            return None
        return ICudaEngine(header, onnx_bytes, self.logger)

    def _compatibility(self, header: dict) -> str:
        if header["version_compatible"]:
            if not self.engine_host_code_allowed:
                return "Version-compatible plan: set runtime.engine_host_code_allowed = True to deserialize it."
            newer_or_same = tuple(map(int, trt.__version__.split(".")[:2])) >= tuple(
                map(int, header["trt_version"].split(".")[:2]))
            return "" if newer_or_same else "Version-compatible plans load only on the same or a newer TensorRT."
        if header["trt_version"] != trt.__version__:
            return (f"The engine plan file is not compatible with this version of TensorRT, expecting library "
                    f"version {trt.__version__} got {header['trt_version']}, please rebuild.")
        if header["device"] != trt._device_key():
            return f"The engine plan was built for {header['device']}, not {trt._device_key()}; please rebuild."
        return ""


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes, logger=None) -> None:
        self.header, self._onnx, self.logger = header, onnx_bytes, logger or trt.Logger()
        self._io = [(t, trt.TensorIOMode.INPUT) for t in header["inputs"]] + \
                   [(t, trt.TensorIOMode.OUTPUT) for t in header["outputs"]]
        self.name = "stand-in-engine"

    num_io_tensors = property(lambda self: len(self._io))
    num_optimization_profiles = property(lambda self: len(self.header["profiles"]))
    num_layers = property(lambda self: 1)

    def _tensor(self, name: str) -> tuple[dict, object]:
        for tensor, mode in self._io:
            if tensor["name"] == name:
                return tensor, mode
        raise KeyError(f"no I/O tensor named {name!r}")

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]["name"]

    def get_tensor_mode(self, name: str):
        try:
            return self._tensor(name)[1]
        except KeyError:
            return trt.TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensor(name)[0]["shape"])

    def get_tensor_dtype(self, name: str):
        return trt.DataType[self._tensor(name)[0]["dtype"]]

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        return [tuple(s) for s in self.header["profiles"][profile_index][name]]

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)

    def serialize(self) -> "trt.HostMemory":
        return trt.HostMemory(_plan.encode(self.header, self._onnx))

    @property
    def device_memory_size_v2(self) -> int:
        return 1 << 20


if trt._MAJOR < 11:
    ICudaEngine.device_memory_size = property(lambda self: 1 << 20)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._session = None

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
        self._shapes[name] = shape
        return True

    def _batch(self) -> int:
        return next(iter(self._shapes.values()))[0] if self._shapes else -1

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self._shapes:
            return self._shapes[name]
        return tuple(self._batch() if d == -1 else d for d in self.engine.get_tensor_shape(name))

    @property
    def all_input_dimensions_specified(self) -> bool:
        return all(t["name"] in self._shapes for t in self.engine.header["inputs"])

    def infer_shapes(self) -> list[str]:
        return [t["name"] for t in self.engine.header["inputs"] if t["name"] not in self._shapes]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self.engine.get_tensor_mode(name) == trt.TensorIOMode.NONE:
            return False
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def _array(self, name: str) -> np.ndarray:
        shape = self.get_tensor_shape(name)
        dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
        raw = (ctypes.c_byte * (int(np.prod(shape)) * dtype.itemsize)).from_address(self._addresses[name])
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def execute_async_v3(self, stream_handle) -> bool:
        """Run the embedded ONNX with ONNX Runtime (CPU); False when shapes/addresses are missing."""
        names = [t["name"] for t in self.engine.header["inputs"] + self.engine.header["outputs"]]
        if not self.all_input_dimensions_specified or any(n not in self._addresses for n in names):
            self.engine.logger.log(trt.Logger.ERROR, "IExecutionContext::enqueueV3: set every input shape and "
                                                     "tensor address first")
            return False
        if self._session is None:
            import onnxruntime as ort

            ort.set_default_logger_severity(3)
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(os.environ.get("FAKE_TRT_THREADS", "1"))
            self._session = ort.InferenceSession(self.engine._onnx, options, providers=["CPUExecutionProvider"])
        feeds = {t["name"]: np.array(self._array(t["name"])) for t in self.engine.header["inputs"]}
        results = self._session.run(None, feeds)
        for tensor, value in zip(self.engine.header["outputs"], results):
            self._array(tensor["name"])[...] = value
        return True
