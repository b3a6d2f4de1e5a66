"""The device commands through the real CLI, the embedding API, and the examples."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_deploy.cli import cli
from alexnet_deploy.deploy.preprocess import list_class_folder
from device_helpers import edit_manifest, tiny_bundle

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], obj={}, catch_exceptions=False)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path, raw_images=True)


def test_pack_unpack_verify_flow(bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    result = run("pack", bundle, "-o", archive)
    assert result.exit_code == 0 and "packed 4 files" in result.output
    out = tmp_path / "device" / "bundle"
    result = run("unpack", archive, out)
    assert result.exit_code == 0, result.output
    result = run("verify", out, "--backend", "ort", "--json", tmp_path / "verify.json")
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and result.output.count("PASS") >= 7
    assert "FAIL" not in result.output
    saved = json.loads((tmp_path / "verify.json").read_text())
    assert saved["ok"] is True and {c["check"] for c in saved["checks"]} >= {"sha256", "golden", "model metadata"}


def test_verify_progress_is_two_plain_lines_on_stderr(bundle: Path, tmp_path: Path) -> None:
    """Not a terminal (click's runner): the checks are counted in plain lines on stderr, the first
    and the last (a quick run has none between); stdout keeps the table."""
    result = run("verify", bundle, "--backend", "ort", "--precision", "fp32", "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.output
    checks = json.loads((tmp_path / "v.json").read_text())["checks"]
    last = checks[-1]
    first, end = result.stderr.splitlines()
    assert first == "verify: 1 checks, manifest manifest.json: pass"
    assert re.fullmatch(rf"verify: {len(checks)} checks, [\d.]+ s, [\d.]+ checks/s, "
                        rf"{last['check']} {re.escape(last['target'])}: {last['status']}", end), end
    assert "verify:" not in result.stdout and "PASS" in result.stdout


def test_verify_fails_with_exit_code_1(bundle: Path) -> None:
    edit_manifest(bundle, lambda d: d["preprocess"].update(mean=[0.1, 0.2, 0.3]))
    result = run("verify", bundle, "--backend", "ort", "--precision", "fp32")
    assert result.exit_code == 1
    assert "FAIL" in result.output and "verification FAILED" in result.output


def test_unpack_refusal_is_one_error_line(bundle: Path, tmp_path: Path) -> None:
    import io
    import tarfile

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    result = CliRunner().invoke(cli, ["unpack", str(evil), str(tmp_path / "out")], obj={})
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "escapes" in lines[0]


def test_export_triton_cli(bundle: Path, tmp_path: Path) -> None:
    result = run("export-triton", bundle, tmp_path / "repo", "--precision", "fp16", "--max-batch", "4",
                 "--model-name", "anet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "repo" / "anet" / "config.pbtxt").is_file()
    assert (tmp_path / "repo" / "anet" / "1" / "model.onnx").is_file()


def test_build_engine_without_tensorrt_says_what_to_install(bundle: Path) -> None:
    result = CliRunner().invoke(cli, ["build-engine", str(bundle), "--fp16"], obj={})
    assert result.exit_code == 1
    assert "Error: cannot build TensorRT engines here" in result.output
    assert "alexnet-deploy[jetson]" in result.output and "--backend ort" in result.output


def test_embedding_api_classifies_images(bundle: Path, tmp_path: Path) -> None:
    """The documented API: load(bundle) then classify(paths) -> labels and probabilities."""
    from alexnet_deploy.deploy import load

    classes, samples = list_class_folder(tmp_path / "images")
    paths = [p for p, _ in samples]
    reference = np.load(bundle / "reference.npz", allow_pickle=False)
    with load(bundle, backend="ort") as model:
        preds = model.classify(paths, topk=2)
    assert len(preds) == len(paths)
    assert all(p.label in classes and 0.0 <= p.probability <= 1.0 and len(p.topk) == 2 for p in preds)
    # The first rows of reference.npz are the same images: the same decisions as the stored logits.
    ref_labels = [classes[i] for i in reference["logits"].argmax(axis=1)]
    assert [p.label for p in preds[:len(ref_labels)]] == ref_labels


def _example(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_classify_folder_example_on_an_archive(bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tgz"
    assert run("pack", bundle, "-o", archive).exit_code == 0
    proc = _example("examples/classify_folder.py", archive, tmp_path / "images", "--backend", "ort",
                    "--topk", "2", env={"ALEXNET_DEPLOY_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert len(rows) == 6 and all(r[1].startswith("class_") for r in rows)
    assert "images/s" in proc.stdout


def test_camera_example_without_opencv(bundle: Path) -> None:
    try:
        import cv2  # noqa: F401
        pytest.skip("OpenCV is installed here; the missing-OpenCV message cannot be shown")
    except ImportError:
        pass
    proc = _example("examples/camera.py", bundle, "--no-display", "--frames", "1")
    assert proc.returncode == 2 and "needs OpenCV" in proc.stderr and "pip install opencv-python" in proc.stderr


def test_device_commands_do_not_import_torch(bundle: Path, tmp_path: Path) -> None:
    code = ("import sys; from click.testing import CliRunner; from alexnet_deploy.cli import cli; "
            f"r = CliRunner().invoke(cli, ['verify', {str(bundle)!r}, '--backend', 'ort'], obj={{}}); "
            f"r2 = CliRunner().invoke(cli, ['pack', {str(bundle)!r}, '-o', {str(tmp_path / 'x.tar.gz')!r}], obj={{}}); "
            "import alexnet_deploy.deploy.trt.engines, alexnet_deploy.deploy.evaluate.verify, alexnet_deploy.export.triton; "
            "print(json.dumps([r.exit_code, r2.exit_code, 'torch' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, 0, False], proc.stderr


def test_load_accepts_a_packed_bundle(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from alexnet_deploy.deploy import load

    monkeypatch.setenv("ALEXNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "b.tar.gz"
    assert run("pack", bundle, "-o", archive).exit_code == 0
    with load(archive, backend="ort") as model:
        assert str(model.bundle).startswith(str(tmp_path / "cache"))
        assert len(model.classify(sorted((tmp_path / "images").rglob("*.jpg"))[:2])) == 2


@pytest.mark.slow
def test_device_flow_with_the_real_exporter(tmp_path: Path) -> None:
    """export (AlexNet-2012 at the pipeline width, 64 px, random weights) -> pack -> unpack elsewhere
    -> verify -> tamper."""
    pytest.importorskip("torch")
    from alexnet_deploy.alexnet.checkpoint import save_checkpoint
    from alexnet_deploy.alexnet.model import build_model
    from alexnet_deploy.deploy.preprocess import PreprocessSpec
    from conftest import PIPELINE_WIDTH, write_image_folder

    images = write_image_folder(tmp_path / "images", classes=3, per_class=3, size=64)
    model = build_model("alexnet2012", num_classes=3, width=PIPELINE_WIDTH)
    save_checkpoint(tmp_path / "ckpt.pt", model=model, arch="alexnet2012",
                    classes=["class_0", "class_1", "class_2"], preprocess=PreprocessSpec(resize=73, crop=64),
                    config={}, epoch=0, metrics={})
    result = run("export", tmp_path / "ckpt.pt", "--out", tmp_path / "bundle", "--fp16", "--verify-data", images,
                 "--max-batch", "4")
    assert result.exit_code == 0, result.output
    assert run("pack", tmp_path / "bundle", "-o", tmp_path / "b.tar.gz").exit_code == 0
    # The device has only the archive.
    shutil.rmtree(tmp_path / "bundle")
    (tmp_path / "ckpt.pt").unlink()
    device = tmp_path / "device" / "bundle"
    assert run("unpack", tmp_path / "b.tar.gz", device).exit_code == 0
    result = run("verify", device, "--backend", "ort")
    assert result.exit_code == 0 and "verified" in result.output, result.output
    from alexnet_deploy.deploy.evaluate.verify import PASS, verify_bundle

    report = verify_bundle(device, backends=("ort",), precisions=("fp32",))
    assert [c.status for c in report.checks if c.check == "preprocessing"] == [PASS]  # raw_crops kept by export
    edit_manifest(device, lambda d: d["preprocess"].update(std=[0.5, 0.5, 0.5]))
    result = run("verify", device, "--backend", "ort", "--precision", "fp32")
    assert result.exit_code == 1 and "std differ" in result.output.replace("\n", " ")
