"""A bounded, single-pass tar reader for untrusted archives.

Python's ``tarfile`` reads a pax header's whole declared length into memory before looking at it
(a 2 MB gzip can declare 2 GiB), and has parsed crafted pax records in super-linear time on some
Python releases. A bundle archive needs little of tar: regular files, directories, pax/GNU long
names. This reader accepts exactly that, checks every header's checksum and every size against its
bounds *before* reading what the size covers, parses pax records in one linear pass, and writes
each file's bytes straight to disk in fixed-size chunks, so memory stays bounded whatever the
archive declares. Anything else (links, devices, FIFOs, sparse files, bad checksums, truncation)
is refused with a message naming the member.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from alexnet_deploy.errors import BundleError

BLOCK = 512
CHUNK = 1 << 20
MAX_PAX_BYTES = 64 << 10      # a pax header holds a few names and numbers
MAX_LONG_NAME = 4096
_REGULAR, _DIRECTORY = (b"0", b"\0", b"7"), b"5"
_PAX, _GLOBAL_PAX, _GNU_LONG_NAME = b"x", b"g", b"L"
_KINDS = {b"1": "hard link", b"2": "symlink", b"3": "character device", b"4": "block device", b"6": "FIFO",
          b"K": "GNU long link name", b"S": "GNU sparse file", b"V": "volume label"}


@dataclass(frozen=True)
class Limits:
    """What an archive may hold: the sum of its files' sizes and how many members."""

    max_bytes: int
    max_members: int


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    is_dir: bool


def extract(stream: BinaryIO, dest: Path, limits: Limits, where: str) -> dict[str, int]:
    """Read the tar ``stream`` to its end-of-archive block, writing its files and directories under
    ``dest`` (which must exist); return the files written, name -> size. ``where`` names the archive
    in errors."""
    files: dict[str, int] = {}
    total = members = 0
    while True:
        member = _next_member(stream, where, limits)
        if member is None:
            return files
        members += 1
        if members > limits.max_members:
            raise BundleError(f"{where}: more than {limits.max_members} members; refusing to unpack")
        if member.is_dir:
            (dest / member.name).mkdir(parents=True, exist_ok=True)
            continue
        if member.name in files:
            raise BundleError(f"{where}: member {member.name!r} appears twice (a later copy would overwrite the first)")
        total += member.size
        if total > limits.max_bytes:
            raise BundleError(f"{where}: unpacked size exceeds the {limits.max_bytes / (1 << 30):.2f} GiB limit; "
                              "refusing to unpack (raise the limit if the bundle is really that big)")
        _write_member(stream, dest, member, where)
        files[member.name] = member.size


def _next_member(stream: BinaryIO, where: str, limits: Limits) -> Member | None:
    """The next file or directory, after any pax / GNU long-name headers that describe it."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        header = _read_exact(stream, BLOCK, where, "a header")
        if header == bytes(BLOCK):
            return None   # end of archive
        _check_checksum(header, where)
        kind, size = header[156:157], _number(header[124:136], where)
        if kind in (_PAX, _GLOBAL_PAX):
            if size > MAX_PAX_BYTES:
                raise BundleError(f"{where}: a pax header declares {size} bytes (at most {MAX_PAX_BYTES}); refusing it")
            records = parse_pax(_read_padded(stream, size, where), where)
            if kind == _PAX:
                pax.update(records)
            continue
        if kind == _GNU_LONG_NAME:
            if size > MAX_LONG_NAME:
                raise BundleError(f"{where}: a long-name header declares {size} bytes (at most {MAX_LONG_NAME})")
            long_name = _read_padded(stream, size, where).split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        name = pax.get("path") or long_name or _ustar_name(header)
        if kind not in _REGULAR and kind != _DIRECTORY:
            raise BundleError(f"{where}: member {name!r} is a {_KINDS.get(kind, f'tar type {kind!r}')}; bundles "
                              "may only contain regular files and directories")
        if "size" in pax:
            size = _pax_size(pax["size"], where)
        if size > limits.max_bytes:
            raise BundleError(f"{where}: member {name!r} declares {size} bytes, over the unpack limit")
        return Member(member_name(where, name), size, kind == _DIRECTORY)


def member_name(where: str, name: str) -> str:
    """The member's normalized relative name; BundleError when it would leave the destination."""
    pure = PurePosixPath(name)
    if (name.startswith(("/", "\\")) or "\\" in name or "\0" in name or ".." in pure.parts
            or (pure.parts and ":" in pure.parts[0])):
        raise BundleError(f"{where}: member {name!r} escapes the bundle (absolute path or '..')")
    parts = [p for p in pure.parts if p != "."]
    if not parts:
        raise BundleError(f"{where}: member with an empty name")
    return "/".join(parts)


def parse_pax(data: bytes, where: str) -> dict[str, str]:
    """pax records ``"LEN KEY=VALUE\\n"``, parsed left to right once; any malformed record is refused."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 12)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise BundleError(f"{where}: malformed pax header (record at byte {pos} has no length)")
        end = pos + int(digits)
        record = data[space + 1:end]
        if end > len(data) or end <= space + 1 or not record.endswith(b"\n") or b"=" not in record:
            raise BundleError(f"{where}: malformed pax header (record at byte {pos})")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos = end
    return records


def _pax_size(text: str, where: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise BundleError(f"{where}: pax size {text[:30]!r} is not a byte count")
    return int(text)


def _ustar_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _number(field: bytes, where: str) -> int:
    """A numeric header field: octal text, or GNU base-256 when the top bit is set."""
    if field[0] & 0x80:
        if field[0] == 0xFF:
            raise BundleError(f"{where}: a header holds a negative size")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise BundleError(f"{where}: a header's size field {field!r} is not a number") from None


def _check_checksum(header: bytes, where: str) -> None:
    stored = _number(header[148:156], where)
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = unsigned - sum(256 for b in header[:148] + header[156:] if b > 127)
    if stored not in (unsigned, signed):
        raise BundleError(f"{where}: a tar header's checksum does not match; the archive is corrupt or not a tar file")


def _read_exact(stream: BinaryIO, size: int, where: str, what: str) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise BundleError(f"{where}: the archive ends in the middle of {what}; it is truncated")
        data += chunk
    return data


def _read_padded(stream: BinaryIO, size: int, where: str) -> bytes:
    """``size`` bytes of header data (already bounded by the caller), then the padding to the block."""
    data = _read_exact(stream, _padded(size), where, "a header") if size else b""
    return data[:size]


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _write_member(stream: BinaryIO, dest: Path, member: Member, where: str) -> None:
    path = dest / member.name
    path.parent.mkdir(parents=True, exist_ok=True)
    left = member.size
    with open(path, "xb") as fh:
        while left:
            chunk = stream.read(min(CHUNK, left))
            if not chunk:
                raise BundleError(f"{where}: the archive ends in the middle of {member.name}; it is truncated")
            fh.write(chunk)
            left -= len(chunk)
    os.chmod(path, 0o644)
    padding = _padded(member.size) - member.size
    if padding:
        _read_exact(stream, padding, where, member.name)
