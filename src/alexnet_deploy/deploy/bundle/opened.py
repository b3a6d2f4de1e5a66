"""``Bundle``: an opened bundle, the one way the runtime reads one.

A bundle directory or a packed archive (hashed and extracted once into the cache, every file
checked) becomes a ``Bundle``: its directory and its manifest, read once. Artifacts are handed out
by ``file()``, which checks the sha256 before the path is used (once per version of the file in a
process). Changes go through ``transaction()`` (see transaction.py), never through the paths.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from alexnet_deploy.deploy.bundle.archive import ARCHIVE_SUFFIXES, open_bundle
from alexnet_deploy.deploy.bundle.manifest import Artifact, Manifest, read_manifest, verify_artifact
from alexnet_deploy.deploy.bundle.transaction import Staging, transaction
from alexnet_deploy.errors import BundleError


@dataclass(frozen=True)
class Bundle:
    """A bundle directory and its manifest."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, source: str | os.PathLike | Bundle, *, cache_dir: str | os.PathLike | None = None) -> Bundle:
        """``source`` as a Bundle: a bundle directory (manifest read and validated), or a packed
        archive (``.tar.gz``/``.tgz``/``.tar``: extracted safely into the cache, every artifact checked)."""
        if isinstance(source, Bundle):
            return source
        path = Path(source)
        if not path.exists():
            raise BundleError(f"{source}: not found; expected a bundle directory or a "
                              f"{'/'.join(ARCHIVE_SUFFIXES)} made by `alexnet-deploy pack`")
        if path.is_file():
            path = open_bundle(path, cache_dir=cache_dir)
        return cls(path, read_manifest(path))

    def artifact(self, precision: str, kind: str = "onnx") -> Artifact | None:
        """The manifest's entry for ``precision`` and ``kind``, or None."""
        return self.manifest.artifact(precision, kind)

    def file(self, artifact: Artifact) -> Path:
        """The artifact's path, after checking its sha256 against the manifest."""
        return verify_artifact(self.path, artifact)

    def transaction(self, flag: str = "BUNDLE", **options) -> AbstractContextManager[Staging]:
        """A change to this bundle (see ``transaction.transaction``)."""
        return transaction(self.path, flag, **options)
