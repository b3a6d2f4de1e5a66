"""CUDA through cuda-python: the one place that imports it and unwraps its ``(err, *values)`` results.

cuda-python's runtime module moved from ``cuda.cudart`` (before 12.6; what JetPack 5/6 ship) to
``cuda.bindings.runtime`` (12.6+, the only one in 13.x); both are accepted. Every call returns an
error code first; :func:`check` turns a failure into BackendUnavailable, which callers report as
"not available here" rather than as a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.errors import BackendUnavailable, MissingDependency


def import_cudart() -> ModuleType:
    """cuda-python's runtime module, or MissingDependency saying how to install it."""
    return require("cuda.bindings.runtime", "cuda.cudart", package="cuda-python")


def check(cudart: ModuleType, result: Any, what: str) -> Any:
    """The value(s) of a cuda-python call: one value, a tuple of several, or None; an error raises."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendUnavailable(f"CUDA {what} failed: {getattr(err, 'name', err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device: what engines are built for and what reports record."""

    name: str
    compute_capability: str  # "8.7"
    cuda_runtime: int | None = None
    cuda_driver: int | None = None
    integrated: bool = False  # shares system memory (Jetson)

    @property
    def sm(self) -> str:
        return self.compute_capability.replace(".", "")


def _version(cudart: ModuleType, call) -> int | None:
    err, value = call()
    return int(value) if err == cudart.cudaError_t.cudaSuccess else None


def device_count(cudart: ModuleType) -> int:
    """How many CUDA GPUs there are; without a driver (cudaErrorInsufficientDriver) that is an error."""
    try:
        return int(check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"no CUDA GPU ({exc})") from exc


def gpu_info(device: int = 0) -> GpuInfo:
    """Name, compute capability and CUDA versions of ``device`` (BackendUnavailable without a GPU)."""
    cudart = import_cudart()
    count = device_count(cudart)
    if not count:
        raise BackendUnavailable("no CUDA GPU found (cudaGetDeviceCount = 0)")
    if count <= device:
        raise BackendUnavailable(f"no CUDA device {device}: {count} device(s) found")
    props = check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name=name.strip("\x00 "), compute_capability=f"{props.major}.{props.minor}",
                   cuda_runtime=_version(cudart, cudart.cudaRuntimeGetVersion),
                   cuda_driver=_version(cudart, cudart.cudaDriverGetVersion),
                   integrated=bool(getattr(props, "integrated", 0)))


def cuda_device_count() -> tuple[int | None, str]:
    """(number of CUDA GPUs, reason when 0); (None, reason) when cuda-python is not installed."""
    try:
        cudart = import_cudart()
    except MissingDependency as exc:
        return None, str(exc)
    try:
        count = device_count(cudart)
    except BackendUnavailable as exc:   # cudaErrorNoDevice, or no driver (cudaErrorInsufficientDriver)
        return 0, str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install is a reason, not a crash
        return 0, f"cudaGetDeviceCount raised {exc.__class__.__name__}: {exc}"
    return count, "" if count else "no CUDA GPU (cudaGetDeviceCount = 0)"


def _dotted(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def gpu_facts() -> dict[str, Any]:
    """GPU 0's name, compute capability and CUDA versions for a report, or why they are unknown."""
    try:
        count = device_count(import_cudart())
        gpu = gpu_info() if count else None
    except (BackendUnavailable, MissingDependency) as exc:
        return {"gpu": None, "gpu_reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - facts are best effort; the reason is recorded
        return {"gpu": None, "gpu_reason": f"{exc.__class__.__name__}: {exc}"}
    if gpu is None:
        return {"gpu": None, "gpu_reason": "no CUDA GPU (cudaGetDeviceCount = 0)"}
    facts: dict[str, Any] = {"gpu": gpu.name, "compute_capability": gpu.compute_capability, "gpu_count": count}
    for key, version in (("cuda_runtime", gpu.cuda_runtime), ("cuda_driver", gpu.cuda_driver)):
        if version is not None:
            facts[key] = _dotted(version)
    return facts
