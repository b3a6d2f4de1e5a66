"""Packed bundles: one ``.tar.gz`` to copy to a device, opened without trusting it.

``pack_bundle`` checks every artifact's sha256, then writes the manifest and the files it lists
(engines only on request: a plan runs only on the GPU and TensorRT version that built it) as
plain regular-file members with fixed owners and times, so the same bundle gives the same archive.

``unpack_bundle`` / ``open_bundle`` read the archive's headers before writing anything and refuse:
members that are not regular files or directories (symlinks, hard links, devices, FIFOs),
absolute names, ``..``, duplicate names, more than ``max_members`` entries, a declared total size
over ``max_bytes``, a manifest with an unknown schema or an escaping path, a listed artifact that
is missing or whose size differs. Extraction then goes through tarfile's ``data`` filter into a
temporary directory beside the destination, every artifact's sha256 is checked (a tampered file is
refused by name), and only then is the directory renamed into place. Nothing is unpickled: the
manifest is JSON and ``reference.npz`` is read later with ``allow_pickle=False``.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from alexnet_deploy.deploy.bundle import (MANIFEST_NAME, Manifest, parse_manifest_json, read_manifest, safe_path,
                                          verify_artifacts)
from alexnet_deploy.deploy.files import atomic_path, public_dir_mode, sha256_file
from alexnet_deploy.errors import BundleError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 << 30      # AlexNet fp32+fp16+int8 ONNX plus engines is well under 1 GiB
DEFAULT_MAX_MEMBERS = 256
MAX_MANIFEST_BYTES = 16 << 20
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


def _sidecar(plan_file: str) -> str:
    return str(PurePosixPath(plan_file).with_suffix(".json"))


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
        if artifact.kind == "trt-plan" and safe_path(bundle, _sidecar(artifact.file)).is_file():
            files.append(_sidecar(artifact.file))
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


def _member_name(archive: Path, member: tarfile.TarInfo) -> str:
    """The member's normalized relative name, or BundleError if it is not a plain file or dir inside."""
    name = member.name
    kind = ("symlink" if member.issym() else "hard link" if member.islnk() else
            "device" if member.ischr() or member.isblk() else "FIFO" if member.isfifo() else None)
    if kind or not (member.isreg() or member.isdir()):
        target = f" -> {member.linkname}" if member.linkname else ""
        raise BundleError(f"{archive}: member {name!r}{target} is a {kind or 'special file'}; "
                          "bundles may only contain regular files and directories")
    pure = PurePosixPath(name)
    if name.startswith(("/", "\\")) or "\\" in name or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise BundleError(f"{archive}: member {name!r} escapes the bundle (absolute path or '..')")
    parts = [p for p in pure.parts if p != "."]
    if not parts:
        raise BundleError(f"{archive}: member with an empty name")
    return "/".join(parts)


def _scan(archive: Path, tar: tarfile.TarFile, max_bytes: int, max_members: int) -> dict[str, tarfile.TarInfo]:
    """Check every header before anything is written; return regular files by normalized name."""
    files: dict[str, tarfile.TarInfo] = {}
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > max_members:
            raise BundleError(f"{archive}: more than {max_members} members; refusing to unpack")
        name = _member_name(archive, member)
        if member.isdir():
            continue
        if name in files:
            raise BundleError(f"{archive}: member {name!r} appears twice (a later copy would overwrite the first)")
        total += member.size
        if total > max_bytes:
            raise BundleError(f"{archive}: unpacked size exceeds the {max_bytes / (1 << 30):.2f} GiB limit; "
                              "refusing to unpack (raise max_bytes if the bundle is really that big)")
        files[name] = member
    return files


def _read_packed_manifest(archive: Path, tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo]) -> Manifest:
    member = files.get(MANIFEST_NAME)
    if member is None:
        raise BundleError(f"{archive}: no {MANIFEST_NAME} at the top of the archive; is it a packed bundle?")
    if member.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{archive}: {MANIFEST_NAME} is {member.size} bytes, larger than any real manifest")
    try:
        raw = tar.extractfile(member).read()
    except OSError as exc:
        raise BundleError(f"{archive}: {MANIFEST_NAME} cannot be read ({exc})") from exc
    data = parse_manifest_json(f"{archive}: {MANIFEST_NAME}", raw)
    if not isinstance(data, dict):
        raise BundleError(f"{archive}: {MANIFEST_NAME} must be a JSON object")
    return Manifest.from_dict(data)   # refuses an unknown schema version


def _select(archive: Path, manifest: Manifest, files: dict[str, tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """The members to extract: the manifest, each listed artifact (present, right size) and plan sidecars."""
    wanted = {MANIFEST_NAME: files[MANIFEST_NAME]}
    for artifact in manifest.artifacts:
        name = _relative_name(artifact.file)
        member = files.get(name)
        if member is None:
            raise BundleError(f"{archive}: {artifact.file} is listed in the manifest but missing from the archive")
        if member.size != artifact.bytes:
            raise BundleError(f"{archive}: {artifact.file} is {member.size} bytes, the manifest says {artifact.bytes}; "
                              "the file was modified or corrupted")
        wanted[name] = member
        if artifact.kind == "trt-plan" and _sidecar(name) in files:
            wanted[_sidecar(name)] = files[_sidecar(name)]
    skipped = sorted(set(files) - set(wanted))
    if skipped:
        log.warning("%s: skipping %d files not listed in the manifest: %s", archive, len(skipped), skipped[:5])
    return list(wanted.values())


def _relative_name(relative: str) -> str:
    """A manifest path as an archive member name; the same rules as deploy.bundle.safe_path."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or Path(relative).is_absolute() or ".." in pure.parts or "\\" in relative:
        raise BundleError(f"manifest path {relative!r} escapes the bundle; paths must be relative and inside it")
    parts = [p for p in pure.parts if p != "."]
    if not parts:
        raise BundleError(f"manifest path {relative!r} is empty")
    return "/".join(parts)


def _extract(archive: Path, dest: Path, max_bytes: int, max_members: int) -> Path:
    """Extract into a temporary directory beside ``dest``; return it after every check passed."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            files = _scan(archive, tar, max_bytes, max_members)
            manifest = _read_packed_manifest(archive, tar, files)
            members = _select(archive, manifest, files)
            tar.extractall(tmp, members=members, filter="data")
        verify_artifacts(tmp, read_manifest(tmp))
        public_dir_mode(tmp)
        return tmp
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"{archive}: not a readable bundle archive ({exc.__class__.__name__}: {exc})") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_archive_file(archive: Path, max_bytes: int) -> None:
    if not archive.is_file():
        raise BundleError(f"{archive}: not found; expected a bundle archive made by `alexnet-deploy pack`")
    if archive.stat().st_size > max_bytes:
        raise BundleError(f"{archive}: {archive.stat().st_size} bytes is over the {max_bytes} byte limit")


def unpack_bundle(archive: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False,
                  max_bytes: int = DEFAULT_MAX_BYTES, max_members: int = DEFAULT_MAX_MEMBERS) -> Path:
    """Safely extract a packed bundle into ``dest`` (which must not exist unless ``overwrite``).

    ``dest`` is resolved first, so "." or "sub/.." name the real directory and the new copy is built
    beside it, never inside it. An existing bundle is only moved aside once the new one is extracted
    and checked, and deleted after the new one is in place."""
    archive, dest = Path(archive), Path(os.path.abspath(dest))
    _check_archive_file(archive, max_bytes)
    if dest.parent == dest:
        raise BundleError(f"{dest}: cannot unpack over a filesystem root; name a bundle directory")
    empty_dir = dest.is_dir() and not any(dest.iterdir())
    if dest.exists() and not empty_dir and not overwrite:
        raise BundleError(f"{dest}: already exists; choose a new directory or pass --overwrite")
    if dest.exists() and not empty_dir and not (dest / MANIFEST_NAME).is_file():
        raise BundleError(f"{dest}: exists and is not a bundle; refusing to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _extract(archive, dest, max_bytes, max_members)
    _swap_in(tmp, dest, replace=dest.exists() and not empty_dir)
    log.info("unpacked %s into %s", archive, dest)
    return dest


def _swap_in(new: Path, dest: Path, replace: bool) -> None:
    """Move the checked copy ``new`` to ``dest``; an old ``dest`` is renamed aside first and only
    deleted once ``new`` is in place (put back if the move fails)."""
    if not replace:
        os.replace(new, dest)   # rename(2) also replaces an empty directory
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.replace(dest, old / "bundle")
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(old / "bundle", dest)
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def bundle_cache_dir() -> Path:
    """Where ``open_bundle`` extracts archives: $ALEXNET_DEPLOY_CACHE, else the XDG cache directory."""
    root = os.environ.get("ALEXNET_DEPLOY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "alexnet-deploy")
    return Path(root) / "bundles"


def open_bundle(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """A checked bundle directory for ``source``: a bundle directory, or a packed archive extracted
    (once, keyed by the archive's sha256) into the cache. Every artifact's sha256 is checked."""
    source = Path(source)
    if source.is_dir():
        verify_artifacts(source, read_manifest(source))
        return source
    _check_archive_file(source, max_bytes)
    if not source.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise BundleError(f"{source}: neither a bundle directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    dest = Path(cache_dir) if cache_dir else bundle_cache_dir()
    dest = dest / sha256_file(source)[:20]
    if (dest / MANIFEST_NAME).is_file():
        verify_artifacts(dest, read_manifest(dest))   # the cache copy could have been edited since
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _extract(source, dest, max_bytes, DEFAULT_MAX_MEMBERS)
    try:
        os.replace(tmp, dest)
    except OSError:   # another process extracted the same archive first; use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
