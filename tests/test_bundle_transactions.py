"""The bundle as a transaction, tried the way a hostile user or a bad day would: real processes
killed with real SIGKILL/SIGTERM at spread-out moments, a real full file system (a small tmpfs),
a real mount point, a really swapped archive, real oversize headers, real malformed bundles."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.deploy.bundle import read_manifest, verify_artifacts
from alexnet_deploy.deploy.bundle import archive as archive_mod
from alexnet_deploy.deploy.bundle.archive import open_bundle, pack_bundle, unpack_bundle
from alexnet_deploy.deploy.bundle.npz import load_npz
from alexnet_deploy.deploy.bundle.files import sha256_file
from alexnet_deploy.errors import BundleError
from device_helpers import edit_manifest, tiny_bundle


def _cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "alexnet_deploy", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _debris(parent: Path) -> list[str]:
    """Anything a transaction may leave beside a bundle: staging copies, moved-aside copies, locks."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and
                  p.name.endswith((".staging", ".old", ".partial", ".lock")))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path, fp16=False)


# ---- 1 and 6: a folder that is not a bundle is never replaced ----------------------------------

def test_unpack_never_replaces_a_folder_whose_manifest_is_not_a_bundles(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    project = tmp_path / "proj"
    project.mkdir()
    (project / "manifest.json").write_text(json.dumps({"name": "my web app", "icons": []}))
    (project / "index.html").write_text("<html>mine</html>")
    before = _digests(project)
    result = _cli("unpack", str(archive), str(project), "--overwrite")
    assert result.returncode == 1 and "is not a bundle" in result.stderr and "Traceback" not in result.stderr
    assert _digests(project) == before and _debris(tmp_path) == []


def test_export_refuses_a_folder_with_a_foreign_manifest(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "manifest.json").write_text('{"name": "my web app"}')
    result = _cli("export", str(tmp_path / "never-read.pt"), "--out", str(project))
    assert result.returncode == 1 and "is not a bundle" in result.stderr
    assert (project / "manifest.json").read_text() == '{"name": "my web app"}'


# ---- 2: the archive cache cannot be poisoned ----------------------------------------------------

def _other_bundle(tmp_path: Path) -> Path:
    other = tiny_bundle(tmp_path / "other", classes=4, fp16=False)
    return pack_bundle(other, tmp_path / "other.tar.gz").path


def test_an_archive_rewritten_between_hash_and_extraction_is_refused(bundle: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    genuine = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    other_bytes = _other_bundle(tmp_path).read_bytes()
    real_hash = archive_mod._sha256_of

    def hash_then_rewrite(fh):   # the attacker's write lands right after the hash: the race window
        key = real_hash(fh)
        with open(genuine, "r+b") as victim:
            victim.write(other_bytes)
        return key

    monkeypatch.setattr(archive_mod, "_sha256_of", hash_then_rewrite)
    with pytest.raises(BundleError, match="changed while it was being read"):
        open_bundle(genuine, cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]


def test_an_archive_renamed_over_after_opening_extracts_what_was_hashed(bundle: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    genuine = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    key = sha256_file(genuine)
    other = _other_bundle(tmp_path)
    real_hash = archive_mod._sha256_of

    def hash_then_swap(fh):
        digest = real_hash(fh)
        os.replace(other, genuine)   # the path now names another model; the open file does not
        return digest

    monkeypatch.setattr(archive_mod, "_sha256_of", hash_then_swap)
    opened = open_bundle(genuine, cache_dir=tmp_path / "cache")
    assert opened.name == key[:20] and read_manifest(opened).classes == read_manifest(bundle).classes


def test_a_corrupted_cache_entry_is_extracted_again(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    entry = open_bundle(archive, cache_dir=tmp_path / "cache")
    (entry / "model.onnx").write_bytes(b"corrupted")
    again = open_bundle(archive, cache_dir=tmp_path / "cache")
    assert again == entry and verify_artifacts(again)


# ---- 3: interrupted changes leave the old bundle, and nothing that blocks the retry -------------

def _calibrate_cmd(bundle: Path) -> list[str]:
    return [sys.executable, "-m", "alexnet_deploy", "calibrate", str(bundle), "--calib", str(bundle.parent / "images"),
            "--num-images", "3", "--num-val", "3", "--method", "minmax"]


def _run_and_kill(cmd: list[str], after: float, sig: int) -> int:
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "ALEXNET_DEPLOY_CACHE": os.environ.get("ALEXNET_DEPLOY_CACHE", "")})
    time.sleep(after)
    if child.poll() is None:
        child.send_signal(sig)
    child.wait(timeout=120)
    return child.returncode


def _old_or_new(bundle: Path, old: dict[str, str]) -> str:
    """'old' when the bundle is byte for byte the one before, 'new' when it is a complete calibrated one."""
    if _digests(bundle) == old:
        return "old"
    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest)
    assert manifest.artifact("int8") is not None
    return "new"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_calibrate_leaves_the_old_bundle_or_the_new_one(bundle: Path, tmp_path: Path, sig: int,
                                                                monkeypatch) -> None:
    monkeypatch.setenv("ALEXNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    start = time.monotonic()
    assert subprocess.run(_calibrate_cmd(bundle), capture_output=True, timeout=300).returncode == 0
    duration = time.monotonic() - start
    calibrated = _digests(bundle)
    # Back to an uncalibrated bundle, then kill calibrations at moments spread over a whole run.
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tests');"
                    "from device_helpers import tiny_bundle; import shutil, pathlib;"
                    f"shutil.rmtree({str(bundle)!r}); shutil.rmtree({str(tmp_path / 'images')!r});"
                    f"tiny_bundle(pathlib.Path({str(tmp_path)!r}), fp16=False)"], check=True, cwd=Path(__file__).parent.parent)
    old = _digests(bundle)
    seen = []
    for fraction in (0.15, 0.35, 0.55, 0.75, 0.9, 1.0):
        code = _run_and_kill(_calibrate_cmd(bundle), duration * fraction, sig)
        state = _old_or_new(bundle, old)
        seen.append((fraction, code, state))
        if sig == signal.SIGTERM:   # handled like Ctrl-C: cleans up at once, exit 143
            # (-15: the signal came before the CLI had even installed its handler, i.e. before any work)
            assert code in (0, 143, -signal.SIGTERM) and _debris(tmp_path) == [], seen
        if state == "new":
            break
    retry = subprocess.run(_calibrate_cmd(bundle), capture_output=True, text=True, timeout=300)
    assert retry.returncode == 0, retry.stderr
    assert _old_or_new(bundle, old) == "new" and _debris(tmp_path) == []
    assert {k: v for k, v in _digests(bundle).items() if k != "calibration_report.json"} == \
        {k: v for k, v in calibrated.items() if k != "calibration_report.json"}
    print(f"calibrate kills ({signal.Signals(sig).name}; fraction of a run, exit code, bundle):", seen)
    assert any(state == "old" for _, _, state in seen), f"no kill landed before the commit: {seen}"


# ---- 3 and full disks: a real full file system --------------------------------------------------

# A real full file system: the size of the tmpfs that conftest's small_tmpfs mounts.
TMPFS_SIZE = "4m"


def test_calibrate_on_a_full_disk_keeps_the_old_bundle(tmp_path: Path, small_tmpfs: Path) -> None:
    bundle = tiny_bundle(small_tmpfs, fp16=False)
    old = _digests(bundle)
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as fh:   # leave a few kB: enough for nothing the calibration writes
        free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
        fh.write(b"\0" * max(0, free - 8192))
    result = _cli(*_calibrate_cmd(bundle)[3:], env={"ALEXNET_DEPLOY_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1 and "disk is full" in result.stderr and "unexpected" not in result.stderr
    assert _digests(bundle) == old and _debris(small_tmpfs) == []
    filler.unlink()
    retry = _cli(*_calibrate_cmd(bundle)[3:], env={"ALEXNET_DEPLOY_CACHE": str(tmp_path / "cache")})
    assert retry.returncode == 0, retry.stderr
    assert read_manifest(bundle).artifact("int8") is not None


# ---- 4: no command writes its report over a bundle file -----------------------------------------

@pytest.mark.parametrize("args", [
    ("calibrate", "{b}", "--calib", "{b}/../images", "--report", "{b}/model.onnx"),
    ("verify", "{b}", "--json", "{b}/manifest.json"),
    ("bench", "{b}", "--json", "{b}/model.onnx", "--batch", "1"),
    ("pack", "{b}", "-o", "{b}/self.tar.gz"),
], ids=["calibrate", "verify", "bench", "pack"])
def test_outputs_inside_the_bundle_are_refused(bundle: Path, args) -> None:
    before = _digests(bundle)
    result = _cli(*(a.format(b=bundle) for a in args))
    assert result.returncode == 1 and "is inside the bundle" in result.stderr, result.stderr
    assert _digests(bundle) == before


# ---- 5: unpack over itself, onto a mount point, after a killed unpack ---------------------------

def test_unpack_over_the_bundle_it_sits_in_keeps_the_archive(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "new.tar.gz").path
    os.replace(archive, bundle / "new.tar.gz")
    result = _cli("unpack", "new.tar.gz", ".", "--overwrite", cwd=bundle)
    assert result.returncode == 0, result.stderr
    assert (bundle / "new.tar.gz").is_file() and verify_artifacts(bundle) and _debris(tmp_path) == []


def test_unpack_onto_a_mount_point_is_refused_cleanly(bundle: Path, tmp_path: Path, small_tmpfs: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    assert unpack_bundle(archive, small_tmpfs / "bundle") == small_tmpfs / "bundle"   # inside it: fine
    result = _cli("unpack", str(archive), str(small_tmpfs), "--overwrite")
    assert result.returncode == 1 and "mount point" in result.stderr and "unexpected" not in result.stderr
    assert _debris(tmp_path) == [] and _debris(small_tmpfs) == []


def test_a_killed_unpack_leaves_nothing_that_blocks_the_next(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    dest = tmp_path / "dest"
    # A staging directory as a SIGKILLed unpack leaves it (its lock died with it).
    (tmp_path / ".dest.x1y2.staging").mkdir()
    (tmp_path / ".dest.x1y2.staging" / "model.onnx").write_bytes(b"half")
    (tmp_path / ".dest.lock").write_text("999999\n")
    assert _cli("unpack", str(archive), str(dest)).returncode == 0
    assert verify_artifacts(dest) and _debris(tmp_path) == []


# ---- 7: sizes are bounded before anything is read ------------------------------------------------

def _pax_bomb(path: Path, declared: int) -> Path:
    """A gzip whose first member is a pax header declaring ``declared`` bytes of records (zeros)."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, declared
    with gzip.open(path, "wb", compresslevel=9) as gz:
        gz.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        block = bytes(1 << 20)
        for _ in range(declared >> 20):
            gz.write(block)
    return path


def test_a_pax_header_declaring_gigabytes_is_refused_without_reading_it(tmp_path: Path) -> None:
    bomb = _pax_bomb(tmp_path / "bomb.tar.gz", 256 << 20)
    assert bomb.stat().st_size < 1 << 20
    # VmHWM, not getrusage's ru_maxrss: that one survives execve and would report pytest's own peak.
    probe = ("import sys; from alexnet_deploy.deploy.bundle.archive import unpack_bundle\n"
             "try:\n    unpack_bundle(sys.argv[1], sys.argv[2])\nexcept Exception as e:\n    print(e)\n"
             "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    done = subprocess.run([sys.executable, "-c", probe, str(bomb), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    out = done.stdout.splitlines()
    assert out and "pax header declares" in out[0], done.stdout + done.stderr
    assert int(out[-1]) < 200_000, f"peak RSS {out[-1]} kB"   # the declared 256 MiB never reached memory


def test_malformed_pax_records_are_refused_in_linear_time(tmp_path: Path) -> None:
    from alexnet_deploy.deploy.bundle.tarstream import parse_pax

    started = time.monotonic()
    with pytest.raises(BundleError, match="malformed pax"):
        parse_pax(b"1" * 30000 + b" " * 30000 + b"=x\n", "crafted")
    with pytest.raises(BundleError, match="malformed pax"):
        parse_pax(b"99 path=short\n", "crafted")
    assert time.monotonic() - started < 1.0
    assert parse_pax(b"13 path=abcd\n", "ok") == {"path": "abcd"}


def test_npz_members_are_bounded_by_their_declared_sizes(tmp_path: Path) -> None:
    big = tmp_path / "big.npz"
    np.savez_compressed(big, inputs=np.zeros((64 << 20) // 4, np.float32))   # 64 MiB of zeros, ~65 kB on disk
    assert big.stat().st_size < 1 << 20
    with pytest.raises(BundleError, match="declares"):
        load_npz(big, max_bytes=16 << 20)
    lying = tmp_path / "lying.npz"   # the header claims 2 GiB, the member stores a few bytes
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 29,)})
    with zipfile.ZipFile(lying, "w") as zf:
        zf.writestr("inputs.npy", b"\x93NUMPY" + header.getvalue()[6:] + bytes(64))
    with pytest.raises(BundleError, match="stores only"):
        load_npz(lying)


# ---- 8: malformed bundles are errors naming the file, never 'unexpected' -------------------------

def _rehash(bundle: Path, name: str) -> None:
    digest, size = sha256_file(bundle / name), (bundle / name).stat().st_size

    def edit(data):
        for artifact in data["artifacts"]:
            if artifact["file"] == name:
                artifact["sha256"], artifact["bytes"] = digest, size
    edit_manifest(bundle, edit)


@pytest.mark.parametrize("case", ["empty-onnx", "not-onnx", "infinity", "huge-int", "artifact-strings", "zero-rows"])
def test_malformed_bundles_give_one_clear_line(bundle: Path, case: str) -> None:
    manifest_path = bundle / "manifest.json"
    if case in ("empty-onnx", "not-onnx"):
        (bundle / "model.onnx").write_bytes(b"" if case == "empty-onnx" else b"this is not a protobuf \xff\xfe")
        _rehash(bundle, "model.onnx")
    elif case == "infinity":
        manifest_path.write_text(manifest_path.read_text().replace('"max_batch": 8', '"max_batch": Infinity'))
    elif case == "huge-int":
        manifest_path.write_text(manifest_path.read_text().replace('"max_batch": 8', '"max_batch": ' + "9" * 5000))
    elif case == "artifact-strings":
        edit_manifest(bundle, lambda data: data.update(artifacts=["model.onnx", "reference.npz"]))
    else:
        np.savez(bundle / "reference.npz", inputs=np.zeros((0, 3, 32, 32), np.float32),
                 logits=np.zeros((0, 3), np.float32))
        _rehash(bundle, "reference.npz")
    result = _cli("verify", str(bundle), "--backend", "ort")
    assert result.returncode == 1 and "Error: unexpected" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_cache_location_is_one_clear_line(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz").path
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = _cli("verify", str(archive), env={"ALEXNET_DEPLOY_CACHE": str(blocker / "cache")})
    assert result.returncode == 1 and "ALEXNET_DEPLOY_CACHE" in result.stdout + result.stderr
    result = _cli("calibrate", str(bundle), "--calib", str(tmp_path / "images"),
                  env={"ALEXNET_DEPLOY_CACHE_MAX_GIB": "nan", "ALEXNET_DEPLOY_CACHE": str(tmp_path / "c")})
    assert result.returncode == 1 and "ALEXNET_DEPLOY_CACHE_MAX_GIB='nan'" in result.stderr


# ---- 3, continued: real kills of unpack and export -------------------------------------------------

def _padded_archive(bundle: Path, path: Path, padding_mb: int) -> Path:
    """A packed bundle plus an unlisted member of zeros, so that extraction takes long enough to be
    interrupted at many moments (unlisted members are extracted, then dropped)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for rel in ["manifest.json"] + [a.file for a in read_manifest(bundle).artifacts]:
            tar.add(bundle / rel, arcname=rel)
        info = tarfile.TarInfo("zz-padding.bin")
        info.size = padding_mb << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_unpack_over_a_bundle_leaves_old_or_new(bundle: Path, tmp_path: Path, sig: int) -> None:
    other = tiny_bundle(tmp_path / "other", classes=4, fp16=False)
    archive = _padded_archive(other, tmp_path / "new.tar.gz", 128)
    dest = tmp_path / "dest"
    assert unpack_bundle(pack_bundle(bundle, tmp_path / "old.tar.gz").path, dest) == dest
    old = _digests(dest)
    cmd = [sys.executable, "-m", "alexnet_deploy", "unpack", str(archive), str(dest), "--overwrite"]
    start = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - start
    new = _digests(dest)
    assert new != old
    shutil.rmtree(dest)
    unpack_bundle(tmp_path / "old.tar.gz", dest)
    outcomes = []
    for fraction in (0.4, 0.7, 0.9):
        code = _run_and_kill(cmd, duration * fraction, sig)
        state = "old" if _digests(dest) == old else "new" if _digests(dest) == new else "MIXED"
        outcomes.append((fraction, code, state))
        assert state != "MIXED", outcomes
        if sig == signal.SIGTERM:
            assert _debris(tmp_path) == [], outcomes
        if state == "new":
            break
    print(f"unpack kills ({signal.Signals(sig).name}; fraction of a run, exit code, bundle):", outcomes)
    assert any(state == "old" for _, _, state in outcomes), outcomes
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert _digests(dest) == new and _debris(tmp_path) == []


def _checkpoint(path: Path, seed: int) -> Path:
    torch = pytest.importorskip("torch")
    from alexnet_deploy.alexnet.checkpoint import save_checkpoint
    from alexnet_deploy.alexnet.model import build_model
    from alexnet_deploy.deploy.preprocess import PreprocessSpec
    from conftest import PIPELINE_WIDTH

    torch.manual_seed(seed)
    model = build_model("alexnet2012", num_classes=3, width=PIPELINE_WIDTH)
    return save_checkpoint(path, model=model, arch="alexnet2012", classes=("class_0", "class_1", "class_2"),
                           preprocess=PreprocessSpec(resize=72, crop=64), config={}, epoch=0, metrics={})


@pytest.mark.slow
def test_killed_reexport_over_a_verified_bundle_leaves_old_or_new(tmp_path: Path) -> None:
    from conftest import write_image_folder

    calib = write_image_folder(tmp_path / "calib", classes=3, per_class=12, size=80)
    val = write_image_folder(tmp_path / "val", classes=3, per_class=4, size=80, seed=1)
    first, second = _checkpoint(tmp_path / "a.pt", 1), _checkpoint(tmp_path / "b.pt", 2)
    out = tmp_path / "bundle"

    def export(checkpoint: Path) -> list[str]:
        return [sys.executable, "-m", "alexnet_deploy", "export", str(checkpoint), "--out", str(out), "--fp16",
                "--int8", "--calib", str(calib), "--verify-data", str(val), "--no-engine", "--no-simplify", "--verify-count", "4"]

    env = {**os.environ, "ALEXNET_DEPLOY_CACHE": str(tmp_path / "cache")}

    def state() -> str:
        """Which export the bundle is, judged by its model files and its manifest together."""
        if not out.exists():
            return "none"
        manifest = read_manifest(out)
        verify_artifacts(out, manifest)   # the manifest always describes the files beside it
        models = {k: v for k, v in _digests(out).items() if k.endswith((".onnx", ".npz"))}
        source = manifest.provenance["checkpoint_sha256"]
        return ("old" if (models, source) == (old, sha256_file(first)) else
                "new" if (models, source) == (new, sha256_file(second)) else "MIXED")

    assert subprocess.run(export(first), capture_output=True, timeout=600, env=env).returncode == 0
    old = {k: v for k, v in _digests(out).items() if k.endswith((".onnx", ".npz"))}
    shutil.copytree(out, tmp_path / "old-bundle", symlinks=True)
    start = time.monotonic()
    assert subprocess.run(export(second), capture_output=True, timeout=600, env=env).returncode == 0
    duration = time.monotonic() - start
    new = {k: v for k, v in _digests(out).items() if k.endswith((".onnx", ".npz"))}
    os.replace(out, tmp_path / "new-bundle")
    os.replace(tmp_path / "old-bundle", out)   # the first export again, kept aside (same bytes as a re-run)
    assert state() == "old"
    outcomes = []
    for fraction, sig in ((0.3, signal.SIGKILL), (0.7, signal.SIGTERM), (0.95, signal.SIGKILL)):
        code = _run_and_kill(export(second), duration * fraction, sig)
        outcomes.append((fraction, signal.Signals(sig).name, code, state()))
        assert outcomes[-1][-1] in ("old", "new"), outcomes
        if outcomes[-1][-1] == "new":
            break
    print("export kills (fraction of a run, signal, exit code, bundle):", outcomes)
    assert any(s == "old" for *_, s in outcomes), outcomes
    retry = subprocess.run(export(second), capture_output=True, text=True, timeout=600, env=env)
    assert retry.returncode == 0, retry.stderr
    assert state() == "new" and _debris(tmp_path) == []
    verify = _cli("verify", str(out), "--backend", "ort")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_bytes_after_the_end_of_the_tar_are_part_of_the_hash(bundle: Path, tmp_path: Path) -> None:
    """The cache key covers the whole file: data appended after the tar's end (beyond what the reader
    buffers) is hashed by the extraction pass too, so the two passes agree."""
    archive = pack_bundle(bundle, tmp_path / "b.tar").path
    with open(archive, "ab") as fh:
        fh.write(os.urandom(3 << 20))
    opened = open_bundle(archive, cache_dir=tmp_path / "cache")
    assert opened.name == sha256_file(archive)[:20] and verify_artifacts(opened)


def test_a_transaction_carries_the_users_files_links_included(bundle: Path, tmp_path: Path) -> None:
    from alexnet_deploy.deploy.bundle import transaction

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "note.txt").write_text("mine")
    (bundle / "docs").symlink_to(tmp_path / "elsewhere")
    (bundle / "README.txt").write_text("about this model")
    with transaction(bundle, "BUNDLE") as staging:
        (staging.path / "extra.json").write_text("{}")
    assert (bundle / "docs").is_symlink() and (bundle / "docs" / "note.txt").read_text() == "mine"
    assert (bundle / "README.txt").read_text() == "about this model" and (bundle / "extra.json").is_file()
    assert verify_artifacts(bundle) and _debris(tmp_path) == []
