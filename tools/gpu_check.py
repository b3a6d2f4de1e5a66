"""`make gpu-check`: every GPU path of the toolkit in one command, one report.

Run on a machine with an NVIDIA GPU and PyTorch with CUDA (no network needed). Steps, each timed,
each recorded as passed / failed / skipped with its reason, none stopping the others:

1. the tests marked ``cuda`` (training steps with AMP, the fused optimizer and the scaler on CUDA,
   an epoch under torch's sync debugging set to raise, the same pixels from the GPU-resident and
   RAM paths, pt-cuda and pt-cuda-graphs golden vectors, a 1-process NCCL DDP run);
2. ``benchmarks/gpu_train.py --compile`` at 227 px, batch 256, AMP (images/s of each data path
   against the limit, the limit under torch.compile, the reference recipe's projected time);
3. a 1-epoch ``alexnet-deploy train --device cuda`` on the bundled sample at 227 px;
4. ``export`` of that run (fp32 + fp16 ONNX) and ``bench`` with pt-cuda, pt-cuda-graphs and pt at
   batch 1 and 16 (pt-cuda fp16 vs fp32 latency, CUDA graphs vs kernel launches);
5. TensorRT: build-engine, verify and bench of the same bundle when ``tensorrt`` imports (skipped
   with the reason otherwise).

Writes OUT/gpu-check.json (GPU, driver, torch and CUDA versions, every step's outcome and figures)
and OUT/gpu-check.txt (the same, for a person), and exits 1 when a step failed or torch sees no GPU.

    python tools/gpu_check.py --out gpu-check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "data" / "cifar10-sample"


def _run(cmd: list[str], timeout: float) -> tuple[int, str]:
    """(exit code, combined output tail) of ``cmd`` run from the repository root."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    except OSError as exc:   # the program is missing (nvidia-smi on a machine without the driver)
        return 127, f"cannot run {cmd[0]}: {exc.strerror}"
    return done.returncode, (done.stdout + done.stderr)[-4000:]


def _step(report: dict, name: str, cmd: list[str], timeout: float, skip: str | None = None) -> bool:
    start = time.monotonic()
    if skip:
        report["steps"].append({"step": name, "status": "skipped", "reason": skip})
        return False
    code, tail = _run(cmd, timeout)
    status = "passed" if code == 0 else "failed"
    report["steps"].append({"step": name, "status": status, "exit_code": code, "seconds": round(time.monotonic() - start, 1),
                            "command": " ".join(cmd), "output_tail": tail})
    return code == 0


def _facts() -> dict:
    import torch

    facts = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    code, out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 30)
    facts["nvidia_smi"] = out.strip() if code == 0 else f"nvidia-smi unavailable ({out.strip()[:200]})"
    try:
        import tensorrt

        facts["tensorrt"] = tensorrt.__version__
    except ImportError as exc:
        facts["tensorrt"] = None
        facts["tensorrt_reason"] = f"tensorrt does not import: {exc}"
    return facts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check", help="folder for the report and the run's files")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"facts": _facts(), "steps": []}
    py = [sys.executable]
    no_gpu = None if report["facts"]["gpu"] else "torch sees no CUDA GPU"
    _step(report, "tests marked cuda", py + ["-m", "pytest", "-q", "-m", "cuda", "tests"], 300, no_gpu)
    _step(report, "benchmarks/gpu_train.py", py + ["benchmarks/gpu_train.py", "--device", "cuda", "--compile",
                                                   "--data", str(SAMPLE / "train"), "--json",
                                                   str(out / "gpu_train.json")],
          420, no_gpu)
    cli = py + ["-m", "alexnet_deploy"]
    run, bundle = out / "run", out / "bundle"
    trained = _step(report, "train 1 epoch at 227 px on cuda",
                    cli + ["train", "--data", str(SAMPLE), "--device", "cuda", "--epochs", "1", "--image-size", "227",
                           "--batch-size", "128", "--out", str(run), "--overwrite"], 600, no_gpu)
    exported = _step(report, "export fp32 + fp16", cli + ["export", str(run / "best.pt"), "--out", str(bundle),
                                                         "--fp16", "--verify-data", str(SAMPLE / "val")],
                     600, None if trained else "no trained checkpoint")
    _step(report, "bench pt-cuda vs pt", cli + ["bench", str(bundle), "--backend", "pt-cuda", "--backend",
                                                "pt-cuda-graphs", "--backend", "pt",
                                                "--precision", "fp32", "--precision", "fp16", "--batch", "1",
                                                "--batch", "16", "--data", str(SAMPLE / "val"), "--json",
                                                str(out / "bench.json")],
          600, None if exported else "no bundle")
    trt = report["facts"].get("tensorrt_reason") or (None if exported else "no bundle")
    for name, cmd in (("build-engine", ["build-engine", str(bundle), "--fp16"]),
                      ("verify trt", ["verify", str(bundle), "--backend", "trt"]),
                      ("bench trt", ["bench", str(bundle), "--backend", "trt", "--batch", "1", "--batch", "16"])):
        _step(report, name, cli + cmd, 600, trt)
    _attach_figures(report, out)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu-check.txt").write_text(summary(report))
    print(summary(report))
    if no_gpu:
        print(f"gpu-check: {no_gpu}; nothing was checked (run it on a machine with an NVIDIA GPU)")
        return 1
    return 1 if any(s["status"] == "failed" for s in report["steps"]) else 0


def _attach_figures(report: dict, out: Path) -> None:
    for name in ("gpu_train.json", "bench.json"):
        path = out / name
        if path.is_file():
            report[name.removesuffix(".json")] = json.loads(path.read_text())


def summary(report: dict) -> str:
    facts = report["facts"]
    lines = [f"GPU: {facts['gpu']} ({facts['nvidia_smi']}); torch {facts['torch']}, CUDA {facts['cuda']}, "
             f"TensorRT {facts.get('tensorrt') or 'not installed'}"]
    for step in report["steps"]:
        detail = step.get("reason") or f"{step.get('seconds')} s"
        lines.append(f"  {step['status']:7s} {step['step']} ({detail})")
    trained = report.get("gpu_train") or {}
    for name, figure in trained.get("paths", {}).items():
        lines.append(f"  train {name}: {figure['images_per_s']} img/s, {figure['ratio_to_limit']} of the limit")
    if "recipe_projection" in trained:
        recipe = trained["recipe_projection"]
        lines.append(f"  reference recipe ({recipe['images']} images) on {recipe['path']}: {recipe['seconds']} s "
                     "of training steps (projected)")
    p50 = {}
    for row in (report.get("bench") or {}).get("rows", []):
        if row.get("status") == "ok":
            p50[row["backend"], row["precision"], row["batch"]] = row["p50_ms"]
            lines.append(f"  bench {row['backend']} {row['precision']} batch {row['batch']}: p50 {row['p50_ms']:.3f} ms")
    lines += _speedups(p50)
    return "\n".join(lines) + "\n"


def _speedups(p50: dict) -> list[str]:
    """The comparisons the report exists for: fp16 against fp32 on pt-cuda, graphs against launches."""
    pairs = [(f"pt-cuda fp16 vs fp32, batch {b}", ("pt-cuda", "fp32", b), ("pt-cuda", "fp16", b)) for b in (1, 16)]
    pairs += [(f"CUDA graphs vs launches, {p} batch {b}", ("pt-cuda", p, b), ("pt-cuda-graphs", p, b))
              for p in ("fp32", "fp16") for b in (1, 16)]
    return [f"  {label}: {p50[slow] / p50[fast]:.2f}x" for label, slow, fast in pairs if slow in p50 and fast in p50]


if __name__ == "__main__":
    sys.exit(main())
