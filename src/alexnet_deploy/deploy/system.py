"""System facts recorded with every bench report, so two reports can be compared honestly.

Package versions come from installed metadata (no heavy import). The GPU is asked through
cuda-python when it is installed; on a Jetson the power mode (``nvpmodel -q``) and whether clocks
are pinned (min == max frequency, what ``jetson_clocks`` does) are added when readable, because
Jetson latency depends on them (anchors pain point #9).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from alexnet_deploy.errors import MissingDependency

log = logging.getLogger(__name__)

_PACKAGES = ("alexnet-deploy", "numpy", "onnxruntime-gpu", "onnxruntime", "tensorrt", "cuda-python", "cuda-bindings",
             "torch", "Pillow")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that change bench numbers (absent ones are left out)."""
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def import_cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (12.6+/13.x) or legacy ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 (JetPack 5/6 era); removed in 13.0
        except ImportError as exc:
            raise MissingDependency("cuda-python is not installed: pip install 'alexnet-deploy[jetson]' "
                                    "(cuda-python matching the CUDA major version)") from exc
    return cudart


def cuda_device_count() -> tuple[int | None, str]:
    """(number of CUDA GPUs, reason when 0); (None, reason) when cuda-python is not installed."""
    try:
        cudart = import_cudart()
    except MissingDependency as exc:
        return None, str(exc)
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install is a reason, not a crash
        return 0, f"cudaGetDeviceCount raised {exc.__class__.__name__}: {exc}"
    if err != cudart.cudaError_t.cudaSuccess:
        return 0, f"no CUDA GPU ({getattr(err, 'name', err)})"
    return int(count), "" if count else "no CUDA GPU (cudaGetDeviceCount = 0)"


def gpu_facts() -> dict[str, Any]:
    """GPU name, compute capability and CUDA versions via cuda-python, or why they are unknown."""
    try:
        cudart = import_cudart()
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or not count:
            return {"gpu": None, "gpu_reason": f"no CUDA GPU ({getattr(err, 'name', err)})"}
        err, props = cudart.cudaGetDeviceProperties(0)
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        facts = {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}", "gpu_count": count}
        for key, call in (("cuda_runtime", cudart.cudaRuntimeGetVersion), ("cuda_driver", cudart.cudaDriverGetVersion)):
            err, version = call()
            if err == cudart.cudaError_t.cudaSuccess:
                facts[key] = f"{version // 1000}.{version % 1000 // 10}"
        return facts
    except Exception as exc:  # noqa: BLE001 - facts are best effort; the reason is recorded
        return {"gpu": None, "gpu_reason": f"{exc.__class__.__name__}: {exc}"}


def jetson_facts() -> dict[str, Any]:
    """L4T release, nvpmodel power mode and clock locking on a Jetson; {} elsewhere."""
    release = Path("/etc/nv_tegra_release")
    if not release.is_file():
        return {}
    facts: dict[str, Any] = {"l4t": release.read_text(errors="replace").splitlines()[0].strip("# ").strip()}
    if shutil.which("nvpmodel"):
        try:
            out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5)
            facts["power_mode"] = " ".join(out.stdout.split()) or out.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            facts["power_mode"] = f"unreadable: {exc}"
    facts["clocks_locked"] = clocks_locked()
    return facts


def clocks_locked() -> bool | None:
    """True when every readable CPU/GPU frequency range is pinned (min == max); None if unreadable."""
    cpus = Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")
    pairs = [(p / "scaling_min_freq", p / "scaling_max_freq") for p in cpus]
    pairs += [(p / "min_freq", p / "max_freq") for p in Path("/sys/class/devfreq").glob("*")]
    seen = []
    for low, high in pairs:
        try:
            seen.append(low.read_text().strip() == high.read_text().strip())
        except OSError:
            continue
    return all(seen) if seen else None


def system_facts(threads: int | None = None) -> dict[str, Any]:
    """Everything bench records about the machine: CPU, threads, versions, GPU, Jetson state."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    facts: dict[str, Any] = {
        "hostname": platform.node(), "os": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_usable": usable, "threads": threads,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "packages": package_versions(),
    }
    facts.update(gpu_facts())
    facts.update(jetson_facts())
    return facts
