"""TensorRT engines on the device: a cache in the bundle, builds in a child process, OOM retries.

A plan only runs with the TensorRT version and GPU that built it, so engines are built on the
target and cached in ``BUNDLE/engines/``. The manifest is the cache index: each ``trt-plan``
artifact carries, in ``built_with``, the cache key (source ONNX sha256, TensorRT version, GPU name
and compute capability, precision, optimization profile, DLA core, version-compatible flag) and its
digest. A matching entry whose file still has the recorded sha256 is reused; anything else is
rebuilt and replaces it.

The build itself runs in a child process (child.py) because on a Jetson the kernel's OOM killer
often kills a TensorRT build outright: in a child that is a failure this parent can see, and retry
with a smaller workspace and a lower builder optimization level. The device probe (TensorRT
version, GPU, free memory) also runs in a child, so this process never loads TensorRT or CUDA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from alexnet_deploy.deploy.bundle import (Artifact, Manifest, Staging, make_artifact, read_manifest, transaction,
                                          verify_artifact, write_manifest)
from alexnet_deploy.deploy.progress import Progress, ProgressCallback
from alexnet_deploy.deploy.trt.child import (INSTALL_HINT, UNAVAILABLE_EXIT_CODE, DeviceInfo, is_oom, probe_device,
                                             run_child)
from alexnet_deploy.errors import BackendUnavailable, BundleError, ExportError

log = logging.getLogger(__name__)

MIN_WORKSPACE = 64 << 20
MAX_DEFAULT_WORKSPACE = 4 << 30


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes an engine valid for this bundle on this device."""

    onnx_file: str
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]   # min, opt, max input shapes
    dla_core: int | None = None
    version_compatible: bool = False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["profile"] = [list(s) for s in self.profile]
        return data

    def digest(self) -> str:
        """Short, stable digest of the key (the ONNX file name is not part of it, its sha256 is)."""
        data = {k: v for k, v in self.to_dict().items() if k != "onnx_file"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Attempt:
    """One build try: workspace limit and builder optimization level."""

    workspace_bytes: int
    opt_level: int


@dataclass(frozen=True)
class EngineResult:
    """The engine for one precision: reused from the cache or freshly built."""

    precision: str
    path: Path
    cached: bool
    key: EngineKey
    attempts: tuple[Attempt, ...] = ()
    seconds: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class BuildOptions:
    """The build-engine flags that reach the child."""

    max_batch: int | None = None
    workspace_gib: float | None = None
    dla_core: int | None = None
    version_compatible: bool = False
    opt_level: int = 3
    force: bool = False
    timeout_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- cache key and lookup

def source_onnx(manifest: Manifest, precision: str) -> Artifact:
    """The ONNX artifact an engine of ``precision`` is built from (precision lives in the ONNX)."""
    artifact = manifest.artifact(precision, "onnx")
    if artifact is None:
        have = sorted({a.precision for a in manifest.artifacts if a.kind == "onnx"})
        todo = "alexnet-deploy calibrate BUNDLE --calib DIR" if precision == "int8" else "alexnet-deploy export ... --fp16"
        raise BundleError(f"the bundle has no {precision} ONNX model (it has {have}); make one with `{todo}`")
    return artifact


def engine_key(manifest: Manifest, precision: str, device: DeviceInfo, *, max_batch: int | None = None,
               dla_core: int | None = None, version_compatible: bool = False) -> EngineKey:
    """The cache key for building ``precision`` from this bundle on ``device``."""
    routed = device.routes.get(precision)
    onnx = next((a for a in manifest.artifacts if a.kind == "onnx" and a.file == routed), None) \
        or source_onnx(manifest, precision)
    batch = max_batch or manifest.max_batch
    if batch < 1:
        raise ExportError(f"--max-batch {batch}: must be >= 1")
    chw = tuple(manifest.input.shape[1:])
    # DLA has no dynamic shapes: min = opt = max. Otherwise opt = max/2, export.tensorrt's default.
    low, opt = (batch, batch) if dla_core is not None else (1, max(1, batch // 2))
    profile = ((low, *chw), (opt, *chw), (batch, *chw))
    return EngineKey(onnx_file=onnx.file, onnx_sha256=onnx.sha256, trt_version=device.trt_version,
                     gpu_name=device.gpu_name, compute_capability=device.compute_capability, precision=precision,
                     profile=profile, dla_core=dla_core, version_compatible=version_compatible)


def key_differences(recorded: dict, key: EngineKey) -> list[str]:
    """Human-readable fields where a recorded key differs from ``key`` (why an engine is stale)."""
    wanted = key.to_dict()
    return [f"{name}: {recorded.get(name)!r} -> {value!r}" for name, value in wanted.items()
            if name != "onnx_file" and recorded.get(name) != value]


def find_cached(bundle: str | os.PathLike, manifest: Manifest, key: EngineKey) -> tuple[Artifact | None, str]:
    """(artifact, "") for a reusable engine, else (None, why it must be built)."""
    plans = [a for a in manifest.artifacts if a.kind == "trt-plan" and a.precision == key.precision]
    match = next((a for a in plans if a.built_with.get("cache_key") == key.digest()), None)
    if match is None:
        if not plans:
            return None, "no engine yet"
        recorded = plans[-1].built_with.get("key")
        if not recorded:
            return None, f"stale: {plans[-1].file} has no cache record (built outside build-engine)"
        return None, "stale: " + ("; ".join(key_differences(recorded, key)) or "cache key changed")
    try:
        verify_artifact(bundle, match)
    except BundleError as exc:
        return None, f"cached engine unusable: {exc}"
    return match, ""


# --------------------------------------------------------------------------- workspace and retries

def default_workspace(device: DeviceInfo) -> int:
    """Half the free GPU memory, between 64 MiB and 4 GiB: leaves room for TensorRT's own
    allocations (and, on a Jetson, for the rest of the system sharing that memory)."""
    return int(min(MAX_DEFAULT_WORKSPACE, max(MIN_WORKSPACE, device.free_bytes // 2)))


def retry_plan(workspace_bytes: int, opt_level: int, max_attempts: int = 3) -> list[Attempt]:
    """First try as asked, then halve the workspace and lower the optimization level each time
    (lower levels try fewer tactics, so they need less memory and time)."""
    attempts = [Attempt(int(workspace_bytes), int(opt_level))]
    while len(attempts) < max_attempts:
        last = attempts[-1]
        nxt = Attempt(max(MIN_WORKSPACE, last.workspace_bytes // 2), max(0, min(last.opt_level - 1, 2)))
        if nxt == last:
            break
        attempts.append(nxt)
    return attempts


# --------------------------------------------------------------------------- child processes


def _build_args(bundle: Path, precision: str, attempt: Attempt, key: EngineKey) -> list[str]:
    args = ["build", str(bundle), "--precision", precision, "--max-batch", str(key.profile[2][0]),
            "--opt-batch", str(key.profile[1][0]),
            "--workspace-bytes", str(attempt.workspace_bytes), "--opt-level", str(attempt.opt_level)]
    if key.dla_core is not None:
        args += ["--dla-core", str(key.dla_core)]
    if key.version_compatible:
        args.append("--version-compatible")
    return args


def _attempt_build(bundle: Path, key: EngineKey, attempt: Attempt, opts: BuildOptions,
                   progress: ProgressCallback) -> tuple[str, dict]:
    """Run one build child; return ("ok"|"oom"|"error", result-or-{"error": message})."""
    def relay(event: dict) -> None:
        _note(progress, key.precision, "progress", str(event.get("message", "")))

    code, result, tail = run_child(_build_args(bundle, key.precision, attempt, key), opts.env,
                                    opts.timeout_s, relay)
    if code == 0 and result.get("ok"):
        return "ok", result
    message = result.get("error") or tail or f"build process exited with code {code}"
    if result.get("error") and tail:   # TensorRT's own reason is in its log, not in the exception
        message = f"{message} [log: {tail.splitlines()[-1][-300:]}]"
    if code < 0:
        message = f"the build process was killed by signal {-code} (likely out of memory). {tail[-300:]}"
    if code == UNAVAILABLE_EXIT_CODE:
        raise BackendUnavailable(f"cannot build TensorRT engines here: {message}. {INSTALL_HINT}")
    # Real TensorRT logs its allocation failure (to stderr) and returns None: look at both.
    return ("oom" if is_oom(code, f"{message}\n{tail}") else "error"), {"error": message}


# --------------------------------------------------------------------------- the cache, end to end

def _sidecar_facts(bundle: Path, sidecar: str | None) -> dict:
    """The engine's facts for its manifest entry, read from its JSON sidecar."""
    if not sidecar or not (bundle / sidecar).is_file():
        return {}
    try:
        meta = json.loads((bundle / sidecar).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"sidecar": sidecar}
    gpu = meta.get("gpu") or {}
    return {"sidecar": sidecar, "tensorrt": meta.get("tensorrt_version"), "gpu": gpu.get("name"),
            "compute_capability": gpu.get("compute_capability"), "profile": meta.get("profile"),
            "source_onnx_sha256": (meta.get("source_onnx") or {}).get("sha256")}


def _register(bundle: Path, key: EngineKey, plan_file: str, attempt: Attempt, seconds: float,
              sidecar: str | None = None) -> Artifact:
    """Add (or replace) the engine's manifest entry; its built_with is the cache record."""
    manifest = read_manifest(bundle)   # re-read under the lock: another precision may have been added
    artifact = make_artifact(bundle, plan_file, "trt-plan", key.precision, built_with={
        **_sidecar_facts(bundle, sidecar), "cache_key": key.digest(), "key": key.to_dict(),
        "workspace_bytes": attempt.workspace_bytes, "opt_level": attempt.opt_level,
        "build_seconds": round(seconds, 2)})
    write_manifest(bundle, manifest.with_artifact(artifact))
    return artifact


def _plan_file(bundle: Path, result: dict) -> str:
    plan = Path(result.get("plan", ""))
    path = plan if plan.is_absolute() else bundle / plan
    try:
        return path.resolve().relative_to(bundle.resolve()).as_posix()
    except ValueError as exc:
        raise ExportError(f"the build wrote its engine outside the bundle ({path})") from exc


def ensure_engine(bundle: str | os.PathLike, precision: str, opts: BuildOptions = BuildOptions(), *,
                  device: DeviceInfo | None = None,
                  progress: ProgressCallback | None = None) -> EngineResult:
    """Reuse the cached engine for ``precision`` or build it (in a child, retrying on OOM).

    A build is one bundle transaction: the plan and its manifest entry are written beside the bundle
    and swapped in together; a second build of the same bundle waits for the first, then finds its
    engine in the cache. ``progress`` gets a note per event (logged at info level without one): its
    stage names the engine (``fp16 engine``), its message starts with what happened: ``cached``,
    ``stale``, ``attempt``, ``progress`` (from the build), ``oom``, ``built`` or ``failed``."""
    bundle = Path(bundle)
    progress = progress or _log_note
    manifest = read_manifest(bundle)
    device = device or probe_device(opts.env, bundle)
    key = engine_key(manifest, precision, device, max_batch=opts.max_batch, dla_core=opts.dla_core,
                     version_compatible=opts.version_compatible)
    # A tampered source is refused here, by name, before any cache decision or build.
    verify_artifact(bundle, next(a for a in manifest.artifacts if a.file == key.onnx_file))
    if not opts.force:   # a cache hit changes nothing: no transaction needed
        cached, _ = find_cached(bundle, manifest, key)
        if cached is not None:
            _note(progress, precision, "cached", f"reusing {cached.file} (key {key.digest()})")
            return EngineResult(precision, bundle / cached.file, True, key, reason="cache hit")
    with transaction(bundle, "BUNDLE", wait=True) as staging:
        return ensure_engine_staged(staging, precision, opts, device=device, progress=progress)


def ensure_engine_staged(staging: Staging, precision: str, opts: BuildOptions, *, device: DeviceInfo,
                         progress: ProgressCallback | None = None) -> EngineResult:
    """``ensure_engine`` inside a transaction the caller holds: builds into ``staging.path``; the
    result's path names the file where it will be once committed."""
    progress = progress or _log_note
    manifest = read_manifest(staging.path)   # under the lock: another build may have added this engine
    key = engine_key(manifest, precision, device, max_batch=opts.max_batch, dla_core=opts.dla_core,
                     version_compatible=opts.version_compatible)
    cached, reason = (None, "--force") if opts.force else find_cached(staging.path, manifest, key)
    if cached is not None:
        _note(progress, precision, "cached", f"reusing {cached.file} (key {key.digest()})")
        return EngineResult(precision, staging.dest / cached.file, True, key, reason="cache hit")
    _note(progress, precision, "stale", f"building: {reason}")
    result = _build_with_retries(staging.path, key, device, opts, progress, reason)
    return dataclasses.replace(result, path=staging.dest / result.path.relative_to(staging.path))


def _build_with_retries(bundle: Path, key: EngineKey, device: DeviceInfo, opts: BuildOptions,
                        progress: ProgressCallback, reason: str) -> EngineResult:
    workspace = int(opts.workspace_gib * (1 << 30)) if opts.workspace_gib else default_workspace(device)
    plan = retry_plan(workspace, opts.opt_level)
    tried: list[Attempt] = []
    for index, attempt in enumerate(plan, start=1):
        tried.append(attempt)
        _note(progress, key.precision, "attempt", f"{index} of {len(plan)}, workspace "
              f"{attempt.workspace_bytes >> 20} MiB, optimization level {attempt.opt_level}")
        start = time.monotonic()
        status, result = _attempt_build(bundle, key, attempt, opts, progress)
        seconds = time.monotonic() - start
        if status == "ok":
            artifact = _register(bundle, key, _plan_file(bundle, result), attempt, seconds, result.get("sidecar"))
            _note(progress, key.precision, "built", f"{artifact.file} in {seconds:.1f} s")
            return EngineResult(key.precision, bundle / artifact.file, False, key, tuple(tried), seconds, reason)
        if status == "error":
            _note(progress, key.precision, "failed", result["error"])
            raise ExportError(f"building the {key.precision} engine failed: {result['error']}")
        _note(progress, key.precision, "oom", f"out of memory: {result['error'][:200]}")
    last = tried[-1]
    raise ExportError(
        f"building the {key.precision} engine ran out of memory {len(tried)} times (last try: workspace "
        f"{last.workspace_bytes >> 20} MiB, optimization level {last.opt_level}); free memory (close other "
        "programs; on a Jetson add swap or stop the desktop), or pass a smaller --max-batch or --workspace-gib")


def build_engines(bundle: str | os.PathLike, precisions: Sequence[str], opts: BuildOptions = BuildOptions(), *,
                  progress: ProgressCallback | None = None) -> list[EngineResult]:
    """``ensure_engine`` for each precision (one transaction each), probing the device once (a
    ``probe`` note, stage ``TensorRT``, says what was found)."""
    device = _probe(bundle, precisions, opts, progress)
    return [ensure_engine(bundle, p, opts, device=device, progress=progress) for p in precisions]


def build_engines_staged(staging: Staging, precisions: Sequence[str], opts: BuildOptions = BuildOptions(), *,
                         progress: ProgressCallback | None = None) -> list[EngineResult]:
    """``build_engines`` inside a transaction the caller holds (export)."""
    device = _probe(staging.path, precisions, opts, progress)
    return [ensure_engine_staged(staging, p, opts, device=device, progress=progress) for p in precisions]


def _probe(bundle: str | os.PathLike, precisions: Sequence[str], opts: BuildOptions,
           progress: ProgressCallback | None) -> DeviceInfo:
    if not precisions:
        raise ExportError("no precision chosen; pass --fp32, --fp16 and/or --int8")
    device = probe_device(opts.env, bundle)
    if progress:
        _note(progress, "", "probe", f"TensorRT {device.trt_version} on {device.gpu_name} "
              f"(sm {device.compute_capability}, {device.free_bytes >> 20} MiB free)")
    return device


def _note(progress: ProgressCallback, precision: str, kind: str, text: str) -> None:
    progress(Progress(f"{precision} engine" if precision else "TensorRT", message=f"{kind}: {text}"))


def _log_note(event: Progress) -> None:
    log.info("%s: %s", event.stage, event.message)
