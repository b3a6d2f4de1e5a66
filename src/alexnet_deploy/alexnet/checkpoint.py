"""Checkpoints: save with metadata (atomically), load safely (always ``weights_only=True``).

A checkpoint is a ``torch.save`` dict::

    state_dict, arch, num_classes, classes, preprocess (PreprocessSpec.to_dict()), config, epoch,
    metrics, versions, width  [+ optimizer_state, scheduler_state, scaler_state, rng_state for --resume]

``width`` (the model's channel/FC width multiplier) rebuilds the same model; checkpoints written
before it was recorded are width 1.0.

Everything in it is plain Python (str, int, float, bool, None, list, dict) or a tensor, so it loads
with the safe ``weights_only`` unpickler. ``load_checkpoint`` also accepts a plain state_dict (e.g.
torchvision's downloaded ``alexnet`` weights, or one saved from ``nn.DataParallel``).
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from alexnet_deploy.alexnet.model import ARCHS, DEFAULT_INPUT, build_model
from alexnet_deploy.deploy.bundle.files import atomic_path, sha256_file
from alexnet_deploy.deploy.preprocess import PreprocessSpec
from alexnet_deploy.errors import CheckpointError

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("state_dict", "arch", "num_classes", "classes", "preprocess", "config", "epoch",
                 "metrics", "versions")
# Wrapper segments that DataParallel / DDP / torch.compile insert into state_dict keys.
_WRAPPER_SEGMENTS = frozenset({"module", "_orig_mod"})


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A loaded checkpoint: the model (eval mode, on ``map_location``) and its metadata."""

    model: nn.Module
    arch: str
    num_classes: int
    classes: tuple[str, ...]
    preprocess: PreprocessSpec
    config: dict
    epoch: int
    metrics: dict
    sha256: str
    path: Path
    raw: dict = field(repr=False)
    width: float = 1.0


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, arch: str, classes: Sequence[str],
                    preprocess: PreprocessSpec, config: Mapping[str, Any], epoch: int,
                    metrics: Mapping[str, Any], optimizer_state: dict | None = None,
                    scheduler_state: dict | None = None, scaler_state: dict | None = None,
                    rng_state: dict | None = None, history: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write a checkpoint atomically (a killed run never leaves a half-written file).
    The width is read from the model, so it always matches the saved weights. ``history`` (every
    epoch's metrics row so far) makes ``last.pt`` the one commit point of a run: resume reads the
    history from it, so no epoch can be lost or doubled between the checkpoint and metrics.jsonl."""
    model = getattr(model, "module", model)  # unwrap DDP / DataParallel
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {
        "state_dict": state,
        "arch": arch,
        "num_classes": len(classes),
        "classes": [str(c) for c in classes],
        "preprocess": preprocess.to_dict(),
        "config": plain(dict(config)),
        "epoch": int(epoch),
        "metrics": plain(dict(metrics)),
        "versions": versions(),
        "width": float(getattr(model, "width", 1.0)),  # torchvision's own class (width 1.0) has none
    }
    optional = {"optimizer_state": optimizer_state, "scheduler_state": scheduler_state,
                "scaler_state": scaler_state, "rng_state": rng_state,
                "history": None if history is None else plain([dict(row) for row in history])}
    payload.update({k: v for k, v in optional.items() if v is not None})
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (RuntimeError, OSError) as exc:
        raise _write_error(path, exc) from exc
    return path


def _write_error(path: Path, exc: BaseException) -> CheckpointError:
    """torch.save reports a full disk as RuntimeError("[enforce fail at inline_container.cc] ... file
    write failed"): say which file, that the disk is full, and that the previous one is kept."""
    free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
    # torch's C++ writer words it "file write failed" or "unexpected pos A vs B"; what they share is
    # a file system with (next to) no room left.
    full = (getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or (isinstance(exc, RuntimeError) and free is not None and free < (64 << 20)))
    if full:
        return CheckpointError(f"{path}: the disk is full ({free or 0} bytes free); the previous {path.name} "
                               "is unchanged. Free some space and continue with --resume")
    return CheckpointError(f"{path}: cannot write the checkpoint ({exc}); the previous {path.name} is unchanged")


def plain(value: Any) -> Any:
    """Convert to types the weights_only unpickler accepts (Paths and tuples become str / list)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None), torch.Tensor)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint (for provenance)."""
    from alexnet_deploy import __version__

    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses.
    out = {"alexnet_deploy": __version__, "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        import torchvision

        out["torchvision"] = str(torchvision.__version__)
    except ImportError:
        pass
    return out


def load_checkpoint(path: str | os.PathLike, *, arch: str | None = None, num_classes: int | None = None,
                    classes: Sequence[str] | None = None, map_location: str | torch.device = "cpu"
                    ) -> LoadedCheckpoint:
    """Load a checkpoint (ours, or a plain state_dict) into an eval-mode model.

    For a plain state_dict, ``arch`` is detected from the weight shapes when not given,
    ``num_classes`` from the last layer, classes default to ``class_0..N-1`` and preprocessing to
    the arch's default. Raises CheckpointError naming the file and what to pass.
    """
    path = Path(path)
    obj = _torch_load(path, map_location)
    if isinstance(obj, dict) and "state_dict" in obj and "arch" in obj:
        meta = _our_metadata(path, obj, arch, num_classes)
    else:
        meta = _plain_metadata(path, obj, arch, num_classes)
    if classes is not None:
        if len(classes) != meta["num_classes"]:
            raise CheckpointError(f"{path}: model has {meta['num_classes']} classes but {len(classes)} "
                                  "class names were given")
        meta["classes"] = tuple(str(c) for c in classes)
    model = _build_and_load(path, meta["arch"], meta["num_classes"], meta["width"], meta["state_dict"],
                            map_location)
    return LoadedCheckpoint(model=model, arch=meta["arch"], num_classes=meta["num_classes"],
                            classes=meta["classes"], preprocess=meta["preprocess"], config=meta["config"],
                            epoch=meta["epoch"], metrics=meta["metrics"], sha256=sha256_file(path),
                            path=path, raw=obj if isinstance(obj, dict) else {"state_dict": obj},
                            width=meta["width"])


def _torch_load(path: Path, map_location) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; pass a .pt written by "
                              "`alexnet-deploy train` or a torchvision alexnet state_dict")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    if not _looks_like_torch_save(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a "
                              "pickle); pass a .pt written by `alexnet-deploy train` or a torchvision state_dict")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt, or it holds "
                              f"non-tensor objects that weights_only loading refuses): {_load_problem(exc)}") from exc


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (since 1.6) or, in the legacy format, a pickle (0x80 PROTO)."""
    import zipfile

    with open(path, "rb") as fh:
        first = fh.read(1)
    return first == b"\x80" or zipfile.is_zipfile(path)


def _load_problem(exc: Exception) -> str:
    """The useful part of torch.load's error. torch's weights_only refusal also suggests re-running
    with weights_only=False, i.e. executing code from the file: that advice is never passed on."""
    import re

    text = " ".join(str(exc).split()) or exc.__class__.__name__
    found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text)
    text = (found.group(1) or "unsupported content") if found else text
    # Cut torch's ways around the safe loader (allow-listing globals, weights_only=False).
    text = re.split(r"\s*(?:Please use `torch\.serialization|Re-running `torch\.load`|In PyTorch 2\.6)", text)[0]
    return text or f"{exc.__class__.__name__} from the safe loader"


def _our_metadata(path: Path, obj: dict, arch: str | None, num_classes: int | None) -> dict:
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks keys {missing}; was it written by alexnet-deploy?")
    if arch is not None and arch != obj["arch"]:
        raise CheckpointError(f"{path}: checkpoint holds arch {obj['arch']!r} but {arch!r} was requested; "
                              f"drop --arch or pass --arch {obj['arch']}")
    if num_classes is not None and num_classes != obj["num_classes"]:
        raise CheckpointError(f"{path}: checkpoint has {obj['num_classes']} classes but {num_classes} were "
                              f"requested; drop --num-classes or pass --num-classes {obj['num_classes']}")
    try:
        spec = PreprocessSpec.from_dict(obj["preprocess"])
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: bad preprocess metadata: {exc}") from exc
    return {"arch": obj["arch"], "num_classes": int(obj["num_classes"]), "classes": tuple(obj["classes"]),
            "preprocess": spec, "config": dict(obj["config"]), "epoch": int(obj["epoch"]),
            "metrics": dict(obj["metrics"]), "state_dict": obj["state_dict"], "width": _width(path, obj)}


def _width(path: Path, obj: dict) -> float:
    """The recorded width multiplier; checkpoints written before it was recorded are full width."""
    width = obj.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise CheckpointError(f"{path}: bad width {width!r} in the checkpoint; expected a number with 0 < width <= 1")
    return float(width)


def _plain_metadata(path: Path, obj: Any, arch: str | None, num_classes: int | None) -> dict:
    state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: neither an alexnet-deploy checkpoint nor a plain state_dict of tensors")
    state = strip_wrappers(state)
    arch = arch or _detect_arch(path, state)
    if arch not in ARCHS:
        raise CheckpointError(f"{path}: unknown arch {arch!r}; pass --arch {' or --arch '.join(ARCHS)}")
    last = state.get("classifier.6.weight")
    if last is None:
        raise CheckpointError(f"{path}: no classifier.6.weight in the state_dict; is it an AlexNet? "
                              f"pass --arch {' or --arch '.join(ARCHS)}")
    found = int(last.shape[0])
    if num_classes is not None and num_classes != found:
        raise CheckpointError(f"{path}: state_dict has {found} output classes but {num_classes} were "
                              f"requested; pass --num-classes {found}")
    resize, crop = DEFAULT_INPUT[arch]
    return {"arch": arch, "num_classes": found, "classes": tuple(f"class_{i}" for i in range(found)),
            "preprocess": PreprocessSpec(resize=resize, crop=crop), "config": {}, "epoch": 0,
            "metrics": {}, "state_dict": state, "width": 1.0}


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` / ``features.module.`` / ``_orig_mod.`` segments from state_dict keys."""
    return {".".join(p for p in key.split(".") if p not in _WRAPPER_SEGMENTS): v for key, v in state.items()}


def _detect_arch(path: Path, state: Mapping[str, torch.Tensor]) -> str:
    first = state.get("features.0.weight")
    channels = None if first is None else int(first.shape[0])
    if channels == 96:
        return "alexnet2012"
    if channels == 64:
        return "torchvision"
    raise CheckpointError(f"{path}: cannot tell the architecture from the state_dict; "
                          f"pass --arch {' or --arch '.join(ARCHS)}")


def _build_and_load(path: Path, arch: str, num_classes: int, width: float, state: Mapping[str, torch.Tensor],
                    map_location) -> nn.Module:
    model = build_model(arch, num_classes=num_classes, width=width)
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        others = [a for a in ARCHS if a != arch]
        at_width = f" at width {width:g}" if width != 1.0 else ""
        raise CheckpointError(f"{path}: weights do not fit arch {arch!r} with {num_classes} classes{at_width} "
                              f"({problem}); try --arch {others[0]}")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def _state_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> str:
    """One-line description of missing / unexpected / wrongly shaped keys ('' when they fit)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    if shapes:
        parts.append(f"shape {shapes[0]}{' ...' if len(shapes) > 1 else ''}")
    return "; ".join(parts)


__all__ = ["LoadedCheckpoint", "save_checkpoint", "load_checkpoint", "strip_wrappers", "versions", "plain"]
