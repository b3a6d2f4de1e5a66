"""The int8 golden vectors: what the Q/DQ model means on the bundle's golden inputs.

``reference.npz`` holds the torch logits, which an int8 model only approximates (its agreement
with fp32 is information, not a pass/fail test of a device). ``reference.int8.npz`` holds the
logits of the int8 model's own semantics (deploy.onnx.sessions.semantic_session: Q/DQ as float ops, no
int8 kernels), computed here at calibration time. A device's int8 logits must match these
tightly; a CPU whose int8 kernels saturate or round differently fails, whatever the model's
accuracy. The file carries the sha256 of the int8 model it belongs to, so a stale pair is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from alexnet_deploy.deploy.bundle import Artifact, Manifest, make_artifact, verify_artifact
from alexnet_deploy.deploy.bundle.npz import load_npz
from alexnet_deploy.deploy.bundle.files import atomic_path
from alexnet_deploy.deploy.onnx.sessions import run_batches, semantic_session
from alexnet_deploy.deploy.evaluate.verify import INT8_REFERENCE_FILE, REFERENCE_FILE
from alexnet_deploy.errors import BundleError

log = logging.getLogger(__name__)


def int8_reference_logits(bundle: Path, manifest: Manifest, model: Path) -> np.ndarray | None:
    """The Q/DQ ``model``'s own logits on the bundle's golden inputs (None when the bundle has no
    ``reference.npz`` to take them from)."""
    reference = next((a for a in manifest.artifacts if a.kind == "npz" and a.file == REFERENCE_FILE), None)
    if reference is None:
        log.warning("%s has no %s: no int8 golden vectors written; re-export to get them", bundle, REFERENCE_FILE)
        return None
    data = load_npz(verify_artifact(bundle, reference))
    if "inputs" not in data:
        raise BundleError(f"{reference.file}: no 'inputs' array; re-export the bundle")
    inputs = data["inputs"].astype(np.float32)
    return run_batches(semantic_session(model), inputs, batch_size=max(1, manifest.max_batch)).astype(np.float32)


def write_int8_reference(bundle: Path, logits: np.ndarray, int8: Artifact) -> Artifact:
    """Write ``reference.int8.npz`` (the logits and the sha256 of the model they belong to) and
    return its manifest entry."""
    with atomic_path(bundle / INT8_REFERENCE_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, logits=logits, model_sha256=np.array(int8.sha256))
    return make_artifact(bundle, INT8_REFERENCE_FILE, "npz", "int8",
                         {"oracle": "onnxruntime, graph optimizations off (Q/DQ as float ops)",
                          "model": int8.file, "model_sha256": int8.sha256, "n": len(logits)})
