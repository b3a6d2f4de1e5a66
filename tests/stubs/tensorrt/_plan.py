"""Stand-in plan format: what the fake builder serializes and the fake runtime reads.

``MAGIC + 8-byte header length + JSON header + ONNX bytes``. The header encodes everything the
build was asked for (TensorRT version, flags, strong typing, profile, workspace, DLA, ...), so a
test can check that the toolkit asked for the right things; the ONNX bytes let the fake runtime
compute real logits with ONNX Runtime. Real plans are opaque CUDA kernels; nothing here is one.
"""

from __future__ import annotations

import json
import struct

MAGIC = b"FAKE-TRT-PLAN\x00"


def encode(header: dict, onnx_bytes: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + onnx_bytes


def decode(blob: bytes) -> tuple[dict, bytes] | None:
    """(header, onnx bytes), or None when ``blob`` is not a stand-in plan."""
    blob = bytes(blob)
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 8:
        return None
    (size,) = struct.unpack("<Q", blob[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8
    try:
        header = json.loads(blob[start:start + size])
    except ValueError:
        return None
    return header, blob[start + size:]
