"""How each precision is built on the TensorRT found here: which ONNX, strong typing or builder flags.

TensorRT 8.6 needs EXPLICIT_BATCH for ONNX and builds fp16/int8 through builder flags; 10.x offers
strong typing as an opt-in (the precision then comes from the ONNX: the fp16-typed model or the Q/DQ
model) and ignores EXPLICIT_BATCH; 11.x is always strongly typed and has neither flag. Precision
flags are never combined with strong typing (they conflict on 10.12+ and do not exist on 11).
docs/tensorrt.md has the version table and its sources.
"""

from __future__ import annotations

from dataclasses import dataclass

from alexnet_deploy.deploy.bundle import Manifest
from alexnet_deploy.deploy.precision import NAMES, PRECISIONS
from alexnet_deploy.errors import ExportError


@dataclass(frozen=True)
class BuildRoute:
    """How a precision is built on this TensorRT: which ONNX, strong typing or builder flags."""

    precision: str
    onnx_file: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    note: str = ""


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def has_builder_flag(trt, name: str) -> bool:
    return hasattr(trt.BuilderFlag, name)


def _strong_typing_opt_in(trt) -> bool:
    """True on 10.x, where STRONGLY_TYPED exists and must be asked for (11.x: always on, flag ignored)."""
    return trt_major(trt) < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def choose_route(trt, manifest: Manifest, precision: str) -> BuildRoute:
    """Which ONNX and which typing/flags build ``precision`` on this TensorRT."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is unknown; expected one of {NAMES}")
    row = PRECISIONS[precision]
    strong = _strong_typing_opt_in(trt) or trt_major(trt) >= 11
    has = {p: manifest.artifact(p) is not None for p in NAMES}
    if precision == "fp32":
        # An fp32 ONNX builds fp32 (+TF32, TensorRT's default) with or without strong typing.
        return BuildRoute("fp32", row.onnx_file, trt_major(trt) >= 11, ())
    if precision == "fp16":
        if has["fp16"] and strong:
            return BuildRoute("fp16", row.onnx_file, True, (), "fp16-typed ONNX, strongly typed")
        if has_builder_flag(trt, "FP16"):
            note = "fp32 ONNX + BuilderFlag.FP16 (guard nodes pinned to fp32 with precision constraints)"
            return BuildRoute("fp16", PRECISIONS["fp32"].onnx_file, False, row.trt_builder_flags, note)
        raise ExportError(f"TensorRT {trt.__version__} builds fp16 only from an fp16-typed ONNX and the bundle "
                          "has no model.fp16.onnx: re-export with `alexnet-deploy export ... --fp16`")
    if not has["int8"]:
        raise ExportError("the bundle has no model.int8.onnx: run `alexnet-deploy calibrate BUNDLE --calib DIR` "
                          "(or export with --int8 --calib DIR) first")
    if strong:
        return BuildRoute("int8", row.onnx_file, True, (), "Q/DQ ONNX, strongly typed")
    return BuildRoute("int8", row.onnx_file, False, row.trt_builder_flags, "Q/DQ ONNX + INT8/FP16 flags (8.x)")


def network_flags(trt, route: BuildRoute) -> tuple[int, list[str]]:
    """create_network() flags: EXPLICIT_BATCH below 10; STRONGLY_TYPED as an opt-in on 10.x only."""
    flags, names = 0, []
    if trt_major(trt) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        names.append("EXPLICIT_BATCH")
    if route.strongly_typed and _strong_typing_opt_in(trt):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        names.append("STRONGLY_TYPED")
    return flags, names
