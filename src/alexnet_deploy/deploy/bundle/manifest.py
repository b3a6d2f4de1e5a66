"""The bundle's index, ``manifest.json``: what a directory must hold to be a bundle.

Every artifact is listed with a relative path, its kind, precision, sha256 and size. Paths that
leave the bundle are refused, and so is a file whose sha256 does not match its entry. No pickle
is ever read from a bundle: the manifest is JSON and the golden vectors are ``.npz`` loaded with
``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from alexnet_deploy.deploy.bundle.files import atomic_write_text, read_bounded, sha256_file, strict_json_loads
from alexnet_deploy.deploy.precision import NAMES
from alexnet_deploy.deploy.preprocess import PreprocessSpec
from alexnet_deploy.errors import AlexNetDeployError, BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Written into every manifest so that a directory is recognised as a bundle by what its manifest
# says, not by the file name: a web project's manifest.json is never mistaken for one.
FORMAT_MARKER = "alexnet-deploy-bundle"
# A real manifest is a few kB; anything near this is not one (and is not worth parsing).
MAX_MANIFEST_BYTES = 16 << 20
ARTIFACT_KINDS = ("onnx", "trt-plan", "npz")


@dataclass(frozen=True)
class TensorSpec:
    """An input or output tensor; ``shape`` uses -1 for the dynamic batch dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        return cls(name=str(data["name"]), shape=tuple(int(d) for d in data["shape"]), dtype=str(data["dtype"]))


@dataclass(frozen=True)
class Artifact:
    """One file of the bundle, relative to the bundle directory."""

    file: str
    kind: str
    precision: str
    sha256: str
    bytes: int
    built_with: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Artifact":
        if not isinstance(data, dict):
            raise BundleError(f"artifact entry {str(data)[:60]!r}: expected an object with file, kind, precision, "
                              "sha256 and bytes")
        kind, precision = data.get("kind"), data.get("precision")
        if kind not in ARTIFACT_KINDS:
            raise BundleError(f"artifact {data.get('file')!r}: unknown kind {kind!r}; expected one of {ARTIFACT_KINDS}")
        if precision not in NAMES:
            raise BundleError(f"artifact {data.get('file')!r}: unknown precision {precision!r}; expected one of {NAMES}")
        artifact = cls(file=str(data["file"]), kind=kind, precision=precision, sha256=str(data["sha256"]),
                       bytes=int(data["bytes"]), built_with=dict(data.get("built_with") or {}))
        if len(artifact.sha256) != 64 or any(c not in "0123456789abcdef" for c in artifact.sha256):
            raise BundleError(f"artifact {artifact.file!r}: sha256 {artifact.sha256[:70]!r} is not 64 hex digits")
        if artifact.bytes < 0:
            raise BundleError(f"artifact {artifact.file!r}: bytes {artifact.bytes} is negative")
        return artifact


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs to run and check the model, without torch."""

    classes: tuple[str, ...]
    input: TensorSpec
    output: TensorSpec
    preprocess: PreprocessSpec
    arch: str = "alexnet2012"
    max_batch: int = 32
    artifacts: tuple[Artifact, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def artifact(self, precision: str, kind: str = "onnx") -> Artifact | None:
        """The artifact of this precision and kind, or None."""
        return next((a for a in self.artifacts if a.precision == precision and a.kind == kind), None)

    def with_artifact(self, artifact: Artifact) -> "Manifest":
        """A copy with ``artifact`` added, replacing any entry for the same file."""
        kept = tuple(a for a in self.artifacts if a.file != artifact.file)
        return dataclasses.replace(self, artifacts=kept + (artifact,))

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_MARKER, "schema": self.schema, "arch": self.arch, "classes": list(self.classes),
            "input": self.input.to_dict(), "output": self.output.to_dict(),
            "preprocess": self.preprocess.to_dict(), "max_batch": self.max_batch,
            "artifacts": [a.to_dict() for a in self.artifacts], "provenance": self.provenance,
            "parity": self.parity, "export": self.export, "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        if data.get("format", FORMAT_MARKER) != FORMAT_MARKER:
            raise BundleError(f"manifest.json is a {str(data.get('format'))[:40]!r} manifest, not an alexnet-deploy "
                              "bundle's")
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise BundleError(f"manifest schema {schema!r} is not supported; this alexnet-deploy reads schema "
                              f"{SCHEMA_VERSION}. Re-export the bundle or upgrade alexnet-deploy")
        try:
            manifest = cls(
                classes=tuple(str(c) for c in data["classes"]),
                input=TensorSpec.from_dict(data["input"]), output=TensorSpec.from_dict(data["output"]),
                preprocess=PreprocessSpec.from_dict(data["preprocess"]), arch=str(data.get("arch", "alexnet2012")),
                max_batch=int(data.get("max_batch", 32)),
                artifacts=tuple(Artifact.from_dict(a) for a in _artifact_list(data)),
                provenance=dict(data.get("provenance") or {}), parity=dict(data.get("parity") or {}),
                export=dict(data.get("export") or {}), calibration=dict(data.get("calibration") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"manifest.json is malformed: {exc.__class__.__name__}: {exc}") from exc
        problem = manifest.problem()
        if problem:
            raise BundleError(f"manifest.json: {problem}; re-copy or re-export the bundle")
        return manifest

    def problem(self) -> str | None:
        """What makes this manifest unusable at run time, or None."""
        if self.max_batch < 1:
            return f"max_batch {self.max_batch}: expected an integer >= 1 (the largest batch the bundle runs)"
        if not self.classes or len(set(self.classes)) != len(self.classes):
            return f"classes must be a non-empty list of distinct names, got {list(self.classes)[:10]}"
        if len(self.input.shape) != 4 or any(d < 1 for d in self.input.shape[1:]):
            return f"input shape {list(self.input.shape)}: expected [-1, 3, H, W]"
        if list(self.output.shape[1:]) != [len(self.classes)]:
            return f"output shape {list(self.output.shape)} does not fit the {len(self.classes)} classes"
        return None


def sidecar_file(plan_file: str) -> str:
    """The JSON sidecar that travels with an engine plan (``engines/x.plan`` -> ``engines/x.json``)."""
    return str(PurePosixPath(plan_file).with_suffix(".json"))


def _artifact_list(data: dict) -> list:
    artifacts = data.get("artifacts")
    if not isinstance(artifacts, list):
        raise BundleError(f"manifest.json: 'artifacts' must be a list of artifact objects, got {type(artifacts).__name__}")
    return artifacts


def safe_path(bundle: str | os.PathLike, relative: str) -> Path:
    """Resolve a manifest path inside the bundle; refuse absolute paths, ``..`` and symlinks out."""
    root = Path(bundle).resolve()
    pure = PurePosixPath(relative)
    if pure.is_absolute() or Path(relative).is_absolute() or ".." in pure.parts or not pure.parts:
        raise BundleError(f"manifest path {relative!r} escapes the bundle; paths must be relative and inside it")
    resolved = (root / Path(*pure.parts)).resolve()
    if root != resolved and root not in resolved.parents:
        raise BundleError(f"manifest path {relative!r} resolves outside the bundle (symlink to {resolved})")
    return resolved


def read_manifest(bundle: str | os.PathLike) -> Manifest:
    """Read and validate ``bundle/manifest.json`` (schema, kinds, paths)."""
    path = Path(bundle) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: not found; is {bundle} a bundle? Create one with `alexnet-deploy export`")
    try:
        raw = read_bounded(path, MAX_MANIFEST_BYTES, "manifest")
    except AlexNetDeployError as exc:
        raise BundleError(str(exc)) from exc
    data = parse_manifest_json(path, raw)
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    manifest = Manifest.from_dict(data)
    for artifact in manifest.artifacts:
        safe_path(bundle, artifact.file)
    return manifest


def parse_manifest_json(where: str | os.PathLike, raw: bytes) -> Any:
    """Strict json.loads: every failure (bad UTF-8, bad JSON, NaN/Infinity, an integer too long to
    convert, nesting deep enough to exhaust the parser's recursion) becomes a BundleError naming ``where``."""
    try:
        return strict_json_loads(raw)
    except ValueError as exc:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BundleError(f"{where}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise BundleError(f"{where}: JSON nested too deeply to be a manifest") from exc


def write_manifest(bundle: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically."""
    path = Path(bundle) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def make_artifact(bundle: str | os.PathLike, relative: str, kind: str, precision: str,
                  built_with: dict[str, Any] | None = None) -> Artifact:
    """Describe an existing file of the bundle (computes sha256 and size)."""
    path = safe_path(bundle, relative)
    return Artifact.from_dict({"file": relative, "kind": kind, "precision": precision,
                               "sha256": file_sha256(path), "bytes": path.stat().st_size,
                               "built_with": built_with or {}})


# (device, inode, size, mtime_ns, ctime_ns) of a file -> its sha256, for files hashed in this process.
# Any write, rename over or chmod changes ctime, so a changed file is always hashed again; an
# unchanged one is hashed once however many steps (verify, bench, each backend) check it.
_HASHED: dict[tuple[int, int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, computed once per version of the file in this process."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return _HASHED[key]


def verify_artifact(bundle: str | os.PathLike, artifact: Artifact) -> Path:
    """Return the artifact's path after checking it exists and its sha256 matches the manifest."""
    path = safe_path(bundle, artifact.file)
    if not path.is_file():
        raise BundleError(f"{artifact.file}: listed in the manifest but missing from {bundle}")
    actual = file_sha256(path)
    if actual != artifact.sha256:
        raise BundleError(f"{artifact.file}: sha256 mismatch (manifest {artifact.sha256[:12]}…, file {actual[:12]}…); "
                          "the file was modified or corrupted: re-copy or re-export the bundle")
    return path


def verify_artifacts(bundle: str | os.PathLike, manifest: Manifest | None = None) -> list[Path]:
    """Check every artifact's checksum; the first mismatch raises BundleError naming the file."""
    manifest = manifest or read_manifest(bundle)
    return [verify_artifact(bundle, a) for a in manifest.artifacts]
