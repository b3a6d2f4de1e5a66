"""OpenVINO backend (optional, ``pip install 'alexnet-deploy[ov]'``): the bundle's own ONNX on the CPU.

It reads the same fp32 / fp16 / Q/DQ int8 ONNX files as the ``ort`` backend, so a user comparing
us with OpenVINO compares runtimes, not models. Two OpenVINO defaults are overridden on purpose:

- ``INFERENCE_PRECISION_HINT``: on CPUs with AVX512-BF16 (e.g. Zen 4) OpenVINO silently runs an
  fp32 model in bf16, which changes the logits by ~1e-2. We ask for f32 unless the caller passes
  ``inference_precision="bf16"``, so the "fp32" row means fp32.
- LRN: OpenVINO's own LRN kernel is faster than the banded-conv formulation that makes ONNX Runtime
  fast (batch 1 int8 8.0 vs 10.9 ms, batch 32 168 vs 184 ms in benchmarks/cpu_latency.py), so with
  ``lrn="native"`` (the default) a bundle exported with ``--lrn conv`` gets its native ``LRN`` nodes
  back before compiling (deploy/onnx/lrn.py restore_lrn; same numbers). Needs the ``onnx`` package;
  without it the model runs as exported.
- Dynamic batch: the ONNX has a dynamic batch axis; a model compiled for a static shape runs faster
  on the CPU plugin, so one compiled model is kept per batch size seen (compiled on first use, at
  most MAX_COMPILED at once).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from alexnet_deploy.deploy.backends.base import Backend
from alexnet_deploy.deploy.bundle import verify_artifact
from alexnet_deploy.deploy.platform.cpu import refuse_unsafe_int8
from alexnet_deploy.deploy.onnx.lrn import PREFIX, restore_lrn
from alexnet_deploy.deploy.lazy import optional, require
from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable

log = logging.getLogger(__name__)

HINTS = ("latency", "throughput")
LRN_CHOICES = ("native", "as-exported")
INFERENCE_PRECISIONS = ("f32", "bf16")
# Compiled models kept at once (one per batch size; the oldest is dropped first).
MAX_COMPILED = 4


def import_openvino():
    """Import openvino; a missing install becomes MissingDependency naming the extra."""
    return require("openvino", package="openvino")


class OvBackend(Backend):
    """OpenVINO on the CPU over ``model[.fp16|.int8].onnx``.

    ``hint``: OpenVINO performance hint ("latency" = one stream, all threads on one request);
    ``threads``: INFERENCE_NUM_THREADS (None = OpenVINO's choice); ``inference_precision``:
    "f32" (default, exact) or "bf16" (faster on CPUs with bf16 units, less exact). An int8 model
    this CPU's kernels would saturate is refused unless ``allow_unsafe_int8`` (see deploy/platform/cpu.py).
    """

    name = "ov"

    def __init__(self, bundle: str | os.PathLike, precision: str = "fp32", *, hint: str = "latency",
                 inference_precision: str = "f32", lrn: str = "native", allow_unsafe_int8: bool = False,
                 **options) -> None:
        options.pop("checkpoint", None)  # pt-only, accepted so load(..., checkpoint=) works everywhere
        options.pop("provider", None)    # ort-only; OpenVINO here always runs on its CPU device
        super().__init__(bundle, precision, **options)
        if hint not in HINTS:
            raise AlexNetDeployError(f"unknown OpenVINO hint {hint!r}; expected one of {', '.join(HINTS)}")
        if lrn not in LRN_CHOICES:
            raise AlexNetDeployError(f"unknown ov LRN choice {lrn!r}; expected one of {', '.join(LRN_CHOICES)}")
        if inference_precision not in INFERENCE_PRECISIONS:
            raise AlexNetDeployError(f"unknown OpenVINO inference precision {inference_precision!r}; "
                                     f"expected one of {', '.join(INFERENCE_PRECISIONS)}")
        ov = import_openvino()
        artifact = self.manifest.artifact(precision, "onnx")
        if artifact is None:
            raise BackendUnavailable(f"{self.bundle} has no {precision} ONNX artifact for the ov backend")
        path = verify_artifact(self.bundle, artifact)
        if precision == "int8" and not allow_unsafe_int8:
            refuse_unsafe_int8(artifact, "OpenVINO")
        self.model_bytes = artifact.bytes
        self._core = ov.Core()
        if "CPU" not in self._core.available_devices:
            raise BackendUnavailable(f"OpenVINO {ov.__version__} sees no CPU device")
        self._config = self._compile_config(hint, inference_precision)
        try:
            self._model = self._core.read_model(_model_source(path, lrn))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with the reason
            raise BackendUnavailable(f"OpenVINO could not read {path.name}: {exc}") from exc
        self._requests: dict[int, object] = {}
        self.provider = f"openvino-{ov.__version__.split('-')[0]} CPU {inference_precision}"

    def _compile_config(self, hint: str, inference_precision: str) -> dict:
        config = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": inference_precision}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def _request(self, batch: int):
        """An infer request on a model compiled for exactly ``batch`` images (compiled once, kept)."""
        request = self._requests.get(batch)
        if request is None:
            model = self._model.clone()
            model.reshape({model.inputs[0].get_any_name(): [batch, *self.input_shape]})
            try:
                compiled = self._core.compile_model(model, "CPU", self._config)
            except Exception as exc:  # noqa: BLE001 - keep OpenVINO's message, in our error family
                raise BackendUnavailable(f"OpenVINO could not compile the {self.precision} model: {exc}") from exc
            request = compiled.create_infer_request()
            if len(self._requests) >= MAX_COMPILED:  # each holds its own copy of the weights
                self._requests.pop(next(iter(self._requests)))
            self._requests[batch] = request
            log.info("ov: compiled %s for batch %d with %s", self.precision, batch, self._config)
        return request

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        request = self._request(batch.shape[0])
        request.infer({0: batch})
        # The output tensor's memory is reused by the next infer(): copy it out.
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def close(self) -> None:
        self._requests = {}
        self._model = None


def _model_source(path, lrn: str):
    """What OpenVINO reads: the file, or (``lrn="native"`` and a rewritten LRN inside) the ONNX bytes
    with native LRN nodes restored."""
    if lrn != "native":
        return str(path)
    onnx = optional("onnx")
    if onnx is None:
        log.info("ov: onnx is not installed; running %s with its LRN as exported", path.name)
        return str(path)
    model = onnx.load(str(path))
    if not any(node.name.startswith(PREFIX) for node in model.graph.node):
        return str(path)
    log.info("ov: restoring native LRN nodes in %s (faster on OpenVINO)", path.name)
    return restore_lrn(model).SerializeToString()
