"""Latency and accuracy of every backend x precision x batch, in one table.

Method (mirrors trtexec; docs/tensorrt.md, "Timing"): warm up by time, then time every iteration
(with a device sync for GPU backends) until both ``min_iters`` and ``min_time_s`` are reached;
percentiles use trtexec's definition; throughput is images / host wall time of the timed loop.
Model-only by default (a preprocessed batch already in memory); ``end_to_end`` adds JPEG decode
and preprocessing of real files inside every timed iteration.

Accuracy is computed once per backend x precision on the labelled folder (at the bundle's max
batch) and shared by that pair's rows: top-1/top-5, top-1 agreement with the fp32 reference
(pt if it can run, else ort fp32), right->wrong / wrong->right flips and max |logit diff|.
Without a folder, the bundle's reference.npz (exporter's torch logits) gives agreement only.

Anything that cannot run here still gets rows, with status "unavailable" or "failed" and the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from alexnet_deploy.deploy.backends.base import Backend, backend_class, check_manifest_against_models, resolve_backend
from alexnet_deploy.deploy.bundle import Bundle, Manifest, verify_artifact
from alexnet_deploy.deploy.bundle.npz import load_npz
from alexnet_deploy.deploy.evaluate.compare import Accuracy, compare_logits
from alexnet_deploy.deploy.precision import NAMES
from alexnet_deploy.deploy.precision import precision as precision_row
from alexnet_deploy.deploy.dataset import LabelledFolder, round_robin
from alexnet_deploy.deploy.preprocess import preprocess_kept, preprocess_threaded
from alexnet_deploy.deploy.progress import ProgressCallback, Tally
from alexnet_deploy.deploy.platform.system import system_facts
from alexnet_deploy.deploy.evaluate.timing import CV_WARN, LatencyStats, latency_stats, measure
from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable, DataError

log = logging.getLogger(__name__)

DEFAULT_BACKENDS: tuple[str, ...] = ("pt", "ort", "ov", "pt-cuda", "ort-cuda", "ort-tensorrt", "trt")


@dataclass(frozen=True)
class BenchConfig:
    """What to run; field names follow the CLI flags."""

    backends: tuple[str, ...] = DEFAULT_BACKENDS
    precisions: tuple[str, ...] = NAMES
    batches: tuple[int, ...] = ()          # empty: (1, the bundle's max batch)
    warmup_s: float = 0.2
    min_iters: int = 10
    min_time_s: float = 1.0
    end_to_end: bool = False
    threads: int | None = None
    checkpoint: str | None = None
    data: str | None = None
    max_images: int | None = 1000
    cv_warn: float = CV_WARN
    seed: int = 0
    strict: bool = False                   # an unreadable --data image stops the run instead of being skipped


@dataclass(frozen=True)
class BenchRow:
    """One backend x precision x batch (the fields of docs/architecture.md "Reports" first, then extras)."""

    backend: str
    precision: str
    provider: str = ""
    status: str = "ok"                     # ok | unavailable | failed
    reason: str = ""
    batch: int = 1
    iters: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    throughput_ips: float | None = None
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    n_images: int | None = None
    model_bytes: int | None = None
    cv: float | None = None
    unstable: bool = False
    flips_right_to_wrong: int | None = None
    flips_wrong_to_right: int | None = None
    reference: str | None = None
    mode: str = "model"                    # model | end-to-end
    random_calibration: bool = False
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["warnings"] = list(self.warnings)
        return data


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(BenchRow))


@dataclass(frozen=True)
class BenchReport:
    """``{"system": ..., "config": ..., "rows": [...]}`` as written to JSON."""

    system: dict[str, Any]
    rows: tuple[BenchRow, ...]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"system": self.system, "config": self.config, "rows": [r.to_dict() for r in self.rows]}



# ---- evaluation data -------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSet:
    """Preprocessed images with labels (indices into manifest.classes) and their files."""

    inputs: np.ndarray
    labels: np.ndarray | None
    paths: tuple[Path, ...]
    reference_logits: np.ndarray | None = None   # set when the images came from reference.npz
    source: str = ""
    skipped: tuple[tuple[str, str], ...] = ()    # (path, reason) of unreadable images left out


def load_eval_set(data: str | os.PathLike, manifest: Manifest, max_images: int | None = None,
                  workers: int | None = None, strict: bool = False) -> EvalSet:
    """A labelled folder (class sub-folders named like manifest.classes), class-balanced when capped."""
    samples = LabelledFolder.scan(data, strict).relabelled(manifest.classes, "--data needs folders named like the "
                                                                     "bundle's classes (manifest.json)")
    picked = round_robin(samples, max_images)
    try:
        inputs, kept, bad = preprocess_kept([p for p, _ in picked], manifest.preprocess, workers=workers,
                                            skip=not strict)
    except DataError as exc:
        if not strict:
            raise
        raise DataError(f"{exc} (--strict stops at unreadable files)") from exc
    for path, reason in bad:
        log.warning("skipping %s", reason)
    if not kept:
        raise DataError(f"{data}: none of the {len(picked)} images could be read (first: {bad[0][1]})")
    picked = [picked[i] for i in kept]
    return EvalSet(inputs, np.asarray([c for _, c in picked], dtype=np.int64), tuple(p for p, _ in picked),
                   source=str(data), skipped=tuple(bad))


def load_reference_npz(bundle: Path, manifest: Manifest) -> EvalSet | None:
    """The exporter's golden inputs/logits (reference.npz), or None when the bundle has none."""
    artifact = manifest.artifact("fp32", "npz")
    if artifact is None:
        return None
    path = verify_artifact(bundle, artifact)
    npz = load_npz(path)
    if "inputs" not in npz or "logits" not in npz:
        raise AlexNetDeployError(f"{path}: expected arrays 'inputs' and 'logits'")
    inputs, logits = np.asarray(npz["inputs"], np.float32), np.asarray(npz["logits"], np.float32)
    if len(inputs) == 0 or len(inputs) != len(logits):
        raise AlexNetDeployError(f"{path}: {len(inputs)} inputs and {len(logits)} logits; expected the same "
                                 "number, at least one")
    return EvalSet(inputs, None, (), reference_logits=logits, source=artifact.file)


# ---- one backend x precision -----------------------------------------------------------------

def open_backend(bundle: Path, manifest: Manifest, name: str, precision: str, config: BenchConfig) -> Backend:
    """Construct the backend ``name`` (alias-aware) with the bench's threads/checkpoint options."""
    base, options = resolve_backend(name)
    if base == "pt" and config.checkpoint:
        options["checkpoint"] = config.checkpoint
    return backend_class(base)(bundle, precision, manifest=manifest, threads=config.threads, **options)


def supported_precisions(name: str) -> tuple[str, ...]:
    """Precisions the backend can run at all (pt: fp32; pt-cuda: fp32 and fp16)."""
    base, options = resolve_backend(name)
    return backend_class(base).precisions_for(options)


def latency_input(batch: int, eval_set: EvalSet | None, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A model-only batch: real preprocessed images when there are any (tiled), else seeded noise."""
    if eval_set is not None and len(eval_set.inputs):
        reps = -(-batch // len(eval_set.inputs))
        return np.ascontiguousarray(np.concatenate([eval_set.inputs] * reps)[:batch])
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def time_batch(backend: Backend, batch: int, eval_set: EvalSet | None, config: BenchConfig) -> LatencyStats:
    """Latency of one batch size, model-only or end-to-end (decode + preprocess + infer)."""
    if not config.end_to_end:
        x = latency_input(batch, eval_set, backend.input_shape, config.seed)
        step: Callable[[], object] = lambda: backend.infer(x)
    else:
        if eval_set is None or not eval_set.paths:
            raise DataError("--end-to-end needs --data DIR: it times decoding real image files")
        paths, spec, cursor = eval_set.paths, backend.manifest.preprocess, [0]

        def step() -> object:
            start = cursor[0]
            chunk = [paths[(start + i) % len(paths)] for i in range(batch)]
            cursor[0] = (start + batch) % len(paths)
            return backend.infer(preprocess_threaded(chunk, spec, workers=config.threads))
    times, wall = measure(step, backend.synchronize, warmup_s=config.warmup_s, min_iters=config.min_iters,
                          min_time_s=config.min_time_s)
    return latency_stats(times, batch, wall)


def _accuracy_fields(acc: Accuracy | None, num_classes: int) -> dict[str, Any]:
    if acc is None:
        return {}
    # top-5 of a model with <= 5 classes is always 100 %: report nothing rather than a flattering number.
    return {"top1": acc.top1, "top5": acc.top5 if num_classes > 5 else None, "agreement": acc.agreement,
            "max_abs_diff": acc.max_abs_diff, "flips_right_to_wrong": acc.flips_right_to_wrong,
            "flips_wrong_to_right": acc.flips_wrong_to_right, "n_images": acc.n_images}


def _row_from_stats(base: dict[str, Any], stats: LatencyStats, cv_warn: float) -> BenchRow:
    warnings = list(base.pop("warnings", ()))
    unstable = stats.cv > cv_warn
    if unstable:
        warnings.append(f"unstable: coefficient of variation {stats.cv:.1%} > {cv_warn:.0%} "
                        "(busy machine or unlocked clocks); rerun with a longer --min-time-s")
    timing = {k: getattr(stats, k) for k in ("iters", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
                                             "throughput_ips", "cv")}
    return BenchRow(**base, **timing, unstable=unstable, warnings=tuple(warnings))


def _failed_rows(common: dict[str, Any], batches: Sequence[int], status: str, reason: str) -> list[BenchRow]:
    return [BenchRow(**common, status=status, reason=reason, batch=b) for b in batches]


def _describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, AlexNetDeployError) else f"{exc.__class__.__name__}: {exc}"


def pair_accuracy(backend: Backend, eval_set: EvalSet | None, reference: np.ndarray | None,
                  cached: np.ndarray | None = None) -> Accuracy | None:
    """Accuracy and agreement of one backend on the eval set (None without one)."""
    if eval_set is None:
        return None
    logits = cached if cached is not None else backend.infer_all(eval_set.inputs)
    return compare_logits(logits, eval_set.labels, reference)


def run_pair(bundle: Path, manifest: Manifest, name: str, precision: str, batches: Sequence[int],
             context: "_Context", tally: Tally) -> list[BenchRow]:
    """All rows of one backend x precision; never raises for a backend problem, it becomes a row.
    ``tally`` counts the rows done."""
    config = context.config
    common: dict[str, Any] = {"backend": name, "precision": precision, "mode": "end-to-end" if config.end_to_end
                              else "model", "reference": context.reference_name}
    if precision == "int8" and manifest.calibration.get("random"):
        common.update(random_calibration=True, warnings=("INT8 scales came from RANDOM data "
                                                         "(--allow-random-calibration): latency only, accuracy "
                                                         "is meaningless",))
    pair = f"{name} {precision}"
    tally.update(f"{pair}: loading")
    try:
        backend = open_backend(bundle, manifest, name, precision, config)
    except BackendUnavailable as exc:
        tally.advance(len(batches), f"{pair}: unavailable")
        # A --checkpoint the user named that cannot serve as the pt reference is their error, not
        # a backend this machine lacks.
        status = "failed" if name == "pt" and config.checkpoint else "unavailable"
        return _failed_rows(common, batches, status, str(exc))
    except Exception as exc:  # noqa: BLE001 - a broken backend is a "failed" row, not a crashed bench
        log.debug("opening %s %s failed", name, precision, exc_info=True)
        tally.advance(len(batches), f"{pair}: failed")
        return _failed_rows(common, batches, "failed", _describe_error(exc))
    with backend:
        common.update(provider=backend.provider, model_bytes=backend.model_bytes)
        try:
            tally.update(f"{pair}: accuracy")
            acc = pair_accuracy(backend, context.eval_set, context.reference,
                                context.cache.get((name, precision)))
        except Exception as exc:  # noqa: BLE001
            log.debug("accuracy of %s %s failed", name, precision, exc_info=True)
            tally.advance(len(batches), f"{pair}: failed")
            return _failed_rows(common, batches, "failed", f"accuracy run: {_describe_error(exc)}")
        common.update(_accuracy_fields(acc, backend.num_classes))
        return [_timed_row(backend, b, common, context, tally) for b in batches]


def _timed_row(backend: Backend, batch: int, common: dict[str, Any], context: "_Context",
               tally: Tally) -> BenchRow:
    doing = f"{common['backend']} {common['precision']}: batch {batch}"
    tally.update(doing)
    try:
        stats = time_batch(backend, batch, context.eval_set, context.config)
    except Exception as exc:  # noqa: BLE001
        log.debug("timing failed", exc_info=True)
        return BenchRow(**common, status="failed", reason=f"timing: {_describe_error(exc)}", batch=batch)
    finally:
        tally.advance(1, doing)
    return _row_from_stats({**common, "batch": batch}, stats, context.config.cv_warn)


@dataclass
class _Context:
    config: BenchConfig
    eval_set: EvalSet | None
    reference: np.ndarray | None
    reference_name: str | None
    cache: dict[tuple[str, str], np.ndarray]


def compute_reference(bundle: Path, manifest: Manifest, eval_set: EvalSet | None,
                      config: BenchConfig) -> tuple[np.ndarray | None, str | None, dict]:
    """Reference logits for agreement: reference.npz's, else pt fp32, else ort fp32 (CPU)."""
    if eval_set is None:
        return None, None, {}
    if eval_set.reference_logits is not None:
        return eval_set.reference_logits, f"{eval_set.source} (export-time torch logits)", {}
    for name in ("pt", "ort"):
        try:
            with open_backend(bundle, manifest, name, "fp32", config) as backend:
                logits = backend.infer_all(eval_set.inputs)
            return logits, f"{name} fp32", {(name, "fp32"): logits}
        except BackendUnavailable as exc:
            log.warning("reference %s fp32 unavailable: %s", name, exc)
    return None, None, {}


def resolve_batches(config: BenchConfig, manifest: Manifest) -> tuple[int, ...]:
    """The batch sizes to time: --batch values (checked against max batch) or (1, max batch)."""
    batches = tuple(dict.fromkeys(config.batches or (1, manifest.max_batch)))
    bad = [b for b in batches if not 1 <= b <= manifest.max_batch]
    if bad:
        raise AlexNetDeployError(f"--batch {bad[0]} is outside 1..{manifest.max_batch} (the bundle's max batch; "
                                 "re-export with --max-batch N for larger batches)")
    return batches


def plan_pairs(config: BenchConfig) -> list[tuple[str, str]]:
    """(backend, precision) pairs to run; precisions a backend cannot run at all (pt fp16) are skipped."""
    for precision in config.precisions:
        precision_row(precision)  # an unknown name is refused, naming the flag
    pairs = []
    for name in dict.fromkeys(config.backends):
        supported = supported_precisions(name)
        pairs.extend((name, p) for p in config.precisions if p in supported)
    return pairs


def run_bench(bundle: str | os.PathLike | Bundle, config: BenchConfig = BenchConfig(),
              progress: ProgressCallback | None = None) -> BenchReport:
    """Bench every requested backend x precision x batch of ``bundle``; see the module docstring.

    ``progress`` counts the rows (stage ``bench``), with what is being worked on as the message.
    """
    opened = Bundle.open(bundle)   # a directory, or a packed archive extracted into the cache
    bundle, manifest = opened.path, opened.manifest
    check_manifest_against_models(bundle, manifest, config.precisions)
    batches, pairs = resolve_batches(config, manifest), plan_pairs(config)
    if config.end_to_end and not config.data:
        raise DataError("--end-to-end needs --data DIR: it times decoding and preprocessing real image files")
    tally = Tally(progress, "bench", len(pairs) * len(batches), "rows").update("loading images")
    eval_set = (load_eval_set(config.data, manifest, config.max_images, workers=config.threads,
                              strict=config.strict) if config.data else load_reference_npz(bundle, manifest))
    tally.update("reference logits")
    reference, reference_name, cache = compute_reference(bundle, manifest, eval_set, config)
    context = _Context(config, eval_set, reference, reference_name, cache)
    rows = [row for name, precision in pairs
            for row in run_pair(bundle, manifest, name, precision, batches, context, tally)]
    config_dict = {**dataclasses.asdict(config), "bundle": str(bundle), "batches": list(batches),
                   "skipped_images": [path for path, _ in eval_set.skipped] if eval_set else []}
    return BenchReport(system_facts(config.threads), tuple(rows), config_dict)
