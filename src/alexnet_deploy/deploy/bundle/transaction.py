"""Every change to a bundle is a transaction: written beside the old one, swapped in when complete.

``transaction(dest)`` takes the bundle's one lock, makes a staging directory next to ``dest`` (same
file system, so the swap is a rename), fills it with hard links to the files the new state keeps,
and hands it to the caller, who writes the new files there (never into the old bundle). When the
caller's block finishes, the staging directory is exchanged with ``dest`` in one ``renameat2``
call (``RENAME_EXCHANGE``): at every instant ``dest`` is the complete old bundle or the complete new
one. Where the kernel or file system cannot exchange, two renames do it and there is a moment with
no ``dest``; the next transaction finds the old copy and puts it back.

An exception (Ctrl-C, SIGTERM turned into one by the CLI, a full disk) removes the staging
directory and leaves the old bundle as it was. A SIGKILL leaves the staging directory behind; it
can only belong to a dead process, since only the lock holder makes one, so the next transaction on
the same ``dest`` removes it. The lock is ``flock`` on a file beside the bundle: the kernel releases
it when its process dies, so a killed run never blocks the next one.

A directory that is not a bundle (no manifest that ``read_manifest`` accepts) is never replaced, and neither is a
mount point (it cannot be renamed; the error says to use a folder inside it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from alexnet_deploy.deploy.bundle.manifest import MANIFEST_NAME, Manifest, read_manifest, sidecar_file
from alexnet_deploy.deploy.bundle.files import check_writable, public_dir_mode
from alexnet_deploy.errors import AlexNetDeployError, BundleError

STAGING_SUFFIX = ".staging"
OLD_SUFFIX = ".old"
_RENAME_EXCHANGE = 2   # from <linux/fs.h>
_AT_FDCWD = -100
# Where earlier releases kept the lock, inside the bundle; such a file alone does not make a folder non-empty.
LEGACY_LOCK_NAME = ".alexnet-deploy.lock"


@dataclass(frozen=True)
class Staging:
    """The directory a transaction writes into (``path``) and the bundle it will become (``dest``)."""

    path: Path
    dest: Path


def lock_path(dest: Path) -> Path:
    """The bundle's lock file: beside it, since the directory itself is swapped by each commit."""
    return dest.parent / f".{dest.name}.lock"


@contextmanager
def bundle_lock(dest: str | os.PathLike, flag: str, *, wait: bool = False) -> Iterator[Path]:
    """Hold the bundle's exclusive lock. A second writer is refused at once, naming the holder's pid
    (``wait=False``: export and calibrate), or waits its turn (``wait=True``: engine builds, which
    then find the first one's engine in the cache)."""
    dest = Path(os.path.abspath(dest))
    path = lock_path(dest)
    fd = _locked_fd(path, dest, flag, wait)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        # Unlink before closing: a process that opened this file meanwhile sees a different inode
        # at the path once it gets the lock, and starts over (see _locked_fd).
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


def _locked_fd(path: Path, dest: Path, flag: str, wait: bool) -> int:
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise BundleError(f"{flag} {dest}: cannot create the lock file {path} ({exc.strerror or exc}); "
                              "the bundle's parent folder must be writable") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise BundleError(f"{flag} {dest}: another alexnet-deploy process (pid {holder}) is writing this "
                              f"bundle; wait for it to finish or choose another {flag}") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)   # the holder removed this file as we locked it: lock the current one instead


@contextmanager
def transaction(dest: str | os.PathLike, flag: str, *, keep: str = "all", create: bool = False,
                wait: bool = False) -> Iterator[Staging]:
    """Change the bundle at ``dest`` as one transaction (see the module docstring).

    ``keep`` says what the staging directory starts with: ``"all"`` (hard links to every file of
    the old bundle: calibrate, build-engine) or ``"unlisted"`` (only the files the old manifest does
    not list, so a user's own files survive while the old model's artifacts do not: export, unpack).
    ``create`` allows ``dest`` to be missing or an empty directory. The caller's block writes into
    ``staging.path``; the commit happens when the block ends without an exception."""
    dest = Path(os.path.abspath(dest))
    _check_destination(dest, flag, create)   # refuse early, before anything is made
    check_writable(dest, flag, directory=True)   # one line naming the flag
    dest.parent.mkdir(parents=True, exist_ok=True)
    with bundle_lock(dest, flag, wait=wait):
        _recover(dest)
        old = _check_destination(dest, flag, create)   # re-read under the lock
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=STAGING_SUFFIX, dir=dest.parent))
        try:
            public_dir_mode(staging)
            if old is not None:
                _link_tree(dest, staging, None if keep == "all" else _listed_files(old))
            yield Staging(staging, dest)
            _swap(staging, dest, replaces=old is not None)
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                raise
            raise _disk_error(exc, dest) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _check_destination(dest: Path, flag: str, create: bool) -> Manifest | None:
    """The manifest of the bundle at ``dest`` that the commit will replace (None: nothing to replace);
    refuses anything that must not be replaced."""
    if dest.parent == dest:
        raise BundleError(f"{flag} {dest}: a file system root cannot be a bundle; name a bundle directory")
    if not dest.exists():
        if not create:
            raise BundleError(f"{flag} {dest}: not found; create a bundle with `alexnet-deploy export`")
        return None
    if not dest.is_dir():
        raise BundleError(f"{flag} {dest}: exists and is not a directory")
    if os.path.ismount(dest):
        raise BundleError(f"{flag} {dest}: is a mount point, which cannot be swapped by a rename; use a "
                          f"directory inside it (e.g. {dest / 'bundle'})")
    empty = not any(p.name != LEGACY_LOCK_NAME for p in dest.iterdir())
    if empty and create:
        return None
    try:
        return read_manifest(dest)
    except BundleError:
        raise BundleError(f"{flag} {dest}: exists and is not a bundle (no valid alexnet-deploy {MANIFEST_NAME}); "
                          "refusing to replace it: choose a new or empty directory") from None


def _listed_files(manifest: Manifest) -> set[str]:
    """The old bundle's own files (its manifest and what it lists), left out of a staging copy that
    keeps only the user's files."""
    dropped = {MANIFEST_NAME}
    for artifact in manifest.artifacts:
        dropped.add(artifact.file)
        if artifact.kind == "trt-plan":   # the engine's JSON sidecar goes with it
            dropped.add(sidecar_file(artifact.file))
    return dropped


def _link_tree(src: Path, dst: Path, dropped: set[str] | None) -> None:
    """Hard-link (copy where links are refused) every file of ``src`` into ``dst``, except ``dropped``.
    Writers always replace files by rename, never in place, so a link never lets the new state
    change the old bundle's bytes."""
    for root, dirs, files in os.walk(src):
        rel_root = Path(root).relative_to(src)
        for name in list(dirs):
            if (Path(root) / name).is_symlink():   # a link to a folder is carried as the link itself
                os.symlink(os.readlink(Path(root) / name), dst / rel_root / name)
                dirs.remove(name)
            else:
                (dst / rel_root / name).mkdir(exist_ok=True)
        for name in files:
            rel = (rel_root / name).as_posix()
            if dropped is not None and rel in dropped:
                continue
            try:
                os.link(Path(root) / name, dst / rel, follow_symlinks=False)
            except OSError:
                shutil.copy2(Path(root) / name, dst / rel, follow_symlinks=False)


def _swap(staging: Path, dest: Path, replaces: bool) -> None:
    """Put ``staging`` at ``dest``; after this ``staging`` names the old bundle (or nothing)."""
    if not replaces:
        os.replace(staging, dest)   # rename(2) also replaces an empty directory
        os.mkdir(staging)           # so the caller's cleanup has a directory to remove
        return
    if _exchange(staging, dest):
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=OLD_SUFFIX, dir=dest.parent))
    os.replace(dest, old / "bundle")
    try:
        os.replace(staging, dest)
    except BaseException:
        os.replace(old / "bundle", dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories with renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _recover(dest: Path) -> None:
    """Under the lock: remove what dead transactions on ``dest`` left, after putting back an old
    bundle that a two-rename swap had moved aside when it was killed."""
    prefix = f".{dest.name}."
    for path in dest.parent.glob(f"{glob_escape(prefix)}*{OLD_SUFFIX}"):
        if not dest.exists() and (path / "bundle").is_dir():
            os.replace(path / "bundle", dest)
        shutil.rmtree(path, ignore_errors=True)
    for path in dest.parent.glob(f"{glob_escape(prefix)}*{STAGING_SUFFIX}"):
        shutil.rmtree(path, ignore_errors=True)


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters matched literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _disk_error(exc: OSError, dest: Path) -> AlexNetDeployError:
    """A one-line error for a failed write during a transaction, naming the file and, for a full
    disk, saying so."""
    where = exc.filename or dest
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BundleError(f"{dest}: the disk is full (writing {where}); the previous bundle is unchanged. "
                           "Free some space and run the command again")
    return BundleError(f"{dest}: cannot write the bundle ({exc.strerror or exc}: {where}); the previous bundle "
                       "is unchanged")
