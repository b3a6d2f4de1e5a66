"""INT8 that is correct on every CPU: 7-bit weights by default, CPU detection that refuses a model
this CPU's int8 kernels would compute wrongly, and int8 golden vectors of the Q/DQ model's own
semantics that verify judges a device against.

The x86 CPUs without VNNI are exercised for real, when QEMU's user-mode emulator is installed
(`apt install qemu-user-static`), by running this venv's Python on an emulated Haswell (AVX2, no
AVX-512, no VNNI): ONNX Runtime and OpenVINO then take their AVX2 int8 code paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime_bundle
from alexnet_deploy.deploy.bundle import read_manifest, make_artifact, write_manifest
from alexnet_deploy.deploy.platform.cpu import CpuFeatures, cpuinfo_flags, detect, features_from, refuse_unsafe_int8
from alexnet_deploy.deploy.evaluate.verify import INT8_REFERENCE_FILE, verify_bundle
from alexnet_deploy.errors import BackendUnavailable

QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")

# Flag lines in the /proc/cpuinfo format (x86: "flags", arm64: "Features"), shortened: an AMD EPYC
# Zen 2 (AVX2, no AVX-512, no VNNI), an Intel Sapphire Rapids (VNNI, AMX) and a Jetson Orin's
# Cortex-A78AE (dot product).
ZEN2 = "flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2 sha_ni\n"
SPR = "flags\t\t: fpu sse2 fma avx f16c avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_int8 amx_bf16\n"
ORIN = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"


def test_cpu_kinds_from_cpuinfo() -> None:
    zen2 = features_from(None, cpuinfo_flags(ZEN2), "x86_64")
    spr = features_from(None, cpuinfo_flags(SPR), "x86_64")
    orin = features_from(None, cpuinfo_flags(ORIN), "aarch64")
    assert "avx2" in zen2.flags and not zen2.int8_dot_product
    assert not zen2.int8_safe(8) and zen2.int8_safe(7)
    assert spr.int8_dot_product and spr.int8_safe(8)
    assert orin.int8_dot_product and orin.int8_safe(8) and "asimddp" in orin.flags
    assert zen2.to_dict()["isa"] == sorted(zen2.flags)


def test_numpy_cpuid_wins_over_a_cpuinfo_that_describes_another_cpu() -> None:
    host = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"}
    # Under an emulator /proc/cpuinfo is the host's, numpy's CPUID is the emulated CPU's.
    emulated = features_from({"avx2", "fma", "f16c"}, host, "x86_64")
    assert emulated.flags == {"avx2", "fma", "f16c"} and not emulated.int8_dot_product
    # When both agree, /proc/cpuinfo adds what numpy does not know (AVX-VNNI, AMX).
    native = features_from({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni"}, host, "x86_64")
    assert {"avx_vnni", "amx_int8"} <= native.flags


def test_this_machine_is_described(tmp_path: Path) -> None:
    features = detect()
    assert features.machine and features.describe().startswith(features.machine)
    assert isinstance(features.int8_dot_product, bool)
    (tmp_path / "cpuinfo").write_text(ZEN2)    # what numpy asks the CPU still decides
    assert detect(tmp_path / "cpuinfo").flags <= features.flags | cpuinfo_flags(ZEN2)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    return runtime_bundle.int8_bundle(tmp_path_factory)


def _int8_weights(model_path: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    return [numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and np.prod(t.dims) > 1]


def test_default_int8_has_7_bit_weights_and_its_own_golden_vectors(int8_bundle: Path) -> None:
    weights = _int8_weights(int8_bundle / "model.int8.onnx")
    assert weights and all(np.abs(w).max() <= 64 for w in weights)
    assert max(np.abs(w).max() for w in weights) == 64   # the range is used, not just capped
    manifest = read_manifest(int8_bundle)
    int8 = manifest.artifact("int8", "onnx")
    assert int8.built_with["weight_bits"] == 7 and manifest.calibration["weight_bits"] == 7
    oracle = manifest.artifact("int8", "npz")
    assert oracle.file == INT8_REFERENCE_FILE and oracle.built_with["model_sha256"] == int8.sha256
    with np.load(int8_bundle / INT8_REFERENCE_FILE, allow_pickle=False) as npz:
        assert str(npz["model_sha256"]) == int8.sha256
        with np.load(int8_bundle / "reference.npz", allow_pickle=False) as ref:
            assert npz["logits"].shape == ref["logits"].shape


def test_8_bit_weights_are_refused_on_a_cpu_without_vnni(int8_bundle: Path) -> None:
    artifact = read_manifest(int8_bundle).artifact("int8", "onnx")
    eight = type(artifact)(**{**artifact.to_dict(), "built_with": {**artifact.built_with, "weight_bits": 8}})
    avx2_only = CpuFeatures("x86_64", frozenset({"avx2", "fma"}))
    with pytest.raises(BackendUnavailable, match=r"8-bit weights.*--weight-bits 7"):
        refuse_unsafe_int8(eight, "ONNX Runtime", avx2_only)
    refuse_unsafe_int8(artifact, "ONNX Runtime", avx2_only)    # 7 bits: fine everywhere
    refuse_unsafe_int8(eight, "ONNX Runtime", CpuFeatures("x86_64", frozenset({"avx2", "avx512_vnni"})))
    refuse_unsafe_int8(eight, "ONNX Runtime", CpuFeatures("aarch64", frozenset({"asimd"})))
    legacy = type(artifact)(**{**artifact.to_dict(), "built_with": {}})   # before weight bits were recorded
    with pytest.raises(BackendUnavailable):
        refuse_unsafe_int8(legacy, "OpenVINO", avx2_only)


def test_verify_judges_int8_against_the_oracle_and_reports_fp32_as_information(int8_bundle: Path) -> None:
    report = verify_bundle(int8_bundle, backends=("ort",), precisions=("int8",))
    assert report.ok, [c for c in report.checks if c.status == "fail"]
    golden = [c for c in report.checks if c.check == "golden"]
    info = [c for c in report.checks if c.check == "golden vs fp32"]
    assert len(golden) == 1 and golden[0].status == "pass" and INT8_REFERENCE_FILE in golden[0].detail
    assert golden[0].cosine > 0.999
    assert len(info) == 1 and info[0].status == "info"
    assert report.to_dict()["cpu"]["machine"]


def test_stale_int8_golden_vectors_fail(int8_bundle: Path, tmp_path: Path) -> None:
    bundle = runtime_bundle.linked_copy(int8_bundle, tmp_path / "bundle")
    (bundle / INT8_REFERENCE_FILE).unlink()   # a hard link: replace, never write through it
    with np.load(int8_bundle / INT8_REFERENCE_FILE, allow_pickle=False) as npz:
        np.savez(bundle / INT8_REFERENCE_FILE, logits=npz["logits"], model_sha256=np.array("0" * 64))
    manifest = read_manifest(bundle)
    write_manifest(bundle, manifest.with_artifact(make_artifact(bundle, INT8_REFERENCE_FILE, "npz", "int8")))
    report = verify_bundle(bundle, backends=("ort",), precisions=("int8",))
    failed = [c for c in report.checks if c.status == "fail"]
    assert not report.ok and "computed for another int8 model" in failed[0].detail


# --------------------------------------------------------------------------- a real AVX2-only CPU

@pytest.fixture(scope="module")
def w8_bundle(int8_bundle: Path, tmp_path_factory) -> Path:
    """The same model calibrated with full 8-bit weights (what TensorRT-only bundles may use)."""
    from alexnet_deploy.calibration import calibrate_bundle

    w8 = runtime_bundle.linked_copy(int8_bundle, tmp_path_factory.mktemp("w8") / "bundle")
    for name in ("model.int8.onnx", INT8_REFERENCE_FILE):
        (w8 / name).unlink()   # hard links to the shared bundle: replace, never write through
    calibrate_bundle(w8, calib_dir=runtime_bundle.images(tmp_path_factory), num_images=12, method="minmax",
                     batch_size=4, weight_bits=8)
    return w8


_OV_ORACLE = """
import json, sys
from alexnet_deploy.deploy.backends.base import load
from alexnet_deploy.deploy.bundle import read_manifest
from alexnet_deploy.deploy.evaluate.verify import _judge_int8, load_reference
out = {}
for bundle in sys.argv[1:]:
    manifest = read_manifest(bundle)
    reference = load_reference(bundle, manifest)
    with load(bundle, backend="ov", precision="int8", allow_unsafe_int8=True) as model:
        logits = model.infer_all(reference.inputs)
    out[bundle] = _judge_int8(reference, logits, "ov", model.provider, manifest.artifact("int8").sha256)[0].status
print(json.dumps(out))
"""


@pytest.mark.slow
def test_openvino_avx2_kernels_7_bit_weights_match_the_oracle_8_bit_do_not(int8_bundle: Path, w8_bundle: Path) -> None:
    """oneDNN's ONEDNN_MAX_CPU_ISA=AVX2 makes OpenVINO take its AVX2 int8 kernels on any x86 CPU."""
    pytest.importorskip("openvino")
    if not detect().is_x86:
        pytest.skip("the AVX2 kernels exist on x86 only")
    run = subprocess.run([sys.executable, "-c", _OV_ORACLE, str(int8_bundle), str(w8_bundle)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert run.returncode == 0, run.stderr[-3000:]
    status = json.loads(run.stdout.strip().splitlines()[-1])
    assert status == {str(int8_bundle): "pass", str(w8_bundle): "fail"}

_ON_HASWELL = """
import json, sys
from alexnet_deploy.deploy.backends.base import load
from alexnet_deploy.deploy.bundle import read_manifest
from alexnet_deploy.deploy.platform.cpu import detect
from alexnet_deploy.deploy.evaluate.verify import _judge_int8, load_reference
from alexnet_deploy.errors import BackendUnavailable
out = {"cpu": detect().to_dict()}
for name, bundle in (("w7", sys.argv[1]), ("w8", sys.argv[2])):
    manifest = read_manifest(bundle)
    reference = load_reference(bundle, manifest)
    try:
        load(bundle, backend="ort", precision="int8").close()
        out[name + "_refused"] = None
    except BackendUnavailable as exc:
        out[name + "_refused"] = str(exc)
    for backend in ("ort", "ov"):
        with load(bundle, backend=backend, precision="int8", allow_unsafe_int8=True) as model:
            logits = model.infer_all(reference.inputs)
        check = _judge_int8(reference, logits, backend, model.provider, manifest.artifact("int8").sha256)[0]
        out[f"{name}_{backend}"] = [check.status, check.agreement, check.cosine, check.detail]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="needs QEMU's user-mode emulator (apt install qemu-user-static) to "
                                         "run an AVX2-only CPU")
def test_on_an_emulated_avx2_cpu_7_bit_weights_pass_and_8_bit_are_refused_and_fail(int8_bundle: Path,
                                                                                    w8_bundle: Path) -> None:
    run = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", _ON_HASWELL, str(int8_bundle), str(w8_bundle)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert not out["cpu"]["int8_dot_product"] and "avx512_vnni" not in out["cpu"]["isa"]
    assert out["w7_refused"] is None and out["w7_ort"][0] == "pass" and out["w7_ov"][0] == "pass"
    assert "8-bit weights" in out["w8_refused"]
    # The refusal is not the only guard: forced to run, the saturating kernels fail the oracle.
    for backend in ("ort", "ov"):
        status, agreement, cosine, detail = out[f"w8_{backend}"]
        assert status == "fail" and "without VNNI" in detail, (backend, agreement, cosine)
