"""Engine cache (key, hit / miss / stale / corrupt), the OOM retry policy, and the child-process build.

The builds here run against the stand-in ``tensorrt`` module in tests/stubs (put on the child's
PYTHONPATH). The stand-in proves the cache, the subprocess protocol and the retry logic; it cannot
prove that real TensorRT accepts our ONNX, how much memory a real build needs, or that a real
plan runs: that needs a GPU (tests marked ``gpu``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alexnet_deploy.deploy import engines
from alexnet_deploy.deploy.bundle import read_manifest
from alexnet_deploy.deploy.engines import (MIN_WORKSPACE, Attempt, DeviceInfo, default_workspace, engine_key,
                                           find_cached, is_oom, probe_device, retry_plan)
from alexnet_deploy.errors import BackendUnavailable, BundleError
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
    (engines.OOM_EXIT_CODE, "", True),
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
    assert base.profile == ((1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))
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
