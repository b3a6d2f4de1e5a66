"""Outputs of other commands never land inside a bundle: a report written over ``model.onnx`` or
``manifest.json`` would destroy the bundle that the command just read."""

from __future__ import annotations

import os
from pathlib import Path

from alexnet_deploy.errors import AlexNetDeployError


def refuse_inside(output: str | os.PathLike | None, bundle: str | os.PathLike, flag: str) -> None:
    """Raise when ``output`` resolves (symlinks followed) to ``bundle`` itself or anything inside it."""
    if output is None or not Path(bundle).is_dir():   # an archive is opened into the cache, never written
        return
    root = Path(bundle).resolve()
    target = Path(output).resolve()
    if target == root or root in target.parents:
        raise AlexNetDeployError(f"{flag} {output}: is inside the bundle {bundle}, whose files it would overwrite; "
                                 "write it outside the bundle")
