"""TensorRT on the device: engine building (builder), the child-process engine cache (engines) and the
inference backend (backend). Imports neither tensorrt nor cuda-python until a function needs them."""

from types import ModuleType

from alexnet_deploy.deploy.lazy import require


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or MissingDependency saying where TensorRT comes from on this kind of machine."""
    return require("tensorrt", package="TensorRT")
