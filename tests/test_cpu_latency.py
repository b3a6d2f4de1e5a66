"""ORT session defaults (deploy/onnxrt.py) and the building blocks of benchmarks/cpu_latency.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.deploy import onnxrt

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_latency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cpu_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cpu_latency"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("cpu_latency", None)


def test_session_options_defaults_and_spinning():
    ort = onnxrt.import_ort()
    options = onnxrt.session_options(2)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.intra_op_num_threads == 2 and options.enable_cpu_mem_arena and options.enable_mem_pattern
    expected = "1" if onnxrt.ALLOW_SPINNING else "0"
    if onnxrt.ALLOW_SPINNING:
        with pytest.raises(Exception):  # ORT's default (spinning on) leaves the key unset
            options.get_session_config_entry("session.intra_op.allow_spinning")
    else:
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
    assert onnxrt.session_options(spinning=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_sessions_with_the_defaults_run(tmp_path):
    """The shared helper still works end to end with the new options (a one-node model)."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g",
                              [helper.make_tensor_value_info("input", 1, ["n", 4])],
                              [helper.make_tensor_value_info("y", 1, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    out = onnxrt.run_batches(onnxrt.cpu_session(model.SerializeToString(), threads=1), x, batch_size=2)
    np.testing.assert_array_equal(out, np.maximum(x, 0))


def test_bandwidth_is_measured(bench):
    gbs = bench.read_bandwidth(mib=64, repeats=2, threads=2)
    assert 0.1 < gbs < 10_000


def test_int8_configurations_keep_the_right_nodes_float(bench, tmp_path):
    """Each study configuration really changes what is quantized (so the study compares something)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from alexnet_deploy.deploy.graph_lrn import rewrite_lrn
    from lrn_helpers import export_native, lrn_net

    native = export_native(lrn_net(), tmp_path / "native.onnx")
    conv = tmp_path / "conv.onnx"
    onnx.save(rewrite_lrn(onnx.load(str(native))), str(conv))
    calib = np.random.default_rng(0).normal(0, 1, (4, 3, 64, 64)).astype(np.float32)
    model = onnx.load(str(conv))
    lrn_only = bench.excluded_nodes(model, bench.Int8Config("lrn"))
    assert lrn_only and all(name.startswith("lrn_conv/") for name in lrn_only)
    adopted = bench.excluded_nodes(model, bench.ADOPTED_INT8)
    assert adopted[:-1] == lrn_only and adopted[-1] == [n.name for n in model.graph.node if n.op_type == "Gemm"][-1]
    first_conv = bench.excluded_nodes(model, bench.Int8Config("c", float_first_conv=True))
    assert len(first_conv) == len(lrn_only) + 1 and not first_conv[-1].startswith("lrn_conv/")
    assert bench.excluded_nodes(model, bench.Int8Config("q", float_lrn=False)) == []
    for config in (bench.ADOPTED_INT8, bench.Int8Config("c", float_first_conv=True)):
        out = bench.quantize(conv, tmp_path / f"{config.name}.onnx", calib, config)
        quantized = onnx.load(str(out))
        producers = {o: n.op_type for n in quantized.graph.node for o in n.output}
        convs = [n for n in quantized.graph.node if n.op_type == "Conv" and not n.name.startswith("lrn_conv/")]
        first_weight_from = producers.get(convs[0].input[1])
        assert first_weight_from == (None if config.float_first_conv else "DequantizeLinear")
