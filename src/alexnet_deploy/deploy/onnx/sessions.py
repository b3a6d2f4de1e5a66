"""ONNX Runtime sessions, made in one place so export checks, calibration and the runtime all
run a model the same way (same providers, same graph optimizations, same quiet logging)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.errors import BundleError


def import_ort():
    """Import onnxruntime quietly; a missing install becomes one clear error."""
    ort = require("onnxruntime", package="onnxruntime")
    # onnxruntime-gpu logs an error for every session when CUDA libraries are absent; the
    # caller reports provider problems itself, so keep only fatal messages.
    ort.set_default_logger_severity(3)
    return ort


# Session settings for the CPU provider, measured (not guessed) with
# `benchmarks/cpu_latency.py --ort-tuning` on AlexNet-2012 at 227 px (fp32 and Q/DQ int8, batch 1
# and 32, 2-core Zen 4): ORT_ENABLE_ALL is required for int8 speed (its QDQ -> QLinearConv/QGemm
# fusions and NHWC layout run only at that level: BASIC/EXTENDED were 2-8x slower on int8);
# ORT_PARALLEL execution was slower at every batch (AlexNet is a chain, there is nothing to run
# side by side); the memory arena and memory-pattern planning are kept on (turning them off never
# helped). Spinning: see ALLOW_SPINNING.
#
# ORT's worker threads busy-wait ("spin") after each run by default. With other processes on the
# cores (any real device: camera capture, preprocessing threads; a shared CI box) that stole the
# cores from whoever needed them: batch-1 p50 with spinning off vs on, same run, 2 threads under
# load: fp32 26.0 vs 49.5 ms, int8 17.6 vs 35.0 ms. So it is off by default.
ALLOW_SPINNING = False


def session_options(threads: int | None = None, optimized_model_path: str | None = None, *,
                    spinning: bool | None = None):
    """SessionOptions with the measured CPU settings above and ``threads`` intra-op threads
    (None = ORT's default, one per physical core). ``spinning=False`` stops idle worker threads
    from busy-waiting between runs (None = ALLOW_SPINNING)."""
    ort = import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    if threads:
        options.intra_op_num_threads = int(threads)
    if not (ALLOW_SPINNING if spinning is None else spinning):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model_path:
        options.optimized_model_filepath = str(optimized_model_path)
    options.log_severity_level = 3
    return options


def cpu_session(model: str | os.PathLike | bytes, threads: int | None = None,
                providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An InferenceSession on the given providers (CPU by default)."""
    return load_session(model, session_options(threads), list(providers))


def load_session(model: str | os.PathLike | bytes, options, providers: list[str]):
    """ort.InferenceSession, with a model ORT cannot load (empty, not ONNX, a bad graph) reported as
    one BundleError naming the file instead of ORT's own exception types."""
    ort = import_ort()
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT's exception types are not importable by a stable name
        lines = str(exc).strip().splitlines()
        where = "the in-memory model" if isinstance(model, bytes) else Path(model).name
        raise BundleError(f"{where}: onnxruntime cannot load it ({lines[0][:300] if lines else type(exc).__name__}); "
                          "re-export the bundle") from exc


def run_batches(session, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run ``inputs`` (float32 NCHW) through a one-input, one-output session in batches."""
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: np.ascontiguousarray(inputs[i:i + batch_size], dtype=np.float32)})[0]
               for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outputs).astype(np.float32) if outputs else np.zeros((0, 0), np.float32)


def cpu_logits(model, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Logits of ``model`` (a path, serialized bytes or an ``onnx.ModelProto``) on ONNX Runtime's CPU provider."""
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return run_batches(cpu_session(source), inputs, batch_size=batch_size)


def semantic_session(model: str | os.PathLike | bytes):
    """A CPU session that computes what a Q/DQ model *means*, whatever this CPU's int8 kernels do.

    With graph optimizations off, ONNX Runtime runs QuantizeLinear / DequantizeLinear as the
    element-wise float operations the ONNX spec defines and every Conv/Gemm in fp32: no fusion into
    int8 kernels, so no VNNI / AVX2 / NEON code path and no 16-bit saturation. Its logits are the
    hardware-independent oracle that a device's int8 logits are judged against."""
    ort = import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return load_session(model, options, ["CPUExecutionProvider"])
