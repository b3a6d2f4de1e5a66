"""TensorRT engine builder (deploy/trt/builder.py) against the STAND-IN tensorrt module.

The stand-in (tests/stubs/tensorrt, written from the API summarized in docs/tensorrt.md) reproduces the
8.6, 10.x and 11.x API surfaces and their documented rules. These tests prove that the builder
asks each version for the right things (network flags, precision route, profile, workspace,
timing cache, DLA, version compatibility) and reports parser errors by node. They CANNOT prove
that real TensorRT accepts our ONNX, which kernels it picks, build time, engine speed or GPU
numerics: that needs a real GPU (the test marked ``gpu`` below, skipped here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.deploy.bundle import (Manifest, TensorSpec, make_artifact, read_manifest, verify_artifacts,
                                          write_manifest)
from alexnet_deploy.deploy.preprocess import PreprocessSpec
from alexnet_deploy.errors import BackendUnavailable, ExportError
from alexnet_deploy.deploy.trt import builder
from stubs.fake_env import stand_ins  # noqa: F401 - pytest fixture

VERSIONS = ("8.6.1", "10.3.0", "11.1.0")
SIZE, CLASSES = 16, 3


def _tiny_model(bad_op: bool = False, zero_point: int | None = None):
    """Conv -> Relu -> LRN -> GlobalAveragePool -> Flatten -> Gemm, dynamic batch; optionally Q/DQ
    on the input (int8 with ``zero_point``) or an op no TensorRT importer knows."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(0, 0.5, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, (8,)),
             "w2": rng.normal(0, 0.5, (CLASSES, 8)), "b2": rng.normal(0, 0.1, (CLASSES,))}
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    first = "input"
    nodes = []
    if zero_point is not None:
        tensors += [numpy_helper.from_array(np.array(0.05, np.float32), "q_scale"),
                    numpy_helper.from_array(np.array(zero_point, np.int8), "q_zero")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "q_scale", "q_zero"], ["q"], name="quant_in"),
                  helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["dq"], name="dequant_in")]
        first = "dq"
    nodes += [helper.make_node("Conv", [first, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
              helper.make_node("Mystery", ["c1"], ["r1"], name="mystery_node", domain="com.example") if bad_op
              else helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
              helper.make_node("LRN", ["r1"], ["n1"], size=5, alpha=5e-4, beta=0.75, bias=2.0, name="lrn1"),
              helper.make_node("GlobalAveragePool", ["n1"], ["p1"], name="pool"),
              helper.make_node("Flatten", ["p1"], ["f1"], axis=1, name="flatten"),
              helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          ["batch", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
                              initializer=tensors)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("com.example", 1)] if bad_op else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9  # onnx 1.23 writes IR 14 by default; onnxruntime 1.31 reads up to 13
    return model


def make_bundle(root: Path, fp16: bool = True, int8_zero: int | None = None, bad_op: bool = False) -> Path:
    """A small real bundle (fp32 [+ fp16 via export.fp16] [+ Q/DQ int8]) with a manifest."""
    import onnx

    from alexnet_deploy.export import fp16 as fp16_mod
    from alexnet_deploy.deploy.onnx.sessions import cpu_logits as ort_logits

    root.mkdir(parents=True, exist_ok=True)
    onnx.save(_tiny_model(bad_op=bad_op), str(root / "model.onnx"))
    files = [("model.onnx", "fp32")]
    if fp16 and not bad_op:
        x = np.random.default_rng(1).normal(0, 1, (4, 3, SIZE, SIZE)).astype(np.float32)
        fp16_mod.convert(root / "model.onnx", root / "model.fp16.onnx", x, ort_logits(root / "model.onnx", x))
        files.append(("model.fp16.onnx", "fp16"))
    if int8_zero is not None:
        onnx.save(_tiny_model(zero_point=int8_zero), str(root / "model.int8.onnx"))
        files.append(("model.int8.onnx", "int8"))
    manifest = Manifest(classes=tuple(f"c{i}" for i in range(CLASSES)),
                        input=TensorSpec("input", (-1, 3, SIZE, SIZE)), output=TensorSpec("logits", (-1, CLASSES)),
                        preprocess=PreprocessSpec(resize=18, crop=SIZE), max_batch=8,
                        artifacts=tuple(make_artifact(root, f, "onnx", p) for f, p in files))
    write_manifest(root, manifest)
    return root


def plan_header(info) -> dict:
    from tensorrt import _plan  # the stand-in's plan format

    header, _ = _plan.decode(info.path.read_bytes())
    return header


@pytest.fixture(scope="module")
def bundle_src(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("trt") / "bundle", int8_zero=0)


@pytest.fixture
def bundle(bundle_src: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle_src, tmp_path / "bundle"))


# Expected per version and precision: (network flags, builder precision flags, strongly typed, source ONNX)
EXPECTED = {
    ("8.6.1", "fp32"): (["EXPLICIT_BATCH"], [], False, "model.onnx"),
    ("8.6.1", "fp16"): (["EXPLICIT_BATCH"], ["FP16"], False, "model.onnx"),
    ("8.6.1", "int8"): (["EXPLICIT_BATCH"], ["FP16", "INT8"], False, "model.int8.onnx"),
    ("10.3.0", "fp32"): ([], [], False, "model.onnx"),
    ("10.3.0", "fp16"): (["STRONGLY_TYPED"], [], True, "model.fp16.onnx"),
    ("10.3.0", "int8"): (["STRONGLY_TYPED"], [], True, "model.int8.onnx"),
    ("11.1.0", "fp32"): ([], [], True, "model.onnx"),
    ("11.1.0", "fp16"): ([], [], True, "model.fp16.onnx"),
    ("11.1.0", "int8"): ([], [], True, "model.int8.onnx"),
}


@pytest.mark.parametrize("version", VERSIONS)
def test_flags_and_route_per_version(stand_ins, bundle: Path, version: str) -> None:
    trt = stand_ins(trt_version=version)
    assert trt.STAND_IN and trt.__version__ == version
    major = int(version.split(".")[0])
    assert hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") == (major < 11)
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") == (major >= 10)
    assert hasattr(trt.BuilderFlag, "FP16") == hasattr(trt.BuilderFlag, "INT8") == (major < 11)
    assert hasattr(trt.Builder, "platform_has_fast_fp16") == (major < 11)
    for precision in ("fp32", "fp16", "int8"):
        net_flags, precision_flags, strong, source = EXPECTED[(version, precision)]
        info = builder.build_engine(bundle, precision, workspace_gib=0.5, opt_level=4)
        header = plan_header(info)
        assert header["trt_version"] == version
        assert header["network_flags"] == net_flags, precision
        assert [f for f in header["builder_flags"] if f in ("FP16", "INT8")] == precision_flags, precision
        assert header["strongly_typed"] is strong
        assert not (strong and precision_flags), "precision flags never go with strong typing"
        assert header["memory_pools"] == {"WORKSPACE": 1 << 29}
        assert header["opt_level"] == 4
        assert info.route.onnx_file == source and info.meta["source_onnx"]["file"] == source
        assert info.file == f"engines/{precision}-sm87-trt{version}.plan"


def test_sidecar_records_the_build(stand_ins, bundle: Path) -> None:
    stand_ins(trt_version="10.3.0", gpu_name="Orin (fake)", cc="8.7")
    info = builder.build_engine(bundle, "fp16", max_batch=8)
    meta = json.loads((bundle / info.sidecar).read_text())
    assert meta == info.meta
    assert meta["tensorrt_version"] == "10.3.0"
    assert meta["gpu"]["name"] == "Orin (fake)" and meta["gpu"]["compute_capability"] == "8.7"
    assert meta["precision"] == "fp16" and meta["strongly_typed"] is True
    assert meta["source_onnx"]["sha256"] == read_manifest(bundle).artifact("fp16").sha256
    assert meta["plan"]["sha256"] == info.plan_sha256 and meta["plan"]["bytes"] == info.path.stat().st_size
    assert meta["profile"] == {"input": "input", "min": [1, 3, SIZE, SIZE], "opt": [4, 3, SIZE, SIZE],
                               "max": [8, 3, SIZE, SIZE]}
    assert plan_header(info)["profiles"] == [{"input": [meta["profile"][k] for k in ("min", "opt", "max")]}]
    assert meta["build_seconds"] >= 0 and meta["built_at"].endswith("+00:00")
    assert {"network_flags", "builder_flags", "opt_level", "workspace_bytes", "version_compatible"} <= set(meta)


def test_timing_cache_is_written_and_reused(stand_ins, bundle: Path) -> None:
    stand_ins(trt_version="10.3.0")
    first = builder.build_engine(bundle, "fp32")
    cache = Path(first.timing_cache)
    assert cache.is_file() and cache.parent == bundle / "engines"
    assert not first.timing_cache_reused and plan_header(first)["timing_cache_hits"] == 0
    second = builder.build_engine(bundle, "fp32")
    header = plan_header(second)
    assert second.timing_cache_reused and header["timing_cache_misses"] == 0 and header["timing_cache_hits"] > 0
    cache.write_bytes(b"garbage")  # a corrupt cache must not break the build
    assert not builder.build_engine(bundle, "fp32").timing_cache_reused
    assert builder.build_engine(bundle, "fp32", timing_cache=False).timing_cache is None


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_parser_error_names_the_node(stand_ins, tmp_path: Path, version: str) -> None:
    stand_ins(trt_version=version)
    bad = make_bundle(tmp_path / "bad", fp16=False, bad_op=True)
    with pytest.raises(ExportError, match=r"model.onnx: .*node 'mystery_node' \(Mystery\): No importer"):
        builder.build_engine(bad, "fp32")


def test_nonzero_zero_point_is_refused(stand_ins, tmp_path: Path) -> None:
    stand_ins(trt_version="10.3.0")
    asym = make_bundle(tmp_path / "asym", fp16=False, int8_zero=3)
    with pytest.raises(ExportError, match=r"node 'quant_in' \(QuantizeLinear\): Non-zero zero point"):
        builder.build_engine(asym, "int8")


def test_missing_artifacts_say_what_to_run(stand_ins, tmp_path: Path) -> None:
    plain = make_bundle(tmp_path / "plain", fp16=False)
    stand_ins(trt_version="11.1.0")
    with pytest.raises(ExportError, match="--fp16"):
        builder.build_engine(plain, "fp16")
    with pytest.raises(ExportError, match="alexnet-deploy calibrate"):
        builder.build_engine(plain, "int8")
    stand_ins(trt_version="10.3.0")  # 10.x can still build fp16 from the fp32 ONNX with the FP16 flag
    assert plan_header(builder.build_engine(plain, "fp16"))["builder_flags"] == ["FP16", "TF32"]


def test_dla_core_with_gpu_fallback_and_static_profile(stand_ins, bundle: Path) -> None:
    stand_ins(trt_version="10.3.0", dla_cores=2)
    info = builder.build_engine(bundle, "fp16", dla_core=1, max_batch=4)
    header = plan_header(info)
    assert header["device_type"] == "DLA" and header["dla_core"] == 1 and "GPU_FALLBACK" in header["builder_flags"]
    assert header["profiles"] == [{"input": [[4, 3, SIZE, SIZE]] * 3}], "DLA needs min = opt = max"
    assert info.file.endswith("-dla1.plan")
    with pytest.raises(ExportError, match="--dla-core 2: this device has 2 DLA"):
        builder.build_engine(bundle, "fp16", dla_core=2)
    with pytest.raises(ExportError, match="fp16 and int8"):
        builder.build_engine(bundle, "fp32", dla_core=0)


def test_version_compatible_plan_needs_host_code_allowed(stand_ins, bundle: Path) -> None:
    trt = stand_ins(trt_version="10.3.0")
    info = builder.build_engine(bundle, "fp32", version_compatible=True)
    assert plan_header(info)["version_compatible"] and info.file.endswith("-vc.plan")
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    assert runtime.deserialize_cuda_engine(info.path.read_bytes()) is None
    runtime.engine_host_code_allowed = True
    assert runtime.deserialize_cuda_engine(info.path.read_bytes()) is not None


def test_no_gpu_is_unavailable_with_reason(stand_ins, bundle: Path) -> None:
    stand_ins(trt_version="10.3.0", devices=0)
    ok, reason = builder.tensorrt_available()
    assert not ok and "cudaErrorInsufficientDriver" in reason
    with pytest.raises(BackendUnavailable, match="GPU"):
        builder.build_engine(bundle, "fp32")


def test_plan_runs_in_the_stand_in_runtime(stand_ins, bundle: Path) -> None:
    """Name-based I/O + execute_async_v3 through fake device buffers give ORT's logits."""
    trt = stand_ins(trt_version="10.3.0")
    from cuda.bindings import runtime as cudart

    from alexnet_deploy.deploy.onnx.sessions import cpu_logits as ort_logits

    info = builder.build_engine(bundle, "fp32", max_batch=8)
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(info.path.read_bytes())
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["input", "logits"] and engine.get_tensor_mode("input") == trt.TensorIOMode.INPUT
    assert engine.get_tensor_profile_shape("input", 0)[2] == (8, 3, SIZE, SIZE)
    context = engine.create_execution_context()
    x = np.random.default_rng(2).normal(0, 1, (5, 3, SIZE, SIZE)).astype(np.float32)
    assert not context.set_input_shape("input", (9, 3, SIZE, SIZE)), "beyond the profile's max"
    assert context.set_input_shape("input", x.shape)
    out = np.empty(context.get_tensor_shape("logits"), np.float32)
    _, d_in = cudart.cudaMalloc(x.nbytes)
    _, d_out = cudart.cudaMalloc(out.nbytes)
    cudart.cudaMemcpy(d_in, x.ctypes.data, x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
    assert context.set_tensor_address("input", d_in) and context.set_tensor_address("logits", d_out)
    assert context.execute_async_v3(0)
    cudart.cudaMemcpy(out.ctypes.data, d_out, out.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
    np.testing.assert_allclose(out, ort_logits(bundle / "model.onnx", x), rtol=1e-5, atol=1e-5)
    cudart.cudaFree(d_in), cudart.cudaFree(d_out)
    stand_ins(trt_version="10.4.0")  # a plan only loads on the TensorRT that built it
    other = sys.modules["tensorrt"]
    assert other.Runtime(other.Logger(other.Logger.ERROR)).deserialize_cuda_engine(info.path.read_bytes()) is None


def test_a_built_engine_becomes_a_checked_artifact(stand_ins, bundle: Path) -> None:
    from alexnet_deploy.deploy.trt.engines import BuildOptions, ensure_engine

    stand_ins(trt_version="10.3.0")
    result = ensure_engine(bundle, "int8", BuildOptions())   # what export and build-engine call
    entry = read_manifest(bundle).artifact("int8", kind="trt-plan")
    assert bundle / entry.file == result.path and not result.cached
    sidecar = json.loads((bundle / entry.built_with["sidecar"]).read_text())
    assert entry.sha256 == sidecar["plan"]["sha256"] and entry.built_with["tensorrt"] == "10.3.0"
    assert len(verify_artifacts(bundle)) == len(read_manifest(bundle).artifacts)


def test_without_tensorrt_says_what_to_install() -> None:
    """This machine has no TensorRT at all (no stand-in on the path here)."""
    code = ("import sys; sys.path = [p for p in sys.path if 'stubs' not in p]\n"
            "from alexnet_deploy.deploy.trt.builder import tensorrt_available\n"
            "ok, reason = tensorrt_available(); print(ok, reason)\n"
            "assert 'torch' not in sys.modules, 'deploy.trt.builder must not import torch'")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("True"):
        pytest.skip("a real TensorRT and GPU are present")
    assert "python3-libnvinfer" in result.stdout or "GPU" in result.stdout


@pytest.mark.gpu
def test_real_tensorrt_builds_and_runs(bundle: Path) -> None:
    """On a real GPU: build fp32/fp16 engines from the bundle and check they load."""
    ok, reason = builder.tensorrt_available()
    if not ok:
        pytest.skip(f"needs a real NVIDIA GPU with TensorRT: {reason}")
    import tensorrt as trt

    if getattr(trt, "STAND_IN", False):
        pytest.skip("the stand-in tensorrt is on the path; this test needs the real one")
    for precision in ("fp32", "fp16"):
        info = builder.build_engine(bundle, precision)
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(info.path.read_bytes())
        assert engine is not None and engine.num_io_tensors == 2


def test_flag_route_pins_guarded_nodes_to_fp32(stand_ins, tmp_path: Path) -> None:
    """Where fp16 comes from BuilderFlag.FP16 on the fp32 ONNX (8.6), the overflow guard's nodes get
    fp32 layer precisions (+ OBEY_PRECISION_CONSTRAINTS); the strongly typed route (10.x) needs none."""
    import dataclasses

    root = make_bundle(tmp_path / "guarded")
    manifest = read_manifest(root)
    fp16_entry = dataclasses.replace(manifest.artifact("fp16"), built_with={"kept_fp32": ["conv1", "ghost"]})
    write_manifest(root, manifest.with_artifact(fp16_entry))
    stand_ins(trt_version="8.6.1")
    info = builder.build_engine(root, "fp16")
    header = plan_header(info)
    assert header["layer_precisions"] == {"conv1": "FLOAT"}
    assert "OBEY_PRECISION_CONSTRAINTS" in header["builder_flags"] and "FP16" in header["builder_flags"]
    assert info.meta["fp32_layers"] == ["conv1"] and info.meta["fp32_layers_not_found"] == ["ghost"]
    stand_ins(trt_version="10.3.0")
    header = plan_header(builder.build_engine(root, "fp16"))
    assert header["strongly_typed"] and header["layer_precisions"] == {}


def test_tensorrt_log_goes_to_logging_and_errors_are_kept(stand_ins, bundle: Path, caplog) -> None:
    trt = stand_ins(trt_version="10.3.0")
    logger = builder.make_logger(trt)
    trt_builder = trt.Builder(logger)
    network = trt_builder.create_network(0)
    builder.parse_onnx(trt, trt.OnnxParser(network, logger), bundle / "model.onnx")
    config = trt_builder.create_builder_config()  # no optimization profile for the dynamic batch axis
    with caplog.at_level("ERROR", logger="alexnet_deploy.deploy.trt.builder"):
        assert trt_builder.build_serialized_network(network, config) is None
    assert logger.errors and "no optimization profile" in logger.errors[-1]
    assert "no optimization profile" in caplog.text
