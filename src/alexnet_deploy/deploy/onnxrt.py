"""ONNX Runtime sessions, made in one place so export checks, calibration and the runtime all
run a model the same way (same providers, same graph optimizations, same quiet logging)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from alexnet_deploy.errors import MissingDependency

_INSTALL_HINT = "pip install 'alexnet-deploy[ort]' (onnxruntime-gpu on Linux x86_64, onnxruntime elsewhere)"


def import_ort():
    """Import onnxruntime quietly; a missing install becomes one clear error."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependency(f"onnxruntime is not installed: {_INSTALL_HINT}") from exc
    # onnxruntime-gpu logs an error for every session when CUDA libraries are absent; the
    # caller reports provider problems itself, so keep only fatal messages.
    ort.set_default_logger_severity(3)
    return ort


def session_options(threads: int | None = None, optimized_model_path: str | None = None):
    """SessionOptions with full graph optimization and ``threads`` intra-op threads (None = ORT default)."""
    ort = import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    if optimized_model_path:
        options.optimized_model_filepath = str(optimized_model_path)
    options.log_severity_level = 3
    return options


def cpu_session(model: str | os.PathLike | bytes, threads: int | None = None,
                providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An InferenceSession on the given providers (CPU by default)."""
    ort = import_ort()
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=session_options(threads), providers=list(providers))


def run_batches(session, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run ``inputs`` (float32 NCHW) through a one-input, one-output session in batches."""
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: np.ascontiguousarray(inputs[i:i + batch_size], dtype=np.float32)})[0]
               for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outputs).astype(np.float32) if outputs else np.zeros((0, 0), np.float32)
