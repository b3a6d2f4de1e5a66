"""Atomic writes, checksums and output checks: nothing is left half-written if a run is killed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alexnet_deploy.errors import AlexNetDeployError, BundleError

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
        try:
            yield tmp_path
        except OSError as exc:
            if exc.filename is None:   # a failed write() names no file: name the one being written
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
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


def read_bounded(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, refused (naming it) when over ``max_bytes``: checked
    while reading, so a device or a growing file cannot make it read without end."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise AlexNetDeployError(f"{path}: not a regular file; expected {what}")
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise AlexNetDeployError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:
        raise AlexNetDeployError(f"{path}: larger than {max_bytes >> 20} MiB, more than any real {what}")
    return data


def strict_json_loads(raw: bytes) -> object:
    """json.loads that refuses NaN/Infinity and integers of more than 20 digits (Python would spend
    quadratic time converting a huge literal); raises ValueError (bad UTF-8, bad JSON, those) or
    RecursionError (nesting deep enough to exhaust the parser)."""
    return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_int=_bounded_int)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 20:
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)
