"""``.npz`` files (golden vectors, cached calibration sets) read without trusting them.

``np.load`` allocates whatever an array header declares: a 2 MB zip can hold a deflated 2 GiB
array. Here every member's declared uncompressed size and its array header (shape, dtype) are read
and bounded before any array data is, object arrays are refused (they would need pickle), and a
file that is not an npz becomes one BundleError naming it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import BundleError

# A bundle's golden vectors are tens of MB (32 inputs at 227 px are 20 MB); a calibration set of
# 512 images at 227 px is 316 MB. Nothing this toolkit writes comes near the limit.
MAX_NPZ_BYTES = 1 << 30
MAX_NPZ_MEMBERS = 64


def load_npz(path: str | os.PathLike, *, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """Every array of the npz at ``path``, after checking each one's declared size against ``max_bytes``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            _check_members(path, archive, max_bytes)
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
    except BundleError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(f"{path}: not a readable npz without pickle ({exc.__class__.__name__}: {exc})") from exc


def _check_members(path: Path, archive: zipfile.ZipFile, max_bytes: int) -> None:
    members = archive.infolist()
    if len(members) > MAX_NPZ_MEMBERS:
        raise BundleError(f"{path}: {len(members)} arrays, more than the {MAX_NPZ_MEMBERS} an npz here may hold")
    total = 0
    for member in members:
        if member.file_size > max_bytes:
            raise BundleError(f"{path}: {member.filename} declares {member.file_size} bytes, over the "
                              f"{max_bytes >> 20} MiB limit")
        total += _array_bytes(path, archive, member)
        if total > max_bytes:
            raise BundleError(f"{path}: its arrays add up to more than {max_bytes >> 20} MiB; refusing to load them")


def _array_bytes(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> int:
    """The bytes the member's array header declares, after checking it fits the stored data."""
    with archive.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(fh, max_header_size=10000)
    if dtype.hasobject:
        raise BundleError(f"{path}: {member.filename} holds Python objects, which would need pickle; refused")
    count = 1
    for dim in shape:
        count *= int(dim)
    nbytes = count * dtype.itemsize
    if nbytes > member.file_size:
        raise BundleError(f"{path}: {member.filename} declares shape {shape} ({nbytes} bytes) but stores only "
                          f"{member.file_size} bytes")
    return nbytes
