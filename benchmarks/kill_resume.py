"""Kill a real training run at random moments, resume it each time, and check that it ends exactly
where an uninterrupted run ends.

One uninterrupted `alexnet-deploy train` first (the reference). Then, ``--kills`` times, the same
run in a fresh folder, SIGKILLed at a random moment (uniform between the first epoch's start and
the run's end, so every write point of an epoch can be hit: best.pt, last.pt, metrics.jsonl/csv,
curves.png) and restarted with --resume last.pt to the end. Each resumed run must equal the
reference: last.pt and best.pt weights bit for bit, metrics.jsonl with every epoch exactly once and
the reference's deterministic fields (losses, top-1/top-5, learning rate, gradient norm). Exit 1 on
any difference.

    python benchmarks/kill_resume.py --kills 50
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

DETERMINISTIC = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "grad_norm",
                 "best_val_top1", "train_images", "val_images")


def _command(data: Path, out: Path, epochs: int, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "alexnet_deploy", "train", "--data", str(data), "--val-split", "0.25",
           "--out", str(out), "--image-size", "63", "--resize", "66", "--batch-size", "6", "--epochs", str(epochs),
           "--workers", "1", "--lr", "0.0002", "--warmup-epochs", "0", "--width", "0.125"]
    return cmd + (["--resume", str(out / "last.pt")] if resume else [])


def _timed_run(cmd: list[str]) -> tuple[float, float]:
    """(seconds until the first epoch started, seconds in all) of one uninterrupted run."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_epoch = None
    for line in proc.stderr:
        if first_epoch is None and line.startswith("epoch 1/"):
            first_epoch = time.monotonic() - start
    if proc.wait() != 0:
        raise SystemExit(f"the reference run failed: {' '.join(cmd)}")
    return first_epoch or 0.0, time.monotonic() - start


def _trial(cmd_fresh: list[str], cmd_resume: list[str], out: Path, delay: float) -> dict:
    """One fresh run SIGKILLed ``delay`` seconds in, then resumed to the end; what the kill left."""
    proc = subprocess.Popen(cmd_fresh, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.kill()
    killed_code = proc.wait()
    left = {"delay": round(delay, 2), "code": killed_code,
            "partial_writes": sorted(p.name for p in out.glob(".*.tmp")) if out.is_dir() else [],
            "metrics_lines": len((out / "metrics.jsonl").read_text().splitlines())
            if (out / "metrics.jsonl").is_file() else 0}
    cmd = cmd_resume if (out / "last.pt").is_file() else cmd_fresh
    left["resumed_code"] = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return left


def _compare(reference: Path, killed: Path) -> list[str]:
    import torch

    from alexnet_deploy.alexnet.checkpoint import load_checkpoint

    problems = []
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(reference / name), load_checkpoint(killed / name)
        if a.epoch != b.epoch:
            problems.append(f"{name}: epoch {b.epoch}, reference {a.epoch}")
        for key, value in a.model.state_dict().items():
            if not torch.equal(value, b.model.state_dict()[key]):
                problems.append(f"{name}: {key} differs")
                break
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    if [r["epoch"] for r in rows] != [r["epoch"] for r in ref_rows]:
        problems.append(f"metrics.jsonl epochs {[r['epoch'] for r in rows]}, reference {[r['epoch'] for r in ref_rows]}")
    for row, ref in zip(rows, ref_rows):
        differ = [k for k in DETERMINISTIC if row.get(k) != ref.get(k)]
        if differ:
            problems.append(f"epoch {row['epoch']}: {differ} differ from the reference")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from conftest import write_image_folder

    root = Path(tempfile.mkdtemp(prefix="kill-resume."))
    data = write_image_folder(root / "data", classes=3, per_class=8, size=40)
    reference = root / "reference"
    first_epoch, total = _timed_run(_command(data, reference, args.epochs, resume=False))
    print(f"uninterrupted run: {total:.1f} s, first epoch after {first_epoch:.1f} s")
    rng, failures, mid_write = random.Random(args.seed), 0, 0
    for trial in range(args.kills):
        out = root / f"killed-{trial}"
        left = _trial(_command(data, out, args.epochs, False), _command(data, out, args.epochs, True), out,
                      rng.uniform(first_epoch, total))
        problems = _compare(reference, out) if left["resumed_code"] == 0 else ["the resumed run failed"]
        failures += bool(problems)
        mid_write += bool(left["partial_writes"])
        print(f"kill {trial + 1}: {left}" + ("".join(f"\n  DIFFERENT: {p}" for p in problems) or " -> same"))
        shutil.rmtree(out, ignore_errors=True)
    print(f"{args.kills} kills, {mid_write} of them in the middle of a file write; {failures} resumed runs differ "
          f"from the uninterrupted one (weights of last.pt and best.pt bit for bit, metrics.jsonl epochs "
          f"1..{args.epochs} once each with the same losses, top-1, lr and gradient norms)")
    shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
