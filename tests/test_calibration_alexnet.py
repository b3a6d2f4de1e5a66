"""The AlexNet-2012 graph (LRN, adaptive pooling, three FC layers; at the pipeline width) through
export and calibration: every weighted layer runs as an int8 kernel on ORT CPU and the model passes the
TensorRT Q/DQ checker. Random weights, generated images: this proves the plumbing, not accuracy
(benchmarks/int8_accuracy.py measures accuracy on a trained model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PIPELINE_WIDTH, write_image_folder

from alexnet_deploy.calibration import calibrate_bundle, check_qdq
from alexnet_deploy.deploy.bundle import read_manifest, verify_artifacts


@pytest.mark.slow
def test_alexnet2012_export_then_calibrate(tmp_path: Path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from alexnet_deploy.alexnet.checkpoint import save_checkpoint
    from alexnet_deploy.alexnet.model import build_model
    from alexnet_deploy.deploy.preprocess import PreprocessSpec
    from alexnet_deploy.export.pipeline import export_bundle

    monkeypatch.setenv("ALEXNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    images = write_image_folder(tmp_path / "images", classes=3, per_class=16, size=64)
    torch.manual_seed(0)   # the calibration results asserted below are this model's
    model = build_model("alexnet2012", 3, width=PIPELINE_WIDTH)
    ckpt = save_checkpoint(tmp_path / "rand.pt", model=model, arch="alexnet2012",
                           classes=["class_0", "class_1", "class_2"], preprocess=PreprocessSpec.for_image_size(64),
                           config={}, epoch=0, metrics={})
    bundle = tmp_path / "bundle"
    export_bundle(ckpt, bundle, engines=False, verify_data=images, verify_count=8)
    report = calibrate_bundle(bundle, calib_dir=images, num_images=24, method="auto", batch_size=8)
    assert check_qdq(bundle / "model.int8.onnx") == []
    assert report.int8_kernels.get("QLinearConv") == 5
    assert report.int8_kernels.get("QGemm", 0) >= 2
    assert len({tuple(sorted(r.thresholds.items())) for r in report.methods}) == 3, "methods must differ"
    verify_artifacts(bundle, read_manifest(bundle))
