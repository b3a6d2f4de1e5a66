"""Conformance: every backend that can run here gives the reference's answers through one API.

Reference = the exporter's torch logits in reference.npz (32 generated inputs at 64 px). Each
backend must give the same top-1 and logits within its precision's tolerance at batch 1, 3 and
the bundle's max batch, and refuse a bad batch with one clear error. The trt backend runs against
the stand-in tensorrt + cuda-python modules (tests/stubs), which prove the API calls and buffer
handling, not that real TensorRT accepts the model or how fast it is.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import runtime_bundle
from alexnet_deploy.deploy import Prediction, load
from alexnet_deploy.deploy.backend import TOLERANCE, Backend, resolve_backend
from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable, BundleError

CASES = [
    pytest.param("pt", "fp32", id="pt-fp32"),
    pytest.param("ort", "fp32", id="ort-fp32"),
    pytest.param("ort", "fp16", id="ort-fp16"),
    pytest.param("ort", "int8", id="ort-int8", marks=pytest.mark.slow),
]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return runtime_bundle.bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def reference(bundle):
    with np.load(bundle / "reference.npz", allow_pickle=False) as npz:
        return npz["inputs"].astype(np.float32), npz["logits"].astype(np.float32)


def _open(name: str, precision: str, tmp_path_factory) -> Backend:
    path = (runtime_bundle.int8_bundle(tmp_path_factory) if precision == "int8"
            else runtime_bundle.bundle(tmp_path_factory))
    return load(path, backend=name, precision=precision)


def _check_against_reference(model: Backend, inputs: np.ndarray, ref_logits: np.ndarray, precision: str) -> None:
    spread = float(ref_logits.max() - ref_logits.min())
    for batch in sorted({1, 3, model.max_batch}):
        logits = np.concatenate([model.infer(inputs[i:i + batch]) for i in range(0, 12, batch)])[:12]
        expected = ref_logits[:12]
        assert logits.dtype == np.float32 and logits.shape == expected.shape
        diff = float(np.abs(logits - expected).max())
        assert diff <= TOLERANCE[precision] * spread, f"batch {batch}: max |diff| {diff:.3g} (spread {spread:.3g})"
        if precision != "int8":
            np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))
    # int8 of a random-init model: logits are close together, so demand agreement, not identity.
    agreement = np.mean(model.infer_all(inputs).argmax(1) == ref_logits.argmax(1))
    assert agreement >= (1.0 if precision != "int8" else 0.75)


@pytest.mark.parametrize(("name", "precision"), CASES)
def test_conformance(name, precision, tmp_path_factory, reference):
    inputs, ref_logits = reference
    with _open(name, precision, tmp_path_factory) as model:
        assert model.precision == precision and model.model_bytes > 0
        _check_against_reference(model, inputs, ref_logits, precision)
        _check_rejects_bad_batches(model, inputs)


def _check_rejects_bad_batches(model: Backend, inputs: np.ndarray) -> None:
    bad = {
        "dtype is float64": inputs[:2].astype(np.float64),
        "shape is (2, 3, 32, 32)": np.zeros((2, 3, 32, 32), np.float32),
        "shape is (3, 64, 64)": inputs[0],
        f"batch size {model.max_batch + 1} is outside 1..{model.max_batch}":
            np.repeat(inputs[:1], model.max_batch + 1, axis=0),
        "batch size 0": inputs[:0],
        "takes a numpy array": inputs[:1].tolist(),
    }
    for message, batch in bad.items():
        with pytest.raises(AlexNetDeployError, match="infer|input|batch") as info:
            model.infer(batch)
        assert message in str(info.value)
        assert model.name in str(info.value) and "\n" not in str(info.value)


def test_classify_uses_the_manifest_preprocessing(bundle, tmp_path_factory):
    folder = runtime_bundle.images(tmp_path_factory)
    files = sorted(folder.glob("class_1/*.jpg"))[:3]
    with load(bundle, backend="ort") as model:
        predictions = model.classify(files, topk=2)
        from alexnet_deploy.deploy import preprocess

        direct = model.infer(preprocess(files, model.manifest.preprocess))
    assert [type(p) for p in predictions] == [Prediction] * 3
    for p, row in zip(predictions, direct):
        assert p.label == runtime_bundle.CLASSES[int(row.argmax())]
        assert len(p.topk) == 2 and p.topk[0][0] == p.label and p.topk[0][1] >= p.topk[1][1]
        assert 0.0 < p.probability <= 1.0


def test_auto_picks_the_best_that_runs_here(bundle):
    with load(bundle) as model:  # no GPU, no TensorRT here: trt and ort-cuda are skipped with reasons
        assert model.name == "ort" and model.provider == "CPUExecutionProvider"


def test_cuda_request_is_refused_not_silently_run_on_cpu(bundle):
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        load(bundle, backend="ort-cuda")


def test_ort_fallback_to_cpu_is_detected(bundle, monkeypatch):
    # Pretend cuda-python sees a GPU, so the real onnxruntime tries (and fails) to start CUDA here.
    import alexnet_deploy.deploy.backends.ort as ort_backend

    monkeypatch.setattr(ort_backend, "cuda_device_count", lambda: (1, ""))
    with pytest.raises(BackendUnavailable, match="could not start CUDAExecutionProvider"):
        load(bundle, backend="ort-cuda")


def test_unknown_backend_and_missing_artifact(bundle):
    with pytest.raises(AlexNetDeployError, match="unknown backend 'onnx'"):
        resolve_backend("onnx")
    with pytest.raises(BackendUnavailable, match="no int8 ONNX artifact.*alexnet-deploy calibrate"):
        load(bundle, backend="ort", precision="int8")
    with pytest.raises(BackendUnavailable, match="runs fp32, not 'fp16'"):
        load(bundle, backend="pt", precision="fp16")


def test_tampered_artifact_is_refused(bundle, tmp_path):
    copy = runtime_bundle.linked_copy(bundle, tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.fp16.onnx")
    entry["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="model.fp16.onnx: sha256 mismatch"):
        load(copy, backend="ort", precision="fp16")


def test_pt_refuses_a_checkpoint_that_is_not_the_exported_one(bundle, tmp_path):
    copy = runtime_bundle.linked_copy(bundle, tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["provenance"]["checkpoint_sha256"] = "f" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailable, match="not the checkpoint this bundle was exported from"):
        load(copy, backend="pt")
    manifest["provenance"]["checkpoint_path"] = str(tmp_path / "gone.pt")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailable, match="gone.pt.*not found.*--checkpoint"):
        load(copy, backend="pt")
