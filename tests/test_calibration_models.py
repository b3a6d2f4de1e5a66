"""Small fp32 ONNX models and bundles for the calibration tests, built with onnx.helper (no torch,
no export step, well under a second). The classifier head is fitted in closed form on the
generated images, so the fp32 model really classifies them and int8 agreement means something."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.deploy.bundle import Manifest, TensorSpec, make_artifact, write_manifest
from alexnet_deploy.deploy.preprocess import PreprocessSpec, list_class_folder, preprocess

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIZE = 32
SPEC = PreprocessSpec(resize=SIZE, crop=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _init(name: str, array: np.ndarray):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def _graph(weights: dict[str, np.ndarray], classes: int, extra_outputs=()):
    nodes = [
        helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2.w", "c2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["f1"], name="fc1", transB=1),
        helper.make_node("Relu", ["f1"], ["features"], name="relu3"),
        helper.make_node("Gemm", ["features", "fc2.w", "fc2.b"], ["logits"], name="fc2", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs]
    graph = helper.make_graph(nodes, "small_cnn", inputs, outputs, [_init(k, v) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def small_cnn(images: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0):
    """A conv net with random He-initialised features and a least-squares-fitted head."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    he = lambda *shape: rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)  # noqa: E731
    weights = {"c1.w": he(8, 3, 3, 3), "c1.b": np.zeros(8), "c2.w": he(16, 8, 3, 3), "c2.b": np.zeros(16),
               "fc1.w": he(32, 16), "fc1.b": np.full(32, 0.1), "fc2.w": np.zeros((classes, 32)),
               "fc2.b": np.zeros(classes)}
    probe = _graph(weights, classes, extra_outputs=["features"])
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    features = session.run(["features"], {"input": images})[0].astype(np.float64)
    design = np.hstack([features, np.ones((len(features), 1))])
    target = np.eye(classes)[labels] * 10.0
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    weights["fc2.w"], weights["fc2.b"] = solution[:-1].T, solution[-1]
    return _graph(weights, classes)


def make_bundle(root: Path, image_dir: Path, seed: int = 0) -> Path:
    """A bundle (model.onnx + manifest.json) whose model is fitted on ``image_dir``."""
    classes, samples = list_class_folder(image_dir)
    images = preprocess([p for p, _ in samples], SPEC)
    labels = np.asarray([label for _, label in samples])
    model = small_cnn(images, labels, len(classes), seed)
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(root / "model.onnx"))
    manifest = Manifest(classes=tuple(classes), input=TensorSpec("input", (-1, 3, SIZE, SIZE)),
                        output=TensorSpec("logits", (-1, len(classes))), preprocess=SPEC, arch="small-test-cnn")
    manifest = manifest.with_artifact(make_artifact(root, "model.onnx", "onnx", "fp32", {"tool": "onnx.helper"}))
    write_manifest(root, manifest)
    return root


def test_small_cnn_classifies_its_images(image_folder: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    bundle = make_bundle(tmp_path / "bundle", image_folder)
    classes, samples = list_class_folder(image_folder)
    images = preprocess([p for p, _ in samples], SPEC)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"input": images})[0].argmax(1)
    assert (predicted == np.asarray([label for _, label in samples])).mean() >= 0.9


def add_outlier_channel(model, value: float = 1000.0):
    """Give conv1 a ninth output channel that is constantly ``value`` and that conv2 ignores.

    fp32 accuracy is unchanged, but a minmax per-tensor int8 scale for conv1's output becomes
    value/127, which wipes out the real channels: int8 accuracy collapses until layers are kept
    in float. This is how the budget loop is exercised on a tiny model.
    """
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    weights["c1.w"] = np.concatenate([weights["c1.w"], np.zeros((1, 3, 3, 3), np.float32)])
    weights["c1.b"] = np.concatenate([weights["c1.b"], [value]]).astype(np.float32)
    weights["c2.w"] = np.concatenate([weights["c2.w"], np.zeros((16, 1, 3, 3), np.float32)], axis=1)
    return _graph(weights, int(weights["fc2.b"].shape[0]))
