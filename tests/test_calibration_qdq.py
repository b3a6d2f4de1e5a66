"""Q/DQ model writer, the TensorRT-compatibility checker, int8 kernels on ORT CPU, and the
histogram calibrator (methods really differ; ORT's failure modes do not apply)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import scratch_dir, write_image_folder
from test_calibration_models import SPEC, make_bundle

from alexnet_deploy.calibration import histogram, qdq
from alexnet_deploy.calibration.dataset import load_set
from alexnet_deploy.errors import CalibrationError

onnx = pytest.importorskip("onnx")
ort_quant = pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    with scratch_dir(tmp_path_factory, "qdq") as root:
        images = write_image_folder(root / "images", classes=3, per_class=12, size=32)
        bundle = make_bundle(root / "bundle", images)
        data = load_set(images, SPEC, count=24, seed=0)
        hists = histogram.collect(bundle / "model.onnx", data.images, batch_size=8)
        yield {"root": root, "model": bundle / "model.onnx", "data": data, "hists": hists}


def _ours(small: dict, method: str = "entropy", keep=()) -> Path:
    out = small["root"] / f"ours-{method}-{len(keep)}.onnx"
    return qdq.write_qdq(small["model"], out, histogram.thresholds(small["hists"], method), keep)


class _Reader(ort_quant.CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self.batches = iter([{"input": images[i:i + 8]} for i in range(0, len(images), 8)])

    def get_next(self):
        return next(self.batches, None)


def _ort_default(small: dict, name: str, **kwargs) -> Path:
    out = small["root"] / name
    ort_quant.quantize_static(str(small["model"]), str(out), _Reader(small["data"].images),
                              quant_format=ort_quant.QuantFormat.QDQ, **kwargs)
    return out


def test_checker_accepts_our_models(small: dict) -> None:
    for method in histogram.METHODS:
        assert qdq.check_qdq(_ours(small, method)) == []
    qdq.require_valid(_ours(small, "minmax", keep=["conv1"]))


def test_our_model_is_int8_symmetric_per_channel_with_float_bias(small: dict) -> None:
    model = onnx.load(str(_ours(small)))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert inits["c1.w_scale"].shape == (8,) and inits["fc1.w_scale"].shape == (32,)
    assert inits["c1.b"].dtype == np.float32


def test_checker_rejects_ort_default_asymmetric_model(small: dict) -> None:
    problems = qdq.check_qdq(_ort_default(small, "asym.onnx"))
    assert any("non-zero zero point" in p for p in problems)
    assert any("bias is quantized" in p for p in problems)          # ORT default QuantizeBias=True
    assert any("per-tensor" in p for p in problems)                 # per_channel=False by default
    with pytest.raises(CalibrationError, match="asym.onnx is not a TensorRT-compatible"):
        qdq.require_valid(small["root"] / "asym.onnx")


def test_checker_rejects_uint8_model(small: dict) -> None:
    path = _ort_default(small, "uint8.onnx", activation_type=ort_quant.QuantType.QUInt8, per_channel=True,
                        extra_options={"QuantizeBias": False})
    problems = qdq.check_qdq(path)
    assert any("uint8" in p for p in problems)
    assert not any("bias" in p for p in problems)


def test_checker_rejects_a_float_model(small: dict) -> None:
    assert qdq.check_qdq(small["model"]) == ["no QuantizeLinear/DequantizeLinear nodes: this is not a Q/DQ model"]


def test_int8_kernels_run_on_ort_cpu(small: dict) -> None:
    op_types = qdq.optimized_op_types(_ours(small))
    kernels = qdq.int8_kernels(op_types)
    assert kernels.get("QLinearConv", 0) == 2, op_types
    assert kernels.get("QGemm", 0) + kernels.get("QLinearMatMul", 0) + kernels.get("MatMulInteger", 0) >= 1, op_types


def test_kept_float_layer_has_no_quantized_weight(small: dict) -> None:
    model = onnx.load(str(_ours(small, "minmax", keep=["conv2"])))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert conv2.input[1] == "c2.w" and producers.get(conv2.input[0]) != "DequantizeLinear"
    assert producers[conv1.input[1]] == "DequantizeLinear"


def test_methods_give_different_scales_on_the_same_data(small: dict) -> None:
    by_method = {m: histogram.thresholds(small["hists"], m) for m in histogram.METHODS}
    assert by_method["minmax"] != by_method["entropy"] != by_method["percentile"] != by_method["minmax"]
    for name, maximum in by_method["minmax"].items():
        assert by_method["percentile"][name] <= maximum + 1e-9 and by_method["entropy"][name] <= maximum + 1e-9
    scales = {}
    for method in histogram.METHODS:
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(_ours(small, method))).graph.initializer}
        scales[method] = {k: float(v) for k, v in inits.items() if k.endswith("_scale") and v.ndim == 0}
    assert scales["minmax"] != scales["entropy"] and scales["minmax"] != scales["percentile"]


def test_threshold_rules_on_a_known_distribution() -> None:
    # Half-normal bulk with rare outliers up to 50: minmax keeps the outliers, percentile and
    # entropy clip near the bulk, and the two clipping rules do not coincide.
    rng = np.random.default_rng(0)
    values = np.concatenate([np.abs(rng.normal(0, 1, 200_000)), np.linspace(10, 50, 20)])
    counts = np.histogram(values, bins=histogram.NUM_BINS, range=(0, values.max()))[0]
    hist = histogram.Histogram(amax=float(values.max()), counts=counts)
    minmax, pct, ent = (histogram.threshold(hist, m) for m in ("minmax", "percentile", "entropy"))
    assert minmax == pytest.approx(50.0)
    assert 3.0 < pct < 5.0 and 2.0 < ent < 10.0 and abs(ent - pct) > 0.05
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        histogram.threshold(hist, "kl")


def test_narrow_range_tensor_does_not_crash_percentile() -> None:
    # ORT's PercentileCalibrater crashes on such tensors ("Too many bins for data range").
    values = np.float32(2.0) + np.arange(1000, dtype=np.float32) * np.float32(1e-7)
    counts = np.histogram(values.astype(np.float64), bins=histogram.NUM_BINS, range=(0, float(values.max())))[0]
    hist = histogram.Histogram(amax=float(values.max()), counts=counts)
    assert 1.99 < histogram.threshold(hist, "percentile") <= float(values.max()) + 1e-6
    assert 1.9 < histogram.threshold(hist, "entropy") <= float(values.max()) + 1e-6


def test_all_zero_tensor_gets_a_valid_scale(small: dict, tmp_path: Path) -> None:
    ranges = {name: 0.0 for name in histogram.thresholds(small["hists"], "minmax")}
    out = qdq.write_qdq(small["model"], tmp_path / "zeros.onnx", ranges)
    assert qdq.check_qdq(out) == []


def test_single_pass_histogram_is_exact_when_the_range_grows() -> None:
    rng = np.random.default_rng(1)
    chunks = [rng.uniform(-1, 1, 5000).astype(np.float32), rng.uniform(-3, 3, 5000).astype(np.float32),
              np.zeros(100, np.float32)]
    acc = histogram._Accumulator()
    for chunk in chunks:
        acc.add(chunk)
    hist = acc.result()
    values = np.abs(np.concatenate(chunks)).astype(np.float64)
    assert hist.amax == pytest.approx(values.max()) and hist.upper >= hist.amax
    assert len(hist.counts) == histogram.NUM_BINS and hist.counts.sum() == values.size
    reference = np.histogram(values, bins=histogram.NUM_BINS, range=(0, hist.upper))[0]
    assert np.abs(hist.counts - reference).sum() <= 4      # float rounding at bin edges only
    assert histogram.threshold(hist, "minmax") == pytest.approx(values.max())


def test_logits_stay_float(small: dict) -> None:
    # A Q/DQ pair on the logits would round close scores onto the same int8 level and flip top-1.
    model = onnx.load(str(_ours(small)))
    producer = next(n for n in model.graph.node if "logits" in n.output)
    assert producer.op_type == "Gemm" and producer.name == "fc2"
    assert qdq.check_qdq(model) == []
