"""Bundle ONNX -> TensorRT engine for the GPU this runs on. Never imports torch.

One code path for TensorRT 8.6, 10.x and 11.x that branches on the version and on what the
module has (docs/tensorrt.md has the version table and its sources). Which ONNX, network flags and
builder flags build each precision is decided in routes.py; this module builds:

- one optimization profile min 1 / opt / max batch (DLA: static, min = opt = max);
- workspace limit, builder optimization level, a persisted and reused timing cache, optional DLA
  core with GPU fallback, optional version-compatible plans.

The engine is the raw serialized plan (trtexec --loadEngine reads it) plus a JSON sidecar with
the TensorRT version, GPU, precision, profile, source ONNX sha256, flags and build time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alexnet_deploy.deploy.bundle import Manifest, read_manifest, verify_artifact
from alexnet_deploy.deploy.platform.cuda import GpuInfo, gpu_info
from alexnet_deploy.deploy.bundle.files import atomic_write_bytes, atomic_write_text, sha256_file
from alexnet_deploy.deploy.trt import import_tensorrt
from alexnet_deploy.deploy.trt.routes import BuildRoute, has_builder_flag, choose_route, network_flags, trt_major
from alexnet_deploy.errors import BackendUnavailable, ExportError, MissingDependency

log = logging.getLogger(__name__)

ENGINE_DIR = "engines"
SIDECAR_FORMAT = "alexnet-deploy-engine/1"


@dataclass(frozen=True)
class EngineInfo:
    """A built engine: ``file`` and ``sidecar`` are relative to the bundle; ``meta`` is the sidecar."""

    bundle: Path
    file: str
    sidecar: str
    precision: str
    trt_version: str
    gpu: GpuInfo
    route: BuildRoute
    profile: dict[str, Any]
    build_seconds: float
    plan_bytes: int
    plan_sha256: str
    timing_cache: str | None
    timing_cache_reused: bool
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def path(self) -> Path:
        return self.bundle / self.file


def tensorrt_available() -> tuple[bool, str]:
    """(True, "TensorRT x on GPU") when engines can be built here, else (False, why not)."""
    try:
        trt = import_tensorrt()
        gpu = gpu_info()
    except (MissingDependency, BackendUnavailable) as exc:
        return False, str(exc)
    return True, f"TensorRT {trt.__version__} on {gpu.name} (sm{gpu.sm})"


def _node_names(onnx_path: Path) -> list[tuple[str, str]]:
    """(name, op_type) per node, for 8.x parser errors that carry only a node index."""
    try:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - best effort: the error still names the index
        return []
    return [(n.name, n.op_type) for n in model.graph.node]


def _describe_error(error, nodes: list[tuple[str, str]]) -> str:
    if hasattr(error, "node_name"):  # 10.0+
        name, op = error.node_name(), error.node_operator()
    else:
        index = error.node()
        name, op = nodes[index] if 0 <= index < len(nodes) else (f"#{index}", "?")
    where = f"node {name!r} ({op})" if name else "graph"
    return f"{where}: {error.desc()}"


def parse_onnx(trt, parser, onnx_path: Path) -> None:
    """parse_from_file (keeps the path for external weights); errors name the failing node."""
    if parser.parse_from_file(str(onnx_path)):
        return
    nodes = [] if trt_major(trt) >= 10 else _node_names(onnx_path)
    errors = [_describe_error(parser.get_error(i), nodes) for i in range(parser.num_errors)]
    raise ExportError(f"{onnx_path.name}: TensorRT {trt.__version__}'s ONNX parser failed at "
                      + "; ".join(errors or ["(no error reported)"]))


def make_logger(trt):
    """A trt.ILogger that forwards to Python logging and keeps error messages for our exceptions
    (the library never prints; TensorRT's own default logger writes to the terminal)."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            level = int(severity)
            if level <= int(trt.Logger.ERROR):
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif level == int(trt.Logger.WARNING):
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _builder(trt, logger):
    try:
        return trt.Builder(logger)
    except TypeError as exc:  # pybind11 "factory function returned nullptr": CUDA failed to initialise
        raise BackendUnavailable(f"TensorRT could not initialise CUDA ({exc}); is an NVIDIA GPU and driver "
                                 "present?") from exc


def guarded_nodes(manifest: Manifest) -> list[str]:
    """Nodes the fp16 overflow guard kept in fp32 (recorded on the fp16 artifact by export)."""
    fp16 = manifest.artifact("fp16")
    return list(fp16.built_with.get("kept_fp32", [])) if fp16 is not None else []


def pin_fp32_layers(trt, network, config, names: list[str]) -> dict[str, list[str]]:
    """Flag route (BuilderFlag.FP16 on an fp32 ONNX): keep the guard's layers in fp32 with precision
    constraints, so 8.6 / 10.x honour the overflow guard that the fp16-typed ONNX carries itself.
    The ONNX parser names each layer after its node; names not found are reported, not guessed."""
    wanted, pinned = set(names), []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name in wanted:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned.append(layer.name)
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    missing = sorted(wanted - set(pinned))
    if missing:
        log.warning("fp16 guard: no TensorRT layer named %s; those nodes may run in fp16", missing)
    return {"fp32_layers": pinned, "fp32_layers_not_found": missing}


def make_profile(trt, builder, config, manifest: Manifest, max_batch: int, opt_batch: int,
                 static: bool) -> dict[str, Any]:
    """One optimization profile over the batch axis; static (min = opt = max) for DLA."""
    name, (_, *chw) = manifest.input.name, manifest.input.shape
    low = max_batch if static else 1
    opt = max_batch if static else opt_batch
    shapes = {"min": (low, *chw), "opt": (opt, *chw), "max": (max_batch, *chw)}
    profile = builder.create_optimization_profile()
    profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    return {"input": name, **{k: list(v) for k, v in shapes.items()}}


def configure(trt, builder, config, route: BuildRoute, *, workspace_gib: float | None, opt_level: int,
              dla_core: int | None, version_compatible: bool) -> dict[str, Any]:
    """Set the builder config; returns what was set, for the sidecar."""
    settings: dict[str, Any] = {"builder_flags": list(route.builder_flags)}
    for name in route.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if workspace_gib is not None:
        if workspace_gib <= 0:
            raise ExportError(f"--workspace-gib must be positive, got {workspace_gib}")
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    settings["workspace_bytes"] = int(workspace_gib * (1 << 30)) if workspace_gib else None
    if not 0 <= opt_level <= 5:
        raise ExportError(f"builder optimization level must be 0..5, got {opt_level}")
    if hasattr(config, "builder_optimization_level"):  # 8.6+
        config.builder_optimization_level = opt_level
        settings["opt_level"] = opt_level
    else:
        log.warning("TensorRT %s has no builder_optimization_level; ignoring %d", trt.__version__, opt_level)
        settings["opt_level"] = None
    if dla_core is not None:
        settings.update(_use_dla(trt, builder, config, route, dla_core))
        settings["builder_flags"].append("GPU_FALLBACK")
    if version_compatible:
        if not has_builder_flag(trt, "VERSION_COMPATIBLE"):
            raise ExportError(f"version-compatible engines need TensorRT >= 8.6 (this is {trt.__version__})")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        settings["builder_flags"].append("VERSION_COMPATIBLE")
    settings["tf32"] = bool(config.get_flag(trt.BuilderFlag.TF32)) if hasattr(config, "get_flag") else None
    return settings


def _use_dla(trt, builder, config, route: BuildRoute, dla_core: int) -> dict[str, Any]:
    if route.precision == "fp32":
        raise ExportError("--dla-core: DLA runs fp16 and int8 networks only; build with --fp16 or --int8")
    cores = int(getattr(builder, "num_DLA_cores", 0))
    if not 0 <= dla_core < cores:
        raise ExportError(f"--dla-core {dla_core}: this device has {cores} DLA core(s)"
                          + ("" if cores else " (DLA exists on Xavier/Orin; not on this GPU or TensorRT)"))
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return {"dla_core": dla_core, "gpu_fallback": True}


def timing_cache_path(bundle: Path, trt_version: str, gpu: GpuInfo, timing_cache) -> Path | None:
    """None/True -> engines/timing-trt<ver>-sm<cc>.cache in the bundle; False -> no cache; else the path."""
    if timing_cache is False:
        return None
    if timing_cache is None or timing_cache is True:
        return bundle / ENGINE_DIR / f"timing-trt{trt_version}-sm{gpu.sm}.cache"
    return Path(timing_cache)


def load_timing_cache(config, path: Path | None) -> bool:
    """Attach the cache at ``path`` (empty if absent); True when an existing cache was reused."""
    if path is None:
        return False
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None:  # corrupted file: TensorRT returns no cache
        log.warning("%s: timing cache is unreadable; starting a fresh one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        return False
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("%s: timing cache is from another TensorRT/GPU; starting a fresh one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        return False
    return bool(blob)


def save_timing_cache(config, path: Path | None) -> None:
    if path is not None:
        atomic_write_bytes(path, bytes(memoryview(config.get_timing_cache().serialize())))


def engine_name(precision: str, gpu: GpuInfo, trt_version: str, dla_core: int | None, vc: bool) -> str:
    """engines/<precision>-sm<cc>-trt<ver>[-dla<n>][-vc].plan"""
    suffix = (f"-dla{dla_core}" if dla_core is not None else "") + ("-vc" if vc else "")
    return f"{ENGINE_DIR}/{precision}-sm{gpu.sm}-trt{trt_version}{suffix}.plan"


def _jetson_release() -> str | None:
    try:
        return Path("/etc/nv_tegra_release").read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def build_engine(bundle_dir: str | os.PathLike, precision: str, *, max_batch: int | None = None,
                 workspace_gib: float | None = None, dla_core: int | None = None,
                 version_compatible: bool = False, opt_level: int = 3, timing_cache=None,
                 opt_batch: int | None = None) -> EngineInfo:
    """Build one engine of ``precision`` from the bundle's ONNX for GPU 0; write plan + sidecar.

    ``max_batch`` defaults to the manifest's; the profile is min 1 / opt ``opt_batch`` (default
    max_batch // 2) / max ``max_batch``. ``timing_cache``: None = a per-TensorRT/GPU cache file in
    the bundle's engines/ folder, False = none, or a path. Does not touch the manifest
    (``deploy.engines.ensure_engine`` records the engine there, with its cache key). Raises
    MissingDependency / BackendUnavailable without TensorRT or a GPU and
    ExportError when parsing or building fails (parser errors name the node).
    """
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    trt = import_tensorrt()
    gpu = gpu_info()
    route = choose_route(trt, manifest, precision)
    onnx_path = verify_artifact(bundle, next(a for a in manifest.artifacts if a.file == route.onnx_file))
    max_batch = int(max_batch or manifest.max_batch)
    if max_batch < 1:
        raise ExportError(f"--max-batch must be >= 1, got {max_batch}")
    opt_batch = min(max_batch, int(opt_batch or max(1, max_batch // 2)))
    logger = make_logger(trt)  # must outlive the builder, network and parser
    builder = _builder(trt, logger)
    flags, flag_names = network_flags(trt, route)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parse_onnx(trt, parser, onnx_path)
    config = builder.create_builder_config()
    settings = configure(trt, builder, config, route, workspace_gib=workspace_gib, opt_level=opt_level,
                         dla_core=dla_core, version_compatible=version_compatible)
    if "FP16" in route.builder_flags and guarded_nodes(manifest):
        settings.update(pin_fp32_layers(trt, network, config, guarded_nodes(manifest)))
        if settings["fp32_layers"]:
            settings["builder_flags"].append("OBEY_PRECISION_CONSTRAINTS")
    profile = make_profile(trt, builder, config, manifest, max_batch, opt_batch, static=dla_core is not None)
    cache_path = timing_cache_path(bundle, str(trt.__version__), gpu, timing_cache)
    reused = load_timing_cache(config, cache_path)
    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if plan is None:
        detail = logger.errors[-1] if logger.errors else "no error message; rerun with --debug"
        raise ExportError(f"TensorRT {trt.__version__} failed to build the {precision} engine from "
                          f"{onnx_path.name}: {detail}")
    save_timing_cache(config, cache_path)
    built = _BuiltPlan(bundle=bundle, trt_version=str(trt.__version__), gpu=gpu, route=route, onnx_path=onnx_path,
                       network_flags=flag_names, settings=settings, profile=profile, seconds=seconds,
                       timing_cache=cache_path, timing_cache_reused=reused, dla_core=dla_core,
                       version_compatible=version_compatible)
    return _write_engine(bytes(memoryview(plan)), built)


@dataclass(frozen=True)
class _BuiltPlan:
    """What one build knows besides the plan's bytes: everything its sidecar records."""

    bundle: Path
    trt_version: str
    gpu: GpuInfo
    route: BuildRoute
    onnx_path: Path
    network_flags: list[str]
    settings: dict[str, Any]
    profile: dict[str, Any]
    seconds: float
    timing_cache: Path | None
    timing_cache_reused: bool
    dla_core: int | None
    version_compatible: bool


def _sidecar(built: _BuiltPlan, plan_file: str, data: bytes, digest: str) -> dict[str, Any]:
    cache, route, vc = built.timing_cache, built.route, built.version_compatible
    return {
        "format": SIDECAR_FORMAT, "plan": {"file": Path(plan_file).name, "sha256": digest, "bytes": len(data)},
        "tensorrt_version": built.trt_version, "gpu": asdict(built.gpu) | {"sm": built.gpu.sm},
        "jetson_l4t": _jetson_release(), "precision": route.precision, "route": route.note or "fp32 ONNX",
        "strongly_typed": route.strongly_typed, "network_flags": built.network_flags, **built.settings,
        "version_compatible": vc, "profile": built.profile,
        "source_onnx": {"file": route.onnx_file, "sha256": sha256_file(built.onnx_path)},
        "timing_cache": {"file": str(cache) if cache else None, "reused": built.timing_cache_reused},
        "build_seconds": round(built.seconds, 3), "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"), "host": platform.node(),
        "load_notes": ["set runtime.engine_host_code_allowed = True before deserializing"] if vc else [],
    }


def _write_engine(data: bytes, built: _BuiltPlan) -> EngineInfo:
    file = engine_name(built.route.precision, built.gpu, built.trt_version, built.dla_core, built.version_compatible)
    sidecar = file[: -len(".plan")] + ".json"
    digest = hashlib.sha256(data).hexdigest()
    meta = _sidecar(built, file, data, digest)
    atomic_write_bytes(built.bundle / file, data)
    atomic_write_text(built.bundle / sidecar, json.dumps(meta, indent=2) + "\n")
    log.info("wrote %s (%d bytes, %.1f s)", file, len(data), built.seconds)
    cache = built.timing_cache
    return EngineInfo(bundle=built.bundle, file=file, sidecar=sidecar, precision=built.route.precision,
                      trt_version=built.trt_version, gpu=built.gpu, route=built.route, profile=built.profile,
                      build_seconds=built.seconds, plan_bytes=len(data), plan_sha256=digest,
                      timing_cache=str(cache) if cache else None, timing_cache_reused=built.timing_cache_reused,
                      meta=meta)

