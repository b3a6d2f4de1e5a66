"""PyTorch backend: the fp32 reference, from the checkpoint the bundle was exported from, or from
a checkpoint alone (``load("best.pt")``, what ``alexnet-deploy predict CHECKPOINT`` runs).

The only runtime module allowed to import torch, and only inside the constructor, so the rest of
the runtime stays importable on a device without torch (where this backend reports itself
unavailable with the reason).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alexnet_deploy.deploy.backends.base import Backend
from alexnet_deploy.deploy.bundle import Manifest, TensorSpec
from alexnet_deploy.deploy.bundle.files import sha256_file
from alexnet_deploy.deploy.lazy import require
from alexnet_deploy.errors import BackendUnavailable, CheckpointError

if TYPE_CHECKING:
    from alexnet_deploy.alexnet.checkpoint import LoadedCheckpoint

log = logging.getLogger(__name__)

# The exporter's tensor names (export/onnx.py); pt runs no graph, so here they only label the shapes.
_INPUT_NAME, _OUTPUT_NAME = "input", "logits"


class PtBackend(Backend):
    """Eval-mode PyTorch model; ``checkpoint`` overrides manifest.provenance.checkpoint_path.

    ``device="cpu"`` (``pt``) runs fp32, the reference. ``device="cuda"`` (``pt-cuda``) runs fp32 or
    fp16 (half weights) on the GPU in channels_last: what a GPU-server user compares TensorRT with.
    ``cuda_graphs=True`` (``pt-cuda-graphs``) replays one captured CUDA graph per batch shape instead
    of launching each kernel from Python: the same arithmetic, less launch overhead at small batches.
    ``loaded`` is a checkpoint ``from_checkpoint`` has already read, so the file is loaded once."""

    name = "pt"
    precisions = ("fp32", "fp16")

    def __init__(self, bundle: str | os.PathLike, precision: str = "fp32", *,
                 checkpoint: str | os.PathLike | None = None, loaded: LoadedCheckpoint | None = None,
                 device: str = "cpu", cuda_graphs: bool = False, **options) -> None:
        options.pop("provider", None)  # an ort-only option; accepted so load(..., provider=) works on auto
        options.pop("allow_unsafe_int8", None)  # pt runs no int8
        super().__init__(bundle, precision, **options)
        torch = require("torch", package="torch", needed_for="the pt reference backend")
        self._check_device(torch, device, precision)
        if cuda_graphs and device != "cuda":
            raise BackendUnavailable("CUDA graphs need the pt backend on a GPU (pt-cuda-graphs)")
        if loaded is None:
            loaded = self._load_exported(checkpoint)
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._torch, self.device = torch, device
        self.model = _placed(loaded.model.eval(), torch, device, precision)
        self._graphs = GraphReplay(self.model, torch) if cuda_graphs else None
        self.model_bytes = loaded.path.stat().st_size
        self.provider = (f"torch {torch.__version__.split('+')[0]} {_device_name(torch, device)}"
                         + (", CUDA graphs" if cuda_graphs else ""))
        self.checkpoint = loaded.path

    @classmethod
    def precisions_for(cls, options) -> tuple[str, ...]:
        return cls.precisions if options.get("device") == "cuda" else ("fp32",)

    @staticmethod
    def _check_device(torch, device: str, precision: str) -> None:
        if device not in ("cpu", "cuda"):
            raise BackendUnavailable(f"pt device {device!r}: expected cpu or cuda")
        if device == "cpu" and precision != "fp32":
            raise BackendUnavailable(f"pt runs {precision} only on a GPU (pt-cuda); on the CPU it is the fp32 "
                                     "reference")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"pt-cuda needs a CUDA GPU: torch {torch.__version__} sees none "
                                     f"(torch.cuda.is_available() is False)")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, precision: str = "fp32", *, arch: str | None = None,
                        num_classes: int | None = None, **options) -> PtBackend:
        """A checkpoint without a bundle: its classes and preprocessing stand in for the manifest.
        ``arch``/``num_classes`` are for a plain state_dict (see ``load_checkpoint``). A bad file
        raises its CheckpointError as is: no other backend could run it instead."""
        require("torch", package="torch", needed_for=f"running the checkpoint {path} (a bundle made by "
                                                     "`alexnet-deploy export` runs without it)")
        from alexnet_deploy.alexnet.checkpoint import load_checkpoint

        loaded = load_checkpoint(path, arch=arch, num_classes=num_classes)
        return cls(loaded.path, precision, manifest=checkpoint_manifest(loaded), loaded=loaded, **options)

    def _load_exported(self, explicit: str | os.PathLike | None) -> LoadedCheckpoint:
        """The checkpoint the bundle records (or ``explicit``), proven by its sha256 to be the exported one."""
        path = self._checkpoint_path(explicit)
        self._check_sha(path)
        from alexnet_deploy.alexnet.checkpoint import load_checkpoint

        try:
            return load_checkpoint(path, classes=self.manifest.classes)
        except CheckpointError as exc:
            raise BackendUnavailable(f"pt reference unusable: {exc}") from exc

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
        if self.device == "cpu":
            with torch.inference_mode():
                return self.model(torch.from_numpy(batch)).numpy()
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        with torch.no_grad():   # not inference mode: CUDA graphs capture and replay plain tensors
            inputs = torch.from_numpy(batch).pin_memory().to("cuda", dtype=dtype, non_blocking=True,
                                                              memory_format=torch.channels_last)
            run = self._graphs or self.model
            return run(inputs).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    def close(self) -> None:
        self.model = self._graphs = None


class GraphReplay:
    """``model`` replayed from CUDA graphs, one captured per input shape on its first call.

    A graph reads its input from, and writes its output to, fixed GPU tensors: each call copies the
    batch into the captured input and returns the captured output, which the next call overwrites
    (the caller copies it to the host first). Graphs share one memory pool. Capturing follows
    torch.cuda.graph's rules: warm-up runs on a side stream first (cuDNN's algorithm choice and the
    first allocations must not be captured)."""

    WARMUP_RUNS = 3

    def __init__(self, model, torch) -> None:
        self.model, self._torch = model, torch
        self._captured: dict[tuple[int, ...], tuple] = {}
        self._pool = None

    def __call__(self, inputs):
        key = tuple(inputs.shape)
        if key not in self._captured:
            self._captured[key] = self._capture(inputs)
        static_input, graph, static_output = self._captured[key]
        static_input.copy_(inputs)
        graph.replay()
        return static_output

    def _capture(self, example) -> tuple:
        torch = self._torch
        with torch.no_grad():
            static_input = example.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP_RUNS):
                    self.model(static_input)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_output = self.model(static_input)
        self._pool = graph.pool()
        return static_input, graph, static_output


def _placed(model, torch, device: str, precision: str):
    """The eval model where it runs: unchanged on the CPU; on CUDA in channels_last, half for fp16."""
    if device == "cpu":
        return model
    model = model.to("cuda", memory_format=torch.channels_last)
    return model.half() if precision == "fp16" else model


def _device_name(torch, device: str) -> str:
    return "cpu" if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})"


def checkpoint_manifest(loaded: LoadedCheckpoint) -> Manifest:
    """What an exported bundle's manifest would say about ``loaded``'s model (shapes, classes,
    preprocessing, provenance), with no artifacts: enough for the pt backend to run it."""
    crop = loaded.preprocess.crop
    return Manifest(classes=loaded.classes, input=TensorSpec(_INPUT_NAME, (-1, 3, crop, crop)),
                    output=TensorSpec(_OUTPUT_NAME, (-1, loaded.num_classes)), preprocess=loaded.preprocess,
                    arch=loaded.arch, provenance={"checkpoint_path": str(loaded.path),
                                                  "checkpoint_sha256": loaded.sha256})
