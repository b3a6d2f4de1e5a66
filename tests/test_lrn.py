"""The LRN graph rewrite (deploy/onnx/lrn.py): same numbers as PyTorch, at every precision, on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from alexnet_deploy.deploy.onnx.sessions import cpu_session, run_batches  # noqa: E402
from alexnet_deploy.errors import ExportError  # noqa: E402
from alexnet_deploy.deploy.onnx.lrn import (  # noqa: E402
    PREFIX, band_weights, restore_lrn, rewrite_lrn, rewritten_node_names)
from conftest import write_image_folder  # noqa: E402
from lrn_helpers import (  # noqa: E402
    export_native, images, lrn_net, quantize_int8, to_fp16, torch_logits)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def net():
    return lrn_net()


@pytest.fixture(scope="module")
def native_path(net, tmp_path_factory) -> Path:
    return export_native(net, tmp_path_factory.mktemp("lrn") / "native.onnx")


@pytest.fixture(scope="module")
def generated_images(tmp_path_factory) -> np.ndarray:
    folder = write_image_folder(tmp_path_factory.mktemp("gen") / "images", classes=3, per_class=4, size=48)
    return images(folder, 4)


@pytest.fixture(scope="module", params=["generated", "cifar"])
def real_images(request, generated_images) -> np.ndarray:
    """Generated images always; real CIFAR-10 images too where ../shared is present."""
    if request.param == "generated":
        return generated_images
    return images(request.getfixturevalue("cifar_dir"), 2)


def _save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _run(path_or_model, inputs: np.ndarray) -> np.ndarray:
    source = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else path_or_model
    return run_batches(cpu_session(source), inputs, batch_size=8)


def _formulation(model) -> str:
    """"native" if ``model`` has LRN nodes, "conv"/"conv-pow" if rewritten, "none" if it has neither."""
    if any(node.op_type == "LRN" for node in model.graph.node):
        return "native"
    names = rewritten_node_names(model)
    if not names:
        return "none"
    return "conv-pow" if any(name.endswith("/pow") for name in names) else "conv"


# ---------------------------------------------------------------------------- fp32
def test_conv_rewrite_matches_torch_fp32(net, native_path, real_images):
    reference = torch_logits(net, real_images)
    rewritten = rewrite_lrn(onnx.load(str(native_path)), "conv")
    onnx.checker.check_model(rewritten, full_check=True)
    assert not any(n.op_type == "LRN" for n in rewritten.graph.node)
    assert len([n for n in rewritten.graph.node if n.name.startswith(PREFIX) and n.op_type == "Conv"]) == 2
    diff = np.abs(_run(rewritten, real_images) - reference).max()
    assert diff <= 1e-5, f"conv LRN differs from torch by {diff}"


def test_the_parity_check_can_fail(net, real_images):
    """The LRN must matter on these inputs, or the parity test above would prove nothing."""
    without = torch.nn.Sequential(*[torch.nn.Identity() if isinstance(m, torch.nn.LocalResponseNorm) else m
                                    for m in net])
    gap = np.abs(torch_logits(without, real_images) - torch_logits(net, real_images)).max()
    assert gap > 1e-2


def test_pow_formulation_and_native_copy_match_torch(net, native_path, real_images):
    reference = torch_logits(net, real_images)
    model = onnx.load(str(native_path))
    pow_model = rewrite_lrn(model, "conv-pow")
    assert [n.op_type for n in pow_model.graph.node if n.name.endswith("/pow")] == ["Pow", "Pow"]
    assert np.abs(_run(pow_model, real_images) - reference).max() <= 1e-5
    native = rewrite_lrn(model, "native")
    assert native.SerializeToString() == model.SerializeToString()
    assert _formulation(native) == "native" and _formulation(pow_model) == "conv-pow"
    assert _formulation(rewrite_lrn(model, "conv")) == "conv"


def test_dynamic_batch_survives(native_path, generated_images):
    session = cpu_session(rewrite_lrn(onnx.load(str(native_path))).SerializeToString())
    for n in (1, 5):
        out = session.run(None, {"input": generated_images[:n]})[0]
        assert out.shape == (n, 3)


# ---------------------------------------------------------------------------- fp16
def test_conv_rewrite_of_fp16_model_computes_lrn_in_fp32(net, native_path, real_images, tmp_path):
    reference = torch_logits(net, real_images)
    fp16_native = to_fp16(native_path, tmp_path / "native.fp16.onnx")
    rewritten = rewrite_lrn(onnx.load(str(fp16_native)), "conv")
    # (no onnx.checker here: ORT's fp16 converter appends its Cast nodes out of topological order)
    casts = [n for n in rewritten.graph.node if n.name.startswith(PREFIX) and n.op_type == "Cast"]
    assert len(casts) == 4  # in and out around each of the two LRNs
    band = next(t for t in rewritten.graph.initializer if t.name == f"{PREFIX}0/band_weight")
    assert band.data_type == onnx.TensorProto.FLOAT
    scale = np.abs(reference).max()
    native_err = np.abs(_run(onnx.load(str(fp16_native)), real_images) - reference).max()
    conv_err = np.abs(_run(rewritten, real_images) - reference).max()
    # fp16 rounding elsewhere dominates; the fp32 LRN must not make it worse than the native LRN.
    assert conv_err <= 2e-2 * scale
    assert conv_err <= 1.5 * native_err + 1e-3 * scale


def test_rewrite_before_fp16_conversion(net, native_path, real_images, tmp_path):
    """The other order (rewrite fp32, then convert): every LRN tensor stays as small as x, so the
    fp16 model is as close to torch as the native fp16 model."""
    reference = torch_logits(net, real_images)
    rewritten = _save(rewrite_lrn(onnx.load(str(native_path))), tmp_path / "conv.onnx")
    fp16 = to_fp16(rewritten, tmp_path / "conv.fp16.onnx")
    native_fp16 = onnx.load(str(to_fp16(native_path, tmp_path / "n16.onnx")))
    native_err = np.abs(_run(native_fp16, real_images) - reference).max()
    err = np.abs(_run(onnx.load(str(fp16)), real_images) - reference).max()
    assert err <= 2e-2 * np.abs(reference).max()
    assert err <= 1.5 * native_err + 1e-3 * np.abs(reference).max()


def test_fp16_lrn_does_not_overflow_on_large_activations():
    """x*x overflows fp16 above 256; neither the fp16 graph's LRN (fp32 inside) nor the fp32 graph
    converted after the rewrite (scaled before squaring) may overflow."""
    x = np.linspace(0, 3000, 2 * 8 * 3 * 3, dtype=np.float32).reshape(2, 8, 3, 3)
    model = _single_lrn_model(8, size=5, alpha=1e-4, beta=0.75, bias=2.0, elem=onnx.TensorProto.FLOAT16)
    session = cpu_session(rewrite_lrn(model).SerializeToString())
    out = session.run(None, {"input": x.astype(np.float16)})[0].astype(np.float32)
    expected = torch.nn.functional.local_response_norm(torch.from_numpy(x), 5, 1e-4, 0.75, 2.0).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=1e-2)
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(rewrite_lrn(_single_lrn_model(8, 5, 1e-4, 0.75, 2.0)), keep_io_types=True)
    out = _run(converted, x)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=2e-1)


# ---------------------------------------------------------------------------- int8
def test_int8_keeps_lrn_float_and_matches_native_int8(net, native_path, real_images, generated_images, tmp_path):
    reference = torch_logits(net, real_images)
    conv_path = _save(rewrite_lrn(onnx.load(str(native_path))), tmp_path / "conv.onnx")
    excluded = rewritten_node_names(onnx.load(str(conv_path)))
    assert excluded and all(name.startswith(PREFIX) for name in excluded)
    int8_conv = quantize_int8(conv_path, tmp_path / "conv.int8.onnx", generated_images, excluded)
    int8_native = quantize_int8(native_path, tmp_path / "native.int8.onnx", generated_images, [])
    model = onnx.load(str(int8_conv))
    band_sum = [n for n in model.graph.node if n.name.endswith("/band_sum")]
    assert len(band_sum) == 2 and all(n.input[1].endswith("band_weight") for n in band_sum)  # float weights
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    assert all(producers.get(n.input[0]) == "Mul" for n in band_sum)  # no Q/DQ inside the LRN
    conv_out, native_out = _run(int8_conv, real_images), _run(int8_native, real_images)
    scale = np.abs(reference).max()
    assert np.abs(conv_out - native_out).max() <= 0.05 * scale  # same quantization, different LRN form
    assert np.abs(conv_out - reference).max() <= 0.25 * scale
    # Top-1 judged against what the Q/DQ model means (a random-init net's int8 rounding is no target).
    from alexnet_deploy.deploy.onnx.sessions import run_batches, semantic_session

    meant = run_batches(semantic_session(int8_conv), real_images)
    assert np.mean(conv_out.argmax(1) == meant.argmax(1)) >= 0.95


# ---------------------------------------------------------------------------- the graph itself
def _single_lrn_model(channels: int, size: int, alpha: float, beta: float, bias: float,
                      elem: int = 1):
    helper = onnx.helper
    node = helper.make_node("LRN", ["x"], ["y"], name="lrn", size=size, alpha=alpha, beta=beta, bias=bias)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", elem, ["n", channels, 3, 3])],
                              [helper.make_tensor_value_info("y", elem, ["n", channels, 3, 3])])
    graph.node[0].input[0] = "input"
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.mark.parametrize("size,alpha,beta,bias", [(5, 1e-4, 0.75, 2.0), (3, 0.5, 0.5, 1.0), (7, 0.1, 1.0, 1.5),
                                                  (5, 0.3, 0.6, 1.0), (4, 0.2, 0.75, 1.0), (1, 0.2, 0.75, 1.0)])
def test_every_lrn_setting_matches_the_onnx_definition(size, alpha, beta, bias):
    x = np.random.default_rng(size).normal(0, 3, (2, 11, 3, 3)).astype(np.float32)
    model = _single_lrn_model(11, size, alpha, beta, bias)
    rewritten = _run(rewrite_lrn(model), x)
    np.testing.assert_allclose(rewritten, _onnx_lrn(x, size, alpha, beta, bias), rtol=1e-5, atol=1e-6)
    if size % 2:  # ORT's LRN kernel refuses even sizes; torch centres even windows differently
        np.testing.assert_allclose(rewritten, _run(model, x), rtol=1e-5, atol=1e-6)
        expected = torch.nn.functional.local_response_norm(torch.from_numpy(x), size, alpha, beta, bias).numpy()
        np.testing.assert_allclose(rewritten, expected, rtol=1e-5, atol=1e-6)


def _onnx_lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """The ONNX LRN definition, literally, in float64."""
    x64, channels = x.astype(np.float64), x.shape[1]
    below, above = (size - 1) // 2, -(-(size - 1) // 2)
    square_sum = np.stack([(x64[:, max(0, c - below):min(channels, c + above + 1)] ** 2).sum(1)
                           for c in range(channels)], axis=1)
    return (x64 / (bias + alpha / size * square_sum) ** beta).astype(np.float32)


def test_band_weights():
    w = band_weights(6, 5)[:, :, 0, 0]
    assert w.shape == (6, 6) and w.dtype == np.float32
    assert np.count_nonzero(w[0]) == 3 and np.count_nonzero(w[2]) == 5  # clipped at the edges
    assert set(np.unique(w)) == {0.0, 1.0}
    np.testing.assert_array_equal(w, w.T)
    even = band_weights(6, 4)[:, :, 0, 0]
    assert list(np.nonzero(even[2])[0]) == [1, 2, 3, 4]  # ONNX: floor(3/2)=1 before, ceil(3/2)=2 after


def test_bad_input_is_one_clear_error():
    model = _single_lrn_model(4, 5, 1e-4, 0.75, 2.0)
    with pytest.raises(ExportError, match="unknown LRN formulation 'fast'"):
        rewrite_lrn(model, "fast")
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "c"
    with pytest.raises(ExportError, match="cannot infer the channel count"):
        rewrite_lrn(model)


def test_model_without_lrn_is_unchanged():
    helper = onnx.helper
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g",
                              [helper.make_tensor_value_info("input", 1, [1, 2])],
                              [helper.make_tensor_value_info("y", 1, [1, 2])])
    model = helper.make_model(graph)
    assert rewrite_lrn(model).SerializeToString() == model.SerializeToString()
    assert _formulation(model) == "none" and rewritten_node_names(model) == []


def test_rewrite_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, onnx; from alexnet_deploy.deploy.onnx.lrn import rewrite_lrn; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("formulation", ["conv", "conv-pow"])
def test_restore_gives_back_the_native_node(native_path, generated_images, formulation):
    model = onnx.load(str(native_path))
    restored = restore_lrn(rewrite_lrn(model, formulation))
    onnx.checker.check_model(restored, full_check=True)
    assert rewritten_node_names(restored) == []
    assert not any(t.name.startswith(PREFIX) for t in restored.graph.initializer)
    original = [n for n in model.graph.node if n.op_type == "LRN"]
    again = [n for n in restored.graph.node if n.op_type == "LRN"]
    assert len(again) == len(original) == 2
    for a, b in zip(original, again):
        attrs_a = {x.name: onnx.helper.get_attribute_value(x) for x in a.attribute}
        attrs_b = {x.name: onnx.helper.get_attribute_value(x) for x in b.attribute}
        assert attrs_a["size"] == attrs_b["size"] and attrs_a["beta"] == attrs_b["beta"]
        assert attrs_b["alpha"] == pytest.approx(attrs_a["alpha"], rel=1e-6)
        assert (list(a.input), list(a.output)) == (list(b.input), list(b.output))
    np.testing.assert_allclose(_run(restored, generated_images), _run(model, generated_images), atol=1e-6)


def test_restore_after_the_export_simplifier_merged_constants(native_path, generated_images):
    # Export runs onnxslim, which merges the two LRN layers' identical scale constants into one
    # initializer: the second group then reads the first group's tensor, and must still be restored.
    onnxslim = pytest.importorskip("onnxslim")
    model = onnx.load(str(native_path))
    slim = onnxslim.slim(rewrite_lrn(model))
    restored = restore_lrn(slim)
    assert sum(n.op_type == "LRN" for n in restored.graph.node) == 2
    assert rewritten_node_names(restored) == []
    np.testing.assert_allclose(_run(restored, generated_images), _run(model, generated_images), atol=1e-5)


def test_restore_leaves_quantized_groups_alone(native_path, generated_images, tmp_path):
    conv = _save(rewrite_lrn(onnx.load(str(native_path))), tmp_path / "conv.onnx")
    quantized = onnx.load(str(quantize_int8(conv, tmp_path / "q.onnx", generated_images, [])))  # LRN not excluded
    restored = restore_lrn(quantized)
    assert not any(n.op_type == "LRN" for n in restored.graph.node)
    assert len(restored.graph.node) == len(quantized.graph.node)


def test_calibration_keeps_the_rewrite_float(native_path):
    """Integration with calibration/qdq.py: the LRN nodes are never quantized nor budget candidates."""
    qdq = pytest.importorskip("alexnet_deploy.calibration.qdq")
    if not hasattr(qdq, "lrn_rewrite_nodes"):
        pytest.skip("calibration/qdq.py does not know the LRN rewrite yet")
    model = rewrite_lrn(onnx.load(str(native_path)))
    assert qdq.lrn_rewrite_nodes(model) == rewritten_node_names(model)
    assert not any(name.startswith(PREFIX) for name in qdq.weighted_layers(model))
