"""Optional dependencies, imported only when a feature needs them, with one clear error naming what to install.

The runtime's base install is numpy, Pillow, click and rich; everything else (onnxruntime, OpenVINO,
TensorRT, cuda-python, torch, matplotlib, ...) is an extra. Every module imports those through
:func:`require` (or :func:`optional` where a feature degrades instead of failing), so the advice a
user sees for a missing package is written once, here.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from alexnet_deploy.errors import MissingDependency

_ORT = "pip install 'alexnet-deploy[ort]' (onnxruntime-gpu on Linux x86_64, onnxruntime elsewhere)"
#: How to get each optional package (keyed by the name users know it by).
INSTALL: dict[str, str] = {
    "onnx": _ORT,
    "onnxruntime": _ORT,
    "openvino": "pip install 'alexnet-deploy[ov]'",
    "TensorRT": ("on a Jetson use JetPack's python3-libnvinfer (make the venv with --system-site-packages); "
                 "on x86 pip install 'alexnet-deploy[tensorrt]'"),
    "cuda-python": "pip install 'alexnet-deploy[jetson]' (cuda-python matching the CUDA major version)",
    "torch": "pip install 'alexnet-deploy[train]'",
    "matplotlib": "pip install matplotlib (or the [train] extra)",
    "tensorboard": "pip install 'alexnet-deploy[tensorboard]'",
    "wandb": "pip install 'alexnet-deploy[wandb]'",
    "tritonclient": "pip install 'tritonclient[grpc]'",
}


def require(*modules: str, package: str, needed_for: str = "") -> ModuleType:
    """The first of ``modules`` that imports; MissingDependency naming ``package`` and how to install it
    when none does. Several names cover a package whose module moved between releases."""
    error: ImportError | None = None
    for name in modules:
        try:
            return import_module(name)
        except ImportError as exc:
            error = exc
    purpose = f" ({needed_for} needs it)" if needed_for else ""
    raise MissingDependency(f"{package} is not installed{purpose}: {INSTALL.get(package, f'pip install {package}')}"
                            ) from error


def optional(module: str) -> ModuleType | None:
    """``module`` when it imports, else None: for features that fall back rather than fail."""
    try:
        return import_module(module)
    except ImportError:
        return None
