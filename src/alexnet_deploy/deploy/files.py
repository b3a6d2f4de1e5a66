"""Atomic writes, checksums and the bundle write lock: nothing is left half-written if a run is
killed, and two writers never mix their files in one bundle."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alexnet_deploy.errors import AlexNetDeployError, BundleError

# Hidden and never listed in the manifest; removed again when the writer is done.
LOCK_NAME = ".alexnet-deploy.lock"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the permissions a plain open() would, so a
        # bundle copied to a device or served from a container stays readable by others.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def bundle_lock(directory: str | os.PathLike, flag: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` for as long as this process writes into it.

    A second writer is refused at once (naming the holder's pid) rather than queued: it would
    otherwise overwrite the first one's files after they were hashed. The kernel releases the lock
    when the process dies, so a killed run never leaves a stale lock."""
    path = Path(directory) / LOCK_NAME
    fd = _locked_fd(path, directory, flag)
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


def _locked_fd(path: Path, directory: str | os.PathLike, flag: str) -> int:
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise BundleError(f"{flag} {directory}: another alexnet-deploy process (pid {holder}) is writing this "
                              f"bundle; wait for it to finish or choose another {flag}") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)   # the holder removed this file as we locked it: lock the current one instead


def check_writable(path: str | os.PathLike, flag: str, *, directory: bool = False) -> Path:
    """Refuse, before any work is done, an output that cannot be written: a file path that is a
    directory (or a directory path that is a file), or a place where no file can be created
    (read-only directory or filesystem, a parent that is a file). Creates nothing that stays."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise AlexNetDeployError(f"{flag} {path}: exists and is not a directory")
    if not directory and path.is_dir():
        raise AlexNetDeployError(f"{flag} {path}: is a directory; expected a file path")
    existing = path if directory else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent   # missing folders are made later, inside the nearest existing one
    with _cannot_write(flag, path):
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
    return path


def make_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create the output directory ``path`` (or reuse it) and prove a file can be created in it, so
    a run fails before its work, naming ``flag``, rather than after."""
    path = Path(path)
    with _cannot_write(flag, path):
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    return path


@contextmanager
def _cannot_write(flag: str, path: Path) -> Iterator[None]:
    """An OSError inside becomes one line naming the flag and the path."""
    try:
        yield
    except OSError as exc:
        raise AlexNetDeployError(f"{flag} {path}: cannot write there ({exc.strerror or exc}); "
                                 "choose a writable location") from exc


def public_dir_mode(path: str | os.PathLike) -> None:
    """Give a directory made by mkdtemp (0700) the mode a plain mkdir would: an unpacked bundle
    must be readable by the service user that runs it."""
    os.chmod(path, 0o777 & ~_current_umask())


def _current_umask() -> int:
    # os.umask can only be read by setting it; restore it at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask
