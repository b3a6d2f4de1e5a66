"""TensorRT backend: a plan from BUNDLE/engines/ through the named-tensor API (TRT 8.6 – 11).

Buffers follow NVIDIA's cuda-python sample pattern (docs/tensorrt.md, "Runtime"): pinned host buffers and
device buffers sized for the bundle's max batch, one non-default stream, ``set_input_shape`` +
``set_tensor_address`` + ``execute_async_v3``, then a stream sync. The engine's JSON sidecar is
checked against this machine's TensorRT version and GPU *before* deserializing, because a plan
only runs on the TensorRT build and GPU that made it, and a mismatch otherwise surfaces as a
``None`` engine with the reason buried in TensorRT's log.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_deploy.deploy.backends.base import Backend
from alexnet_deploy.deploy.bundle import safe_path, verify_artifact
from alexnet_deploy.deploy.bundle.files import sha256_file
from alexnet_deploy.deploy.platform.cuda import check as cuda_call
from alexnet_deploy.deploy.platform.cuda import gpu_info, import_cudart
from alexnet_deploy.deploy.trt import import_tensorrt
from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceFacts:
    """What an engine is tied to: the TensorRT version and the GPU (name, compute capability)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def device_facts(trt) -> DeviceFacts:
    """This machine's TensorRT version and GPU 0; BackendUnavailable when there is no GPU."""
    gpu = gpu_info()
    return DeviceFacts(str(trt.__version__), gpu.name, gpu.compute_capability)


def sidecar_facts(recorded: dict) -> DeviceFacts:
    """The facts an engine was built with, from its JSON sidecar (export.tensorrt writes
    ``tensorrt_version`` + ``gpu: {name, compute_capability}``) or a manifest ``built_with``
    (``tensorrt``/``gpu``/``compute_capability``, or build-engine's cache ``key``)."""
    recorded = {**recorded.get("key", {}), **recorded} if isinstance(recorded.get("key"), dict) else recorded
    gpu = recorded.get("gpu")
    gpu_name = gpu.get("name") if isinstance(gpu, dict) else (gpu or recorded.get("gpu_name"))
    cc = recorded.get("compute_capability") or (gpu.get("compute_capability") if isinstance(gpu, dict) else None)
    if isinstance(cc, (list, tuple)):
        cc = ".".join(str(v) for v in cc)
    version = recorded.get("tensorrt_version") or recorded.get("trt_version") or recorded.get("tensorrt")
    return DeviceFacts(str(version or "?"), str(gpu_name or "?"), str(cc or "?"))


# Cross-major loads a version-compatible plan supports (TensorRT support matrix; docs/tensorrt.md): TRT 8 VC plans on a TRT 10
# runtime and TRT 10 VC plans on TRT 11; within a major version, any newer runtime.
_VC_CROSS_MAJOR = {(8, 10), (10, 11)}


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0", "0"])[:2]
    return (int(parts[0]), int(parts[1])) if all(p.isdigit() for p in parts) else (-1, -1)


def engine_runs_here(built: DeviceFacts, here: DeviceFacts, version_compatible: bool = False) -> bool:
    """Same GPU and the exact TensorRT version; a version-compatible plan also loads on a newer one."""
    if (built.gpu_name, built.compute_capability) != (here.gpu_name, here.compute_capability):
        return False
    if built.tensorrt_version == here.tensorrt_version:
        return True
    old, new = _major_minor(built.tensorrt_version), _major_minor(here.tensorrt_version)
    return version_compatible and old <= new and (old[0] == new[0] or (old[0], new[0]) in _VC_CROSS_MAJOR)


def find_engine(bundle: Path, manifest, precision: str, here: DeviceFacts) -> tuple[Path, bool]:
    """(plan, version_compatible) for ``precision`` whose recorded TensorRT/GPU match ``here``;
    refuses with the rebuild command."""
    rebuild = f"alexnet-deploy build-engine {bundle} --{precision}"
    listed = [a for a in manifest.artifacts if a.kind == "trt-plan" and a.precision == precision]
    plans = [safe_path(bundle, a.file) for a in listed]
    plans += sorted(p.resolve() for p in (bundle / "engines").glob(f"{precision}-*.plan") if p.resolve() not in plans)
    if not plans:
        raise BackendUnavailable(f"no {precision} TensorRT engine in {bundle / 'engines'}; build it on this device "
                                 f"with `{rebuild}`")
    mismatches = []
    for plan in plans:
        artifact = next((a for a in listed if safe_path(bundle, a.file) == plan), None)
        sidecar = _read_sidecar(plan, required=artifact is None)
        recorded = sidecar or artifact.built_with
        built, vc = sidecar_facts(recorded), bool(recorded.get("version_compatible"))
        if engine_runs_here(built, here, vc):
            return (verify_artifact(bundle, artifact) if artifact else _verify_plan(plan, sidecar)), vc
        mismatches.append(f"{plan.name} was built with TensorRT {built.tensorrt_version} on {built.gpu_name} "
                          f"(sm {built.compute_capability})")
    raise BackendUnavailable(f"{'; '.join(mismatches)}; this is TensorRT {here.tensorrt_version} on {here.gpu_name} "
                             f"(sm {here.compute_capability}). Plans only run where they were built: `{rebuild}`")


def _verify_plan(plan: Path, sidecar: dict) -> Path:
    """A plan not listed in the manifest is checked against the sha256 in its sidecar."""
    expected = (sidecar.get("plan") or {}).get("sha256") if isinstance(sidecar.get("plan"), dict) else None
    if expected and sha256_file(plan) != expected:
        raise BackendUnavailable(f"{plan}: sha256 does not match its sidecar; the plan was modified or truncated")
    return plan


def _read_sidecar(plan: Path, required: bool) -> dict:
    for candidate in (plan.with_suffix(".json"), plan.with_name(plan.name + ".json")):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise BackendUnavailable(f"{candidate}: unreadable engine sidecar ({exc})") from exc
    if required:
        raise BackendUnavailable(f"{plan}: no JSON sidecar and no manifest entry, so its TensorRT version and GPU "
                                 f"are unknown; rebuild with `alexnet-deploy build-engine {plan.parent.parent}`")
    return {}


class _Buffers:
    """Pinned host + device memory for one tensor at max batch, freed in ``free()``."""

    def __init__(self, cudart, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.cudart, self.dtype = cudart, np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.host_ptr = cuda_call(cudart, cudart.cudaMallocHost(self.nbytes), "cudaMallocHost")
        self.device_ptr = cuda_call(cudart, cudart.cudaMalloc(self.nbytes), "cudaMalloc")
        raw = (ctypes.c_uint8 * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(raw, dtype=np.uint8).view(self.dtype).reshape(shape)

    def free(self) -> None:
        self.host = None
        cuda_call(self.cudart, self.cudart.cudaFreeHost(self.host_ptr), "cudaFreeHost")
        cuda_call(self.cudart, self.cudart.cudaFree(self.device_ptr), "cudaFree")


class TrtBackend(Backend):
    """A TensorRT plan built on this device for the bundle's ``precision`` (fp32/fp16/int8 ONNX)."""

    name = "trt"
    def __init__(self, bundle: str | os.PathLike, precision: str = "fp32", **options) -> None:
        for ignored in ("checkpoint", "provider", "allow_unsafe_int8"):
            options.pop(ignored, None)
        super().__init__(bundle, precision, **options)
        trt, cudart = import_tensorrt(), import_cudart()
        self.trt, self.cudart = trt, cudart
        self._buffers: dict[str, _Buffers] = {}
        self.stream = None
        here = device_facts(trt)
        plan, version_compatible = find_engine(self.bundle, self.manifest, precision, here)
        self.model_bytes = plan.stat().st_size
        self.engine = self._deserialize(plan, version_compatible)
        self.context = self.engine.create_execution_context()
        self._input, self._output = self._io_names()
        self._profile_max = self._profile_max_batch()
        try:
            self._allocate()
        except BaseException:
            self.close()  # free whatever was allocated before the failure
            raise
        self.provider = f"TensorRT {here.tensorrt_version} on {here.gpu_name}"

    @property
    def max_batch(self) -> int:
        """The smaller of the bundle's max batch and the engine profile's (build-engine --max-batch)."""
        return min(int(self.manifest.max_batch), self._profile_max)

    def _profile_max_batch(self) -> int:
        try:
            return int(self.engine.get_tensor_profile_shape(self._input, 0)[2][0])
        except (AttributeError, IndexError, TypeError, ValueError):  # no profile: a static engine
            shape = self.engine.get_tensor_shape(self._input)
            return int(shape[0]) if int(shape[0]) > 0 else int(self.manifest.max_batch)

    def _deserialize(self, plan: Path, version_compatible: bool):
        trt = self.trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        try:
            runtime = trt.Runtime(self._logger)
        except TypeError as exc:  # pybind "factory function returned nullptr": CUDA could not start
            raise BackendUnavailable(f"TensorRT runtime could not start CUDA: {exc}") from exc
        if version_compatible:
            # A version-compatible plan embeds the lean runtime, which TensorRT runs only when host
            # code is allowed; only plans whose sidecar says so (and whose checksum matched) get it.
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise BackendUnavailable(f"TensorRT refused {plan.name} (see its log above); rebuild it with "
                                     f"`alexnet-deploy build-engine {self.bundle} --{self.precision}`")
        self._runtime = runtime  # the engine must not outlive its runtime
        return engine

    def _io_names(self) -> tuple[str, str]:
        engine, trt = self.engine, self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise AlexNetDeployError(f"engine has inputs {inputs} and outputs {outputs}; expected one of each")
        return inputs[0], outputs[0]

    def _allocate(self) -> None:
        trt, cudart = self.trt, self.cudart
        self.stream = cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        in_shape = (self.max_batch, *self.input_shape)
        out_shape = (self.max_batch, self.num_classes)
        for name, shape in ((self._input, in_shape), (self._output, out_shape)):
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._buffers[name] = _Buffers(cudart, shape, dtype)
            # Addresses never change (buffers are sized for max batch), so they are set once.
            self.context.set_tensor_address(name, int(self._buffers[name].device_ptr))

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        cudart, n = self.cudart, batch.shape[0]
        src, dst = self._buffers[self._input], self._buffers[self._output]
        if not self.context.set_input_shape(self._input, tuple(batch.shape)):
            raise AlexNetDeployError(f"engine rejected input shape {batch.shape} (outside its optimization profile); "
                                     f"rebuild with `alexnet-deploy build-engine {self.bundle} --max-batch N`")
        src.host[:n] = batch  # casts to the engine's input dtype if it is fp16
        in_bytes = n * src.nbytes // self.max_batch
        out_bytes = n * dst.nbytes // self.max_batch
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(cudart, cudart.cudaMemcpyAsync(src.device_ptr, src.host_ptr, in_bytes, h2d, self.stream), "H2D copy")
        if not self.context.execute_async_v3(self.stream):
            raise AlexNetDeployError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        cuda_call(cudart, cudart.cudaMemcpyAsync(dst.host_ptr, dst.device_ptr, out_bytes, d2h, self.stream), "D2H copy")
        self.synchronize()
        return np.array(dst.host[:n], dtype=np.float32)

    def synchronize(self) -> None:
        if self.stream is not None:
            cuda_call(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for buffers in getattr(self, "_buffers", {}).values():
            buffers.free()
        self._buffers = {}
        if getattr(self, "stream", None) is not None:
            cuda_call(self.cudart, self.cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None
        self.context = self.engine = None
