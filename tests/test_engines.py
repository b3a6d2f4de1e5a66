"""Engine cache (key, hit / miss / stale / corrupt), the OOM retry policy, and the child-process build.

The builds here run against the stand-in ``tensorrt`` module in tests/stubs (put on the child's
PYTHONPATH). The stand-in proves the cache, the subprocess protocol and the retry logic; it cannot
prove that real TensorRT accepts our ONNX, how much memory a real build needs, or that a real
plan runs: that needs a GPU (tests marked ``gpu``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from alexnet_deploy.deploy.trt import engines
from alexnet_deploy.deploy.bundle import read_manifest
from alexnet_deploy.deploy.trt.child import OOM_EXIT_CODE, DeviceInfo, is_oom, probe_device
from alexnet_deploy.deploy.trt.engines import (MIN_WORKSPACE, Attempt, BuildOptions, default_workspace, engine_key,
                                           ensure_engine, find_cached, retry_plan)
from alexnet_deploy.errors import BackendUnavailable, BundleError, ExportError
from device_helpers import tiny_bundle

ORIN = DeviceInfo(trt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", free_bytes=6 << 30,
                  total_bytes=8 << 30, integrated=True)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path)


def _fake_plan(bundle: Path, key, name: str = "engines/fp16-sm87-trt10.3.0.plan", data: bytes = b"plan") -> str:
    """Record a plan file in the manifest the way a finished build does (cache bookkeeping only)."""
    (bundle / name).parent.mkdir(exist_ok=True)
    (bundle / name).write_bytes(data)
    engines._register(bundle, key, name, Attempt(1 << 30, 3), 1.0)
    return name


def test_retry_plan_shrinks_workspace_and_opt_level() -> None:
    plan = retry_plan(2 << 30, 4)
    assert plan == [Attempt(2 << 30, 4), Attempt(1 << 30, 2), Attempt(512 << 20, 1)]
    assert retry_plan(MIN_WORKSPACE, 0) == [Attempt(MIN_WORKSPACE, 0)], "nothing left to shrink: one try"
    assert all(a.workspace_bytes >= MIN_WORKSPACE for a in retry_plan(100 << 20, 3, max_attempts=5))


def test_default_workspace_from_free_memory() -> None:
    assert default_workspace(ORIN) == 3 << 30
    assert default_workspace(dataclasses.replace(ORIN, free_bytes=64 << 30)) == 4 << 30
    assert default_workspace(dataclasses.replace(ORIN, free_bytes=10 << 20)) == MIN_WORKSPACE


@pytest.mark.parametrize("code, message, oom", [
    (-9, "", True),                     # SIGKILL: the Linux OOM killer
    (OOM_EXIT_CODE, "", True),
    (1, "[defaultAllocator.cpp::allocate] Error Code 1: Cuda Runtime (out of memory)", True),
    (1, "Requested amount of GPU memory (1073741824 bytes) could not be allocated", True),
    (1, "node 'conv1' (Conv): unsupported", False),
])
def test_oom_detection(code: int, message: str, oom: bool) -> None:
    assert is_oom(code, message) is oom


def test_key_covers_every_field(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    base = engine_key(manifest, "fp16", ORIN)
    assert base.onnx_sha256 == manifest.artifact("fp16").sha256
    assert base.profile == ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    variants = [engine_key(manifest, "fp32", ORIN), engine_key(manifest, "fp16", ORIN, max_batch=4),
                engine_key(manifest, "fp16", ORIN, dla_core=0), engine_key(manifest, "fp16", ORIN, version_compatible=True),
                engine_key(manifest, "fp16", dataclasses.replace(ORIN, trt_version="10.3.1")),
                engine_key(manifest, "fp16", dataclasses.replace(ORIN, gpu_name="Xavier", compute_capability="7.2"))]
    digests = {v.digest() for v in variants} | {base.digest()}
    assert len(digests) == len(variants) + 1
    assert engine_key(manifest, "fp16", ORIN, dla_core=0).profile[0][0] == 8, "DLA profiles are static"
    assert engine_key(manifest, "fp16", dataclasses.replace(ORIN, free_bytes=1)).digest() == base.digest()
    with pytest.raises(BundleError, match="calibrate"):
        engine_key(manifest, "int8", ORIN)


def test_cache_hit_stale_and_corrupt(bundle: Path) -> None:
    key = engine_key(read_manifest(bundle), "fp16", ORIN)
    assert find_cached(bundle, read_manifest(bundle), key) == (None, "no engine yet")
    name = _fake_plan(bundle, key)
    hit, reason = find_cached(bundle, read_manifest(bundle), key)
    assert hit is not None and hit.file == name and reason == ""
    newer = engine_key(read_manifest(bundle), "fp16", dataclasses.replace(ORIN, trt_version="10.3.1"))
    miss, reason = find_cached(bundle, read_manifest(bundle), newer)
    assert miss is None and "stale" in reason and "trt_version: '10.3.0' -> '10.3.1'" in reason
    (bundle / name).write_bytes(b"truncated")
    miss, reason = find_cached(bundle, read_manifest(bundle), key)
    assert miss is None and "sha256 mismatch" in reason


def test_no_tensorrt_is_a_clear_error() -> None:
    """This machine has no TensorRT: the probe child says so, with what to install."""
    with pytest.raises(BackendUnavailable, match=r"cannot build TensorRT engines here: .*python3-libnvinfer"):
        probe_device()


# ----------------------------------------------------------------------------- builds in a child process
# against the stand-in tensorrt + cuda-python modules in tests/stubs (NOT TensorRT: they prove the
# cache, the child protocol and the retry policy, not that a real build works or how much memory it needs).

STUBS = Path(__file__).resolve().parent / "stubs"

# Real TensorRT fails in two ways when memory runs out: the builder logs an allocation error and
# returns None, or (typical on a Jetson) the kernel's OOM killer SIGKILLs the process. This wrapper
# makes the stand-in do either when the workspace limit is above a threshold, and logs each try.
_OOM_WRAPPER = '''
"""Test-only wrapper: the tests/stubs tensorrt STAND-IN plus simulated out-of-memory failures."""
import importlib.util, json, os, signal, sys
_stub = os.environ["OOM_STUB_DIR"]
_spec = importlib.util.spec_from_file_location("tensorrt", os.path.join(_stub, "__init__.py"),
                                               submodule_search_locations=[_stub])
_mod = importlib.util.module_from_spec(_spec)
sys.modules["tensorrt"] = _mod
_spec.loader.exec_module(_mod)
_build = _mod.Builder.build_serialized_network

def _oom_build(self, network, config):
    ws = config.get_memory_pool_limit(_mod.MemoryPoolType.WORKSPACE) >> 20
    with open(os.environ["OOM_LOG"], "a") as fh:
        fh.write(json.dumps([ws, config.builder_optimization_level]) + "\\n")
    if ws > int(os.environ.get("OOM_KILL_ABOVE_MB", 1 << 30)):
        os.kill(os.getpid(), signal.SIGKILL)
    if ws > int(os.environ.get("OOM_FAIL_ABOVE_MB", 1 << 30)):
        self.logger.log(_mod.Logger.ERROR, "[defaultAllocator.cpp::allocate::20] Error Code 1: Cuda Runtime "
                        "(out of memory)")
        return None
    return _build(self, network, config)

_mod.Builder.build_serialized_network = _oom_build
'''


@pytest.fixture
def stand_in(tmp_path: Path) -> dict[str, str]:
    """Child-process environment that imports the stand-in tensorrt and cuda-python."""
    return {"PYTHONPATH": os.pathsep.join([str(STUBS), os.environ.get("PYTHONPATH", "")]),
            "FAKE_TRT_VERSION": "10.3.0", "FAKE_CUDA_GPU_NAME": "Orin (stand-in)", "FAKE_CUDA_CC": "8.7",
            "FAKE_CUDA_FREE_MB": "4096", "FAKE_CUDA_TOTAL_MB": "8192"}


@pytest.fixture
def oom_stand_in(stand_in: dict[str, str], tmp_path: Path) -> dict[str, str]:
    wrapper = tmp_path / "oom_wrapper" / "tensorrt"
    wrapper.mkdir(parents=True)
    (wrapper / "__init__.py").write_text(_OOM_WRAPPER)
    return {**stand_in, "PYTHONPATH": os.pathsep.join([str(wrapper.parent), stand_in["PYTHONPATH"]]),
            "OOM_STUB_DIR": str(STUBS / "tensorrt"), "OOM_LOG": str(tmp_path / "oom.log")}


def _tries(env: dict[str, str]) -> list[list[int]]:
    log = Path(env["OOM_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _kinds(events: list) -> list[str]:
    """What happened, per engine event: the first word of its message."""
    return [e.message.split(":", 1)[0] for e in events]


def test_build_hit_and_rebuild_when_stale(bundle: Path, stand_in: dict[str, str]) -> None:
    events: list = []
    opts = BuildOptions(env=stand_in)
    first = ensure_engine(bundle, "fp16", opts, progress=events.append)
    assert not first.cached and first.path.is_file() and first.path.name == "fp16-sm87-trt10.3.0.plan"
    assert first.key.onnx_file == "model.fp16.onnx" and first.key.gpu_name == "Orin (stand-in)"
    entry = read_manifest(bundle).artifact("fp16", "trt-plan")
    assert entry.built_with["cache_key"] == first.key.digest()
    assert entry.built_with["workspace_bytes"] == 2048 << 20, "half of the 4096 MiB free"
    assert (bundle / entry.built_with["sidecar"]).is_file()
    assert _kinds(events)[:2] == ["stale", "attempt"] and _kinds(events)[-1] == "built"
    assert {e.stage for e in events} == {"fp16 engine"} and all(e.is_note for e in events)

    mtime = first.path.stat().st_mtime_ns
    again = ensure_engine(bundle, "fp16", opts)
    assert again.cached and again.path == first.path and first.path.stat().st_mtime_ns == mtime

    smaller = ensure_engine(bundle, "fp16", BuildOptions(env=stand_in, max_batch=4))
    assert not smaller.cached and "profile" in smaller.reason
    upgraded = ensure_engine(bundle, "fp16", BuildOptions(env={**stand_in, "FAKE_TRT_VERSION": "10.3.1"}, max_batch=4))
    assert not upgraded.cached and "trt_version: '10.3.0' -> '10.3.1'" in upgraded.reason
    assert upgraded.path.name == "fp16-sm87-trt10.3.1.plan"
    assert ensure_engine(bundle, "fp16", BuildOptions(env=stand_in, max_batch=4, force=True)).cached is False


def test_reexported_onnx_makes_the_engine_stale(bundle: Path, stand_in: dict[str, str], tmp_path: Path) -> None:
    from device_helpers import replace_artifact, tiny_onnx

    ensure_engine(bundle, "fp32", BuildOptions(env=stand_in))
    replace_artifact(bundle, "model.onnx", tiny_onnx(tmp_path / "new.onnx", 3, 32, seed=3), precision="fp32")
    rebuilt = ensure_engine(bundle, "fp32", BuildOptions(env=stand_in))
    assert not rebuilt.cached and "onnx_sha256" in rebuilt.reason


def test_tensorrt_86_builds_fp16_from_the_fp32_onnx(bundle: Path, stand_in: dict[str, str]) -> None:
    result = ensure_engine(bundle, "fp16", BuildOptions(env={**stand_in, "FAKE_TRT_VERSION": "8.6.1"}))
    assert result.key.onnx_file == "model.onnx"
    assert result.key.onnx_sha256 == read_manifest(bundle).artifact("fp32").sha256


def test_oom_error_retries_with_less_workspace_and_lower_opt_level(bundle: Path, oom_stand_in) -> None:
    env = {**oom_stand_in, "OOM_FAIL_ABOVE_MB": "300"}
    events: list = []
    result = ensure_engine(bundle, "fp32", BuildOptions(env=env, workspace_gib=1.0, opt_level=4),
                           progress=events.append)
    assert _tries(env) == [[1024, 4], [512, 2], [256, 1]]
    assert _kinds(events).count("oom") == 2 and not result.cached
    assert result.attempts == (Attempt(1 << 30, 4), Attempt(512 << 20, 2), Attempt(256 << 20, 1))
    entry = read_manifest(bundle).artifact("fp32", "trt-plan")
    assert entry.built_with["workspace_bytes"] == 256 << 20 and entry.built_with["opt_level"] == 1


def test_killed_build_is_retried(bundle: Path, oom_stand_in) -> None:
    """The Jetson case: the kernel's OOM killer SIGKILLs the build process."""
    env = {**oom_stand_in, "OOM_KILL_ABOVE_MB": "600"}
    events: list = []
    result = ensure_engine(bundle, "fp16", BuildOptions(env=env, workspace_gib=1.0), progress=events.append)
    assert _tries(env) == [[1024, 3], [512, 2]] and result.path.is_file()
    assert any(e.message.startswith("oom: ") and "signal 9" in e.message for e in events)


def test_out_of_memory_every_time_is_a_clear_error(bundle: Path, oom_stand_in) -> None:
    env = {**oom_stand_in, "OOM_FAIL_ABOVE_MB": "10"}
    with pytest.raises(ExportError, match=r"ran out of memory 3 times \(last try: workspace 256 MiB, "
                                          r"optimization level 1\).*--workspace-gib"):
        ensure_engine(bundle, "fp32", BuildOptions(env=env, workspace_gib=1.0))
    assert read_manifest(bundle).artifact("fp32", "trt-plan") is None


def test_other_build_errors_are_not_retried(bundle: Path, oom_stand_in) -> None:
    with pytest.raises(ExportError, match="DLA runs fp16 and int8 networks only"):
        ensure_engine(bundle, "fp32", BuildOptions(env={**oom_stand_in, "FAKE_TRT_DLA_CORES": "2"}, dla_core=0))
    assert _tries(oom_stand_in) == []
    with pytest.raises(BundleError, match="calibrate"):
        ensure_engine(bundle, "int8", BuildOptions(env=oom_stand_in))


def test_no_gpu_is_a_clear_error(bundle: Path, stand_in: dict[str, str]) -> None:
    with pytest.raises(BackendUnavailable, match="cannot build TensorRT engines here"):
        ensure_engine(bundle, "fp32", BuildOptions(env={**stand_in, "FAKE_CUDA_DEVICES": "0"}))


def test_build_engine_cli_builds_then_reuses(bundle: Path, stand_in: dict[str, str], monkeypatch) -> None:
    from click.testing import CliRunner

    from alexnet_deploy.cli import cli

    for name, value in stand_in.items():
        monkeypatch.setenv(name, value)
    first = CliRunner().invoke(cli, ["build-engine", str(bundle), "--fp32", "--fp16", "--max-batch", "4"], obj={})
    assert first.exit_code == 0, first.output
    assert first.output.count("built") >= 2 and "TensorRT 10.3.0 on Orin (stand-in)" in first.output
    second = CliRunner().invoke(cli, ["build-engine", str(bundle), "--fp32", "--fp16", "--max-batch", "4"], obj={})
    assert second.exit_code == 0 and second.output.count("cached") >= 2
    assert {a.precision for a in read_manifest(bundle).artifacts if a.kind == "trt-plan"} == {"fp32", "fp16"}


def test_built_engine_verifies_on_the_trt_backend(bundle: Path, stand_in: dict[str, str]) -> None:
    """build-engine then verify --backend trt, as on a device (the stand-in runtime computes the
    logits with ONNX Runtime: this proves the plumbing, not TensorRT's numerics)."""
    import subprocess
    import sys

    env = {**os.environ, **stand_in, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "alexnet_deploy"]
    built = subprocess.run(cmd + ["build-engine", str(bundle), "--fp16"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert built.returncode == 0, built.stderr
    checked = subprocess.run(cmd + ["verify", str(bundle), "--backend", "trt", "--precision", "fp16"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "trt fp16" in checked.stdout and "stand-in" in checked.stdout
