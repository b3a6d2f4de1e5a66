"""Bundles that cannot run with the wrong labels or preprocessing, manifests that fail with a message
instead of a crash, and unpack/pack that never destroy what was there.

All on the tiny real ONNX bundles of device_helpers (milliseconds to build), through the real CLI or
the public API; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.deploy import load, preprocess
from alexnet_deploy.deploy.bundle import read_manifest
from alexnet_deploy.deploy.bundle.archive import pack_bundle, unpack_bundle
from alexnet_deploy.errors import AlexNetDeployError, BundleError
from device_helpers import edit_manifest, tiny_bundle
from robustness_helpers import one_error_line, run_cli


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path, fp16=False)


def _image(bundle: Path) -> Path:
    return next((bundle.parent / "images" / "class_0").iterdir())


# ---- an edited manifest is refused before anything runs -----------------------------------------

EDITS = [
    pytest.param(lambda d: d.update(classes=list(reversed(d["classes"]))), "classes differ", id="swapped-classes"),
    pytest.param(lambda d: d["preprocess"].update(mean=[0.485, 0.456, 0.406]), "preprocess mean", id="mean"),
    pytest.param(lambda d: d["preprocess"].update(std=[0.2, 0.2, 0.2]), "preprocess std", id="std"),
]


@pytest.mark.parametrize("edit, expect", EDITS)
def test_edited_manifest_refused_by_load_classify(bundle: Path, edit, expect: str) -> None:
    with load(bundle, backend="ort") as model:
        before = model.classify(_image(bundle))[0].label
    edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=expect) as caught:
        load(bundle, backend="ort")
    assert "manifest.json does not match model.onnx" in str(caught.value) and before


@pytest.mark.parametrize("edit, expect", EDITS)
def test_edited_manifest_fails_predict_and_bench(bundle: Path, edit, expect: str) -> None:
    edit_manifest(bundle, edit)
    for args in (("predict", bundle, _image(bundle), "--backend", "ort"),
                 ("bench", bundle, "--backend", "ort", "--precision", "fp32", "--min-iters", "1",
                  "--min-time-s", "0", "--warmup-s", "0")):
        result = run_cli(*args)
        assert result.exit_code == 1, result.output
        assert expect in one_error_line(result)


def test_non_onnx_model_with_a_valid_sha_is_named(bundle: Path) -> None:
    from device_helpers import replace_artifact

    junk = bundle.parent / "junk.bin"
    junk.write_bytes(b"\xff\xff\xff\xff not a protobuf at all")
    replace_artifact(bundle, "model.onnx", junk, precision="fp32")
    result = run_cli("predict", bundle, _image(bundle), "--backend", "ort")
    assert result.exit_code == 1
    assert "model.onnx: not a readable ONNX model" in one_error_line(result)


# ---- malformed manifests: a message, not a crash ------------------------------------------------

def test_max_batch_zero_is_named(bundle: Path) -> None:
    edit_manifest(bundle, lambda d: d.update(max_batch=0))
    with pytest.raises(BundleError, match="max_batch 0: expected an integer >= 1"):
        read_manifest(bundle)
    result = run_cli("predict", bundle, _image(bundle))
    assert result.exit_code == 1 and "max_batch 0" in one_error_line(result)


def test_deeply_nested_manifest_is_refused_not_a_recursion_error(bundle: Path, tmp_path: Path) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    (bundle / "manifest.json").write_text(deep)
    with pytest.raises(BundleError, match="nested too deeply"):
        read_manifest(bundle)
    result = run_cli("verify", bundle)
    assert result.exit_code == 1 and "RecursionError" not in result.output + result.stderr


def test_deeply_nested_manifest_in_an_archive_is_refused(bundle: Path, tmp_path: Path) -> None:
    import io
    import tarfile

    archive = tmp_path / "deep.tar.gz"
    data = ("{\"a\": " * 100_000 + "1" + "}" * 100_000).encode()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    result = run_cli("unpack", archive, tmp_path / "out")
    assert result.exit_code == 1 and "nested too deeply" in one_error_line(result)


# ---- unpack never empties what was there --------------------------------------------------------

def test_unpack_dot_overwrite_inside_the_bundle_folder(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    target = tmp_path / "deployed"
    unpack_bundle(archive, target)
    (target / "notes.txt").write_text("left by the operator")
    monkeypatch.chdir(target)
    result = run_cli("unpack", archive, ".", "--overwrite")
    assert result.exit_code == 0, result.output + result.stderr
    monkeypatch.chdir(tmp_path)
    assert (target / "manifest.json").is_file() and (target / "model.onnx").is_file()
    assert run_cli("verify", target, "--backend", "ort").exit_code == 0
    assert f"cd {target}" in result.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".deployed.")]   # no leftovers


def test_failed_unpack_over_a_bundle_leaves_it_intact(bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "deployed"
    unpack_bundle(pack_bundle(bundle, tmp_path / "b.tar.gz").path, target)
    before = sorted(p.name for p in target.iterdir())
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes((tmp_path / "b.tar.gz").read_bytes()[:300])
    with pytest.raises(BundleError):
        unpack_bundle(broken, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == before


def test_unpacked_bundle_is_readable_by_others(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    previous = os.umask(0o022)
    try:
        target = unpack_bundle(archive, tmp_path / "deployed")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


# ---- pack does not overwrite silently -----------------------------------------------------------

def test_pack_refuses_an_existing_file_without_overwrite(bundle: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.tar.gz"
    precious.write_bytes(b"someone else's archive")
    result = run_cli("pack", bundle, "-o", precious)
    assert result.exit_code == 1 and "already exists" in one_error_line(result) and "--overwrite" in result.stderr
    assert precious.read_bytes() == b"someone else's archive"
    assert run_cli("pack", bundle, "-o", precious, "--overwrite").exit_code == 0
    assert precious.stat().st_size > 100


# ---- the public preprocess() takes the manifest's dict ------------------------------------------

def test_preprocess_accepts_the_manifest_mapping(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    from_dict = preprocess([_image(bundle)], manifest["preprocess"])
    from_spec = preprocess([_image(bundle)], read_manifest(bundle).preprocess)
    assert np.array_equal(from_dict, from_spec)
    with pytest.raises(AlexNetDeployError, match="PreprocessSpec or the manifest's preprocess mapping"):
        preprocess([_image(bundle)], "resize=36")
