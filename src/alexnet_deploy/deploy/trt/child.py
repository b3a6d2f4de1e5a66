"""The child process that probes the GPU and builds one engine: how the parent runs it, and what
it does inside.

TensorRT and CUDA are loaded only in the child (``python -m alexnet_deploy.deploy.trt.child``), so
that on a Jetson a build the kernel's OOM killer ends is a failure the parent sees and can retry
(engines.py), and the parent never holds TensorRT next to a build. The child speaks JSON lines on
stdout (progress, then one ``result``); anything else there is TensorRT's own chatter. Its exit
code says what kind of failure it was: out of memory (retry smaller) or TensorRT/GPU unavailable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from alexnet_deploy.deploy.bundle import read_manifest
from alexnet_deploy.deploy.platform.cuda import check as cuda_check
from alexnet_deploy.deploy.platform.cuda import gpu_info, import_cudart
from alexnet_deploy.deploy.precision import NAMES
from alexnet_deploy.deploy.platform.system import mem_available
from alexnet_deploy.deploy.trt import import_tensorrt
from alexnet_deploy.deploy.trt.builder import build_engine
from alexnet_deploy.deploy.trt.routes import choose_route
from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable, ExportError

INSTALL_HINT = ("TensorRT and a CUDA GPU are needed to build engines: on a Jetson use JetPack's python3-libnvinfer "
                "(venv with --system-site-packages) and pip install 'alexnet-deploy[jetson]'; on an x86 GPU box "
                "pip install 'alexnet-deploy[tensorrt]'. Without a GPU, run the ONNX models with --backend ort")
OOM_EXIT_CODE = 3
UNAVAILABLE_EXIT_CODE = 4
_OOM_MARKERS = ("out of memory", "outofmemory", "could not be allocated", "bad_alloc", "memoryerror",
                "cudaerrormemoryallocation", "insufficient memory")


@dataclass(frozen=True)
class DeviceInfo:
    """What the cache key and the workspace size need to know about this machine."""

    trt_version: str
    gpu_name: str
    compute_capability: str     # "8.7"
    free_bytes: int
    total_bytes: int
    integrated: bool = False    # Jetson: the GPU shares system RAM
    # precision -> the ONNX file this TensorRT builds it from (8.6 builds fp16 from the fp32 ONNX
    # with a builder flag; 10.x/11.x from the fp16-typed ONNX), so the key hashes the real source.
    routes: dict[str, str] = field(default_factory=dict)


def is_oom(returncode: int, message: str) -> bool:
    """A killed child (negative return code: a signal, typically SIGKILL from the OOM killer) or
    a builder error that says it ran out of memory."""
    text = message.lower().replace(" ", "") if message else ""
    return returncode < 0 or returncode == OOM_EXIT_CODE or any(m.replace(" ", "") in text for m in _OOM_MARKERS)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(args: Sequence[str], env: dict[str, str], timeout_s: float | None,
               on_line: Callable[[dict], None] | None = None) -> tuple[int, dict, str]:
    """Run the child, stream its JSON event lines; return (returncode, final result, stderr tail)."""
    cmd = [sys.executable, "-m", "alexnet_deploy.deploy.trt.child", *args]
    result: dict = {}
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=_child_env(env))
        # A hung child (a stuck driver, say) is killed; the parent reports it like any other failure.
        timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:   # one JSON object per line; anything else is TensorRT chatter
                event = _parse_line(line)
                if event is not None and event.get("event") == "result":
                    result = event
                elif event is not None and on_line:
                    on_line(event)
            proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:   # interrupted (Ctrl-C): don't leave a build running
                proc.kill()
                proc.wait()
        err.seek(0)
        tail = "\n".join(err.read().strip().splitlines()[-15:])
    return proc.returncode, result, tail


def _parse_line(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def probe_device(env: dict[str, str] | None = None, bundle: str | os.PathLike | None = None) -> DeviceInfo:
    """TensorRT version, GPU, free memory (and, given a bundle, which ONNX each precision is built
    from on this TensorRT), read in a child process (see module docstring)."""
    code, result, tail = run_child(["probe"] + (["--bundle", str(bundle)] if bundle else []), env or {},
                                    timeout_s=120)
    if code == 0 and result.get("ok"):
        return DeviceInfo(**result["device"])
    reason = result.get("error") or tail.splitlines()[-1:] or [f"probe exited with {code}"]
    reason = reason if isinstance(reason, str) else reason[0]
    if code == UNAVAILABLE_EXIT_CODE:
        raise BackendUnavailable(f"cannot build TensorRT engines here: {reason}. {INSTALL_HINT}")
    raise ExportError(f"probing TensorRT/GPU failed: {reason}")


def _routes(trt, bundle: str | None) -> dict[str, str]:
    if not bundle:
        return {}
    manifest, routes = read_manifest(bundle), {}
    for precision in NAMES:
        try:
            routes[precision] = choose_route(trt, manifest, precision).onnx_file
        except ExportError:   # that precision cannot be built; engine_key reports it if asked for
            continue
    return routes


def _probe_in_child(bundle: str | None = None) -> DeviceInfo:
    trt = import_tensorrt()
    gpu = gpu_info()
    cudart = import_cudart()
    free, total = cuda_check(cudart, cudart.cudaMemGetInfo(), "cudaMemGetInfo")
    if gpu.integrated:   # Jetson: cudaMemGetInfo ignores reclaimable page cache; MemAvailable does not
        free = max(int(free), mem_available() or 0)
    return DeviceInfo(trt_version=str(trt.__version__), gpu_name=gpu.name, compute_capability=gpu.compute_capability,
                      free_bytes=int(free), total_bytes=int(total), integrated=gpu.integrated,
                      routes=_routes(trt, bundle))


def _emit(**event) -> None:
    print(json.dumps(event), flush=True)


def _child_build(args) -> dict:
    _emit(event="progress", message=f"building {args.precision} (workspace {args.workspace_bytes >> 20} MiB, "
                                    f"opt level {args.opt_level})")
    info = build_engine(Path(args.bundle), args.precision, max_batch=args.max_batch,
                        workspace_gib=args.workspace_bytes / (1 << 30), dla_core=args.dla_core,
                        version_compatible=args.version_compatible, opt_level=args.opt_level,
                        opt_batch=args.opt_batch)
    return {"plan": info.file, "sidecar": info.sidecar, "build_seconds": info.build_seconds}


def _child_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the child process: `probe` or `build`; prints JSON lines, last one the result."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m alexnet_deploy.deploy.trt.child")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe").add_argument("--bundle", default=None)
    build = sub.add_parser("build")
    build.add_argument("bundle")
    build.add_argument("--precision", required=True)
    build.add_argument("--max-batch", type=int, required=True)
    build.add_argument("--opt-batch", type=int, required=True)
    build.add_argument("--workspace-bytes", type=int, required=True)
    build.add_argument("--opt-level", type=int, default=3)
    build.add_argument("--dla-core", type=int, default=None)
    build.add_argument("--version-compatible", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "probe":
            _emit(event="result", ok=True, device=asdict(_probe_in_child(args.bundle)))
        else:
            _emit(event="result", ok=True, **_child_build(args))
        return 0
    except BackendUnavailable as exc:
        _emit(event="result", ok=False, error=str(exc))
        return UNAVAILABLE_EXIT_CODE
    except MemoryError as exc:
        _emit(event="result", ok=False, error=f"MemoryError: {exc}")
        return OOM_EXIT_CODE
    except Exception as exc:  # noqa: BLE001 - everything must reach the parent as one message
        message = str(exc) if isinstance(exc, AlexNetDeployError) else f"{exc.__class__.__name__}: {exc}"
        _emit(event="result", ok=False, error=message)
        return OOM_EXIT_CODE if is_oom(1, message) else 1


if __name__ == "__main__":
    sys.exit(_child_main())
