"""ORT session defaults (deploy/onnx/sessions.py) and benchmarks/cpu_latency.py: its timing, and a real run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.deploy.onnx import sessions as onnxrt

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_latency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cpu_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


class _Fake:
    """Just what the round-robin timer calls on a backend."""

    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls, self.synced = name, calls, 0

    def infer(self, batch):
        self.calls.append(self.name)
        return batch

    def synchronize(self):
        self.synced += 1


def test_round_robin_alternates_blocks_and_counts_every_timed_call(bench, monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    calls: list[str] = []
    models = [_Fake("a", calls), _Fake("b", calls)]
    stats = bench.time_round_robin(models, np.zeros((2, 3), np.float32), iters=4, rounds=2)
    # 2 rounds of: a's block (>= 1 warm-up call + 2 timed), then b's block.
    blocks = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
    assert blocks == ["a", "b", "a", "b"]
    assert [s.iters for s in stats] == [4, 4]
    assert all(s.p50_ms >= 0 and s.throughput_ips > 0 for s in stats)
    assert models[0].synced == calls.count("a")   # synchronize after every call, timed or not


@pytest.mark.slow
def test_the_script_runs_end_to_end_on_a_tiny_model(bench, tmp_path, capsys, monkeypatch):
    """The real thing, as small as it gets: a random 3-class width-reduced AlexNet-2012 at 64 px, a
    generated image folder, one timed call per block; every mode, OpenVINO when it is installed."""
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)   # ~50 s of sleeping between blocks otherwise
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from conftest import PIPELINE_WIDTH, write_image_folder

    from alexnet_deploy.alexnet.checkpoint import save_checkpoint
    from alexnet_deploy.alexnet.model import build_model
    from alexnet_deploy.deploy.preprocess import PreprocessSpec

    torch.manual_seed(0)
    classes = ("class_0", "class_1", "class_2")
    model = build_model("alexnet2012", num_classes=3, width=PIPELINE_WIDTH)
    checkpoint = save_checkpoint(tmp_path / "model.pt", model=model,
                                 arch="alexnet2012", classes=classes, preprocess=PreprocessSpec(resize=72, crop=64),
                                 config={}, epoch=0, metrics={})
    data = write_image_folder(tmp_path / "images", classes=3, per_class=6, size=48)
    with_ov = importlib.util.find_spec("openvino") is not None
    out = tmp_path / "result.json"
    argv = ["--checkpoint", str(checkpoint), "--data", str(data), "--work", str(tmp_path / "work"),
            "--image-size", "64", "--threads", "2", "--iters", "1", "--iters32", "1", "--calib-images", "6",
            "--eval-images", "6"]
    modes = ["--ort-tuning", "--weight-bits", "--profile", "--json", str(out)] + ([] if with_ov else ["--no-ov"])
    assert bench.main(argv + modes) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    rows = result["table"]["rows"]
    per_batch = 1 + 2 + 6 + (7 if with_ov else 0)   # torch, "before" x2, ort x3 precisions x2 LRN forms, ov + bf16
    assert [r["batch"] for r in rows] == [1] * per_batch + [32] * per_batch
    assert {(r["row"], r["lrn"]) for r in rows} >= {("torch eager", "torch"), ("ort default opts", "native"),
                                                     ("ort", "native"), ("ort", "conv")}
    for r in rows:
        assert r["iters"] == 3 and r["p50_ms"] > 0 and r["throughput_ips"] > 0 and r["top1"] is not None
        if r["precision"] == "fp32" and r["row"] != "ov-bf16":
            assert r["agreement"] == 1.0 and r["max_abs_diff"] < 1e-3, r
    assert rows[0]["x_torch"] == 1.0 and result["table"]["floors_ms"]["int8"] < result["table"]["floors_ms"]["fp32"]
    assert {"fastest_b1", "x_int8_floor", "b32_x_torch", "ort_over_ov"} <= set(result["table"]["targets"])
    assert "target 1: fastest batch 1" in printed and "target 3: batch-32 best" in printed

    tuning = result["ort_tuning"]
    assert len(tuning) == 2 * 2 * len(bench.ORT_VARIANTS)   # fp32 and int8, batch 1 and 32
    weight_bits = result["weight_bits"]
    assert [r["row"] for r in weight_bits[:2]] == ["ort 7-bit weights", "ort 8-bit weights"]
    assert 0 <= weight_bits[-1]["top1_agreement_7_vs_8_bit"] <= 1
    profile = result["profile"]
    assert profile["ort_int8"]["per_op_ms"] and "QLinearConv" in profile["ort_int8"]["kernels"]
    assert set(profile) == {"ort_int8", "ort_fp32"} | ({"ov_int8", "ov_fp32"} if with_ov else set())

    # A second run with the same --work reuses both bundles instead of exporting again.
    assert bench.main(argv + ["--skip-table"]) == 0
    assert "exporting" not in capsys.readouterr().out
