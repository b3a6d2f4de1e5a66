"""The runtime never imports torch: what a Jetson without torch imports and runs (fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import runtime_bundle


def _python(code: str, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line as its last output line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_runtime_does_not_import_torch():
    result = _python("""
        import json, sys
        import alexnet_deploy.deploy
        from alexnet_deploy.deploy import load, preprocess, PreprocessSpec
        import alexnet_deploy.deploy.backends.base, alexnet_deploy.deploy.backends.ort, alexnet_deploy.deploy.trt.backend
        import alexnet_deploy.deploy.evaluate.bench, alexnet_deploy.deploy.evaluate.compare, alexnet_deploy.deploy.platform.system
        heavy = [m for m in ("torch", "torchvision", "onnxruntime", "onnx", "tensorrt", "matplotlib") if m in sys.modules]
        print(json.dumps({"heavy": heavy}))
    """)
    assert result["heavy"] == []


def test_bench_help_does_not_import_torch():
    result = _python("""
        import json, sys
        from alexnet_deploy.cli import cli
        for command in (["bench", "--help"], ["bench-diff", "--help"]):
            try:
                cli.main(command, prog_name="alexnet-deploy", standalone_mode=False, obj={})
            except SystemExit:
                pass
        print(json.dumps({"torch": "torch" in sys.modules, "onnxruntime": "onnxruntime" in sys.modules}))
    """)
    assert result == {"torch": False, "onnxruntime": False}


def test_load_infer_and_bench_without_torch(tmp_path_factory):
    """torch made unimportable: ort runs, pt says why it cannot, bench falls back to the ort reference."""
    bundle, images = runtime_bundle.bundle(tmp_path_factory), runtime_bundle.images(tmp_path_factory)
    result = _python(f"""
        import json, sys
        sys.modules["torch"] = None  # what a Jetson without torch looks like to `import torch`
        import numpy as np
        from alexnet_deploy.deploy import load
        from alexnet_deploy.deploy.evaluate.bench import BenchConfig, run_bench
        from alexnet_deploy.errors import MissingDependency
        model = load({str(bundle)!r}, backend="ort")
        logits = model.infer(np.zeros((2, 3, 64, 64), np.float32))
        try:
            load({str(bundle)!r}, backend="pt")
            pt = "loaded"
        except MissingDependency as exc:
            pt = str(exc)
        try:
            load({str(bundle.parent / "model.pt")!r})
            checkpoint = "loaded"
        except MissingDependency as exc:
            checkpoint = str(exc)
        report = run_bench({str(bundle)!r}, BenchConfig(backends=("pt", "ort"), precisions=("fp32",), batches=(1,),
                           data={str(images)!r}, warmup_s=0.01, min_iters=2, min_time_s=0.01))
        rows = [(r.backend, r.status, r.reference, r.agreement) for r in report.rows]
        from alexnet_deploy.cli import cli
        try:  # `predict BUNDLE` runs on the torch-free runtime
            cli.main(["predict", {str(bundle)!r}, {str(images / "class_0")!r}, "--json"], standalone_mode=False, obj={{}})
        except SystemExit as exc:
            assert not exc.code, exc.code
        print(json.dumps({{"shape": list(logits.shape), "pt": pt, "checkpoint": checkpoint, "rows": rows,
                          "torch": sys.modules.get("torch") is not None}}))
    """)
    assert result["shape"] == [2, 3] and result["torch"] is False
    assert "torch is not installed" in result["pt"]
    assert "torch is not installed (running the checkpoint" in result["checkpoint"]
    assert result["rows"][0][:2] == ["pt", "unavailable"]
    assert result["rows"][1] == ["ort", "ok", "ort fp32", 1.0]
