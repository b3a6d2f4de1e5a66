"""verify: passes a good bundle on ONNX Runtime, and fails on each kind of damage it must catch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.deploy.bundle.archive import pack_bundle
from alexnet_deploy.deploy.evaluate.compare import Threshold, cosine_rows
from alexnet_deploy.deploy.precision import PRECISIONS
from alexnet_deploy.deploy.evaluate.verify import (FAIL, PASS, SKIP, judge_logits,
                                          verify_bundle)
from device_helpers import edit_manifest, replace_artifact, tiny_bundle, tiny_onnx


def _rows(report, check: str) -> list:
    return [c for c in report.checks if c.check == check]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path, raw_images=True)


def test_good_bundle_passes_on_ort(bundle: Path) -> None:
    report = verify_bundle(bundle, backends=("ort",))
    assert report.ok, [c for c in report.checks if c.status != PASS]
    golden = _rows(report, "golden")
    assert [g.target.split()[1] for g in golden] == ["fp32", "fp16"]
    assert all(g.status == PASS and g.agreement == 1.0 for g in golden)
    assert golden[0].cosine > 0.99999 and golden[0].max_abs_diff < 1e-4
    assert _rows(report, "preprocessing")[0].status == PASS
    assert _rows(report, "model metadata")[0].status == PASS
    assert {c.target for c in _rows(report, "sha256")} == {"model.onnx", "model.fp16.onnx", "reference.npz"}


def test_corrupted_artifact_fails_naming_it(bundle: Path) -> None:
    data = bytearray((bundle / "model.fp16.onnx").read_bytes())
    data[-10] ^= 0x55
    (bundle / "model.fp16.onnx").write_bytes(bytes(data))
    report = verify_bundle(bundle, backends=("ort",))
    assert not report.ok
    failed = {(c.check, c.target) for c in report.checks if c.status == FAIL}
    assert ("sha256", "model.fp16.onnx") in failed
    assert any(c.check == "golden" and "fp16" in c.target and c.status == FAIL for c in report.checks)
    assert [c.status for c in _rows(report, "sha256") if c.target == "model.onnx"] == [PASS]


@pytest.mark.parametrize("edit, expect", [
    (lambda d: d.update(classes=list(reversed(d["classes"]))), "classes differ"),
    (lambda d: d["preprocess"].update(mean=[0.485, 0.456, 0.406]), "preprocess mean differ"),
    (lambda d: d["preprocess"].update(resize=40), "preprocess resize differ"),
    (lambda d: d["input"].update(name="images"), "input name"),
])
def test_tampered_manifest_fails(bundle: Path, edit, expect: str) -> None:
    edit_manifest(bundle, edit)
    report = verify_bundle(bundle, backends=("ort",))
    assert not report.ok
    meta = _rows(report, "model metadata")[0]
    assert meta.status == FAIL and expect in meta.detail


def test_tampered_checksum_and_schema(bundle: Path) -> None:
    edit_manifest(bundle, lambda d: d["artifacts"][0].update(sha256="0" * 64))
    report = verify_bundle(bundle, backends=("ort",))
    assert [c.target for c in report.checks if c.status == FAIL and c.check == "sha256"] == ["model.onnx"]
    edit_manifest(bundle, lambda d: d.update(schema=2))
    report = verify_bundle(bundle, backends=("ort",))
    assert not report.ok and report.checks[0].status == FAIL and "schema 2" in report.checks[0].detail


def test_wrong_preprocessing_caught_from_raw_images_without_metadata(tmp_path: Path) -> None:
    """A model without metadata: only the golden raw images can reveal a changed mean/std."""
    bundle = tiny_bundle(tmp_path, raw_images=True, metadata=False, fp16=False)
    assert verify_bundle(bundle, backends=("ort",)).ok
    edit_manifest(bundle, lambda d: d["preprocess"].update(std=[0.229, 0.224, 0.225]))
    report = verify_bundle(bundle, backends=("ort",))
    pre = _rows(report, "preprocessing")[0]
    assert not report.ok and pre.status == FAIL and "different inputs" in pre.detail


def test_broken_fp16_model_fails_golden(bundle: Path, tmp_path: Path) -> None:
    """A consistent bundle (checksums right) whose fp16 model computes something else."""
    other = tiny_onnx(tmp_path / "other.onnx", classes=3, size=32, seed=7)
    replace_artifact(bundle, "model.fp16.onnx", other)
    report = verify_bundle(bundle, backends=("ort",))
    fp16 = [g for g in _rows(report, "golden") if "fp16" in g.target][0]
    assert not report.ok and fp16.status == FAIL and fp16.cosine < PRECISIONS["fp16"].golden.min_cosine
    assert all(c.status == PASS for c in _rows(report, "sha256"))


def test_explicit_backend_that_cannot_run_fails_default_skips(bundle: Path) -> None:
    report = verify_bundle(bundle, backends=("trt",), precisions=("fp32",))
    assert not report.ok and _rows(report, "golden")[0].status == FAIL
    report = verify_bundle(bundle, backends=("trt",))
    assert not report.ok and {g.status for g in _rows(report, "golden")} == {SKIP}


def test_pickled_reference_refused(bundle: Path) -> None:
    from device_helpers import replace_artifact as _replace

    evil = bundle.parent / "evil.npz"
    np.savez(evil, inputs=np.array([object()], dtype=object), logits=np.zeros((1, 3), np.float32))
    _replace(bundle, "reference.npz", evil, kind="npz", precision="fp32")
    report = verify_bundle(bundle, backends=("ort",))
    failed = [c for c in report.checks if c.status == FAIL]
    assert not report.ok and failed and "pickle" in failed[-1].detail


def test_verify_a_packed_archive(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALEXNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    report = verify_bundle(archive, backends=("ort",), precisions=("fp32",))
    assert report.ok and report.checks[0].check == "archive"
    assert str(report.bundle).startswith(str(tmp_path / "cache"))


def test_judge_logits_thresholds() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 5)).astype(np.float32)
    assert judge_logits(ref, ref + 1e-6, PRECISIONS["fp32"].golden, "x").status == PASS
    noisy = ref + rng.normal(scale=0.3, size=ref.shape).astype(np.float32)
    check = judge_logits(ref, noisy, Threshold(0.99, 0.9999), "x")
    assert check.status == FAIL and check.cosine < 0.9999
    assert np.allclose(cosine_rows(ref, 2 * ref), 1.0)
    assert cosine_rows(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 1.0


def test_metadata_read_from_the_wire_matches_onnx(bundle: Path) -> None:
    import onnx

    from alexnet_deploy.deploy.onnx.facts import onnx_metadata_props

    for name in ("model.onnx", "model.fp16.onnx"):
        expected = {p.key: p.value for p in onnx.load(str(bundle / name)).metadata_props}
        assert onnx_metadata_props(bundle / name) == expected and "preprocess" in expected
    (bundle / "junk.onnx").write_bytes(b"\xff" * 20)
    with pytest.raises(ValueError):
        onnx_metadata_props(bundle / "junk.onnx")


def test_every_onnx_model_is_checked_against_the_manifest(bundle: Path) -> None:
    report = verify_bundle(bundle, backends=("ort",))
    meta = _rows(report, "model metadata")
    assert [(m.target, m.status) for m in meta] == [("model.onnx", PASS), ("model.fp16.onnx", PASS)]
    assert "I/O names and shapes" in meta[0].detail and "I/O" not in meta[1].detail
