"""ONNX Runtime backend: the bundle's fp32/fp16/int8 ONNX on a provider chosen by name.

ONNX Runtime silently falls back to the CPU when a requested provider cannot start (its error
goes to a log the user never sees); this backend compares ``session.get_providers()`` with the
request and refuses the fallback, so a row labelled "cuda" was really run on CUDA.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from alexnet_deploy.deploy.backends.base import Backend
from alexnet_deploy.deploy.bundle import verify_artifact
from alexnet_deploy.deploy.platform.cpu import refuse_unsafe_int8
from alexnet_deploy.deploy.onnx.sessions import import_ort, load_session, session_options
from alexnet_deploy.deploy.platform.cuda import cuda_device_count
from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable

log = logging.getLogger(__name__)

PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

# What to do when a precision's ONNX is missing from the bundle.
_MAKE_HINT = {
    "fp32": "alexnet-deploy export CHECKPOINT --out BUNDLE",
    "fp16": "alexnet-deploy export CHECKPOINT --out BUNDLE --fp16",
    "int8": "alexnet-deploy calibrate BUNDLE --calib DIR",
}


class OrtBackend(Backend):
    """ONNX Runtime session over ``model[.fp16|.int8].onnx``; ``provider`` is cpu, cuda or tensorrt.

    An int8 model whose weights this CPU's kernels would saturate (see deploy/platform/cpu.py) is refused
    unless ``allow_unsafe_int8`` (for demonstrating the failure, e.g. against verify's oracle)."""

    name = "ort"

    def __init__(self, bundle: str | os.PathLike, precision: str = "fp32", *, provider: str = "cpu",
                 allow_unsafe_int8: bool = False, **options) -> None:
        options.pop("checkpoint", None)  # a pt-only option; accepted so load(..., checkpoint=) works on auto
        super().__init__(bundle, precision, **options)
        if provider not in PROVIDERS:
            raise AlexNetDeployError(f"unknown ONNX Runtime provider {provider!r}; expected one of {sorted(PROVIDERS)}")
        self.name = f"ort-{provider}" if provider != "cpu" else "ort"
        artifact = self.manifest.artifact(precision, "onnx")
        if artifact is None:
            raise BackendUnavailable(f"{self.bundle} has no {precision} ONNX artifact; make it with "
                                     f"`{_MAKE_HINT[precision]}`")
        path = verify_artifact(self.bundle, artifact)
        if precision == "int8" and provider == "cpu" and not allow_unsafe_int8:
            refuse_unsafe_int8(artifact, "ONNX Runtime")
        self.model_bytes = artifact.bytes
        self.session = self._open(path, PROVIDERS[provider])
        self.provider = self.session.get_providers()[0]
        self._input = self.session.get_inputs()[0].name

    def _open(self, path, wanted: str):
        ort = import_ort()
        if wanted not in ort.get_available_providers():
            raise BackendUnavailable(f"this onnxruntime ({ort.__version__}) has no {wanted}; "
                                     "install onnxruntime-gpu for CUDA/TensorRT providers")
        if wanted == "CPUExecutionProvider":
            return load_session(path, session_options(self.threads), [wanted])
        gpus, reason = cuda_device_count()
        if gpus == 0:
            # Asking ORT anyway would only print provider-load errors and fall back to the CPU.
            raise BackendUnavailable(f"{wanted} needs a CUDA GPU: {reason}")
        session = self._gpu_session(ort, path, wanted)
        active = session.get_providers()
        if active[0] != wanted:
            # ORT downgraded the request silently (e.g. CUDA libraries missing): say so instead.
            raise BackendUnavailable(f"onnxruntime could not start {wanted} (missing CUDA/cuDNN/TensorRT libraries?) "
                                     f"and fell back to {active[0]}")
        log.info("ort session on %s for %s", active, path.name)
        return session

    def _gpu_session(self, ort, path, wanted: str):
        # ORT logs provider-load failures at ERROR on its default logger and, with fallback on,
        # prints a banner to stdout; both are reported here as one reason instead.
        ort.set_default_logger_severity(4)
        try:
            return ort.InferenceSession(str(path), sess_options=session_options(self.threads),
                                        providers=[wanted, "CPUExecutionProvider"], enable_fallback=0)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types; keep the message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise BackendUnavailable(f"onnxruntime could not start {wanted}: {first}") from exc
        finally:
            ort.set_default_logger_severity(3)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: batch})[0]

    def close(self) -> None:
        self.session = None
