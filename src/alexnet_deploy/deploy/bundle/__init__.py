"""The bundle: a directory whose only index is ``manifest.json``, owned by this package.

- ``opened``: ``Bundle``, an opened bundle (a directory or a packed archive) and the one way to read one.
- ``manifest``: the index (artifacts with sha256, classes, preprocessing) and what makes a
  directory a bundle.
- ``transaction``: every change (export, calibrate, build-engine, unpack) is written beside the old
  bundle and swapped in whole, under the bundle's one lock.
- ``archive``: packed bundles (``pack``/``unpack``, the extraction cache), read with every size
  bounded by ``tarstream``, a single-pass tar reader for untrusted archives.
- ``npz``: golden-vector files read with their declared sizes bounded before any array is loaded.
- ``paths``: outputs of other commands are refused when they would land inside a bundle.
- ``files``: atomic writes, checksums, bounded reads and strict JSON, for every file the toolkit writes.
"""

from alexnet_deploy.deploy.bundle.manifest import (ARTIFACT_KINDS, FORMAT_MARKER, MANIFEST_NAME, MAX_MANIFEST_BYTES,
                                                   SCHEMA_VERSION, Artifact, Manifest, TensorSpec,
                                                   make_artifact, parse_manifest_json, read_manifest, safe_path,
                                                   verify_artifact, verify_artifacts, write_manifest)
from alexnet_deploy.deploy.bundle.transaction import Staging, bundle_lock, transaction
from alexnet_deploy.deploy.bundle.opened import Bundle  # noqa: E402 - after the modules it is made of

__all__ = ["Bundle", "ARTIFACT_KINDS", "FORMAT_MARKER", "MANIFEST_NAME", "MAX_MANIFEST_BYTES", "SCHEMA_VERSION", "Artifact",
           "Manifest", "TensorSpec", "make_artifact", "parse_manifest_json", "read_manifest",
           "safe_path", "verify_artifact", "verify_artifacts", "write_manifest", "Staging", "bundle_lock",
           "transaction"]
