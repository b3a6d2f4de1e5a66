"""fp16 ONNX: fp32 I/O, fp16 weights, the overflow guard, parity vs fp32 on ONNX Runtime CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.errors import ExportError
from alexnet_deploy.export import fp16
from alexnet_deploy.deploy.onnx.sessions import cpu_logits as ort_logits

onnx = pytest.importorskip("onnx")


def _model(path: Path, conv_scale: float, lrn_input_scale: float = 1.0) -> Path:
    """input -> Conv (weights * conv_scale) -> Relu -> Mul(1/conv_scale) -> Mul(lrn_input_scale) -> LRN ->
    GlobalAveragePool -> Flatten -> Gemm. A large conv_scale overflows fp16 in the middle only."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(0, 0.5, (8, 3, 3, 3)) * conv_scale, "b1": np.zeros(8),
             "down": np.array(1.0 / conv_scale), "up": np.array(lrn_input_scale),
             "w2": rng.normal(0, 0.5, (4, 8)), "b2": np.zeros(4)}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Mul", ["r1", "down"], ["m1"], name="scale_down"),
             helper.make_node("Mul", ["m1", "up"], ["m2"], name="scale_up"),
             helper.make_node("LRN", ["m2"], ["n1"], size=5, alpha=5e-4, beta=0.75, bias=2.0, name="lrn"),
             helper.make_node("GlobalAveragePool", ["n1"], ["p1"], name="pool"),
             helper.make_node("Flatten", ["p1"], ["f1"], name="flatten"),
             helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "guard", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(-2, 2, (6, 3, 8, 8)).astype(np.float32)


def test_plain_model_converts_with_fp32_io_and_fp16_weights(tmp_path: Path, images: np.ndarray) -> None:
    src = _model(tmp_path / "m.onnx", conv_scale=1.0)
    result = fp16.convert(src, tmp_path / "m16.onnx", images, ort_logits(src, images))
    assert result.kept_fp32 == () and result.parity.passed and result.parity.min_cosine > 0.999
    model = onnx.load(str(tmp_path / "m16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = {i.name: i.data_type for i in model.graph.initializer}
    assert weights["w1"] == onnx.TensorProto.FLOAT16 and weights["w2"] == onnx.TensorProto.FLOAT16
    assert (tmp_path / "m16.onnx").stat().st_size < (tmp_path / "m.onnx").stat().st_size


def test_activation_ranges_are_measured(tmp_path: Path, images: np.ndarray) -> None:
    src = _model(tmp_path / "m.onnx", conv_scale=10.0)
    ranges = fp16.activation_ranges(onnx.load(str(src)), images)
    assert ranges["input"] == pytest.approx(float(np.abs(images).max()))
    assert ranges["c1"] == pytest.approx(ranges["m1"] * 10.0, rel=1e-4)
    assert ranges["r1"] <= ranges["c1"] and "logits" in ranges


def test_overflow_guard_keeps_overflowing_nodes_in_fp32(tmp_path: Path, images: np.ndarray) -> None:
    src = _model(tmp_path / "m.onnx", conv_scale=3e4)   # conv outputs ~1e5: inf in fp16
    reference = ort_logits(src, images)
    result = fp16.convert(src, tmp_path / "m16.onnx", images, reference)
    kept = {k.node for k in result.kept_fp32}
    assert {"conv", "relu", "scale_down"} <= kept, "every node touching the huge tensors stays fp32"
    assert "fc" not in kept and "pool" not in kept
    assert all(k.max_abs > fp16.FP16_MAX * fp16.DEFAULT_MARGIN for k in result.kept_fp32)
    assert result.parity.passed
    guarded = onnx.load(str(tmp_path / "m16.onnx"))
    types = {i.name: i.data_type for i in guarded.graph.initializer}
    assert types["w1"] == onnx.TensorProto.FLOAT and types["w2"] == onnx.TensorProto.FLOAT16
    producers = {o: n for n in guarded.graph.node for o in n.output}
    relu = next(n for n in guarded.graph.node if n.name == "relu")
    assert producers[relu.input[0]].name == "conv", "no fp16 Cast round trip between fp32 nodes"
    # Without the guard the overflowing tensors would live in fp16 (ORT's CPU provider does not show
    # it, because it runs Conv in fp32 internally; a GPU would produce inf).
    unguarded = fp16.convert(src, tmp_path / "unguarded.onnx", images, reference, margin=float("inf"))
    assert unguarded.kept_fp32 == ()
    weights = {i.name: i.data_type for i in onnx.load(str(tmp_path / "unguarded.onnx")).graph.initializer}
    assert weights["w1"] == onnx.TensorProto.FLOAT16


def test_fp16_parity_failure_is_an_export_error(tmp_path: Path, images: np.ndarray) -> None:
    src = _model(tmp_path / "m.onnx", conv_scale=1.0)
    wrong = ort_logits(src, images) + 1.0  # as if the fp16 model computed something else
    with pytest.raises(ExportError, match=r"fp16 ONNX vs fp32 ONNX .*max abs diff"):
        fp16.convert(src, tmp_path / "m16.onnx", images, wrong)
    assert not (tmp_path / "m16.onnx").exists(), "a failed conversion leaves no file"


def test_lrn_sum_of_squares_is_guarded(tmp_path: Path, images: np.ndarray) -> None:
    src = _model(tmp_path / "m.onnx", conv_scale=1.0, lrn_input_scale=40.0)
    ranges = fp16.activation_ranges(onnx.load(str(src)), images)
    peak = ranges["m2"]
    assert peak < fp16.FP16_MAX / 2 < 5 * peak ** 2, "values fit fp16, their squares summed over 5 channels do not"
    found = fp16.find_overflows(onnx.load(str(src)), ranges, fp16.FP16_MAX * fp16.DEFAULT_MARGIN)
    assert [(f.node, f.op_type) for f in found] == [("lrn", "LRN")] and "sum of squares" in found[0].reason
