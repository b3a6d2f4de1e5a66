"""Conformance: every backend that can run here gives the reference's answers through one API.

Reference = the exporter's torch logits in reference.npz (32 generated inputs at 64 px); for int8,
the Q/DQ model's own semantics stored at calibration (reference.int8.npz), so the test holds on
every CPU kind (AVX2 only, AVX-512, VNNI/AMX, ARM) and never depends on how a barely trained model
rounds to int8. Each backend must give the same top-1 and logits within its precision's tolerance at batch 1, 3 and
the bundle's max batch, and refuse a bad batch with one clear error. The trt backend runs against
the stand-in tensorrt + cuda-python modules (tests/stubs), which prove the API calls and buffer
handling, not that real TensorRT accepts the model or how fast it is.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import runtime_bundle
from conftest import scratch_dir
from alexnet_deploy.deploy import Prediction, load
from alexnet_deploy.deploy.backends.base import Backend, resolve_backend
from alexnet_deploy.deploy.bundle import read_manifest
from alexnet_deploy.deploy.evaluate.compare import Threshold
from alexnet_deploy.deploy.precision import PRECISIONS
from alexnet_deploy.deploy.evaluate.verify import INT8_ORACLE, INT8_REFERENCE_FILE, judge_logits
from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable, BundleError

CASES = [
    pytest.param("pt", "fp32", id="pt-fp32"),
    pytest.param("ort", "fp32", id="ort-fp32"),
    pytest.param("ort", "fp16", id="ort-fp16"),
    pytest.param("ort", "int8", id="ort-int8", marks=pytest.mark.slow),
    pytest.param("ov", "fp32", id="ov-fp32"),
    pytest.param("ov", "fp16", id="ov-fp16"),
    pytest.param("ov", "int8", id="ov-int8", marks=pytest.mark.slow),
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


def _expected(model: Backend, ref_logits: np.ndarray, precision: str) -> np.ndarray:
    """The torch logits, or for int8 the Q/DQ model's own semantics (reference.int8.npz): an int8
    backend must compute what the model means, on any CPU, whatever its distance from fp32."""
    if precision != "int8":
        return ref_logits
    with np.load(model.bundle / INT8_REFERENCE_FILE, allow_pickle=False) as npz:
        return npz["logits"]


def _check_against_reference(model: Backend, inputs: np.ndarray, ref_logits: np.ndarray, precision: str) -> None:
    ref_logits = _expected(model, ref_logits, precision)
    spread = float(ref_logits.max() - ref_logits.min())
    for batch in sorted({1, 3, model.max_batch}):
        logits = np.concatenate([model.infer(inputs[i:i + batch]) for i in range(0, 12, batch)])[:12]
        expected = ref_logits[:12]
        assert logits.dtype == np.float32 and logits.shape == expected.shape
        diff = float(np.abs(logits - expected).max())
        assert diff <= PRECISIONS[precision].conformance * spread, f"batch {batch}: max |diff| {diff:.3g} (spread {spread:.3g})"
    check = judge_logits(ref_logits, model.infer_all(inputs), INT8_ORACLE if precision == "int8"
                         else Threshold(min_agreement=1.0, min_cosine=0.9999), model.name)
    assert check.status == "pass", (check.agreement, check.cosine, check.detail)


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
    with load(bundle, backend="ort") as model:
        single = model.classify(str(files[0]), topk=1)
    assert len(single) == 1 and single[0].label == predictions[0].label


def test_auto_picks_the_best_that_runs_here(bundle):
    with load(bundle) as model:  # no GPU, no TensorRT here: trt and ort-cuda are skipped with reasons
        assert model.name == "ort" and model.provider == "CPUExecutionProvider"
        assert model.chosen.startswith("auto picked ort-cpu for fp32: ONNX Runtime")
        assert "not available here: trt, ort-cuda" in model.chosen


def test_auto_picks_openvino_for_int8_on_a_cpu_where_it_is_installed(tmp_path_factory):
    pytest.importorskip("openvino")
    with load(runtime_bundle.int8_bundle(tmp_path_factory), precision="int8") as model:
        assert model.name == "ov" and "OpenVINO" in model.chosen


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
    with pytest.raises(BackendUnavailable, match="runs fp32/fp16, not 'int8'"):
        load(bundle, backend="pt", precision="int8")


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


def test_a_checkpoint_runs_on_pt_with_its_own_metadata(bundle, reference, tmp_path):
    """load(CHECKPOINT), what `predict CHECKPOINT` runs: no bundle, the checkpoint's classes and
    preprocessing, the exported model's logits."""
    checkpoint = bundle.parent / "model.pt"
    with load(checkpoint) as model:   # "auto" on a checkpoint is pt: no other backend has a model for it
        assert model.name == "pt" and model.checkpoint == checkpoint and model.model_bytes > 0
        assert model.manifest.classes == runtime_bundle.CLASSES
        assert model.manifest.preprocess == read_manifest(bundle).preprocess
        _check_against_reference(model, *reference, "fp32")
    with pytest.raises(AlexNetDeployError, match="is a checkpoint: it runs on the pt backend, not 'ort'"):
        load(checkpoint, backend="ort")
    with pytest.raises(AlexNetDeployError, match="nope.pt: no such bundle directory, packed bundle or checkpoint"):
        load(tmp_path / "nope.pt")


# ---- trt, against the stand-in tensorrt + cuda-python (tests/stubs) ------------------------------
# The stand-ins check the named-tensor API calls, shapes, pinned/device buffer handling and the
# engine/device matching; execute_async_v3 runs the plan's ONNX with ONNX Runtime on the CPU. They
# cannot show that real TensorRT builds this model, its kernels' numerics on a GPU, or its speed.

from stubs.fake_env import stand_ins  # noqa: E402,F401 - pytest fixture


@pytest.fixture(scope="module")
def trt_bundle(bundle, tmp_path_factory):
    """A copy of the bundle that collects stand-in engines (one per TensorRT version x precision)."""
    with scratch_dir(tmp_path_factory, "trt") as root:
        yield runtime_bundle.linked_copy(bundle, root / "bundle")


def _build(bundle_dir, precision: str, **options):
    """Build (or reuse) a stand-in engine the way `build-engine` does: cached, in a child process
    (the stand_ins fixture put the stand-in modules on the child's PYTHONPATH)."""
    from alexnet_deploy.deploy.trt.engines import BuildOptions, ensure_engine

    return ensure_engine(bundle_dir, precision, BuildOptions(**options))


@pytest.mark.parametrize(("version", "precision"), [("10.3.0", "fp32"), ("8.6.1", "fp16"), ("10.3.0", "fp16"),
                                                    ("11.1.0", "fp16")])
def test_trt_conformance_on_stand_in(stand_ins, trt_bundle, reference, version, precision):
    stand_ins(trt_version=version)
    from cuda.bindings import runtime as fake_cudart

    _build(trt_bundle, precision)
    allocated = fake_cudart.live_allocations()
    inputs, ref_logits = reference
    with load(trt_bundle, backend="trt", precision=precision) as model:
        assert f"TensorRT {version}" in model.provider
        _check_against_reference(model, inputs, ref_logits, precision)
        _check_rejects_bad_batches(model, inputs)
        assert fake_cudart.live_allocations() == allocated + 4  # pinned + device, input + output
    assert fake_cudart.live_allocations() == allocated  # close() freed every buffer and the stream


def test_trt_refuses_engines_from_another_tensorrt_or_gpu(stand_ins, trt_bundle, monkeypatch):
    stand_ins(trt_version="10.3.0")
    _build(trt_bundle, "fp16")
    stand_ins(trt_version="10.4.0")  # same GPU, newer TensorRT: the plan must be rebuilt
    with pytest.raises(BackendUnavailable) as info:
        load(trt_bundle, backend="trt", precision="fp16")
    message = str(info.value)
    assert "built with TensorRT 10.3.0" in message and "this is TensorRT 10.4.0" in message
    assert f"alexnet-deploy build-engine {trt_bundle} --fp16" in message
    stand_ins(trt_version="10.3.0", gpu_name="Jetson Orin Nano (fake)", cc="8.7")
    with pytest.raises(BackendUnavailable, match="Jetson Orin Nano.*build-engine"):
        load(trt_bundle, backend="trt", precision="fp16")


def test_trt_without_gpu_or_engine_says_why(stand_ins, trt_bundle, bundle):
    stand_ins(trt_version="10.3.0", devices=0)
    with pytest.raises(BackendUnavailable, match="no CUDA GPU|CUDA .* failed"):
        load(trt_bundle, backend="trt", precision="fp16")
    stand_ins(trt_version="10.3.0")
    with pytest.raises(BackendUnavailable, match=f"no int8 TensorRT engine.*build-engine {bundle} --int8"):
        load(bundle, backend="trt", precision="int8")


def test_auto_prefers_trt_and_bench_runs_it(stand_ins, trt_bundle):
    from alexnet_deploy.deploy.evaluate.bench import BenchConfig, run_bench

    stand_ins(trt_version="11.1.0")
    _build(trt_bundle, "fp16")
    with load(trt_bundle, precision="fp16") as model:
        assert model.name == "trt"
    report = run_bench(trt_bundle, BenchConfig(backends=("trt",), precisions=("fp16",), batches=(1, 4),
                                               warmup_s=0.01, min_iters=3, min_time_s=0.02))
    assert [(r.status, r.batch) for r in report.rows] == [("ok", 1), ("ok", 4)]
    assert report.rows[0].agreement == 1.0 and report.rows[0].p50_ms > 0
    assert report.system.get("gpu") == "Stand-in Orin (fake)"  # system facts read the (fake) GPU


def test_trt_version_compatible_plan_loads_on_a_newer_tensorrt(stand_ins, bundle, tmp_path):
    copy = runtime_bundle.linked_copy(bundle, tmp_path / "b")
    stand_ins(trt_version="10.3.0")
    _build(copy, "fp16", version_compatible=True)
    stand_ins(trt_version="11.1.0")  # TRT 10 VC plans run on TRT 11 (the stand-in needs host code allowed)
    with load(copy, backend="trt", precision="fp16") as model:
        assert model.infer(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 3)
    stand_ins(trt_version="10.2.0")  # never on an older runtime
    with pytest.raises(BackendUnavailable, match="built with TensorRT 10.3.0"):
        load(copy, backend="trt", precision="fp16")


def test_trt_max_batch_follows_the_engine_profile(stand_ins, bundle, tmp_path, reference):
    copy = runtime_bundle.linked_copy(bundle, tmp_path / "b")
    stand_ins(trt_version="10.3.0")
    _build(copy, "fp16", max_batch=2)
    with load(copy, backend="trt", precision="fp16") as model:
        assert model.max_batch == 2  # the bundle says 4, the engine was built for 2
        assert model.infer_all(reference[0][:5]).shape == (5, 3)
        with pytest.raises(AlexNetDeployError, match="batch size 3 is outside 1..2"):
            model.infer(reference[0][:3])
