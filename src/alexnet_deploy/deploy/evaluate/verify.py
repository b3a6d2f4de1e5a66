"""Self-verification on the device: is this bundle intact, and does it compute what torch computed?

``verify_bundle`` runs, in order, and reports every check as a row (pass / fail / skip):

1. the manifest: JSON, schema version, artifact kinds and paths that stay inside the bundle;
2. every artifact's sha256 (a corrupted or replaced file is named);
3. the manifest against the fp32 ONNX model itself (covered by its sha256): input/output names
   and shapes, and the class list and preprocessing the exporter stored in the model's metadata,
   so an edited manifest (reordered classes, changed mean/std) is caught;
4. the golden raw images, when ``reference.npz`` keeps them, re-preprocessed with the manifest's
   PreprocessSpec and compared with the stored inputs (catches preprocessing drift);
5. the golden vectors through each chosen backend and precision: top-1 agreement and cosine
   similarity against the stored torch logits, against per-precision thresholds. INT8 is judged
   against ``reference.int8.npz`` instead, the logits of the Q/DQ model's own semantics computed
   at calibration (calibration/golden.py), with tight tolerances: a device whose int8 kernels
   compute something else (e.g. 16-bit saturation on x86 CPUs without VNNI) fails there, and the
   agreement with the torch logits follows as an information row.

Nothing is unpickled: ``reference.npz`` is read with ``allow_pickle=False``. No torch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from alexnet_deploy.deploy.bundle import Bundle, Manifest, read_manifest, verify_artifact
from alexnet_deploy.deploy.bundle.npz import load_npz
from alexnet_deploy.deploy.evaluate.compare import Threshold, compare_logits, cosine_rows
from alexnet_deploy.deploy.platform.cpu import CpuFeatures
from alexnet_deploy.deploy.platform.cpu import detect as detect_cpu
from alexnet_deploy.deploy.onnx.facts import ModelFacts, manifest_mismatches, onnx_metadata_props, read_model_facts
from alexnet_deploy.deploy.precision import NAMES, PRECISIONS
from alexnet_deploy.deploy.preprocess import PreprocessSpec, resize_and_crop, to_chw_float
from alexnet_deploy.deploy.progress import ProgressCallback, Tally
from alexnet_deploy.errors import AlexNetDeployError, BackendUnavailable, BundleError

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.npz"
INT8_REFERENCE_FILE = "reference.int8.npz"
# INFO rows report a number without judging it (int8 against fp32 when the int8 oracle exists).
PASS, FAIL, SKIP, INFO = "pass", "fail", "skip", "info"
# Raw golden images in reference.npz, if the exporter kept them (uint8 HWC RGB, one per input row).
RAW_KEYS = ("raw_crops", "images")


# A device's int8 logits against the int8 model's own semantics (reference.int8.npz). Correct
# kernels differ from it only by rounding ties in requantization (measured on the demo and test
# bundles: mean cosine >= 0.99998, 100 % agreement); saturating kernels (an emulated AVX2-only CPU,
# 8-bit weights) gave mean cosine 0.996-0.997 and 12-41 % agreement on the test bundle.
INT8_ORACLE = Threshold(min_agreement=0.95, min_cosine=0.999)
INT8_ORACLE_ADVICE = ("this device's int8 kernels do not compute what the model means. On x86 CPUs without VNNI "
                      "(AVX2 only), int8 kernels saturate with 8-bit weights: re-calibrate with 7-bit weights "
                      "(`alexnet-deploy calibrate BUNDLE --calib DIR --weight-bits 7`, the default) or run int8 "
                      "where it is exact (TensorRT, a CPU with VNNI/AMX, ARM)")


@dataclass(frozen=True)
class Check:
    """One row of the verify table."""

    check: str          # manifest | sha256 | model metadata | preprocessing | golden | golden vs fp32
    target: str         # file, or "backend precision"
    status: str         # pass | fail | skip | info
    detail: str
    agreement: float | None = None
    cosine: float | None = None
    max_abs_diff: float | None = None


@dataclass(frozen=True)
class VerifyReport:
    """All checks; ``ok`` when none failed and at least one backend ran the golden vectors
    (skips alone do not make a verified bundle)."""

    bundle: Path
    checks: tuple[Check, ...]
    cpu: CpuFeatures = dataclasses.field(default_factory=detect_cpu)

    def to_dict(self) -> dict:
        """JSON-ready form (``verify --json``); ``cpu`` says which int8 code path the device took."""
        return {"bundle": str(self.bundle), "ok": self.ok, "cpu": self.cpu.to_dict(),
                "checks": [dataclasses.asdict(c) for c in self.checks]}

    @property
    def ok(self) -> bool:
        golden = [c for c in self.checks if c.check == "golden"]
        return all(c.status != FAIL for c in self.checks) and any(c.status == PASS for c in golden)


# --------------------------------------------------------------------------- the numbers

def judge_logits(reference: np.ndarray, logits: np.ndarray, threshold: Threshold, target: str) -> Check:
    """Compare a backend's logits with the torch reference; pass when both thresholds hold."""
    acc = compare_logits(logits, reference=reference)
    cos = cosine_rows(reference, logits)
    mean_cos, min_cos = float(cos.mean()), float(cos.min())
    ok = acc.agreement >= threshold.min_agreement and mean_cos >= threshold.min_cosine
    detail = (f"{len(logits)} images; needs agreement >= {threshold.min_agreement:.0%}, mean cosine >= "
              f"{threshold.min_cosine}; worst cosine {min_cos:.6f}")
    return Check("golden", target, PASS if ok else FAIL, detail, acc.agreement, mean_cos, acc.max_abs_diff)


# --------------------------------------------------------------------------- reference.npz

@dataclass(frozen=True)
class Reference:
    """The golden vectors: preprocessed inputs, torch logits, optional raw images."""

    inputs: np.ndarray
    logits: np.ndarray
    raw: tuple[str, np.ndarray] | None = None   # (key, uint8 NHWC)
    int8: "Int8Oracle | None" = None


@dataclass(frozen=True)
class Int8Oracle:
    """reference.int8.npz: the int8 model's own logits on the golden inputs, and which model."""

    logits: np.ndarray
    model_sha256: str


def load_int8_oracle(bundle: str | os.PathLike, manifest: Manifest, n_inputs: int) -> Int8Oracle | None:
    """Read ``reference.int8.npz`` when the manifest lists it (None for bundles calibrated before it existed)."""
    artifact = next((a for a in manifest.artifacts if a.kind == "npz" and Path(a.file).name == INT8_REFERENCE_FILE),
                    None)
    if artifact is None:
        return None
    path = verify_artifact(bundle, artifact)
    try:
        data = load_npz(path)
        logits, sha = data["logits"].astype(np.float32), str(data["model_sha256"])
    except (BundleError, ValueError, KeyError) as exc:
        raise BundleError(f"{artifact.file}: not a readable int8 golden file ({exc}); re-run `alexnet-deploy "
                          "calibrate`") from exc
    if logits.shape != (n_inputs, len(manifest.classes)):
        raise BundleError(f"{artifact.file}: logits have shape {logits.shape}, expected "
                          f"({n_inputs}, {len(manifest.classes)})")
    return Int8Oracle(logits, sha)


def load_reference(bundle: str | os.PathLike, manifest: Manifest) -> Reference:
    """Read ``reference.npz`` (pickle refused) and check its shapes against the manifest."""
    artifact = next((a for a in manifest.artifacts if a.kind == "npz" and Path(a.file).name == REFERENCE_FILE), None)
    if artifact is None:
        raise BundleError(f"{bundle}: the manifest lists no {REFERENCE_FILE}; re-export the bundle to get golden vectors")
    arrays = load_npz(verify_artifact(bundle, artifact))
    for key in ("inputs", "logits"):
        if key not in arrays:
            raise BundleError(f"{artifact.file}: no {key!r} array (found {sorted(arrays)})")
    inputs, logits = arrays["inputs"].astype(np.float32), arrays["logits"].astype(np.float32)
    if len(inputs) == 0:
        raise BundleError(f"{artifact.file}: holds no golden inputs (0 rows); re-export the bundle")
    expected = tuple(manifest.input.shape[1:])
    if inputs.ndim != 4 or tuple(inputs.shape[1:]) != expected:
        raise BundleError(f"{artifact.file}: inputs have shape {inputs.shape}, the manifest input is (N, {expected})")
    if logits.shape != (len(inputs), len(manifest.classes)):
        raise BundleError(f"{artifact.file}: logits have shape {logits.shape}, expected "
                          f"({len(inputs)}, {len(manifest.classes)}) from the manifest's classes")
    raw = next(((k, arrays[k]) for k in RAW_KEYS if k in arrays), None)
    return Reference(inputs, logits, raw, load_int8_oracle(bundle, manifest, len(inputs)))


def check_raw_preprocessing(reference: Reference, spec: PreprocessSpec) -> Check:
    """Re-run the manifest's preprocessing on the stored raw images; they must give the stored inputs.

    ``raw_crops`` (uint8 N x crop x crop x 3, already resized and cropped) checks mean/std;
    ``images`` (uint8 originals of one size) checks resize, crop, mean and std."""
    if reference.raw is None:
        return Check("preprocessing", REFERENCE_FILE, SKIP, "reference.npz keeps no raw images; the model-metadata "
                     "check covers the preprocessing parameters")
    from PIL import Image

    key, raw = reference.raw
    if raw.dtype != np.uint8 or raw.ndim != 4 or raw.shape[-1] != 3 or len(raw) != len(reference.inputs):
        return Check("preprocessing", REFERENCE_FILE, FAIL, f"{key} has shape {raw.shape} {raw.dtype}; "
                     f"expected ({len(reference.inputs)}, H, W, 3) uint8")
    if key == "raw_crops":
        redone = np.stack([to_chw_float(Image.fromarray(img), spec) for img in raw])
    else:
        redone = np.stack([to_chw_float(resize_and_crop(Image.fromarray(img), spec), spec) for img in raw])
    if redone.shape != reference.inputs.shape:
        return Check("preprocessing", REFERENCE_FILE, FAIL, f"manifest preprocessing gives shape {redone.shape}, "
                     f"the golden inputs are {reference.inputs.shape}")
    diff = float(np.max(np.abs(redone - reference.inputs)))
    ok = diff <= 1e-4
    return Check("preprocessing", REFERENCE_FILE, PASS if ok else FAIL,
                 f"manifest preprocessing reproduces the golden inputs from {key} (max diff {diff:.1e})" if ok else
                 f"manifest preprocessing gives different inputs than at export (max diff {diff:.3g}); the "
                 "manifest's resize/crop/mean/std was changed or does not match the model")


# --------------------------------------------------------------------------- manifest vs model

def check_model_metadata(bundle: Path, manifest: Manifest) -> list[Check]:
    """The manifest against each ONNX it lists (the models are covered by their sha256): the
    classes and preprocessing stored in every model, and the fp32 model's I/O names and shapes."""
    onnx_files = [a for a in manifest.artifacts if a.kind == "onnx"]
    onnx_files.sort(key=lambda a: a.precision != "fp32")   # the fp32 model first: its I/O is read
    if not onnx_files:
        return [Check("model metadata", "-", SKIP, "no ONNX model in the bundle")]
    return [_check_one_model(bundle, manifest, artifact, with_io=i == 0) for i, artifact in enumerate(onnx_files)]


def _check_one_model(bundle: Path, manifest: Manifest, artifact, with_io: bool) -> Check:
    try:
        path = bundle / artifact.file
        facts = read_model_facts(path) if with_io else ModelFacts(None, (), None, (), onnx_metadata_props(path))
        problems = manifest_mismatches(manifest, facts)
    except (AlexNetDeployError, OSError, ValueError, KeyError, TypeError) as exc:
        return Check("model metadata", artifact.file, FAIL, f"cannot compare with the manifest: {exc}")
    if problems:
        return Check("model metadata", artifact.file, FAIL, "manifest.json was edited: " + "; ".join(problems))
    checked = (["I/O names and shapes"] if facts.input_name is not None else []) + [
        k for k in ("classes", "preprocess") if k in facts.metadata]
    if not checked:
        return Check("model metadata", artifact.file, SKIP, "the model stores no classes/preprocess metadata"
                     + (" and neither onnxruntime nor onnx is installed to read its I/O" if with_io else ""))
    return Check("model metadata", artifact.file, PASS, f"{', '.join(checked)} match the manifest")


# --------------------------------------------------------------------------- golden vectors

def run_golden(bundle: Path, reference: Reference, backend: str, precision: str, *, explicit: bool,
               thresholds: dict[str, Threshold]) -> list[Check]:
    """The golden inputs through one backend/precision, judged against the torch logits (int8:
    against the int8 model's own semantics, plus an information row against torch)."""
    from alexnet_deploy.deploy.backends.base import load

    target = f"{backend} {precision}"
    try:
        model = load(bundle, backend=backend, precision=precision)
    except BackendUnavailable as exc:
        # Asked for by name: not being able to run it is a failure. Picked by default: a skip.
        return [Check("golden", target, FAIL if explicit else SKIP, f"unavailable: {exc}")]
    except AlexNetDeployError as exc:   # e.g. the artifact's sha256 does not match
        return [Check("golden", target, FAIL, str(exc))]
    with model:
        target = f"{model.name} {precision}"
        try:
            logits = model.infer_all(reference.inputs)
        except AlexNetDeployError as exc:
            return [Check("golden", target, FAIL, str(exc))]
        int8_sha = model.manifest.artifact("int8", "onnx").sha256 if precision == "int8" else None
    if precision == "int8" and reference.int8 is not None:
        return _judge_int8(reference, logits, target, model.provider, int8_sha)
    check = judge_logits(reference.logits, logits, thresholds[precision], target)
    return [dataclasses.replace(check, detail=f"{model.provider}; {check.detail}")]


def _judge_int8(reference: Reference, logits: np.ndarray, target: str, provider: str, int8_sha: str | None) -> list[Check]:
    """int8 against its oracle (pass/fail), then against the torch logits (information)."""
    if reference.int8.model_sha256 != int8_sha:
        return [Check("golden", target, FAIL, f"{INT8_REFERENCE_FILE} was computed for another int8 model "
                      f"(sha256 {reference.int8.model_sha256[:12]}…); re-run `alexnet-deploy calibrate`")]
    oracle = judge_logits(reference.int8.logits, logits, INT8_ORACLE, target)
    detail = f"{provider}; vs the int8 model's own semantics ({INT8_REFERENCE_FILE}): {oracle.detail}"
    if oracle.status == FAIL:
        detail += f". {INT8_ORACLE_ADVICE}"
    vs_fp32 = judge_logits(reference.logits, logits, PRECISIONS["int8"].golden, target)
    info = dataclasses.replace(vs_fp32, check="golden vs fp32", status=INFO,
                               detail=f"int8 against the torch fp32 logits (information: quantization error, "
                                      f"judged at calibration); {len(logits)} images")
    return [dataclasses.replace(oracle, detail=detail), info]


def _default_precisions(manifest: Manifest) -> list[str]:
    have = {a.precision for a in manifest.artifacts if a.kind in ("onnx", "trt-plan")}
    return [p for p in NAMES if p in have]


# --------------------------------------------------------------------------- the whole check

def _artifact_checks(bundle: Path, manifest: Manifest) -> list[Check]:
    checks = []
    for artifact in manifest.artifacts:
        try:
            verify_artifact(bundle, artifact)
            checks.append(Check("sha256", artifact.file, PASS, f"{artifact.kind} {artifact.precision}, "
                                f"{artifact.bytes / 1e6:.1f} MB, {artifact.sha256[:12]}…"))
        except BundleError as exc:
            checks.append(Check("sha256", artifact.file, FAIL, str(exc)))
    return checks


def _open(source: Path) -> tuple[Path | None, Check | None]:
    from alexnet_deploy.deploy.bundle.archive import is_archive, open_bundle

    if not is_archive(source):
        return source, None
    try:
        return open_bundle(source), Check("archive", source.name, PASS, "extracted safely and checked")
    except BundleError as exc:
        return None, Check("archive", source.name, FAIL, str(exc))


def verify_bundle(source: str | os.PathLike | Bundle, backends: Sequence[str] = ("auto",),
                  precisions: Sequence[str] | None = None, *, thresholds: dict[str, Threshold] | None = None,
                  progress: ProgressCallback | None = None) -> VerifyReport:
    """Check a bundle directory or packed archive; every check becomes a row (see module docstring).

    ``progress`` counts the checks as they finish (stage ``verify``, total unknown; the message
    is the check, its target and its status); without it each check is logged at info level."""
    thresholds = {name: row.golden for name, row in PRECISIONS.items()} | (thresholds or {})
    unknown = [p for p in precisions or () if p not in thresholds]
    if unknown:
        raise AlexNetDeployError(f"--precision {unknown[0]!r}: expected one of {sorted(thresholds)}")
    if isinstance(source, Bundle):
        source = source.path
    if not Path(source).exists():
        raise BundleError(f"{source}: not found; expected a bundle directory or a .tar.gz made by `alexnet-deploy pack`")
    checks: list[Check] = []
    tally = Tally(progress, "verify", unit="checks")

    def add(check: Check) -> None:
        checks.append(check)
        if progress is None:
            log.info("%s %s: %s", check.check, check.status, check.detail)
        tally.advance(message=f"{check.check} {check.target}: {check.status}")

    bundle, opened = _open(Path(source))
    if opened:
        add(opened)
    if bundle is not None:
        for check in _bundle_checks(bundle, backends, precisions, thresholds):
            add(check)
    return VerifyReport(bundle or Path(source), tuple(checks))


def _bundle_checks(bundle: Path, backends: Sequence[str], precisions: Sequence[str] | None,
                   thresholds: dict[str, Threshold]) -> Iterator[Check]:
    """The checks in order; stops early when what follows cannot be trusted (no manifest, no reference)."""
    try:
        manifest = read_manifest(bundle)
    except AlexNetDeployError as exc:
        yield Check("manifest", "manifest.json", FAIL, str(exc))
        return
    yield Check("manifest", "manifest.json", PASS, f"schema {manifest.schema}, {len(manifest.classes)} classes, "
                f"{len(manifest.artifacts)} artifacts, paths inside the bundle")
    yield from _artifact_checks(bundle, manifest)
    yield from check_model_metadata(bundle, manifest)
    try:
        reference = load_reference(bundle, manifest)
    except BundleError as exc:
        yield Check("golden", REFERENCE_FILE, FAIL, str(exc))
        return
    yield check_raw_preprocessing(reference, manifest.preprocess)
    for backend in backends:
        for precision in precisions or _default_precisions(manifest):
            yield from run_golden(bundle, reference, backend, precision, thresholds=thresholds,
                                  explicit=backend != "auto" and precisions is not None)
