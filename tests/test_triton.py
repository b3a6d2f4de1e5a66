"""export-triton: the config parses with Triton's own protobuf schema and matches the bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] provides Triton's config schema")

from alexnet_deploy.deploy.bundle import make_artifact, read_manifest, write_manifest  # noqa: E402
from alexnet_deploy.deploy.bundle.files import sha256_file  # noqa: E402
from alexnet_deploy.errors import BundleError, ExportError  # noqa: E402
from alexnet_deploy.export.triton import export_triton  # noqa: E402
from device_helpers import tiny_bundle  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    """A written config.pbtxt parsed with Triton's own schema (an unknown field fails here)."""
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path, classes=4)


def test_onnxruntime_repository_matches_bundle(bundle: Path, tmp_path: Path) -> None:
    manifest = read_manifest(bundle)
    result = export_triton(bundle, tmp_path / "repo", precision="fp16", max_batch=16)
    assert result.model_dir == tmp_path / "repo" / "alexnet_fp16"
    assert sha256_file(result.model_file) == manifest.artifact("fp16").sha256
    assert result.model_file.relative_to(result.model_dir).as_posix() == "1/model.onnx"
    config = read_config(result.config_file)
    assert config.name == "alexnet_fp16" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert config.HasField("dynamic_batching") and max(config.dynamic_batching.preferred_batch_size) <= 16
    (inp,), (out,) = config.input, config.output
    assert inp.name == manifest.input.name and list(inp.dims) == list(manifest.input.shape[1:])
    assert out.name == manifest.output.name and list(out.dims) == [len(manifest.classes)]
    assert inp.data_type == out.data_type == model_config_pb2.TYPE_FP32
    assert out.label_filename == "labels.txt"
    labels = (result.model_dir / out.label_filename).read_text().splitlines()
    assert labels == list(manifest.classes)


def test_tensorrt_repository_needs_an_engine(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="build-engine"):
        export_triton(bundle, tmp_path / "repo", backend="tensorrt", precision="fp16")
    # A plan file recorded in the manifest (contents are irrelevant to the repository writer).
    (bundle / "engines").mkdir()
    (bundle / "engines" / "fp16-sm87-trt10.3.0.plan").write_bytes(b"plan bytes")
    manifest = read_manifest(bundle)
    write_manifest(bundle, manifest.with_artifact(make_artifact(bundle, "engines/fp16-sm87-trt10.3.0.plan",
                                                                "trt-plan", "fp16")))
    result = export_triton(bundle, tmp_path / "repo", backend="tensorrt", precision="fp16", model_name="anet")
    config = read_config(result.config_file)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == manifest.max_batch
    assert (result.model_dir / "1" / "model.plan").read_bytes() == b"plan bytes"
    with pytest.raises(ExportError, match="exceeds the engine profile"):
        export_triton(bundle, tmp_path / "repo", backend="tensorrt", precision="fp16", max_batch=1000)


def test_tampered_model_is_not_exported(bundle: Path, tmp_path: Path) -> None:
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="model.onnx: sha256 mismatch"):
        export_triton(bundle, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()

