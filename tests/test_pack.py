"""Packed bundles: round trip, and every kind of hostile archive refused before anything is written."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from alexnet_deploy.deploy.bundle import read_manifest, safe_path, verify_artifacts
from alexnet_deploy.deploy.bundle.files import sha256_file
from alexnet_deploy.deploy.bundle.archive import open_bundle, pack_bundle, unpack_bundle
from alexnet_deploy.errors import BundleError
from device_helpers import tiny_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path / "src", fp16=False)


def _hostile(path: Path, bundle: Path, extra: list[tarfile.TarInfo], payloads: dict[str, bytes] | None = None) -> Path:
    """A real packed bundle plus extra (hostile) members."""
    payloads = payloads or {}
    with tarfile.open(path, "w:gz") as tar:
        for rel in ["manifest.json"] + [a.file for a in read_manifest(bundle).artifacts]:
            tar.add(bundle / rel, arcname=rel)
        for info in extra:
            data = payloads.get(info.name, b"")
            if info.isreg():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def test_round_trip_is_checked_and_deterministic(bundle: Path, tmp_path: Path) -> None:
    first = pack_bundle(bundle, tmp_path / "a.tar.gz")
    second = pack_bundle(bundle, tmp_path / "b.tar.gz")
    assert first.sha256 == second.sha256, "same bundle must give the same archive"
    assert set(first.files) == {"manifest.json", "model.onnx", "reference.npz"}
    out = unpack_bundle(first.path, tmp_path / "elsewhere" / "bundle")
    assert len(verify_artifacts(out)) == 2
    for rel in ("model.onnx", "reference.npz"):
        assert sha256_file(out / rel) == sha256_file(bundle / rel)
    assert read_manifest(out) == read_manifest(bundle)


def test_pack_refuses_a_corrupted_bundle(bundle: Path, tmp_path: Path) -> None:
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="model.onnx: sha256 mismatch"):
        pack_bundle(bundle, tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def test_tampered_member_is_refused_by_name(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "a.tar").path
    data = bytearray(archive.read_bytes())
    ref = (bundle / "reference.npz").read_bytes()
    at = data.find(ref[:64])
    data[at + 200] ^= 0xFF   # flip a byte inside reference.npz, same size
    archive.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="reference.npz: sha256 mismatch"):
        unpack_bundle(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")], "temporary dir left behind"


@pytest.mark.parametrize("member, message", [
    (_member("../evil.txt"), "escapes"),
    (_member("/etc/evil.txt"), "escapes"),
    (_member("sub/../../evil.txt"), "escapes"),
    (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "symlink"),
    (_member("engines", tarfile.SYMTYPE, "../.."), "symlink"),
    (_member("hard", tarfile.LNKTYPE, "model.onnx"), "hard link"),
    (_member("dev", tarfile.CHRTYPE), "device"),
    (_member("fifo", tarfile.FIFOTYPE), "FIFO"),
])
def test_hostile_members_refused_before_extraction(bundle: Path, tmp_path: Path, member, message) -> None:
    archive = _hostile(tmp_path / "h.tar.gz", bundle, [member])
    with pytest.raises(BundleError, match=message):
        unpack_bundle(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def test_duplicate_member_refused(bundle: Path, tmp_path: Path) -> None:
    archive = _hostile(tmp_path / "d.tar.gz", bundle, [_member("model.onnx")], {"model.onnx": b"other"})
    with pytest.raises(BundleError, match="appears twice"):
        unpack_bundle(archive, tmp_path / "out")


def test_size_limit_checked_from_headers(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "a.tar.gz").path
    total = sum(a.bytes for a in read_manifest(bundle).artifacts)
    with pytest.raises(BundleError, match="limit"):
        unpack_bundle(archive, tmp_path / "out", max_bytes=total // 2)
    with pytest.raises(BundleError, match="more than 2 members"):
        unpack_bundle(archive, tmp_path / "out", max_members=2)
    assert not (tmp_path / "out").exists()


def _rewrite_manifest(bundle: Path, tmp_path: Path, edit) -> Path:
    data = json.loads((bundle / "manifest.json").read_text())
    edit(data)
    (bundle / "manifest.json").write_text(json.dumps(data))
    path = tmp_path / "m.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(bundle / "manifest.json", arcname="manifest.json")
        tar.add(bundle / "model.onnx", arcname="model.onnx")
        tar.add(bundle / "reference.npz", arcname="reference.npz")
    return path


def test_unknown_schema_refused(bundle: Path, tmp_path: Path) -> None:
    archive = _rewrite_manifest(bundle, tmp_path, lambda d: d.update(schema=99))
    with pytest.raises(BundleError, match="schema 99 is not supported"):
        unpack_bundle(archive, tmp_path / "out")


def test_manifest_path_escaping_refused(bundle: Path, tmp_path: Path) -> None:
    archive = _rewrite_manifest(bundle, tmp_path, lambda d: d["artifacts"][0].update(file="../model.onnx"))
    with pytest.raises(BundleError, match="escapes the bundle"):
        unpack_bundle(archive, tmp_path / "out")


def test_manifest_size_mismatch_refused(bundle: Path, tmp_path: Path) -> None:
    archive = _rewrite_manifest(bundle, tmp_path, lambda d: d["artifacts"][0].update(bytes=1))
    with pytest.raises(BundleError, match="model.onnx is .* bytes, the manifest says 1"):
        unpack_bundle(archive, tmp_path / "out")


def test_symlink_out_of_a_bundle_directory_refused(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((bundle / "model.onnx").read_bytes())
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        safe_path(bundle, "model.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        pack_bundle(bundle, tmp_path / "x.tar.gz")


def test_unlisted_files_are_not_extracted(bundle: Path, tmp_path: Path) -> None:
    archive = _hostile(tmp_path / "u.tar.gz", bundle, [_member("notes/evil.py")], {"notes/evil.py": b"print(1)"})
    out = unpack_bundle(archive, tmp_path / "out")
    assert not (out / "notes").exists()


def test_unpack_refuses_to_replace_non_bundle(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "a.tar.gz").path
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("x")
    with pytest.raises(BundleError, match="already exists"):
        unpack_bundle(archive, tmp_path / "home")
    with pytest.raises(BundleError, match="not a bundle"):
        unpack_bundle(archive, tmp_path / "home", overwrite=True)
    assert (tmp_path / "home" / "precious.txt").exists()


def test_open_bundle_caches_by_archive_digest(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "a.tgz").path
    cache = tmp_path / "cache"
    first = open_bundle(archive, cache_dir=cache)
    assert open_bundle(archive, cache_dir=cache) == first
    assert first.parent == cache and (first / "model.onnx").is_file()
    (first / "model.onnx").write_bytes(b"edited in the cache")
    assert open_bundle(archive, cache_dir=cache) == first, "a corrupted cache entry is extracted again"
    assert verify_artifacts(first)
    assert open_bundle(bundle) == bundle


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not gzip at all")
    with pytest.raises(BundleError, match="junk.tar.gz: (not a readable bundle archive|the archive ends)"):
        unpack_bundle(junk, tmp_path / "out")
    with pytest.raises(BundleError, match="not found"):
        unpack_bundle(tmp_path / "missing.tar.gz", tmp_path / "out")


def test_bench_and_load_open_a_packed_bundle_like_a_directory(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from alexnet_deploy.deploy import load
    from alexnet_deploy.deploy.bundle import Bundle
    from alexnet_deploy.deploy.evaluate.bench import BenchConfig, run_bench

    monkeypatch.setenv("ALEXNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    opened = Bundle.open(archive)
    assert opened.path.parent == tmp_path / "cache" / "bundles" and opened.manifest == read_manifest(bundle)
    report = run_bench(archive, BenchConfig(backends=("ort",), precisions=("fp32",), batches=(1,), warmup_s=0.01,
                                            min_iters=2, min_time_s=0.01))
    assert [r.status for r in report.rows] == ["ok"] and report.rows[0].agreement == 1.0
    with load(opened) as model:
        assert model.bundle == opened.path
    from alexnet_deploy.deploy.evaluate.verify import verify_bundle

    assert verify_bundle(opened, backends=("ort",)).ok
    with pytest.raises(BundleError, match="not found"):
        Bundle.open(tmp_path / "missing")
