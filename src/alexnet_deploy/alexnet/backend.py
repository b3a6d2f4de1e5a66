"""PyTorch backend: the fp32 reference, from the checkpoint the bundle was exported from.

The only runtime module allowed to import torch, and only inside the constructor, so the rest of
the runtime stays importable on a device without torch (where this backend reports itself
unavailable with the reason).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from alexnet_deploy.deploy.backend import Backend
from alexnet_deploy.deploy.files import sha256_file
from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.errors import BackendUnavailable, CheckpointError

log = logging.getLogger(__name__)


class PtBackend(Backend):
    """Eval-mode PyTorch model on the CPU; ``checkpoint`` overrides manifest.provenance.checkpoint_path."""

    name = "pt"
    precisions = ("fp32",)

    def __init__(self, bundle: str | os.PathLike, precision: str = "fp32", *,
                 checkpoint: str | os.PathLike | None = None, **options) -> None:
        options.pop("provider", None)  # an ort-only option; accepted so load(..., provider=) works on auto
        options.pop("allow_unsafe_int8", None)  # pt runs no int8
        super().__init__(bundle, precision, **options)
        torch = require("torch", package="torch", needed_for="the pt reference backend")
        path = self._checkpoint_path(checkpoint)
        self._check_sha(path)
        from alexnet_deploy.alexnet.checkpoint import load_checkpoint

        try:
            loaded = load_checkpoint(path, classes=self.manifest.classes)
        except CheckpointError as exc:
            raise BackendUnavailable(f"pt reference unusable: {exc}") from exc
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._torch = torch
        self.model = loaded.model.eval()
        self.model_bytes = path.stat().st_size
        self.provider = f"torch {torch.__version__.split('+')[0]} cpu"
        self.checkpoint = path

    def _checkpoint_path(self, explicit: str | os.PathLike | None) -> Path:
        recorded = self.manifest.provenance.get("checkpoint_path")
        if explicit is None and not recorded:
            raise BackendUnavailable("the manifest records no checkpoint_path; pass --checkpoint PT for the "
                                     "pt reference")
        raw = Path(explicit if explicit is not None else recorded)
        # A relative recorded path is tried beside the bundle first, then from the working directory.
        candidates = [raw] if raw.is_absolute() or explicit is not None else [self.bundle / raw, raw]
        for path in candidates:
            if path.is_file():
                return path
        source = "--checkpoint" if explicit is not None else "manifest provenance.checkpoint_path"
        raise BackendUnavailable(f"checkpoint {raw} ({source}) not found; pass --checkpoint PT for the pt reference")

    def _check_sha(self, path: Path) -> None:
        expected = self.manifest.provenance.get("checkpoint_sha256")
        if not expected:
            log.warning("manifest has no checkpoint_sha256; cannot prove %s is the exported model", path)
            return
        actual = sha256_file(path)
        if actual != expected:
            raise BackendUnavailable(f"{path}: sha256 {actual[:12]}… is not the checkpoint this bundle was "
                                     f"exported from ({expected[:12]}…); the pt reference would compare a "
                                     "different model")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).numpy()

    def close(self) -> None:
        self.model = None
