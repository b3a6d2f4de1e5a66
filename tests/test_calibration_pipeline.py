"""calibrate_bundle and `alexnet-deploy calibrate` end to end on a small fitted model: manifest
provenance, accuracy on held-out images, refusal of fake calibration, and the budget loop."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from conftest import write_image_folder
from test_calibration_models import add_outlier_channel, make_bundle

from alexnet_deploy.calibration import BudgetNotMet, calibrate_bundle, check_qdq
from alexnet_deploy.cli import cli
from alexnet_deploy.deploy.bundle import make_artifact, read_manifest, verify_artifacts, write_manifest
from alexnet_deploy.errors import CalibrationError, DataError


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    """Calibration caches go to the test's own directory, never to ~/.cache."""
    monkeypatch.setenv("ALEXNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    images = write_image_folder(tmp_path / "images", classes=3, per_class=24, size=32, seed=1)
    return make_bundle(tmp_path / "bundle", images), images


def _outlier_bundle(bundle: Path) -> Path:
    onnx.save(add_outlier_channel(onnx.load(str(bundle / "model.onnx"))), str(bundle / "model.onnx"))
    write_manifest(bundle, read_manifest(bundle).with_artifact(make_artifact(bundle, "model.onnx", "onnx", "fp32")))
    return bundle


def test_calibrate_bundle_writes_int8_model_and_provenance(setup) -> None:
    bundle, images = setup
    report = calibrate_bundle(bundle, calib_dir=images, num_images=24, batch_size=8)
    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest)
    int8 = manifest.artifact("int8")
    assert int8 is not None and int8.file == "model.int8.onnx" and int8.built_with["method"] == report.method
    assert check_qdq(bundle / "model.int8.onnx") == []
    calibration = manifest.calibration
    assert calibration["random"] is False and calibration["num_images"] == 24 and len(calibration["images"]) == 24
    assert calibration["cache_key"] == report.cache_key and set(calibration["methods"]) == {"entropy", "percentile",
                                                                                              "minmax"}
    saved = json.loads((bundle / calibration["report"]).read_text())
    assert saved["method"] == report.method and saved["int8"]["n_images"] == 48
    # Held-out accuracy: the 48 images not used for calibration.
    assert report.fp32.top1 >= 90 and report.int8.agreement >= 95 and report.drop <= 5
    assert report.int8_kernels.get("QLinearConv") == 2
    assert [r.method for r in report.methods] == ["entropy", "percentile", "minmax"]
    again = calibrate_bundle(bundle, calib_dir=images, num_images=24, batch_size=8, method="minmax")
    assert again.cache_hit and again.method == "minmax" and len(again.methods) == 1


def test_int8_matches_fp32_on_separate_validation_folder(setup, tmp_path: Path) -> None:
    bundle, images = setup
    val = write_image_folder(tmp_path / "val", classes=3, per_class=10, size=32, seed=7)
    report = calibrate_bundle(bundle, calib_dir=images, val_dir=val, num_images=30, method="entropy")
    assert report.int8.n_images == 30 and report.int8.agreement >= 90
    assert abs(report.drop) <= 10


def test_calibration_without_real_images_is_refused(setup) -> None:
    bundle, _ = setup
    with pytest.raises(CalibrationError, match="needs real images"):
        calibrate_bundle(bundle, calib_dir=None)
    assert read_manifest(bundle).artifact("int8") is None
    result = CliRunner().invoke(cli, ["calibrate", str(bundle)], obj={})
    assert result.exit_code == 1 and "Error: INT8 calibration needs real images" in result.output


def test_random_calibration_is_stamped(setup) -> None:
    bundle, _ = setup
    result = CliRunner().invoke(cli, ["calibrate", str(bundle), "--allow-random-calibration", "--num-images", "8",
                                      "--method", "minmax"], obj={})
    assert result.exit_code == 0, result.output
    assert "random calibration" in result.output.lower()
    manifest = read_manifest(bundle)
    assert manifest.calibration["random"] is True and manifest.artifact("int8").built_with["random_calibration"]


def test_budget_keeps_sensitive_layers_in_float(setup) -> None:
    bundle, images = _outlier_bundle(setup[0]), setup[1]
    report = calibrate_bundle(bundle, calib_dir=images, num_images=24, method="minmax", max_drop=0.0)
    plain = report.methods[0].accuracy
    assert plain.top1 < report.fp32.top1, "the outlier channel should hurt plain int8"
    assert report.budget_met is True and report.kept_float and report.drop <= 0.0
    assert len(report.sensitivity) == 4 and {s.layer for s in report.sensitivity} == {"conv1", "conv2", "fc1", "fc2"}
    model = onnx.load(str(bundle / "model.int8.onnx"))
    weight_sources = {n.name: n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    for layer in report.kept_float:
        assert not weight_sources[layer].endswith("_DequantizeLinear_Output")
    assert read_manifest(bundle).calibration["kept_float"] == list(report.kept_float)


def test_agreement_budget_keeps_layers_in_float(setup) -> None:
    bundle, images = _outlier_bundle(setup[0]), setup[1]
    result = CliRunner().invoke(cli, ["calibrate", str(bundle), "--calib", str(images), "--num-images", "24",
                                      "--method", "minmax", "--min-agreement", "100"], obj={})
    assert result.exit_code == 0, result.output
    calibration = read_manifest(bundle).calibration
    assert calibration["min_agreement"] == 100 and calibration["budget_met"] is True
    assert calibration["kept_float"] and calibration["agreement"] == 100
    assert "Per-layer sensitivity" in result.output


def test_budget_not_met_exits_non_zero_with_report(setup) -> None:
    bundle, images = _outlier_bundle(setup[0]), setup[1]
    # Keeping every layer in float would meet any budget, so make that impossible: without
    # node names no layer can be excluded from quantization and the drop stays.
    model = onnx.load(str(bundle / "model.onnx"))
    for node in model.graph.node:
        node.name = "" if node.op_type in ("Conv", "Gemm") else node.name
    onnx.save(model, str(bundle / "model.onnx"))
    write_manifest(bundle, read_manifest(bundle).with_artifact(make_artifact(bundle, "model.onnx", "onnx", "fp32")))
    result = CliRunner().invoke(cli, ["calibrate", str(bundle), "--calib", str(images), "--num-images", "24",
                                      "--method", "minmax", "--max-drop", "0"], obj={})
    assert result.exit_code == 1
    assert "Error: int8 missed --max-drop 0.0" in result.output and "minmax" in result.output
    assert json.loads((bundle / "calibration_report.json").read_text())["budget_met"] is False
    assert read_manifest(bundle).artifact("int8") is None


def test_cli_prints_table_and_writes_extra_report(setup, tmp_path: Path) -> None:
    bundle, images = setup
    extra = tmp_path / "out" / "report.json"
    result = CliRunner().invoke(cli, ["calibrate", str(bundle), "--calib", str(images), "--num-images", "24",
                                      "--batch-size", "8", "--report", str(extra)], obj={})
    assert result.exit_code == 0, result.output
    for text in ("entropy", "percentile", "minmax", "chosen", "agreement", "QLinearConv"):
        assert text in result.output
    assert json.loads(extra.read_text())["num_images"] == 24 and (bundle / "calibration_report.json").is_file()


def test_unreadable_calibration_images_are_reported(setup, tmp_path: Path) -> None:
    bundle, images = setup
    (images / "class_1" / "zz_broken.jpg").write_bytes(b"\x00" * 10)
    val = write_image_folder(tmp_path / "val", classes=3, per_class=4, size=32, seed=5)
    result = CliRunner().invoke(cli, ["calibrate", str(bundle), "--calib", str(images), "--val", str(val),
                                      "--num-images", "500", "--method", "minmax"], obj={})
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable image(s): class_1/zz_broken.jpg" in result.output
    calibration = read_manifest(bundle).calibration
    assert calibration["skipped"] == ["class_1/zz_broken.jpg"] and calibration["num_images"] == 72


@pytest.mark.parametrize("args, message", [
    (["--num-images", "0"], "--num-images must be a positive integer"),
    (["--max-drop", "-1"], "--max-drop must be >= 0"),
    (["--min-agreement", "101"], "--min-agreement must be a percentage in [0, 100]"),
    (["--val", "/nonexistent/val"], "--val /nonexistent/val: not a directory"),
])
def test_bad_flags_are_one_line_errors(setup, args, message) -> None:
    bundle, images = setup
    result = CliRunner().invoke(cli, ["calibrate", str(bundle), "--calib", str(images), *args], obj={})
    assert result.exit_code == 1 and f"Error: {message}" in result.output


def test_max_drop_needs_held_out_images(setup) -> None:
    bundle, images = setup
    with pytest.raises(CalibrationError, match="--max-drop 1.0 needs labelled held-out images"):
        calibrate_bundle(bundle, calib_dir=images, num_images=1000, max_drop=1.0)


def test_int8_that_cannot_be_measured_is_refused_and_nothing_is_written(setup) -> None:
    bundle, images = setup
    before = sorted(p.name for p in bundle.iterdir())
    with pytest.raises(CalibrationError, match=r"accuracy cannot be measured.*--val DIR"):
        calibrate_bundle(bundle, calib_dir=images, num_images=1000)
    assert sorted(p.name for p in bundle.iterdir()) == before and read_manifest(bundle).artifact("int8") is None


def test_bundle_without_fp32_model_is_refused(setup, tmp_path: Path) -> None:
    bundle, images = setup
    manifest = read_manifest(bundle)
    write_manifest(bundle, manifest.replace(artifacts=()))
    with pytest.raises(CalibrationError, match="no fp32 ONNX"):
        calibrate_bundle(bundle, calib_dir=images, num_images=8)


def test_val_classes_must_match_the_model(setup, tmp_path: Path) -> None:
    bundle, images = setup
    other = write_image_folder(tmp_path / "other", classes=4, per_class=3, size=32)
    with pytest.raises(DataError, match="not among the model's classes"):
        calibrate_bundle(bundle, calib_dir=images, val_dir=other, num_images=8)


def test_auto_does_not_reward_top1_above_fp32() -> None:
    from alexnet_deploy.calibration.budget import score
    from alexnet_deploy.calibration.report import Accuracy

    lucky = Accuracy(top1=61.0, agreement=97.0, flips=30, n_images=1000)
    faithful = Accuracy(top1=60.0, agreement=99.5, flips=5, n_images=1000)
    worse = Accuracy(top1=59.0, agreement=99.9, flips=1, n_images=1000)
    assert score(faithful, 60.0) > score(lucky, 60.0) > score(worse, 60.0)
    assert score(lucky) > score(faithful)          # without a reference, plain top-1 first
