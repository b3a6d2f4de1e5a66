"""The optional OpenVINO backend: same bundle, same numbers as ONNX Runtime and PyTorch."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable, BundleError, MissingDependency


def test_missing_openvino_is_one_clear_error(tmp_path, monkeypatch):
    """Runs everywhere: with openvino unimportable the backend names the extra to install."""
    from alexnet_deploy.deploy.backends.ov import import_openvino

    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'alexnet-deploy\[ov\]'"):
        import_openvino()


ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'alexnet-deploy[ov]')")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from alexnet_deploy.deploy.backends.ov import OvBackend  # noqa: E402
from alexnet_deploy.deploy.onnx.sessions import cpu_session  # noqa: E402
from alexnet_deploy.deploy.onnx.lrn import rewrite_lrn, rewritten_node_names  # noqa: E402
from conftest import write_image_folder  # noqa: E402
from lrn_helpers import (  # noqa: E402
    export_native, images, lrn_net, quantize_int8, to_fp16, torch_logits, write_bundle)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> np.ndarray:
    folder = write_image_folder(tmp_path_factory.mktemp("ov_images") / "images", classes=3, per_class=2, size=48)
    return images(folder, 2)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, inputs) -> tuple[Path, np.ndarray]:
    """fp32 / fp16 / int8 bundle of the toy LRN net with the conv LRN formulation, and torch's logits."""
    folder = tmp_path_factory.mktemp("ov_bundle")
    net = lrn_net()
    native = export_native(net, folder / "native.onnx")
    onnx.save(rewrite_lrn(onnx.load(str(native))), str(folder / "model.onnx"))
    native.unlink()
    to_fp16(folder / "model.onnx", folder / "model.fp16.onnx")
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", inputs,
                  rewritten_node_names(onnx.load(str(folder / "model.onnx"))))
    write_bundle(folder, {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"})
    return folder, torch_logits(net, inputs)


def _ort(bundle: Path, name: str, inputs: np.ndarray) -> np.ndarray:
    return cpu_session(bundle / name).run(None, {"input": inputs})[0]


def test_fp32_matches_torch_and_ort(bundle, inputs):
    folder, reference = bundle
    with OvBackend(folder, "fp32", threads=1) as model:
        out = model.infer(inputs)
        assert out.dtype == np.float32 and out.shape == (len(inputs), 3)
        assert np.abs(out - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())
        assert "CPU f32" in model.provider and model.model_bytes > 0


def test_native_lrn_is_restored_for_openvino_with_the_same_numbers(bundle, inputs):
    folder, reference = bundle
    restored = OvBackend(folder, "fp32")
    as_exported = OvBackend(folder, "fp32", lrn="as-exported")
    ops = lambda m: {op.get_type_name() for op in m._model.get_ops()}  # noqa: E731
    assert "LRN" in ops(restored) and "LRN" not in ops(as_exported)
    np.testing.assert_allclose(restored.infer(inputs), as_exported.infer(inputs), rtol=1e-5, atol=1e-5)
    with pytest.raises(AlexNetDeployError, match="unknown ov LRN choice"):
        OvBackend(folder, "fp32", lrn="fast")


def test_each_batch_size_gets_its_own_compiled_model(bundle, inputs):
    folder, reference = bundle
    model = OvBackend(folder, "fp32")
    one = model.infer(inputs[:1])
    three = model.infer(inputs[:3])
    again = model.infer(inputs[:1])
    np.testing.assert_allclose(one, three[:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(one, again)  # the output was copied, not a view of a reused buffer
    assert sorted(model._requests) == [1, 3]
    assert np.abs(model.infer_all(inputs) - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())
    for n in (2, 4, 5, 6):
        model.infer(inputs[:n])
    assert len(model._requests) == 4 and 1 not in model._requests  # oldest dropped, memory bounded
    model.close()


@pytest.mark.parametrize("precision,name,tol", [("fp16", "model.fp16.onnx", 2e-2), ("int8", "model.int8.onnx", 0.1)])
def test_low_precision_agrees_with_ort_on_the_same_file(bundle, inputs, precision, name, tol):
    folder, reference = bundle
    out = OvBackend(folder, precision).infer(inputs)
    ort_out = _ort(folder, name, inputs)
    scale = np.abs(reference).max()
    assert np.abs(out - ort_out).max() <= tol * scale
    if precision == "int8":   # judged against what the Q/DQ model means, not against fp32 rounding
        from alexnet_deploy.deploy.onnx.sessions import run_batches, semantic_session

        meant = run_batches(semantic_session(folder / name), inputs)
        assert np.mean(out.argmax(1) == meant.argmax(1)) >= 0.95


def test_bf16_is_opt_in(bundle, inputs):
    folder, reference = bundle
    out = OvBackend(folder, "fp32", inference_precision="bf16", hint="throughput").infer(inputs)
    assert np.abs(out - reference).max() <= 5e-2 * np.abs(reference).max()


def test_bad_options_and_inputs_are_clear_errors(bundle, inputs):
    folder, _ = bundle
    with pytest.raises(AlexNetDeployError, match="unknown OpenVINO hint 'fastest'"):
        OvBackend(folder, "fp32", hint="fastest")
    with pytest.raises(AlexNetDeployError, match="inference precision 'f8'"):
        OvBackend(folder, "fp32", inference_precision="f8")
    model = OvBackend(folder, "fp32")
    with pytest.raises(AlexNetDeployError, match="float32"):
        model.infer(inputs.astype(np.float64))
    with pytest.raises(AlexNetDeployError, match="outside 1..8"):
        model.infer(np.zeros((9, 3, 64, 64), np.float32))


def test_missing_and_tampered_artifacts(bundle, tmp_path):
    folder, _ = bundle
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    write_bundle(copy, {"fp32": "model.onnx"})
    with pytest.raises(BackendUnavailable, match="no int8 ONNX artifact"):
        OvBackend(copy, "int8")
    with open(copy / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        OvBackend(copy, "fp32")


def test_registered_in_the_backend_registry(bundle, inputs):
    from alexnet_deploy.deploy.backends.base import BACKENDS, load

    if "ov" not in BACKENDS:
        pytest.skip("the ov backend is not in deploy/backends/base.py's registry yet")
    folder, reference = bundle
    model = load(folder, "ov", "fp32")
    assert isinstance(model, OvBackend)
    assert np.abs(model.infer(inputs) - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())
