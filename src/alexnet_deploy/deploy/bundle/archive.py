"""Packed bundles: one ``.tar.gz`` to copy to a device, opened without trusting it.

``pack_bundle`` checks every artifact's sha256, then writes the manifest and the files it lists
(engines only on request: a plan runs only on the GPU and TensorRT version that built it) as
plain regular-file members with fixed owners and times, so the same bundle gives the same archive.

``unpack_bundle`` / ``open_bundle`` open the archive once: they hash it (the cache key) and then
extract from the same open file, hashing again, so what is extracted is what was hashed (a file
swapped or rewritten meanwhile is refused). Extraction uses the bounded reader in tarstream.py,
never ``tarfile``, and refuses members that are not regular files or directories, absolute names,
``..``, duplicate names, more than ``max_members`` entries, sizes over ``max_bytes``, oversized pax
headers, a manifest with an unknown schema or an escaping path, and a listed artifact that is
missing or whose size or sha256 differs. Everything lands in a staging directory first and is
swapped in only once checked. Nothing is unpickled: the manifest is JSON and ``reference.npz`` is
read later with its sizes bounded and ``allow_pickle=False``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from alexnet_deploy.deploy.bundle import tarstream
from alexnet_deploy.deploy.bundle.manifest import (MANIFEST_NAME, Manifest, read_manifest, safe_path, sidecar_file,
                                                   verify_artifacts)
from alexnet_deploy.deploy.bundle.transaction import transaction
from alexnet_deploy.deploy.bundle.files import atomic_path, public_dir_mode, sha256_file
from alexnet_deploy.errors import BundleError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 << 30      # AlexNet fp32+fp16+int8 ONNX plus engines is well under 1 GiB
DEFAULT_MAX_MEMBERS = 256
GZIP_MAGIC = b"\x1f\x8b"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class PackResult:
    """What ``pack_bundle`` wrote."""

    path: Path
    files: tuple[str, ...]
    bytes: int
    sha256: str


def is_archive(path: str | os.PathLike) -> bool:
    """True when ``path`` names a file with a packed-bundle suffix."""
    name = Path(path).name.lower()
    return Path(path).is_file() and name.endswith(ARCHIVE_SUFFIXES)


def _packed_manifest(bundle: Path, include_engines: bool) -> tuple[Manifest, list[str]]:
    """The manifest to ship and the relative files to put beside it."""
    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest)   # never ship a bundle that is already corrupt
    if not include_engines:
        dropped = [a.file for a in manifest.artifacts if a.kind == "trt-plan"]
        if dropped:
            log.info("leaving out engines %s (rebuild them on the target with build-engine)", dropped)
        manifest = manifest.replace(artifacts=tuple(a for a in manifest.artifacts if a.kind != "trt-plan"))
    files = [a.file for a in manifest.artifacts]
    for artifact in manifest.artifacts:
        if artifact.kind == "trt-plan" and safe_path(bundle, sidecar_file(artifact.file)).is_file():
            files.append(sidecar_file(artifact.file))
    return manifest, files


def _regular_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed owner, mode and time: the archive depends only on the bundle's contents.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, 0, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_bundle(bundle: str | os.PathLike, out: str | os.PathLike, *, include_engines: bool = False,
                overwrite: bool = False) -> PackResult:
    """Write ``bundle`` (checked first) to the archive ``out`` (.tar.gz, .tgz or .tar); an existing
    ``out`` is replaced only with ``overwrite``."""
    bundle, out = Path(bundle), Path(out)
    if not out.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise BundleError(f"{out}: output name must end with one of {ARCHIVE_SUFFIXES}")
    if out.is_dir():
        raise BundleError(f"-o {out}: is a directory; name the archive file to write")
    if out.exists() and not overwrite:
        raise BundleError(f"-o {out}: already exists; choose another name or pass --overwrite to replace it")
    manifest, files = _packed_manifest(bundle, include_engines)
    manifest_bytes = (json.dumps(manifest.to_dict(), indent=2) + "\n").encode("utf-8")
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as raw:
            gz = out.name.lower().endswith((".gz", ".tgz"))
            # Level 1: float weights hardly compress (408 -> 377 MB at level 9 for an AlexNet bundle),
            # and level 9 took ~35 s for that on 2 cores.
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) if gz else raw
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_regular_info(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes))
                for rel in files:
                    path = safe_path(bundle, rel)   # a symlink inside the bundle is stored as its content
                    with open(path, "rb") as fh:
                        tar.addfile(_regular_info(rel, path.stat().st_size), fh)
            if gz:
                stream.close()
    except OSError as exc:
        raise BundleError(f"{out}: cannot write the archive ({exc})") from exc
    log.info("packed %d files from %s into %s", len(files) + 1, bundle, out)
    return PackResult(path=out, files=(MANIFEST_NAME, *files), bytes=out.stat().st_size, sha256=sha256_file(out))


class _HashingReader(io.RawIOBase):
    """Hashes every byte read from ``fh``: what is extracted is exactly what was hashed."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.digest = fh, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.fh.readinto(buffer)
        self.digest.update(memoryview(buffer)[:count])
        return count

    def drain(self) -> str:
        """Hash the rest of the file (what follows the tar's end) and return the hex digest."""
        while self.read(CHUNK_BYTES):   # through readinto, so the rest is hashed too
            pass
        return self.digest.hexdigest()


CHUNK_BYTES = 1 << 20


def _sha256_of(fh: BinaryIO) -> str:
    fh.seek(0)
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
        digest.update(block)
    return digest.hexdigest()


@contextmanager
def _open_archive(archive: Path, max_bytes: int) -> Iterator[BinaryIO]:
    """The archive, opened once: it is hashed and extracted from this one file object."""
    try:
        fh = open(archive, "rb")
    except FileNotFoundError:
        raise BundleError(f"{archive}: not found; expected a bundle archive made by `alexnet-deploy pack`") from None
    except OSError as exc:
        raise BundleError(f"{archive}: cannot open it ({exc.strerror or exc})") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BundleError(f"{archive}: not a regular file; expected a bundle archive made by `alexnet-deploy pack`")
        if size > max_bytes:
            raise BundleError(f"{archive}: {size} bytes is over the {max_bytes} byte limit")
        yield fh


def _extract_from(fh: BinaryIO, archive: Path, into: Path, key: str, limits: tarstream.Limits) -> None:
    """Extract the open archive into the empty directory ``into`` and check it: its bytes still hash
    to ``key``, it holds a manifest, every listed artifact with its size and sha256; files the
    manifest does not list (other than engine sidecars) are dropped."""
    fh.seek(0)
    raw = _HashingReader(fh)
    try:
        buffered = io.BufferedReader(raw, CHUNK_BYTES)
        stream = gzip.GzipFile(fileobj=buffered, mode="rb") if buffered.peek(2)[:2] == GZIP_MAGIC else buffered
        files = tarstream.extract(stream, into, limits, str(archive))
        digest = raw.drain()
    except (OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{archive}: not a readable bundle archive ({exc.__class__.__name__}: {exc})") from exc
    if digest != key:
        raise BundleError(f"{archive}: the file changed while it was being read; nothing was unpacked. Copy the "
                          "archive again and retry")
    _keep_listed(archive, into, files)


def _keep_listed(archive: Path, into: Path, files: dict[str, int]) -> None:
    if MANIFEST_NAME not in files:
        raise BundleError(f"{archive}: no {MANIFEST_NAME} at the top of the archive; is it a packed bundle?")
    manifest = read_manifest(into)   # bounded, strict; refuses an unknown schema and escaping paths
    wanted = {MANIFEST_NAME}
    for artifact in manifest.artifacts:
        name = tarstream.member_name(str(archive), artifact.file)
        if name not in files:
            raise BundleError(f"{archive}: {artifact.file} is listed in the manifest but missing from the archive")
        if files[name] != artifact.bytes:
            raise BundleError(f"{archive}: {artifact.file} is {files[name]} bytes, the manifest says {artifact.bytes}; "
                              "the file was modified or corrupted")
        wanted.update({name, sidecar_file(name)} if artifact.kind == "trt-plan" else {name})
    skipped = sorted(set(files) - wanted)
    if skipped:
        log.warning("%s: skipping %d files not listed in the manifest: %s", archive, len(skipped), skipped[:5])
    for name in skipped:
        (into / name).unlink()
    verify_artifacts(into, manifest)


def unpack_bundle(archive: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False,
                  max_bytes: int = DEFAULT_MAX_BYTES, max_members: int = DEFAULT_MAX_MEMBERS) -> Path:
    """Safely extract a packed bundle into ``dest`` (which must not exist, or be empty, unless
    ``overwrite`` and it holds a bundle).

    One transaction (deploy/bundle/transaction.py): the archive is hashed and extracted from one
    open file into a staging directory beside ``dest``, every file is checked, and only then is it
    swapped in. Files of an old bundle that its manifest does not list (a user's own, or the
    archive itself) are kept. A folder that is not a bundle is never replaced."""
    archive, dest = Path(archive), Path(os.path.abspath(dest))
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise BundleError(f"{dest}: already exists; choose a new directory or pass --overwrite")
    limits = tarstream.Limits(max_bytes, max_members)
    with _open_archive(archive, max_bytes) as fh:
        key = _sha256_of(fh)
        with transaction(dest, "DEST", keep="unlisted", create=True) as staging:
            incoming = staging.path / ".incoming"
            incoming.mkdir()
            _extract_from(fh, archive, incoming, key, limits)
            _move_into(incoming, staging.path)
    log.info("unpacked %s into %s", archive, dest)
    return dest


def _move_into(src: Path, dst: Path) -> None:
    """Move every file of ``src`` into ``dst``, replacing files of the same name, then remove ``src``."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(src)


def bundle_cache_dir() -> Path:
    """Where ``open_bundle`` extracts archives: $ALEXNET_DEPLOY_CACHE, else the XDG cache directory."""
    root = os.environ.get("ALEXNET_DEPLOY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "alexnet-deploy")
    return Path(root) / "bundles"


def open_bundle(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """A checked bundle directory for ``source``: a bundle directory, or a packed archive extracted
    (once, keyed by the archive's sha256) into the cache. Every artifact's sha256 is checked, the
    cache copy's too: a corrupted cache entry is replaced by a fresh extraction."""
    source = Path(source)
    if source.is_dir():
        verify_artifacts(source, read_manifest(source))
        return source
    if not source.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise BundleError(f"{source}: neither a bundle directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    root = _cache_root(Path(cache_dir) if cache_dir else bundle_cache_dir())
    with _open_archive(source, max_bytes) as fh:
        key = _sha256_of(fh)
        dest = root / key[:20]
        if _usable_cache_entry(dest):
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=root))
        try:
            _extract_from(fh, source, tmp, key, tarstream.Limits(max_bytes, DEFAULT_MAX_MEMBERS))
            public_dir_mode(tmp)
            os.replace(tmp, dest)
        except OSError:
            if not _usable_cache_entry(dest):   # else another process extracted the same archive first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _cache_root(root: Path) -> Path:
    """The cache folder, created; partial extractions older than a day (killed runs) are removed."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        for partial in root.glob(".*.partial"):
            if time.time() - partial.stat().st_mtime > 86400:
                shutil.rmtree(partial, ignore_errors=True)
    except OSError as exc:
        raise BundleError(f"{root}: cannot use it as the bundle cache ({exc.strerror or exc}); set "
                          "ALEXNET_DEPLOY_CACHE to a writable folder") from exc
    return root


def _usable_cache_entry(dest: Path) -> bool:
    """True when the cache entry exists and every file still matches its manifest; a corrupted entry
    is moved out of the way (then removed) so the archive is extracted again."""
    if not dest.exists():
        return False
    try:
        verify_artifacts(dest, read_manifest(dest))
        return True
    except BundleError as exc:
        log.warning("%s: corrupted cache entry (%s); extracting the archive again", dest, exc)
    doomed = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".corrupt", dir=dest.parent))
    os.replace(dest, doomed / "entry")
    shutil.rmtree(doomed, ignore_errors=True)
    return False
