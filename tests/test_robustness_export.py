"""Two exports to one --out cannot mix their models: the bundle is locked for the whole export, so the second writer is refused (naming the holder) and the manifest hashes exactly what the
first one wrote. Real processes, real checkpoints, a real export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_deploy.deploy.bundle import bundle_lock
from alexnet_deploy.deploy.bundle.transaction import lock_path
from alexnet_deploy.deploy.bundle.files import sha256_file

torch = pytest.importorskip("torch")

EXPORT_FLAGS = ("--no-simplify", "--no-engine", "--verify-count", "2", "--max-batch", "2")


def _checkpoint(path: Path, seed: int) -> Path:
    from alexnet_deploy.alexnet.checkpoint import save_checkpoint
    from alexnet_deploy.alexnet.model import build_model
    from alexnet_deploy.deploy.preprocess import PreprocessSpec
    from conftest import PIPELINE_WIDTH

    torch.manual_seed(seed)
    model = build_model("alexnet2012", num_classes=3, width=PIPELINE_WIDTH)
    return save_checkpoint(path, model=model, arch="alexnet2012", classes=("a", "b", "c"),
                           preprocess=PreprocessSpec(resize=72, crop=64), config={}, epoch=0, metrics={})


def _export(checkpoint: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alexnet_deploy", "export", str(checkpoint), "--out", str(out),
                             *EXPORT_FLAGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_export_into_a_locked_bundle_is_refused(tmp_path: Path) -> None:
    """Fast: this test process holds the lock, a real export process is refused before it loads anything."""
    out = tmp_path / "bundle"
    out.mkdir()
    with bundle_lock(out, "--out"):
        child = _export(tmp_path / "never-read.pt", out)
        _, stderr = child.communicate(timeout=120)
    assert child.returncode == 1
    assert f"another alexnet-deploy process (pid {os.getpid()})" in stderr
    assert "Traceback" not in stderr and not list(out.iterdir())   # nothing written, the lock file removed


def _wait_for_lock(out: Path, pid: int, child: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = lock_path(out)
        if lock.is_file() and lock.read_text().strip() == str(pid):
            return
        assert child.poll() is None, child.communicate()
        time.sleep(0.05)
    raise AssertionError("the first export never took the lock")


@pytest.mark.slow
def test_two_concurrent_exports_never_mix_models(tmp_path: Path) -> None:
    first_ckpt, second_ckpt = _checkpoint(tmp_path / "a.pt", seed=1), _checkpoint(tmp_path / "b.pt", seed=2)
    out = tmp_path / "bundle"
    first = _export(first_ckpt, out)
    _wait_for_lock(out, first.pid, first)
    second = _export(second_ckpt, out)
    _, second_err = second.communicate(timeout=300)
    first_out, first_err = first.communicate(timeout=600)
    assert second.returncode == 1 and f"(pid {first.pid}) is writing this bundle" in second_err
    assert first.returncode == 0, first_err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "reference.npz"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["checkpoint_sha256"] == sha256_file(first_ckpt)
    for artifact in manifest["artifacts"]:
        assert sha256_file(out / artifact["file"]) == artifact["sha256"]
    verify = subprocess.run([sys.executable, "-m", "alexnet_deploy", "verify", str(out), "--backend", "ort"],
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_failed_export_leaves_no_empty_out(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    child = _export(bad, tmp_path / "new" / "bundle")
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 1 and "bad.pt" in stderr
    assert not (tmp_path / "new" / "bundle").exists()
