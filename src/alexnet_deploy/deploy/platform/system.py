"""System facts recorded with every bench report, so two reports can be compared honestly.

Package versions come from installed metadata (no heavy import). The GPU is asked through
cuda-python when it is installed; on a Jetson the model, L4T release, power mode (``nvpmodel -q``),
CPU/GPU clocks and whether they are pinned (min == max frequency, what ``jetson_clocks`` does) are
added when readable, because Jetson latency depends on them.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from alexnet_deploy.deploy.platform.cpu import detect as detect_cpu
from alexnet_deploy.deploy.platform.cuda import gpu_facts

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


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (by default the packages that change bench numbers); absent
    ones are left out."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def mem_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (memory the kernel can hand out without swapping), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class JetsonPaths:
    """Where the Jetson facts are read from. The defaults are a Jetson's own; tests point them at
    sample files (``under(root)``) and ``nvpmodel`` at a program printing a sample output."""

    release: Path = Path("/etc/nv_tegra_release")
    model: Path = Path("/proc/device-tree/model")
    cpu: Path = Path("/sys/devices/system/cpu")
    devfreq: Path = Path("/sys/class/devfreq")
    nvpmodel: tuple[str, ...] = ("nvpmodel", "-q")

    @classmethod
    def under(cls, root: str | os.PathLike, nvpmodel: tuple[str, ...] = ("nvpmodel", "-q")) -> "JetsonPaths":
        """The same files below ``root`` instead of ``/``."""
        root = Path(root)
        return cls(**{f.name: root / str(f.default).lstrip("/") for f in fields(cls) if f.name != "nvpmodel"},
                   nvpmodel=nvpmodel)


def jetson_facts(paths: JetsonPaths | None = None) -> dict[str, Any]:
    """On a Jetson: model, L4T release, nvpmodel power mode, CPU/GPU clocks and whether they are
    locked (min == max, what ``jetson_clocks`` does); {} elsewhere. Jetson latency depends on all of
    them, so a bench report without them cannot be compared with another."""
    paths = paths or JetsonPaths()
    release, model = _read(paths.release), _read(paths.model).rstrip("\x00").strip()
    # Any ARM board has a device-tree model; a Jetson's names NVIDIA. Containers may lack the release file.
    if not release and not (model.startswith("NVIDIA") or "Jetson" in model):
        return {}
    facts: dict[str, Any] = {"jetson_model": model or None, **parse_tegra_release(release)}
    facts.update(nvpmodel_mode(paths.nvpmodel))
    clocks = jetson_clocks(paths.cpu, paths.devfreq)
    facts["cpus_online"] = _read(paths.cpu / "online").strip() or None
    facts["clocks_mhz"] = clocks
    facts["clocks_locked"] = all(c["min"] == c["max"] for c in clocks.values()) if clocks else None
    return facts


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


_RELEASE = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<revision>[\d.]+)")


def parse_tegra_release(text: str) -> dict[str, Any]:
    """``/etc/nv_tegra_release``'s first line, e.g. ``# R36 (release), REVISION: 4.3, GCID: ..., BOARD:
    generic, EABI: aarch64, DATE: ...`` -> l4t 36.4.3 (the version JetPack's tables use)."""
    lines = text.strip().splitlines()
    if not lines:
        return {}
    first = lines[0].strip()
    match = _RELEASE.match(first)
    fields_ = dict(part.split(": ", 1) for part in first.lstrip("# ").split(", ") if ": " in part)
    return {"l4t": f"{match['major']}.{match['revision']}" if match else None, "l4t_release": first,
            "l4t_board": fields_.get("BOARD")}


def parse_nvpmodel(output: str) -> dict[str, Any]:
    """``nvpmodel -q`` prints ``NV Power Mode: <name>`` and the mode id on the next line (warnings such
    as ``NVPM WARN: ...`` may come first)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("NV Power Mode:"):
            mode_id = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].isdigit() else None
            return {"power_mode": line.split(":", 1)[1].strip(), "power_mode_id": int(mode_id) if mode_id else None}
    return {}


def nvpmodel_mode(command: tuple[str, ...]) -> dict[str, Any]:
    """The current power mode, or why it is unknown (nvpmodel missing, failing or unparsable)."""
    if not shutil.which(command[0]):
        return {"power_mode": None, "power_mode_reason": f"{command[0]} not found"}
    try:
        proc = subprocess.run(list(command), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"power_mode": None, "power_mode_reason": f"{' '.join(command)}: {exc}"}
    parsed = parse_nvpmodel(proc.stdout)
    if not parsed:
        said = " ".join((proc.stdout + proc.stderr).split())[:200]
        return {"power_mode": None, "power_mode_reason": f"{' '.join(command)} exit {proc.returncode}: {said}"}
    return parsed


def jetson_clocks(cpu_dir: Path, devfreq_dir: Path) -> dict[str, dict[str, float]]:
    """Current/min/max MHz of each online CPU (cpufreq, kHz) and each devfreq device (Hz; the GPU is
    ``17000000.ga10b`` on Orin, ``17000000.gv11b`` on Xavier)."""
    clocks = {}
    for policy in sorted(cpu_dir.glob("cpu[0-9]*/cpufreq"), key=lambda p: int(p.parent.name[3:])):
        freq = _freqs(policy, ("scaling_cur_freq", "scaling_min_freq", "scaling_max_freq"), 1e3)
        if freq:
            clocks[policy.parent.name] = freq
    for device in sorted(devfreq_dir.glob("*")):
        freq = _freqs(device, ("cur_freq", "min_freq", "max_freq"), 1e6)
        if freq:
            clocks[device.name] = freq
    return clocks


def _freqs(folder: Path, names: tuple[str, str, str], per_mhz: float) -> dict[str, float] | None:
    try:
        values = [int((folder / name).read_text().strip()) / per_mhz for name in names]
    except (OSError, ValueError):
        return None
    return dict(zip(("cur", "min", "max"), values))


def system_facts(threads: int | None = None, jetson: JetsonPaths | None = None) -> dict[str, Any]:
    """Everything bench records about the machine: CPU, threads, versions, GPU, Jetson state."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    facts: dict[str, Any] = {
        "hostname": platform.node(), "os": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_model(), "cpu_features": detect_cpu().to_dict(), "cpu_count": os.cpu_count(), "cpu_usable": usable, "threads": threads,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "packages": package_versions(),
    }
    facts.update(gpu_facts())
    facts.update(jetson_facts(jetson))
    return facts
