"""`alexnet-deploy export` through the real CLI: a foreign (full-size torchvision) state_dict exports;
bad input gives one `Error:` line and exit 1 (usage errors exit 2). The int8 and engine wiring run on
a torchvision-layout checkpoint at conftest.PIPELINE_WIDTH."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from alexnet_deploy.cli import cli
from robustness_helpers import one_error_line
from stubs.fake_env import stand_ins  # noqa: F401 - pytest fixture

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torchvision_state_dict(tmp_path_factory) -> Path:
    """torchvision's AlexNet (3 classes) saved as a plain state_dict from nn.DataParallel (`module.` keys)."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in alexnet(num_classes=3).state_dict().items()}
    path = tmp_path_factory.mktemp("tv") / "tv_dp.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def narrow_checkpoint(tmp_path_factory) -> Path:
    """torchvision's layout at the pipeline width, 3 classes, 64 px, as `alexnet-deploy train` saves it."""
    from alexnet_deploy.alexnet.checkpoint import save_checkpoint
    from alexnet_deploy.alexnet.model import build_model
    from alexnet_deploy.deploy.preprocess import PreprocessSpec
    from conftest import PIPELINE_WIDTH

    torch.manual_seed(0)
    model = build_model("torchvision", num_classes=3, width=PIPELINE_WIDTH)
    return save_checkpoint(tmp_path_factory.mktemp("narrow") / "tv.pt", model=model, arch="torchvision",
                           classes=("class_0", "class_1", "class_2"), preprocess=PreprocessSpec.for_image_size(64),
                           config={}, epoch=0, metrics={})


def run(*args: str):
    return CliRunner().invoke(cli, list(args), obj={})


def test_torchvision_state_dict_with_module_prefix_exports(torchvision_state_dict: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = run("export", str(torchvision_state_dict), "--out", str(out), "--arch", "torchvision",
                 "--num-classes", "3", "--image-size", "64", "--no-simplify", "--verify-count", "4")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == "torchvision" and manifest["input"]["shape"] == [-1, 3, 64, 64]
    assert manifest["export"]["lrn_nodes"] == 0 and manifest["parity"]["fp32"]["onnx_vs_torch"]["passed"]
    assert "LRN none (the model has no LRN layers)" in result.stdout
    assert manifest["classes"] == ["class_0", "class_1", "class_2"]
    engines = manifest["export"]["engines"]
    if engines["status"] == "skipped":
        assert f"alexnet-deploy build-engine {out}" in result.stdout and "TensorRT engines skipped" in result.stdout
    assert "model.onnx" in result.stdout


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = run("export", str(bad), "--out", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert str(bad) in one_error_line(result) and "checkpoint" in one_error_line(result)
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_wrong_class_count(torchvision_state_dict: Path, tmp_path: Path) -> None:
    result = run("export", str(torchvision_state_dict), "--out", str(tmp_path / "b"), "--arch", "torchvision",
                 "--num-classes", "5")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "3 output classes" in line and "--num-classes 3" in line


def test_unwritable_out(tmp_path: Path, torchvision_state_dict: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run("export", str(torchvision_state_dict), "--out", str(blocker / "bundle"))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"--out {blocker / 'bundle'}: cannot write there" in line


def test_non_bundle_directory_is_not_overwritten(tmp_path: Path, torchvision_state_dict: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    result = run("export", str(torchvision_state_dict), "--out", str(out))
    assert result.exit_code == 1 and "is not a bundle" in one_error_line(result)
    assert (out / "holiday.jpg").read_bytes() == b"precious"


def test_flag_errors(tmp_path: Path, torchvision_state_dict: Path) -> None:
    assert run("export", str(torchvision_state_dict), "--out", str(tmp_path / "b"), "--int8").exit_code == 2
    result = run("export", str(torchvision_state_dict), "--out", str(tmp_path / "b"), "--opset", "12")
    assert result.exit_code == 1 and "--opset 12" in one_error_line(result)
    result = run("export", str(torchvision_state_dict), "--out", str(tmp_path / "b"), "--lrn", "nonsense",
                 "--arch", "torchvision")
    assert result.exit_code == 1 and "--lrn nonsense: unknown LRN formulation" in one_error_line(result)


@pytest.mark.slow
def test_int8_runs_calibration_after_the_fp32_bundle(narrow_checkpoint: Path, tmp_path: Path) -> None:
    from conftest import write_image_folder

    images = write_image_folder(tmp_path / "calib", classes=3, per_class=4, size=64)
    held_out = write_image_folder(tmp_path / "val", classes=3, per_class=2, size=64, seed=1)
    out = tmp_path / "bundle"
    result = run("export", str(narrow_checkpoint), "--out", str(out), "--arch", "torchvision",
                 "--image-size", "64", "--no-simplify", "--verify-count", "4", "--int8", "--calib", str(images),
                 "--verify-data", str(held_out))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {a["precision"] for a in manifest["artifacts"] if a["kind"] == "onnx"} == {"fp32", "int8"}
    # The int8 accuracy was measured on --verify-data, never on the calibration images.
    assert manifest["calibration"]["measured"] and manifest["calibration"]["num_images"] == 12
    assert manifest["parity"]["source"] == "verify-data"
    if manifest["export"]["engines"]["status"] == "skipped":
        assert manifest["export"]["engines"]["command"].endswith(" --int8")


def test_engines_are_built_when_tensorrt_and_a_gpu_are_here(narrow_checkpoint: Path, tmp_path: Path,
                                                            stand_ins) -> None:
    """With (the stand-in) TensorRT and a GPU present, export also builds and registers the engine.
    The stand-in proves the wiring only, not that real TensorRT accepts the ONNX."""
    from alexnet_deploy.deploy.bundle import read_manifest, verify_artifacts

    stand_ins(trt_version="10.3.0")
    out = tmp_path / "bundle"
    result = run("export", str(narrow_checkpoint), "--out", str(out), "--arch", "torchvision",
                 "--image-size", "64", "--no-simplify", "--verify-count", "2", "--max-batch", "4")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    plan = manifest.artifact("fp32", kind="trt-plan")
    assert plan.file == "engines/fp32-sm87-trt10.3.0.plan" and manifest.export["engines"]["status"] == "built"
    assert plan.built_with["profile"]["max"] == [4, 3, 64, 64]
    assert len(verify_artifacts(out)) == 3 and "TensorRT engines: engines/fp32-sm87-trt10.3.0.plan" in result.stdout
