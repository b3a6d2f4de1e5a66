"""`make gpu-check` (tools/gpu_check.py) where no GPU is visible: it says so, writes its report with
every step skipped and why, and fails; its summary reads the figures a GPU run produces."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
TOOL = Path(__file__).resolve().parent.parent / "tools" / "gpu_check.py"


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: gpu-check would run for real")
def test_without_a_gpu_it_reports_every_step_skipped_and_fails(tmp_path):
    run = subprocess.run([sys.executable, str(TOOL), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1
    assert "torch sees no CUDA GPU; nothing was checked" in run.stdout
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["facts"]["torch"] == torch.__version__ and report["facts"]["gpu"] is None
    assert {s["status"] for s in report["steps"]} == {"skipped"} and len(report["steps"]) == 8
    assert (tmp_path / "out" / "gpu-check.txt").read_text().startswith("GPU: None")


def test_the_summary_states_the_figures_the_issue_asks_for():
    facts = {"gpu": "NVIDIA H200", "nvidia_smi": "NVIDIA H200, 570.1, 143771 MiB", "torch": "2.14.1", "cuda": "13.0"}
    rows = [{"status": "ok", "backend": b, "precision": p, "batch": 1, "p50_ms": ms}
            for b, p, ms in (("pt-cuda", "fp32", 0.9), ("pt-cuda", "fp16", 0.6), ("pt-cuda-graphs", "fp16", 0.2))]
    trained = {"paths": {"(a) limit": {"images_per_s": 10000.0, "ratio_to_limit": 1.0}},
               "recipe_projection": {"path": "(b) GPU-resident", "images": 585000, "seconds": 61.2}}
    text = _tool().summary({"facts": facts, "steps": [], "bench": {"rows": rows}, "gpu_train": trained})
    assert "pt-cuda fp16 vs fp32, batch 1: 1.50x" in text
    assert "CUDA graphs vs launches, fp16 batch 1: 3.00x" in text
    assert "CUDA graphs vs launches, fp32" not in text   # no graphs row at fp32: no comparison
    assert "reference recipe (585000 images) on (b) GPU-resident: 61.2 s" in text
