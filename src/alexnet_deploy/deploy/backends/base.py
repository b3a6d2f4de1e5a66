"""The backend lifecycle and the registry: one base class, one module + one class per backend.

A backend is constructed ready to run (the model is loaded, sessions/buffers allocated) or raises
BackendUnavailable with the reason it cannot run here. ``infer()`` validates the batch once and
calls the subclass's ``_infer()``; every backend returns float32 logits of shape (N, classes).

    >>> from alexnet_deploy.deploy import load
    >>> model = load("bundle/")                     # the fastest runtime here for the precision (AUTO_ORDER)
    >>> model.classify(["cat.jpg"], topk=3)[0].label

The registry maps a name to "module:Class" and imports the module only when asked, so importing
this module never imports torch, onnxruntime or tensorrt.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from alexnet_deploy.deploy.bundle import Bundle, Manifest, read_manifest, safe_path, verify_artifact
from alexnet_deploy.deploy.bundle.archive import is_archive
from alexnet_deploy.deploy.precision import NAMES
from alexnet_deploy.deploy.preprocess import one_ahead, preprocess_kept, softmax
from alexnet_deploy.deploy.onnx.facts import ModelFacts, manifest_mismatches, onnx_metadata_props
from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable, BundleError

log = logging.getLogger(__name__)

# name -> "module:Class". A dict, not an elif chain: adding a backend is one line here + one module.
BACKENDS: dict[str, str] = {
    "pt": "alexnet_deploy.alexnet.backend:PtBackend",
    "ort": "alexnet_deploy.deploy.backends.ort:OrtBackend",
    "trt": "alexnet_deploy.deploy.trt.backend:TrtBackend",
    "ov": "alexnet_deploy.deploy.backends.ov:OvBackend",
}

# Shorthands that pick a backend plus an option, e.g. "ort-cuda" = ort with provider="cuda".
BACKEND_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "ort-cpu": ("ort", {"provider": "cpu"}),
    "ort-cuda": ("ort", {"provider": "cuda"}),
    "ort-tensorrt": ("ort", {"provider": "tensorrt"}),
    "ort-trt": ("ort", {"provider": "tensorrt"}),
    "pt-cuda": ("pt", {"device": "cuda"}),
    "pt-cuda-graphs": ("pt", {"device": "cuda", "cuda_graphs": True}),
}

# load(backend="auto") tries these in order, per precision, and keeps the first that constructs:
# the fastest runtime this machine has for that precision. On a GPU, TensorRT, then ONNX Runtime's
# CUDA provider. On a CPU, ONNX Runtime for float models (batch 1: it measured faster than OpenVINO
# on AlexNet-2012) and OpenVINO for int8 Q/DQ models (AlexNet-2012, 227 px, batch 1: 3.30 ms against
# ONNX Runtime's 5.88 ms), each falling back to the other when it is not installed.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "fp32": ("trt", "ort-cuda", "ort-cpu", "ov"),
    "fp16": ("trt", "ort-cuda", "ort-cpu", "ov"),
    "int8": ("trt", "ort-cuda", "ov", "ort-cpu"),
}
AUTO_WHY: dict[str, str] = {
    "trt": "a TensorRT engine on this GPU, the fastest runtime where it exists",
    "ort-cuda": "ONNX Runtime on this GPU (TensorRT cannot run here)",
    "ort-cpu": "ONNX Runtime, the fastest installed CPU runtime for float models at batch 1",
    "ov": "OpenVINO, the fastest installed CPU runtime for int8 models",
}


@dataclass(frozen=True)
class Prediction:
    """One image's result: the best label, its probability, the top-k (label, probability) and
    the image's path when it was given one."""

    label: str
    probability: float
    topk: tuple[tuple[str, float], ...]
    path: str | None = None

    def to_dict(self) -> dict:
        """``{"path", "top": [{"class", "probability"}]}``, the `predict --json` format."""
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.topk]}


class Backend:
    """Base class: subclasses set ``name``/``precisions`` and implement ``_infer`` (and ``close``)."""

    name: ClassVar[str] = "base"
    precisions: ClassVar[tuple[str, ...]] = NAMES
    # GPU backends override synchronize(); bench calls it after every timed iteration.
    #: Set by load(backend="auto"): which backend it picked and why.
    chosen: str = ""
    _closed: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every backend's close() drops its session/engine; mark the object closed first so a
        # later infer() says so instead of failing inside the backend with an AttributeError.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("close")
        if own is not None:
            @functools.wraps(own)
            def close(self, _own=own) -> None:
                self._closed = True
                _own(self)
            cls.close = close

    def __init__(self, bundle: str | os.PathLike, precision: str = "fp32", *, manifest: Manifest | None = None,
                 threads: int | None = None) -> None:
        if precision not in self.precisions:
            raise BackendUnavailable(f"backend {self.name!r} runs {'/'.join(self.precisions)}, not {precision!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise AlexNetDeployError(f"threads={threads!r}: expected a positive integer (or None for the default)")
        self.bundle = Path(bundle)
        self.manifest = manifest or read_manifest(bundle)
        self.precision = precision
        self.threads = threads
        self.provider = self.name       # subclasses refine, e.g. "CPUExecutionProvider"
        self.model_bytes = 0            # size of what was loaded (artifact, engine or checkpoint)

    # -- shapes -------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) from the manifest; the batch dimension is dynamic."""
        return tuple(int(d) for d in self.manifest.input.shape[1:])  # type: ignore[return-value]

    @property
    def max_batch(self) -> int:
        return int(self.manifest.max_batch)

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    # -- running ------------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (float32, shape (N, classes)) for a preprocessed float32 NCHW batch, 1 <= N <= max_batch."""
        if self._closed:
            raise AlexNetDeployError(f"{self.name} {self.precision}: infer() after close(); open the bundle "
                                     "again with alexnet_deploy.deploy.load()")
        self._check_batch(batch)
        _check_finite(batch, f"{self.name} {self.precision}")
        logits = np.asarray(self._infer(np.ascontiguousarray(batch)))
        if logits.shape != (batch.shape[0], self.num_classes):
            raise AlexNetDeployError(f"{self.name} {self.precision}: model returned shape {logits.shape}, expected "
                                     f"{(batch.shape[0], self.num_classes)}; the artifact does not match the manifest")
        return logits.astype(np.float32, copy=False)

    def infer_all(self, inputs: np.ndarray) -> np.ndarray:
        """Logits for any number of images, run in chunks of at most ``max_batch``."""
        chunks = [self.infer(inputs[i:i + self.max_batch]) for i in range(0, len(inputs), self.max_batch)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.num_classes), np.float32)

    def classify(self, images: Iterable[Any], topk: int = 5, workers: int | None = None,
                 skipped: list[tuple[str, str]] | None = None) -> list[Prediction]:
        """Decode + preprocess (the manifest's PreprocessSpec) + infer + softmax for image paths, PIL
        images or HWC uint8 arrays (one, or an iterable of them); one Prediction per image, in order.
        An unreadable image raises DataError naming it, unless a ``skipped`` list is given: then it
        is left out of the results and appended there as (path, reason). Images are decoded
        ``max_batch`` at a time, so a large folder never sits in memory as one float array, and the
        next chunk is decoded while this one is inferred (on a GPU the two then overlap fully)."""
        if isinstance(images, (str, os.PathLike)) or hasattr(images, "getpixel") or (
                isinstance(images, np.ndarray) and images.ndim in (2, 3)):   # a single image
            images = [images]
        items = list(images)
        if int(topk) < 1:
            raise AlexNetDeployError(f"--topk must be >= 1, got {topk}")
        chunks = [items[start:start + self.max_batch] for start in range(0, len(items), self.max_batch)]
        spec, skip = self.manifest.preprocess, skipped is not None
        decoded = one_ahead(lambda chunk: preprocess_kept(chunk, spec, workers=workers, skip=skip), chunks)
        results: list[Prediction] = []
        for chunk, (batch, kept, bad) in zip(chunks, decoded):
            if skip:
                skipped.extend(bad)
            if len(kept):
                results.extend(self._predictions(softmax(self.infer(batch)), [chunk[i] for i in kept], int(topk)))
        return results

    def _predictions(self, probs: np.ndarray, items: Sequence[Any], topk: int) -> list[Prediction]:
        k, classes = min(topk, self.num_classes), self.manifest.classes
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [Prediction(classes[idx[0]], float(row[idx[0]]), tuple((classes[j], float(row[j])) for j in idx),
                           str(item) if isinstance(item, (str, os.PathLike)) else None)
                for row, idx, item in zip(probs, order, items)]

    @classmethod
    def precisions_for(cls, options: dict[str, Any]) -> tuple[str, ...]:
        """The precisions this backend runs with these constructor options (an alias's, e.g. a device)."""
        return cls.precisions

    def synchronize(self) -> None:
        """Wait for queued device work (no-op for host backends)."""

    def close(self) -> None:
        """Release sessions, buffers and streams. Safe to call twice."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """One line for logs and example scripts: backend, precision and what runs it."""
        return f"{self.name} {self.precision} ({self.provider})"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_batch(self, batch: Any) -> None:
        where = f"{self.name} {self.precision}"
        if not isinstance(batch, np.ndarray):
            raise AlexNetDeployError(f"{where}: infer() takes a numpy array, got {type(batch).__name__}; "
                                     "use alexnet_deploy.deploy.preprocess() to make one")
        if batch.dtype != np.float32:
            raise AlexNetDeployError(f"{where}: input dtype is {batch.dtype}, expected float32 (preprocess() output)")
        expected = self.input_shape
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise AlexNetDeployError(f"{where}: input shape is {tuple(batch.shape)}, expected (N, "
                                     f"{', '.join(map(str, expected))}) NCHW")
        if not 1 <= batch.shape[0] <= self.max_batch:
            raise AlexNetDeployError(f"{where}: batch size {batch.shape[0]} is outside 1..{self.max_batch} "
                                     "(the bundle's max batch); use infer_all() for more")


def resolve_backend(name: str) -> tuple[str, dict[str, Any]]:
    """'ort-cuda' -> ('ort', {'provider': 'cuda'}); a registered name maps to itself."""
    if name in BACKEND_ALIASES:
        base, options = BACKEND_ALIASES[name]
        return base, dict(options)
    if name in BACKENDS:
        return name, {}
    known = sorted(set(BACKENDS) | set(BACKEND_ALIASES) | {"auto"})
    raise AlexNetDeployError(f"unknown backend {name!r}; expected one of {', '.join(known)}")


def backend_class(name: str) -> type[Backend]:
    """Import and return the class registered under ``name`` (the import happens only here)."""
    module_name, _, class_name = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def check_manifest_against_models(bundle: str | os.PathLike, manifest: Manifest,
                                  precisions: Sequence[str] | None = None) -> None:
    """Refuse a manifest whose classes or preprocessing differ from what the exporter stored in the
    ONNX models (of ``precisions``, default all; each is covered by its sha256): an edited manifest
    would otherwise run with wrong labels or pixels. Reads only the models' metadata, a few bytes each."""
    for artifact in manifest.artifacts:
        path = safe_path(bundle, artifact.file)
        if artifact.kind != "onnx" or not path.is_file() or (precisions and artifact.precision not in precisions):
            continue   # a missing file is reported by the backend that needs it
        try:
            problems = manifest_mismatches(manifest, ModelFacts(None, (), None, (), onnx_metadata_props(path)))
        except (OSError, ValueError, TypeError, AlexNetDeployError) as exc:
            verify_artifact(bundle, artifact)   # a damaged file is named as such first
            raise BundleError(f"{artifact.file}: not a readable ONNX model ({exc}); re-copy or re-export "
                              "the bundle") from exc
        if problems:
            raise BundleError(f"{Path(bundle) / 'manifest.json'} does not match {artifact.file}: "
                              f"{'; '.join(problems)}; the manifest was edited after export: restore it "
                              f"(re-copy the bundle or re-export), `alexnet-deploy verify {bundle}` shows every check")


def load(bundle: str | os.PathLike | Bundle, backend: str = "auto", precision: str = "fp32", **options: Any) -> Backend:
    """Open ``bundle`` on ``backend`` ("auto", "pt", "ort", "ort-cpu", "ort-cuda", "ort-tensorrt", "trt", "ov").

    ``bundle`` is a bundle directory, a packed bundle (.tar.gz) or a checkpoint file. ``options`` go
    to the backend: ``threads``, ``provider`` (ort), ``checkpoint`` (pt on a bundle), ``arch`` and
    ``num_classes`` (a checkpoint). With "auto", the fastest backend installed for ``precision`` that can
    run here wins (see AUTO_ORDER; the backend's ``chosen`` says which and why); if none can, the
    error lists every reason. A checkpoint has no exported model for
    the other backends, so it runs on pt ("auto" picks it), with the classes and preprocessing
    stored in it.
    """
    if not isinstance(bundle, Bundle):
        path = Path(bundle)
        if not path.exists():
            raise AlexNetDeployError(f"{bundle}: no such bundle directory, packed bundle or checkpoint file")
        if path.is_file() and not is_archive(path):
            return _load_checkpoint(path, backend, precision, options)
    opened = Bundle.open(bundle)   # an archive is extracted safely, once, into the cache
    bundle, manifest = opened.path, opened.manifest
    check_manifest_against_models(bundle, manifest, (precision,))
    if backend != "auto":
        base, alias_options = resolve_backend(backend)
        return backend_class(base)(bundle, precision, manifest=manifest, **{**alias_options, **options})
    return _load_auto(bundle, manifest, precision, options)


def _load_auto(bundle: str | os.PathLike, manifest: Manifest, precision: str, options: dict[str, Any]) -> Backend:
    """The first backend of AUTO_ORDER[precision] that runs here; ``chosen`` on it says which and why."""
    skipped = []
    for name in AUTO_ORDER.get(precision, AUTO_ORDER["fp32"]):
        base, alias_options = resolve_backend(name)
        try:
            model = backend_class(base)(bundle, precision, manifest=manifest, **{**alias_options, **options})
        except BackendUnavailable as exc:
            log.info("backend %s unavailable: %s", name, exc)
            skipped.append(f"{name}: {exc}")
            continue
        model.chosen = f"auto picked {name} for {precision}: {AUTO_WHY[name]}" + (
            f" (not available here: {', '.join(s.split(':', 1)[0] for s in skipped)})" if skipped else "")
        log.info("%s", model.chosen)
        return model
    raise BackendUnavailable(f"no backend can run {bundle} at {precision}: " + "; ".join(skipped))


def _load_checkpoint(path: Path, backend: str, precision: str, options: dict[str, Any]) -> Backend:
    """``load`` for a checkpoint file: the pt backend, which reads the checkpoint's own metadata."""
    if backend not in ("auto", "pt"):
        raise AlexNetDeployError(f"{path} is a checkpoint: it runs on the pt backend, not {backend!r}; "
                                 f"`alexnet-deploy export {path}` makes a bundle for {backend}")
    return backend_class("pt").from_checkpoint(path, precision, **options)


def _check_finite(batch: np.ndarray, where: str) -> None:
    """Refuse NaN/inf inputs: int8 and fp16 models turn them into plausible-looking logits.
    One sum is the fast path (it is finite for any real image); only a non-finite sum is looked at
    element by element, so a sum that merely overflowed is not refused."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(batch, axis=None)
    if np.isfinite(total):
        return
    bad = int(batch.size - np.count_nonzero(np.isfinite(batch)))
    if bad:
        raise AlexNetDeployError(f"{where}: the input holds {bad} NaN/inf values; expected finite float32 "
                                 "pixels from alexnet_deploy.deploy.preprocess()")
